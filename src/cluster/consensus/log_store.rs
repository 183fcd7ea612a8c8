//! The Raft log, vote and commit point, kept in one file in the node's data directory and
//! rewritten whole (write, fsync, rename) on every change. The log only carries membership and
//! slot-map changes and is trimmed after each snapshot, so it stays a few kilobytes; a file per
//! change keeps recovery trivial: the file on disk is always one complete, consistent state.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, StorageError, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::cluster::node_id::NodeId;

/// File name of the log in the Raft directory.
pub const LOG_FILE: &str = "raft-log.json";

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The durable Raft log of this node. Cloning shares it (openraft wants a separate reader).
#[derive(Clone)]
pub struct LogStore {
    path: Arc<PathBuf>,
    state: Arc<Mutex<Persisted>>,
    /// Serializes file writes, so a slow fsync never lets an older state land after a newer.
    write: Arc<tokio::sync::Mutex<()>>,
}

impl LogStore {
    /// Opens the log in `dir`, empty if none was written yet.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        let path = dir.join(LOG_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(e),
        };
        Ok(LogStore {
            path: Arc::new(path),
            state: Arc::new(Mutex::new(state)),
            write: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Writes the current state to disk off the runtime thread.
    async fn save(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError<NodeId>> {
        let _turn = self.write.lock().await;
        let bytes = serde_json::to_vec(&*self.state.lock()).map_err(|e| {
            StorageError::from_io_error(subject.clone(), ErrorVerb::Write, std::io::Error::other(e))
        })?;
        write_off_runtime(self.path.to_path_buf(), bytes)
            .await
            .map_err(|e| StorageError::from_io_error(subject, ErrorVerb::Write, e))
    }
}

/// [`write_atomically`] on the blocking pool: an fsync must not stall the node's runtime.
pub(super) async fn write_off_runtime(path: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    // A simulation runs every node on one thread, in an order fixed by its seed: a write on
    // another thread would finish at a real moment and break the replay.
    #[cfg(feature = "simulation")]
    return write_atomically(&path, &bytes);
    #[cfg(not(feature = "simulation"))]
    tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.state.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let state = self.state.lock();
        let last_purged_log_id = state.last_purged;
        let last_log_id = state.entries.values().next_back().map(|e| *e.get_log_id()).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.state.lock().vote = Some(*vote);
        self.save(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.state.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.state.lock().committed = committed;
        self.save(ErrorSubject::Store).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.state.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut state = self.state.lock();
            for entry in entries {
                state.entries.insert(entry.log_id.index, entry);
            }
        }
        let result = self.save(ErrorSubject::Logs).await;
        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.state.lock().entries.split_off(&log_id.index);
        self.save(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut state = self.state.lock();
            state.last_purged = Some(log_id);
            state.entries = state.entries.split_off(&(log_id.index + 1));
        }
        self.save(ErrorSubject::Logs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;

    #[tokio::test]
    async fn the_vote_and_log_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let vote = Vote::new(3, NodeId([7; 20]));
        store.save_vote(&vote).await.unwrap();
        store.state.lock().entries.insert(
            1,
            Entry::<TypeConfig>::new_blank(LogId::new(
                openraft::CommittedLeaderId::new(3, NodeId([7; 20])),
                1,
            )),
        );
        store.purge(LogId::new(openraft::CommittedLeaderId::new(3, NodeId([7; 20])), 0)).await.unwrap();

        let mut again = LogStore::open(dir.path()).unwrap();
        assert_eq!(again.read_vote().await.unwrap(), Some(vote));
        let state = again.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(0));
    }
}
