//! Replication: a slot's primary sends every change of the slot's keys to the slot's
//! replicas, so they hold the data Redis Cluster clients read after READONLY and that a
//! failover promotes. Changed keys are noted per replica by a change listener (coalesced: a
//! key written ten times before the next batch travels once, with its latest value), and a
//! sender task ships them in batches over the cluster bus. A replica that newly serves a
//! slot gets all of the slot's keys first (a full sync).
//!
//! What a replica applies is not written behind to Postgres (its primary does that) and is
//! not replicated further. Every change is numbered and each replica's acknowledged number is
//! kept, so a write to a `sync` key space can wait until its replicas have it, and WAIT can
//! count them; `async` replies do not wait, and a write acknowledged just before its primary
//! dies can be lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bincode::{Decode, Encode};
use parking_lot::Mutex;

use crate::cluster::bus::{BusClient, BusResponse};
use crate::cluster::migration::{DataRequest, MovedEntry};
use crate::cluster::state::{SlotRole, View};
use crate::cluster::{Cluster, NodeId};
use crate::config::ReplicationMode;
use crate::persistence::record::{decode_value, encode_value};
use crate::server::Server;
use crate::store::clock::now_ms;
use crate::store::keyspace::{Change, ChangeCause, ChangeListener};
use crate::store::{key_slot, SLOT_COUNT};

/// Keys per batch sent to one replica.
const BATCH_KEYS: usize = 512;
/// Deadline of one batch's round trip.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One key's state on its primary: its value, or None once it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReplicatedKey {
    /// The key.
    pub key: Vec<u8>,
    /// Its value and expiry; None when deleted (or expired, or evicted) on the primary.
    pub entry: Option<MovedEntry>,
}

thread_local! {
    /// Set while a replica applies a batch: those changes are not replicated again.
    static APPLYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What the command running on this thread wrote, for its connection (see [`last_write`]).
    static LAST_WRITE: std::cell::RefCell<Option<Write>> = const { std::cell::RefCell::new(None) };
}

/// What one command wrote that replicas must apply: the connection waits on it for `sync`
/// key spaces, and remembers it for WAIT.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Write {
    /// Sequence number of its latest change.
    pub seq: u64,
    /// The replicas of the slots written.
    pub replicas: Vec<NodeId>,
    /// Whether a key written belongs to a `sync` key space.
    pub sync: bool,
}

impl Write {
    /// Adds `replicas` to those this write (or connection) waits on, each once.
    pub fn add_replicas(&mut self, replicas: &[NodeId]) {
        for r in replicas {
            if !self.replicas.contains(r) {
                self.replicas.push(*r);
            }
        }
    }
}

/// Starts a command: forgets what an earlier one on this thread wrote.
pub fn begin_command() {
    LAST_WRITE.with(|w| w.borrow_mut().take());
}

/// What the command just run wrote, if it changed replicated keys.
pub fn last_write() -> Option<Write> {
    LAST_WRITE.with(|w| w.borrow_mut().take())
}

/// Changes waiting for one replica, oldest first. A key appears once, at its oldest change
/// not yet applied there (it travels with its latest value): so when a batch of the oldest
/// keys is acknowledged, every change older than what is left has been applied.
#[derive(Default)]
struct Pending {
    by_key: HashMap<Box<[u8]>, u64>,
    by_seq: BTreeMap<u64, Box<[u8]>>,
}

