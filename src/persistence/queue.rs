//! The durable write-behind queue of one key space: append-only segment files on local disk.
//!
//! Records are framed into a memory buffer under the shard lock (no I/O there), written to
//! the current segment before the replies of the commands that made them are sent (as Redis
//! writes its AOF before replying), and fsynced by the policy. Versions are assigned under the
//! buffer's lock, so versions grow along the file. A segment is deleted once every record in it
//! has been committed to Postgres (or superseded by a committed newer record of its key).
//!
//! Blocking disk work runs on one thread per queue, never on the runtime: every fsync (with
//! `always` the reply awaits it, and replies waiting at the same time share one fsync), the
//! final fsync of a full segment, deleting committed segments, and compaction. While Postgres
//! is down, sealed segments pile up although hot keys have one record each that matters:
//! compaction rewrites them keeping only the newest record per key not yet committed, into a
//! temporary file that is fsynced and renamed over the newest input (the directory fsynced)
//! before the other inputs are deleted. A crash at any point leaves either the inputs, or the
//! inputs plus the compacted file after them; replay in file order then still ends with each
//! key's newest record, so nothing is lost.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::config::FsyncPolicy;
use super::record::{frame, unframe, Op, Record, SharedBytes};

/// Largest segment: a segment is sealed and a new one started beyond this size (or beyond an
/// eighth of the queue's bound, so compaction has segments to work on under a small bound).
const MAX_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 16 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    records: Vec<Record>,
}

struct Segment {
    id: u64,
    path: PathBuf,
    len: u64,
    max_version: u64,
}

struct Files {
    current: Arc<File>,
    current_seg: Segment,
    sealed: VecDeque<Segment>,
    next_id: u64,
    /// Size of the sealed segments after the last compaction: the next one waits until they
    /// have grown well past it, so keys that do not coalesce are not rewritten over and over.
    compacted_len: u64,
}

/// Work for the disk thread.
#[derive(Default)]
struct Jobs {
    /// A reply waits for an fsync (`always`).
    sync: bool,
    /// Sealed segments whose last writes may not be on disk yet.
    seal: Vec<Arc<File>>,
    /// Committed segments to delete.
    delete: Vec<PathBuf>,
    compact: bool,
    stop: bool,
}

impl Jobs {
    fn any(&self) -> bool {
        self.sync || !self.seal.is_empty() || !self.delete.is_empty() || self.compact || self.stop
    }
}

#[derive(Default)]
struct Disk {
    jobs: Mutex<Jobs>,
    wake: Condvar,
}

/// Compaction figures, for INFO and the log.
#[derive(Default)]
pub struct CompactionStats {
    /// Compactions finished.
    pub runs: AtomicU64,
    /// Bytes of segments removed by compaction.
    pub bytes_reclaimed: AtomicU64,
    /// Records dropped because a newer record of their key (or a commit) made them useless.
    pub records_dropped: AtomicU64,
}

/// One key space's queue on disk.
pub struct DurableQueue {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    max_bytes: u64,
    pending: Mutex<Pending>,
    /// Records pushed so far (under `pending`'s lock).
    pushed: AtomicU64,
    files: Mutex<Files>,
    /// Records written to the segment files so far (under `files`' lock).
    written: AtomicU64,
    /// Records known to be fsynced (all of them when the policy is `no`).
    synced: watch::Sender<u64>,
    /// Records written to disk, waiting for the writer to pick them up.
    ready: Mutex<Vec<Record>>,
    /// Records the writer has taken from `ready` so far.
    taken: AtomicU64,
    /// Bytes of live segments plus the unwritten buffer: what the bound applies to.
    bytes: AtomicU64,
    /// Every record up to this version is committed (or dead-lettered).
    committed: AtomicU64,
    disk: Arc<Disk>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records appended since start (or replayed).
    pub appended: AtomicU64,
    /// Write errors of the disk (the node keeps serving; INFO shows it).
    pub disk_errors: AtomicU64,
    /// Compaction figures.
    pub compaction: CompactionStats,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("segment-{id:020}.log"))
}

