//! What `/cluster`, the dashboard and `cachegrid status` show: every node of the grid. The
//! answering node's slot map gives each member's id, address, zone, roles and slots (one
//! consistent view); each member's own figures (keys, memory, replica lag, write-behind queue)
//! are asked for over the cluster bus (`BusRequest::Status`), which every member reaches
//! anyway, unlike admin ports that may be bound to loopback. A member that does not answer in
//! time is listed as unreachable; it never makes the page fail. A standalone node is a grid of
//! one serving every slot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::slotmap::slot_ranges;
use crate::cluster::{NodeId, SlotMap};
use crate::server::Server;
use crate::store::slot::SLOT_COUNT;

/// How long the answering node waits for a member's figures.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);

/// One node as the admin port reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Node id (40 hex characters, as Redis Cluster ids; a standalone node's run id).
    pub id: String,
    /// Client address (Redis protocol).
    pub address: String,
    /// Admin HTTP address, as the node itself reports it; empty when it did not answer.
    pub admin: String,
    /// Failure zone; absent on a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The node's roles in one word: `primary`, `replica`, `primary+replica` (a grid node is
    /// usually both, for different slots) or `none` (it holds no slot).
    pub role: String,
    /// The same as a list: `["primary", "replica"]`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Slot ranges served as primary, inclusive: `[[0, 16383]]`.
    pub slots: Vec<[u16; 2]>,
    /// Slot ranges held as a replica, inclusive.
    #[serde(default)]
    pub replica_slots: Vec<[u16; 2]>,
    /// Slots on their way to this node (it is their new primary once their keys are in).
    #[serde(default)]
    pub slots_importing: u32,
    /// Slots on their way from this node to another.
    #[serde(default)]
    pub slots_migrating: u32,
    /// Whether this node is the Raft leader (the one that commits membership changes).
    #[serde(default)]
    pub leader: bool,
    /// Whether this node is leaving the grid (its slots are moving away).
    #[serde(default)]
    pub leaving: bool,
    /// Whether the node answered; when false, the figures below are zeros, not measurements.
    #[serde(default = "yes")]
    pub reachable: bool,
    /// Keys held (as DBSIZE), replica copies included.
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
    /// Whether its `/ready` says yes.
    pub ready: bool,
    /// Why it is not ready (what `/ready` answers with its 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    /// cachegrid version.
    pub version: String,
    /// For each replica of the slots this node is primary of: how far behind it is.
    #[serde(default)]
    pub replication: Vec<ReplicaStatus>,
    /// Write-behind queues, one per Postgres-backed key space (empty without any).
    #[serde(default)]
    pub writebehind: Vec<QueueStatus>,
    /// With Postgres-backed key spaces: whether Postgres is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_up: Option<bool>,
}

fn yes() -> bool {
    true
}

/// How far one replica is behind its primary (the node reporting it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// The replica's node id.
    pub replica: String,
    /// Changed keys not yet sent to it (a full sync counts every key of the slot).
    pub pending_keys: u64,
    /// Seconds since it was last caught up; 0 when it is.
    pub lag_seconds: f64,
}

/// One write-behind queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueStatus {
    /// The key space's name.
    pub keyspace: String,
    /// Keys waiting to be written to Postgres.
    pub pending_keys: u64,
    /// Bytes of the durable queue on disk.
    pub queue_bytes: u64,
    /// Age of the oldest write not yet in Postgres, in seconds.
    pub oldest_pending_seconds: f64,
    /// Failed batch attempts so far.
    pub failures: u64,
}

impl NodeStatus {
    /// Number of slots served as primary.
    pub fn slot_count(&self) -> u32 {
        count(&self.slots)
    }

    /// Number of slots held as a replica.
    pub fn replica_slot_count(&self) -> u32 {
        count(&self.replica_slots)
    }

    /// The largest replication lag of this node's replicas, in seconds, and the keys pending
    /// for them all.
    pub fn worst_lag(&self) -> (f64, u64) {
        let lag = self.replication.iter().map(|r| r.lag_seconds).fold(0.0, f64::max);
        (lag, self.replication.iter().map(|r| r.pending_keys).sum())
    }
}

fn count(ranges: &[[u16; 2]]) -> u32 {
    ranges.iter().map(|[a, b]| u32::from(*b) - u32::from(*a) + 1).sum()
}

/// The whole `/cluster` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// Id of the node that answered.
    pub myself: String,
    /// Total hash slots (16384).
    pub slots_total: u32,
    /// Epoch of the slot map the answering node has; absent on a standalone node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Slots moving between nodes right now, in the whole grid (0: settled).
    #[serde(default)]
    pub slots_moving: u32,
    /// Every node known, the answering one included.
    pub nodes: Vec<NodeStatus>,
}