impl Pending {
    /// Notes change `seq` of `key`, unless an older one of it is pending already.
    fn insert(&mut self, key: &[u8], seq: u64) {
        match self.by_key.get_mut(key) {
            Some(old) if *old <= seq => return,
            Some(old) => {
                self.by_seq.remove(old);
                *old = seq;
            }
            None => {
                self.by_key.insert(key.into(), seq);
            }
        }
        self.by_seq.insert(seq, key.into());
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Drops the changes whose key `keep` refuses; returns their numbers.
    fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<u64> {
        let mut dropped = Vec::new();
        self.by_key.retain(|key, seq| {
            let k = keep(key);
            if !k {
                dropped.push(*seq);
            }
            k
        });
        for seq in &dropped {
            self.by_seq.remove(seq);
        }
        dropped
    }

    /// Takes the `n` oldest changes.
    fn take(&mut self, n: usize) -> Vec<(u64, Box<[u8]>)> {
        let mut out = Vec::with_capacity(n.min(self.len()));
        while out.len() < n {
            let Some((seq, key)) = self.by_seq.pop_first() else { break };
            self.by_key.remove(&key);
            out.push((seq, key));
        }
        out
    }
}

/// One batch for a replica (see [`Replication::take_batches`]).
struct Batch {
    replica: NodeId,
    /// Keys with their change numbers.
    keys: Vec<(u64, Box<[u8]>)>,
    /// The change number its acknowledgement proves applied.
    upto: u64,
    /// Keys left queued for the replica after it.
    remaining: u64,
    /// The replica's latest full sync request taken.
    sync_token: u64,
}

/// Changed keys per replica, and the sequence numbering them.
#[derive(Default)]
struct Queues {
    /// Number of the latest change noted.
    seq: u64,
    /// Ordered maps (here and in `owed`): batches go out in one order, which a simulated run
    /// (tests/sim.rs) needs to replay from its seed.
    pending: BTreeMap<NodeId, Pending>,
    /// Replicas owed a batch even if nothing is queued for them: they asked for a full sync
    /// and wait to hear it is done (or that there was nothing to send).
    owed: std::collections::BTreeSet<NodeId>,
    /// The latest full sync request taken from each replica.
    sync_tokens: HashMap<NodeId, u64>,
    /// Keys of batches on their way (taken from `pending`, not yet acknowledged or put back),
    /// with how many batches carry each: with `pending`, what a replica may not hold yet.
    sending: HashMap<Box<[u8]>, u32>,
    /// Per replica, changes dropped unsent because the replica no longer replicates their
    /// slot for this node: a writer waiting on one of them is never told it was applied there.
    dropped: HashMap<NodeId, std::collections::BTreeSet<u64>>,
}

/// How many dropped change numbers are remembered per replica (writers wait a second or so;
/// maps that drop changes are rare).
const DROPPED_KEPT: usize = 65_536;

/// Where a replica's full sync stands, as a primary's batch says.
#[derive(Debug, Clone, Copy)]
pub struct SyncProgress {
    /// The latest full sync request of the replica the primary took (0: none).
    pub token: u64,
    /// Keys still queued for the replica after the batch.
    pub remaining: u64,
}

/// This node's replication state as a primary.
pub struct Replication {
    cluster: Arc<Cluster>,
    /// Keys changed since they were last sent, per replica.
    dirty: Mutex<Queues>,
    /// Per replica, the change number up to which it has applied every change sent to it.
    acked: Mutex<HashMap<NodeId, u64>>,
    /// Bumped on every acknowledged batch, for writers and WAIT waiting on replicas.
    acks: tokio::sync::watch::Sender<u64>,
    /// Key patterns with their replication mode, first match wins; then `default_mode`.
    modes: Vec<(String, ReplicationMode)>,
    default_mode: ReplicationMode,
    /// How long a `sync` write waits for its replicas.
    pub sync_timeout: Duration,
    /// Wakes the sender.
    wake: tokio::sync::Notify,
    /// Per replica, since when it has had changes not yet acknowledged (for `/metrics` and
    /// `/cluster`: how far behind it may be). Locked after `dirty`, never before.
    behind_since: Mutex<HashMap<NodeId, tokio::time::Instant>>,
}

/// How far one replica of this node's slots is behind.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLag {
    /// The replica.
    pub replica: NodeId,
    /// Changed keys not yet handed to the sender (a full sync counts every key of the slot).
    pub pending_keys: usize,
    /// Time since the replica was last caught up; zero when it is.
    pub behind: Duration,
}

impl Replication {
    /// Starts replication for a node in cluster mode: the listener and the sender task.
    pub fn start(server: &Arc<Server>, cluster: Arc<Cluster>) -> Arc<Replication> {
        let config = server.config.read().clone();
        let modes =
            config.keyspace.iter().filter_map(|k| k.replication.map(|m| (k.pattern.clone(), m))).collect();
        let r = Arc::new(Replication {
            cluster,
            dirty: Mutex::default(),
            acked: Mutex::default(),
            acks: tokio::sync::watch::Sender::new(0),
            modes,
            default_mode: config.cluster_replication,
            sync_timeout: Duration::from_millis(config.cluster_replication_timeout),
            wake: tokio::sync::Notify::new(),
            behind_since: Mutex::default(),
        });
        server.keyspace.add_listener(r.clone());
        tokio::spawn(send_loop(server.clone(), r.clone()));
        tokio::spawn(handoff_loop(server.clone(), r.cluster.clone()));
        r
    }

