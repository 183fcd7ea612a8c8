//! Write-behind across a failover. A primary's pending database writes live in its own
//! durable queue; if the primary dies for good, that queue dies with it. So a replica keeps,
//! for each key of a backed key space its primary has changed, a note: which primary sent it
//! and a version bound (the primary's write version counter when it read the batch, which
//! is at least the version of the change). The primary reports, per key space, a version up
//! to which everything is committed in Postgres; notes at or under it are dropped. When the
//! grid removes a primary (failed over or forgotten) and this node takes its slots, the
//! notes of those slots are written behind again from this node's copy, with this node's
//! (newer) versions: nothing the dead primary had not yet written is lost, and nothing is
//! written twice out of order (the upsert's version check).
//!
//! Keys a migration brings are noted the same way, with the source as sender: a source that
//! dies after handing a slot over has not always written the slot's keys yet. A sender still
//! in the map (a primary that restarted on its own directory replays its queue) keeps its
//! notes on the node that now serves the slot until its report covers them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;

use crate::cluster::state::{SlotRole, View};
use crate::cluster::NodeId;
use crate::store::key_slot;

/// Keys of backed key spaces changed by a primary and maybe not yet in Postgres (on a replica).
#[derive(Default)]
pub struct Handoff {
    inner: Mutex<Notes>,
    /// Records written behind again for primaries that left the grid (INFO).
    pub requeued: std::sync::atomic::AtomicU64,
}

/// A sender's notes of one key space, ordered by version bound.
type ByVersion = BTreeSet<(u64, Box<[u8]>)>;

#[derive(Default)]
struct Notes {
    /// Key → (sender, key space index, version bound, whether the sender had deleted it).
    by_key: HashMap<Box<[u8]>, (NodeId, usize, u64, bool)>,
    /// Per (sender, key space): the keys by version bound, to drop what a report covers.
    by_sender: BTreeMap<(NodeId, usize), ByVersion>,
}

impl Notes {
    fn remove(&mut self, key: &[u8]) {
        if let Some((from, space, upto, _)) = self.by_key.remove(key) {
            if let Some(set) = self.by_sender.get_mut(&(from, space)) {
                set.remove(&(upto, Box::from(key)));
                if set.is_empty() {
                    self.by_sender.remove(&(from, space));
                }
            }
        }
    }
}

/// What to do with the notes after a map change (see [`Handoff::map_changed`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// Keys to write behind again, with whether their primary had deleted them: it left the
    /// grid and this node now serves them.
    pub requeue: Vec<(Box<[u8]>, bool)>,
    /// Notes dropped: their primary still writes them, or the slot is no longer this node's.
    pub dropped: usize,
}