/// This node's status: its own figures, and its place in the slot map it has.
pub fn local_status(server: &Arc<Server>, admin: &str, ops_per_sec: u64) -> NodeStatus {
    let not_ready = not_ready(server);
    let mut status = NodeStatus {
        id: server.run_id.clone(),
        address: server.addr.read().map(|a| a.to_string()).unwrap_or_default(),
        admin: admin.to_string(),
        zone: None,
        role: "primary".into(),
        roles: vec!["primary".into()],
        slots: vec![[0, (SLOT_COUNT - 1) as u16]],
        replica_slots: Vec::new(),
        slots_importing: 0,
        slots_migrating: 0,
        leader: false,
        leaving: false,
        reachable: true,
        keys: server.keyspace.len() as u64,
        memory_bytes: server.used_memory() as u64,
        maxmemory_bytes: server.maxmemory.load(Ordering::Relaxed),
        clients: server.clients.len() as u64,
        ops_per_sec,
        uptime_seconds: server.uptime().as_secs(),
        ready: not_ready.is_none(),
        not_ready,
        version: env!("CARGO_PKG_VERSION").into(),
        replication: Vec::new(),
        writebehind: Vec::new(),
        postgres_up: None,
    };
    if let Some(p) = server.persistence.get() {
        let (up, queues) = p.admin_status();
        status.postgres_up = Some(up);
        status.writebehind = queues;
    }
    if let Some(cluster) = server.cluster.get() {
        let view = cluster.view();
        status.id = cluster.me.to_string();
        status.zone = Some(server.config.read().zone.clone());
        let grid = Grid::of(server);
        grid.describe(&mut status, &view.map, cluster.me);
        if let Some(r) = server.replication.get() {
            status.replication = r
                .lag(replicas_of(&view.map, view.me))
                .into_iter()
                .map(|l| ReplicaStatus {
                    replica: l.replica.to_string(),
                    pending_keys: l.pending_keys as u64,
                    lag_seconds: l.behind.as_secs_f64(),
                })
                .collect();
        }
    }
    status
}

/// The replicas of the slots `me` is primary of, in node order.
pub fn replicas_of(map: &SlotMap, me: Option<u16>) -> Vec<NodeId> {
    let Some(me) = me else { return Vec::new() };
    let mut seen = vec![false; map.nodes.len()];
    for o in map.slots.iter().filter(|o| o.primary == Some(me)) {
        for &r in &o.replicas {
            seen[r as usize] = true;
        }
    }
    seen.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| map.nodes[i].id).collect()
}

/// What the grid's agreement says beyond the map: the leader and who is leaving.
struct Grid {
    leader: Option<NodeId>,
    leaving: Vec<NodeId>,
}

impl Grid {
    fn of(server: &Server) -> Grid {
        let Some(c) = server.consensus.get() else { return Grid { leader: None, leaving: Vec::new() } };
        Grid { leader: c.leader(), leaving: c.leaving() }
    }

    /// Sets `status`'s place in `map`: roles, slot ranges, moves, leadership.
    fn describe(&self, status: &mut NodeStatus, map: &SlotMap, id: NodeId) {
        status.leader = self.leader == Some(id);
        status.leaving = self.leaving.contains(&id);
        let Some(i) = map.index_of(&id) else {
            (status.slots, status.replica_slots) = (Vec::new(), Vec::new());
            (status.slots_importing, status.slots_migrating) = (0, 0);
            (status.role, status.roles) = ("none".into(), Vec::new());
            return;
        };
        status.slots = slot_ranges(map.slots.iter().map(|o| o.primary == Some(i)));
        status.replica_slots = slot_ranges(map.slots.iter().map(|o| o.replicas.contains(&i)));
        status.slots_importing = map.migrations.values().filter(|m| m.to == i).count() as u32;
        status.slots_migrating = map.migrations.values().filter(|m| m.from == i).count() as u32;
        status.roles = [("primary", !status.slots.is_empty()), ("replica", !status.replica_slots.is_empty())]
            .into_iter()
            .filter(|(_, has)| *has)
            .map(|(r, _)| r.to_string())
            .collect();
        status.role = if status.roles.is_empty() { "none".into() } else { status.roles.join("+") };
    }
}