    /// Puts back a batch `replica` did not take, at the changes' own numbers (waiters on them
    /// keep waiting), but for keys `replica` no longer replicates for this node in `view`:
    /// those are dropped, and their waiters are never told they were applied.
    fn put_back(&self, replica: NodeId, keys: &[(u64, Box<[u8]>)], view: &View) {
        let mut dirty = self.dirty.lock();
        let Queues { pending, sending, dropped, .. } = &mut *dirty;
        let set = pending.entry(replica).or_default();
        for (seq, key) in keys {
            if replicates_for_me(view, key_slot(key), &replica) {
                set.insert(key, *seq);
            } else {
                note_dropped(dropped, replica, *seq);
            }
        }
        release_sending(sending, keys);
    }

    /// A batch to a replica was acknowledged: its keys are no longer on their way.
    fn sent(&self, keys: &[(u64, Box<[u8]>)]) {
        release_sending(&mut self.dirty.lock().sending, keys);
    }

    /// Drops queued changes of slots a replica no longer replicates for this node (the map
    /// changed): they would be refused forever.
    fn prune(&self, view: &View) {
        let mut dirty = self.dirty.lock();
        let Queues { pending, dropped, .. } = &mut *dirty;
        for (replica, keys) in pending.iter_mut() {
            if view.map.index_of(replica).is_none() {
                continue; // settled by the sender: a former member waits for nothing
            }
            for seq in keys.retain(|key| replicates_for_me(view, key_slot(key), replica)) {
                note_dropped(dropped, *replica, seq);
            }
        }
        pending.retain(|_, keys| !keys.is_empty());
    }

    /// Whether some replica may not hold the latest change of `key` yet (it is queued or on
    /// its way): a slot's mover leaves such a key until it is, so the replicas that survive
    /// the source's crash during the migration hold what the source acknowledged.
    pub fn unreplicated(&self, key: &[u8]) -> bool {
        let dirty = self.dirty.lock();
        dirty.sending.contains_key(key) || dirty.pending.values().any(|p| p.by_key.contains_key(key))
    }

