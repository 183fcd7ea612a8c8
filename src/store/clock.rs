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

/// The 16-bit clock in minutes that LFU decay runs on, at unix time `ms`. (The LRU clock is
/// simply the low 32 bits of unix milliseconds: it tells apart keys touched within the same
/// second, where Redis's 24-bit seconds clock cannot, and wraps after 49 days.)
pub fn lfu_minutes_at(ms: u64) -> u16 {
    ((ms / 60_000) & 0xffff) as u16
}
