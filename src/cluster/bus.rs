//! The cluster bus: node-to-node requests over TCP on the bus port (client port + 10000 by
//! default). A frame is a 4-byte big-endian length and a JSON body; each connection carries one
//! request at a time and its response. JSON because the control plane (Raft votes, log entries,
//! joins) is small and rare, and openraft's messages are serde types whose shapes a
//! non-self-describing format does not always round-trip. Slot data (keys moving to a new
//! primary) travels in binary frames instead: a first byte of 0, then bincode. With
//! `tls-cluster` every bus connection is mutual TLS (see [`set_tls`]); the framing is the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net::{TcpListener, TcpStream};
use crate::server::Server;

use super::consensus::{Consensus, TypeConfig};
use super::migration;
use super::node_id::NodeId;
use super::slotmap::NodeInfo;

/// Largest frame accepted: far above any control message, small enough that a confused or
/// hostile peer cannot make a node allocate without bound.
pub const MAX_FRAME: usize = 64 << 20;

/// What a leader adds to its AppendEntries for the follower's lease.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stamp {
    /// The log index the leader had applied when it sent them (plus one; 0: none): a
    /// follower's lease waits until it has applied as much, since `leader_commit` of a
    /// catch-up batch can stop short of the leader's map.
    pub applied: u64,
    /// The leader process's random start id: its clock readings compare only with its own.
    pub boot: u64,
    /// When the leader sent them, in microseconds of its monotonic clock since it started: the
    /// follower ages the message by how much longer it took than the fastest recent one, so a
    /// message held up in the network extends no lease from its late arrival.
    pub sent_us: u64,
}

/// Requests one node sends another.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusRequest {
    /// Raft log replication and heartbeats, with the leader's stamp (see [`Stamp`]).
    AppendEntries(AppendEntriesRequest<TypeConfig>, Stamp),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot transfer, in chunks.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A node asks to become a member (sent to any member; forwarded to the leader).
    Join(NodeInfo),
    /// A member is to leave the grid gracefully (sent to any member; forwarded to the leader).
    Leave(NodeId),
    /// A member is to be removed at once (it is gone for good).
    Forget(NodeId),
    /// Are you there? (the leader's failure detector).
    Ping,
    /// Your figures, please (keys, memory, lag, queues: the admin port's `/cluster` on the
    /// node asked shows every member's).
    Status,
    /// A member restarted without its keys (forwarded to the leader: see
    /// `GridCommand::Restarted`).
    Restarted(NodeInfo),
    /// A replica holds these slots in full (forwarded to the leader, which commits it: see
    /// `GridCommand::CaughtUp`).
    CaughtUp {
        /// The replica.
        node: NodeId,
        /// Epoch of the map its full sync was asked under.
        epoch: u64,
        /// The slots.
        slots: Vec<u16>,
    },
    /// A migration source has moved these slots (forwarded to the leader, which commits it).
    SlotsMoved {
        /// The old primary.
        from: NodeId,
        /// The new primary.
        to: NodeId,
        /// Slots handed over.
        slots: Vec<u16>,
    },
}

/// Answers to [`BusRequest`]s, variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum BusResponse {
    /// To [`BusRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`BusRequest::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`BusRequest::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`BusRequest::Join`], [`BusRequest::Leave`], [`BusRequest::Forget`] and
    /// [`BusRequest::SlotsMoved`]: the slot map epoch the change produced, or why it was refused.
    Membership(Result<u64, String>),
    /// To a binary import batch: keys stored, or why they were refused.
    Imported(Result<usize, String>),
    /// To a binary `Committed` request: per written key space, by name, a write-behind
    /// version up to which everything is in Postgres.
    Committed(Vec<(String, u64)>),
    /// To [`BusRequest::Ping`].
    Pong,
    /// To [`BusRequest::Status`]: the node's own status; None while its admin port is not up.
    Status(Option<Box<crate::admin::cluster::NodeStatus>>),
}

/// Why a bus call failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting, sending or receiving failed.
    #[error("cluster bus i/o with {peer}: {source}")]
    Io {
        /// The peer's bus address.
        peer: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("cluster bus call to {0} timed out")]
    Timeout(String),
    /// A frame over [`MAX_FRAME`] or one that does not decode.
    #[error("cluster bus protocol error with {peer}: {reason}")]
    Protocol {
        /// The peer's bus address.
        peer: String,
        /// What was wrong.
        reason: String,
    },
}

