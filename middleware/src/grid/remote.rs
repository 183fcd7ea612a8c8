//! A grid over the network: a cachegrid node or plain Redis through one multiplexed
//! connection, or a Redis Cluster-compatible grid through the `redis` crate's cluster client
//! (slot map, MOVED/ASK). Timeouts on every call; a lost connection is re-made on the next
//! call, no sooner than a jittered exponential backoff allows; an outage is logged once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Mutex;

use super::coalesce::Coalesce;
use super::near::{Hash, Invalidate, NearCache};
use super::tracked::{is_redirect, TrackedNodes};
use super::{classify, pairs, GridConfig, GridError, Listeners, Topology};

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

struct State {
    conn: Option<Conn>,
    /// Consecutive failed connects.
    failures: u32,
    /// No connect attempt before this.
    retry_at: Option<Instant>,
    /// Bumped per new connection, so a failure seen on an old one does not drop a new one.
    generation: u64,
    /// Whether `conn` has CLIENT TRACKING on (and hands its pushes to the listeners).
    tracked: bool,
}

/// A remote grid client.
pub struct RemoteGrid {
    config: GridConfig,
    state: Mutex<State>,
    /// The current connection, its generation and whether it tracks, read without awaiting
    /// the state lock (the fast path of every call); `None` while there is none.
    current: parking_lot::RwLock<Option<(Conn, u64, bool)>>,
    near: Option<Arc<NearCache<Hash>>>,
    /// Cluster topology with a near cache: the per-node tracking connections cached reads use.
    tracked: Option<TrackedNodes>,
    /// Near caches told of every invalidation pushed on the tracking connection.
    listeners: Arc<Listeners>,
    /// Whether a listener asked for tracking after the connection was made without it.
    wants_tracking: AtomicBool,
    /// Whether an outage is being reported (so it is logged once, and its end once).
    down: Arc<AtomicBool>,
}

impl RemoteGrid {
    /// A client for `config`; connects on first use.
    pub fn new(config: GridConfig) -> Result<RemoteGrid, GridError> {
        if config.urls.is_empty() {
            return Err(GridError::Unavailable("no grid URL given".into()));
        }
        let near = config.near_cache.as_ref().map(|c| Arc::new(NearCache::new(c)));
        let listeners = Arc::new(Listeners::default());
        if let Some(near) = &near {
            let weak: std::sync::Weak<dyn Invalidate> = Arc::downgrade(near) as _;
            listeners.add(weak);
        }
        let tracked = match (&near, &config.topology) {
            (Some(near), Topology::Cluster) => Some(TrackedNodes::new(near.clone(), config.clone())),
            _ => None,
        };
        Ok(RemoteGrid {
            tracked,
            current: parking_lot::RwLock::new(None),
            wants_tracking: AtomicBool::new(near.is_some()),
            config,
            state: Mutex::new(State {
                conn: None,
                failures: 0,
                retry_at: None,
                generation: 0,
                tracked: false,
            }),
            near,
            listeners,
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Tells `listener` of every invalidation from now on: turns CLIENT TRACKING on (a
    /// connection made without it is re-made on the next call). Single topology only.
    pub(crate) fn track(&self, listener: std::sync::Weak<dyn Invalidate>) -> Result<(), GridError> {
        if self.config.topology == Topology::Cluster {
            return Err(GridError::Unsupported("invalidations need a single-node topology".into()));
        }
        self.listeners.add(listener);
        self.wants_tracking.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.config.topology == Topology::Cluster
    }

    fn tracking(&self) -> bool {
        self.wants_tracking.load(Ordering::Acquire)
    }

    async fn conn(&self) -> Result<(Conn, u64), GridError> {
        if let Some((c, g, tracked)) = &*self.current.read() {
            if *tracked || !self.tracking() {
                return Ok((c.clone(), *g));
            }
        }
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            if st.tracked || !self.tracking() {
                return Ok((c.clone(), st.generation));
            }
            // Tracking was asked for since: a new connection, with it.
            st.conn = None;
            *self.current.write() = None;
        }
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                return Err(GridError::Unavailable("reconnect backoff".into()));
            }
        }
        match self.connect(st.generation > 0).await {
            Ok((c, tracked)) => {
                st.conn = Some(c.clone());
                st.tracked = tracked;
                st.failures = 0;
                st.retry_at = None;
                st.generation += 1;
                *self.current.write() = Some((c.clone(), st.generation, tracked));
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!(urls = ?self.config.urls, "grid reachable again");
                }
                Ok((c, st.generation))
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(Instant::now() + self.backoff(st.failures));
                self.report_down(&e);
                Err(e)
            }
        }
    }