    /// Notes `keys` as to be sent to `replica`.
    fn mark<'k>(&self, replica: NodeId, keys: impl Iterator<Item = &'k [u8]>) {
        let mut dirty = self.dirty.lock();
        let Queues { seq, pending, .. } = &mut *dirty;
        let set = pending.entry(replica).or_default();
        for key in keys {
            *seq += 1;
            set.insert(key, *seq);
        }
        if !set.is_empty() {
            self.behind_since.lock().entry(replica).or_insert_with(tokio::time::Instant::now);
        }
    }

    /// Takes up to [`BATCH_KEYS`] of the oldest changes for every replica, each with the change
    /// number its acknowledgement proves applied: every change for that replica up to it.
    fn take_batches(&self) -> Vec<Batch> {
        let mut dirty = self.dirty.lock();
        let Queues { seq, pending, owed, sync_tokens, sending, .. } = &mut *dirty;
        let mut out = Vec::new();
        for (node, keys) in pending.iter_mut() {
            let take = keys.take(BATCH_KEYS);
            if take.is_empty() {
                continue;
            }
            for (_, key) in &take {
                *sending.entry(key.clone()).or_default() += 1;
            }
            owed.remove(node);
            let upto = keys.by_seq.first_key_value().map_or(*seq, |(&first, _)| first - 1);
            let sync_token = sync_tokens.get(node).copied().unwrap_or(0);
            out.push(Batch { replica: *node, keys: take, upto, remaining: keys.len() as u64, sync_token });
        }
        for node in std::mem::take(owed) {
            let sync_token = sync_tokens.get(&node).copied().unwrap_or(0);
            out.push(Batch { replica: node, keys: Vec::new(), upto: *seq, remaining: 0, sync_token });
        }
        pending.retain(|_, keys| !keys.is_empty());
        out
    }

    /// After a batch to `replica` was acknowledged (or it left the grid): it has applied every
    /// change up to `upto`; caught up if nothing else is pending.
    fn settled(&self, replica: NodeId, upto: u64) {
        let dirty = self.dirty.lock();
        if dirty.pending.get(&replica).is_none_or(|keys| keys.is_empty()) {
            self.behind_since.lock().remove(&replica);
        }
        drop(dirty);
        let mut acked = self.acked.lock();
        let a = acked.entry(replica).or_default();
        *a = (*a).max(upto);
        drop(acked);
        self.acks.send_modify(|n| *n += 1);
    }

    /// How many of `replicas` have applied every change up to `seq` (change `seq` itself not
    /// dropped unsent for them).
    pub fn acked_count(&self, seq: u64, replicas: &[NodeId]) -> usize {
        let dirty = self.dirty.lock();
        let acked = self.acked.lock();
        replicas
            .iter()
            .filter(|r| acked.get(r).is_some_and(|&a| a >= seq))
            .filter(|r| dirty.dropped.get(r).is_none_or(|d| !d.contains(&seq)))
            .count()
    }

    /// Waits until `need` of `replicas` have applied every change up to `seq`, or `timeout`
    /// passed (None: no limit); returns how many have.
    pub async fn wait_for(
        &self,
        seq: u64,
        replicas: &[NodeId],
        need: usize,
        timeout: Option<Duration>,
    ) -> usize {
        let mut acks = self.acks.subscribe();
        let wait = async {
            loop {
                let n = self.acked_count(seq, replicas);
                if n >= need || acks.changed().await.is_err() {
                    return n;
                }
            }
        };
        match timeout {
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(n) => n,
                Err(_) => self.acked_count(seq, replicas),
            },
            None => wait.await,
        }
    }

    /// The replicas WAIT counts for a connection that wrote `wrote`: those of the slots it
    /// wrote, or, before its first write, those of every slot this node is primary of.
    pub fn wait_targets(&self, wrote: &Write) -> Vec<NodeId> {
        if wrote.replicas.is_empty() {
            self.replicas_of_mine()
        } else {
            wrote.replicas.clone()
        }
    }

    /// The replicas of every slot this node is primary of.
    fn replicas_of_mine(&self) -> Vec<NodeId> {
        let view = self.cluster.view();
        let Some(me) = view.me else { return Vec::new() };
        let mut out: Vec<NodeId> = view
            .map
            .slots
            .iter()
            .filter(|o| o.primary == Some(me))
            .flat_map(|o| o.replicas.iter().map(|&r| view.map.node(r).id))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn mode_of(&self, key: &[u8]) -> ReplicationMode {
        self.modes
            .iter()
            .find(|(pattern, _)| crate::store::glob::glob_match(pattern.as_bytes(), key, false))
            .map_or(self.default_mode, |&(_, m)| m)
    }

    /// How far each of `replicas` is behind (the replicas of this node's slots, from the map).
    pub fn lag(&self, replicas: impl IntoIterator<Item = NodeId>) -> Vec<ReplicaLag> {
        let dirty = self.dirty.lock();
        let since = self.behind_since.lock();
        replicas
            .into_iter()
            .map(|replica| ReplicaLag {
                replica,
                pending_keys: dirty.pending.get(&replica).map_or(0, Pending::len),
                behind: since.get(&replica).map_or(Duration::ZERO, |t| t.elapsed()),
            })
            .collect()
    }
}

impl ChangeListener for Replication {
    fn changed(&self, change: &Change<'_>) {
        // Moving a slot is not a change of its keys; the new primary syncs its replicas.
        if change.cause == ChangeCause::Migrated || APPLYING.with(|a| a.get()) {
            return;
        }
        let view = self.cluster.view();
        let Some(me) = view.me else { return };
        // A slot migrating here is written here (ASK) before it is ours: those writes go to
        // the slot's replicas too, so a source crashing before the handover loses none.
        if !writes_for(&view, change.slot, me) {
            return;
        }
        let owners = &view.map.slots[change.slot as usize];
        let target = view.map.migrations.get(&change.slot).map(|m| m.to);
        let replicas: Vec<NodeId> =
            owners.replicas.iter().filter(|&&r| Some(r) != target).map(|&r| view.map.node(r).id).collect();
        if replicas.is_empty() {
            return;
        }
        let mut dirty = self.dirty.lock();
        dirty.seq += 1;
        let seq = dirty.seq;
        for &replica in &replicas {
            let set = dirty.pending.entry(replica).or_default();
            if set.is_empty() {
                self.behind_since.lock().entry(replica).or_insert_with(tokio::time::Instant::now);
            }
            set.insert(change.key, seq);
        }
        drop(dirty);
        // Deletions by expiry or eviction happen outside any client's command: nobody waits.
        if matches!(change.cause, ChangeCause::Command) {
            let sync = self.mode_of(change.key) == ReplicationMode::Sync;
            LAST_WRITE.with(|w| {
                let mut w = w.borrow_mut();
                let w = w.get_or_insert_with(Write::default);
                w.seq = seq;
                w.sync |= sync;
                w.add_replicas(&replicas);
            });
        }
        self.wake.notify_one();
    }

