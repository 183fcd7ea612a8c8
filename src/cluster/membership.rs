//! Membership as a deterministic state machine: the members of the grid and the slot map,
//! changed only by applying [`GridCommand`]s in order. This is the state the consensus log
//! (openraft, in `consensus`) replicates: every node applying the same commands holds the same map,
//! because placement is a pure function of membership, zones and the previous map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::node_id::NodeId;
use super::placement::{place, Member};
use super::slotmap::{NodeInfo, SlotMap};

/// A change to the grid, as it would be written to the consensus log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GridCommand {
    /// The grid's first entry: its first member and the replica count every member uses.
    Bootstrap {
        /// The node that bootstrapped the grid.
        first: NodeInfo,
        /// Replicas per slot (R), fixed for the grid's life.
        replicas: usize,
    },
    /// A node joins, or announces a new address or zone.
    Join(NodeInfo),
    /// A node leaves (gracefully, or declared dead).
    Leave(NodeId),
}

/// Members and the slot map they agreed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridState {
    /// Replicas per slot (R).
    pub replicas: usize,
    /// Current members by id.
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// The slot map for these members; its epoch counts map changes.
    pub map: SlotMap,
}

impl GridState {
    /// A grid of `first` alone, primary of every slot (epoch 1).
    pub fn new(first: NodeInfo, replicas: usize) -> GridState {
        let members = BTreeMap::from([(first.id, first)]);
        let map = layout(&members, replicas, &[], 1);
        GridState { replicas, members, map }
    }

    /// Applies one command. Returns whether the slot map changed (and its epoch increased);
    /// a command that changes nothing, like a repeated join, leaves the epoch alone.
    pub fn apply(&mut self, command: &GridCommand) -> bool {
        match command {
            // Only meaningful before a grid exists (see the consensus state machine).
            GridCommand::Bootstrap { .. } => return false,
            GridCommand::Join(info) => {
                if self.members.get(&info.id) == Some(info) {
                    return false;
                }
                self.members.insert(info.id, info.clone());
            }
            GridCommand::Leave(id) => {
                // The last member stays: a grid of none cannot serve anything.
                if self.members.len() == 1 || self.members.remove(id).is_none() {
                    return false;
                }
            }
        }
        self.map = layout(&self.members, self.replicas, &self.map.assignment(), self.map.epoch + 1);
        true
    }
}

fn layout(
    members: &BTreeMap<NodeId, NodeInfo>,
    replicas: usize,
    previous: &[super::placement::SlotAssignment],
    epoch: u64,
) -> SlotMap {
    let placement: Vec<Member> =
        members.values().map(|n| Member { id: n.id, zone: n.zone.clone() }).collect();
    let assignment = place(&placement, replicas, previous);
    SlotMap::from_assignment(epoch, members.values().cloned().collect(), &assignment)
        .expect("placement only names members")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::movement;
    use crate::store::SLOT_COUNT;

    use crate::cluster::slotmap::test_node as node;

    #[test]
    fn a_grid_grows_by_joins_and_every_change_bumps_the_epoch() {
        let mut g = GridState::new(node(1, "a"), 1);
        assert_eq!(g.map.epoch, 1);
        assert!(g.map.slots.iter().all(|o| o.primary == Some(0) && o.replicas.is_empty()));
        assert!(g.apply(&GridCommand::Join(node(2, "b"))));
        assert!(g.apply(&GridCommand::Join(node(3, "c"))));
        assert_eq!(g.map.epoch, 3);
        assert_eq!(g.map.nodes.len(), 3);
        assert_eq!(g.map.assigned_slots(), SLOT_COUNT);
        assert!(g.map.slots.iter().all(|o| o.replicas.len() == 1));
    }

    #[test]
    fn replaying_a_join_changes_nothing() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        let before = g.clone();
        assert!(!g.apply(&GridCommand::Join(node(2, "b"))));
        assert_eq!(g, before);
        // A new address is a change, but moves no slot.
        let mut moved = node(2, "b");
        moved.port = 9999;
        assert!(g.apply(&GridCommand::Join(moved)));
        assert_eq!(g.map.epoch, before.map.epoch + 1);
        assert_eq!(movement(&before.map.assignment(), &g.map.assignment()).new_copies, 0);
    }

    #[test]
    fn a_leave_hands_its_slots_to_the_others_and_the_last_node_stays() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        assert!(g.apply(&GridCommand::Leave(NodeId([1; 20]))));
        assert_eq!(g.map.nodes.len(), 1);
        assert!(g.map.slots.iter().all(|o| o.primary == Some(0)));
        assert!(!g.apply(&GridCommand::Leave(NodeId([2; 20]))), "the last member cannot leave");
        assert!(!g.apply(&GridCommand::Leave(NodeId([9; 20]))), "unknown nodes are ignored");
    }

    #[test]
    fn nodes_applying_the_same_log_agree_on_the_map() {
        let log = vec![
            GridCommand::Join(node(2, "b")),
            GridCommand::Join(node(3, "c")),
            GridCommand::Join(node(4, "a")),
            GridCommand::Leave(NodeId([2; 20])),
            GridCommand::Join(node(5, "b")),
        ];
        // The log as it would travel: encoded with bincode.
        let bytes = bincode::serde::encode_to_vec(&log, bincode::config::standard()).unwrap();
        let (decoded, _): (Vec<GridCommand>, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        let run = |cmds: &[GridCommand]| {
            let mut g = GridState::new(node(1, "a"), 1);
            for c in cmds {
                g.apply(c);
            }
            g
        };
        let (a, b) = (run(&log), run(&decoded));
        assert_eq!(a, b);
        assert_eq!(a.map.epoch, 6);
        // A snapshot of the state round-trips too.
        let snap = bincode::serde::encode_to_vec(&a, bincode::config::standard()).unwrap();
        let (back, _): (GridState, _) =
            bincode::serde::decode_from_slice(&snap, bincode::config::standard()).unwrap();
        assert_eq!(back, a);
    }
}
