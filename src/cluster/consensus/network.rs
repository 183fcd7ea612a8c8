//! openraft's network over the cluster bus: one [`BusClient`] per peer, and openraft's error
//! kinds from bus failures.

// openraft fixes these error types; their size is not ours to choose.
#![allow(clippy::result_large_err)]

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::TypeConfig;
use crate::cluster::bus::{BusClient, BusRequest, BusResponse, Stamp};
use crate::cluster::node_id::NodeId;

/// Makes a [`PeerLink`] per peer openraft talks to.
pub struct BusNetwork {
    /// This node's applied log index plus one (see [`Stamp`]).
    pub applied: Arc<AtomicU64>,
    /// This process's random start id and start time (see [`Stamp`]).
    pub boot: (u64, tokio::time::Instant),
}

/// The bus connection to one peer.
pub struct PeerLink {
    target: NodeId,
    client: BusClient,
    applied: Arc<AtomicU64>,
    boot: (u64, tokio::time::Instant),
}

impl RaftNetworkFactory<TypeConfig> for BusNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            client: BusClient::new(node.addr.clone()),
            applied: self.applied.clone(),
            boot: self.boot,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerLink {
    async fn call(
        &self,
        request: BusRequest,
        option: &RPCOption,
    ) -> Result<BusResponse, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
        // Every failure is a plain network error. openraft 0.9's `Unreachable` backoff can leave
        // a stream idle for good once the peer is back (seen here: a learner never caught up;
        // openraft issue #833 describes the same stall).
        let started = tokio::time::Instant::now();
        match self.client.call(&request, option.hard_ttl()).await {
            Ok(response) => Ok(response),
            Err(e) => {
                // A refused connection (peer process gone, or a partition in the simulation)
                // fails at once, and openraft sends a failed AppendEntries of log entries again
                // at once, not at the next heartbeat: without a pause a leader with entries to
                // send spins on the peer, and in the simulation time stops (the partition
                // scenario ran out of ephemeral ports at one instant). Half the RPC's soft TTL
                // (the heartbeat interval for AppendEntries) keeps the error ahead of
                // openraft's own timeout.
                tokio::time::sleep_until(started + option.soft_ttl() / 2).await;
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn remote<T, E: std::error::Error>(&self, r: Result<T, RaftError<NodeId, E>>) -> RpcResult<T, E> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The bus answered with a response of another kind: a peer speaking another version.
fn mismatch<E: std::error::Error>() -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("unexpected cluster bus response")))
}

/// Re-types a transport error (they carry no remote error) for another RPC's error type.
fn transport<E: std::error::Error>(
    e: RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match e {
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::RemoteError(_) => mismatch(),
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let stamp = Stamp {
            applied: self.applied.load(Ordering::Acquire),
            boot: self.boot.0,
            sent_us: self.boot.1.elapsed().as_micros() as u64,
        };
        match self.call(BusRequest::AppendEntries(rpc, stamp), &option).await.map_err(transport)? {
            BusResponse::AppendEntries(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(BusRequest::InstallSnapshot(rpc), &option).await? {
            BusResponse::InstallSnapshot(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(BusRequest::Vote(rpc), &option).await.map_err(transport)? {
            BusResponse::Vote(r) => self.remote(r),
            _ => Err(mismatch()),
        }
    }
}
