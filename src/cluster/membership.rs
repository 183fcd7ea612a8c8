//! Membership as a deterministic state machine: the members of the grid and the slot map,
//! changed only by applying [`GridCommand`]s in order. This is the state the consensus log
//! (openraft, in `consensus`) replicates: every node applying the same commands holds the same
//! map, because placement is a pure function of membership, zones and the previous map.
//!
//! A slot whose primary changes while the old primary is still a member does not switch at
//! once: the map records a migration (old primary still serving, ASK for keys already moved),
//! the old primary moves the keys, and `SlotsMoved` hands the slot over. A member that leaves
//! gracefully keeps serving until its last slot has moved, then drops out of the map.
//!
//! Replicas change make-before-break too: a node that becomes a replica of a slot starts
//! empty and fills through a full sync, so until it reports `CaughtUp` the replicas placement
//! dropped from that slot stay in the map (retiring). A join or a leave therefore never
//! leaves a slot with fewer caught-up copies than before, and a failover promotes a
//! caught-up replica when there is one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::node_id::NodeId;
use super::placement::{place, Member, SlotAssignment};
use super::slotmap::{Migration, NodeInfo, SlotMap};

/// A change to the grid, as it is written to the consensus log.
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
    /// A member leaves gracefully: its slots migrate to the others, then it is removed.
    Leave(NodeId),
    /// A member is removed at once (it is gone for good): its slots go straight to others.
    Forget(NodeId),
    /// `from` has moved every key of `slots` to `to`: `to` becomes their primary.
    SlotsMoved {
        /// The old primary.
        from: NodeId,
        /// The new primary.
        to: NodeId,
        /// Slots handed over.
        slots: Vec<u16>,
    },
    /// A member restarted without its data (keys live in memory): its slots fail over to
    /// their replicas as if it had died, and it is placed again as a newcomer, whose replicas
    /// sync and whose primaries migrate to it. A member alone keeps its slots.
    Restarted(NodeInfo),
    /// `node` holds a full copy of `slots` it replicates (its full sync from their primary,
    /// asked for under the map of `epoch`, is complete): the replicas it replaces may go.
    CaughtUp {
        /// The replica.
        node: NodeId,
        /// The map epoch the full sync was asked for under: a replica that has lost and
        /// regained a slot since syncs it again, and this report does not count for it.
        epoch: u64,
        /// Slots it has caught up on.
        slots: Vec<u16>,
    },
}

/// Members and the slot map they agreed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridState {
    /// Replicas per slot (R).
    pub replicas: usize,
    /// Current members by id (leaving ones included until they hold nothing).
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// The slot map for these members; its epoch counts map changes.
    pub map: SlotMap,
    /// Members on their way out: placed nowhere, serving only what has not moved yet.
    #[serde(default)]
    pub leaving: BTreeSet<NodeId>,
    /// Replicas still filling through their first full sync, by slot, with the epoch of the
    /// map that made them replicas.
    #[serde(default)]
    pub syncing: BTreeMap<u16, BTreeMap<NodeId, u64>>,
    /// Caught-up replicas placement has dropped from a slot, kept (listed after the placed
    /// replicas) until the slot neither migrates nor has a replica syncing.
    #[serde(default)]
    pub retiring: BTreeMap<u16, BTreeSet<NodeId>>,
}

/// Slot owners and migrations by node id, the form changes are computed in.
struct Layout {
    assignment: Vec<SlotAssignment>,
    migrations: BTreeMap<u16, (NodeId, NodeId)>,
}

impl GridState {
    /// A grid of `first` alone, primary of every slot (epoch 1).
    pub fn new(first: NodeInfo, replicas: usize) -> GridState {
        let members = BTreeMap::from([(first.id, first.clone())]);
        let assignment = place(&[Member { id: first.id, zone: first.zone }], replicas, &[]);
        let map = SlotMap::from_assignment(1, members.values().cloned().collect(), &assignment)
            .expect("placement only names members");
        GridState {
            replicas,
            members,
            map,
            leaving: BTreeSet::new(),
            syncing: BTreeMap::new(),
            retiring: BTreeMap::new(),
        }
    }

    /// Members that take slots: everyone but the leaving.
    pub fn active(&self) -> impl Iterator<Item = &NodeInfo> {
        self.members.values().filter(|n| !self.leaving.contains(&n.id))
    }

