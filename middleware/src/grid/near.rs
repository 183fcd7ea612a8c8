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

    /// Whether `hit`, read from the cache before a barrier (a PING round trip), is still
    /// good once the barrier's reply is in: every push queued before it has then been fully
    /// applied, and one for this key removed `hit`. Checked on the entry itself, not on the
    /// epoch: an invalidation bumps the epoch before it removes the entry, so a hit read in
    /// between saw the new epoch *and* the stale entry, and an unchanged epoch proves nothing.
    pub(crate) fn confirms(&self, key: &str, hit: &Arc<Vec<(String, Bytes)>>) -> bool {
        self.cache.get(key).is_some_and(|now| Arc::ptr_eq(&now, hit))
    }

    /// Drops one key (an `invalidate` push, or a write through this client).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        // Epoch first: a fill racing this either sees the bump or is removed below.
        self.bump();
        self.remove(key);
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, key: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        self.cache.invalidate(&key);
    }

    /// Drops everything (FLUSHALL push, reconnect).
    pub(crate) fn clear(&self) {
        self.bump();
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> Arc<Vec<(String, Bytes)>> {
        Arc::new(vec![("n".to_owned(), Bytes::copy_from_slice(v.as_bytes()))])
    }

    fn cache() -> NearCache {
        NearCache::new(&NearCacheConfig::default())
    }

    /// The race behind "stale read at step N": the push's callback (on the connection's
    /// driver thread) has bumped the epoch but not yet removed the entry when a request reads
    /// the epoch and then the entry. After the barrier the epoch is unchanged, yet the hit is
    /// stale: it must not be confirmed.
    #[test]
    fn a_hit_read_inside_a_half_applied_invalidation_is_not_confirmed() {
        let near = cache();
        let e = near.epoch();
        near.fill("k", e, value("old"));
        near.bump(); // the push: epoch first...
        let epoch_at_hit = near.epoch();
        let hit = near.get("k").expect("entry not removed yet");
        near.remove(b"k"); // ...then the entry, before the barrier's reply is handed over
        assert_eq!(near.epoch(), epoch_at_hit, "no later invalidation: the epoch alone would pass");
        assert!(!near.confirms("k", &hit));
    }

    #[test]
    fn a_hit_with_no_invalidation_is_confirmed() {
        let near = cache();
        near.fill("k", near.epoch(), value("v"));
        let hit = near.get("k").unwrap();
        near.invalidate(b"other");
        assert!(near.confirms("k", &hit));
    }

    #[test]
    fn a_hit_replaced_or_cleared_is_not_confirmed() {
        let near = cache();
        near.fill("k", near.epoch(), value("v1"));
        let hit = near.get("k").unwrap();
        near.invalidate(b"k");
        near.fill("k", near.epoch(), value("v2"));
        assert!(!near.confirms("k", &hit), "a newer fill is a different entry");
        let hit = near.get("k").unwrap();
        near.clear();
        assert!(!near.confirms("k", &hit));
    }

    /// A read whose reply was overtaken by a push (in either order around the fill) leaves
    /// nothing cached.
    #[test]
    fn a_fill_racing_an_invalidation_leaves_nothing() {
        let near = cache();
        let e = near.epoch();
        near.bump();
        near.fill("k", e, value("old"));
        near.remove(b"k");
        assert!(near.get("k").is_none());
        let e = near.epoch();
        near.fill("k", e, value("old"));
        near.invalidate(b"k");
        assert!(near.get("k").is_none());
    }
}
