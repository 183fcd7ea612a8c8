//! The register checker the fault tests judge histories with (tests/common/linearizability.rs),
//! on hand-made histories: what it must accept and what it must refuse.

#[path = "common/linearizability.rs"]
mod linearizability;

use linearizability::{check_all, check_key, Kind, Op, Verdict};

/// An answered operation on key `k` between `invoke` and `complete` (seconds, for reading).
fn op(kind: Kind, invoke: u64, complete: u64) -> Op {
    Op { key: "k".into(), kind, invoke: invoke * 1_000_000_000, complete: Some(complete * 1_000_000_000) }
}

/// An operation whose client never learned the outcome.
fn unknown(kind: Kind, invoke: u64) -> Op {
    Op { key: "k".into(), kind, invoke: invoke * 1_000_000_000, complete: None }
}

fn verdict(ops: &[Op]) -> Verdict {
    check_key(ops, 1_000_000)
}

#[test]
fn a_sequential_history_of_sets_gets_and_incrs_is_linearizable() {
    let h = [
        op(Kind::Get(None), 0, 1),
        op(Kind::Set(5), 2, 3),
        op(Kind::Get(Some(5)), 4, 5),
        op(Kind::Incr(Some(6)), 6, 7),
        op(Kind::Get(Some(6)), 8, 9),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // The read overlaps both writes: it may see the second one before the first.
    let h = [
        op(Kind::Set(1), 0, 10),
        op(Kind::Set(2), 1, 9),
        op(Kind::Get(Some(1)), 2, 11),
        op(Kind::Get(Some(1)), 12, 13),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn a_stale_read_after_a_completed_write_is_refused() {
    let h = [op(Kind::Set(1), 0, 1), op(Kind::Set(2), 2, 3), op(Kind::Get(Some(1)), 4, 5)];
    assert!(matches!(verdict(&h), Verdict::NotLinearizable(_)), "{:?}", verdict(&h));
}

#[test]
fn a_lost_acknowledged_write_is_refused() {
    // SET 7 was acknowledged, yet a later read finds the key empty.
    let h = [op(Kind::Set(7), 0, 1), op(Kind::Get(None), 5, 6)];
    let v = verdict(&h);
    assert!(matches!(&v, Verdict::NotLinearizable(why) if why.contains("Get(None)")), "{v:?}");
}

#[test]
fn a_lost_acknowledged_increment_is_refused() {
    let h = [op(Kind::Incr(Some(1)), 0, 1), op(Kind::Incr(Some(2)), 2, 3), op(Kind::Get(Some(1)), 4, 5)];
    assert!(matches!(verdict(&h), Verdict::NotLinearizable(_)));
}

#[test]
fn a_value_nobody_wrote_is_refused() {
    let h = [op(Kind::Set(1), 0, 1), op(Kind::Get(Some(99)), 2, 3)];
    assert!(matches!(verdict(&h), Verdict::NotLinearizable(_)));
}

#[test]
fn a_write_whose_outcome_is_unknown_may_take_effect_much_later_or_never() {
    // The timed-out SET 3 shows up only long after its client gave up: allowed.
    let later = [
        op(Kind::Set(1), 0, 1),
        unknown(Kind::Set(3), 2),
        op(Kind::Get(Some(1)), 10, 11),
        op(Kind::Get(Some(3)), 20, 21),
    ];
    assert_eq!(verdict(&later), Verdict::Linearizable);
    // Or never.
    let never = [op(Kind::Set(1), 0, 1), unknown(Kind::Set(3), 2), op(Kind::Get(Some(1)), 20, 21)];
    assert_eq!(verdict(&never), Verdict::Linearizable);
    // But not before it was sent.
    let before = [op(Kind::Get(Some(3)), 0, 1), unknown(Kind::Set(3), 2)];
    assert!(matches!(verdict(&before), Verdict::NotLinearizable(_)));
}

#[test]
fn an_unknown_set_read_only_through_later_increments_is_still_considered() {
    // SET 5 and two INCRs all time out, yet took effect: the read of 7 is explained by them
    // (a fault test once flagged such a history: the SET of 5 was pruned as never read).
    let h = [
        op(Kind::Set(1), 0, 1),
        unknown(Kind::Set(5), 2),
        unknown(Kind::Incr(None), 3),
        unknown(Kind::Incr(None), 4),
        op(Kind::Get(Some(7)), 5, 6),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    // One INCR cannot make 7 out of 5.
    let one = [h[0].clone(), h[1].clone(), h[2].clone(), h[4].clone()];
    assert!(matches!(verdict(&one), Verdict::NotLinearizable(_)));
}

#[test]
fn an_increment_whose_outcome_is_unknown_counts_at_most_once() {
    let h = [
        op(Kind::Set(10), 0, 1),
        unknown(Kind::Incr(None), 2),
        op(Kind::Get(Some(11)), 5, 6),
        op(Kind::Get(Some(11)), 7, 8),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
    let twice = [op(Kind::Set(10), 0, 1), unknown(Kind::Incr(None), 2), op(Kind::Get(Some(12)), 5, 6)];
    assert!(matches!(verdict(&twice), Verdict::NotLinearizable(_)));
}

#[test]
fn a_read_cannot_flip_back_to_an_older_value() {
    // Two reads after a concurrent write: once the new value is seen, the old one cannot be.
    let h = [
        op(Kind::Set(1), 0, 1),
        op(Kind::Set(2), 2, 10),
        op(Kind::Get(Some(2)), 3, 4),
        op(Kind::Get(Some(1)), 5, 6),
    ];
    assert!(matches!(verdict(&h), Verdict::NotLinearizable(_)));
}

#[test]
fn keys_are_checked_independently() {
    let mut ops = vec![op(Kind::Set(1), 0, 1), op(Kind::Get(Some(1)), 2, 3)];
    let mut other = op(Kind::Get(Some(1)), 2, 3);
    other.key = "other".into();
    ops.push(other);
    let bad = check_all(&ops);
    assert_eq!(bad.keys().collect::<Vec<_>>(), vec!["other"], "{bad:?}");
}

#[test]
fn a_long_concurrent_history_is_checked_quickly() {
    // Four clients, 20,000 operations on one key, each overlapping its neighbours, and some
    // unknown writes: the memoised search stays near-linear.
    let mut ops = Vec::new();
    let mut value = 0i64;
    for i in 0..20_000u64 {
        let t = i * 10;
        let kind = match i % 4 {
            0 => {
                value = i as i64 + 1000;
                Kind::Set(value)
            }
            1 => {
                value += 1;
                Kind::Incr(Some(value))
            }
            _ => Kind::Get(Some(value)),
        };
        let mut o = Op { key: "k".into(), kind, invoke: t, complete: Some(t + 25) };
        if i % 97 == 0 && matches!(kind, Kind::Set(_)) {
            o.complete = None;
        }
        ops.push(o);
    }
    assert_eq!(check_key(&ops, 1_000_000), Verdict::Linearizable);
}
