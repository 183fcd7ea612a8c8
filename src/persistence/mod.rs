//! Postgres-backed key spaces: write-behind and write-through through a durable local queue,
//! and read-through on a miss.
//!
//! The keyspace's change records (one per change, under the shard lock) are filtered to the
//! backed key spaces and appended to that key space's [`queue::DurableQueue`]; its
//! [`writer::Writer`] coalesces them per key and upserts batches with a version check. The
//! connection loop calls the hooks here: [`Persistence::prepare`] loads missing keys before a
//! command runs, [`Persistence::admit`] refuses writes when a queue is full,
//! [`Persistence::before_reply`] puts queued records on disk before replies are sent, and
//! [`Persistence::ticket`] makes write-through replies wait for the commit. With no
//! `postgres-url` or no key space, none of this exists and the node is a plain cache.

pub mod config;
pub mod deadletters;
pub mod handoff;
pub mod health;
pub mod loader;
mod metrics;
pub mod postgres;
pub mod queue;
pub mod record;
pub mod writer;

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use config::{validate, FsyncPolicy, KeyspaceConfig, WriteMode};

use crate::commands::{CommandSpec, Keys};
use crate::protocol::Reply;
use crate::server::Server;
use crate::store::glob::glob_match;
use crate::store::keyspace::{Change, ChangeCause, ChangeListener};
use health::{Health, Pool};
use loader::Loader;
use queue::DurableQueue;
use record::{encode_value_shared, Op};
use writer::{Table, Writer};

