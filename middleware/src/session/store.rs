//! Where sessions live: the [`SessionStore`] trait the layer uses, and its two stores over the
//! grid client, [`RemoteStore`] and [`EmbeddedStore`]. Both also implement
//! `tower_sessions_core::SessionStore` (0.14), so an app on tower-sessions switches by
//! changing its store line.
//!
//! Layout: one hash per session, `{prefix}{ID}` (the braces make the id the hash tag, so a
//! session stays on one slot), one field `k:<name>` per session key plus `m:c` (created, unix
//! ms), `m:t` (last refresh) and, when the handler
//! set one, `m:x` (the session's own expiry). A write sends only changed fields (HSET/HDEL)
//! and the new PEXPIREAT in one round trip: pipelined for an update, in MULTI/EXEC for a new
//! or replaced hash. An update between two idle-expiry refreshes leaves the expiry alone
//! (`PEXPIREAT .. NX` only guards a hash the write re-created).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use super::SessionId;
use crate::grid::{EmbeddedGrid, Grid, GridConfig, GridError};

/// Field holding the creation time.
pub(crate) const CREATED: &str = "m:c";
/// Field holding the last idle-expiry refresh.
pub(crate) const TOUCHED: &str = "m:t";
/// Field holding the session's own expiry ([`Session::set_expiry`](super::Session::set_expiry)).
pub(crate) const EXPIRY: &str = "m:x";
/// Prefix of a session key's field.
pub(crate) const KEY_FIELD: &str = "k:";

/// One write-back of a session.
#[derive(Debug, Default, Clone)]
pub struct SessionWrite {
    /// Delete the whole hash first (clear, id rotation, a new session).
    pub replace: bool,
    /// Fields to set.
    pub set: Vec<(String, Bytes)>,
    /// Fields to delete.
    pub del: Vec<String>,
    /// New expiry (unix ms); `None`: no expiry.
    pub expire_at_ms: Option<u64>,
    /// Leave the hash's expiry as it is: `expire_at_ms` is then only given to a hash that
    /// has none (one the write created because the session expired since it was loaded).
    pub keep_expiry: bool,
}

/// The storage the session layer needs: load a session's fields, write back a change, delete.
pub trait SessionStore: Clone + Send + Sync + 'static {
    /// All fields of the session `id`; empty when it does not exist.
    fn load(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Arc<Vec<(String, Bytes)>>, GridError>> + Send;
    /// Applies `write` to the session `id` atomically.
    fn write(
        &self,
        id: &SessionId,
        write: &SessionWrite,
    ) -> impl Future<Output = Result<(), GridError>> + Send;
    /// Removes the session `id`.
    fn delete(&self, id: &SessionId) -> impl Future<Output = Result<(), GridError>> + Send;
}

/// The implementation both stores share.
#[derive(Clone)]
struct GridStore {
    grid: Grid,
    prefix: Arc<str>,
}

