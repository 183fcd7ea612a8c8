//! Time as the keyspace sees it: unix milliseconds for expiry (EXPIREAT is wall-clock time in
//! Redis too) and coarse clocks for LRU and LFU.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A 32-bit clock in milliseconds for LRU idle times (Redis's is 24 bits of seconds; ours
/// tells apart keys touched within the same second and wraps after 49 days).
pub fn lru_clock() -> u32 {
    now_ms() as u32
}

/// A 16-bit clock in minutes for LFU decay.
pub fn lfu_minutes() -> u16 {
    ((now_ms() / 60_000) & 0xffff) as u16
}
