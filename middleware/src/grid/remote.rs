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

use super::near::NearCache;
use super::tracked::{is_redirect, TrackedNodes};
use super::{classify, pairs, GridConfig, GridError, Topology};

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
}

/// A remote grid client.
pub struct RemoteGrid {
    config: GridConfig,
    state: Mutex<State>,
    /// The current connection and its generation, read without awaiting the state lock (the
    /// fast path of every call); `None` while there is none.
    current: parking_lot::RwLock<Option<(Conn, u64)>>,
    near: Option<Arc<NearCache>>,
    /// Cluster topology with a near cache: the per-node tracking connections cached reads use.
    tracked: Option<TrackedNodes>,
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
        let tracked = match (&near, &config.topology) {
            (Some(near), Topology::Cluster) => Some(TrackedNodes::new(near.clone(), config.clone())),
            _ => None,
        };
        Ok(RemoteGrid {
            tracked,
            config,
            state: Mutex::new(State { conn: None, failures: 0, retry_at: None, generation: 0 }),
            current: parking_lot::RwLock::new(None),
            near,
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn conn(&self) -> Result<(Conn, u64), GridError> {
        if let Some(c) = &*self.current.read() {
            return Ok(c.clone());
        }
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            return Ok((c.clone(), st.generation));
        }
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                return Err(GridError::Unavailable("reconnect backoff".into()));
            }
        }
        match self.connect().await {
            Ok(c) => {
                st.conn = Some(c.clone());
                st.failures = 0;
                st.retry_at = None;
                st.generation += 1;
                *self.current.write() = Some((c.clone(), st.generation));
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

    async fn connect(&self) -> Result<Conn, GridError> {
        let cfg = &self.config;
        match cfg.topology {
            Topology::Single => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.urls[0].as_str())
                    .map_err(classify)?;
                let mut acc = AsyncConnectionConfig::new()
                    .set_connection_timeout(cfg.connect_timeout)
                    .set_response_timeout(cfg.response_timeout);
                if let Some(near) = &self.near {
                    info.redis.protocol = redis::ProtocolVersion::RESP3;
                    let near = near.clone();
                    acc = acc.set_push_sender(move |p: PushInfo| {
                        on_push(&near, p);
                        Ok::<(), std::convert::Infallible>(())
                    });
                }
                let client = redis::Client::open(info).map_err(classify)?;
                let mut conn = tokio::time::timeout(
                    cfg.connect_timeout,
                    client.get_multiplexed_async_connection_with_config(&acc),
                )
                .await
                .map_err(|_| GridError::Unavailable("connect timed out".into()))?
                .map_err(classify)?;
                if let Some(near) = &self.near {
                    // Anything cached before this connection may have missed its invalidation.
                    near.clear();
                    redis::cmd("CLIENT")
                        .arg("TRACKING")
                        .arg("ON")
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(classify)?;
                }
                Ok(Conn::Single(conn))
            }
            Topology::Cluster => {
                let client = redis::cluster::ClusterClient::builder(cfg.urls.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.response_timeout)
                    .retries(2)
                    .build()
                    .map_err(classify)?;
                let conn = tokio::time::timeout(cfg.connect_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| GridError::Unavailable("connect timed out".into()))?
                    .map_err(classify)?;
                Ok(Conn::Cluster(conn))
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
            if let Some(near) = &self.near {
                near.clear();
            }
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
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        for c in cmds {
            pipe.add_command(c.clone());
        }
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
        near: &NearCache,
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

/// Handles one push from the grid: invalidations drop near-cache entries; a disconnect drops
/// everything (the connection is re-made, with tracking, on the next call).
pub(super) fn on_push(near: &NearCache, p: PushInfo) {
    match p.kind {
        PushKind::Invalidate => match p.data.into_iter().next() {
            Some(Value::Array(keys)) => {
                for k in keys {
                    if let Value::BulkString(k) = k {
                        near.invalidate(&k);
                    }
                }
            }
            _ => near.clear(),
        },
        PushKind::Disconnection => near.clear(),
        _ => {}
    }
}
