//! The grid: node identity, the slot map (which node serves and which copy every hash slot),
//! placement (a pure function deciding that map from membership and zones), the node's
//! cluster state, routing (MOVED/ASK/CROSSSLOT decisions against the map for every keyed
//! command), membership as a deterministic state machine over those, and agreement on it
//! through openraft ([`consensus`]) over the node-to-node [`bus`].

pub mod bus;
pub mod consensus;
pub mod membership;
pub mod migration;
pub mod node_id;
pub mod placement;
pub mod router;
pub mod slotmap;
pub mod stale;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

pub use consensus::Consensus;
pub use membership::{GridCommand, GridState};
pub use node_id::NodeId;
pub use placement::{place, Member, SlotAssignment};
pub use slotmap::{Migration, NodeInfo, Owners, SlotMap};
pub use state::{ClientFlags, Cluster};

use crate::server::Server;

/// Directory under the node's `dir` holding the Raft log and snapshot.
pub const RAFT_DIR: &str = "raft";

/// How long a restarted member waits for Postgres to take the writes replayed from its
/// write-behind queues before it announces its restart anyway (see [`write_replayed`]).
const REPLAYED_WRITES_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Before a restarted member announces its restart (which gives its slots to other members, see
/// `GridCommand::Restarted`), writes the records replayed from its write-behind queues to
/// Postgres, ignoring the write delay. Those members serve a backed key missing from their
/// memory from its Postgres row (read-through) and keep it; after a whole-grid restart none of
/// them holds any key, so a row older than this member's queued write (or no row, remembered
/// as absent) would be served instead of an acknowledged write. Meanwhile this member serves
/// nothing (it restarted without its keys), so its queues hold only the replayed records. If
/// Postgres is down for longer than [`REPLAYED_WRITES_WAIT`], it announces its restart anyway
/// (the records stay queued): its slots' plain keys are not kept unserved for an outage.
async fn write_replayed(server: &Server) {
    let Some(p) = server.persistence.get() else { return };
    let started = tokio::time::Instant::now();
    let step = std::time::Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            done = p.flush(step) => if done { break },
        }
        if started.elapsed() >= REPLAYED_WRITES_WAIT {
            tracing::warn!(
                waited_ms = started.elapsed().as_millis() as u64,
                "writes replayed from the write-behind queue are not in Postgres yet; announcing the restart anyway"
            );
            return;
        }
        tracing::info!(
            "restarted: still writing the replayed write-behind queue to Postgres before rejoining"
        );
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "replayed writes are in Postgres");
}

/// Turns cluster mode on for a node that has just bound `addr`, when `cluster-enabled` is set
/// or seeds are given: loads (or creates) the node id in `dir`, binds the cluster bus, starts
/// Raft, and brings the node into a grid in the background (a grid of one without seeds).
pub async fn start(server: &Arc<Server>, addr: SocketAddr) -> anyhow::Result<()> {
    let config = server.config.read().clone();
    if !config.cluster_mode() {
        return Ok(());
    }
    let me = NodeId::load_or_create(&config.dir)?;
    // Bind the bus first and announce the port actually bound (the default, client port +
    // 10000, does not exist above 55535: an ephemeral port is taken then).
    let wanted = match config.cluster_port {
        0 => addr.port().checked_add(10000).unwrap_or(0),
        p => p,
    };
    let listener = bus::bind(&config.bind, wanted)
        .await
        .with_context(|| format!("cannot listen on the cluster bus port {}:{wanted}", config.bind))?;
    let mut config = config;
    config.cluster_port = listener.local_addr()?.port();
    // Announce the TLS port actually bound (tls-port 0 picks one).
    config.tls_port = server.tls_addr.read().map(|a| a.port());
    let info = state::announce(me, &config, addr);
    let raft_dir = config.dir.join(RAFT_DIR);
    let fresh = !raft_dir.join(consensus::log_store::LOG_FILE).exists();
    // Only a fresh node with no seeds starts as a grid of one; one about to join, or a member
    // restarting, owns nothing until the grid's map arrives through the log.
    let cluster = if fresh && config.cluster_join.is_empty() {
        Arc::new(Cluster::single(me, &config, addr))
    } else {
        Arc::new(Cluster::joining(me, &config, addr))
    };
    // A restarted member lost its keys with its memory: it serves none until placed again.
    cluster.set_amnesiac(!fresh);
    let _ = server.cluster.set(cluster.clone());
    let cluster_for_replication = cluster.clone();
    let timeout = std::time::Duration::from_millis(config.cluster_node_timeout);
    let consensus = Consensus::start(
        &raft_dir,
        info,
        config.cluster_replicas,
        cluster,
        timeout / 2,
        config.cluster_fast_election,
    )
    .await?;
    let _ = server.consensus.set(consensus.clone());
    tokio::spawn(bus::serve(listener, consensus.clone(), server.clone()));
    tokio::spawn(consensus.clone().reconcile(server.shutdown.clone()));
    tokio::spawn(consensus.clone().detect_failures(timeout, server.shutdown.clone()));
    tokio::spawn(consensus.clone().keep_lease(server.shutdown.clone()));
    if config.cluster_fast_election {
        tokio::spawn(consensus.clone().elect_when_leader_silent(server.shutdown.clone()));
    }
    tokio::spawn(consensus.clone().rejoin(timeout, server.shutdown.clone()));
    tokio::spawn(migration::run(server.clone()));
    tokio::spawn(stale::run(server.clone(), cluster_for_replication.clone()));
    let _ = server.replication.set(crate::replication::Replication::start(server, cluster_for_replication));
    let shutdown = server.shutdown.clone();
    let server = server.clone();
    tokio::spawn(async move {
        if !fresh {
            write_replayed(&server).await;
        }
        consensus.establish(&config.cluster_join, shutdown).await
    });
    tracing::info!(node_id = %me, zone = %config.zone, "cluster mode");
    Ok(())
}
