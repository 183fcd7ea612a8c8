//! Client-side caching (CLIENT TRACKING): which clients may hold which keys, and the RESP3
//! `invalidate` pushes they get when those keys change. A [`ChangeListener`] on the keyspace,
//! so every change (command, expiry, eviction, flush) invalidates; it costs one atomic load
//! per change while no client tracks.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::pubsub::{self, Limit, OutputLimits};
use super::ClientInfo;
use crate::commands::CommandSpec;
use crate::store::keyspace::{Change, ChangeListener};

/// Most keys the default-mode table remembers (Redis's `tracking-table-max-keys`); past it,
/// the oldest-remembered keys are invalidated and forgotten, so memory stays bounded.
pub const MAX_TRACKED_KEYS: usize = 1_000_000;

thread_local! {
    /// The client whose command is running on this thread (0: none), for NOLOOP.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// Marks `id` as the client running a command on this thread until dropped.
pub struct CurrentClient(u64);

impl CurrentClient {
    /// Sets the running client.
    pub fn enter(id: u64) -> CurrentClient {
        CurrentClient(CURRENT.with(|c| c.replace(id)))
    }
}

impl Drop for CurrentClient {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Out-of-band messages for one connection: pre-encoded bytes the connection writes between
/// batches of replies, so a push never lands inside a reply.
#[derive(Default)]
pub struct PushQueue {
    pending: Mutex<Pending>,
    signal: Notify,
}

#[derive(Default)]
struct Pending {
    bytes: BytesMut,
    /// Length of the last frame queued, to drop an identical one queued right after it (a
    /// command that changes one key twice, as a BCAST client would otherwise see twice).
    last_len: usize,
    /// Since when the pending bytes exceed the soft limit.
    over_soft_since: Option<std::time::Instant>,
}

impl PushQueue {
    /// Queues `frame` (`dedup`: unless it repeats the frame queued last); false when that
    /// takes the queue past `limit` (the caller closes the client).
    pub fn push(&self, frame: &[u8], dedup: bool, limit: Limit) -> bool {
        let mut p = self.pending.lock();
        let n = p.bytes.len();
        if dedup && p.last_len == frame.len() && n >= frame.len() && &p.bytes[n - frame.len()..] == frame {
            return true;
        }
        let after = (n + frame.len()) as u64;
        if limit.hard > 0 && after > limit.hard {
            return false;
        }
        if limit.soft > 0 && after > limit.soft {
            let since = *p.over_soft_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_secs(limit.soft_secs) {
                return false;
            }
        } else {
            p.over_soft_since = None;
        }
        let was_empty = n == 0;
        p.bytes.put_slice(frame);
        p.last_len = if dedup { frame.len() } else { 0 };
        drop(p);
        if was_empty {
            self.signal.notify_one();
        }
        true
    }

    /// Resolves when something was queued.
    pub async fn wait(&self) {
        self.signal.notified().await
    }

    /// Moves everything queued into `out`.
    pub fn drain_into(&self, out: &mut BytesMut) {
        let mut p = self.pending.lock();
        if !p.bytes.is_empty() {
            out.put_slice(&p.bytes);
            p.bytes.clear();
            p.last_len = 0;
            p.over_soft_since = None;
        }
    }
}

/// A connection's own view of its tracking mode, read without a lock on every command.
#[derive(Debug, Default, Clone)]
pub struct ConnTracking {
    /// CLIENT TRACKING ON.
    pub on: bool,
    /// BCAST mode.
    pub bcast: bool,
    /// OPTIN mode.
    pub optin: bool,
    /// OPTOUT mode.
    pub optout: bool,
    /// NOLOOP.
    pub noloop: bool,
    /// CLIENT CACHING YES (optin) / NO (optout) given for the next command.
    pub caching_given: bool,
    /// REDIRECT target (0: none).
    pub redirect: u64,
    /// BCAST prefixes, in the order given.
    pub prefixes: Vec<Bytes>,
}

/// One tracking client, as the listener needs it.
struct Tracked {
    /// Where invalidations go: the client itself or its REDIRECT target.
    target: Arc<ClientInfo>,
    /// The client itself (for a broken redirect notice).
    own: Arc<ClientInfo>,
    redirect: u64,
    bcast: bool,
    noloop: bool,
}

#[derive(Default)]
struct Tables {
    /// Default mode: key -> ids of clients that read it since its last invalidation.
    keys: HashMap<Bytes, HashSet<u64>>,
    /// Insertion order of `keys`, for the size bound.
    order: std::collections::VecDeque<Bytes>,
    /// BCAST: prefix -> ids.
    prefixes: BTreeMap<Bytes, HashSet<u64>>,
    /// Tracking clients by id.
    clients: HashMap<u64, Tracked>,
}

/// The node's tracking state.
pub struct Tracking {
    /// Number of clients with tracking on: the listener's fast path.
    active: AtomicUsize,
    tables: Mutex<Tables>,
    /// Output bounds of the clients invalidations go to.
    limits: Arc<OutputLimits>,
}

impl Tracking {
    /// No client tracking; pushes bounded by `limits`.
    pub fn new(limits: Arc<OutputLimits>) -> Tracking {
        Tracking { active: AtomicUsize::new(0), tables: Mutex::new(Tables::default()), limits }
    }

    /// Whether any client tracks (one atomic load).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Turns tracking on (or changes its options) for `info`, sending to `target`.
    pub fn enable(&self, info: &Arc<ClientInfo>, target: Option<Arc<ClientInfo>>, mode: &ConnTracking) {
        let mut t = self.tables.lock();
        let Tables { prefixes, clients, .. } = &mut *t;
        if mode.bcast {
            let list: Vec<Bytes> =
                if mode.prefixes.is_empty() { vec![Bytes::new()] } else { mode.prefixes.clone() };
            for p in list {
                prefixes.entry(p).or_default().insert(info.id);
            }
        }
        let tracked = Tracked {
            target: target.unwrap_or_else(|| info.clone()),
            own: info.clone(),
            redirect: mode.redirect,
            bcast: mode.bcast,
            noloop: mode.noloop,
        };
        if clients.insert(info.id, tracked).is_none() {
            self.active.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Turns tracking off for client `id` (CLIENT TRACKING OFF, disconnect).
    pub fn disable(&self, id: u64) {
        let mut t = self.tables.lock();
        if t.clients.remove(&id).is_some() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        t.prefixes.retain(|_, ids| {
            ids.remove(&id);
            !ids.is_empty()
        });
    }

    /// Remembers the keys a read-only command of a default-mode client read. Called with the
    /// keys' shard locks still held, so no write can slip between the read and this.
    pub fn remember<'k>(&self, id: u64, keys: impl Iterator<Item = &'k Bytes>) {
        let mut guard = self.tables.lock();
        let t = &mut *guard;
        for k in keys {
            match t.keys.get_mut(k.as_ref()) {
                Some(ids) => {
                    ids.insert(id);
                }
                None => {
                    t.order.push_back(k.clone());
                    t.keys.insert(k.clone(), HashSet::from([id]));
                }
            }
        }
        while t.keys.len() > MAX_TRACKED_KEYS {
            let Some(oldest) = t.order.pop_front() else { break };
            if let Some(ids) = t.keys.remove(&oldest) {
                Self::send_key(&self.limits, &t.clients, &ids, &oldest, 0);
            }
        }
    }

    /// The listener's work for one changed key.
    fn invalidate(&self, key: &[u8]) {
        let current = CURRENT.with(|c| c.get());
        let mut t = self.tables.lock();
        if let Some(ids) = t.keys.remove(key) {
            if t.order.len() > 2 * t.keys.len() + 1024 {
                let Tables { keys, order, .. } = &mut *t;
                order.retain(|k| keys.contains_key(k));
            }
            Self::send_key(&self.limits, &t.clients, &ids, key, current);
        }
        if !t.prefixes.is_empty() {
            let mut sent: HashSet<u64> = HashSet::new();
            for (prefix, ids) in t.prefixes.iter() {
                if !key.starts_with(prefix) {
                    continue;
                }
                for id in ids {
                    if let Some(c) = t.clients.get(id) {
                        if !(c.noloop && *id == current) && sent.insert(*id) {
                            deliver(&self.limits, c, Some(key));
                        }
                    }
                }
            }
        }
    }

    fn send_key(
        limits: &OutputLimits,
        clients: &HashMap<u64, Tracked>,
        ids: &HashSet<u64>,
        key: &[u8],
        current: u64,
    ) {
        for id in ids {
            let Some(c) = clients.get(id) else { continue };
            if c.bcast || (c.noloop && *id == current) {
                continue;
            }
            deliver(limits, c, Some(key));
        }
    }
}

/// Writes one invalidation (`None`: everything, after FLUSHALL) to `c`'s target: a RESP3
/// push, or for a RESP2 redirect target in Pub/Sub mode a message on `__redis__:invalidate`,
/// exactly as Redis's `sendTrackingMessage`.
fn deliver(limits: &OutputLimits, c: &Tracked, key: Option<&[u8]>) {
    if c.redirect != 0 && c.target.killed.load(Ordering::Acquire) {
        // Redis's `tracking-redir-broken` notice, to the client itself in RESP3.
        if c.own.resp.load(Ordering::Relaxed) == 3 {
            let mut out = BytesMut::new();
            out.put_slice(b">2\r\n$21\r\ntracking-redir-broken\r\n");
            out.put_slice(format!(":{}\r\n", c.redirect).as_bytes());
            send(limits, &c.own, &out);
        }
        return;
    }
    // A flush's null is in the tracking client's protocol, not the target's (as Redis).
    let own_v3 = c.own.resp.load(Ordering::Relaxed) == 3;
    if c.target.resp.load(Ordering::Relaxed) == 3 {
        send(limits, &c.target, &invalidate_frame(key, own_v3));
    } else if c.redirect != 0 && c.target.subscriptions() > 0 {
        send(limits, &c.target, &pubsub::invalidate_message(&invalidate_value(key, own_v3)));
    }
    // Otherwise RESP2 without a subscribed redirect target: nothing can carry it.
}

fn send(limits: &OutputLimits, to: &ClientInfo, frame: &[u8]) {
    pubsub::push_to(to, frame, true, limits.for_client(to));
}

/// The value part of an invalidation: `*1 key`, or a null for a flush.
fn invalidate_value(key: Option<&[u8]>, null_v3: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(16 + key.map_or(0, |k| k.len()));
    match key {
        Some(k) => {
            out.put_slice(b"*1\r\n$");
            out.put_slice(itoa::Buffer::new().format(k.len()).as_bytes());
            out.put_slice(b"\r\n");
            out.put_slice(k);
            out.put_slice(b"\r\n");
        }
        None if null_v3 => out.put_slice(b"_\r\n"),
        None => out.put_slice(b"$-1\r\n"),
    }
    out
}

/// `>2 invalidate [key]`, or `>2 invalidate <null>` for a flush (`_`, or `$-1` when the
/// tracking client speaks RESP2).
pub fn invalidate_frame(key: Option<&[u8]>, null_v3: bool) -> BytesMut {
    let value = invalidate_value(key, null_v3);
    let mut out = BytesMut::with_capacity(24 + value.len());
    out.put_slice(b">2\r\n$10\r\ninvalidate\r\n");
    out.put_slice(&value);
    out
}
impl ChangeListener for Tracking {
    fn changed(&self, change: &Change<'_>) {
        if self.is_active() {
            self.invalidate(change.key);
        }
    }

    fn flushed(&self, _now_ms: u64) {
        if !self.is_active() {
            return;
        }
        let mut t = self.tables.lock();
        t.keys.clear();
        t.order.clear();
        for c in t.clients.values() {
            deliver(&self.limits, c, None);
        }
    }
}

/// After a command ran (its key locks still held): remembers what a tracking client read,
/// and ends a CLIENT CACHING that applied to this command.
pub fn after_command(
    tracking: &Tracking,
    conn: &mut ConnTracking,
    id: u64,
    spec: &CommandSpec,
    args: &[Bytes],
) {
    if !tracking.is_active() && !conn.caching_given {
        return;
    }
    remember_in_exec(tracking, conn, id, spec, args);
    if conn.caching_given && !spec.name.starts_with("client") {
        conn.caching_given = false;
    }
}

/// Remembers what a read-only command read, as [`after_command`], for one command of an EXEC
/// (where CLIENT CACHING applies to the whole transaction).
pub fn remember_in_exec(
    tracking: &Tracking,
    conn: &ConnTracking,
    id: u64,
    spec: &CommandSpec,
    args: &[Bytes],
) {
    if !conn.on || conn.bcast || !spec.flags.contains(&"readonly") {
        return;
    }
    let skip = (conn.optin && !conn.caching_given) || (conn.optout && conn.caching_given);
    if !skip {
        tracking.remember(id, spec.keys.positions(args.len()).map(|i| &args[i]));
    }
}