fn compacting_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("segment-{id:020}.compacting"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DurableQueue {
    /// Opens the queue in `dir` (bounded to `max_bytes`, which sets the segment size),
    /// returning it and the records left from a previous run, in order. New records go to a
    /// fresh segment. Starts the queue's disk thread.
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
        max_bytes: u64,
    ) -> std::io::Result<(Arc<DurableQueue>, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let Ok(e) = e else { continue };
            let Ok(name) = e.file_name().into_string() else { continue };
            if name.ends_with(".compacting") {
                // A compaction that did not finish: its inputs are all still there.
                std::fs::remove_file(e.path())?;
                continue;
            }
            if let Some(id) = name
                .strip_prefix("segment-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut replayed = Vec::new();
        let mut sealed = VecDeque::new();
        let mut total = 0;
        for &id in &ids {
            let path = seg_path(dir, id);
            let buf = std::fs::read(&path)?;
            let mut at = 0;
            let mut max_version = 0;
            while let Some((r, used)) = unframe(&buf[at..]) {
                at += used;
                max_version = max_version.max(r.version);
                replayed.push(r);
            }
            if at < buf.len() {
                tracing::warn!(segment = %path.display(), valid = at, size = buf.len(), "ignoring a torn tail of a write-behind segment");
            }
            total += buf.len() as u64;
            sealed.push_back(Segment { id, path, len: buf.len() as u64, max_version });
        }
        let next = ids.last().map_or(1, |l| l + 1);
        let path = seg_path(dir, next);
        let current = OpenOptions::new().create(true).append(true).open(&path)?;
        let files = Files {
            current: Arc::new(current),
            current_seg: Segment { id: next, path, len: 0, max_version: 0 },
            sealed,
            next_id: next + 1,
            compacted_len: 0,
        };
        let q = Arc::new(DurableQueue {
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            max_bytes,
            pending: Mutex::new(Pending::default()),
            pushed: AtomicU64::new(0),
            files: Mutex::new(files),
            written: AtomicU64::new(0),
            synced: watch::channel(0).0,
            ready: Mutex::new(Vec::new()),
            taken: AtomicU64::new(0),
            bytes: AtomicU64::new(total),
            committed: AtomicU64::new(0),
            disk: Arc::new(Disk::default()),
            thread: Mutex::new(None),
            appended: AtomicU64::new(replayed.len() as u64),
            disk_errors: AtomicU64::new(0),
            compaction: CompactionStats::default(),
        });
        {
            let mut files = q.files.lock();
            q.maybe_compact(&mut files);
        }
        let (weak, disk) = (Arc::downgrade(&q), q.disk.clone());
        let handle = std::thread::Builder::new()
            .name("writebehind-disk".into())
            .spawn(move || disk_thread(weak, disk))?;
        *q.thread.lock() = Some(handle);
        Ok((q, replayed))
    }

    /// Appends a record (in memory; on disk at the next [`DurableQueue::write_pending`]). Its
    /// version is taken from `versions` here, under the buffer's lock, so the file is in
    /// version order. Called under a shard lock: no I/O. Returns the version.
    pub fn push(&self, versions: &AtomicU64, key: &[u8], slot: u16, op: Op) -> u64 {
        let mut p = self.pending.lock();
        let version = next_version(versions, crate::store::clock::now_us());
        let record = Record { version, key: SharedBytes::from(key), slot, op };
        let before = p.bytes.len();
        frame(&record, &mut p.bytes);
        self.bytes.fetch_add((p.bytes.len() - before) as u64, Ordering::Relaxed);
        p.records.push(record);
        self.pushed.fetch_add(1, Ordering::Release);
        version
    }

    /// Whether records wait to be written to disk.
    pub fn has_pending(&self) -> bool {
        self.written.load(Ordering::Acquire) < self.pushed.load(Ordering::Acquire)
    }

    /// Writes the buffered records to the current segment and hands them to the writer.
    /// fsyncs are the disk thread's (see [`DurableQueue::durable`]).
    pub fn write_pending(&self) {
        if !self.has_pending() {
            return;
        }
        let mut files = self.files.lock();
        let Pending { bytes, records } = std::mem::take(&mut *self.pending.lock());
        if records.is_empty() {
            return;
        }
        if let Err(e) = (&*files.current).write_all(&bytes) {
            // The records stay in memory and still reach Postgres; only a crash would lose them.
            self.disk_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the write-behind queue");
        }
        files.current_seg.len += bytes.len() as u64;
        files.current_seg.max_version = records.last().map_or(0, |r| r.version);
        self.written.fetch_add(records.len() as u64, Ordering::Release);
        if self.fsync == FsyncPolicy::No {
            self.synced.send_replace(self.written.load(Ordering::Acquire));
        }
        if files.current_seg.len >= self.segment_bytes {
            if let Err(e) = self.rotate(&mut files) {
                self.disk_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot start a new write-behind segment");
            }
        }
        self.ready.lock().extend(records);
    }

    /// Called before replies are sent: writes every record pushed so far (by this connection
    /// or any other) to the segment, and returns how many records must be durable before the
    /// replies may go (see [`DurableQueue::durable`]).
    pub fn write_for_reply(&self) -> u64 {
        let target = self.pushed.load(Ordering::Acquire);
        if self.written.load(Ordering::Acquire) < target {
            // Another connection may be writing our records right now: the lock waits for it.
            self.write_pending();
        }
        target
    }

    /// Whether the first `target` records are durable as the fsync policy promises (with
    /// `always`: fsynced; otherwise: written).
    pub fn is_durable(&self, target: u64) -> bool {
        self.fsync != FsyncPolicy::Always || *self.synced.borrow() >= target
    }

    /// Waits until the first `target` records are durable: with `always`, the disk thread
    /// fsyncs (one fsync for every reply waiting at that moment).
    pub async fn durable(&self, target: u64) {
        if self.is_durable(target) {
            return;
        }
        let mut rx = self.synced.subscribe();
        self.request(|j| j.sync = true);
        let _ = rx.wait_for(|s| *s >= target).await;
    }

    fn request(&self, f: impl FnOnce(&mut Jobs)) {
        f(&mut self.disk.jobs.lock());
        self.disk.wake.notify_one();
    }

    fn rotate(&self, files: &mut Files) -> std::io::Result<()> {
        let id = files.next_id;
        let path = seg_path(&self.dir, id);
        let new = OpenOptions::new().create(true).append(true).open(&path)?;
        let old = std::mem::replace(&mut files.current, Arc::new(new));
        files.next_id += 1;
        let seg = std::mem::replace(&mut files.current_seg, Segment { id, path, len: 0, max_version: 0 });
        files.sealed.push_back(seg);
        if self.fsync != FsyncPolicy::No {
            // Its last writes reach the disk on the disk thread, not here.
            self.request(|j| j.seal.push(old));
        }
        self.maybe_compact(files);
        Ok(())
    }

    /// Asks the disk thread to compact when the sealed segments are worth it.
    fn maybe_compact(&self, files: &mut Files) {
        let sealed: u64 = files.sealed.iter().map(|s| s.len).sum();
        // Not while Postgres keeps up (a few sealed segments are normal then): only once the
        // queue holds a quarter of its bound.
        let worth = (3 * self.segment_bytes).max(2 * files.compacted_len).max(self.max_bytes / 4);
        if files.sealed.len() >= 2 && sealed >= worth {
            self.request(|j| j.compact = true);
        }
    }

    /// Takes the records written to disk since the last call.
    pub fn take_ready(&self) -> Vec<Record> {
        let records = std::mem::take(&mut *self.ready.lock());
        self.taken.fetch_add(records.len() as u64, Ordering::Release);
        records
    }

    /// Records pushed so far, once any push under way has finished: every record whose
    /// version was taken before this call is counted.
    pub fn pushed_settled(&self) -> u64 {
        drop(self.pending.lock());
        self.pushed.load(Ordering::Acquire)
    }

    /// Records the writer has taken so far (see [`DurableQueue::take_ready`]).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Deletes (on the disk thread) segments all of whose records have versions `<= committed`.
    pub fn release(&self, committed: u64) {
        self.committed.fetch_max(committed, Ordering::Relaxed);
        let mut files = self.files.lock();
        if files.current_seg.len > 0 && files.current_seg.max_version <= committed && !self.has_pending() {
            if let Err(e) = self.rotate(&mut files) {
                tracing::error!(error = %e, "cannot start a new write-behind segment");
            }
        }
        let mut delete = Vec::new();
        while files.sealed.front().is_some_and(|s| s.max_version <= committed) {
            let s = files.sealed.pop_front().expect("checked");
            self.bytes.fetch_sub(s.len, Ordering::Relaxed);
            delete.push(s.path);
        }
        if files.sealed.is_empty() {
            files.compacted_len = 0;
        }
        drop(files);
        if !delete.is_empty() {
            self.request(|j| j.delete.extend(delete));
        }
    }

    /// One round of the disk thread's work; false once the queue is stopping.
    fn disk_round(&self, tick: bool) -> bool {
        let (jobs, current, target) = {
            // Taken together under the files lock: every record counted in `target` is in
            // `current` or in a sealed segment of `jobs.seal`, or was synced before.
            let files = self.files.lock();
            let jobs = std::mem::take(&mut *self.disk.jobs.lock());
            (jobs, files.current.clone(), self.written.load(Ordering::Acquire))
        };
        for path in &jobs.delete {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    self.disk_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, segment = %path.display(), "cannot delete a committed write-behind segment");
                }
            }
        }
        if self.fsync != FsyncPolicy::No {
            for f in &jobs.seal {
                self.fsync_file(f);
            }
            let want = jobs.sync || jobs.stop || (tick && self.fsync == FsyncPolicy::EverySec);
            if want && target > *self.synced.borrow() {
                self.fsync_file(&current);
                self.synced.send_replace(target);
            }
        }
        if jobs.compact && !jobs.stop {
            if let Err(e) = self.compact() {
                self.disk_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, dir = %self.dir.display(), "write-behind compaction failed; the segments are kept as they are");
            }
        }
        !jobs.stop
    }

    fn fsync_file(&self, f: &File) {
        if let Err(e) = f.sync_data() {
            self.disk_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot fsync the write-behind queue");
        }
    }

    /// Rewrites the sealed segments keeping only the newest record of each key that is not
    /// committed yet (see the module comment for why a crash at any point loses nothing).
    fn compact(&self) -> std::io::Result<()> {
        let started = Instant::now();
        let (inputs, committed): (Vec<(u64, PathBuf, u64)>, u64) = {
            let files = self.files.lock();
            let inputs = files.sealed.iter().map(|s| (s.id, s.path.clone(), s.len)).collect();
            (inputs, self.committed.load(Ordering::Relaxed))
        };
        if inputs.len() < 2 {
            return Ok(());
        }
        let in_bytes: u64 = inputs.iter().map(|i| i.2).sum();
        tracing::info!(keyspace_dir = %self.dir.display(), segments = inputs.len(), bytes = in_bytes, "compacting the write-behind queue");
        let mut newest: HashMap<SharedBytes, (u64, Vec<u8>), foldhash::fast::RandomState> =
            HashMap::default();
        let mut records = 0u64;
        for (_, path, len) in &inputs {
            let buf = std::fs::read(path)?;
            let mut at = 0;
            // Only what the queue counted: a torn tail stays out.
            let end = (*len as usize).min(buf.len());
            while let Some((r, used)) = unframe(&buf[at..end]) {
                records += 1;
                if r.version > committed {
                    newest.insert(r.key, (r.version, buf[at..at + used].to_vec()));
                }
                at += used;
            }
        }
        let mut kept: Vec<(u64, Vec<u8>)> = newest.into_values().collect();
        kept.sort_unstable_by_key(|k| k.0);
        let last_id = inputs.last().expect("two inputs").0;
        let tmp = compacting_path(&self.dir, last_id);
        let mut out_len = 0u64;
        {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            for (_, bytes) in &kept {
                f.write_all(bytes)?;
                out_len += bytes.len() as u64;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        let max_version = kept.last().map_or(0, |k| k.0);
        {
            let mut files = self.files.lock();
            let unchanged = files.sealed.len() >= inputs.len()
                && files.sealed.iter().zip(&inputs).all(|(s, i)| s.id == i.0);
            if !unchanged {
                // Segments were committed meanwhile: the next round starts over.
                drop(files);
                std::fs::remove_file(&tmp)?;
                return Ok(());
            }
            std::fs::rename(&tmp, seg_path(&self.dir, last_id))?;
            for _ in 0..inputs.len() {
                files.sealed.pop_front();
            }
            files.sealed.push_front(Segment {
                id: last_id,
                path: seg_path(&self.dir, last_id),
                len: out_len,
                max_version,
            });
            files.compacted_len = files.sealed.iter().map(|s| s.len).sum();
            self.bytes.fetch_sub(in_bytes - out_len, Ordering::Relaxed);
        }
        // The rename is on disk before any input disappears.
        sync_dir(&self.dir)?;
        for (id, path, _) in &inputs {
            if *id != last_id {
                std::fs::remove_file(path)?;
            }
        }
        let c = &self.compaction;
        c.runs.fetch_add(1, Ordering::Relaxed);
        c.bytes_reclaimed.fetch_add(in_bytes - out_len, Ordering::Relaxed);
        c.records_dropped.fetch_add(records - kept.len() as u64, Ordering::Relaxed);
        tracing::info!(
            keyspace_dir = %self.dir.display(),
            segments = inputs.len(),
            records_in = records,
            records_kept = kept.len(),
            bytes_in = in_bytes,
            bytes_out = out_len,
            ms = started.elapsed().as_millis() as u64,
            "compacted the write-behind queue"
        );
        Ok(())
    }

    /// Stops the disk thread after a last fsync of everything written (shutdown). Blocking.
    pub fn close(&self) {
        self.write_pending();
        self.request(|j| j.stop = true);
        if let Some(t) = self.thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Bytes the queue holds (live segments and the unwritten buffer).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of segment files.
    pub fn segments(&self) -> usize {
        let f = self.files.lock();
        f.sealed.len() + 1
    }
}

impl Drop for DurableQueue {
    fn drop(&mut self) {
        self.disk.jobs.lock().stop = true;
        self.disk.wake.notify_one();
    }
}

/// The disk thread of one queue: waits for work (or a second, for `everysec`), and stops
/// when the queue is closed or dropped.
fn disk_thread(queue: Weak<DurableQueue>, disk: Arc<Disk>) {
    loop {
        let tick = {
            let mut jobs = disk.jobs.lock();
            if jobs.any() {
                false
            } else {
                disk.wake.wait_for(&mut jobs, Duration::from_secs(1)).timed_out()
            }
        };
        let Some(q) = queue.upgrade() else { return };
        if !q.disk_round(tick) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::record::Kind;

    fn put(v: &str) -> Op {
        Op::Put { kind: Kind::Str, value: SharedBytes::from(v.as_bytes()), expires_at_ms: None }
    }

    const BASE: u64 = 1 << 60;

    #[test]
    fn records_survive_a_restart_until_released() {
        let dir = tempfile::tempdir().unwrap();
        // Versions far above the clock, so they count up by one here.
        let versions = AtomicU64::new(BASE);
        {
            let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 1 << 30).unwrap();
            assert!(old.is_empty());
            q.push(&versions, b"a", 1, put("1"));
            q.push(&versions, b"b", 2, Op::Delete);
            q.write_pending();
            assert_eq!(q.take_ready().len(), 2);
            q.push(&versions, b"never-written", 3, put("x"));
        }
        let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 1 << 30).unwrap();
        assert_eq!(old.iter().map(|r| r.version).collect::<Vec<_>>(), vec![BASE + 1, BASE + 2]);
        assert_eq!(old[1].op, Op::Delete);
        q.release(BASE + 1);
        assert!(q.bytes() > 0, "a segment with an uncommitted record stays");
        q.release(BASE + 2);
        assert_eq!(q.bytes(), 0);
        q.close();
        drop(q);
        let (_, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 1 << 30).unwrap();
        assert!(old.is_empty());
    }

    #[test]
    fn a_torn_tail_is_ignored_and_new_records_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        // Versions far above the clock, so they count up by one here.
        let versions = AtomicU64::new(BASE);
        {
            let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::No, 1 << 30).unwrap();
            q.push(&versions, b"a", 1, put("1"));
            q.push(&versions, b"b", 1, put("2"));
            q.write_pending();
        }
        // A crash in the middle of a write leaves half a record.
        let seg = seg_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        let half = bytes.len() / 4;
        bytes.extend_from_within(..half);
        std::fs::write(&seg, &bytes).unwrap();
        let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::No, 1 << 30).unwrap();
        assert_eq!(old.len(), 2);
        q.push(&versions, b"c", 1, put("3"));
        q.write_pending();
        q.close();
        drop(q);
        let (_, old) = DurableQueue::open(dir.path(), FsyncPolicy::No, 1 << 30).unwrap();
        assert_eq!(old.iter().map(|r| r.version).collect::<Vec<_>>(), vec![BASE + 1, BASE + 2, BASE + 3]);
    }
}