    /// Applies one command. Returns whether the slot map changed (and its epoch increased);
    /// a command that changes nothing, like a repeated join, leaves the epoch alone.
    pub fn apply(&mut self, command: &GridCommand) -> bool {
        let layout = match command {
            // Only meaningful before a grid exists (see the consensus state machine).
            GridCommand::Bootstrap { .. } => return false,
            GridCommand::Join(info) => {
                if self.members.get(&info.id) == Some(info) && !self.leaving.contains(&info.id) {
                    return false;
                }
                self.leaving.remove(&info.id);
                self.members.insert(info.id, info.clone());
                self.replace(self.layout())
            }
            GridCommand::Leave(id) => {
                // The last active member stays: a grid of none cannot serve anything.
                if !self.members.contains_key(id) || self.leaving.contains(id) || self.active().count() == 1 {
                    return false;
                }
                self.leaving.insert(*id);
                self.replace(self.layout())
            }
            GridCommand::Forget(id) => {
                if !self.members.contains_key(id) || self.active().filter(|n| n.id != *id).count() == 0 {
                    return false;
                }
                self.members.remove(id);
                self.leaving.remove(id);
                self.replace(self.layout())
            }
            GridCommand::SlotsMoved { from, to, slots } => {
                let mut layout = self.layout();
                let mut moved = false;
                for &slot in slots {
                    if layout.migrations.get(&slot) == Some(&(*from, *to)) {
                        layout.migrations.remove(&slot);
                        layout.assignment[slot as usize].primary = Some(*to);
                        moved = true;
                    }
                }
                if !moved {
                    return false;
                }
                // Placing again restores the replicas the migration left out (the old primary
                // usually stays a replica); placement is stable, so nothing else moves.
                self.replace(layout)
            }
            GridCommand::Restarted(info) => {
                let forgotten = self.apply(&GridCommand::Forget(info.id));
                return self.apply(&GridCommand::Join(info.clone())) || forgotten;
            }
            GridCommand::CaughtUp { node, epoch, slots } => {
                let layout = self.layout();
                let mut released = false;
                for slot in slots {
                    let Some(set) = self.syncing.get_mut(slot) else { continue };
                    if set.get(node).is_some_and(|since| since <= epoch) {
                        set.remove(node);
                        if set.is_empty() {
                            self.syncing.remove(slot);
                            released |=
                                self.retiring.contains_key(slot) && !self.map.migrations.contains_key(slot);
                        }
                    }
                }
                if !released {
                    // Recorded (a failover now prefers this replica), but the map is the same.
                    return false;
                }
                layout
            }
        };
        self.track_replicas(&layout);
        let layout = self.finish_leavers(layout);
        self.map = build(self.map.epoch + 1, &self.members, &layout, &self.retiring);
        true
    }

    /// Updates which replicas are syncing and which are retiring, going from the map in force
    /// to `next`: a node that becomes a replica of a slot syncs; a caught-up replica that
    /// `next` drops stays, retiring, while any replica of the slot syncs or the slot migrates.
    fn track_replicas(&mut self, next: &Layout) {
        let previous = &self.map;
        // The epoch of the map being built: when a new replica started syncing.
        let epoch = previous.epoch + 1;
        for (slot, a) in next.assignment.iter().enumerate() {
            let slot16 = slot as u16;
            let owners = &previous.slots[slot];
            let was_replica: BTreeSet<NodeId> =
                owners.replicas.iter().map(|&i| previous.node(i).id).collect();
            let was_syncing = self.syncing.remove(&slot16).unwrap_or_default();
            let target = next.migrations.get(&slot16).map(|(_, to)| *to);
            let syncing: BTreeMap<NodeId, u64> = a
                .replicas
                .iter()
                .filter_map(|r| match was_syncing.get(r) {
                    Some(&since) => Some((*r, since)),
                    None => (!was_replica.contains(r)).then_some((*r, epoch)),
                })
                .collect();
            let mut retiring = self.retiring.remove(&slot16).unwrap_or_default();
            // While the slot moves, its target fills too (and the map lists neither end as
            // a replica): the old replicas are the caught-up copies a failover needs.
            if !syncing.is_empty() || target.is_some() {
                retiring.extend(was_replica.iter().filter(|r| !was_syncing.contains_key(r)));
                retiring.retain(|r| {
                    self.members.contains_key(r)
                        && Some(*r) != a.primary
                        && Some(*r) != target
                        && !a.replicas.contains(r)
                });
                if !retiring.is_empty() {
                    self.retiring.insert(slot16, retiring);
                }
                if !syncing.is_empty() {
                    self.syncing.insert(slot16, syncing);
                }
            }
        }
    }