/// Mutual TLS for every bus connection of this process, set once at start with `tls-cluster`.
/// Process-wide rather than passed to each [`BusClient`]: clients are made in many places, and
/// a process runs one node.
static TLS: std::sync::OnceLock<crate::tls::BusTls> = std::sync::OnceLock::new();

/// Turns on mutual TLS for the bus (connections made and accepted from now on). Called once,
/// before the bus starts; later calls are ignored.
pub fn set_tls(tls: crate::tls::BusTls) {
    let _ = TLS.set(tls);
}

/// A bus connection: plain TCP, or TLS over it.
trait BusStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> BusStream for S {}

/// Writes one frame.
async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, message: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    write_body(stream, &body).await
}

/// Writes one frame holding `body`.
async fn write_body<S: AsyncWrite + Unpin>(stream: &mut S, body: &[u8]) -> std::io::Result<()> {
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other("cluster bus frame too large"));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    // TLS may hold back records the socket did not take (a no-op for plain TCP).
    stream.flush().await
}

/// Reads one JSON frame; None at a clean end of stream between frames.
async fn read_frame<T: for<'de> Deserialize<'de>, S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<T>> {
    match read_body(stream).await? {
        Some(body) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        None => Ok(None),
    }
}

/// Reads one frame's body; None at a clean end of stream between frames.
async fn read_body<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "cluster bus frame too large"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// A connection to one peer's bus, opened on first use and again after any failure.
pub struct BusClient {
    peer: String,
    stream: tokio::sync::Mutex<Option<Box<dyn BusStream>>>,
}

impl BusClient {
    /// A client for the bus at `peer` (`host:port`); connects lazily.
    pub fn new(peer: impl Into<String>) -> BusClient {
        BusClient { peer: peer.into(), stream: tokio::sync::Mutex::new(None) }
    }

    /// The peer's bus address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends `request` and waits up to `timeout` for the answer. A failed or timed-out call
    /// drops the connection, so a late answer is never taken for the next call's.
    pub async fn call(&self, request: &BusRequest, timeout: Duration) -> Result<BusResponse, BusError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| BusError::Protocol { peer: self.peer.clone(), reason: e.to_string() })?;
        self.call_raw(&body, timeout).await
    }

    /// Sends a data batch (a binary frame, see [`migration::DataRequest`]) and waits for the
    /// answer, as [`BusClient::call`] does.
    pub async fn call_data(
        &self,
        request: &migration::DataRequest,
        timeout: Duration,
    ) -> Result<BusResponse, BusError> {
        let mut body = vec![migration::BINARY_FRAME];
        bincode::encode_into_std_write(request, &mut body, bincode::config::standard())
            .map_err(|e| BusError::Protocol { peer: self.peer.clone(), reason: e.to_string() })?;
        self.call_raw(&body, timeout).await
    }

    async fn call_raw(&self, body: &[u8], timeout: Duration) -> Result<BusResponse, BusError> {
        let mut slot = self.stream.lock().await;
        let peer = self.peer.clone();
        // Injected faults (DEBUG BUS-DROP / BUS-DELAY): the one outbound path of the bus.
        let hold = match crate::faults::bus().outbound(&peer) {
            crate::faults::Outbound::Drop => {
                *slot = None;
                tokio::time::sleep(timeout).await;
                return Err(BusError::Timeout(peer));
            }
            crate::faults::Outbound::Delay(d) => d,
            crate::faults::Outbound::Pass => Duration::ZERO,
        };
        // The connection is taken out of the slot for the exchange and put back only once the
        // answer is read. A caller that drops this future midway (openraft times its RPCs out
        // itself, at the heartbeat interval) drops the connection with it: left in the slot,
        // its late answer would be read as the next call's (a leader took a stale Conflict for
        // an AppendEntries from the log's start and panicked; a stale Success could make it
        // count entries a follower never got).
        let exchange = async {
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            let mut stream: Box<dyn BusStream> = match slot.take() {
                Some(stream) => stream,
                None => {
                    let stream = TcpStream::connect(&peer).await?;
                    stream.set_nodelay(true)?;
                    match TLS.get() {
                        None => Box::new(stream),
                        Some(tls) => {
                            let name = crate::tls::BusTls::server_name(&peer);
                            Box::new(tls.connector.connect(name, stream).await?)
                        }
                    }
                }
            };
            write_body(&mut stream, body).await?;
            let response = read_frame::<BusResponse, _>(&mut stream).await?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed the bus")
            })?;
            Ok::<_, std::io::Error>((stream, response))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((stream, response))) => {
                *slot = Some(stream);
                return Ok(response);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(BusError::Protocol { peer: peer.clone(), reason: e.to_string() })
            }
            Ok(Err(source)) => Err(BusError::Io { peer: peer.clone(), source }),
            Err(_) => Err(BusError::Timeout(peer.clone())),
        };
        *slot = None;
        result
    }
}

