//! The slot map: which node is primary and which are replicas of every one of the 16384 hash
//! slots, the nodes' addresses and zones, slots being migrated, and the configuration epoch
//! that orders maps. It is what the consensus log agrees on and what routing and CLUSTER
//! SLOTS/SHARDS/NODES read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::node_id::NodeId;
use super::placement::SlotAssignment;
use crate::store::SLOT_COUNT;

/// Inclusive ranges of the slots for which `member` is true (slot `i` is the iterator's `i`th
/// item), adjacent slots joined: how the admin port, the CLI and the logs show slot sets.
pub fn slot_ranges(member: impl Iterator<Item = bool>) -> Vec<[u16; 2]> {
    let mut out: Vec<[u16; 2]> = Vec::new();
    for (slot, yes) in member.enumerate() {
        if !yes {
            continue;
        }
        let slot = slot as u16;
        match out.last_mut() {
            Some(last) if last[1] + 1 == slot => last[1] = slot,
            _ => out.push([slot, slot]),
        }
    }
    out
}

/// A slot range as text: `0-5460`, or `7` for a range of one slot.
pub fn range_text([first, last]: &[u16; 2]) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// A member of the grid as clients and peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Persistent identity.
    pub id: NodeId,
    /// Host or IP clients connect to.
    pub host: String,
    /// Client port (Redis protocol).
    pub port: u16,
    /// Cluster bus port (node-to-node traffic); 0 when none is announced.
    pub bus_port: u16,
    /// Failure zone (rack, availability zone): replicas avoid their primary's zone.
    pub zone: String,
    /// TLS client port; 0 when the node has none (and in maps written before TLS existed).
    /// Equal to `port` on a TLS-only node.
    #[serde(default)]
    pub tls_port: u16,
}

impl NodeInfo {
    /// `host:port`, as MOVED and ASK name a node.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The port a client on TLS (`tls`) or plaintext is sent to: the TLS port when it asks
    /// over TLS and the node has one.
    pub fn client_port(&self, tls: bool) -> u16 {
        if tls && self.tls_port != 0 {
            self.tls_port
        } else {
            self.port
        }
    }

    /// `host:port` for a client on TLS or plaintext (MOVED, ASK).
    pub fn endpoint_for(&self, tls: bool) -> String {
        format!("{}:{}", self.host, self.client_port(tls))
    }
}

/// Owners of one slot, as indexes into [`SlotMap::nodes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owners {
    /// The node serving reads and writes; None while the slot is unassigned.
    pub primary: Option<u16>,
    /// Nodes holding copies.
    pub replicas: Vec<u16>,
}

/// A slot on its way from one primary to another (ASK/TRYAGAIN during the move).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// The primary handing the slot over (still its primary in the map).
    pub from: u16,
    /// The node importing it.
    pub to: u16,
}

/// The agreed layout of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "wire::SlotMapWire", into = "wire::SlotMapWire")]
pub struct SlotMap {
    /// Configuration epoch: increases with every change, so the newest map wins.
    pub epoch: u64,
    /// Members, sorted by id.
    pub nodes: Vec<NodeInfo>,
    /// Owners of each slot; always [`SLOT_COUNT`] long.
    pub slots: Vec<Owners>,
    /// Slots being moved, by slot.
    pub migrations: BTreeMap<u16, Migration>,
}

/// A slot map that does not hold together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotMapError {
    /// Slot ranges do not cover 0..16384 exactly once.
    #[error("slot ranges must cover 0..16384 in order, once")]
    BadRanges,
    /// A slot or migration names a node that is not in the map.
    #[error("slot {0} names an unknown node")]
    UnknownNode(u16),
    /// The same node id appears twice.
    #[error("node {0} appears twice")]
    DuplicateNode(NodeId),
    /// A migration names a slot outside 0..16384 or goes from a node that is not its primary.
    #[error("migration of slot {0} is inconsistent")]
    BadMigration(u16),
}

