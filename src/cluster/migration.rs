//! Moving slots: when the agreed map says a slot migrates from this node to another, this
//! node's mover sends the slot's keys there in batches and then reports the slot moved, so
//! the grid hands it over (`GridCommand::SlotsMoved`). A batch leaves the keyspace under the
//! slot's shard lock and is held in an in-flight set until the target acknowledges it; a
//! command on an in-flight key is answered TRYAGAIN, on a key already moved ASK (the dispatcher
//! checks under the key's lock), so a key is always in exactly one place a client can reach
//! and no write lands behind a moved key. A batch the target did not take goes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bincode::{Decode, Encode};
use tokio::time::Instant;

use super::bus::{BusClient, BusResponse, MAX_FRAME};
use super::node_id::NodeId;
use super::state::{Cluster, SlotRole};
use crate::persistence::record::{decode_value, encode_value, Kind};
use crate::server::Server;
use crate::store::clock::now_ms;
use crate::store::key_slot;

/// Keys per batch: a round trip's worth, small enough to keep TRYAGAIN windows short.
const BATCH_KEYS: usize = 256;
/// Slots reported moved per consensus entry.
const SLOTS_PER_HANDOVER: usize = 1024;
/// Deadline of one batch's round trip.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One key on its way to its slot's new primary.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MovedEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its Redis type.
    pub kind: Kind,
    /// The value, as write-behind encodes it.
    pub value: Vec<u8>,
    /// Absolute expiry in unix ms; 0 for none.
    pub expire_at: u64,
}

/// The binary requests of the bus (data, not control: bincode, not JSON).
#[derive(Debug, Encode, Decode)]
pub enum DataRequest {
    /// Keys changed on their primary, for a replica of their slots.
    Replicate {
        /// The sending primary's node id: a replica applies batches of its slots' primary only.
        from: [u8; 20],
        /// The sender's map epoch: a replica whose map is older waits until it has caught up.
        epoch: u64,
        /// Keys the sender still has queued for this replica after this batch (0: caught up).
        remaining: u64,
        /// The latest full sync request of this replica the sender took (0: none).
        sync_token: u64,
        /// Each key's current state.
        entries: Vec<crate::replication::ReplicatedKey>,
        /// The sender's write-behind version counter, read after the entries: at least the
        /// version of every change they carry (0 without backed key spaces). See
        /// `persistence::handoff`.
        versions: u64,
    },
    /// From a replica: up to which write-behind version is each of your key spaces committed
    /// to Postgres? (Answered with [`crate::cluster::bus::BusResponse::Committed`].)
    Committed,
    /// From a replica: send me every key of the slots I replicate for you (`token` names the
    /// request; the sender's batches carry it from then on).
    SyncMe {
        /// The replica's node id.
        replica: [u8; 20],
        /// The replica's map epoch: a primary with an older map waits until it has caught up.
        epoch: u64,
        /// Names the request.
        token: u64,
    },
    /// Store these keys of `slot`, which is migrating to the receiver.
    Import {
        /// The sending node's id: a target takes keys only from the slot's migration source.
        from: [u8; 20],
        /// The sender's map epoch: a target whose map is older waits until it has caught up
        /// (behind, it may still believe it is the slot's primary from before a partition,
        /// and drop what it took once the newer map marks its copies stale).
        epoch: u64,
        /// The slot.
        slot: u16,
        /// Its keys.
        entries: Vec<MovedEntry>,
        /// The sender's write-behind version counter, read after the entries (0 without
        /// backed key spaces): the receiver notes the keys until the sender has written
        /// them to Postgres (see `persistence::handoff`).
        versions: u64,
    },
}

/// The first byte of a binary bus frame (a JSON frame starts with `{` or `"`).
pub const BINARY_FRAME: u8 = 0;

/// Decodes a binary frame's body (after [`BINARY_FRAME`]).
pub fn decode(body: &[u8]) -> Result<DataRequest, String> {
    let config = bincode::config::standard().with_limit::<MAX_FRAME>();
    bincode::decode_from_slice(body, config).map(|(r, _)| r).map_err(|e| e.to_string())
}

