//! The durable write-behind queue of one key space: append-only segment files on local disk.
//!
//! Records are framed into a memory buffer under the shard lock (no I/O there), written to
//! the current segment before the replies of the commands that made them are sent (as Redis
//! writes its AOF before replying), and fsynced by the policy. Versions are assigned under the
//! buffer's lock, so versions grow along the file. A segment is deleted once every record in it
//! has been committed to Postgres (or superseded by a committed newer record of its key).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::config::FsyncPolicy;
use super::record::{frame, unframe, Op, Record};

/// A segment is sealed and a new one started beyond this size.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

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
    current: File,
    current_seg: Segment,
    sealed: VecDeque<Segment>,
    next_id: u64,
    dirty: bool,
}

/// One key space's queue on disk.
pub struct DurableQueue {
    dir: PathBuf,
    fsync: FsyncPolicy,
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    files: Mutex<Files>,
    /// Records written to disk, waiting for the writer to pick them up.
    ready: Mutex<Vec<Record>>,
    /// Bytes of live segments plus the unwritten buffer: what the bound applies to.
    bytes: AtomicU64,
    /// Records appended since start (or replayed).
    pub appended: AtomicU64,
    /// Write errors of the disk (the node keeps serving; INFO shows it).
    pub disk_errors: AtomicU64,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("segment-{id:020}.log"))
}