    /// The current map by node id, retiring replicas left out (they are not placed; they
    /// are added back when the map is built).
    fn layout(&self) -> Layout {
        let id = |i: u16| self.map.nodes[i as usize].id;
        let mut assignment = self.map.assignment();
        for (slot, retiring) in &self.retiring {
            assignment[*slot as usize].replicas.retain(|r| !retiring.contains(r));
        }
        Layout {
            assignment,
            migrations: self.map.migrations.iter().map(|(&s, m)| (s, (id(m.from), id(m.to)))).collect(),
        }
    }

    /// Re-places slots on the active members, starting from `current`: a slot whose primary
    /// changes keeps its old primary (if still a member) with a migration to the new one;
    /// migrations under way keep going while both ends are members.
    fn replace(&self, current: Layout) -> Layout {
        let is_member = |id: &NodeId| self.members.contains_key(id);
        let is_active = |id: &NodeId| is_member(id) && !self.leaving.contains(id);
        // For placement, a slot under way counts as already at its target: minimal movement
        // then keeps the target, and the migration need not change course.
        let mut previous = current.assignment.clone();
        for (&slot, (_, to)) in &current.migrations {
            previous[slot as usize].primary = Some(*to);
        }
        for a in &mut previous {
            a.primary = a.primary.filter(is_member);
            a.replicas.retain(is_member);
        }
        let active: Vec<Member> = self.active().map(|n| Member { id: n.id, zone: n.zone.clone() }).collect();
        let target = place(&active, self.replicas, &previous);
        let mut next = Layout { assignment: Vec::with_capacity(target.len()), migrations: BTreeMap::new() };
        for (slot, t) in target.into_iter().enumerate() {
            let now = current.assignment[slot].primary.filter(is_member);
            let under_way =
                current.migrations.get(&(slot as u16)).filter(|(f, to)| is_member(f) && is_active(to));
            // A migration whose target is gone (failed over) or leaving stops. The keys already
            // moved are no longer on the source, but the slot's replicas hold every key (the
            // source's changes and the target's writes both went to them), so one of them
            // takes the slot over, as if the source were gone; the source syncs again from it.
            let aborted = under_way.is_none() && current.migrations.contains_key(&(slot as u16));
            let heir =
                if aborted { self.successor(slot as u16, &current.assignment[slot].replicas) } else { None };
            let (primary, migration) = match (now, under_way, t.primary) {
                (Some(p), Some(&(_, to)), _) => (Some(p), Some((p, to))),
                (Some(_), None, t) if heir.is_some() => match (heir, t) {
                    (Some(r), Some(t)) if r != t => (Some(r), Some((r, t))),
                    (r, _) => (r, None),
                },
                (Some(p), None, Some(t)) if p != t => (Some(p), Some((p, t))),
                (Some(p), None, _) => (Some(p), None),
                // The primary is gone: a surviving replica (it holds the data) takes over, and
                // hands the slot on if placement wants it elsewhere.
                (None, _, t) => match self.successor(slot as u16, &current.assignment[slot].replicas) {
                    Some(r) if Some(r) != t => (Some(r), t.map(|t| (r, t))),
                    _ => (t, None),
                },
            };
            // A migration's target is not a replica meanwhile: a replica applies its primary's
            // batches, and a late one would undo what the target imported or wrote since.
            let target = migration.map(|(_, to)| to);
            let replicas =
                t.replicas.into_iter().filter(|r| Some(*r) != primary && Some(*r) != target).collect();
            next.assignment.push(SlotAssignment { primary, replicas });
            if let Some(m) = migration {
                next.migrations.insert(slot as u16, m);
            }
        }
        next
    }

