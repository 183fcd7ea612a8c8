//! The node's view of the grid: who it is and the slot map in force. Routing reads the map on
//! every keyed command, so it sits behind a read-mostly lock and is swapped whole.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;

use super::node_id::NodeId;
use super::placement::{place, Member, SlotAssignment};
use super::slotmap::{NodeInfo, SlotMap};
use crate::config::Config;

/// Cluster state shared by every connection of a node.
pub struct Cluster {
    /// This node's identity.
    pub me: NodeId,
    view: RwLock<Arc<View>>,
    /// Keys on their way to a slot's new primary, not yet acknowledged (see `migration`).
    in_flight: parking_lot::Mutex<std::collections::HashSet<Box<[u8]>>>,
    /// Whether `in_flight` may be non-empty: the routing check reads only this flag.
    moving: std::sync::atomic::AtomicBool,
    /// This node's lease: it serves keyed commands only until it runs out (see
    /// [`Cluster::fenced`]).
    lease: Lease,
    /// Slots whose copies here are no longer to be trusted: this node's role in them changed
    /// to one that is filled from another node (importer, replica) or to none. Until
    /// [`crate::cluster::stale`] has dropped those copies, nothing is imported or replicated
    /// into them.
    unready: parking_lot::Mutex<std::collections::BTreeSet<u16>>,
    /// Wakes the task that drops stale copies.
    pub unready_changed: tokio::sync::Notify,
    /// Full syncs this node needs, per primary of slots it newly replicates (see
    /// [`SyncWanted`]). What `/ready` calls catching up.
    syncing_from: parking_lot::Mutex<std::collections::BTreeMap<NodeId, SyncWanted>>,
    /// Numbers the full syncs asked for.
    sync_tokens: std::sync::atomic::AtomicU64,
    /// Whether this process restarted as a member and has not been placed again yet.
    amnesiac: std::sync::atomic::AtomicBool,
    /// Whether the grid was asked to let this node leave (a graceful `Leave` of it applied,
    /// and no `Join` of it since): such a node does not ask to be let back in.
    left: std::sync::atomic::AtomicBool,
    /// Counters the admin port's `/metrics` reports (the movers and the failure detector
    /// bump them; nothing reads them on the request path).
    pub counters: GridCounters,
}

/// What the grid machinery has done on this node since it started.
#[derive(Default)]
pub struct GridCounters {
    /// Keys this node sent to a slot's new primary (migrations away from here).
    pub keys_migrated_out: std::sync::atomic::AtomicU64,
    /// Keys this node stored for slots migrating to it.
    pub keys_migrated_in: std::sync::atomic::AtomicU64,
    /// Keys this node, as a slot's primary, shipped to replicas (acknowledged batches).
    pub keys_replicated_out: std::sync::atomic::AtomicU64,
    /// Keys this node, as a replica, applied from primaries.
    pub keys_replicated_in: std::sync::atomic::AtomicU64,
    /// Members this node, as Raft leader, failed over (committed `Forget`s of silent members).
    pub failovers: std::sync::atomic::AtomicU64,
}

/// A full sync this node needs from one primary: asked for with `token`, done when a batch
/// from that primary carrying the token says nothing is left.
#[derive(Debug, Clone, Copy)]
pub struct SyncWanted {
    /// Names this request; a newer role change asks again with a new one.
    pub token: u64,
    /// Epoch of the map that asked for it (what the grid's `CaughtUp` record compares).
    pub epoch: u64,
    /// Whether the primary has taken the request.
    pub requested: bool,
}

/// What this node is for one slot, by the map in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRole {
    /// Serves it (while it migrates away too).
    Primary,
    /// Receives its keys from the migrating primary.
    Importing,
    /// Holds a copy sent by its primary.
    Replica,
    /// Nothing.
    None,
}

impl View {
    /// Err unless this map is at least as new as a peer's `epoch` (`peer` names the peer in the
    /// error): a node behind the peer that sent a batch must not act on it yet; the peer asks
    /// again.
    pub fn not_behind(&self, epoch: u64, peer: &str) -> Result<(), String> {
        if self.map.epoch < epoch {
            return Err(format!("behind the {peer}: epoch {} < {epoch}", self.map.epoch));
        }
        Ok(())
    }

    /// This node's role for `slot`.
    pub fn role(&self, slot: u16) -> SlotRole {
        let Some(me) = self.me else { return SlotRole::None };
        let owners = &self.map.slots[slot as usize];
        if owners.primary == Some(me) {
            SlotRole::Primary
        } else if self.map.migrations.get(&slot).is_some_and(|m| m.to == me) {
            SlotRole::Importing
        } else if owners.replicas.contains(&me) {
            SlotRole::Replica
        } else {
            SlotRole::None
        }
    }
}

