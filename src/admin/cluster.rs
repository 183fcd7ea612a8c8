//! What `/cluster`, the dashboard and `cachegrid status` show: a list of nodes. Today the grid
//! is this one node ([`LocalNode`]); the grid replaces the source with one that knows every
//! member (see [`ClusterSource`]), and the JSON keeps its shape.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::OpsRate;
use crate::server::Server;
use crate::store::slot::SLOT_COUNT;

/// One node as the admin port reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Node id (40 hex characters, as Redis Cluster ids).
    pub id: String,
    /// Client address (Redis protocol).
    pub address: String,
    /// Admin HTTP address.
    pub admin: String,
    /// Failure zone; absent while the node is not part of a zoned grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `primary` or `replica`.
    pub role: String,
    /// Slot ranges served, inclusive: `[[0, 16383]]`.
    pub slots: Vec<[u16; 2]>,
    /// Keys held (as DBSIZE).
    pub keys: u64,
    /// Bytes in use, by the allocator's count.
    pub memory_bytes: u64,
    /// `maxmemory`; 0 means none.
    pub maxmemory_bytes: u64,
    /// Connected clients.
    pub clients: u64,
    /// Commands per second over the last second.
    pub ops_per_sec: u64,
    /// Seconds since the node started.
    pub uptime_seconds: u64,
    /// Whether `/ready` would say yes (serving, not draining).
    pub ready: bool,
    /// cachegrid version.
    pub version: String,
}

impl NodeStatus {
    /// Number of slots served.
    pub fn slot_count(&self) -> u32 {
        self.slots.iter().map(|[a, b]| u32::from(*b) - u32::from(*a) + 1).sum()
    }
}

/// The whole `/cluster` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// Id of the node that answered.
    pub myself: String,
    /// Total hash slots (16384).
    pub slots_total: u32,
    /// Every node known, the answering one included.
    pub nodes: Vec<NodeStatus>,
}

/// Where the list of nodes comes from. The grid implements this over its membership and the
/// stats nodes exchange on the bus, and installs it with [`super::Admin::set_cluster_source`].
pub trait ClusterSource: Send + Sync {
    /// The nodes now; `local` is this node's own status, freshly measured.
    fn nodes(&self, local: NodeStatus) -> Vec<NodeStatus>;
}

/// A node on its own: it is the whole grid and serves every slot.
pub struct LocalNode;

impl ClusterSource for LocalNode {
    fn nodes(&self, local: NodeStatus) -> Vec<NodeStatus> {
        vec![local]
    }
}

/// This node's status now.
pub fn local_status(server: &Arc<Server>, admin: &str, rate: &OpsRate) -> NodeStatus {
    let ready = is_ready(server);
    NodeStatus {
        id: server.run_id.clone(),
        address: server.addr.read().map(|a| a.to_string()).unwrap_or_default(),
        admin: admin.to_string(),
        zone: None,
        role: "primary".into(),
        slots: vec![[0, (SLOT_COUNT - 1) as u16]],
        keys: server.keyspace.len() as u64,
        memory_bytes: server.used_memory() as u64,
        maxmemory_bytes: server.maxmemory.load(Ordering::Relaxed),
        clients: server.clients.len() as u64,
        ops_per_sec: rate.get(),
        uptime_seconds: server.uptime().as_secs(),
        ready,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Serving and not draining or shutting down.
pub fn is_ready(server: &Server) -> bool {
    !server.draining.load(Ordering::Relaxed) && !server.shutdown.is_cancelled()
}