/// Binds the bus port. Bound before the node announces itself, so peers never learn of an
/// address nobody listens on.
pub async fn bind(bind: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((bind, port)).await
}

/// Serves bus requests until `shutdown`: control requests go to `consensus`, data batches
/// (slot imports) to the keyspace of `server`.
pub async fn serve(listener: TcpListener, consensus: Arc<Consensus>, server: Arc<Server>) {
    let shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (consensus, server) = (consensus.clone(), server.clone());
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            r = accept_peer(stream, peer, consensus, server) => if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "cluster bus connection ended");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster bus accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves one accepted connection, after the TLS handshake with `tls-cluster`: a peer without
/// a certificate the grid's CA signed is refused.
async fn accept_peer(
    stream: TcpStream,
    peer: SocketAddr,
    consensus: Arc<Consensus>,
    server: Arc<Server>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(tls) = TLS.get() else { return serve_peer(stream, peer, consensus, server).await };
    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_peer(stream, peer, consensus, server).await,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "cluster bus: refused a peer whose TLS handshake failed (tls-cluster needs a certificate signed by tls-ca-cert-file)");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(%peer, "cluster bus: refused a peer that did not finish its TLS handshake in time");
            Ok(())
        }
    }
}

async fn serve_peer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    _peer: SocketAddr,
    consensus: Arc<Consensus>,
    server: Arc<Server>,
) -> std::io::Result<()> {
    while let Some(body) = read_body(&mut stream).await? {
        let response = if body.first() == Some(&migration::BINARY_FRAME) {
            match migration::decode(&body[1..]) {
                Ok(migration::DataRequest::Import { from, epoch, slot, entries, versions }) => {
                    let from = crate::cluster::NodeId(from);
                    BusResponse::Imported(migration::import(&server, from, epoch, slot, entries, versions))
                }
                Ok(migration::DataRequest::Replicate {
                    from,
                    epoch,
                    remaining,
                    sync_token,
                    entries,
                    versions,
                }) => {
                    let from = crate::cluster::NodeId(from);
                    let sync = crate::replication::SyncProgress { token: sync_token, remaining };
                    let applied = crate::replication::apply(&server, from, epoch, sync, entries, versions);
                    BusResponse::Imported(applied)
                }
                Ok(migration::DataRequest::Committed) => BusResponse::Committed(
                    server.persistence.get().map(|p| p.committed_marks()).unwrap_or_default(),
                ),
                Ok(migration::DataRequest::SyncMe { replica, epoch, token }) => {
                    let replica = crate::cluster::NodeId(replica);
                    BusResponse::Imported(crate::replication::sync_requested(&server, replica, epoch, token))
                }
                Err(e) => BusResponse::Imported(Err(format!("undecodable batch: {e}"))),
            }
        } else {
            let request: BusRequest = serde_json::from_slice(&body)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match request {
                // The admin port knows the figures, not consensus.
                BusRequest::Status => BusResponse::Status(
                    server.admin.get().and_then(std::sync::Weak::upgrade).map(|a| Box::new(a.local_status())),
                ),
                request => consensus.handle(request).await,
            }
        };
        write_frame(&mut stream, &response).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_it_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_frame::<BusRequest, _>(&mut s).await
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_call_to_nobody_fails_without_hanging() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = BusClient::new(addr.to_string());
        let r = client.call(&BusRequest::Leave(NodeId([1; 20])), Duration::from_secs(2)).await;
        assert!(matches!(r, Err(BusError::Io { .. })), "{r:?}");
    }
}

#[cfg(test)]
mod roundtrip {
    use super::*;

    #[test]
    fn control_requests_round_trip_as_json() {
        let info = crate::cluster::slotmap::test_node(1, "a");
        for r in [
            BusRequest::Join(info),
            BusRequest::Leave(NodeId([2; 20])),
            BusRequest::SlotsMoved { from: NodeId([1; 20]), to: NodeId([2; 20]), slots: vec![1, 2] },
        ] {
            let bytes = serde_json::to_vec(&r).unwrap();
            let back: BusRequest = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }
}