/// Stores imported keys (on the slot's new primary). Accepted only for a slot migrating here
/// from `from`, by a map at least as new as the source's `epoch` (the source hands the slot
/// over only once every batch is taken, so no batch comes after the handover).
pub fn import(
    server: &Server,
    from: NodeId,
    epoch: u64,
    slot: u16,
    entries: Vec<MovedEntry>,
    versions: u64,
) -> Result<usize, String> {
    let cluster = server.cluster.get().ok_or("not in cluster mode")?;
    if slot as usize >= crate::store::SLOT_COUNT {
        return Err(format!("no slot {slot}"));
    }
    let limits = server.keyspace.settings.hash_limits();
    // The map and the slot's readiness are read under the slot's lock: stale copies are
    // dropped under it too, so an import is never dropped after it was acknowledged.
    let mut db = server.keyspace.lock_slot(slot, now_ms());
    let view = cluster.view();
    view.not_behind(epoch, "source")?;
    let from_source = view.map.migrations.get(&slot).is_some_and(|m| view.map.node(m.from).id == from);
    if view.role(slot) != SlotRole::Importing || !from_source {
        return Err(format!("slot {slot} is not migrating to this node (epoch {})", view.map.epoch));
    }
    if !cluster.slot_ready(slot) {
        return Err(format!("slot {slot} is not ready to import yet (epoch {})", view.map.epoch));
    }
    let mut stored = 0;
    // The source's queue may not have written them yet: noted until it has.
    let source = view.map.migrations.get(&slot).map(|m| view.map.node(m.from).id);
    let persistence = server.persistence.get().filter(|_| versions > 0);
    let mut noted = Vec::new();
    // The keys are in Postgres already (or queued at the source): no write-behind here.
    crate::persistence::loading(|| {
        for e in entries {
            if key_slot(&e.key) != slot {
                continue;
            }
            if let Some(value) = decode_value(e.kind, &e.value, limits) {
                db.set(&e.key, value, e.expire_at);
                stored += 1;
                if persistence.is_some() {
                    noted.push((e.key, false));
                }
            }
        }
    });
    drop(db);
    if let (Some(p), Some(source)) = (persistence, source) {
        p.note_replicated(source, versions, &noted);
    }
    cluster.counters.keys_migrated_in.fetch_add(stored as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(stored)
}

/// Runs this node's mover until shutdown: every migration from here is carried out.
pub async fn run(server: Arc<Server>) {
    let Some(cluster) = server.cluster.get().cloned() else { return };
    let mut last_report = Instant::now();
    // A target refuses batches until its map has caught up with ours and it has dropped stale
    // copies: routine for a moment, worth a warning only when it lasts.
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let view = cluster.view();
        let Some(me) = view.me else { continue };
        // Slots leaving this node, by target.
        let mut by_target: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
        for (&slot, m) in &view.map.migrations {
            if m.from == me {
                by_target.entry(m.to).or_default().push(slot);
            }
        }
        if by_target.is_empty() {
            continue;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            let left: usize = by_target.values().map(Vec::len).sum();
            tracing::info!(slots_left = left, targets = by_target.len(), "moving slots");
            last_report = Instant::now();
        }
        for (to, slots) in by_target {
            let target = view.map.node(to);
            if target.bus_port == 0 {
                // No bus to send keys to (a map installed by hand): taking keys out of the
                // keyspace would only make their clients retry until the move is undone.
                continue;
            }
            let client = BusClient::new(super::consensus::bus_address(target));
            for chunk in slots.chunks(SLOTS_PER_HANDOVER) {
                if let Some(p) = server.persistence.get() {
                    p.write_noted_before_leaving(&server, chunk, cluster.me);
                }
                let moved = match move_slots(&server, &cluster, &client, chunk).await {
                    Ok(moved) => moved,
                    Err(e) => {
                        complain(&mut failing_since, "moving slots failed", client.peer(), &e);
                        break;
                    }
                };
                crate::faults::point("migration-before-switch");
                if let Err(e) = hand_over(&server, cluster.me, target.id, chunk.to_vec()).await {
                    complain(&mut failing_since, "slot handover not committed", client.peer(), &e);
                    break;
                }
                tracing::debug!(target = %client.peer(), slots = chunk.len(), first = chunk[0], keys = moved, "slots handed over");
                failing_since = None;
            }
        }
    }
}

/// Logs a failed move or handover: at debug level while failures are recent, as a warning
/// once they have lasted 5 s (`failing_since` is when they began).
fn complain(failing_since: &mut Option<Instant>, what: &str, peer: &str, e: &str) {
    let since = *failing_since.get_or_insert_with(Instant::now);
    if since.elapsed() > Duration::from_secs(5) {
        tracing::warn!(target = %peer, error = %e, "{what}; will retry");
    } else {
        tracing::debug!(target = %peer, error = %e, "{what}; will retry");
    }
}