impl GridStore {
    fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 34);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(std::str::from_utf8(&id.hex()).unwrap_or_default());
        key.push('}');
        key
    }

    /// The key of a tower-sessions record.
    fn tower_key(&self, id: &impl std::fmt::Display) -> String {
        format!("{}{{{}}}", self.prefix, id)
    }

    async fn load(&self, id: &SessionId) -> Result<Arc<Vec<(String, Bytes)>>, GridError> {
        self.grid.hgetall(&self.key(id)).await
    }

    async fn write(&self, id: &SessionId, w: &SessionWrite) -> Result<(), GridError> {
        let key = self.key(id);
        // A new or replaced hash is written atomically (no reader sees it without its expiry).
        // An update is only pipelined: HSET/HDEL keep the key's expiry, so a PEXPIREAT that
        // never ran (a connection lost between them) leaves the previous expiry, and the node
        // saves MULTI, EXEC and their queueing. (Had the hash expired since the load, HSET
        // makes a new one without `m:c`, which is never loaded as a session, and the
        // PEXPIREAT, NX or not, gives it an expiry.)
        let mut pipe = redis::Pipeline::with_capacity(4);
        if w.replace {
            pipe.atomic();
            pipe.cmd("DEL").arg(&key);
        }
        if !w.set.is_empty() {
            let size = key.len() + w.set.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
            let mut c = redis::Cmd::with_capacity(2 + 2 * w.set.len(), 4 + size);
            c.arg("HSET").arg(&key);
            for (f, v) in &w.set {
                c.arg(f.as_str()).arg(v.as_ref());
            }
            pipe.add_command(c);
        }
        if !w.del.is_empty() && !w.replace {
            pipe.cmd("HDEL").arg(&key);
            for f in &w.del {
                pipe.arg(f.as_str());
            }
        }
        match (w.expire_at_ms, w.keep_expiry) {
            (Some(at), false) => {
                pipe.cmd("PEXPIREAT").arg(&key).arg(at);
            }
            (Some(at), true) => {
                pipe.cmd("PEXPIREAT").arg(&key).arg(at).arg("NX");
            }
            (None, false) => {
                pipe.cmd("PERSIST").arg(&key);
            }
            (None, true) => {}
        }
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        let out = self.grid.run(&pipe).await;
        self.grid.forget(&key).await;
        for v in out? {
            if let Value::ServerError(e) = v {
                return Err(GridError::Reply(format!("{e:?}")));
            }
        }
        Ok(())
    }

    async fn delete(&self, id: &SessionId) -> Result<(), GridError> {
        self.delete_key(self.key(id)).await
    }

    async fn delete_key(&self, key: String) -> Result<(), GridError> {
        let r = self.grid.query(redis::cmd("DEL").arg(&key)).await.map(|_| ());
        self.grid.forget(&key).await;
        r
    }
}

/// Sessions in a remote grid: a cachegrid node, plain Redis, or Redis Cluster.
///
/// ```no_run
/// use cachegrid_middleware::grid::GridConfig;
/// use cachegrid_middleware::session::RemoteStore;
///
/// let store = RemoteStore::new(GridConfig::single("redis://127.0.0.1:7000")).unwrap();
/// // or: RemoteStore::new(GridConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]))
/// ```
#[derive(Clone)]
pub struct RemoteStore(GridStore);

impl RemoteStore {
    /// A store over a new client for `config` (connects on first use).
    pub fn new(config: GridConfig) -> Result<RemoteStore, GridError> {
        Ok(RemoteStore::with_grid(Grid::remote(config)?, "session:"))
    }

    /// A store over an existing grid client, with key prefix `prefix`.
    pub fn with_grid(grid: Grid, prefix: &str) -> RemoteStore {
        RemoteStore(GridStore { grid, prefix: prefix.into() })
    }

    /// The grid client.
    pub fn grid(&self) -> &Grid {
        &self.0.grid
    }
}

/// Sessions in a cachegrid node embedded in this process (the app server is a grid member;
/// session calls run the node's dispatcher directly).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cachegrid_middleware::session::EmbeddedStore;
///
/// let store = EmbeddedStore::start().await.unwrap();
/// println!("other processes reach this node on {:?}", store.addr());
/// # }
/// ```
#[derive(Clone)]
pub struct EmbeddedStore(GridStore);

impl EmbeddedStore {
    /// Starts a node on a free loopback port.
    pub async fn start() -> Result<EmbeddedStore, GridError> {
        Ok(EmbeddedStore::with_grid(EmbeddedGrid::start_default().await?, "session:"))
    }

    /// A store over an embedded grid, with key prefix `prefix`.
    pub fn with_grid(grid: Grid, prefix: &str) -> EmbeddedStore {
        EmbeddedStore(GridStore { grid, prefix: prefix.into() })
    }

