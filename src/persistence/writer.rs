//! The writer of one key space: coalesces queued records per key for the write delay, sends
//! due keys in batches (several in flight, at a bounded row rate), retries while the
//! database is down, splits batches Postgres rejects and dead-letters the bad record.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::Client;

use super::config::{KeyspaceConfig, WriteMode};
use super::postgres::{self, PgError};
use super::queue::DurableQueue;
use super::record::{Op, Record, SharedBytes};
use super::Shared;

/// Counters INFO reports for one key space.
#[derive(Default)]
pub struct WriterStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Rows committed (upserted or deleted).
    pub rows_written: AtomicU64,
    /// Records replaced by a newer record of their key before being written.
    pub rows_coalesced: AtomicU64,
    /// Batch attempts that failed (database down or content rejected).
    pub failures: AtomicU64,
    /// Records moved to the dead-letter table.
    pub dead_letters: AtomicU64,
    /// Dead letters replayed by an operator (written or found superseded).
    pub dead_letters_replayed: AtomicU64,
}

struct Pend {
    rec: Record,
    /// Position in [`Coalescer::ring`].
    seq: u64,
    since: Instant,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Coalescer {
    map: FastMap<SharedBytes, Pend>,
    /// Keys in the order they became pending, with the time they are due.
    order: VecDeque<(Instant, SharedBytes)>,
    /// Keys with a batch in flight: their next record waits, so one key's writes never race.
    /// Keys with a batch in flight, and what that batch writes (read-through must not load
    /// the older row meanwhile).
    inflight: FastMap<SharedBytes, Op>,
    /// Every ingested record in version order, with whether it is done (committed or
    /// superseded); entry `i` has sequence number `ring_base + i`. Done entries are popped
    /// from the front, so the front is the oldest record not yet committed.
    ring: VecDeque<(u64, bool)>,
    ring_base: u64,
    max_ingested: u64,
}

impl Coalescer {
    fn push(&mut self, version: u64) -> u64 {
        self.ring.push_back((version, false));
        self.ring_base + self.ring.len() as u64 - 1
    }

    fn done(&mut self, seq: u64) {
        if let Some(e) = seq.checked_sub(self.ring_base).and_then(|i| self.ring.get_mut(i as usize)) {
            e.1 = true;
        }
        while self.ring.front().is_some_and(|e| e.1) {
            self.ring.pop_front();
            self.ring_base += 1;
        }
    }

    fn watermark(&self) -> u64 {
        self.ring.front().map_or(self.max_ingested, |(v, _)| v - 1)
    }
}

/// A Postgres table and whether its schema has been made sure of.
pub struct Table {
    /// The table name.
    pub name: String,
    ready: AtomicBool,
}

impl Table {
    /// `name`, schema not yet checked.
    pub fn new(name: String) -> Table {
        Table { name, ready: AtomicBool::new(false) }
    }

    /// Makes the next connection check the schema again (after an error that may mean the
    /// table was dropped).
    pub fn recheck(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// A connection, creating the schema on first use.
    pub async fn client(&self, shared: &Shared) -> Result<Client, PgError> {
        let c = shared.pool.get().await?;
        if !self.ready.load(Ordering::Acquire) {
            postgres::ensure_schema(&c, &self.name).await?;
            self.ready.store(true, Ordering::Release);
        }
        Ok(c)
    }
}

/// The writer of one key space.
pub struct Writer {
    /// Its configuration.
    pub cfg: KeyspaceConfig,
    /// Its table.
    pub table: Arc<Table>,
    /// Its durable queue.
    pub queue: Arc<DurableQueue>,
    /// Counters.
    pub stats: WriterStats,
    state: Mutex<Coalescer>,
    committed: watch::Sender<u64>,
    wake: Notify,
    flush_all: AtomicBool,
}

/// A delivered batch: (sequence number, key) of each record.
struct Done(Vec<(u64, SharedBytes)>);

impl Writer {
    /// A writer for `cfg` fed by `queue`.
    pub fn new(cfg: KeyspaceConfig, table: Arc<Table>, queue: Arc<DurableQueue>) -> Writer {
        Writer {
            cfg,
            table,
            queue,
            stats: WriterStats::default(),
            state: Mutex::new(Coalescer::default()),
            committed: watch::channel(0).0,
            wake: Notify::new(),
            flush_all: AtomicBool::new(false),
        }
    }

    fn delay(&self) -> Duration {
        if self.cfg.mode == WriteMode::WriteThrough {
            Duration::ZERO
        } else {
            Duration::from_millis(self.cfg.write_delay_ms)
        }
    }

    /// Moves records written to disk into the coalescing map. The queue is read under the
    /// map's lock, so records of one key are taken in version order whoever calls this.
    pub fn pump(&self) {
        let mut s = self.state.lock();
        let records = self.queue.take_ready();
        self.ingest_locked(&mut s, records);
    }

    /// Takes records (in version order) into the coalescing map.
    pub fn ingest(&self, records: Vec<Record>) {
        let mut s = self.state.lock();
        self.ingest_locked(&mut s, records);
    }

