//! The response cache: [`CacheLayer`] keeps responses to GET and HEAD in the grid, so every
//! instance of an app shares one HTTP cache. Freshness, Vary and storability follow RFC 9111
//! through the `http-cache-semantics` crate; this module decides where entries live (an
//! optional in-process L1 in front of the grid, the L2), who fills a missing key (one request
//! per process, one process per grid through a lease), when a stale copy may answer
//! (stale-while-revalidate, stale-if-error) and how entries are purged (by URI or tag).

mod body;
mod entry;
mod flight;
mod key;
mod l1;
mod layer;
mod purge;

use std::time::Duration;

pub use layer::{CacheLayer, CacheService};

use crate::grid::GridError;

/// The `X-Cache` header every response through the layer carries: `HIT` (fresh, from L1 or
/// the grid), `MISS` (from the upstream), `STALE` (a stale copy, under stale-while-revalidate
/// or stale-if-error) or `BYPASS` (not cacheable, or the grid is unreachable).
pub const X_CACHE: &str = "x-cache";

/// On `HIT` and `STALE`: which level answered, `L1` (this process) or `L2` (the grid).
pub const X_CACHE_LEVEL: &str = "x-cache-level";

/// The response header a handler tags a response with, for [`CacheLayer::purge_tag`]: tags
/// separated by commas or spaces. The layer removes it from what the client sees.
pub const CACHE_TAG: &str = "cache-tag";

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The grid failed (a purge did not reach it).
    #[error(transparent)]
    Grid(#[from] GridError),
    /// A URI to purge has no host, or is not a URI.
    #[error("not an absolute URI: {0}")]
    BadUri(String),
    /// The configuration cannot work (e.g. an L1 over a grid without invalidations).
    #[error("cache config: {0}")]
    Config(String),
}

/// Settings of a [`CacheLayer`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Grid key prefix, so several apps can share one grid (no `{` or `}`: keys carry a
    /// cluster hash tag after it).
    pub prefix: String,
    /// Freshness given to a storable response that states none (no `max-age`, `s-maxage`
    /// or `Expires`); `None` leaves it to the RFC's heuristics (usually: not reused).
    pub default_ttl: Option<Duration>,
    /// Per-route defaults, overriding `default_ttl`: the longest matching path prefix wins.
    pub route_ttls: Vec<(String, Duration)>,
    /// Largest body stored; bigger ones stream through untouched.
    pub max_body: usize,
    /// Longest time an entry stays in the grid past its freshness for the
    /// `stale-while-revalidate` and `stale-if-error` windows its response asks for (an origin
    /// asking for a day gets this much). An entry with neither directive is dropped when stale.
    pub max_stale: Duration,
    /// How long a request with a `stale-if-error` copy at hand waits for the upstream before
    /// it answers with that copy (the upstream call is then dropped).
    pub upstream_timeout: Duration,
    /// How long a request waits for another request of this process filling the same key
    /// before it calls the upstream itself (longer than `lease_wait`: that request may be
    /// waiting for another instance first).
    pub flight_wait: Duration,
    /// Lifetime of the grid lease one instance takes to fill a missing key while the others
    /// wait (`SET key#lease token NX PX`): it bounds the wait when the holder dies. `None`:
    /// no leases (concurrent misses make one upstream call per instance).
    pub lease: Option<Duration>,
    /// How long a request waits for another instance's fill before calling the upstream
    /// (longer than `lease`, so a dead holder's lease expires first and one waiter takes over).
    pub lease_wait: Duration,
    /// Longest cache key (method, host, path, query and varied headers); longer requests
    /// bypass the cache, so a client cannot make huge grid keys.
    pub max_key: usize,
    /// The in-process L1 in front of the grid; `None` (the default): every hit reads the grid.
    pub l1: Option<L1Config>,
}

/// Size and consistency of the in-process L1.
///
/// Entries are dropped when the grid says their key changed (RESP3 CLIENT TRACKING pushes
/// from a remote node or Redis; the node's own change records when it is embedded), so a
/// purge or a refill through another instance reaches this one. From a remote grid those
/// pushes travel asynchronously: for the time one takes to arrive (well under a millisecond
/// on a LAN) the old entry may still be served, unless `confirm_hits` is set.
#[derive(Debug, Clone)]
pub struct L1Config {
    /// Most bytes kept (bodies, heads and keys), least recently used out first.
    pub max_bytes: u64,
    /// Confirm each L1 hit with a PING on the tracking connection first: a purge or write
    /// through any instance that returned before the request started is then never missed,
    /// at the price of a round trip per hit (still no body on the wire). Default false.
    pub confirm_hits: bool,
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config { max_bytes: 64 << 20, confirm_hits: false }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: "cgcache:".into(),
            default_ttl: None,
            route_ttls: Vec::new(),
            max_body: 1 << 20,
            max_stale: Duration::from_secs(3600),
            upstream_timeout: Duration::from_secs(5),
            flight_wait: Duration::from_secs(10),
            lease: Some(Duration::from_secs(5)),
            lease_wait: Duration::from_secs(6),
            max_key: 4096,
            l1: None,
        }
    }
}

impl CacheConfig {
    /// Turns the in-process L1 on.
    pub fn with_l1(mut self, l1: L1Config) -> CacheConfig {
        self.l1 = Some(l1);
        self
    }

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
