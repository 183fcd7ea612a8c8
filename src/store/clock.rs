//! Time as the keyspace sees it: unix milliseconds for expiry (EXPIREAT is wall-clock time in
//! Redis too) and coarse clocks for LRU and LFU.

use std::time::{SystemTime, UNIX_EPOCH};

/// The LRU clock wraps at 24 bits, as Redis's does.
pub const LRU_CLOCK_MAX: u32 = (1 << 24) - 1;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A 24-bit clock in seconds for LRU idle times.
pub fn lru_clock() -> u32 {
    ((now_ms() / 1000) as u32) & LRU_CLOCK_MAX
}

/// A 16-bit clock in minutes for LFU decay.
pub fn lfu_minutes() -> u16 {
    ((now_ms() / 60_000) & 0xffff) as u16
}
