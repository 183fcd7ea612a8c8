//! The near cache: recent HGETALL results kept in this process (moka), dropped when the grid
//! pushes an `invalidate` for their key (RESP3 CLIENT TRACKING), all dropped when the
//! connection that receives those pushes is lost (pushes may have been missed meanwhile).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use super::NearCacheConfig;

/// Cached session hashes by grid key.
pub(crate) struct NearCache {
    cache: Cache<String, Arc<Vec<(String, Bytes)>>>,
    /// Bumped by every invalidation: a read that saw it change while in flight does not fill
    /// the cache, so a push that overtook its reply cannot leave a stale entry behind.
    epoch: AtomicU64,
}

impl NearCache {
    pub(crate) fn new(config: &NearCacheConfig) -> NearCache {
        NearCache {
            cache: Cache::builder().max_capacity(config.max_entries).time_to_live(config.ttl).build(),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Vec<(String, Bytes)>>> {
        self.cache.get(key)
    }

    /// The epoch to pass to [`NearCache::fill`] after the read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a read that started at `epoch`, unless something was invalidated since.
    pub(crate) fn fill(&self, key: &str, epoch: u64, value: Arc<Vec<(String, Bytes)>>) {
        if self.epoch() == epoch {
            self.cache.insert(key.to_owned(), value);
            // An invalidation that landed during the insert may have missed the new entry.
            if self.epoch() != epoch {
                self.cache.invalidate(key);
            }
        }
    }

    /// Drops one key (an `invalidate` push, or a write through this client).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let key = String::from_utf8_lossy(key).into_owned();
        self.cache.invalidate(&key);
    }

    /// Drops everything (FLUSHALL push, reconnect).
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }
}
