//! Placement: which node is primary and which are replicas of every slot, as a pure function
//! of the members (with their zones), the replica count R and the previous assignment.
//!
//! Rules, in order of precedence:
//! 1. A slot has a primary and `min(R, N-1)` replicas on distinct nodes.
//! 2. A replica never shares its primary's zone while a node of another zone is free for the
//!    slot (so with three zones no replica is in its primary's zone, and with one zone left
//!    replicas still exist).
//! 3. Balance: every node is primary of ⌊S/N⌋ or ⌈S/N⌉ slots; replica counts differ by at
//!    most one between nodes whenever the zones allow it. The unit of placement is one slot,
//!    so "one slot-group above the mean" is one slot above it.
//! 4. Minimal movement: what can stay where it was does (a primary keeps its slots up to its
//!    share; a replica keeps its copy unless it is over its share), a lost primary is replaced
//!    by one of its replicas when that is balanced (first one whose promotion leaves the other
//!    copies valid replicas), and new copies go first to nodes below their share. A join moves
//!    about 1/N of the slots, a leave only what the leaver held.
//! 5. Slots with the same owners are kept contiguous, so CLUSTER SLOTS stays short.

use std::collections::BTreeMap;

use super::node_id::NodeId;
use crate::store::SLOT_COUNT;

/// A member of the grid as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its identity.
    pub id: NodeId,
    /// Its failure zone.
    pub zone: String,
}

/// The owners of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotAssignment {
    /// Serves reads and writes; None only when there are no members.
    pub primary: Option<NodeId>,
    /// Hold copies, in a stable order.
    pub replicas: Vec<NodeId>,
}

const NONE: usize = usize::MAX;

/// Computes the owners of every slot. `previous` is the current assignment (empty for a new
/// grid); whatever of it still fits the rules is kept.
pub fn place(members: &[Member], replicas: usize, previous: &[SlotAssignment]) -> Vec<SlotAssignment> {
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by_key(|m| m.id);
    members.dedup_by_key(|m| m.id);
    let n = members.len();
    if n == 0 {
        return vec![SlotAssignment::default(); SLOT_COUNT];
    }
    let index: BTreeMap<NodeId, usize> = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let zones: BTreeMap<&str, usize> = members.iter().fold(BTreeMap::new(), |mut z, m| {
        *z.entry(m.zone.as_str()).or_default() += 1;
        z
    });
    let zone_ids: Vec<&str> = zones.keys().copied().collect();
    let zone: Vec<usize> =
        members.iter().map(|m| zone_ids.binary_search(&m.zone.as_str()).unwrap()).collect();
    let zone_size: Vec<usize> = zone_ids.iter().map(|z| zones[z]).collect();

    // Previous owners, as member indexes (nodes that left are dropped here).
    let prev = |s: usize| previous.get(s);
    let prev_primary: Vec<usize> = (0..SLOT_COUNT)
        .map(|s| prev(s).and_then(|a| a.primary).and_then(|p| index.get(&p).copied()).unwrap_or(NONE))
        .collect();
    let prev_replicas: Vec<Vec<usize>> = (0..SLOT_COUNT)
        .map(|s| {
            prev(s)
                .map(|a| a.replicas.iter().filter_map(|r| index.get(r).copied()).collect())
                .unwrap_or_default()
        })
        .collect();

    let r = replicas.min(n - 1);
    let primary = place_primaries(n, r, &zone, &zone_size, &prev_primary, &prev_replicas);
    let replica_sets = if r == 0 {
        vec![Vec::new(); SLOT_COUNT]
    } else {
        let ctx = ReplicaCtx { n, r, zone: &zone, zone_size: &zone_size, primary: &primary };
        ctx.place(&prev_primary, &prev_replicas)
    };
    primary
        .iter()
        .zip(replica_sets)
        .map(|(&p, rs)| SlotAssignment {
            primary: Some(members[p].id),
            replicas: rs.into_iter().map(|i| members[i].id).collect(),
        })
        .collect()
}

