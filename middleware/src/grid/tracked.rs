//! The near cache over a cluster. The `redis` crate's cluster client (0.27) cannot deliver
//! RESP3 pushes, so tracking on its connections would never reach us. Cached reads therefore
//! go over connections of our own, one per primary that serves them: RESP3, `CLIENT
//! TRACKING ON`, every node's invalidations applied to the one near cache. The slot map comes
//! from `CLUSTER SLOTS`; a MOVED or ASK reply (a slot on the move) drops the map and that read
//! falls back to the cluster client, uncached. Writes still go through the cluster client.
//!
//! Why this is correct: a key is cached only from a read on a tracking connection to the node
//! that answered it, and that node pushes an invalidation when the key changes there or leaves
//! it (a migrated key is deleted from its old owner). A lost node connection drops the whole
//! cache, as a new one does (invalidations may have been missed meanwhile).

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{ConnectionAddr, Value};
use tokio::sync::Mutex;

use super::near::{Hash, NearCache};
use super::{classify, GridConfig, GridError};

/// Per-node tracking connections and the slot map that picks one.
pub(crate) struct TrackedNodes {
    near: Arc<NearCache<Hash>>,
    config: GridConfig,
    inner: Mutex<Inner>,
}

/// A node's host and port.
type Addr = (String, u16);

/// `(first slot, last slot, primary)` of each slot range.
type SlotRange = (u16, u16, Addr);

#[derive(Default)]
struct Inner {
    /// The primary of each slot range; empty: to be fetched.
    slots: Vec<SlotRange>,
    nodes: HashMap<Addr, MultiplexedConnection>,
}

/// Where a cached read goes: the node's tracking connection, and its address (to drop it
/// after a failure).
pub(crate) struct NodeConn {
    pub conn: MultiplexedConnection,
    addr: Addr,
}

impl TrackedNodes {
    pub(crate) fn new(near: Arc<NearCache<Hash>>, config: GridConfig) -> TrackedNodes {
        TrackedNodes { near, config, inner: Mutex::new(Inner::default()) }
    }

    /// Whether the slot map is known.
    pub(crate) async fn has_slots(&self) -> bool {
        !self.inner.lock().await.slots.is_empty()
    }

    /// Installs a slot map from a `CLUSTER SLOTS` reply.
    pub(crate) async fn set_slots(&self, reply: Value) -> Result<(), GridError> {
        let mut slots = parse_slots(reply)?;
        // A node that does not know its own address ("" or "?") is reached as the seed is.
        let seed = redis::IntoConnectionInfo::into_connection_info(self.config.urls[0].as_str()).ok();
        if let Some(ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. }) = seed.map(|i| i.addr)
        {
            for (_, _, (h, _)) in &mut slots {
                if h.is_empty() || h == "?" {
                    h.clone_from(&host);
                }
            }
        }
        self.inner.lock().await.slots = slots;
        Ok(())
    }

    /// Forgets the slot map (after MOVED/ASK): the next cached read fetches it again.
    pub(crate) async fn forget_slots(&self) {
        self.inner.lock().await.slots.clear();
    }

    /// The tracking connection to the primary that serves `key`, made on first use; `None`
    /// when the slot map does not cover the key.
    pub(crate) async fn conn_for(&self, key: &str) -> Result<Option<NodeConn>, GridError> {
        let slot = redis::cluster_routing::get_slot(key.as_bytes());
        let mut inner = self.inner.lock().await;
        let Some(addr) = inner.slots.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).map(|s| s.2.clone())
        else {
            return Ok(None);
        };
        if let Some(conn) = inner.nodes.get(&addr) {
            return Ok(Some(NodeConn { conn: conn.clone(), addr }));
        }
        let conn = self.connect(&addr).await?;
        inner.nodes.insert(addr.clone(), conn.clone());
        Ok(Some(NodeConn { conn, addr }))
    }

    /// Drops a node connection that failed, and with it everything cached.
    pub(crate) async fn broken(&self, node: &NodeConn) {
        self.inner.lock().await.nodes.remove(&node.addr);
        super::near::Invalidate::clear(&*self.near);
    }

    async fn connect(&self, (host, port): &Addr) -> Result<MultiplexedConnection, GridError> {
        let cfg = &self.config;
        // Credentials and options of the first seed, the address of this node.
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(cfg.urls[0].as_str()).map_err(classify)?;
        info.addr = match info.addr {
            // Over TLS when the seed is: the grid gives TLS clients its TLS ports.
            ConnectionAddr::TcpTls { insecure, .. } => {
                ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure, tls_params: None }
            }
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        let pushes = self.near.clone() as Arc<dyn super::near::Invalidate>;
        let mut conn = super::remote::open(cfg, info, Some(pushes)).await?;
        let on = conn.req_packed_command(redis::cmd("CLIENT").arg("TRACKING").arg("ON")).await;
        on.map_err(classify)?;
        // Whatever was cached before may have missed invalidations of a lost connection.
        super::near::Invalidate::clear(&*self.near);
        Ok(conn)
    }
}

/// Whether `e` is a cluster redirect (the slot is served elsewhere now).
pub(crate) fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Moved | redis::ErrorKind::Ask)
}

fn parse_slots(reply: Value) -> Result<Vec<SlotRange>, GridError> {
    let bad = |what: &str| GridError::Protocol(format!("CLUSTER SLOTS: {what}"));
    let Value::Array(ranges) = reply else { return Err(bad("not an array")) };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(items) = r else { return Err(bad("range not an array")) };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (items.first(), items.get(1), items.get(2))
        else {
            return Err(bad("range without a primary"));
        };
        let host = match primary.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad("primary without a host")),
        };
        let Some(Value::Int(port)) = primary.get(1) else { return Err(bad("primary without a port")) };
        out.push((*first as u16, *last as u16, (host, *port as u16)));
    }
    Ok(out)
}
