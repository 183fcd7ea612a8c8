//! Placement invariants: validity, zones, balance, stability and minimal movement.

use proptest::prelude::*;

use super::*;

fn id(i: usize) -> NodeId {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
    NodeId(b)
}

/// `zones[i]` is the zone of node i.
fn members(zones: &[&str]) -> Vec<Member> {
    zones.iter().enumerate().map(|(i, z)| Member { id: id(i), zone: z.to_string() }).collect()
}

fn zone_of<'a>(ms: &'a [Member], x: &NodeId) -> &'a str {
    &ms.iter().find(|m| m.id == *x).unwrap().zone
}

/// Rules 1 and 2: every slot has a member primary and min(R, N-1) distinct replicas, and a
/// replica shares its primary's zone only when every node of other zones is already a replica.
fn assert_valid(ms: &[Member], r: usize, a: &[SlotAssignment]) {
    assert_eq!(a.len(), SLOT_COUNT);
    let want = r.min(ms.len() - 1);
    for (s, sa) in a.iter().enumerate() {
        let p = sa.primary.expect("every slot has a primary");
        assert!(ms.iter().any(|m| m.id == p));
        assert_eq!(sa.replicas.len(), want, "slot {s}");
        let mut all = sa.replicas.clone();
        all.push(p);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), want + 1, "slot {s}: distinct nodes");
        let pz = zone_of(ms, &p);
        if sa.replicas.iter().any(|x| zone_of(ms, x) == pz) {
            let others = ms.iter().filter(|m| m.zone != pz);
            for o in others {
                assert!(
                    sa.replicas.contains(&o.id),
                    "slot {s}: a replica shares its primary's zone while {:?} is free",
                    o.id
                );
            }
        }
    }
}

fn counts(ms: &[Member], a: &[SlotAssignment]) -> (Vec<usize>, Vec<usize>) {
    let pos = |x: &NodeId| ms.iter().position(|m| m.id == *x).unwrap();
    let (mut p, mut r) = (vec![0; ms.len()], vec![0; ms.len()]);
    for sa in a {
        p[pos(&sa.primary.unwrap())] += 1;
        for x in &sa.replicas {
            r[pos(x)] += 1;
        }
    }
    (p, r)
}

fn spread(v: &[usize]) -> usize {
    v.iter().max().unwrap() - v.iter().min().unwrap()
}

/// Rule 3: primaries always within one of each other; replicas too when zones are of equal
/// size (the zones then allow it).
fn assert_balanced(ms: &[Member], a: &[SlotAssignment]) {
    let (p, r) = counts(ms, a);
    assert!(spread(&p) <= 1, "primaries {p:?}");
    if equal_zones(ms) {
        assert!(spread(&r) <= 1, "replicas {r:?}");
    }
}

fn equal_zones(ms: &[Member]) -> bool {
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for m in ms {
        *sizes.entry(&m.zone).or_default() += 1;
    }
    sizes.values().min() == sizes.values().max()
}

fn holdings(a: &[SlotAssignment], x: &NodeId) -> (usize, usize) {
    let p = a.iter().filter(|s| s.primary.as_ref() == Some(x)).count();
    let r = a.iter().filter(|s| s.replicas.contains(x)).count();
    (p, r)
}

#[test]
fn no_members_no_owners() {
    assert!(place(&[], 1, &[]).iter().all(|s| s.primary.is_none()));
}

#[test]
fn one_node_owns_everything_without_replicas() {
    let ms = members(&["a"]);
    let a = place(&ms, 1, &[]);
    assert!(a.iter().all(|s| s.primary == Some(ms[0].id) && s.replicas.is_empty()));
}

#[test]
fn three_zones_no_replica_in_its_primarys_zone() {
    let ms = members(&["a", "b", "c", "a", "b", "c"]);
    let a = place(&ms, 1, &[]);
    assert_valid(&ms, 1, &a);
    assert_balanced(&ms, &a);
    for s in &a {
        assert_ne!(zone_of(&ms, &s.primary.unwrap()), zone_of(&ms, &s.replicas[0]));
    }
}

#[test]
fn with_one_zone_left_replicas_still_exist() {
    let ms = members(&["a", "a", "a"]);
    let a = place(&ms, 2, &[]);
    assert_valid(&ms, 2, &a);
    assert_balanced(&ms, &a);
    assert!(a.iter().all(|s| s.replicas.len() == 2));
}

#[test]
fn ranges_stay_few() {
    let ms = members(&["a", "b", "c"]);
    let a = place(&ms, 1, &[]);
    let runs = 1 + a.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(runs <= 6, "{runs} ranges");
}