impl DurableQueue {
    /// Opens the queue in `dir`, returning it and the records left from a previous run, in
    /// order. New records go to a fresh segment.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> std::io::Result<(DurableQueue, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("segment-")?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
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
            current,
            current_seg: Segment { id: next, path, len: 0, max_version: 0 },
            sealed,
            next_id: next + 1,
            dirty: false,
        };
        let q = DurableQueue {
            dir: dir.to_path_buf(),
            fsync,
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            files: Mutex::new(files),
            ready: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(total),
            appended: AtomicU64::new(replayed.len() as u64),
            disk_errors: AtomicU64::new(0),
        };
        Ok((q, replayed))
    }

    /// Appends a record (in memory; on disk at the next [`DurableQueue::write_pending`]). Its
    /// version is taken from `versions` here, under the buffer's lock, so the file is in
    /// version order. Called under a shard lock: no I/O. Returns the version.
    pub fn push(&self, versions: &AtomicU64, key: &[u8], slot: u16, op: Op) -> u64 {
        let mut p = self.pending.lock();
        let version = next_version(versions, crate::store::clock::now_us());
        let record = Record { version, key: key.to_vec(), slot, op };
        let before = p.bytes.len();
        frame(&record, &mut p.bytes);
        self.bytes.fetch_add((p.bytes.len() - before) as u64, Ordering::Relaxed);
        p.records.push(record);
        self.has_pending.store(true, Ordering::Release);
        version
    }

    /// Whether records wait to be written to disk.
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// Writes the buffered records to the current segment (fsync when the policy is
    /// `always`) and hands them to the writer. Called before replies are sent.
    pub fn write_pending(&self) {
        if !self.has_pending() {
            return;
        }
        let mut files = self.files.lock();
        let Pending { bytes, records } = {
            let mut p = self.pending.lock();
            self.has_pending.store(false, Ordering::Release);
            std::mem::take(&mut *p)
        };
        if records.is_empty() {
            return;
        }
        let result = files.current.write_all(&bytes).and_then(|_| {
            if self.fsync == FsyncPolicy::Always {
                files.current.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            // The records stay in memory and still reach Postgres; only a crash would lose them.
            self.disk_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the write-behind queue");
        }
        files.dirty = self.fsync == FsyncPolicy::EverySec;
        files.current_seg.len += bytes.len() as u64;
        files.current_seg.max_version = records.last().map_or(0, |r| r.version);
        if files.current_seg.len >= SEGMENT_BYTES {
            if let Err(e) = self.rotate(&mut files) {
                self.disk_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot start a new write-behind segment");
            }
        }
        self.ready.lock().extend(records);
    }

    fn rotate(&self, files: &mut Files) -> std::io::Result<()> {
        let id = files.next_id;
        let path = seg_path(&self.dir, id);
        let new = OpenOptions::new().create(true).append(true).open(&path)?;
        if files.dirty {
            files.current.sync_data()?;
            files.dirty = false;
        }
        files.current = new;
        files.next_id += 1;
        let old = std::mem::replace(&mut files.current_seg, Segment { id, path, len: 0, max_version: 0 });
        files.sealed.push_back(old);
        Ok(())
    }

    /// Takes the records written to disk since the last call.
    pub fn take_ready(&self) -> Vec<Record> {
        std::mem::take(&mut *self.ready.lock())
    }

    /// Deletes segments all of whose records have versions `<= committed`.
    pub fn release(&self, committed: u64) {
        let mut files = self.files.lock();
        if files.current_seg.len > 0 && files.current_seg.max_version <= committed && !self.has_pending() {
            if let Err(e) = self.rotate(&mut files) {
                tracing::error!(error = %e, "cannot start a new write-behind segment");
            }
        }
        while files.sealed.front().is_some_and(|s| s.max_version <= committed) {
            let s = files.sealed.pop_front().expect("checked");
            match std::fs::remove_file(&s.path) {
                Ok(()) => {
                    self.bytes.fetch_sub(s.len, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, segment = s.id, "cannot delete a committed write-behind segment");
                    files.sealed.push_front(s);
                    break;
                }
            }
        }
    }

    /// fsyncs the current segment if it was written since the last sync (the `everysec`
    /// job). The sync runs on a duplicate handle, so appends do not wait for it.
    pub fn sync(&self) {
        let handle = {
            let mut files = self.files.lock();
            if !files.dirty {
                return;
            }
            files.dirty = false;
            files.current.try_clone()
        };
        if let Err(e) = handle.and_then(|f| f.sync_data()) {
            self.disk_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot fsync the write-behind queue");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::record::Kind;

    fn put(v: &str) -> Op {
        Op::Put { kind: Kind::Str, value: v.as_bytes().to_vec(), expires_at_ms: None }
    }

    const BASE: u64 = 1 << 60;

    #[test]
    fn records_survive_a_restart_until_released() {
        let dir = tempfile::tempdir().unwrap();
        // Versions far above the clock, so they count up by one here.
        let versions = AtomicU64::new(BASE);
        {
            let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always).unwrap();
            assert!(old.is_empty());
            q.push(&versions, b"a", 1, put("1"));
            q.push(&versions, b"b", 2, Op::Delete);
            q.write_pending();
            assert_eq!(q.take_ready().len(), 2);
            q.push(&versions, b"never-written", 3, put("x"));
        }
        let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(old.iter().map(|r| r.version).collect::<Vec<_>>(), vec![BASE + 1, BASE + 2]);
        assert_eq!(old[1].op, Op::Delete);
        q.release(BASE + 1);
        assert!(q.bytes() > 0, "a segment with an uncommitted record stays");
        q.release(BASE + 2);
        assert_eq!(q.bytes(), 0);
        drop(q);
        let (_, old) = DurableQueue::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert!(old.is_empty());
    }

    #[test]
    fn a_torn_tail_is_ignored_and_new_records_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        // Versions far above the clock, so they count up by one here.
        let versions = AtomicU64::new(BASE);
        {
            let (q, _) = DurableQueue::open(dir.path(), FsyncPolicy::No).unwrap();
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
        let (q, old) = DurableQueue::open(dir.path(), FsyncPolicy::No).unwrap();
        assert_eq!(old.len(), 2);
        q.push(&versions, b"c", 1, put("3"));
        q.write_pending();
        drop(q);
        let (_, old) = DurableQueue::open(dir.path(), FsyncPolicy::No).unwrap();
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
