//! Near caches: copies of grid values kept in this process (moka), dropped when the grid says
//! their key changed (RESP3 CLIENT TRACKING pushes, or the embedded node's change records),
//! all dropped when the source of those invalidations is lost (some may have been missed).
//! The session near cache holds HGETALL results; the response cache's L1 holds responses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use super::NearCacheConfig;

/// Something holding copies of grid keys that must hear when they change.
pub(crate) trait Invalidate: Send + Sync {
    /// `key` changed or is gone.
    fn invalidate(&self, key: &[u8]);
    /// Anything may have changed (FLUSHALL, a lost connection).
    fn clear(&self);
}

/// The session near cache's values: HGETALL field/value pairs.
pub(crate) type Hash = Vec<(String, Bytes)>;

/// Cached values by grid key.
pub(crate) struct NearCache<V> {
    cache: Cache<String, Arc<V>>,
    /// Bumped by every invalidation: a read that saw it change while in flight does not fill
    /// the cache, so a push that overtook its reply cannot leave a stale entry behind.
    epoch: AtomicU64,
}

impl NearCache<Hash> {
    /// The session near cache for `config`.
    pub(crate) fn new(config: &NearCacheConfig) -> NearCache<Hash> {
        NearCache::with_cache(
            Cache::builder().max_capacity(config.max_entries).time_to_live(config.ttl).build(),
        )
    }
}

impl<V: Send + Sync + 'static> NearCache<V> {
    /// A near cache over a moka cache built as the caller wants it (size, weigher, expiry).
    pub(crate) fn with_cache(cache: Cache<String, Arc<V>>) -> NearCache<V> {
        NearCache { cache, epoch: AtomicU64::new(0) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<V>> {
        self.cache.get(key)
    }

    /// The epoch to pass to [`NearCache::fill`] after the read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a read that started at `epoch`, unless something was invalidated since.
    pub(crate) fn fill(&self, key: &str, epoch: u64, value: Arc<V>) {
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
    pub(crate) fn confirms(&self, key: &str, hit: &Arc<V>) -> bool {
        self.cache.get(key).is_some_and(|now| Arc::ptr_eq(&now, hit))
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, key: &[u8]) {
        match std::str::from_utf8(key) {
            Ok(k) => self.cache.invalidate(k),
            Err(_) => self.cache.invalidate(&String::from_utf8_lossy(key).into_owned()),
        }
    }
}

impl<V: Send + Sync + 'static> Invalidate for NearCache<V> {
    /// Drops one key (an `invalidate` push, or a write through this client).
    fn invalidate(&self, key: &[u8]) {
        // Epoch first: a fill racing this either sees the bump or is removed below.
        self.bump();
        self.remove(key);
    }

    /// Drops everything (FLUSHALL push, reconnect).
    fn clear(&self) {
        self.bump();
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> Arc<Hash> {
        Arc::new(vec![("n".to_owned(), Bytes::copy_from_slice(v.as_bytes()))])
    }

    fn cache() -> NearCache<Hash> {
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
