//! The grid: node identity, the slot map (which node serves and which copy every hash slot),
//! placement (a pure function deciding that map from membership and zones), and routing
//! (MOVED/ASK/CROSSSLOT decisions made against the map for every keyed command).

pub mod node_id;
pub mod placement;
pub mod slotmap;

pub use node_id::NodeId;
pub use placement::{place, Member, SlotAssignment};
pub use slotmap::{Migration, NodeInfo, Owners, SlotMap};