#[test]
fn order_of_members_does_not_matter_and_placement_is_stable() {
    let ms = members(&["a", "b", "c", "a"]);
    let a = place(&ms, 1, &[]);
    let mut rev = ms.clone();
    rev.reverse();
    assert_eq!(place(&rev, 1, &[]), a);
    assert_eq!(place(&ms, 1, &a), a, "nothing moves when nothing changed");
}

fn join_states(zones: &[&str], r: usize) -> (Vec<SlotAssignment>, Vec<SlotAssignment>) {
    let before = place(&members(&zones[..zones.len() - 1]), r, &[]);
    let after = place(&members(zones), r, &before);
    (before, after)
}

fn leave_states(zones: &[&str], r: usize, leaver: usize) -> (Vec<SlotAssignment>, Vec<SlotAssignment>) {
    let all = members(zones);
    let mut ms = all.clone();
    ms.remove(leaver);
    let before = place(&all, r, &[]);
    let after = place(&ms, r, &before);
    (before, after)
}

/// The joining node must receive its share; nothing else needs to move.
fn check_join(zones: &[&str], r: usize) -> (Movement, usize) {
    let ms = members(&zones[..zones.len() - 1]);
    let all = members(zones);
    let before = place(&ms, r, &[]);
    let after = place(&all, r, &before);
    assert_valid(&all, r, &after);
    assert_balanced(&all, &after);
    let m = movement(&before, &after);
    let (p, rr) = holdings(&after, &all.last().unwrap().id);
    assert_eq!(m.primaries_changed, p, "only the joiner's primaries change hands");
    (m, p + rr)
}

/// The leaver's copies must be recreated; nothing else needs to move.
fn check_leave(zones: &[&str], r: usize, leaver: usize) -> (Movement, usize) {
    let all = members(zones);
    let mut ms = all.clone();
    let gone = ms.remove(leaver);
    let before = place(&all, r, &[]);
    let after = place(&ms, r, &before);
    assert_valid(&ms, r, &after);
    assert_balanced(&ms, &after);
    let m = movement(&before, &after);
    let (p, rr) = holdings(&before, &gone.id);
    assert_eq!(m.primaries_changed, p, "only the leaver's primaries change hands");
    (m, p + rr)
}

/// Checks the copies a change costs. With zones of equal size before and after, the minimum
/// is what the joiner ends up holding or what the leaver held: joins measure exactly at it,
/// some leaves with R >= 2 need up to 8 % more (copies moved again to rebalance), so 10 % is
/// allowed. With unequal zones the zone rule can force more, and the true minimum is not
/// known; there the change must at least cost less than placing everything afresh, counting
/// a primary handed to another node as a move too: afresh may need fewer copies by moving
/// many more primaries (a leave from zones [1, 1, 0, 2, 0] with R = 2: 12,289 copies and
/// 5,736 handovers afresh, 13,722 and 3,277 — only the leaver's — here).
fn assert_moves_little(
    before: &[SlotAssignment],
    after: &[SlotAssignment],
    members: &[Member],
    r: usize,
    min: usize,
    symmetric: bool,
) {
    if symmetric {
        let copies = movement(before, after).new_copies;
        assert!(copies <= min + min / 10 + 2, "{copies} copies, minimum {min}");
    } else {
        let m = movement(before, after);
        let afresh = movement(before, &place(members, r, &[]));
        assert!(
            m.new_copies + m.primaries_changed <= afresh.new_copies + afresh.primaries_changed,
            "{m:?}, placing afresh would cost {afresh:?}"
        );
    }
}

#[test]
fn a_join_moves_about_one_nth() {
    for (zones, r) in [
        (&["a", "b", "c", "a"][..], 1),
        (&["a", "b", "c", "d"][..], 1),
        (&["a", "a", "a", "a"][..], 2),
        (&["a", "b", "a", "b", "a", "b"][..], 1),
        (&["a", "b", "c", "a", "b", "c"][..], 2),
    ] {
        let (m, min) = check_join(zones, r);
        let n = zones.len();
        eprintln!(
            "join to {n} nodes {zones:?} R={r}: {} primaries moved (1/N = {}), {} copies, minimum {min}",
            m.primaries_changed,
            SLOT_COUNT / n,
            m.new_copies
        );
        assert!(m.primaries_changed <= SLOT_COUNT.div_ceil(n));
        let symmetric = equal_zones(&members(&zones[..n - 1])) && equal_zones(&members(zones));
        let (before, after) = join_states(zones, r);
        assert_moves_little(&before, &after, &members(zones), r, min, symmetric);
    }
}