    /// Exponential backoff with full jitter in [d/2, d].
    fn backoff(&self, failures: u32) -> Duration {
        let exp = self.config.min_backoff.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
        let d = exp.min(self.config.max_backoff);
        let half = d / 2;
        half + Duration::from_micros(rand::thread_rng().gen_range(0..=half.as_micros() as u64))
    }

    fn report_down(&self, e: &GridError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(urls = ?self.config.urls, error = %e, "grid unreachable");
        }
    }

    /// A new connection, and whether it tracks. `again`: one was made before, so near-cache
    /// entries read over it may have missed their invalidations.
    async fn connect(&self, again: bool) -> Result<(Conn, bool), GridError> {
        let cfg = &self.config;
        let tracking = self.tracking();
        match cfg.topology {
            Topology::Single => {
                let info = redis::IntoConnectionInfo::into_connection_info(cfg.urls[0].as_str())
                    .map_err(classify)?;
                let pushes = tracking.then(|| self.listeners.clone() as Arc<dyn Invalidate>);
                let mut conn = open(cfg, info, pushes).await?;
                if tracking {
                    // Anything cached before this connection may have missed its invalidation.
                    // (Not on the first: nothing is cached yet, and reads already under way
                    // would lose their fill for nothing.)
                    if again {
                        self.listeners.clear();
                    }
                    // NOLOOP: writes through this client are dropped from its near caches by
                    // the writer itself (`forget`), at once rather than when a push arrives.
                    redis::cmd("CLIENT")
                        .arg("TRACKING")
                        .arg("ON")
                        .arg("NOLOOP")
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(classify)?;
                }
                Ok((Conn::Single(conn), tracking))
            }
            Topology::Cluster => {
                let mut builder = redis::cluster::ClusterClient::builder(cfg.urls.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.response_timeout)
                    .retries(2);
                if let Some(tls) = &cfg.tls {
                    builder = builder.certs(tls.certificates());
                }
                let client = builder.build().map_err(classify)?;
                let conn = tokio::time::timeout(cfg.connect_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| GridError::Unavailable("connect timed out".into()))?
                    .map_err(classify)?;
                Ok((Conn::Cluster(conn), false))
            }
        }
    }

    /// Forgets a connection that failed, so the next call reconnects.
    async fn broken(&self, e: &GridError, generation: u64) {
        if matches!(e, GridError::Unavailable(_)) {
            let mut st = self.state.lock().await;
            if st.generation != generation || st.conn.is_none() {
                return;
            }
            st.conn = None;
            *self.current.write() = None;
            st.failures = st.failures.saturating_add(1);
            st.retry_at = Some(Instant::now() + self.backoff(st.failures));
            self.listeners.clear();
            self.report_down(e);
        }
    }

    /// Awaits a call, forgetting the connection if it failed. The reply timeout is the
    /// connection's own (`response_timeout`, given to the `redis` crate at connect), so no
    /// timer is armed here per call.
    async fn timed<T>(
        &self,
        generation: u64,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, GridError> {
        let r = f.await.map_err(classify);
        if let Err(e) = &r {
            self.broken(e, generation).await;
        }
        r
    }

    /// Runs one command.
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<Value, GridError> {
        match self.conn().await? {
            (Conn::Single(mut c), g) => self.timed(g, c.req_packed_command(cmd)).await,
            (Conn::Cluster(mut c), g) => self.timed(g, c.req_packed_command(cmd)).await,
        }
    }

    /// Runs `cmds` as one MULTI/EXEC transaction; one value per command.
    pub async fn transaction(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, GridError> {
        self.pipelined(cmds, true).await
    }

    /// Sends `cmds` in one write and reads their replies (not atomic: others' commands may
    /// run between them); one value per command, error replies included.
    pub async fn pipeline(&self, cmds: &[redis::Cmd]) -> Result<Vec<Value>, GridError> {
        self.pipelined(cmds, false).await
    }

    async fn pipelined(&self, cmds: &[redis::Cmd], atomic: bool) -> Result<Vec<Value>, GridError> {
        let mut pipe = redis::Pipeline::with_capacity(cmds.len());
        if atomic {
            pipe.atomic();
        }
        for c in cmds {
            pipe.add_command(c.clone());
        }
        self.run(&pipe).await
    }

    /// Runs a prepared pipeline (a transaction if it is atomic); one value per command.
    pub async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, GridError> {
        let v: Value = match self.conn().await? {
            (Conn::Single(mut c), g) => self.timed(g, pipe.query_async(&mut c)).await?,
            (Conn::Cluster(mut c), g) => self.timed(g, pipe.query_async(&mut c)).await?,
        };
        match v {
            Value::Array(items) => Ok(items),
            Value::Nil => Err(GridError::Reply("transaction aborted".into())),
            other => Err(GridError::Protocol(format!("pipeline gave {other:?}"))),
        }
    }

    /// HGETALL through the near cache.
    pub async fn hgetall(&self, key: &str) -> Result<Arc<Vec<(String, bytes::Bytes)>>, GridError> {
        let Some(near) = &self.near else {
            return Ok(Arc::new(pairs(self.query(redis::cmd("HGETALL").arg(key)).await?)?));
        };
        if let Some(tracked) = &self.tracked {
            return self.hgetall_cluster(near, tracked, key).await;
        }
        let epoch = near.epoch();
        if let Some(hit) = near.get(key) {
            if !self.config.near_cache.as_ref().is_some_and(|c| c.confirm_hits) {
                return Ok(hit);
            }
            // The barrier: pushes queued before it arrive before its reply.
            self.query(&redis::cmd("PING")).await?;
            if near.confirms(key, &hit) {
                return Ok(hit);
            }
        }
        let v = Arc::new(pairs(self.query(redis::cmd("HGETALL").arg(key)).await?)?);
        near.fill(key, epoch, v.clone());
        Ok(v)
    }

    /// HGETALL through the near cache over a cluster: on the tracking connection of the node
    /// that serves `key` (see [`TrackedNodes`]); uncached through the cluster client when that
    /// node is not known or the slot moved.
    async fn hgetall_cluster(
        &self,
        near: &NearCache<Hash>,
        tracked: &TrackedNodes,
        key: &str,
    ) -> Result<Arc<Vec<(String, bytes::Bytes)>>, GridError> {
        let uncached = || async { Ok(Arc::new(pairs(self.query(redis::cmd("HGETALL").arg(key)).await?)?)) };
        if !tracked.has_slots().await {
            let slots = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
            tracked.set_slots(slots).await?;
        }
        let Ok(Some(mut node)) = tracked.conn_for(key).await else { return uncached().await };
        let epoch = near.epoch();
        let timeout = self.config.response_timeout;
        let call = |conn: &mut MultiplexedConnection, cmd: redis::Cmd| {
            let mut conn = conn.clone();
            async move {
                match tokio::time::timeout(timeout, conn.req_packed_command(&cmd)).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))
                    }
                }
            }
        };
        let hit = near.get(key);
        let confirm = self.config.near_cache.as_ref().is_some_and(|c| c.confirm_hits);
        if let (Some(hit), false) = (&hit, confirm) {
            return Ok(hit.clone());
        }
        let result = async {
            if let Some(hit) = hit {
                // The barrier, on the connection that carries this key's invalidations.
                call(&mut node.conn, redis::cmd("PING")).await?;
                if near.confirms(key, &hit) {
                    return Ok((hit, false));
                }
            }
            let v = call(&mut node.conn, redis::cmd("HGETALL").arg(key).clone()).await?;
            let v = pairs(v).map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected HGETALL reply"))
            })?;
            Ok::<_, redis::RedisError>((Arc::new(v), true))
        }
        .await;
        match result {
            Ok((v, read)) => {
                if read {
                    near.fill(key, epoch, v.clone());
                }
                Ok(v)
            }
            Err(e) if is_redirect(&e) => {
                tracked.forget_slots().await;
                uncached().await
            }
            Err(e) => {
                let e = classify(e);
                if matches!(e, GridError::Unavailable(_)) {
                    tracked.broken(&node).await;
                    return uncached().await;
                }
                Err(e)
            }
        }
    }

    /// Drops `key` from the near cache.
    pub async fn forget(&self, key: &str) {
        if let Some(near) = &self.near {
            near.invalidate(key.as_bytes());
        }
    }
}