    fn flushed(&self, _now_ms: u64) {
        // FLUSHALL on one member flushes that member only, as on a Redis Cluster node; its
        // replicas learn of it through the full sync of the next map change.
    }
}

/// Sends what changed to every replica, and full syncs to replicas new to a slot.
async fn send_loop(server: Arc<Server>, r: Arc<Replication>) {
    let mut links: HashMap<NodeId, BusClient> = HashMap::new();
    // Slots each replica has been fully synced for while this node is their primary.
    let mut synced: HashMap<NodeId, Vec<bool>> = HashMap::new();
    let mut epoch = u64::MAX;
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = r.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let view = r.cluster.view();
        let Some(me) = view.me else { continue };
        if view.map.epoch != epoch {
            epoch = view.map.epoch;
            r.prune(&view);
            full_syncs(&server, &r, &view.map, me, &mut synced);
        }
        request_syncs(&r, &view, &mut links).await;
        let batches = r.take_batches();
        let mut more = false;
        for Batch { replica: node, keys, upto, remaining, sync_token } in batches {
            let Some(info) = view.map.index_of(&node).map(|i| view.map.node(i).clone()) else {
                // No longer a member: nothing to send, and nobody waits for it.
                r.sent(&keys);
                r.settled(node, upto);
                continue;
            };
            let link = links
                .entry(node)
                .or_insert_with(|| BusClient::new(crate::cluster::consensus::bus_address(&info)));
            let entries = read_current(&server, keys.iter().map(|(_, k)| &k[..]));
            // Read after the entries: no change they carry has a higher write-behind version.
            let versions = server.persistence.get().map_or(0, |p| p.versions_upto());
            if !entries.is_empty() {
                crate::faults::point("replication-before-send");
            }
            let request = DataRequest::Replicate {
                from: r.cluster.me.0,
                epoch: view.map.epoch,
                remaining,
                sync_token,
                entries,
                versions,
            };
            match link.call_data(&request, BATCH_TIMEOUT).await {
                Ok(BusResponse::Imported(Ok(_))) => {
                    let sent = keys.len() as u64;
                    r.cluster
                        .counters
                        .keys_replicated_out
                        .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                    r.sent(&keys);
                    r.settled(node, upto);
                    more = true
                }
                other => {
                    tracing::debug!(replica = %node, answer = ?other, "replication batch not taken; will retry");
                    r.put_back(node, &keys, &r.cluster.view());
                    if keys.is_empty() {
                        r.dirty.lock().owed.insert(node);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if more {
            r.wake.notify_one();
        }
    }
}

/// Whether this node writes `slot`'s changes to its replicas: it is the slot's primary, or
/// the slot is migrating here.
fn writes_for(view: &View, slot: u16, me: u16) -> bool {
    view.map.slots[slot as usize].primary == Some(me)
        || view.map.migrations.get(&slot).is_some_and(|m| m.to == me)
}

/// Whether `replica` replicates `slot` for this node in `view` (a slot's migration target
/// never does: it refuses such batches, and a map listing it as a replica too would keep
/// its changes queued for ever).
fn replicates_for_me(view: &View, slot: u16, replica: &NodeId) -> bool {
    let (Some(me), Some(ri)) = (view.me, view.map.index_of(replica)) else { return false };
    writes_for(view, slot, me)
        && view.map.slots[slot as usize].replicas.contains(&ri)
        && view.map.migrations.get(&slot).is_none_or(|m| m.to != ri)
}

fn note_dropped(dropped: &mut HashMap<NodeId, std::collections::BTreeSet<u64>>, replica: NodeId, seq: u64) {
    let d = dropped.entry(replica).or_default();
    d.insert(seq);
    if d.len() > DROPPED_KEPT {
        d.pop_first();
    }
}

fn release_sending(sending: &mut HashMap<Box<[u8]>, u32>, keys: &[(u64, Box<[u8]>)]) {
    for (_, key) in keys {
        if let Some(n) = sending.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                sending.remove(key);
            }
        }
    }
}

/// Queues every key of each slot whose replica set gained a node since the last map.
fn full_syncs(
    server: &Server,
    r: &Replication,
    map: &crate::cluster::SlotMap,
    me: u16,
    synced: &mut HashMap<NodeId, Vec<bool>>,
) {
    let mut still: HashMap<NodeId, Vec<bool>> = HashMap::new();
    for (slot, owners) in map.slots.iter().enumerate() {
        if owners.primary != Some(me) {
            continue;
        }
        for &ri in &owners.replicas {
            let node = map.node(ri).id;
            let was = synced.get(&node).is_some_and(|s| s[slot]);
            still.entry(node).or_insert_with(|| vec![false; SLOT_COUNT])[slot] = true;
            if !was {
                queue_slot(server, r, node, slot);
            }
        }
    }
    *synced = still;
    r.wake.notify_one();
}

/// Queues every key of `slot` for `replica` (part of a full sync); returns how many.
fn queue_slot(server: &Server, r: &Replication, replica: NodeId, slot: usize) -> usize {
    let keys = server.keyspace.lock_slot(slot as u16, now_ms()).keys_in_slot(slot, usize::MAX);
    if !keys.is_empty() {
        r.mark(replica, keys.iter().map(|k| &k[..]));
    }
    keys.len()
}

/// On a primary: `replica` asks for every key of the slots it replicates for this node (it
/// newly replicates some and dropped what it held). Refused while this node's map is older
/// than the replica's, which then asks again.
pub fn sync_requested(server: &Server, replica: NodeId, epoch: u64, token: u64) -> Result<usize, String> {
    let r = server.replication.get().ok_or("not in cluster mode")?;
    let view = r.cluster.view();
    view.not_behind(epoch, "replica")?;
    let mut queued = 0;
    if let (Some(me), Some(ri)) = (view.me, view.map.index_of(&replica)) {
        for (slot, owners) in view.map.slots.iter().enumerate() {
            if owners.primary == Some(me) && owners.replicas.contains(&ri) {
                queued += queue_slot(server, r, replica, slot);
            }
        }
    }
    let mut dirty = r.dirty.lock();
    dirty.sync_tokens.insert(replica, token);
    dirty.owed.insert(replica);
    drop(dirty);
    r.wake.notify_one();
    Ok(queued)
}

/// On a replica: asks the primaries it newly replicates slots of for a full sync.
async fn request_syncs(
    r: &Replication,
    view: &crate::cluster::state::View,
    links: &mut HashMap<NodeId, BusClient>,
) {
    for (primary, token) in r.cluster.syncs_to_request() {
        let Some(info) = view.map.index_of(&primary).map(|i| view.map.node(i).clone()) else { continue };
        let link = links
            .entry(primary)
            .or_insert_with(|| BusClient::new(crate::cluster::consensus::bus_address(&info)));
        let request = DataRequest::SyncMe { replica: r.cluster.me.0, epoch: view.map.epoch, token };
        match link.call_data(&request, BATCH_TIMEOUT).await {
            Ok(BusResponse::Imported(Ok(_))) => r.cluster.sync_requested(primary, token),
            other => {
                tracing::debug!(%primary, answer = ?other.map(|_| ()), "full sync request not taken; will retry")
            }
        }
    }
}

/// The current state of `keys`, read under their shards' locks.
fn read_current<'k>(server: &Server, keys: impl ExactSizeIterator<Item = &'k [u8]>) -> Vec<ReplicatedKey> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let mut db = server.keyspace.lock_keys([key], now_ms());
        let entry = db.peek(key).map(|e| {
            let (kind, value) = encode_value(&e.value);
            MovedEntry { key: key.to_vec(), kind, value, expire_at: e.expire_at().unwrap_or(0) }
        });
        out.push(ReplicatedKey { key: key.to_vec(), entry });
    }
    out
}