/// The `/cluster` document: every member of the map this node has (and this node, if it is
/// not in it yet or any more), each member's figures asked for over the bus in parallel.
pub async fn grid_view(server: &Arc<Server>, local: NodeStatus) -> ClusterView {
    let myself = local.id.clone();
    let Some(cluster) = server.cluster.get() else {
        return ClusterView {
            myself,
            slots_total: SLOT_COUNT as u32,
            epoch: None,
            slots_moving: 0,
            nodes: vec![local],
        };
    };
    let view = cluster.view();
    let grid = Grid::of(server);
    let mut asks = tokio::task::JoinSet::new();
    for (i, info) in view.map.nodes.iter().enumerate() {
        if info.id == cluster.me {
            continue;
        }
        let bus = crate::cluster::consensus::bus_address(info);
        asks.spawn(async move {
            let client = crate::cluster::bus::BusClient::new(bus);
            let answer = client.call(&crate::cluster::bus::BusRequest::Status, PEER_TIMEOUT).await;
            match answer {
                Ok(crate::cluster::bus::BusResponse::Status(Some(s))) => (i, Some(*s)),
                _ => (i, None),
            }
        });
    }
    let mut answers: Vec<Option<NodeStatus>> = vec![None; view.map.nodes.len()];
    while let Some(Ok((i, s))) = asks.join_next().await {
        answers[i] = s;
    }
    let mut nodes = Vec::with_capacity(view.map.nodes.len() + 1);
    for (info, answer) in view.map.nodes.iter().zip(answers) {
        let mut n = if info.id == cluster.me {
            local.clone()
        } else {
            answer.unwrap_or_else(|| unreachable(info.id))
        };
        // The answering node's map is the one view every row agrees with.
        n.id = info.id.to_string();
        n.address = info.endpoint();
        n.zone = Some(info.zone.clone());
        grid.describe(&mut n, &view.map, info.id);
        nodes.push(n);
    }
    if view.me.is_none() {
        nodes.push(local);
    }
    ClusterView {
        myself,
        slots_total: SLOT_COUNT as u32,
        epoch: Some(view.map.epoch),
        slots_moving: view.map.migrations.len() as u32,
        nodes,
    }
}

/// A member that did not answer: what the map says of it, and no figures.
fn unreachable(id: NodeId) -> NodeStatus {
    NodeStatus {
        id: id.to_string(),
        address: String::new(),
        admin: String::new(),
        zone: None,
        role: String::new(),
        roles: Vec::new(),
        slots: Vec::new(),
        replica_slots: Vec::new(),
        slots_importing: 0,
        slots_migrating: 0,
        leader: false,
        leaving: false,
        reachable: false,
        keys: 0,
        memory_bytes: 0,
        maxmemory_bytes: 0,
        clients: 0,
        ops_per_sec: 0,
        uptime_seconds: 0,
        ready: false,
        not_ready: Some("unreachable".into()),
        version: String::new(),
        replication: Vec::new(),
        writebehind: Vec::new(),
        postgres_up: None,
    }
}

/// Why the node should not get traffic now, or None when it should: it is shutting down or
/// draining; in a grid, it has not received the agreed map yet, is leaving or has left, is
/// cut off from the grid's majority, or still has slots importing to it. This is `/ready`'s
/// answer.
pub fn not_ready(server: &Server) -> Option<String> {
    if server.shutdown.is_cancelled() {
        return Some("shutting down".into());
    }
    if server.draining.load(Ordering::Relaxed) {
        return Some("draining".into());
    }
    let cluster = server.cluster.get()?;
    let view = cluster.view();
    if view.map.epoch == 0 {
        return Some("waiting for the grid's map".into());
    }
    if server.consensus.get().is_some_and(|c| c.leaving().contains(&cluster.me)) {
        return Some("leaving the grid".into());
    }
    let Some(me) = view.me else {
        return Some("not a member of the grid".into());
    };
    if cluster.is_amnesiac() {
        return Some("restarted without its keys: waiting to be placed again".into());
    }
    if cluster.fenced() {
        return Some("cut off from the grid's majority".into());
    }
    let importing = view.map.migrations.values().filter(|m| m.to == me).count();
    if importing > 0 {
        return Some(format!("catching up: {importing} slots importing"));
    }
    cluster.catching_up().map(|n| format!("catching up: full sync from {n} primaries"))
}

/// Serving, caught up, and not draining or shutting down.
pub fn is_ready(server: &Server) -> bool {
    not_ready(server).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_without_the_grid_fields_still_reads() {
        // What a node of the previous version answers: no roles, moves or lag.
        let old = r#"{"myself":"a","slots_total":16384,"nodes":[{"id":"a","address":"x:1","admin":"x:2",
            "role":"primary","slots":[[0,16383]],"keys":1,"memory_bytes":2,"maxmemory_bytes":0,
            "clients":0,"ops_per_sec":0,"uptime_seconds":1,"ready":true,"version":"0.1.0"}]}"#;
        let v: ClusterView = serde_json::from_str(old).unwrap();
        assert!(v.nodes[0].reachable && v.nodes[0].replication.is_empty() && v.epoch.is_none());
    }
}