#[test]
fn a_leave_moves_only_what_the_leaver_held() {
    for (zones, r, leaver) in [
        (&["a", "b", "c", "a"][..], 1, 0),
        (&["a", "b", "c", "d"][..], 1, 2),
        (&["a", "a", "a", "a"][..], 2, 1),
        (&["a", "b", "c", "a", "b", "c"][..], 2, 4),
    ] {
        let (m, min) = check_leave(zones, r, leaver);
        eprintln!("leave from {zones:?} R={r}: {} copies, minimum {min}", m.new_copies);
        assert!(m.new_copies >= min.saturating_sub(holdings_primaries_only(zones, r, leaver)));
        let mut rest = zones.to_vec();
        rest.remove(leaver);
        let symmetric = equal_zones(&members(zones)) && equal_zones(&members(&rest));
        let (before, after) = leave_states(zones, r, leaver);
        assert_moves_little(&before, &after, &members(&rest), r, min, symmetric);
    }
}

/// A lost primary is replaced by promoting a replica, which needs no copy.
fn holdings_primaries_only(zones: &[&str], r: usize, leaver: usize) -> usize {
    let all = members(zones);
    holdings(&place(&all, r, &[]), &all[leaver].id).0
}

fn zone_strategy() -> impl Strategy<Value = Vec<String>> {
    (1usize..=8, 1usize..=3)
        .prop_flat_map(|(n, z)| prop::collection::vec((0..z).prop_map(|i| format!("z{i}")), n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn any_membership_gives_a_valid_balanced_placement(zones in zone_strategy(), r in 0usize..=3) {
        let zs: Vec<&str> = zones.iter().map(String::as_str).collect();
        let ms = members(&zs);
        let a = place(&ms, r, &[]);
        assert_valid(&ms, r, &a);
        assert_balanced(&ms, &a);
    }

    #[test]
    fn any_join_or_leave_keeps_the_rules_and_moves_little(
        zones in zone_strategy(), r in 1usize..=2, new_zone in 0usize..3, leaver in 0usize..8,
    ) {
        let zs: Vec<&str> = zones.iter().map(String::as_str).collect();
        let ms = members(&zs);
        let before = place(&ms, r, &[]);
        // Join.
        let mut joined = ms.clone();
        joined.push(Member { id: id(100), zone: format!("z{new_zone}") });
        let after = place(&joined, r, &before);
        assert_valid(&joined, r, &after);
        assert_balanced(&joined, &after);
        let m = movement(&before, &after);
        let (p, rr) = holdings(&after, &id(100));
        prop_assert_eq!(m.primaries_changed, p);
        let symmetric = equal_zones(&ms) && equal_zones(&joined);
        assert_moves_little(&before, &after, &joined, r, p + rr, symmetric);
        // Leave.
        if ms.len() > 1 {
            let mut left = ms.clone();
            let gone = left.remove(leaver % ms.len());
            let after = place(&left, r, &before);
            assert_valid(&left, r, &after);
            assert_balanced(&left, &after);
            let m = movement(&before, &after);
            let (p, rr) = holdings(&before, &gone.id);
            prop_assert_eq!(m.primaries_changed, p);
            let symmetric = equal_zones(&ms) && equal_zones(&left);
            assert_moves_little(&before, &after, &left, r, p + rr, symmetric);
        }
    }
}

#[test]
fn a_larger_grid_places_and_grows_within_the_rules() {
    let zones: Vec<String> = (0..24).map(|i| format!("z{}", i % 3)).collect();
    let zs: Vec<&str> = zones.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let before = place(&members(&zs[..23]), 2, &[]);
    let after = place(&members(&zs), 2, &before);
    eprintln!("24 nodes, 3 zones, R=2: placed and grown in {:?}", t.elapsed());
    assert_valid(&members(&zs), 2, &after);
    assert_balanced(&members(&zs), &after);
}

/// A case proptest found: a leave from zones of unequal size with R = 2 is forced into many
/// new copies, since each z0 primary then needs exactly the z1 and z2 nodes as replicas.
#[test]
fn a_leave_from_uneven_zones_promotes_replicas_that_keep_the_other_copies() {
    let zones = ["z1", "z1", "z0", "z2", "z0"];
    let ms = members(&zones);
    let before = place(&ms, 2, &[]);
    let mut left = ms.clone();
    let gone = left.remove(1);
    let after = place(&left, 2, &before);
    assert_valid(&left, 2, &after);
    assert_balanced(&left, &after);
    let (p, rr) = holdings(&before, &gone.id);
    let m = movement(&before, &after);
    assert_eq!(m.primaries_changed, p);
    // Promoting a replica whose zone-mate must then be replaced cost 14,747 copies.
    assert!(m.new_copies <= 13_722, "{m:?}");
    assert_moves_little(&before, &after, &left, 2, p + rr, false);
}