    fn ingest_locked(&self, s: &mut Coalescer, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let now = Instant::now();
        let due = now + self.delay();
        let mut coalesced = 0;
        for r in records {
            s.max_ingested = s.max_ingested.max(r.version);
            let seq = s.push(r.version);
            match s.map.entry(r.key.clone()) {
                Entry::Occupied(mut o) => {
                    let p = o.get_mut();
                    let old = std::mem::replace(&mut p.seq, seq);
                    p.rec = r;
                    s.done(old);
                    coalesced += 1;
                }
                Entry::Vacant(v) => {
                    let key = v.key().clone();
                    v.insert(Pend { rec: r, seq, since: now });
                    s.order.push_back((due, key));
                }
            }
        }
        self.stats.rows_coalesced.fetch_add(coalesced, Ordering::Relaxed);
        if s.ring.is_empty() {
            self.committed.send_replace(s.watermark());
        }
    }

    fn take_due(&self, now: Instant, limit: usize) -> Vec<(u64, Record)> {
        let all = self.flush_all.load(Ordering::Relaxed);
        let mut s = self.state.lock();
        let mut batch = Vec::new();
        let mut deferred = Vec::new();
        while batch.len() < limit {
            match s.order.front() {
                Some((due, _)) if all || *due <= now => {}
                _ => break,
            }
            let (due, key) = s.order.pop_front().expect("checked");
            if s.inflight.contains_key(&key) {
                deferred.push((due, key));
                continue;
            }
            if let Some(p) = s.map.remove(&key) {
                s.inflight.insert(key, p.rec.op.clone());
                batch.push((p.seq, p.rec));
            }
        }
        for d in deferred.into_iter().rev() {
            s.order.push_front(d);
        }
        batch
    }

    fn finish(&self, batch: &[(u64, SharedBytes)]) {
        let w = {
            let mut s = self.state.lock();
            for (seq, key) in batch {
                s.done(*seq);
                s.inflight.remove(key);
            }
            s.watermark()
        };
        self.committed.send_replace(w);
        self.queue.release(w);
    }

    /// The newest not-yet-committed write of `key`, if any: newer than its row in Postgres,
    /// so read-through serves it instead of loading the row.
    pub fn latest(&self, key: &[u8]) -> Option<Op> {
        self.queue.write_pending();
        self.pump();
        let s = self.state.lock();
        s.map.get(key).map(|p| p.rec.op.clone()).or_else(|| s.inflight.get(key).cloned())
    }

    /// A version up to which every record of this key space is committed (or dead-lettered):
    /// the oldest uncommitted record's version less one or, when nothing is pushed and not yet
    /// committed, `versions` as it was on entry (every later record gets a higher version).
    /// What a primary tells its replicas (see `handoff`).
    pub fn committed_upto(&self, versions: &AtomicU64) -> u64 {
        let now = versions.load(Ordering::Acquire);
        // Records whose versions are at most `now` are all counted in `pushed` after this.
        let pushed = self.queue.pushed_settled();
        // `taken` and the ring change together, under the state lock (`pump`).
        let s = self.state.lock();
        if s.ring.is_empty() && self.queue.taken() == pushed {
            now
        } else {
            s.watermark()
        }
    }

    /// Keys waiting or in flight, and the age of the oldest, for INFO.
    pub fn pending(&self) -> (usize, Duration) {
        let s = self.state.lock();
        let oldest = s.order.front().and_then(|(_, k)| s.map.get(k)).map(|p| p.since.elapsed());
        (s.map.len() + s.inflight.len(), oldest.unwrap_or_default())
    }

    /// Waits until every record up to `version` is committed (or dead-lettered).
    pub async fn committed(&self, version: u64) {
        self.wake.notify_one();
        let mut rx = self.committed.subscribe();
        let _ = rx.wait_for(|w| *w >= version).await;
    }