/// Applies a batch from `from`, the primary of its slots or the node they migrate to, whose
/// map had `epoch` (on a replica). A batch from a map newer than this node's is refused until
/// this node has caught up (the sender retries). A key of a slot this node does not replicate
/// for `from` in its own map refuses the batch, so a late batch from a former primary cannot
/// undo newer state and its writers are not told this node holds what it does not (the
/// sender drops such keys once its map has caught up). A slot whose stale copies are still
/// being dropped refuses the batch too, which is retried.
pub fn apply(
    server: &Server,
    from: NodeId,
    epoch: u64,
    sync: SyncProgress,
    keys: Vec<ReplicatedKey>,
    versions: u64,
) -> Result<usize, String> {
    let cluster = server.cluster.get().ok_or("not in cluster mode")?;
    // Checked once for the batch (maps only move forward): an empty batch ("nothing more
    // for you") must not be taken by a replica that does not yet know what it replicates.
    cluster.view().not_behind(epoch, "primary")?;
    let limits = server.keyspace.settings.hash_limits();
    let mut applied = 0;
    // Keys of backed key spaces the sender may not have written to Postgres yet.
    let persistence = server.persistence.get().filter(|_| versions > 0);
    let mut noted = Vec::new();
    APPLYING.with(|a| a.set(true));
    let result = crate::persistence::loading(|| {
        for k in keys {
            let slot = key_slot(&k.key);
            // The map is read under the key's lock: see `cluster::stale`.
            let mut db = server.keyspace.lock_keys([&k.key[..]], now_ms());
            let view = cluster.view();
            let owners = &view.map.slots[slot as usize];
            let from_primary = owners.primary.is_some_and(|p| view.map.node(p).id == from)
                || view.map.migrations.get(&slot).is_some_and(|m| view.map.node(m.to).id == from);
            if !from_primary || view.role(slot) != SlotRole::Replica {
                // Refused, not skipped: an acknowledgement would tell the sender's writers
                // that a node holds what it does not.
                return Err(format!(
                    "slot {slot} is not replicated here for the sender (epoch {})",
                    view.map.epoch
                ));
            }
            if !cluster.slot_ready(slot) {
                return Err(format!("slot {slot} is not ready for replication yet"));
            }
            if persistence.is_some() {
                noted.push((k.key.clone(), k.entry.is_none()));
            }
            match k.entry.and_then(|e| decode_value(e.kind, &e.value, limits).map(|v| (v, e.expire_at))) {
                Some((value, expire_at)) => {
                    db.set(&k.key, value, expire_at);
                }
                None => {
                    db.remove_migrated(&k.key);
                }
            }
            applied += 1;
        }
        Ok(applied)
    });
    APPLYING.with(|a| a.set(false));
    if let Ok(n) = result {
        if n > 0 {
            crate::faults::point("replica-applied-before-ack");
        }
        cluster.counters.keys_replicated_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = persistence {
            p.note_replicated(from, versions, &noted);
        }
        if let Some((epoch, slots)) = cluster.synced_from(from, sync.token, sync.remaining) {
            if let Some(consensus) = server.consensus.get() {
                tokio::spawn(consensus.clone().report_caught_up(epoch, slots));
            }
        }
    }
    result
}