impl SlotMap {
    /// A map at `epoch` with `nodes` and per-slot owners given by node id (as placement
    /// computes them). Nodes are sorted by id; unknown ids in `assignment` are an error.
    pub fn from_assignment(
        epoch: u64,
        mut nodes: Vec<NodeInfo>,
        assignment: &[SlotAssignment],
    ) -> Result<SlotMap, SlotMapError> {
        nodes.sort_by_key(|n| n.id);
        if let Some(w) = nodes.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SlotMapError::DuplicateNode(w[0].id));
        }
        if assignment.len() != SLOT_COUNT {
            return Err(SlotMapError::BadRanges);
        }
        let index = |slot: usize, id: &NodeId| {
            nodes
                .binary_search_by_key(id, |n| n.id)
                .map(|i| i as u16)
                .map_err(|_| SlotMapError::UnknownNode(slot as u16))
        };
        let mut slots = Vec::with_capacity(SLOT_COUNT);
        for (slot, a) in assignment.iter().enumerate() {
            let primary = a.primary.as_ref().map(|p| index(slot, p)).transpose()?;
            let replicas = a.replicas.iter().map(|r| index(slot, r)).collect::<Result<_, _>>()?;
            slots.push(Owners { primary, replicas });
        }
        Ok(SlotMap { epoch, nodes, slots, migrations: BTreeMap::new() })
    }

    /// Per-slot owners by node id: the input placement needs to keep what can stay.
    pub fn assignment(&self) -> Vec<SlotAssignment> {
        self.slots
            .iter()
            .map(|o| SlotAssignment {
                primary: o.primary.map(|i| self.nodes[i as usize].id),
                replicas: o.replicas.iter().map(|&i| self.nodes[i as usize].id).collect(),
            })
            .collect()
    }

    /// Index of node `id` in [`SlotMap::nodes`].
    pub fn index_of(&self, id: &NodeId) -> Option<u16> {
        self.nodes.binary_search_by_key(id, |n| n.id).ok().map(|i| i as u16)
    }

    /// The node at `index`.
    pub fn node(&self, index: u16) -> &NodeInfo {
        &self.nodes[index as usize]
    }

    /// Maximal runs of consecutive slots with identical owners: `(first, last, owners)`.
    /// CLUSTER SLOTS/SHARDS/NODES print these, and the wire form stores them.
    pub fn ranges(&self) -> Vec<(u16, u16, &Owners)> {
        let mut out: Vec<(u16, u16, &Owners)> = Vec::new();
        for (slot, owners) in self.slots.iter().enumerate() {
            match out.last_mut() {
                Some((_, last, o)) if *o == owners => *last = slot as u16,
                _ => out.push((slot as u16, slot as u16, owners)),
            }
        }
        out
    }

    /// Number of slots with a primary.
    pub fn assigned_slots(&self) -> usize {
        self.slots.iter().filter(|o| o.primary.is_some()).count()
    }

    /// Checks the invariants deserialization and construction rely on.
    pub fn validate(&self) -> Result<(), SlotMapError> {
        if self.slots.len() != SLOT_COUNT {
            return Err(SlotMapError::BadRanges);
        }
        if let Some(w) = self.nodes.windows(2).find(|w| w[0].id >= w[1].id) {
            return Err(SlotMapError::DuplicateNode(w[1].id));
        }
        let n = self.nodes.len();
        for (slot, o) in self.slots.iter().enumerate() {
            if o.primary.iter().chain(&o.replicas).any(|&i| i as usize >= n) {
                return Err(SlotMapError::UnknownNode(slot as u16));
            }
        }
        for (&slot, m) in &self.migrations {
            let ok = (slot as usize) < SLOT_COUNT
                && (m.to as usize) < n
                && m.from != m.to
                && self.slots[slot as usize].primary == Some(m.from);
            if !ok {
                return Err(SlotMapError::BadMigration(slot));
            }
        }
        Ok(())
    }
}

/// The serialized form: slots as ranges, so a map is a few kilobytes rather than 16384
/// entries, and checked on the way in.
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub struct SlotMapWire {
        epoch: u64,
        nodes: Vec<NodeInfo>,
        ranges: Vec<(u16, u16, Owners)>,
        migrations: Vec<(u16, Migration)>,
    }

    impl From<SlotMap> for SlotMapWire {
        fn from(m: SlotMap) -> Self {
            let ranges = m.ranges().into_iter().map(|(a, b, o)| (a, b, o.clone())).collect();
            SlotMapWire {
                epoch: m.epoch,
                nodes: m.nodes,
                ranges,
                migrations: m.migrations.into_iter().collect(),
            }
        }
    }

    impl TryFrom<SlotMapWire> for SlotMap {
        type Error = SlotMapError;

        fn try_from(w: SlotMapWire) -> Result<Self, SlotMapError> {
            let mut slots = Vec::with_capacity(SLOT_COUNT);
            for (first, last, owners) in w.ranges {
                if first as usize != slots.len() || last < first || last as usize >= SLOT_COUNT {
                    return Err(SlotMapError::BadRanges);
                }
                slots.extend(std::iter::repeat_n(owners, (last - first) as usize + 1));
            }
            let map = SlotMap {
                epoch: w.epoch,
                nodes: w.nodes,
                slots,
                migrations: w.migrations.into_iter().collect(),
            };
            map.validate()?;
            Ok(map)
        }
    }
}