/// Opens one connection to `info` with the grid's timeouts; with `pushes`, in RESP3 with every
/// push (invalidations, disconnection) handed to that target.
pub(super) async fn open(
    cfg: &GridConfig,
    mut info: redis::ConnectionInfo,
    pushes: Option<Arc<dyn Invalidate>>,
) -> Result<MultiplexedConnection, GridError> {
    let mut acc = AsyncConnectionConfig::new()
        .set_connection_timeout(cfg.connect_timeout)
        .set_response_timeout(cfg.response_timeout);
    if let Some(target) = pushes {
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        acc = acc.set_push_sender(move |p: PushInfo| {
            on_push(&*target, p);
            Ok::<(), std::convert::Infallible>(())
        });
    }
    let timed_out = |_| GridError::Unavailable("connect timed out".into());
    if let redis::ConnectionAddr::Tcp(host, port) = &info.addr {
        // Our own socket, so writes are coalesced (see `Coalesce`); the `redis` crate still
        // does the protocol, the connection setup (HELLO, AUTH, SELECT) and the multiplexing.
        let connect = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            // Commands are gathered by `Coalesce`: what it writes goes out at once.
            stream.set_nodelay(true)?;
            let (conn, driver) =
                MultiplexedConnection::new_with_config(&info.redis, Coalesce::new(stream), acc).await?;
            // The driver ends once every clone of the connection is dropped (its queue closes).
            tokio::spawn(driver);
            Ok::<_, redis::RedisError>(conn)
        };
        return tokio::time::timeout(cfg.connect_timeout, connect)
            .await
            .map_err(timed_out)?
            .map_err(classify);
    }
    let client = cfg.client(info).map_err(classify)?;
    tokio::time::timeout(cfg.connect_timeout, client.get_multiplexed_async_connection_with_config(&acc))
        .await
        .map_err(timed_out)?
        .map_err(classify)
}

/// Handles one push from the grid: invalidations drop near-cache entries; a disconnect drops
/// everything (the connection is re-made, with tracking, on the next call).
pub(super) fn on_push(listeners: &dyn Invalidate, p: PushInfo) {
    match p.kind {
        PushKind::Invalidate => match p.data.into_iter().next() {
            Some(Value::Array(keys)) => {
                for k in keys {
                    if let Value::BulkString(k) = k {
                        listeners.invalidate(&k);
                    }
                }
            }
            _ => listeners.clear(),
        },
        PushKind::Disconnection => listeners.clear(),
        _ => {}
    }
}