/// On a replica with backed key spaces: asks the primaries it holds write-behind notes for
/// how far they have written to Postgres (dropping the notes covered), and after every map
/// change writes behind the noted keys of primaries that left the grid whose slots this
/// node now serves (see `persistence::handoff`).
async fn handoff_loop(server: Arc<Server>, cluster: Arc<Cluster>) {
    let Some(p) = server.persistence.get().cloned() else { return };
    let mut links: HashMap<NodeId, BusClient> = HashMap::new();
    let mut epoch = 0;
    let mut asked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let view = cluster.view();
        if view.map.epoch != epoch {
            epoch = view.map.epoch;
            if !p.handoff.is_empty() {
                let takeover = p.handoff.map_changed(&view);
                if !takeover.requeue.is_empty() {
                    let queued = p.requeue(&server, &takeover.requeue);
                    tracing::info!(
                        keys = queued,
                        epoch,
                        "writing behind again the keys a primary that left the grid may not have written"
                    );
                }
            }
        }
        if asked.elapsed() < Duration::from_secs(1) {
            continue;
        }
        asked = tokio::time::Instant::now();
        for primary in p.handoff.senders() {
            let Some(info) = view.map.index_of(&primary).map(|i| view.map.node(i).clone()) else { continue };
            let link = links
                .entry(primary)
                .or_insert_with(|| BusClient::new(crate::cluster::consensus::bus_address(&info)));
            match link.call_data(&DataRequest::Committed, Duration::from_secs(1)).await {
                Ok(BusResponse::Committed(marks)) => {
                    p.apply_marks(primary, &marks);
                }
                other => {
                    tracing::debug!(%primary, answer = ?other.map(|_| ()), "write-behind report not had")
                }
            }
        }
        links.retain(|id, _| view.map.index_of(id).is_some());
    }
}