/// The next write version: above every earlier one and at least the wall clock in
/// microseconds (a hybrid logical clock). Versions of different nodes are then comparable: a
/// key whose slot moved to another node keeps getting higher versions there, so its rows are
/// not refused as stale by the upsert's version check.
pub fn next_version(versions: &AtomicU64, now_us: u64) -> u64 {
    let prev = versions
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some((v + 1).max(now_us)))
        .expect("the closure always returns Some");
    (prev + 1).max(now_us)
}

#[cfg(test)]
mod compaction_tests {
    use super::*;
    use crate::persistence::record::Kind;

    const BASE: u64 = 1 << 60;

    fn put(v: String) -> Op {
        Op::Put { kind: Kind::Str, value: SharedBytes::from(v.as_bytes()), expires_at_ms: None }
    }

    /// Writes `rounds` records to each of `keys` keys; returns each key's last value.
    fn fill(
        q: &DurableQueue,
        versions: &AtomicU64,
        keys: usize,
        rounds: usize,
    ) -> HashMap<SharedBytes, SharedBytes> {
        let mut last = HashMap::new();
        for r in 0..rounds {
            for k in 0..keys {
                let (key, value) = (format!("k{k}"), format!("value-{r}-{}", "x".repeat(20)));
                q.push(versions, key.as_bytes(), 0, put(value.clone()));
                last.insert(SharedBytes::from(key.as_bytes()), SharedBytes::from(value.as_bytes()));
            }
            q.write_pending();
        }
        last
    }

