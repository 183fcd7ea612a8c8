//! The grid client both layers share (sessions and the response cache): one small API,
//! `query` and `transaction`, over a remote grid (a cachegrid node, plain Redis or Redis
//! Cluster, through the `redis` crate) or a node embedded in this process; and invalidations
//! for the near caches in front of it.

mod coalesce;
mod embedded;
mod near;
mod remote;
mod tracked;

use std::sync::{Arc, Weak};
use std::time::Duration;

pub use embedded::EmbeddedGrid;
pub(crate) use near::{Invalidate, NearCache};
pub use remote::RemoteGrid;

/// Why a grid call failed.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// No connection: the grid is down or unreachable (the caller degrades).
    #[error("grid unavailable: {0}")]
    Unavailable(String),
    /// The grid answered with an error reply.
    #[error("grid error reply: {0}")]
    Reply(String),
    /// The reply did not have the expected shape.
    #[error("unexpected grid reply: {0}")]
    Protocol(String),
    /// This grid cannot do what was asked (e.g. invalidations on a cluster).
    #[error("not supported by this grid: {0}")]
    Unsupported(String),
}

/// How a remote grid is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node (a cachegrid node or plain Redis): one multiplexed connection.
    Single,
    /// Redis Cluster protocol (MOVED/ASK, slot map) through the `redis` crate's cluster client.
    Cluster,
}

/// Settings of a remote grid client.
#[derive(Debug, Clone)]
pub struct GridConfig {
    /// `redis://host:port` URLs (`rediss://` for TLS): one for [`Topology::Single`], the seed
    /// nodes for a cluster.
    pub urls: Vec<String>,
    /// Single node or cluster.
    pub topology: Topology,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for one reply.
    pub response_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// Near cache of session reads (moka), kept correct by CLIENT TRACKING pushes; off by
    /// default. With [`Topology::Cluster`], cached reads use a tracking connection per
    /// primary of their own (the cluster client cannot deliver pushes).
    pub near_cache: Option<NearCacheConfig>,
    /// A private CA and a client certificate for `rediss://` URLs; None: the system's roots
    /// and no client certificate.
    pub tls: Option<GridTls>,
}

/// TLS material for a grid reached over `rediss://` (a grid with its own CA, or one that asks
/// for client certificates: `tls-auth-clients yes`).
#[derive(Clone, Default)]
pub struct GridTls {
    /// PEM CA certificates the grid's certificates are verified against; None: the system's.
    pub ca_cert: Option<Vec<u8>>,
    /// PEM client certificate (chain) and its private key.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl GridTls {
    /// Reads the CA and (both or neither) the client certificate and key from PEM files.
    pub fn from_files(
        ca_cert: Option<&std::path::Path>,
        client_cert: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<GridTls> {
        Ok(GridTls {
            ca_cert: ca_cert.map(std::fs::read).transpose()?,
            client_cert: match client_cert {
                Some((cert, key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
                None => None,
            },
        })
    }

    /// As the `redis` crate takes them.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client_cert.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_cert.clone(),
        }
    }
}

/// Says what is set, never the key.
impl std::fmt::Debug for GridTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridTls")
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "set"))
            .field("client_cert", &self.client_cert.as_ref().map(|_| "set"))
            .finish()
    }
}

/// Size, lifetime and consistency of the near cache.
#[derive(Debug, Clone)]
pub struct NearCacheConfig {
    /// Most entries kept.
    pub max_entries: u64,
    /// An entry is dropped after this long even without an invalidation (a safety net).
    pub ttl: Duration,
    /// Whether a hit is confirmed by a PING on the tracking connection first (default true).
    ///
    /// Invalidations are pushed asynchronously: without the barrier, a read through this
    /// instance right after a write through another may still see the old value for the
    /// push's travel time. The grid writes every push queued for a connection before the
    /// reply to any later command on it, so once the PING's reply is in, every write that
    /// completed before the read started has invalidated this cache. A confirmed hit costs a
    /// round trip but no HGETALL (no session payload on the wire, no work on the node).
    pub confirm_hits: bool,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        NearCacheConfig { max_entries: 100_000, ttl: Duration::from_secs(60), confirm_hits: true }
    }
}

impl GridConfig {
    /// One node (or plain Redis) at `url`.
    pub fn single(url: impl Into<String>) -> GridConfig {
        GridConfig {
            urls: vec![url.into()],
            topology: Topology::Single,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            near_cache: None,
            tls: None,
        }
    }

    /// A Redis Cluster-compatible grid reached through `seeds`.
    pub fn cluster(seeds: impl IntoIterator<Item = impl Into<String>>) -> GridConfig {
        let mut c = GridConfig::single(String::new());
        c.urls = seeds.into_iter().map(Into::into).collect();
        c.topology = Topology::Cluster;
        c
    }

    /// TLS material for `rediss://` URLs.
    pub fn with_tls(mut self, tls: GridTls) -> GridConfig {
        self.tls = Some(tls);
        self
    }

    /// A client for `info` with this config's TLS material when it is a `rediss://` address.
    pub(crate) fn client(&self, info: redis::ConnectionInfo) -> redis::RedisResult<redis::Client> {
        match (&self.tls, &info.addr) {
            (Some(tls), redis::ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, tls.certificates())
            }
            _ => redis::Client::open(info),
        }
    }

    /// Turns the near cache on.
    pub fn with_near_cache(mut self, near: NearCacheConfig) -> GridConfig {
        self.near_cache = Some(near);
        self
    }
}

/// A connection to the grid, remote or embedded; cheap to clone.
#[derive(Clone)]
pub enum Grid {
    /// Over the network.
    Remote(Arc<RemoteGrid>),
    /// In this process.
    Embedded(Arc<EmbeddedGrid>),
}

