//! L1: decoded grid values kept in this process, in front of the grid (L2). A near cache
//! (`grid::NearCache`) fed only by grid reads, and emptied of a key whenever the grid says it
//! changed, exactly as the session near cache; entries also leave when the grid would drop
//! them (end of freshness plus stale windows) and when the size bound pushes them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::entry::{now_ms, Found};
use super::L1Config;
use crate::grid::{Invalidate, NearCache};

/// The L1 of one layer.
pub(crate) struct L1 {
    near: NearCache<Found>,
    /// Only keys under this prefix concern this cache (the grid may serve sessions too).
    prefix: String,
    pub(crate) confirm_hits: bool,
}

/// Expires each entry when the grid would drop it.
struct UntilGridExpiry;

impl moka::Expiry<String, Arc<Found>> for UntilGridExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<Found>, _now: Instant) -> Option<Duration> {
        Some(Duration::from_millis(value.expires_ms().saturating_sub(now_ms())))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<Found>,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

impl L1 {
    pub(crate) fn new(config: &L1Config, prefix: &str) -> L1 {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &String, v: &Arc<Found>| (k.len() + v.weight()).min(u32::MAX as usize) as u32)
            .expire_after(UntilGridExpiry)
            .build();
        L1 {
            near: NearCache::with_cache(cache),
            prefix: prefix.to_owned(),
            confirm_hits: config.confirm_hits,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Found>> {
        self.near.get(key)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.near.epoch()
    }

    pub(crate) fn fill(&self, key: &str, epoch: u64, value: Arc<Found>) {
        self.near.fill(key, epoch, value)
    }

    pub(crate) fn confirms(&self, key: &str, hit: &Arc<Found>) -> bool {
        self.near.confirms(key, hit)
    }
}

impl Invalidate for L1 {
    fn invalidate(&self, key: &[u8]) {
        if key.starts_with(self.prefix.as_bytes()) {
            self.near.invalidate(key);
        }
    }

    fn clear(&self) {
        self.near.clear();
    }
}