/// Exact shares: `total` split over `n` nodes, the extra units going to the nodes that hold
/// the most already (so keeping beats moving), ties to the lower index.
fn shares(total: usize, n: usize, holding: &[usize]) -> Vec<usize> {
    let mut target = vec![total / n; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(holding[i]), i));
    for &i in order.iter().take(total % n) {
        target[i] += 1;
    }
    target
}

/// Like [`shares`], but the extra units are spread over zones in proportion to their size:
/// replicas of one zone's primaries live in the others, so uneven primary totals per zone
/// would make balanced replicas impossible.
fn shares_by_zone(total: usize, n: usize, holding: &[usize], zone: &[usize]) -> Vec<usize> {
    let mut target = vec![total / n; n];
    let zones = zone.iter().max().map_or(0, |z| z + 1);
    let mut size = vec![0usize; zones];
    for &z in zone {
        size[z] += 1;
    }
    let mut given = vec![0usize; zones];
    for _ in 0..total % n {
        // The zone with the fewest extras for its size, then its node holding the most.
        let pick = (0..n)
            .filter(|&i| target[i] == total / n)
            .min_by(|&a, &b| {
                let (za, zb) = (zone[a], zone[b]);
                (given[za] * size[zb])
                    .cmp(&(given[zb] * size[za]))
                    .then(holding[b].cmp(&holding[a]))
                    .then(a.cmp(&b))
            })
            .expect("fewer extras than nodes");
        target[pick] += 1;
        given[zone[pick]] += 1;
    }
    target
}

/// How many of a slot's `r` replicas may share the zone of its primary, whose zone has
/// `primary_zone_size` of the `n` nodes: only as many as the other zones cannot take.
fn same_zone_allowed(n: usize, r: usize, primary_zone_size: usize) -> usize {
    r - r.min(n - primary_zone_size)
}

fn place_primaries(
    n: usize,
    r: usize,
    zone: &[usize],
    zone_size: &[usize],
    prev_primary: &[usize],
    prev_replicas: &[Vec<usize>],
) -> Vec<usize> {
    let mut holding = vec![0; n];
    for &p in prev_primary.iter().filter(|&&p| p != NONE) {
        holding[p] += 1;
    }
    let target = shares_by_zone(SLOT_COUNT, n, &holding, zone);
    let mut count = vec![0; n];
    let mut primary = vec![NONE; SLOT_COUNT];
    // Keep every primary up to its share.
    for (s, &p) in prev_primary.iter().enumerate() {
        if p != NONE && count[p] < target[p] {
            primary[s] = p;
            count[p] += 1;
        }
    }
    // Promote a replica below its share: it already holds the data. First the promotions that
    // leave every other copy a valid replica of the new primary (a copy in the new primary's
    // zone must be replaced when other zones have room), then any.
    let keeps_copies = |s: usize, x: usize| {
        let same = prev_replicas[s].iter().filter(|&&y| y != x && zone[y] == zone[x]).count();
        same <= same_zone_allowed(n, r, zone_size[zone[x]])
    };
    for clean_only in [true, false] {
        for s in 0..SLOT_COUNT {
            if primary[s] == NONE {
                if let Some(&x) = prev_replicas[s]
                    .iter()
                    .filter(|&&x| count[x] < target[x] && (!clean_only || keeps_copies(s, x)))
                    .max_by_key(|&&x| (target[x] - count[x], std::cmp::Reverse(x)))
                {
                    primary[s] = x;
                    count[x] += 1;
                }
            }
        }
    }
    // The rest go to nodes below their share, in runs so ranges stay contiguous.
    let mut last = NONE;
    for p in primary.iter_mut().filter(|p| **p == NONE) {
        if last == NONE || count[last] >= target[last] {
            last =
                (0..n).max_by_key(|&i| (target[i] as i64 - count[i] as i64, std::cmp::Reverse(i))).unwrap();
        }
        *p = last;
        count[last] += 1;
    }
    primary
}

struct ReplicaCtx<'a> {
    n: usize,
    r: usize,
    zone: &'a [usize],
    zone_size: &'a [usize],
    primary: &'a [usize],
}

