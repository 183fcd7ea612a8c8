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
//!
//! In a `sync` key space a read waits too: a key whose latest change its replicas have not all
//! applied yet is not answered until they have (see [`note_reads`]); otherwise a value read
//! could vanish in a failover to a replica without it (a dirty read). A replica answers which
//! keys of a batch it refused (slots it does not replicate for the sender in its own map); those
//! never count as applied there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bincode::{Decode, Encode};
use parking_lot::Mutex;

use crate::cluster::bus::{BusClient, BusResponse};
use crate::cluster::migration::{DataRequest, MovedEntry};
use crate::cluster::state::SlotRole;
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
    /// What the command running on this thread read that its replicas do not all hold yet
    /// (see [`note_reads`]).
    static LAST_READ: std::cell::RefCell<Option<Write>> = const { std::cell::RefCell::new(None) };
}

/// What one command wrote that replicas must apply: the connection waits on it for `sync`
/// key spaces, and remembers it for WAIT.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Write {
    /// Sequence number of its first change: with `seq`, the changes a refusal by a replica
    /// may concern.
    pub first: u64,
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

/// Starts a command: forgets what an earlier one on this thread wrote or read.
pub fn begin_command() {
    LAST_WRITE.with(|w| w.borrow_mut().take());
    LAST_READ.with(|w| w.borrow_mut().take());
}

/// What the command just run wrote, if it changed replicated keys.
pub fn last_write() -> Option<Write> {
    LAST_WRITE.with(|w| w.borrow_mut().take())
}

/// The changes the command just run read before every replica of their slots applied them
/// (`sync` key spaces only): its reply waits for them as a sync write's does.
pub fn last_read() -> Option<Write> {
    LAST_READ.with(|w| w.borrow_mut().take())
}