/// Moves every key of `slots` to the node behind `client`.
async fn move_slots(
    server: &Server,
    cluster: &Cluster,
    client: &BusClient,
    slots: &[u16],
) -> Result<usize, String> {
    let mut moved = 0;
    for &slot in slots {
        let mut held: Vec<Box<[u8]>> = Vec::new();
        loop {
            let (entries, waiting) = take_batch(server, cluster, slot);
            // A key held before and neither taken nor held now expired meanwhile.
            let now: std::collections::HashSet<&[u8]> =
                entries.iter().map(|e| &e.key[..]).chain(waiting.iter().map(|k| &k[..])).collect();
            cluster.release_in_flight(held.iter().map(|k| &k[..]).filter(|k| !now.contains(k)));
            drop(now);
            held = waiting;
            if entries.is_empty() {
                if held.is_empty() {
                    break;
                }
                tracing::debug!(slot, held = held.len(), "keys held until their replicas have them");
                // Writers of the held keys are answered TRYAGAIN: their replicas catch up in
                // a round trip.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // The map the batch is sent under: the target must have caught up with it.
            let epoch = cluster.view().map.epoch;
            // Read after the entries: no change they carry has a higher write-behind version.
            let versions = server.persistence.get().map_or(0, |p| p.versions_upto());
            let request = DataRequest::Import { from: cluster.me.0, epoch, slot, entries, versions };
            let answer = client.call_data(&request, BATCH_TIMEOUT).await;
            let DataRequest::Import { entries, .. } = request else { unreachable!("built above") };
            match answer {
                Ok(BusResponse::Imported(Ok(_))) => {
                    moved += entries.len();
                    let sent = entries.len() as u64;
                    cluster.counters.keys_migrated_out.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                    cluster.release_in_flight(entries.iter().map(|e| &e.key[..]));
                }
                other => {
                    put_back(server, cluster, slot, entries);
                    cluster.release_in_flight(held.iter().map(|k| &k[..]));
                    return Err(match other {
                        Ok(BusResponse::Imported(Err(e))) => e,
                        Ok(r) => format!("unexpected answer {r:?}"),
                        Err(e) => e.to_string(),
                    });
                }
            }
        }
    }
    Ok(moved)
}

/// Takes up to [`BATCH_KEYS`] live keys of `slot` out of the keyspace into the in-flight set.
/// A key some replica may not hold yet stays, held in flight (its writers are answered
/// TRYAGAIN) until the replicas have it, and is returned second: taken now, its replicas
/// would keep an older value or its deletion, and lose the write should this node crash
/// before the handover.
fn take_batch(server: &Server, cluster: &Cluster, slot: u16) -> (Vec<MovedEntry>, Vec<Box<[u8]>>) {
    let mut db = server.keyspace.lock_slot(slot, now_ms());
    let keys = db.keys_in_slot(slot as usize, BATCH_KEYS);
    let replication = server.replication.get();
    let mut entries = Vec::with_capacity(keys.len());
    let mut held = Vec::new();
    for key in keys {
        if replication.is_some_and(|r| r.unreplicated(&key)) {
            held.push(key);
            continue;
        }
        // A key past its TTL is removed as expired (write-behind deletes its row).
        let Some(e) = db.peek(&key) else { continue };
        let (kind, value) = encode_value(&e.value);
        entries.push(MovedEntry { key: key.to_vec(), kind, value, expire_at: e.expire_at().unwrap_or(0) });
    }
    // Marked in flight before the keys leave, both under the shard lock.
    cluster.hold_in_flight(entries.iter().map(|e| &e.key[..]).chain(held.iter().map(|k| &k[..])));
    for e in &entries {
        db.remove_migrated(&e.key);
    }
    (entries, held)
}

/// Restores a batch the target did not take (nobody could write these keys meanwhile:
/// in-flight keys are answered TRYAGAIN).
fn put_back(server: &Server, cluster: &Cluster, slot: u16, entries: Vec<MovedEntry>) {
    let limits = server.keyspace.settings.hash_limits();
    let mut db = server.keyspace.lock_slot(slot, now_ms());
    crate::persistence::loading(|| {
        for e in &entries {
            if let Some(value) = decode_value(e.kind, &e.value, limits) {
                db.set(&e.key, value, e.expire_at);
            }
        }
    });
    cluster.release_in_flight(entries.iter().map(|e| &e.key[..]));
}

/// Commits "these slots are at `to` now" through the consensus leader.
async fn hand_over(server: &Server, from: NodeId, to: NodeId, slots: Vec<u16>) -> Result<u64, String> {
    let consensus = server.consensus.get().ok_or("no consensus")?;
    consensus.slots_moved(from, to, slots).await
}