impl ReplicaCtx<'_> {
    /// Replicas of slot `s` that may share its primary's zone: only as many as there are not
    /// enough nodes in other zones.
    fn same_zone_allowed(&self, s: usize) -> usize {
        same_zone_allowed(self.n, self.r, self.zone_size[self.zone[self.primary[s]]])
    }

    /// Whether `x` may join slot `s` holding `set`.
    fn eligible(&self, s: usize, set: &[usize], x: usize) -> bool {
        self.eligible_replacing(s, set, usize::MAX, x)
    }

    /// Whether `x` may join slot `s` holding `set` once the copy at `skip` is gone.
    fn eligible_replacing(&self, s: usize, set: &[usize], skip: usize, x: usize) -> bool {
        let p = self.primary[s];
        let others = || set.iter().enumerate().filter(move |&(i, _)| i != skip).map(|(_, &y)| y);
        if x == p || others().any(|y| y == x) {
            return false;
        }
        if self.zone[x] != self.zone[p] {
            return true;
        }
        let same = others().filter(|&y| self.zone[y] == self.zone[p]).count();
        same < self.same_zone_allowed(s)
    }

    fn place(&self, prev_primary: &[usize], prev_replicas: &[Vec<usize>]) -> Vec<Vec<usize>> {
        let (n, r) = (self.n, self.r);
        let held = |s: usize, x: usize| prev_primary[s] == x || prev_replicas[s].contains(&x);
        // 1. Keep valid copies: the previous replicas, then a former primary (its data is there).
        let mut sets: Vec<Vec<usize>> = (0..SLOT_COUNT).map(|_| Vec::with_capacity(r)).collect();
        let mut count = vec![0usize; n];
        for s in 0..SLOT_COUNT {
            let former =
                (prev_primary[s] != self.primary[s]).then_some(prev_primary[s]).filter(|&p| p != NONE);
            for &x in prev_replicas[s].iter().chain(former.iter()) {
                if sets[s].len() < r && self.eligible(s, &sets[s], x) {
                    sets[s].push(x);
                    count[x] += 1;
                }
            }
        }
        // 2. Fill missing copies on the nodes furthest below their share, slots of different
        //    primaries taken in turn so every zone's demand is served evenly.
        let target = shares(SLOT_COUNT * r, n, &count);
        let mut by_primary: Vec<Vec<usize>> = vec![Vec::new(); n];
        for s in (0..SLOT_COUNT).filter(|&s| sets[s].len() < r) {
            by_primary[self.primary[s]].push(s);
        }
        // A new layout spreads each primary's copies evenly first; a change fills the nodes
        // furthest below their share first, which leaves fewer copies to move afterwards.
        let spread_first = prev_primary.iter().all(|&p| p == NONE);
        let mut pairs = vec![0usize; n * n];
        for (s, set) in sets.iter().enumerate() {
            for &x in set {
                pairs[self.primary[s] * n + x] += 1;
            }
        }
        for s in interleave(&by_primary) {
            while sets[s].len() < r {
                let p = self.primary[s];
                let pick = (0..n).filter(|&x| self.eligible(s, &sets[s], x)).max_by_key(|&x| {
                    let deficit = target[x] as i64 - count[x] as i64;
                    let new_zone = !sets[s].iter().any(|&y| self.zone[y] == self.zone[x]);
                    // Spreading a primary's copies over many nodes spreads its load
                    // over them too when it fails.
                    let spread = std::cmp::Reverse(pairs[p * n + x]);
                    (
                        deficit > 0,
                        held(s, x),
                        new_zone,
                        spread_first.then_some(spread),
                        deficit,
                        spread,
                        std::cmp::Reverse(x),
                    )
                });
                let Some(x) = pick else { break };
                sets[s].push(x);
                count[x] += 1;
                pairs[p * n + x] += 1;
            }
        }
        // 3. Even out: move copies from nodes above their share to nodes below it, as far as
        //    the zones allow.
        let mut by_primary: Vec<Vec<usize>> = vec![Vec::new(); n];
        for s in 0..SLOT_COUNT {
            by_primary[self.primary[s]].push(s);
        }
        self.rebalance(&mut sets, &mut count, &held, &interleave(&by_primary));
        // 4. Make runs: slots sharing a primary and the same kept copies may swap their new
        //    copies freely, so sort those to give contiguous ranges.
        let mut groups: BTreeMap<(usize, Vec<usize>), Vec<usize>> = BTreeMap::new();
        for (s, set) in sets.iter().enumerate() {
            let mut kept: Vec<usize> = set.iter().copied().filter(|&x| held(s, x)).collect();
            kept.sort_unstable();
            groups.entry((self.primary[s], kept)).or_default().push(s);
        }
        for ((_, kept), slots) in groups {
            let mut fresh: Vec<Vec<usize>> = slots
                .iter()
                .map(|&s| {
                    let mut f: Vec<usize> = sets[s].iter().copied().filter(|x| !kept.contains(x)).collect();
                    f.sort_unstable();
                    f
                })
                .collect();
            fresh.sort();
            for (&s, f) in slots.iter().zip(fresh) {
                let mut set: Vec<usize> = sets[s].iter().copied().filter(|x| kept.contains(x)).collect();
                set.extend(f);
                sets[s] = set;
            }
        }
        sets
    }

    /// Moves copies from nodes above their share to nodes below it, visiting slots in `order`
    /// (primaries in turn, so a node receiving copies gets them from every primary).
    fn rebalance(
        &self,
        sets: &mut [Vec<usize>],
        count: &mut [usize],
        held: &dyn Fn(usize, usize) -> bool,
        order: &[usize],
    ) {
        let n = self.n;
        let total: usize = count.iter().sum();
        let (lo, hi) = (total / n, total.div_ceil(n));
        // Only what is outside [lo, hi] moves: evening out further would move more than needed.
        let needs_move = |count: &[usize], q: usize, x: usize| {
            (count[q] > hi && count[x] < hi) || (count[x] < lo && count[q] > lo)
        };
        loop {
            let mut moved = false;
            let mut donors: Vec<usize> = (0..n).collect();
            donors.sort_by_key(|&q| (std::cmp::Reverse(count[q]), q));
            let mut takers: Vec<usize> = (0..n).collect();
            takers.sort_by_key(|&x| (count[x], x));
            for &q in &donors {
                for &x in &takers {
                    if !needs_move(count, q, x) {
                        continue;
                    }
                    // Copies placed in this round move first: moving them costs nothing extra.
                    for (fresh_only, &s) in
                        [true, false].into_iter().flat_map(|f| order.iter().map(move |s| (f, s)))
                    {
                        if !needs_move(count, q, x) {
                            break;
                        }
                        let Some(pos) = sets[s].iter().position(|&y| y == q) else { continue };
                        if fresh_only && held(s, q) {
                            continue;
                        }
                        // Swap q for x: x must be allowed with q gone.
                        if self.eligible_replacing(s, &sets[s], pos, x) {
                            sets[s][pos] = x;
                            count[q] -= 1;
                            count[x] += 1;
                            moved = true;
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// Slots of every list in turn: the first of each, then the second of each, ...
fn interleave(lists: &[Vec<usize>]) -> Vec<usize> {
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|i| lists.iter().filter_map(move |l| l.get(i).copied())).collect()
}

/// How much an assignment change costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Movement {
    /// Slots whose primary changed.
    pub primaries_changed: usize,
    /// Copies a node must receive: (slot, node) pairs held after but not before.
    pub new_copies: usize,
}

/// Compares two assignments (the cost of rebalancing from `before` to `after`).
pub fn movement(before: &[SlotAssignment], after: &[SlotAssignment]) -> Movement {
    let mut m = Movement::default();
    for (s, a) in after.iter().enumerate() {
        let b = before.get(s).cloned().unwrap_or_default();
        if a.primary != b.primary {
            m.primaries_changed += 1;
        }
        let held = |x: &NodeId| b.primary.as_ref() == Some(x) || b.replicas.contains(x);
        m.new_copies += a.primary.iter().chain(&a.replicas).filter(|x| !held(x)).count();
    }
    m
}

#[cfg(test)]
mod tests;