impl Grid {
    /// Connects to a remote grid (the first connection is made lazily on first use, so an
    /// app starts even while the grid is down).
    pub fn remote(config: GridConfig) -> Result<Grid, GridError> {
        Ok(Grid::Remote(Arc::new(RemoteGrid::new(config)?)))
    }

    /// Runs one command.
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<redis::Value, GridError> {
        match self {
            Grid::Remote(r) => r.query(cmd).await,
            Grid::Embedded(e) => e.query(cmd),
        }
    }

    /// Runs `cmds` as one MULTI/EXEC transaction (all keys in one slot); one value per command.
    pub async fn transaction(&self, cmds: &[redis::Cmd]) -> Result<Vec<redis::Value>, GridError> {
        match self {
            Grid::Remote(r) => r.transaction(cmds).await,
            Grid::Embedded(e) => e.transaction(cmds),
        }
    }

    /// Runs `cmds` in one round trip, not atomically; one value per command.
    pub async fn pipeline(&self, cmds: &[redis::Cmd]) -> Result<Vec<redis::Value>, GridError> {
        match self {
            Grid::Remote(r) => r.pipeline(cmds).await,
            // In process there is no round trip to save: a transaction costs nothing more.
            Grid::Embedded(e) => e.transaction(cmds),
        }
    }

    /// Runs a prepared pipeline: in one round trip, and as one MULTI/EXEC transaction when it
    /// is atomic (all keys in one slot); one value per command. Saves copying the commands.
    pub async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::Value>, GridError> {
        match self {
            Grid::Remote(r) => r.run(pipe).await,
            Grid::Embedded(e) => e.run_pipeline(pipe.cmd_iter()),
        }
    }

    /// HGETALL `key` as field/value pairs, served from the near cache when it is on.
    pub async fn hgetall(&self, key: &str) -> Result<Arc<Vec<(String, bytes::Bytes)>>, GridError> {
        match self {
            Grid::Remote(r) => r.hgetall(key).await,
            Grid::Embedded(e) => e.query(redis::cmd("HGETALL").arg(key)).and_then(|v| pairs(v).map(Arc::new)),
        }
    }

    /// Drops `key` from this client's near cache (after a write through this client).
    pub async fn forget(&self, key: &str) {
        if let Grid::Remote(r) = self {
            r.forget(key).await;
        }
    }

    /// Tells `listener` whenever a key this client read later changes (or might have): RESP3
    /// CLIENT TRACKING pushes for a remote single node, the node's change records when
    /// embedded (synchronous: before the write's reply). Not for a cluster.
    pub(crate) fn track(&self, listener: Weak<dyn Invalidate>) -> Result<(), GridError> {
        match self {
            Grid::Remote(r) => r.track(listener),
            Grid::Embedded(e) => {
                e.track(listener);
                Ok(())
            }
        }
    }

    /// Returns once every invalidation for a write that completed before the call has reached
    /// the listeners: a PING on the tracking connection (pushes are written before later
    /// replies); nothing when embedded (invalidations are synchronous there).
    pub(crate) async fn barrier(&self) -> Result<(), GridError> {
        match self {
            Grid::Remote(r) => r.query(&redis::cmd("PING")).await.map(drop),
            Grid::Embedded(_) => Ok(()),
        }
    }

    /// Whether keys live on several nodes (no multi-key command across slots).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Grid::Remote(r) if r.is_cluster())
    }
}

/// The near caches a tracking source tells; held weakly, so a dropped cache just stops hearing.
#[derive(Default)]
pub(crate) struct Listeners {
    list: parking_lot::RwLock<Vec<Weak<dyn Invalidate>>>,
}

impl near::Invalidate for Listeners {
    fn invalidate(&self, key: &[u8]) {
        Listeners::invalidate(self, key)
    }
    fn clear(&self) {
        Listeners::clear(self)
    }
}

impl Listeners {
    pub(crate) fn add(&self, l: Weak<dyn Invalidate>) {
        let mut list = self.list.write();
        list.retain(|l| l.strong_count() > 0);
        list.push(l);
    }

    pub(crate) fn invalidate(&self, key: &[u8]) {
        for l in self.list.read().iter() {
            if let Some(l) = l.upgrade() {
                l.invalidate(key);
            }
        }
    }

    pub(crate) fn clear(&self) {
        for l in self.list.read().iter() {
            if let Some(l) = l.upgrade() {
                l.clear();
            }
        }
    }
}

/// A HGETALL reply as field/value pairs.
pub(crate) fn pairs(v: redis::Value) -> Result<Vec<(String, bytes::Bytes)>, GridError> {
    use redis::Value;
    let flat: Vec<Value> = match v {
        Value::Array(items) => items,
        Value::Map(kv) => kv.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        other => return Err(GridError::Protocol(format!("HGETALL gave {other:?}"))),
    };
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match (k, v) {
            (Value::BulkString(k), Value::BulkString(v)) => {
                // The field name moves into the string unless it is not UTF-8.
                let k = String::from_utf8(k)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                out.push((k, bytes::Bytes::from(v)))
            }
            other => return Err(GridError::Protocol(format!("HGETALL pair {other:?}"))),
        }
    }
    Ok(out)
}

/// Maps a `redis` error to ours: connection-level failures are [`GridError::Unavailable`].
pub(crate) fn classify(e: redis::RedisError) -> GridError {
    let cluster_down =
        matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound | redis::ErrorKind::ClusterDown);
    if cluster_down
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        GridError::Unavailable(e.to_string())
    } else {
        GridError::Reply(e.to_string())
    }
}