    /// Makes every pending key due now (shutdown, tests).
    pub fn flush_now(&self) {
        self.flush_all.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Goes back to honouring the write delay after [`Writer::flush_now`].
    pub fn flush_done(&self) {
        self.flush_all.store(false, Ordering::Relaxed);
    }

    /// The writer's loop; returns when `shared.stop` fires.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let tick = Duration::from_millis((self.cfg.write_delay_ms / 4).clamp(5, 50));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut inflight = 0usize;
        let mut next_allowed = Instant::now();
        let row_cost = Duration::from_secs_f64(1.0 / self.cfg.max_rows_per_sec as f64);
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
                _ = self.wake.notified() => {}
                Some(Done(batch)) = done_rx.recv() => {
                    inflight -= 1;
                    self.finish(&batch);
                }
            }
            while let Ok(Done(batch)) = done_rx.try_recv() {
                inflight -= 1;
                self.finish(&batch);
            }
            self.queue.write_pending();
            self.pump();
            let now = Instant::now();
            while inflight < self.cfg.max_inflight_batches && now >= next_allowed {
                let batch = self.take_due(now, self.cfg.batch_size);
                if batch.is_empty() {
                    break;
                }
                next_allowed = next_allowed.max(now) + row_cost * batch.len() as u32;
                inflight += 1;
                let (me, shared, tx) = (self.clone(), shared.clone(), done_tx.clone());
                let (ids, batch): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|(seq, r)| ((seq, r.key.clone()), r)).unzip();
                tokio::spawn(async move {
                    me.deliver(&shared, batch).await;
                    let _ = tx.send(Done(ids));
                });
            }
        }
    }

    /// Writes `batch` until every record is committed or dead-lettered. A database that is
    /// down is waited out; content Postgres rejects is narrowed down by splitting.
    async fn deliver(&self, shared: &Shared, batch: Vec<Record>) {
        let mut work = vec![batch];
        let mut down_attempts = 0u32;
        while let Some(b) = work.pop() {
            let mut content_attempts = 0;
            loop {
                if shared.stop.is_cancelled() {
                    return;
                }
                let result = match self.table.client(shared).await {
                    Ok(mut c) => {
                        let r = postgres::write_batch(&mut c, &self.table.name, &b).await;
                        if !matches!(r, Err(PgError::Down(_))) {
                            shared.pool.put(c);
                        }
                        r
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        shared.health.mark_up();
                        down_attempts = 0;
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                        self.stats.rows_written.fetch_add(b.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(PgError::Down(e)) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.table.recheck();
                        shared.health.mark_down(&e);
                        tokio::time::sleep(super::health::backoff(down_attempts)).await;
                        down_attempts += 1;
                    }
                    Err(PgError::Content(e)) => {
                        shared.health.mark_up();
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        if b.len() > 1 {
                            let mut first = b;
                            let second = first.split_off(first.len() / 2);
                            work.push(second);
                            work.push(first);
                            break;
                        }
                        content_attempts += 1;
                        if content_attempts < 3 {
                            tokio::time::sleep(Duration::from_millis(20 * content_attempts)).await;
                            continue;
                        }
                        self.dead_letter(shared, &b[0], &e).await;
                        break;
                    }
                }
            }
        }
    }

    async fn dead_letter(&self, shared: &Shared, r: &Record, error: &str) {
        let mut attempt = 0;
        loop {
            if shared.stop.is_cancelled() {
                return;
            }
            let result = match self.table.client(shared).await {
                Ok(c) => {
                    let r = postgres::dead_letter(&c, &self.table.name, r, error).await;
                    shared.pool.put(c);
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %String::from_utf8_lossy(&r.key), table = %self.table.name, error, "write moved to the dead-letter table");
                    return;
                }
                Err(e) => {
                    if let PgError::Down(e) = &e {
                        shared.health.mark_down(e);
                    } else {
                        tracing::error!(error = %e, "cannot write a dead letter; retrying");
                    }
                    tokio::time::sleep(super::health::backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Deletes rows whose TTL passed, every `period`, while the node runs.
    pub async fn cleanup(self: Arc<Self>, shared: Arc<Shared>, period: Duration) {
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if let Ok(c) = self.table.client(&shared).await {
                if let Ok(n) = postgres::delete_expired(&c, &self.table.name).await {
                    if n > 0 {
                        tracing::debug!(rows = n, table = %self.table.name, "deleted expired rows");
                    }
                }
                shared.pool.put(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::config::FsyncPolicy;
    use crate::persistence::record::Kind;

    fn rec(version: u64, key: &str) -> Record {
        let op =
            Op::Put { kind: Kind::Str, value: version.to_string().into_bytes().into(), expires_at_ms: None };
        Record { version, key: SharedBytes::from(key.as_bytes()), slot: 0, op }
    }

    #[test]
    fn the_last_write_of_a_key_wins_and_a_key_is_never_in_flight_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::No, 1 << 30).unwrap();
        let cfg = KeyspaceConfig { write_delay_ms: 0, ..KeyspaceConfig::default() };
        let w = Writer::new(cfg, Arc::new(Table::new("t".into())), q);
        w.ingest(vec![rec(1, "a"), rec(2, "b"), rec(3, "a")]);
        let now = Instant::now() + Duration::from_millis(1);
        let batch = w.take_due(now, 10);
        assert_eq!(batch.iter().map(|(_, r)| r.version).collect::<Vec<_>>(), vec![3, 2]);
        let seq_of = |v: u64| batch.iter().find(|(_, r)| r.version == v).unwrap().0;
        let (a3, b2) = (seq_of(3), seq_of(2));
        assert_eq!(w.stats.rows_coalesced.load(Ordering::Relaxed), 1);
        // A newer write of `a` waits while `a` is in flight.
        w.ingest(vec![rec(4, "a")]);
        assert!(w.take_due(now, 10).is_empty());
        w.finish(&[(a3, SharedBytes::from(&b"a"[..]))]);
        assert_eq!(*w.committed.borrow(), 1, "version 2 is still in flight");
        w.finish(&[(b2, SharedBytes::from(&b"b"[..]))]);
        assert_eq!(*w.committed.borrow(), 3);
        let next = w.take_due(now, 10);
        assert_eq!(next.iter().map(|(_, r)| r.version).collect::<Vec<_>>(), vec![4]);
        w.finish(&[(next[0].0, SharedBytes::from(&b"a"[..]))]);
        assert_eq!(*w.committed.borrow(), 4);
    }
}