    /// The replica of `slot` to promote when its primary is gone: a caught-up one (placed,
    /// then retiring) before one still syncing, which holds only part of the data.
    fn successor(&self, slot: u16, placed: &[NodeId]) -> Option<NodeId> {
        let active = |r: &&NodeId| self.members.contains_key(r) && !self.leaving.contains(r);
        let syncing = self.syncing.get(&slot);
        let retiring = self.retiring.get(&slot).into_iter().flatten();
        let caught_up = placed.iter().filter(|r| !syncing.is_some_and(|s| s.contains_key(r))).chain(retiring);
        caught_up.chain(placed.iter()).find(active).copied()
    }

    /// Removes leaving members that no longer serve or receive any slot.
    fn finish_leavers(&mut self, layout: Layout) -> Layout {
        let busy: BTreeSet<NodeId> = layout
            .assignment
            .iter()
            .filter_map(|a| a.primary)
            .chain(layout.migrations.values().flat_map(|(f, t)| [*f, *t]))
            // A leaver holding a copy others still sync waits for them.
            .chain(self.retiring.values().flatten().copied())
            .collect();
        let done: Vec<NodeId> = self.leaving.iter().filter(|id| !busy.contains(id)).copied().collect();
        for id in &done {
            self.leaving.remove(id);
            self.members.remove(id);
        }
        for set in self.syncing.values_mut() {
            set.retain(|r, _| !done.contains(r));
        }
        self.syncing.retain(|_, set| !set.is_empty());
        let mut layout = layout;
        for a in &mut layout.assignment {
            a.replicas.retain(|r| !done.contains(r));
        }
        layout
    }
}