/// Node `i` of zone `zone` on 127.0.0.1, for the cluster module's tests.
#[cfg(test)]
pub(crate) fn test_node(i: u8, zone: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId([i; 20]),
        host: "127.0.0.1".into(),
        port: 7000 + i as u16,
        bus_port: 17000 + i as u16,
        zone: zone.into(),
        tls_port: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::{place, Member};

    use super::test_node as node;

    fn three_node_map() -> SlotMap {
        let nodes = vec![node(3, "c"), node(1, "a"), node(2, "b")];
        let members: Vec<Member> = nodes.iter().map(|n| Member { id: n.id, zone: n.zone.clone() }).collect();
        let assignment = place(&members, 1, &[]);
        SlotMap::from_assignment(7, nodes, &assignment).unwrap()
    }

    #[test]
    fn nodes_are_sorted_and_slots_refer_to_them() {
        let map = three_node_map();
        assert_eq!(map.nodes.iter().map(|n| n.id.0[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(map.assigned_slots(), SLOT_COUNT);
        assert_eq!(map.index_of(&NodeId([2; 20])), Some(1));
        assert_eq!(
            SlotMap::from_assignment(1, map.nodes.clone(), &map.assignment()).unwrap().slots,
            map.slots
        );
    }

    #[test]
    fn round_trips_through_bincode_and_json_as_ranges() {
        let mut map = three_node_map();
        map.migrations.insert(5, Migration { from: map.slots[5].primary.unwrap(), to: 2 });
        if map.slots[5].primary == Some(2) {
            map.migrations.get_mut(&5).unwrap().to = 1;
        }
        let bytes = bincode::serde::encode_to_vec(&map, bincode::config::standard()).unwrap();
        assert!(bytes.len() < 4096, "a 3-node map is a few ranges, got {} bytes", bytes.len());
        let (back, _): (SlotMap, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, map);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<SlotMap>(&json).unwrap(), map);
    }

    #[test]
    fn inconsistent_maps_are_refused_on_the_way_in() {
        let map = three_node_map();
        let mut json: serde_json::Value = serde_json::to_value(&map).unwrap();
        json["ranges"][0][1] = serde_json::json!(0); // first range shrinks to one slot: a gap follows
        assert!(
            serde_json::from_value::<SlotMap>(json.clone()).is_err(),
            "{}",
            &json["ranges"].to_string()[..200]
        );
        let mut bad = map.clone();
        bad.slots[10].replicas.push(9);
        assert_eq!(bad.validate(), Err(SlotMapError::UnknownNode(10)));
        let mut bad = map.clone();
        bad.migrations.insert(3, Migration { from: 0, to: 0 });
        assert_eq!(bad.validate(), Err(SlotMapError::BadMigration(3)));
    }

    #[test]
    fn slot_ranges_join_adjacent_slots() {
        let member = (0..20).map(|s| (2..5).contains(&s) || s == 7 || s >= 18);
        assert_eq!(slot_ranges(member), vec![[2, 4], [7, 7], [18, 19]]);
        assert_eq!(slot_ranges(std::iter::repeat_n(false, 4)), Vec::<[u16; 2]>::new());
        assert_eq!(range_text(&[2, 4]), "2-4");
        assert_eq!(range_text(&[7, 7]), "7");
    }

    #[test]
    fn ranges_merge_consecutive_slots_with_the_same_owners() {
        let map = three_node_map();
        let ranges = map.ranges();
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1 as usize, SLOT_COUNT - 1);
        assert!(ranges.windows(2).all(|w| w[0].1 + 1 == w[1].0 && w[0].2 != w[1].2));
    }
}