/// A lease on the monotonic clock: nanoseconds since `base` until which this node may serve.
struct Lease {
    base: tokio::time::Instant,
    until_ns: std::sync::atomic::AtomicU64,
    /// Whether the lease applies at all: a grid of one has nobody to step aside for.
    guarded: std::sync::atomic::AtomicBool,
}

/// A slot map with this node's place in it, worked out once per map rather than per command.
pub struct View {
    /// The map.
    pub map: SlotMap,
    /// This node's index in `map.nodes`; None when the map does not include it.
    pub me: Option<u16>,
}

/// Why a map was not installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstallError {
    /// Its epoch is older than the map in force: a late message must not roll the grid back.
    #[error("slot map epoch {offered} is older than the current epoch {current}")]
    Stale {
        /// Epoch of the refused map.
        offered: u64,
        /// Epoch in force.
        current: u64,
    },
    /// The map does not hold together.
    #[error(transparent)]
    Invalid(#[from] super::slotmap::SlotMapError),
}

impl Cluster {
    /// A grid of one: this node, listening on `addr`, primary of every slot. This is what a
    /// node with `cluster-enabled` serves until it joins others.
    pub fn single(me: NodeId, config: &Config, addr: SocketAddr) -> Cluster {
        let info = announce(me, config, addr);
        let members = [Member { id: me, zone: info.zone.clone() }];
        let assignment = place(&members, config.cluster_replicas, &[]);
        let map = SlotMap::from_assignment(0, vec![info], &assignment).expect("a one-node map is valid");
        let me_index = map.index_of(&me);
        Cluster::with_view(me, View { map, me: me_index })
    }

    /// A node about to join a grid: in the map alone, owning no slot, so every keyed command
    /// answers CLUSTERDOWN until the grid's map arrives through the log.
    pub fn joining(me: NodeId, config: &Config, addr: SocketAddr) -> Cluster {
        let info = announce(me, config, addr);
        let assignment = vec![SlotAssignment::default(); crate::store::SLOT_COUNT];
        let map = SlotMap::from_assignment(0, vec![info], &assignment).expect("an empty map is valid");
        let me_index = map.index_of(&me);
        Cluster::with_view(me, View { map, me: me_index })
    }

    fn with_view(me: NodeId, view: View) -> Cluster {
        Cluster {
            me,
            view: RwLock::new(Arc::new(view)),
            in_flight: Default::default(),
            moving: Default::default(),
            lease: Lease {
                base: tokio::time::Instant::now(),
                until_ns: Default::default(),
                guarded: Default::default(),
            },
            unready: Default::default(),
            unready_changed: tokio::sync::Notify::new(),
            counters: GridCounters::default(),
            left: Default::default(),
            amnesiac: Default::default(),
            syncing_from: Default::default(),
            sync_tokens: Default::default(),
        }
    }

    /// Full syncs to ask primaries for: (primary, token) not yet taken by the primary.
    pub fn syncs_to_request(&self) -> Vec<(NodeId, u64)> {
        self.syncing_from.lock().iter().filter(|(_, w)| !w.requested).map(|(p, w)| (*p, w.token)).collect()
    }

    /// `primary` took the full sync request `token`.
    pub fn sync_requested(&self, primary: NodeId, token: u64) {
        if let Some(w) = self.syncing_from.lock().get_mut(&primary).filter(|w| w.token == token) {
            w.requested = true;
        }
    }

    /// A batch from `primary` carrying full sync `token` left `remaining` keys queued here.
    /// When that completes the sync: the epoch it was asked under and the slots this node
    /// now holds in full for `primary` (to report to the grid: see `GridCommand::CaughtUp`).
    pub fn synced_from(&self, primary: NodeId, token: u64, remaining: u64) -> Option<(u64, Vec<u16>)> {
        let mut s = self.syncing_from.lock();
        let wanted = *s.get(&primary).filter(|w| remaining == 0 && w.token == token && w.requested)?;
        s.remove(&primary);
        drop(s);
        let view = self.view();
        let (me, p) = (view.me?, view.map.index_of(&primary)?);
        let slots = (0..crate::store::SLOT_COUNT as u16)
            .filter(|&slot| {
                let o = &view.map.slots[slot as usize];
                o.primary == Some(p) && o.replicas.contains(&me)
            })
            .collect();
        Some((wanted.epoch, slots))
    }