/// Notes, with `keys` still locked after a command ran on them, those of `sync` key spaces
/// whose latest change not every replica of their slot has applied: the reply waits for
/// it ([`last_read`]). Keys of `async` key spaces, and keys with no such change (the common
/// case: one lookup per key), cost nothing more.
pub fn note_reads<'k>(server: &Server, keys: impl Iterator<Item = &'k [u8]>) {
    let Some(r) = server.replication.get() else { return };
    if !r.sync_reads {
        return;
    }
    for key in keys {
        if let Some(read) = r.unacked(key) {
            LAST_READ.with(|w| {
                let mut w = w.borrow_mut();
                let w = w.get_or_insert_with(|| Write { first: read.first, ..Write::default() });
                w.first = w.first.min(read.first);
                w.seq = w.seq.max(read.seq);
                w.sync = true;
                w.add_replicas(&read.replicas);
            });
        }
    }
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

/// How far one replica has applied this node's changes.
#[derive(Default)]
struct Applied {
    /// Every change up to this number is applied there, except those refused.
    upto: u64,
    /// Ranges of change numbers some change of which the replica refused, or was not sent
    /// because it no longer replicates the slot (oldest first, at most [`MAX_REFUSALS`]):
    /// a waiter whose changes fall in one does not count the replica.
    refused: Vec<(u64, u64)>,
}

/// Refusal ranges kept per replica; beyond, the oldest two merge (wider, still safe).
const MAX_REFUSALS: usize = 16;

impl Applied {
    /// Whether every change numbered `first..=seq` is applied here.
    fn covers(&self, first: u64, seq: u64) -> bool {
        self.upto >= seq && !self.refused.iter().any(|&(lo, hi)| lo <= seq && first <= hi)
    }

    fn refuse(&mut self, lo: u64, hi: u64) {
        self.refused.push((lo, hi));
        if self.refused.len() > MAX_REFUSALS {
            let (a, b) = (self.refused.remove(0), self.refused.remove(0));
            self.refused.insert(0, (a.0.min(b.0), a.1.max(b.1)));
        }
    }
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
    /// Per replica, the keys of its batch in flight (out of `pending`, not yet applied).
    in_flight: HashMap<NodeId, std::collections::HashSet<Box<[u8]>>>,
    /// Per replica, the change number its batch in flight proves applied when answered.
    in_flight_upto: HashMap<NodeId, u64>,
    /// Per replica, keys it refused since this node's map last changed: reads of them wait
    /// (and time out) as for a change not applied, since the replica does not hold them.
    refused: HashMap<NodeId, std::collections::HashSet<Box<[u8]>>>,
}

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
    /// Per replica, what it has applied. Locked after `dirty`, never before.
    acked: Mutex<HashMap<NodeId, Applied>>,
    /// Bumped on every acknowledged batch, for writers and WAIT waiting on replicas.
    acks: tokio::sync::watch::Sender<u64>,
    /// Key patterns with their replication mode, first match wins; then `default_mode`.
    modes: Vec<(String, ReplicationMode)>,
    default_mode: ReplicationMode,
    /// How long a `sync` write waits for its replicas.
    pub sync_timeout: Duration,
    /// Whether reads in `sync` key spaces wait for their replicas too (`cluster-sync-reads`).
    pub sync_reads: bool,
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
            sync_reads: config.cluster_sync_reads,
            wake: tokio::sync::Notify::new(),
            behind_since: Mutex::default(),
        });
        server.keyspace.add_listener(r.clone());
        tokio::spawn(send_loop(server.clone(), r.clone()));
        r
    }

    /// Puts back a batch `replica` did not take, at the changes' own numbers (waiters on them
    /// keep waiting).
    fn put_back(&self, replica: NodeId, keys: &[(u64, Box<[u8]>)]) {
        let mut dirty = self.dirty.lock();
        dirty.in_flight.remove(&replica);
        dirty.in_flight_upto.remove(&replica);
        let set = dirty.pending.entry(replica).or_default();
        for (seq, key) in keys {
            set.insert(key, *seq);
        }
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
        let Queues { seq, pending, owed, sync_tokens, in_flight, in_flight_upto, .. } = &mut *dirty;
        let mut out = Vec::new();
        for (node, keys) in pending.iter_mut() {
            let take = keys.take(BATCH_KEYS);
            if take.is_empty() {
                continue;
            }
            owed.remove(node);
            in_flight.entry(*node).or_default().extend(take.iter().map(|(_, k)| k.clone()));
            let upto = keys.by_seq.first_key_value().map_or(*seq, |(&first, _)| first - 1);
            in_flight_upto.insert(*node, upto);
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

    /// After a batch to `replica` was answered (or it left the grid): it has applied every
    /// change up to `upto` except those of `refused` (keys it did not take, with their change
    /// numbers; the latest change noted so far bounds what their values carried); caught up
    /// if nothing else is pending. Under the queues' lock, so a reader never finds a key
    /// neither in flight nor pending nor refused before its acknowledgement counts.
    fn settled(&self, replica: NodeId, upto: u64, refused: Vec<(u64, Box<[u8]>)>, applied: &[Box<[u8]>]) {
        let mut dirty = self.dirty.lock();
        dirty.in_flight.remove(&replica);
        dirty.in_flight_upto.remove(&replica);
        // Keys it took now (a full sync or a retry) are no longer refused there.
        if let Some(set) = dirty.refused.get_mut(&replica) {
            for k in applied {
                set.remove(k);
            }
            if set.is_empty() {
                dirty.refused.remove(&replica);
            }
        }
        if dirty.pending.get(&replica).is_none_or(|keys| keys.is_empty()) {
            self.behind_since.lock().remove(&replica);
        }
        let latest = dirty.seq;
        let mut acked = self.acked.lock();
        let a = acked.entry(replica).or_default();
        if let Some(lo) = refused.iter().map(|(seq, _)| *seq).min() {
            a.refuse(lo, latest);
            dirty.refused.entry(replica).or_default().extend(refused.into_iter().map(|(_, k)| k));
        }
        a.upto = a.upto.max(upto);
        drop(acked);
        drop(dirty);
        self.acks.send_modify(|n| *n += 1);
    }

    /// How many of `replicas` have applied every change up to `seq`.
    pub fn acked_count(&self, seq: u64, replicas: &[NodeId]) -> usize {
        self.applied_count(seq, seq, replicas)
    }

    /// How many of `replicas` have applied every change up to `seq`, none of `first..=seq`
    /// refused.
    fn applied_count(&self, first: u64, seq: u64, replicas: &[NodeId]) -> usize {
        let acked = self.acked.lock();
        replicas.iter().filter(|r| acked.get(r).is_some_and(|a| a.covers(first, seq))).count()
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
        self.wait_for_changes(seq, seq, replicas, need, timeout).await
    }

    /// As [`Replication::wait_for`], for a command whose changes are numbered `first..=seq`:
    /// a replica that refused one of them does not count.
    pub async fn wait_for_changes(
        &self,
        first: u64,
        seq: u64,
        replicas: &[NodeId],
        need: usize,
        timeout: Option<Duration>,
    ) -> usize {
        let mut acks = self.acks.subscribe();
        let wait = async {
            loop {
                let n = self.applied_count(first, seq, replicas);
                if n >= need || acks.changed().await.is_err() {
                    return n;
                }
            }
        };
        match timeout {
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(n) => n,
                Err(_) => self.applied_count(first, seq, replicas),
            },
            None => wait.await,
        }
    }

    /// For a read of `key` on its primary, in a `sync` key space: the changes to wait for when
    /// some replica of its slot has not applied the key's latest change (it is queued, in a
    /// batch in flight, or was refused), None when every replica holds it.
    fn unacked(&self, key: &[u8]) -> Option<Write> {
        if self.mode_of(key) != ReplicationMode::Sync {
            return None;
        }
        let view = self.cluster.view();
        let me = view.me?;
        let owners = &view.map.slots[key_slot(key) as usize];
        if owners.primary != Some(me) || owners.replicas.is_empty() {
            return None;
        }
        let replicas: Vec<NodeId> = owners.replicas.iter().map(|&r| view.map.node(r).id).collect();
        let dirty = self.dirty.lock();
        // The change number whose acknowledgement by a replica proves it holds the key: its
        // queued change (the batch carrying it sends the value current then), or the answer
        // to the batch in flight with it. Not the latest change overall: a replica that is
        // sent nothing else would never prove that, and the read would wait for good.
        let target = replicas
            .iter()
            .filter_map(|r| {
                let queued = dirty.pending.get(r).and_then(|p| p.by_key.get(key).copied());
                let flying = dirty
                    .in_flight
                    .get(r)
                    .is_some_and(|f| f.contains(key))
                    .then(|| dirty.in_flight_upto.get(r).copied().unwrap_or(dirty.seq));
                queued.max(flying)
            })
            .max()?;
        // Every change not yet applied by these replicas is numbered above their watermarks.
        let acked = self.acked.lock();
        let first = replicas.iter().map(|r| acked.get(r).map_or(0, |a| a.upto)).min().unwrap_or(0) + 1;
        Some(Write { first: first.min(target), seq: target, replicas, sync: true })
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
        let owners = &view.map.slots[change.slot as usize];
        if owners.primary != Some(me) || owners.replicas.is_empty() {
            return;
        }
        let mut dirty = self.dirty.lock();
        dirty.seq += 1;
        let seq = dirty.seq;
        // A key written again after a replica refused it is judged by its new change.
        if !dirty.refused.is_empty() {
            for refused in dirty.refused.values_mut() {
                refused.remove(change.key);
            }
        }
        let replicas: Vec<NodeId> = owners.replicas.iter().map(|&r| view.map.node(r).id).collect();
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
                let w = w.get_or_insert_with(|| Write { first: seq, ..Write::default() });
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
            full_syncs(&server, &r, &view.map, me, &mut synced);
            r.forget_refusals(&view.map, me);
        }
        request_syncs(&r, &view, &mut links).await;
        let batches = r.take_batches();
        let mut more = false;
        for Batch { replica: node, keys, upto, remaining, sync_token } in batches {
            let Some(ri) = view.map.index_of(&node) else {
                // No longer a member: nothing to send, and nobody waits for it.
                r.settled(node, upto, Vec::new(), &[]);
                continue;
            };
            let info = view.map.node(ri).clone();
            // Keys of slots the node no longer replicates for this one (as this map says) are
            // not sent: they count as refused.
            let (keys, dropped): (Vec<_>, Vec<_>) =
                keys.into_iter().partition(|(_, k)| replicates(&view.map, me, ri, key_slot(k)));
            if !dropped.is_empty() {
                r.dropped(node, &dropped);
            }
            let link = links
                .entry(node)
                .or_insert_with(|| BusClient::new(crate::cluster::consensus::bus_address(&info)));
            let entries = read_current(&server, keys.iter().map(|(_, k)| &k[..]));
            if !entries.is_empty() {
                crate::faults::point("replication-before-send");
            }
            let request = DataRequest::Replicate {
                from: r.cluster.me.0,
                epoch: view.map.epoch,
                remaining,
                sync_token,
                entries,
            };
            match link.call_data(&request, BATCH_TIMEOUT).await {
                Ok(BusResponse::Replicated(Ok(answer))) => {
                    let sent = (keys.len() - answer.refused.len()) as u64;
                    r.cluster
                        .counters
                        .keys_replicated_out
                        .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                    let refused_at: std::collections::HashSet<usize> =
                        answer.refused.iter().map(|&i| i as usize).collect();
                    let (refused, applied): (Vec<_>, Vec<_>) =
                        keys.into_iter().enumerate().partition(|(i, _)| refused_at.contains(i));
                    let refused: Vec<(u64, Box<[u8]>)> = refused.into_iter().map(|(_, k)| k).collect();
                    let applied: Vec<Box<[u8]>> = applied.into_iter().map(|(_, (_, k))| k).collect();
                    if !refused.is_empty() {
                        tracing::debug!(replica = %node, refused = refused.len(), "replica refused keys of slots it does not replicate for this node");
                    }
                    // Keys refused while this node's latest map still names the replica for
                    // their slots go again (its map was behind or a slot not yet ready there):
                    // otherwise it would lack them, and reads of them would wait for good.
                    let fresh = r.cluster.view();
                    let retry: Vec<(u64, Box<[u8]>)> = match fresh.map.index_of(&node) {
                        Some(ri) => refused
                            .iter()
                            .filter(|(_, k)| replicates(&fresh.map, me, ri, key_slot(k)))
                            .cloned()
                            .collect(),
                        None => Vec::new(),
                    };
                    r.settled(node, upto, refused, &applied);
                    if !retry.is_empty() {
                        r.put_back(node, &retry);
                    }
                    more = true
                }
                other => {
                    tracing::debug!(replica = %node, answer = ?other.map(|_| ()), "replication batch not taken; will retry");
                    r.put_back(node, &keys);
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

/// Whether node `replica` (an index in `map`) holds `slot`'s copy for this node (`me`): this
/// node is the slot's primary, `replica` one of its replicas, and the slot is not moving to it
/// (an importing node takes the slot's keys from the migration, not from replication).
fn replicates(map: &crate::cluster::SlotMap, me: u16, replica: u16, slot: u16) -> bool {
    let owners = &map.slots[slot as usize];
    owners.primary == Some(me)
        && owners.replicas.contains(&replica)
        && map.migrations.get(&slot).is_none_or(|m| m.to != replica)
}

impl Replication {
    /// Keys not sent to `replica` because it no longer replicates their slots for this node:
    /// their changes never count as applied there.
    fn dropped(&self, replica: NodeId, keys: &[(u64, Box<[u8]>)]) {
        let dirty = self.dirty.lock();
        let lo = keys.iter().map(|(seq, _)| *seq).min().unwrap_or(dirty.seq);
        self.acked.lock().entry(replica).or_default().refuse(lo, dirty.seq);
    }

    /// After a map change: forgets refused keys of slots the refusing node no longer
    /// replicates for this one (reads of them no longer consult it).
    fn forget_refusals(&self, map: &crate::cluster::SlotMap, me: u16) {
        let mut dirty = self.dirty.lock();
        dirty.refused.retain(|node, keys| {
            let Some(ri) = map.index_of(node) else { return false };
            keys.retain(|k| replicates(map, me, ri, key_slot(k)));
            !keys.is_empty()
        });
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
    if view.map.epoch < epoch {
        return Err(format!("behind the replica: epoch {} < {epoch}", view.map.epoch));
    }
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

/// A replica's answer to a batch it took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchAnswer {
    /// Keys applied.
    pub applied: usize,
    /// Positions in the batch of the keys refused: slots this replica does not replicate for
    /// the sender in its own map. The sender counts none of them as applied.
    pub refused: Vec<u32>,
}

/// Applies a batch from the primary `from`, whose map had `epoch` (on a replica). A batch
/// from a map newer than this node's is refused until this node has caught up (the primary
/// retries); keys of slots this node does not replicate for `from` in its own map are
/// refused (answered as such, so the sender does not count them as applied), so a late batch
/// from a former primary cannot undo newer state; a slot whose stale copies are still being
/// dropped refuses the batch, which is retried.
pub fn apply(
    server: &Server,
    from: NodeId,
    epoch: u64,
    sync: SyncProgress,
    keys: Vec<ReplicatedKey>,
) -> Result<BatchAnswer, String> {
    let cluster = server.cluster.get().ok_or("not in cluster mode")?;
    // Checked once for the batch (maps only move forward): an empty batch ("nothing more
    // for you") must not be taken by a replica that does not yet know what it replicates.
    let mine = cluster.view().map.epoch;
    if mine < epoch {
        return Err(format!("behind the primary: epoch {mine} < {epoch}"));
    }
    let limits = server.keyspace.settings.hash_limits();
    let mut answer = BatchAnswer::default();
    APPLYING.with(|a| a.set(true));
    let result = crate::persistence::loading(|| {
        for (i, k) in keys.into_iter().enumerate() {
            let slot = key_slot(&k.key);
            // The map is read under the key's lock: see `cluster::stale`.
            let mut db = server.keyspace.lock_keys([&k.key[..]], now_ms());
            let view = cluster.view();
            let owners = &view.map.slots[slot as usize];
            let from_primary = owners.primary.is_some_and(|p| view.map.node(p).id == from);
            if !from_primary || view.role(slot) != SlotRole::Replica {
                answer.refused.push(i as u32);
                continue;
            }
            if !cluster.slot_ready(slot) {
                return Err(format!("slot {slot} is not ready for replication yet"));
            }
            match k.entry.and_then(|e| decode_value(e.kind, &e.value, limits).map(|v| (v, e.expire_at))) {
                Some((value, expire_at)) => {
                    db.set(&k.key, value, expire_at);
                }
                None => {
                    db.remove_migrated(&k.key);
                }
            }
            answer.applied += 1;
        }
        Ok(answer)
    });
    APPLYING.with(|a| a.set(false));
    if let Ok(answer) = &result {
        let n = answer.applied;
        if n > 0 {
            crate::faults::point("replica-applied-before-ack");
        }
        cluster.counters.keys_replicated_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some((epoch, slots)) = cluster.synced_from(from, sync.token, sync.remaining) {
            if let Some(consensus) = server.consensus.get() {
                tokio::spawn(consensus.clone().report_caught_up(epoch, slots));
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_change_never_counts_as_applied_later_ones_do() {
        let mut a = Applied::default();
        // A batch answered up to change 10, with the key whose change was 4 refused (the
        // latest change when the answer came was 12).
        a.refuse(4, 12);
        a.upto = 10;
        // A write whose changes were 4..=4, or 3..=6: its replica did not take them.
        assert!(!a.covers(4, 4));
        assert!(!a.covers(3, 6));
        // A write of changes before the refused one is applied; so is one after the answer
        // once the watermark passes it.
        assert!(a.covers(2, 3));
        assert!(!a.covers(13, 13), "not applied yet");
        a.upto = 20;
        assert!(a.covers(13, 13));
    }

    #[test]
    fn refusal_ranges_stay_bounded_by_merging_never_by_forgetting() {
        let mut a = Applied { upto: 1_000, refused: Vec::new() };
        for i in 0..100u64 {
            a.refuse(i * 10, i * 10 + 1);
        }
        assert!(a.refused.len() <= MAX_REFUSALS);
        for i in 0..100u64 {
            assert!(!a.covers(i * 10, i * 10), "refusal {i} still counts");
        }
    }
}
