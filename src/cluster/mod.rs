//! The grid: node identity, the slot map (which node serves and which copy every hash slot),
//! placement (a pure function deciding that map from membership and zones), the node's
//! cluster state, and routing (MOVED/ASK/CROSSSLOT decisions against the map for every keyed
//! command), and membership as a deterministic state machine over those. Agreeing on it through
//! consensus (openraft) is still to come (see ARCHITECTURE.md).

pub mod membership;
pub mod node_id;
pub mod placement;
pub mod router;
pub mod slotmap;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

pub use membership::{GridCommand, GridState};
pub use node_id::NodeId;
pub use placement::{place, Member, SlotAssignment};
pub use slotmap::{Migration, NodeInfo, Owners, SlotMap};
pub use state::{ClientFlags, Cluster};

use crate::server::Server;

/// Turns cluster mode on for a node that has just bound `addr`, when `cluster-enabled` is set:
/// loads (or creates) the node id in `dir` and starts as a grid of one.
pub fn enable(server: &Server, addr: SocketAddr) -> Result<(), node_id::NodeIdError> {
    let config = server.config.read().clone();
    if !config.cluster_enabled {
        return Ok(());
    }
    let me = NodeId::load_or_create(&config.dir)?;
    tracing::info!(node_id = %me, zone = %config.zone, "cluster mode: a grid of one owning every slot");
    let _ = server.cluster.set(Arc::new(Cluster::single(me, &config, addr)));
    Ok(())
}