    /// How many primaries still owe this node a full sync of slots it replicates (None when
    /// caught up). A primary that no longer has slots replicated here does not count.
    pub fn catching_up(&self) -> Option<usize> {
        let view = self.view();
        let me = view.me?;
        let mut s = self.syncing_from.lock();
        s.retain(|p, _| {
            view.map.index_of(p).is_some_and(|pi| {
                view.map.slots.iter().any(|o| o.primary == Some(pi) && o.replicas.contains(&me))
            })
        });
        (!s.is_empty()).then_some(s.len())
    }

    /// Notes that this node was asked to leave (true) or joined again (false).
    pub fn set_left(&self, left: bool) {
        self.left.store(left, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node left the grid on purpose.
    pub fn has_left(&self) -> bool {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether copies of `slot` here may be filled (imported, replicated, written with
    /// ASKING): false until stale copies from an earlier role are gone.
    pub fn slot_ready(&self, slot: u16) -> bool {
        !self.unready.lock().contains(&slot)
    }

    /// Slots waiting for their stale copies to be dropped.
    pub fn unready_slots(&self) -> Vec<u16> {
        self.unready.lock().iter().copied().collect()
    }

    /// Marks `slot` ready: called with the slot's shard locked, once its stale copies are gone.
    pub fn mark_ready(&self, slot: u16) {
        self.unready.lock().remove(&slot);
    }

    /// Whether this node must not serve keys: it is one of several members and its lease ran
    /// out (it has not heard from the Raft leader, or as leader from a majority, lately). Read
    /// on the monotonic clock at every keyed command, so a process resumed after a pause is
    /// fenced before it answers anything.
    pub fn fenced(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.amnesiac.load(Relaxed)
            || self.lease.guarded.load(Relaxed)
                && self.lease.base.elapsed().as_nanos() as u64 > self.lease.until_ns.load(Relaxed)
    }

    /// Notes that this process restarted as a member (true), so its map still gives it slots
    /// whose keys it lost with its memory; it serves no keys until the grid has placed it
    /// again (false). See `GridCommand::Restarted`.
    pub fn set_amnesiac(&self, amnesiac: bool) {
        self.amnesiac.store(amnesiac, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node restarted and the grid has not placed it again yet.
    pub fn is_amnesiac(&self) -> bool {
        self.amnesiac.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Extends the lease to `until` (never shortens it).
    pub fn extend_lease(&self, until: tokio::time::Instant) {
        let ns = until.saturating_duration_since(self.lease.base).as_nanos() as u64;
        self.lease.until_ns.fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the lease applies (a grid of several members).
    pub fn guard_with_lease(&self, guarded: bool) {
        self.lease.guarded.store(guarded, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks keys as travelling to another node (called with their shard locked).
    pub fn hold_in_flight<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let mut set = self.in_flight.lock();
        set.extend(keys.map(Box::from));
        self.moving.store(!set.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// Keys that arrived (or came back).
    pub fn release_in_flight<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let mut set = self.in_flight.lock();
        for k in keys {
            set.remove(k);
        }
        self.moving.store(!set.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// Whether `key` is travelling to another node right now.
    pub fn is_in_flight(&self, key: &[u8]) -> bool {
        self.moving.load(std::sync::atomic::Ordering::Acquire) && self.in_flight.lock().contains(key)
    }

    /// The map in force, with this node's index in it.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// The map in force.
    pub fn map(&self) -> SlotMap {
        self.view().map.clone()
    }

    /// Installs `map` unless it is older than the one in force. The consensus layer calls this
    /// when a new map is committed; tests call it to lay out a grid by hand.
    pub fn install(&self, map: SlotMap) -> Result<(), InstallError> {
        map.validate()?;
        let mut current = self.view.write();
        if map.epoch < current.map.epoch {
            return Err(InstallError::Stale { offered: map.epoch, current: current.map.epoch });
        }
        let me = map.index_of(&self.me);
        let next = View { map, me };
        // Copies of a slot this node no longer serves, or will be sent afresh, are stale: they
        // are marked before the map is visible, so whoever sees the map sees the mark too.
        let stale: Vec<u16> = (0..crate::store::SLOT_COUNT as u16)
            .filter(|&s| {
                let (was, now) = (current.role(s), next.role(s));
                was != now && now != SlotRole::Primary
            })
            .collect();
        // Slots this node replicates for another primary than before (a failover): it keeps
        // its copies, but syncs with the new primary too, so it ends complete and says so.
        let primary_id = |v: &View, s: u16| v.map.slots[s as usize].primary.map(|p| v.map.node(p).id);
        let new_primary = (0..crate::store::SLOT_COUNT as u16).filter(|&s| {
            current.role(s) == SlotRole::Replica
                && next.role(s) == SlotRole::Replica
                && primary_id(&current, s) != primary_id(&next, s)
        });
        let to_sync: std::collections::BTreeSet<NodeId> = stale
            .iter()
            .copied()
            .filter(|&s| next.role(s) == SlotRole::Replica)
            .chain(new_primary)
            .filter_map(|s| primary_id(&next, s))
            .collect();
        if !to_sync.is_empty() {
            // It asks those primaries for a full sync (they may not have noticed the change,
            // having skipped the maps in between).
            let mut syncing = self.syncing_from.lock();
            for p in to_sync {
                let token = self.sync_tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                syncing.insert(p, SyncWanted { token, epoch: next.map.epoch, requested: false });
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_role_changes(&current, &next);
        }
        if !stale.is_empty() {
            self.unready.lock().extend(stale);
            self.unready_changed.notify_one();
        }
        *current = Arc::new(next);
        Ok(())
    }
}

/// Logs (debug) how this node's slot roles change from `was` to `now`, as slot ranges per
/// transition: the map history a diagnosis of a lost key needs.
fn log_role_changes(was: &View, now: &View) {
    use crate::cluster::slotmap::{range_text, slot_ranges};
    let change = |s: u16| Some((was.role(s), now.role(s))).filter(|(a, b)| a != b);
    let all: Vec<Option<(SlotRole, SlotRole)>> = (0..crate::store::SLOT_COUNT as u16).map(change).collect();
    let mut kinds: Vec<(SlotRole, SlotRole)> = Vec::new();
    for c in all.iter().flatten() {
        if !kinds.contains(c) {
            kinds.push(*c);
        }
    }
    let mut text: Vec<String> = kinds
        .iter()
        .map(|&(a, b)| {
            let ranges = slot_ranges(all.iter().map(|c| *c == Some((a, b))));
            format!("{a:?}->{b:?} {}", ranges.iter().map(range_text).collect::<Vec<_>>().join(","))
        })
        .collect();
    text.sort();
    tracing::debug!(from = was.map.epoch, to = now.map.epoch, changes = %text.join("; "), "map installed");
}

/// How this node is described to clients and peers.
pub fn announce(me: NodeId, config: &Config, addr: SocketAddr) -> NodeInfo {
    let host = if !config.cluster_announce_ip.is_empty() {
        config.cluster_announce_ip.clone()
    } else if addr.ip().is_unspecified() {
        // Listening on every interface: clients need one concrete address.
        tracing::warn!("bind is a wildcard address; announcing 127.0.0.1 (set cluster-announce-ip)");
        "127.0.0.1".into()
    } else {
        addr.ip().to_string()
    };
    let bus_port = match config.cluster_port {
        0 => addr.port().checked_add(10000).unwrap_or(0),
        p => p,
    };
    // `tls-port` holds the port actually bound by now (see `cluster::start`).
    let tls_port = config.tls_port.unwrap_or(0);
    NodeInfo { id: me, host, port: addr.port(), bus_port, zone: config.zone.clone(), tls_port }
}

/// Per-connection cluster flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFlags {
    /// READONLY: reads of slots this node replicates are served here.
    pub readonly: bool,
    /// ASKING: the next command may run on a slot this node is importing.
    pub asking: bool,
    /// The client came in on the TLS port: redirections and CLUSTER SLOTS/SHARDS/NODES give
    /// it TLS ports (as Redis 7.2 answers by connection type). Fixed for the connection.
    pub tls: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_owns_every_slot_and_announces_its_address() {
        let config = Config { zone: "z1".into(), ..Config::default() };
        let c = Cluster::single(NodeId([1; 20]), &config, "127.0.0.1:7001".parse().unwrap());
        let map = c.map();
        assert_eq!(map.assigned_slots(), crate::store::SLOT_COUNT);
        assert_eq!(map.nodes[0].endpoint(), "127.0.0.1:7001");
        assert_eq!(map.nodes[0].bus_port, 17001);
        assert_eq!(map.nodes[0].zone, "z1");
        assert_eq!(map.ranges().len(), 1);
    }

    #[test]
    fn older_maps_are_refused() {
        let c = Cluster::single(NodeId([1; 20]), &Config::default(), "127.0.0.1:7001".parse().unwrap());
        let mut newer = c.map();
        newer.epoch = 5;
        c.install(newer.clone()).unwrap();
        newer.epoch = 4;
        assert_eq!(c.install(newer), Err(InstallError::Stale { offered: 4, current: 5 }));
        assert_eq!(c.map().epoch, 5);
    }
}