thread_local! {
    /// Set while read-through inserts a loaded value: that change is not written back.
    static LOADING: Cell<bool> = const { Cell::new(false) };
    /// The write-through record (key space, version) the current command produced.
    static TICKET: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// What writers and loaders share: the pool, the database's health, the stop signal.
pub struct Shared {
    /// Connections.
    pub pool: Pool,
    /// Up or down.
    pub health: Health,
    /// Fires when the node stops.
    pub stop: CancellationToken,
}

/// One backed key space.
pub struct Space {
    /// Its configuration.
    pub cfg: KeyspaceConfig,
    /// Its writer (none in mode `none`).
    pub writer: Option<Arc<Writer>>,
    /// Its loader (when read-through).
    pub loader: Option<Loader>,
}

/// The node's persistence: every backed key space.
pub struct Persistence {
    spaces: Vec<Space>,
    shared: Arc<Shared>,
    versions: AtomicU64,
    read_through: bool,
    /// On a replica: keys its primaries changed that may not be in Postgres yet.
    pub handoff: handoff::Handoff,
}

/// A write-through write the reply must wait for.
pub struct Ticket {
    space: usize,
    version: u64,
}

impl Persistence {
    /// Sets up the backed key spaces of the node's configuration: opens and replays the
    /// queues, creates the schema if the database is up, starts the writers and registers the
    /// change listener. `None` when nothing is configured.
    pub async fn start(server: &Arc<Server>) -> anyhow::Result<Option<Arc<Persistence>>> {
        use anyhow::Context;
        let config = server.config.read().clone();
        let Some(url) = config.postgres_url.clone() else {
            if !config.keyspace.is_empty() {
                tracing::warn!(
                    "key spaces are configured but postgres-url is not: the node is a plain cache"
                );
            }
            return Ok(None);
        };
        if config.keyspace.is_empty() {
            return Ok(None);
        }
        let fsync = FsyncPolicy::parse(&config.writebehind_fsync).unwrap_or(FsyncPolicy::EverySec);
        let shared = Arc::new(Shared {
            pool: Pool::new(url),
            health: Health::default(),
            stop: CancellationToken::new(),
        });
        // Versions start above anything written before: the clock in microseconds, the queue's
        // records and the tables' rows (when reachable).
        let mut max_version = crate::store::clock::now_ms() * 1000;
        let mut spaces = Vec::new();
        for cfg in &config.keyspace {
            let table = Arc::new(Table::new(cfg.table.clone()));
            match table.client(&shared).await {
                Ok(c) => {
                    shared.health.mark_up();
                    if let Ok(v) = postgres::max_version(&c, &cfg.table).await {
                        max_version = max_version.max(v);
                    }
                    shared.pool.put(c);
                }
                Err(e) => shared.health.mark_down(&e.to_string()),
            }
            let writer = if cfg.mode == WriteMode::None {
                None
            } else {
                let dir = config.dir.join("writebehind").join(&cfg.name);
                let (queue, replayed) = DurableQueue::open(&dir, fsync, cfg.queue_max_bytes)
                    .with_context(|| format!("cannot open the write-behind queue in {}", dir.display()))?;
                if !replayed.is_empty() {
                    tracing::info!(keyspace = %cfg.name, records = replayed.len(), "replaying the write-behind queue");
                }
                max_version = max_version.max(replayed.last().map_or(0, |r| r.version));
                let w = Writer::new(cfg.clone(), table.clone(), queue);
                w.ingest(replayed);
                Some(Arc::new(w))
            };
            let loader =
                cfg.read_through.then(|| Loader::new(table, Duration::from_millis(cfg.negative_ttl_ms)));
            spaces.push(Space { cfg: cfg.clone(), writer, loader });
        }
        let read_through = spaces.iter().any(|s| s.loader.is_some());
        let p = Arc::new(Persistence {
            spaces,
            shared: shared.clone(),
            versions: AtomicU64::new(max_version),
            read_through,
            handoff: handoff::Handoff::default(),
        });
        for w in p.spaces.iter().filter_map(|s| s.writer.clone()) {
            tokio::spawn(w.clone().run(shared.clone()));
            tokio::spawn(w.clone().cleanup(shared.clone(), Duration::from_secs(30)));
        }
        server.keyspace.add_listener(p.clone());
        Ok(Some(p))
    }

    /// The backed key space `key` belongs to (the first whose pattern matches).
    fn space_of(&self, key: &[u8]) -> Option<(usize, &Space)> {
        self.spaces.iter().enumerate().find(|(_, s)| glob_match(s.cfg.pattern.as_bytes(), key, false))
    }

    /// The write version counter: at least the version of every change made so far. A
    /// primary stamps its replication batches with it (read after their keys).
    pub fn versions_upto(&self) -> u64 {
        self.versions.load(Ordering::Acquire)
    }

    /// Per written key space, by name: a version up to which all its records are committed
    /// (what a primary reports to its replicas, see `handoff`).
    pub fn committed_marks(&self) -> Vec<(String, u64)> {
        let written = self.spaces.iter().filter_map(|s| Some((&s.cfg.name, s.writer.as_ref()?)));
        written.map(|(name, w)| (name.clone(), w.committed_upto(&self.versions))).collect()
    }

    /// On a replica: notes the keys of written key spaces in a batch `from` sent, stamped
    /// with its version counter `upto` (see `handoff`). Each key comes with whether it was
    /// deleted.
    pub fn note_replicated(&self, from: crate::cluster::NodeId, upto: u64, keys: &[(Vec<u8>, bool)]) {
        let written = keys.iter().filter_map(|(key, deleted)| {
            let (i, space) = self.space_of(key)?;
            space.writer.as_ref().map(|_| (&key[..], i, *deleted))
        });
        self.handoff.note(from, upto, written);
    }

    /// On a replica: `from` reports `marks` (see [`Persistence::committed_marks`]); returns
    /// how many notes they covered.
    pub fn apply_marks(&self, from: crate::cluster::NodeId, marks: &[(String, u64)]) -> usize {
        let space = |name: &str| self.spaces.iter().position(|s| s.cfg.name == name);
        marks.iter().filter_map(|(name, upto)| Some(self.handoff.committed(from, space(name)?, *upto))).sum()
    }

    /// Writes `keys` behind again from this node's copy, with new versions: a primary that
    /// left the grid may not have written them (see `handoff`). A key noted as deleted is
    /// deleted; one absent here but not noted deleted (expired or evicted on this node) is
    /// left alone, since a deletion could drop a row the grid still needs. Returns how many
    /// records were queued.
    pub fn requeue(&self, server: &Server, keys: &[(Box<[u8]>, bool)]) -> usize {
        let now = crate::store::clock::now_ms();
        let mut queued = 0;
        for (key, deleted) in keys {
            let Some((_, space)) = self.space_of(key) else { continue };
            let Some(w) = &space.writer else { continue };
            let mut db = server.keyspace.lock_keys([&key[..]], now);
            let op = match db.peek(key) {
                Some(e) => put_op(e),
                None if *deleted => Op::Delete,
                None => continue,
            };
            w.queue.push(&self.versions, key, crate::store::key_slot(key), op);
            queued += 1;
        }
        self.handoff.requeued.fetch_add(queued as u64, Ordering::Relaxed);
        for w in self.spaces.iter().filter_map(|s| s.writer.as_ref()) {
            w.queue.write_pending();
        }
        queued
    }

    /// On a slot's source, before the keys of `slots` leave for another node: a key another
    /// primary changed, not yet reported in Postgres (a note, see `handoff`), is written
    /// behind from this node's copy first. The target notes this node as the sender, so
    /// this node's report must not cover the key until this node has written it; the
    /// original sender may be gone, or go, before it writes the key itself. Returns how many
    /// records were queued.
    pub fn write_noted_before_leaving(
        &self,
        server: &Server,
        slots: &[u16],
        me: crate::cluster::NodeId,
    ) -> usize {
        let noted = self.handoff.take_slots(slots, me);
        if noted.is_empty() {
            return 0;
        }
        self.requeue(server, &noted)
    }

    /// The key spaces, for inspection.
    pub fn spaces(&self) -> &[Space] {
        &self.spaces
    }

    /// Checked before a write command runs: refuses it when a key it writes belongs to a key
    /// space whose queue is full, or cannot be stored (the table's key is text).
    pub fn admit(&self, spec: &CommandSpec, args: &[Bytes]) -> Result<(), Reply> {
        let Keys::Range { .. } = spec.keys else {
            return Ok(());
        };
        for i in spec.keys.positions(args.len()) {
            let key = &args[i];
            let Some((_, space)) = self.space_of(key) else { continue };
            let Some(w) = &space.writer else { continue };
            if std::str::from_utf8(key).is_err() || key.contains(&0) {
                return Err(Reply::error(format!(
                    "ERR keys of the Postgres-backed key space '{}' must be UTF-8 text without NUL bytes",
                    space.cfg.name
                )));
            }
            let bytes = w.queue.bytes();
            if bytes >= space.cfg.queue_max_bytes {
                return Err(Reply::error(format!(
                    "TRYAGAIN write-behind queue full for key space '{}' ({} of {} bytes; postgres {}); retry later",
                    space.cfg.name,
                    bytes,
                    space.cfg.queue_max_bytes,
                    self.shared.health.name()
                )));
            }
        }
        Ok(())
    }

    /// Runs before a command: loads the keys it names that belong to a read-through key
    /// space and are missing from memory. `Err` is the reply when Postgres is unreachable.
    /// `flags` are the client's cluster flags: in a grid only keys this node serves are loaded.
    pub async fn prepare(
        &self,
        server: &Server,
        now_ms: u64,
        args: &[Bytes],
        flags: crate::cluster::ClientFlags,
    ) -> Result<(), Reply> {
        if !self.read_through {
            return Ok(());
        }
        let Ok(spec) = crate::commands::resolve(args) else {
            return Ok(());
        };
        let Keys::Range { .. } = spec.keys else {
            return Ok(());
        };
        if overwrites(spec, args) {
            return Ok(());
        }
        for i in spec.keys.positions(args.len()) {
            let key = &args[i];
            let Some((_, space)) = self.space_of(key) else { continue };
            let Some(loader) = &space.loader else { continue };
            if !serves(server, key, spec.is_write(), flags) {
                continue;
            }
            if server.keyspace.lock_keys([key], now_ms).exists(key) {
                continue;
            }
            // A write not yet in Postgres is newer than its row: serve that.
            if let Some(op) = space.writer.as_ref().and_then(|w| w.latest(key)) {
                if let Op::Put { kind, value, expires_at_ms } = op {
                    let row = postgres::Loaded { kind, value: value.to_vec(), expires_at_ms };
                    insert_loaded(server, key, &row)?;
                }
                continue;
            }
            if loader.known_absent(key) {
                continue;
            }
            let row = loader.load(&self.shared, key).await.map_err(|e| {
                Reply::error(format!(
                    "TRYAGAIN read-through of key space '{}' failed, the key may exist in Postgres: {e}",
                    space.cfg.name
                ))
            })?;
            let Some(row) = row else { continue };
            if !insert_loaded(server, key, &row)? {
                continue;
            }
            loader.stats.loaded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Clears the write-through ticket before a command runs.
    pub fn begin_command() {
        TICKET.with(|t| t.set(None));
    }

    /// The write-through record the command just run produced, if any.
    pub fn ticket() -> Option<Ticket> {
        TICKET.with(|t| t.take()).map(|(space, version)| Ticket { space, version })
    }

    /// Waits until Postgres committed the write of `ticket`; false if `timeout` passed first.
    pub async fn wait(&self, ticket: Ticket, timeout: Duration) -> bool {
        let Some(w) = &self.spaces[ticket.space].writer else { return true };
        w.queue.write_pending();
        tokio::time::timeout(timeout, w.committed(ticket.version)).await.is_ok()
    }

    /// Puts records queued by the commands just run on disk, before their replies are sent:
    /// written to the segment here (a page-cache write, as Redis writes its AOF), and with
    /// `writebehind-fsync always` awaited until the disk thread has fsynced them.
    pub async fn before_reply(&self) {
        for w in self.spaces.iter().filter_map(|s| s.writer.as_ref()) {
            let target = w.queue.write_for_reply();
            if !w.queue.is_durable(target) {
                w.queue.durable(target).await;
            }
        }
    }

    /// Writes every pending key now, ignoring the write delay, and waits (up to `timeout`)
    /// until the queues are empty. True when they are; either way the write delay applies again
    /// afterwards.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut empty = true;
            for w in self.spaces.iter().filter_map(|s| s.writer.as_ref()) {
                w.queue.write_pending();
                w.pump();
                w.flush_now();
                empty &= w.pending().0 == 0 && !w.queue.has_pending();
            }
            if empty {
                self.spaces.iter().filter_map(|s| s.writer.as_ref()).for_each(|w| w.flush_done());
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                // Back to the write delay: what is left is written as any write is.
                self.spaces.iter().filter_map(|s| s.writer.as_ref()).for_each(|w| w.flush_done());
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers after trying to flush for up to `timeout`; what is left stays in the
    /// durable queue (fsynced) for the next start.
    pub async fn shutdown(&self, timeout: Duration) {
        // With the database down a flush cannot succeed: do not hold the shutdown up.
        let drained = self.shared.health.is_up() && self.flush(timeout).await;
        if !drained && self.spaces.iter().filter_map(|s| s.writer.as_ref()).any(|w| w.pending().0 > 0) {
            tracing::warn!(
                "stopping with writes still queued: they are on disk and replayed at the next start"
            );
        }
        self.shared.stop.cancel();
        for w in self.spaces.iter().filter_map(|s| s.writer.as_ref()) {
            let q = w.queue.clone();
            // The last fsync, on the queue's disk thread.
            let _ = tokio::task::spawn_blocking(move || q.close()).await;
        }
    }

    /// The fields of INFO's persistence section.
    pub fn info(&self, out: &mut String) {
        let h = &self.shared.health;
        let _ = write!(out, "postgres_status:{}\r\n", h.name());
        let _ = write!(out, "postgres_status_changes:{}\r\n", h.changes.load(Ordering::Relaxed));
        let _ = write!(out, "postgres_status_since:{}\r\n", h.since_ms.load(Ordering::Relaxed) / 1000);
        let _ = write!(out, "postgres_last_error:{}\r\n", h.last_error().replace(['\r', '\n'], " "));
        let _ = write!(out, "writebehind_handoff_keys:{}\r\n", self.handoff.len());
        let _ =
            write!(out, "writebehind_handoff_requeued:{}\r\n", self.handoff.requeued.load(Ordering::Relaxed));
        for s in &self.spaces {
            let name = &s.cfg.name;
            let mode = match s.cfg.mode {
                WriteMode::WriteBehind => "write-behind",
                WriteMode::WriteThrough => "write-through",
                WriteMode::None => "none",
            };
            let mut f =
                format!("mode={mode},table={},read_through={}", s.cfg.table, s.cfg.read_through as u8);
            if let Some(w) = &s.writer {
                let (keys, oldest) = w.pending();
                let st = &w.stats;
                let _ = write!(
                    f,
                    ",pending_keys={keys},queue_bytes={},queue_segments={},oldest_pending_ms={},batches={},rows_written={},rows_coalesced={},failures={},dead_letters={},dead_letters_replayed={},disk_errors={},compactions={},compaction_reclaimed_bytes={}",
                    w.queue.bytes(),
                    w.queue.segments(),
                    oldest.as_millis(),
                    st.batches.load(Ordering::Relaxed),
                    st.rows_written.load(Ordering::Relaxed),
                    st.rows_coalesced.load(Ordering::Relaxed),
                    st.failures.load(Ordering::Relaxed),
                    st.dead_letters.load(Ordering::Relaxed),
                    st.dead_letters_replayed.load(Ordering::Relaxed),
                    w.queue.disk_errors.load(Ordering::Relaxed),
                    w.queue.compaction.runs.load(Ordering::Relaxed),
                    w.queue.compaction.bytes_reclaimed.load(Ordering::Relaxed),
                );
            }
            if let Some(l) = &s.loader {
                let st = &l.stats;
                let _ = write!(
                    f,
                    ",rt_queries={},rt_loaded={},rt_negative_hits={},rt_errors={}",
                    st.queries.load(Ordering::Relaxed),
                    st.loaded.load(Ordering::Relaxed),
                    st.negative_hits.load(Ordering::Relaxed),
                    st.errors.load(Ordering::Relaxed),
                );
            }
            let _ = write!(out, "keyspace_{name}:{f}\r\n");
        }
    }
}

/// Whether this node runs a command on `key` rather than refusing it (fenced: cut off, or
/// restarted and not placed again) or redirecting it (MOVED: another node's slot). The router
/// decides that after read-through has run, so without this check every request for a backed
/// key sent to the wrong member, or to any member while a restarted grid is coming back, cost
/// Postgres a query, and left a copy in a slot this node does not serve.
fn serves(server: &Server, key: &[u8], write: bool, flags: crate::cluster::ClientFlags) -> bool {
    use crate::cluster::router::{route, Route};
    let Some(cluster) = server.cluster.get() else { return true };
    if cluster.fenced() {
        return false;
    }
    let view = cluster.view();
    !matches!(route(&view.map, view.me, std::iter::once(key), write, flags), Route::Redirect(_))
}

/// The write-behind record of a key's current entry.
fn put_op(e: &crate::store::keyspace::Entry) -> Op {
    let (kind, value) = encode_value_shared(&e.value);
    Op::Put { kind, value, expires_at_ms: e.expire_at() }
}

/// Puts a loaded value into memory without writing it back, unless the key appeared
/// meanwhile or has expired. Ok(true) when inserted.
fn insert_loaded(server: &Server, key: &[u8], row: &postgres::Loaded) -> Result<bool, Reply> {
    let limits = server.keyspace.settings.hash_limits();
    let Some(value) = record::decode_value(row.kind, &row.value, limits) else {
        return Err(Reply::error("ERR read-through: the stored value is malformed"));
    };
    let now = crate::store::clock::now_ms();
    if row.expires_at_ms.is_some_and(|e| e <= now) {
        return Ok(false);
    }
    let mut db = server.keyspace.lock_keys([key], now);
    if db.exists(key) {
        return Ok(false);
    }
    loading(|| db.set(key, value, row.expires_at_ms.unwrap_or(0)));
    Ok(true)
}

/// Runs `f`, whose writes put into the keyspace what Postgres already has (a read-through
/// load, keys arriving with a migrated slot): write-behind does not write them back.
pub fn loading<T>(f: impl FnOnce() -> T) -> T {
    LOADING.with(|l| l.set(true));
    let r = f();
    LOADING.with(|l| l.set(false));
    r
}

/// Whether the command replaces its keys whatever they held (plain SET, SETEX, PSETEX, MSET):
/// it needs no read-through load, so such writes keep working while Postgres is down.
fn overwrites(spec: &CommandSpec, args: &[Bytes]) -> bool {
    match spec.name {
        "setex" | "psetex" | "mset" => true,
        "set" => args[3..].iter().all(|a| {
            let a = a.to_ascii_lowercase();
            !matches!(a.as_slice(), b"nx" | b"xx" | b"get" | b"keepttl")
        }),
        _ => false,
    }
}

impl ChangeListener for Persistence {
    fn changed(&self, change: &Change<'_>) {
        if matches!(change.cause, ChangeCause::Evicted | ChangeCause::Migrated) || LOADING.with(|l| l.get()) {
            // Eviction frees memory and a moved key lives on elsewhere: the row stays; a
            // loaded value came from the row.
            return;
        }
        let Some((idx, space)) = self.space_of(change.key) else { return };
        if let Some(l) = &space.loader {
            l.forget_absent(change.key);
        }
        let Some(w) = &space.writer else { return };
        let op = change.entry.map_or(Op::Delete, put_op);
        let version = w.queue.push(&self.versions, change.key, change.slot, op);
        if space.cfg.mode == WriteMode::WriteThrough && change.cause == ChangeCause::Command {
            TICKET.with(|t| {
                let v = t.get().map_or(version, |(_, v)| v.max(version));
                t.set(Some((idx, v)));
            });
        }
    }

    fn flushed(&self, _now_ms: u64) {
        // FLUSHALL empties the cache, never the database.
    }
}

/// INFO persistence hook: appends the write-behind fields when persistence is configured
/// (nothing otherwise, so a plain node's INFO stays as Redis's).
pub fn info_section(server: &Server, out: &mut String) {
    if let Some(p) = server.persistence.get() {
        p.info(out);
    }
}