fn build(
    epoch: u64,
    members: &BTreeMap<NodeId, NodeInfo>,
    layout: &Layout,
    retiring: &BTreeMap<u16, BTreeSet<NodeId>>,
) -> SlotMap {
    let mut assignment = layout.assignment.clone();
    for (slot, nodes) in retiring {
        assignment[*slot as usize].replicas.extend(nodes.iter().filter(|n| members.contains_key(n)));
    }
    let mut map = SlotMap::from_assignment(epoch, members.values().cloned().collect(), &assignment)
        .expect("placement only names members");
    for (&slot, (from, to)) in &layout.migrations {
        let (Some(from), Some(to)) = (map.index_of(from), map.index_of(to)) else { continue };
        map.migrations.insert(slot, Migration { from, to });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::movement;
    use crate::store::SLOT_COUNT;

    use crate::cluster::slotmap::test_node as node;

    /// What the movers do: report every migration under way as done, until none is left (a
    /// slot re-targeted while it moved moves once more).
    /// And what replicas do: report every full sync done.
    fn settle(g: &mut GridState) {
        for _ in 0..3 {
            let mut by_pair: BTreeMap<(NodeId, NodeId), Vec<u16>> = BTreeMap::new();
            for (&slot, m) in &g.map.migrations {
                by_pair.entry((g.map.node(m.from).id, g.map.node(m.to).id)).or_default().push(slot);
            }
            for ((from, to), slots) in by_pair {
                assert!(g.apply(&GridCommand::SlotsMoved { from, to, slots }));
            }
            catch_up(g);
        }
        assert!(g.map.migrations.is_empty());
        assert!(g.syncing.is_empty() && g.retiring.is_empty());
    }

    /// Every syncing replica reports its full sync done.
    fn catch_up(g: &mut GridState) {
        let mut by_node: BTreeMap<NodeId, Vec<u16>> = BTreeMap::new();
        for (&slot, nodes) in &g.syncing {
            for n in nodes.keys() {
                by_node.entry(*n).or_default().push(slot);
            }
        }
        let epoch = g.map.epoch;
        for (node, slots) in by_node {
            g.apply(&GridCommand::CaughtUp { node, epoch, slots });
        }
    }

    fn ids(g: &GridState, indexes: &[u16]) -> Vec<NodeId> {
        indexes.iter().map(|&i| g.map.node(i).id).collect()
    }

    /// A settled grid of three (zones a, b, c, R = 1).
    fn settled_three() -> GridState {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        g.apply(&GridCommand::Join(node(3, "c")));
        settle(&mut g);
        g
    }

    #[test]
    fn a_replica_placement_drops_stays_until_its_successor_has_caught_up() {
        let mut g = settled_three();
        let before: Vec<Vec<NodeId>> = g.map.slots.iter().map(|o| ids(&g, &o.replicas)).collect();
        assert!(g.apply(&GridCommand::Join(node(4, "a"))));
        let newcomer = NodeId([4; 20]);
        let mut replaced = 0;
        for (slot, o) in g.map.slots.iter().enumerate() {
            let now = ids(&g, &o.replicas);
            // Every caught-up copy is still listed, moving slots included (whose new primary
            // is importing and whose old one is no replica yet).
            let primary = g.map.node(o.primary.unwrap()).id;
            let target = g.map.migrations.get(&(slot as u16)).map(|m| g.map.node(m.to).id);
            for r in &before[slot] {
                assert!(now.contains(r) || *r == primary || Some(*r) == target, "slot {slot}: {r:?} dropped");
            }
            if now.contains(&newcomer) && !before[slot].contains(&newcomer) {
                // The newcomer starts empty: every old caught-up replica is still listed.
                replaced += 1;
                assert!(before[slot].iter().all(|r| now.contains(r)), "slot {slot}: {before:?} -> {now:?}");
                assert!(g.syncing[&(slot as u16)].contains_key(&newcomer));
            }
        }
        assert!(replaced > 1000, "the newcomer replicates a share of the slots: {replaced}");
        settle(&mut g);
        assert!(g.map.slots.iter().all(|o| o.replicas.len() == 1), "the retiring replicas are gone");
    }

    #[test]
    fn a_failover_promotes_a_caught_up_replica_before_a_syncing_one() {
        let mut g = settled_three();
        g.apply(&GridCommand::Join(node(4, "c")));
        // A slot whose placed replica is the syncing newcomer and whose old replica retires.
        let (&slot, retiring) = g.retiring.iter().next().expect("some replica retires");
        let old = *retiring.iter().next().unwrap();
        let primary = g.map.node(g.map.slots[slot as usize].primary.unwrap()).id;
        assert!(g.apply(&GridCommand::Forget(primary)));
        let now = g.map.node(g.map.slots[slot as usize].primary.unwrap()).id;
        assert_eq!(now, old, "the caught-up replica, not the newcomer, takes slot {slot} over");
        g.map.validate().unwrap();
    }

    #[test]
    fn a_migration_whose_target_is_failed_over_hands_the_slot_to_a_replica_not_back_to_the_source() {
        let mut g = settled_three();
        g.apply(&GridCommand::Join(node(4, "a")));
        let joiner = NodeId([4; 20]);
        let migrating: Vec<(u16, NodeId, Vec<NodeId>)> = g
            .map
            .migrations
            .iter()
            .map(|(&slot, m)| {
                let o = &g.map.slots[slot as usize];
                (slot, g.map.node(m.from).id, ids(&g, &o.replicas))
            })
            .collect();
        assert!(!migrating.is_empty());
        // The joiner dies mid-migration: the source may have moved some keys to it already.
        assert!(g.apply(&GridCommand::Forget(joiner)));
        for (slot, source, replicas) in migrating {
            let now = g.map.node(g.map.slots[slot as usize].primary.unwrap()).id;
            assert_ne!(now, source, "slot {slot}: the source lacks the keys it moved");
            assert!(replicas.contains(&now), "slot {slot}: a replica, which holds every key, serves it");
        }
        g.map.validate().unwrap();
        settle(&mut g);
    }

    #[test]
    fn a_restarted_member_gives_its_slots_to_their_replicas_and_is_placed_again() {
        let mut g = settled_three();
        let restarted = NodeId([2; 20]);
        let before = g.map.assignment();
        assert!(g.apply(&GridCommand::Restarted(node(2, "b"))));
        for (slot, a) in before.iter().enumerate() {
            let now = &g.map.slots[slot];
            let primary = g.map.node(now.primary.unwrap()).id;
            if a.primary == Some(restarted) {
                // Its keys are gone: the replica that holds them serves the slot.
                assert_eq!(Some(primary), a.replicas.first().copied(), "slot {slot}");
            }
            if ids(&g, &now.replicas).contains(&restarted) {
                assert!(g.syncing[&(slot as u16)].contains_key(&restarted), "an empty replica syncs");
            }
        }
        settle(&mut g);
        assert_eq!(primaries_of(&g, restarted), SLOT_COUNT / 3, "placed again with its share");
    }

    #[test]
    fn a_member_alone_keeps_its_slots_when_it_restarts() {
        let mut g = GridState::new(node(1, "a"), 1);
        let before = g.clone();
        assert!(!g.apply(&GridCommand::Restarted(node(1, "a"))));
        assert_eq!(g, before);
    }

    #[test]
    fn a_report_from_before_a_replica_lost_and_regained_its_slot_does_not_count() {
        let mut g = settled_three();
        g.apply(&GridCommand::Join(node(4, "c")));
        let (&slot, nodes) = g.syncing.iter().next().unwrap();
        let (&n, &since) = nodes.iter().next().unwrap();
        let before = g.clone();
        g.apply(&GridCommand::CaughtUp { node: n, epoch: since - 1, slots: vec![slot] });
        assert_eq!(g, before, "a full sync asked for before the node became a replica again");
        g.apply(&GridCommand::CaughtUp { node: n, epoch: since, slots: vec![slot] });
        assert!(!g.syncing.get(&slot).is_some_and(|s| s.contains_key(&n)));
    }

    fn primaries_of(g: &GridState, id: NodeId) -> usize {
        let i = g.map.index_of(&id);
        g.map.slots.iter().filter(|o| o.primary.is_some() && o.primary == i).count()
    }

    #[test]
    fn a_join_migrates_slots_to_the_new_member_and_the_handover_bumps_the_epoch() {
        let mut g = GridState::new(node(1, "a"), 1);
        assert_eq!(g.map.epoch, 1);
        assert!(g.map.slots.iter().all(|o| o.primary == Some(0) && o.replicas.is_empty()));
        assert!(g.apply(&GridCommand::Join(node(2, "b"))));
        // The old primary keeps serving until its keys have moved.
        assert_eq!(primaries_of(&g, NodeId([1; 20])), SLOT_COUNT);
        assert_eq!(g.map.migrations.len(), SLOT_COUNT / 2);
        g.map.validate().unwrap();
        settle(&mut g);
        assert_eq!(primaries_of(&g, NodeId([2; 20])), SLOT_COUNT / 2);
        assert!(g.apply(&GridCommand::Join(node(3, "c"))));
        settle(&mut g);
        assert_eq!(g.map.nodes.len(), 3);
        assert_eq!(g.map.assigned_slots(), SLOT_COUNT);
        assert!(g
            .map
            .slots
            .iter()
            .all(|o| o.replicas.len() == 1 && !o.replicas.contains(&o.primary.unwrap())));
    }

    #[test]
    fn a_migrations_target_is_never_listed_as_a_replica_of_the_slot() {
        let mut g = GridState::new(node(1, "a"), 1);
        for (i, z) in [(2, "b"), (3, "c"), (4, "a")] {
            assert!(g.apply(&GridCommand::Join(node(i, z))));
            for (slot, m) in &g.map.migrations {
                assert!(!g.map.slots[*slot as usize].replicas.contains(&m.to), "slot {slot}");
            }
        }
        settle(&mut g);
        assert!(g.map.slots.iter().all(|o| o.replicas.len() == 1), "replicas restored after the moves");
    }

    #[test]
    fn a_stale_or_repeated_handover_changes_nothing() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        let slot = *g.map.migrations.keys().next().unwrap();
        let moved = GridCommand::SlotsMoved { from: NodeId([1; 20]), to: NodeId([2; 20]), slots: vec![slot] };
        assert!(g.apply(&moved));
        let before = g.clone();
        assert!(!g.apply(&moved), "a replayed handover");
        let wrong = GridCommand::SlotsMoved { from: NodeId([2; 20]), to: NodeId([1; 20]), slots: vec![slot] };
        assert!(!g.apply(&wrong), "a handover no migration asked for");
        assert_eq!(g, before);
    }

    #[test]
    fn replaying_a_join_changes_nothing() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        settle(&mut g);
        let before = g.clone();
        assert!(!g.apply(&GridCommand::Join(node(2, "b"))));
        assert_eq!(g, before);
        // A new address is a change, but moves no slot.
        let mut moved = node(2, "b");
        moved.port = 9999;
        assert!(g.apply(&GridCommand::Join(moved)));
        assert_eq!(g.map.epoch, before.map.epoch + 1);
        assert!(g.map.migrations.is_empty());
        assert_eq!(movement(&before.map.assignment(), &g.map.assignment()).new_copies, 0);
    }

    #[test]
    fn a_leaver_serves_until_its_slots_have_moved_and_the_last_node_stays() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        settle(&mut g);
        assert!(g.apply(&GridCommand::Leave(NodeId([1; 20]))));
        assert_eq!(g.map.nodes.len(), 2, "still in the map while its keys move");
        assert_eq!(g.map.migrations.len(), SLOT_COUNT / 2);
        settle(&mut g);
        assert_eq!(g.map.nodes.len(), 1);
        assert!(g.members.len() == 1 && g.leaving.is_empty());
        assert!(g.map.slots.iter().all(|o| o.primary == Some(0)));
        assert!(!g.apply(&GridCommand::Leave(NodeId([2; 20]))), "the last member cannot leave");
        assert!(!g.apply(&GridCommand::Leave(NodeId([9; 20]))), "unknown nodes are ignored");
    }

    #[test]
    fn a_forgotten_member_loses_its_slots_at_once() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        settle(&mut g);
        assert!(g.apply(&GridCommand::Forget(NodeId([1; 20]))));
        assert!(g.map.migrations.is_empty());
        assert_eq!(g.map.nodes.len(), 1);
        assert!(g.map.slots.iter().all(|o| o.primary == Some(0)));
        assert!(!g.apply(&GridCommand::Forget(NodeId([2; 20]))), "the last member stays");
    }

    #[test]
    fn a_forgotten_primary_is_replaced_by_a_replica_of_each_slot() {
        let mut g = settled_three();
        let dead = NodeId([3; 20]);
        let before = g.map.assignment();
        assert!(g.apply(&GridCommand::Forget(dead)));
        // Every slot the dead node served is now served by the node that replicated it (or
        // moves on from there), never by a node without its data.
        for (slot, a) in before.iter().enumerate() {
            if a.primary == Some(dead) {
                let now = g.map.slots[slot].primary.map(|i| g.map.node(i).id);
                assert_eq!(now, a.replicas.first().copied(), "slot {slot}");
            }
        }
        g.map.validate().unwrap();
        settle(&mut g);
        assert_eq!(g.map.assigned_slots(), SLOT_COUNT);
    }

    #[test]
    fn a_join_during_migrations_keeps_them_on_course() {
        let mut g = GridState::new(node(1, "a"), 1);
        g.apply(&GridCommand::Join(node(2, "b")));
        let before: Vec<(u16, Migration)> = g.map.migrations.iter().map(|(s, m)| (*s, *m)).collect();
        g.apply(&GridCommand::Join(node(3, "c")));
        let id = |g: &GridState, i: u16| g.map.node(i).id;
        for (slot, m) in before {
            let now = g.map.migrations.get(&slot).expect("still under way");
            assert_eq!((id(&g, now.from), id(&g, now.to)), (NodeId([1; 20]), NodeId([2; 20])));
            let _ = m;
        }
        g.map.validate().unwrap();
        settle(&mut g);
        assert_eq!(g.map.assigned_slots(), SLOT_COUNT);
    }

    #[test]
    fn nodes_applying_the_same_log_agree_on_the_map() {
        let mut first = GridState::new(node(1, "a"), 1);
        let mut log = vec![GridCommand::Join(node(2, "b"))];
        first.apply(&log[0]);
        let (from, to) = (NodeId([1; 20]), NodeId([2; 20]));
        log.push(GridCommand::SlotsMoved { from, to, slots: first.map.migrations.keys().copied().collect() });
        log.extend([
            GridCommand::Join(node(3, "c")),
            GridCommand::Join(node(4, "a")),
            GridCommand::Leave(NodeId([2; 20])),
            GridCommand::Forget(NodeId([3; 20])),
            GridCommand::Join(node(5, "b")),
        ]);
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
        assert_eq!(a.map.epoch, 8);
        a.map.validate().unwrap();
        // A snapshot of the state round-trips too (JSON, as the Raft snapshot is written).
        let snap = serde_json::to_vec(&a).unwrap();
        let back: GridState = serde_json::from_slice(&snap).unwrap();
        assert_eq!(back, a);
    }
}
