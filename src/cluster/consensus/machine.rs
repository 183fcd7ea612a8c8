//! The replicated state machine: the grid's members and slot map ([`GridState`]), changed only
//! by committed Raft entries. Every applied change that moves the map installs it in the
//! node's [`Cluster`], which is what routing and CLUSTER SLOTS read. Snapshots are the whole
//! state (a few hundred kilobytes at most), kept in one file next to the log.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{GridResponse, TypeConfig};
use crate::cluster::membership::{GridCommand, GridState};
use crate::cluster::node_id::NodeId;
use crate::cluster::state::Cluster;

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// Everything the log has built so far.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct MachineState {
    /// The last entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// Raft's own membership (voters and their bus addresses).
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// The grid, once bootstrapped.
    pub grid: Option<GridState>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine openraft drives; clones share state.
#[derive(Clone)]
pub struct GridMachine {
    state: Arc<Mutex<MachineState>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    path: Arc<PathBuf>,
    cluster: Arc<Cluster>,
    /// The last applied log index plus one (0: none), for the bus to stamp AppendEntries with.
    pub applied: Arc<AtomicU64>,
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl GridMachine {
    /// Opens the machine from the snapshot in `dir`, if any, and installs its map in `cluster`.
    /// Entries after the snapshot are re-applied by openraft from the log.
    pub fn open(dir: &Path, cluster: Arc<Cluster>) -> std::io::Result<GridMachine> {
        let path = dir.join(SNAPSHOT_FILE);
        let (state, snapshot) = match std::fs::read(&path) {
            Ok(bytes) => {
                let snap: StoredSnapshot = serde_json::from_slice(&bytes).map_err(invalid)?;
                let state: MachineState = serde_json::from_slice(&snap.data).map_err(invalid)?;
                (state, Some(snap))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (MachineState::default(), None),
            Err(e) => return Err(e),
        };
        let machine = GridMachine {
            state: Arc::new(Mutex::new(state)),
            snapshot: Arc::new(Mutex::new(snapshot)),
            path: Arc::new(path),
            cluster,
            applied: Arc::new(AtomicU64::new(0)),
        };
        machine.publish();
        Ok(machine)
    }

    /// Reads the grid in place (no copy of its 16,384-slot map): for the periodic checks.
    pub fn with_grid<T>(&self, f: impl FnOnce(Option<&GridState>) -> T) -> T {
        f(self.state.lock().grid.as_ref())
    }

    /// A copy of the current state.
    pub fn state(&self) -> MachineState {
        self.state.lock().clone()
    }

    /// Installs the agreed map in the node's cluster view.
    fn publish(&self) {
        let (map, applied) = {
            let state = self.state.lock();
            (state.grid.as_ref().map(|g| g.map.clone()), state.last_applied.map_or(0, |l| l.index + 1))
        };
        self.applied.store(applied, Ordering::Release);
        if let Some(map) = map {
            if let Err(e) = self.cluster.install(map) {
                // Only a map older than the one in force is refused, and that one came from the
                // same log: nothing to do.
                tracing::debug!(error = %e, "slot map from the log not installed");
            }
        }
    }

    fn apply_command(grid: &mut Option<GridState>, command: &GridCommand) -> bool {
        match (grid.as_mut(), command) {
            (None, GridCommand::Bootstrap { first, replicas }) => {
                *grid = Some(GridState::new(first.clone(), *replicas));
                true
            }
            (Some(g), command) => g.apply(command),
            // A join before the grid exists cannot happen through Consensus; ignore it
            // rather than fail the whole log.
            (None, _) => false,
        }
    }

    async fn save_snapshot(&self, snap: StoredSnapshot) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&snap)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        super::log_store::write_off_runtime(self.path.to_path_buf(), bytes)
            .await
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        *self.snapshot.lock() = Some(snap);
        Ok(())
    }
}

fn invalid(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl RaftSnapshotBuilder<TypeConfig> for GridMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let state = self.state();
        let data = serde_json::to_vec(&state)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let id = match state.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
            snapshot_id: id,
        };
        self.save_snapshot(StoredSnapshot { meta: meta.clone(), data: data.clone() }).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for GridMachine {
    type SnapshotBuilder = GridMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GridResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        // Applied in place, on the runtime: applying on a copy off the runtime lost
        // acknowledged writes in tests/faults.rs's join-during-partition scenario, in every run
        // (docs/RELIABILITY.md). One entry at a time under the lock, yielding in between, so a
        // one-thread node replaying a long log (a joiner: an entry costs a placement, tens of ms
        // in a debug build) still answers AppendEntries and pings instead of going silent for
        // seconds and being failed over. The map is published once, after the batch.
        let mut replies = Vec::new();
        let mut changed = false;
        for entry in entries {
            tokio::task::yield_now().await;
            let mut state = self.state.lock();
            state.last_applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => {
                    // Remembered for `Consensus::rejoin`: a node that was asked to leave
                    // stays out, however quickly its removal follows.
                    match command {
                        GridCommand::Leave(id) if *id == self.cluster.me => self.cluster.set_left(true),
                        GridCommand::Join(info) if info.id == self.cluster.me => self.cluster.set_left(false),
                        _ => {}
                    }
                    changed |= Self::apply_command(&mut state.grid, command)
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            replies.push(GridResponse { epoch: state.grid.as_ref().map_or(0, |g| g.map.epoch) });
        }
        let state = self.state.lock();
        self.applied.store(state.last_applied.map_or(0, |l| l.index + 1), Ordering::Release);
        drop(state);
        if changed {
            self.publish();
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> GridMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: MachineState = serde_json::from_slice(&data)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        *self.state.lock() = state;
        self.save_snapshot(StoredSnapshot { meta: meta.clone(), data }).await?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .snapshot
            .lock()
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}