impl Handoff {
    /// Notes `keys` (each with its key space index and whether it was deleted) as changed by
    /// `from`, whose versions were at most `upto` when it read them.
    pub fn note<'k>(&self, from: NodeId, upto: u64, keys: impl IntoIterator<Item = (&'k [u8], usize, bool)>) {
        let mut n = self.inner.lock();
        for (key, space, deleted) in keys {
            n.remove(key);
            n.by_key.insert(key.into(), (from, space, upto, deleted));
            n.by_sender.entry((from, space)).or_default().insert((upto, key.into()));
        }
    }

    /// `from` reports every record of key space `space` up to version `upto` committed:
    /// its notes at or under it are dropped. Returns how many.
    pub fn committed(&self, from: NodeId, space: usize, upto: u64) -> usize {
        let mut n = self.inner.lock();
        let Some(set) = n.by_sender.get_mut(&(from, space)) else { return 0 };
        let keep = set.split_off(&(upto.saturating_add(1), Box::default()));
        let done = std::mem::replace(set, keep);
        if set.is_empty() {
            n.by_sender.remove(&(from, space));
        }
        for (_, key) in &done {
            n.by_key.remove(key);
        }
        done.len()
    }

    /// After a map change: notes of a sender that left the grid are handed over (slots this
    /// node is now primary of) or dropped (slots it does not serve); notes of a sender still
    /// in the grid stay while this node replicates the sender's slot or serves it, until the
    /// sender's report covers them, and are dropped otherwise.
    pub fn map_changed(&self, view: &View) -> Takeover {
        let mut n = self.inner.lock();
        let mut out = Takeover::default();
        let senders: Vec<(NodeId, usize)> = n.by_sender.keys().copied().collect();
        for (from, space) in senders {
            let member = view.map.index_of(&from);
            let set = n.by_sender.get(&(from, space)).expect("listed");
            let mut gone = Vec::new();
            for (_, key) in set {
                let slot = key_slot(key);
                let keep = match member {
                    // A replica of the sender's slot, or the node its slot moved to (the
                    // sender still has to write what it queued before the move).
                    Some(i) => match view.role(slot) {
                        SlotRole::Replica => {
                            view.map.slots[slot as usize].primary == Some(i)
                                || view.map.migrations.get(&slot).is_some_and(|m| m.to == i)
                        }
                        SlotRole::Primary | SlotRole::Importing => true,
                        SlotRole::None => false,
                    },
                    None => {
                        if view.role(slot) == SlotRole::Primary {
                            let deleted = n.by_key.get(key).is_some_and(|e| e.3);
                            out.requeue.push((key.clone(), deleted));
                        } else {
                            out.dropped += 1;
                        }
                        false
                    }
                };
                if !keep {
                    if member.is_some() {
                        out.dropped += 1;
                    }
                    gone.push(key.clone());
                }
            }
            for key in gone {
                n.remove(&key);
            }
        }
        out
    }

    /// Takes out the notes of keys in `slots` that another node than `me` sent, with whether
    /// each was deleted: the slots are leaving this node, and the notes cannot go with them
    /// (the target notes this node as the sender). See [`crate::persistence::Persistence::write_noted_before_leaving`].
    pub fn take_slots(&self, slots: &[u16], me: NodeId) -> Vec<(Box<[u8]>, bool)> {
        let mut n = self.inner.lock();
        if n.by_key.is_empty() {
            return Vec::new();
        }
        let slots: std::collections::HashSet<u16> = slots.iter().copied().collect();
        let taken: Vec<(Box<[u8]>, bool)> = n
            .by_key
            .iter()
            .filter(|(key, (from, ..))| *from != me && slots.contains(&key_slot(key)))
            .map(|(key, &(.., deleted))| (key.clone(), deleted))
            .collect();
        for (key, _) in &taken {
            n.remove(key);
        }
        taken
    }

    /// The senders with notes (primaries this node should ask for reports).
    pub fn senders(&self) -> Vec<NodeId> {
        let n = self.inner.lock();
        let mut out: Vec<NodeId> = n.by_sender.keys().map(|(s, _)| *s).collect();
        out.dedup();
        out
    }

    /// How many keys are noted.
    pub fn len(&self) -> usize {
        self.inner.lock().by_key.len()
    }

    /// Whether nothing is noted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::SlotAssignment;
    use crate::cluster::slotmap::{NodeInfo, SlotMap};

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    /// Node `me`'s view of a map where every slot has `primary` and `replicas` (node numbers).
    fn view(me: u8, nodes: &[u8], primary: u8, replicas: &[u8]) -> View {
        let info = |b: &u8| NodeInfo {
            id: id(*b),
            host: "127.0.0.1".into(),
            port: 7000 + *b as u16,
            bus_port: 17000 + *b as u16,
            zone: format!("z{b}"),
            tls_port: 0,
        };
        let a = SlotAssignment {
            primary: Some(id(primary)),
            replicas: replicas.iter().map(|r| id(*r)).collect(),
        };
        let map =
            SlotMap::from_assignment(2, nodes.iter().map(info).collect(), &vec![a; crate::store::SLOT_COUNT])
                .unwrap();
        let me = map.index_of(&id(me));
        View { map, me }
    }

    #[test]
    fn a_replica_promoted_in_place_of_a_primary_that_left_writes_its_notes_behind() {
        let h = Handoff::default();
        h.note(id(1), 10, [(&b"kept"[..], 0, false), (&b"gone"[..], 0, true)]);
        // Node 2 replicated for node 1; node 1 is failed over and node 2 serves its slots.
        let mut t = h.map_changed(&view(2, &[2, 3], 2, &[3]));
        t.requeue.sort();
        assert_eq!(t.requeue, vec![(Box::from(&b"gone"[..]), true), (Box::from(&b"kept"[..]), false)]);
        assert!(h.is_empty());
    }

    #[test]
    fn notes_of_a_primary_still_in_the_grid_stay_while_this_node_replicates_or_serves_its_slots() {
        let h = Handoff::default();
        h.note(id(1), 10, [(&b"k"[..], 0, false)]);
        assert_eq!(h.map_changed(&view(2, &[1, 2], 1, &[2])), Takeover::default(), "still its replica");
        let t = h.map_changed(&view(2, &[1, 2], 2, &[1]));
        assert_eq!(
            (t.requeue.len(), t.dropped),
            (0, 0),
            "it serves the slot now; node 1 still writes its queue"
        );
        assert_eq!(h.len(), 1);
        let t = h.map_changed(&view(2, &[1, 2, 3], 1, &[3]));
        assert_eq!((t.requeue.len(), t.dropped), (0, 1), "no longer its replica: node 1's own queue has it");
        assert!(h.is_empty());
    }

    #[test]
    fn a_report_drops_the_notes_it_covers_and_keeps_newer_ones() {
        let h = Handoff::default();
        h.note(id(1), 10, [(&b"a"[..], 0, false), (&b"b"[..], 0, true)]);
        h.note(id(1), 20, [(&b"c"[..], 0, false)]);
        assert_eq!(h.committed(id(1), 0, 15), 2);
        assert_eq!(h.len(), 1);
        assert_eq!(h.committed(id(2), 0, 100), 0, "another sender's report covers nothing here");
        assert_eq!(h.committed(id(1), 1, 100), 0, "nor another key space's");
        assert_eq!(h.committed(id(1), 0, 20), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn a_slot_leaving_takes_its_notes_from_other_senders_with_it() {
        let h = Handoff::default();
        let (a, b) = (&b"{a}x"[..], &b"{b}y"[..]);
        h.note(id(1), 10, [(a, 0, false), (b, 0, true)]);
        h.note(id(2), 20, [(&b"{a}mine"[..], 0, false)]);
        assert_eq!(
            h.take_slots(&[key_slot(b"a")], id(2)),
            vec![(Box::from(a), false)],
            "not this node's own"
        );
        assert_eq!(h.len(), 2, "the other slot's note and this node's own stay");
        assert_eq!(h.take_slots(&[key_slot(b"b")], id(2)), vec![(Box::from(b), true)]);
        assert_eq!(h.senders(), vec![id(2)]);
    }

    #[test]
    fn a_key_noted_again_keeps_only_its_newest_bound() {
        let h = Handoff::default();
        h.note(id(1), 10, [(&b"a"[..], 0, false)]);
        h.note(id(1), 30, [(&b"a"[..], 0, false)]);
        assert_eq!(h.committed(id(1), 0, 20), 0, "the change at 30 is not covered");
        assert_eq!(h.len(), 1);
        h.note(id(2), 5, [(&b"a"[..], 0, false)]);
        assert_eq!(h.senders(), vec![id(2)], "the key's latest sender is the one that counts");
    }
}
