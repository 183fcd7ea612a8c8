//! The response cache: [`CacheLayer`] keeps responses to GET and HEAD in the grid, so every
//! instance of an app shares one HTTP cache. Freshness, Vary and storability follow RFC 9111
//! through the `http-cache-semantics` crate; this module only decides where entries live.

mod body;
mod entry;
mod flight;
mod key;
mod layer;

use std::time::Duration;

pub use layer::{CacheLayer, CacheService};

/// The `X-Cache` header every response through the layer carries.
pub const X_CACHE: &str = "x-cache";

/// Settings of a [`CacheLayer`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Grid key prefix, so several apps can share one grid.
    pub prefix: String,
    /// Freshness given to a storable response that states none (no `max-age`, `s-maxage`
    /// or `Expires`); `None` leaves it to the RFC's heuristics (usually: not reused).
    pub default_ttl: Option<Duration>,
    /// Per-route defaults, overriding `default_ttl`: the longest matching path prefix wins.
    pub route_ttls: Vec<(String, Duration)>,
    /// Largest body stored; bigger ones stream through untouched.
    pub max_body: usize,
    /// How long a stale entry stays in the grid past its freshness (room for later
    /// revalidation; bounded so the grid does not fill with dead entries).
    pub keep_stale: Duration,
    /// How long a request waits for another request of this process filling the same key
    /// before it calls the upstream itself.
    pub flight_wait: Duration,
    /// Longest cache key (method, host, path, query and varied headers); longer requests
    /// bypass the cache, so a client cannot make huge grid keys.
    pub max_key: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: "cgcache:".into(),
            default_ttl: None,
            route_ttls: Vec::new(),
            max_body: 1 << 20,
            keep_stale: Duration::from_secs(30),
            flight_wait: Duration::from_secs(5),
            max_key: 4096,
        }
    }
}

impl CacheConfig {
    /// The default freshness for `path`.
    pub(crate) fn ttl_for(&self, path: &str) -> Option<Duration> {
        self.route_ttls
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, d)| *d)
            .or(self.default_ttl)
    }
}