    /// Where other processes reach the embedded node.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match &self.0.grid {
            Grid::Embedded(e) => Some(e.addr()),
            Grid::Remote(_) => None,
        }
    }

    /// The grid client.
    pub fn grid(&self) -> &Grid {
        &self.0.grid
    }
}

macro_rules! stores {
    ($($t:ty),*) => {$(
        impl SessionStore for $t {
            async fn load(&self, id: &SessionId) -> Result<Arc<Vec<(String, Bytes)>>, GridError> {
                self.0.load(id).await
            }
            async fn write(&self, id: &SessionId, w: &SessionWrite) -> Result<(), GridError> {
                self.0.write(id, w).await
            }
            async fn delete(&self, id: &SessionId) -> Result<(), GridError> {
                self.0.delete(id).await
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("prefix", &self.0.prefix).finish()
            }
        }

        #[async_trait::async_trait]
        impl tower_sessions_core::SessionStore for $t {
            async fn save(&self, record: &tower_sessions_core::session::Record) -> tower_sessions_core::session_store::Result<()> {
                tower::save(&self.0, record).await
            }
            async fn load(
                &self,
                id: &tower_sessions_core::session::Id,
            ) -> tower_sessions_core::session_store::Result<Option<tower_sessions_core::session::Record>> {
                tower::load(&self.0, id).await
            }
            async fn delete(&self, id: &tower_sessions_core::session::Id) -> tower_sessions_core::session_store::Result<()> {
                self.0.delete_key(self.0.tower_key(id)).await.map_err(tower::backend)
            }
        }
    )*};
}

stores!(RemoteStore, EmbeddedStore);

/// tower-sessions records in the same hash layout. Their values are `serde_json::Value`s,
/// which bincode cannot encode, so these fields hold JSON (the documented fallback).
mod tower {
    use tower_sessions_core::session::{Id, Record};
    use tower_sessions_core::session_store::{Error, Result};

    use super::{GridStore, KEY_FIELD};
    use crate::grid::GridError;

    const EXPIRY: &str = "m:e";

    pub(super) fn backend(e: GridError) -> Error {
        Error::Backend(e.to_string())
    }

    pub(super) async fn save(store: &GridStore, r: &Record) -> Result<()> {
        let key = store.tower_key(&r.id);
        let at = (r.expiry_date.unix_timestamp_nanos() / 1_000_000).max(1) as u64;
        let mut hset = redis::cmd("HSET");
        hset.arg(&key).arg(EXPIRY).arg(at);
        for (k, v) in &r.data {
            let json = serde_json::to_vec(v).map_err(|e| Error::Encode(e.to_string()))?;
            hset.arg(format!("{KEY_FIELD}{k}")).arg(json);
        }
        let cmds =
            [redis::cmd("DEL").arg(&key).clone(), hset, redis::cmd("PEXPIREAT").arg(&key).arg(at).clone()];
        let r = store.grid.transaction(&cmds).await;
        store.grid.forget(&key).await;
        r.map(|_| ()).map_err(backend)
    }

    pub(super) async fn load(store: &GridStore, id: &Id) -> Result<Option<Record>> {
        let fields = store.grid.hgetall(&store.tower_key(id)).await.map_err(backend)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut data = std::collections::HashMap::new();
        let mut expiry = None;
        for (f, v) in fields.iter() {
            if f == EXPIRY {
                let ms: i128 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Decode("bad expiry".into()))?;
                expiry = time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok();
            } else if let Some(k) = f.strip_prefix(KEY_FIELD) {
                data.insert(
                    k.to_owned(),
                    serde_json::from_slice(v).map_err(|e| Error::Decode(e.to_string()))?,
                );
            }
        }
        let expiry_date = expiry.ok_or_else(|| Error::Decode("session without expiry".into()))?;
        if expiry_date <= time::OffsetDateTime::now_utc() {
            return Ok(None);
        }
        Ok(Some(Record { id: *id, data, expiry_date }))
    }
}