    /// The last record of each key as a replay leaves it (later records win).
    fn replayed_state(records: Vec<Record>) -> HashMap<SharedBytes, SharedBytes> {
        let mut state = HashMap::new();
        for r in records {
            if let Op::Put { value, .. } = r.op {
                state.insert(r.key, value);
            }
        }
        state
    }

    /// Waits until the disk thread has no compaction to do (and did at least one).
    fn wait_for_compaction(q: &DurableQueue) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let idle = !q.disk.jobs.lock().compact;
            if idle && q.compaction.runs.load(Ordering::Relaxed) > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "no compaction happened");
        }
    }

    #[test]
    fn compaction_keeps_only_the_newest_record_of_each_key_and_frees_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let versions = AtomicU64::new(BASE);
        let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::EverySec, 256 * 1024).unwrap();
        // 20,000 records over 100 keys: about 1 MB, four times the bound.
        let mut last = HashMap::new();
        for round in 0..20 {
            last.extend(fill(&q, &versions, 100, 10));
            if round < 3 {
                continue;
            }
            wait_for_compaction(&q);
            assert!(
                q.bytes() < 256 * 1024,
                "{} bytes: compaction keeps the queue under its bound",
                q.bytes()
            );
        }
        assert!(q.compaction.records_dropped.load(Ordering::Relaxed) > 15_000);
        q.close();
        drop(q);
        let (_, replayed) = DurableQueue::open(dir.path(), FsyncPolicy::EverySec, 256 * 1024).unwrap();
        assert_eq!(replayed_state(replayed), last, "a restart replays each key's newest write");
    }

    #[test]
    fn committed_records_are_dropped_by_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let versions = AtomicU64::new(BASE);
        let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::No, 128 * 1024).unwrap();
        fill(&q, &versions, 1000, 3);
        let committed = versions.load(Ordering::Relaxed);
        // Everything so far is committed, but the current segment is not released yet.
        q.committed.store(committed, Ordering::Relaxed);
        fill(&q, &versions, 10, 300);
        wait_for_compaction(&q);
        q.close();
        drop(q);
        let (_, replayed) = DurableQueue::open(dir.path(), FsyncPolicy::No, 128 * 1024).unwrap();
        let old = replayed.iter().filter(|r| r.version <= committed).count();
        assert!(old < 1000, "{old} committed records are still replayed");
    }

    #[test]
    fn a_crash_in_the_middle_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let versions = AtomicU64::new(BASE);
        let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 128 * 1024).unwrap();
        // Stop the disk thread first: compaction is run by hand below.
        *q.thread.lock() = None;
        q.disk.jobs.lock().stop = true;
        q.disk.wake.notify_one();
        std::thread::sleep(Duration::from_millis(100));
        let last = fill(&q, &versions, 100, 200);
        let inputs: Vec<(PathBuf, Vec<u8>)> =
            q.files.lock().sealed.iter().map(|s| (s.path.clone(), std::fs::read(&s.path).unwrap())).collect();
        assert!(inputs.len() >= 3);
        q.compact().unwrap();
        assert_eq!(q.segments(), 2, "one compacted segment and the current one");
        // Crash after the rename, before the other inputs were deleted: they are back.
        for (path, bytes) in &inputs[..inputs.len() - 1] {
            std::fs::write(path, bytes).unwrap();
        }
        // And a half-written compaction of a later round (a crash before its rename).
        std::fs::write(compacting_path(dir.path(), 999), b"half a compaction").unwrap();
        drop(q);
        let (q, replayed) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 128 * 1024).unwrap();
        assert_eq!(replayed_state(replayed), last);
        assert!(!compacting_path(dir.path(), 999).exists(), "an unfinished compaction is removed");
        q.close();
        drop(q);
        // Once recovered, the duplicate inputs are just old segments: a restart again agrees.
        let (_, replayed) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 128 * 1024).unwrap();
        assert_eq!(replayed_state(replayed), last);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn with_fsync_always_a_reply_waits_for_the_disk_thread_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let versions = AtomicU64::new(BASE);
        let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::Always, 1 << 30).unwrap();
        q.push(&versions, b"a", 0, put("1".into()));
        q.push(&versions, b"b", 0, put("2".into()));
        let target = q.write_for_reply();
        assert_eq!(target, 2);
        q.durable(target).await;
        assert!(q.is_durable(2));
        assert!(*q.synced.borrow() >= 2);
        q.push(&versions, b"c", 0, put("3".into()));
        assert!(!q.is_durable(3), "pushed, not yet written nor fsynced");
        q.close();
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn versions_rise_and_follow_the_clock() {
        let v = AtomicU64::new(100);
        assert_eq!(next_version(&v, 50), 101, "never below an earlier version");
        assert_eq!(next_version(&v, 50), 102);
        assert_eq!(next_version(&v, 5_000), 5_000, "catches up with the clock");
        assert_eq!(v.load(Ordering::Relaxed), 5_000);
    }
}
