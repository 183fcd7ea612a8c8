//! A linearizability checker for registers (Wing & Gong's search with Lowe's memoisation, as
//! Knossos does), key by key: SET, GET and INCR on integer values, with operations whose outcome
//! is unknown (a timeout, a dropped connection) free to take effect at any moment after their
//! invocation, or never. Hand-written rather than `stateright`'s tester because that one takes
//! a sequence of calls without timestamps, has no memoisation, and treats an unanswered call as
//! blocking its client forever; a fault history has many of those.
//!
//! Used by tests/faults.rs; its own specification is tests/linearizability.rs.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};

/// One operation on a register, with what its client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SET to a value (unique per SET in the workloads, which the pruning relies on only for
    /// speed, never for soundness).
    Set(i64),
    /// GET and the value read (None: nil). A GET with an unknown outcome is no operation.
    Get(Option<i64>),
    /// INCR and the value it returned (None when its outcome is unknown).
    Incr(Option<i64>),
}

/// One operation of a history. Times are monotonic (ns since the recording began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: String,
    /// What was done and seen.
    pub kind: Kind,
    /// When the client sent it.
    pub invoke: u64,
    /// When the client got its answer; None when the outcome is unknown (it may take effect at
    /// any moment after `invoke`, or never).
    pub complete: Option<u64>,
}

/// The verdict on one key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, within their real-time bounds, explains every reply.
    Linearizable,
    /// None does; the text says where the search got stuck.
    NotLinearizable(String),
    /// The search gave up after exploring its budget of configurations.
    Inconclusive,
}

/// Configurations explored per key before giving up.
pub const DEFAULT_BUDGET: usize = 2_000_000;

/// Checks every key of `ops`; returns the keys that are not linearizable (or inconclusive).
pub fn check_all(ops: &[Op]) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .map(|(k, ops)| (k.to_string(), check_key(&ops, DEFAULT_BUDGET)))
        .filter(|(_, v)| *v != Verdict::Linearizable)
        .collect()
}

/// The register's state after `kind`, or None if `kind`'s reply contradicts `value`.
fn step(value: Option<i64>, kind: Kind, known: bool) -> Option<Option<i64>> {
    match kind {
        Kind::Set(v) => Some(Some(v)),
        Kind::Get(read) => (read == value).then_some(value),
        Kind::Incr(returned) => {
            let next = value.unwrap_or(0).checked_add(1)?;
            (!known || returned == Some(next)).then_some(Some(next))
        }
    }
}

/// A configuration of the search: which operations are linearized, and the register's value.
/// Answered operations before `lo` (in invocation order) are all linearized; `ahead` lists
/// those linearized past it (a handful: the concurrency window), so a configuration stays
/// small however long the history.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Config {
    lo: usize,
    ahead: Vec<u32>,
    unknown: Vec<u64>,
    value: Option<i64>,
}

impl Config {
    fn linearized(&self, i: usize) -> bool {
        i < self.lo || self.ahead.binary_search(&(i as u32)).is_ok()
    }

    /// Marks answered operation `i` linearized.
    fn linearize(&mut self, i: usize) {
        if let Err(at) = self.ahead.binary_search(&(i as u32)) {
            self.ahead.insert(at, i as u32);
        }
        while self.ahead.first() == Some(&(self.lo as u32)) {
            self.ahead.remove(0);
            self.lo += 1;
        }
    }
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

/// Checks one key's operations (all of the same key), exploring at most `budget`
/// configurations.
pub fn check_key(ops: &[Op], budget: usize) -> Verdict {
    // What was read: an unknown SET of a value nobody read, directly or through INCRs after it,
    // can be left out (if it took effect, something overwrote it before any read; the history
    // without it is as linearizable). A read of `r` may come from SET `v` and `r - v` INCRs.
    let incrs = ops.iter().filter(|o| matches!(o.kind, Kind::Incr(_))).count() as i64;
    let mut read = Vec::new();
    for op in ops {
        match op.kind {
            Kind::Get(Some(v)) => read.push(v),
            Kind::Incr(Some(v)) if op.complete.is_some() => read.push(v - 1),
            _ => {}
        }
    }
    read.sort_unstable();
    let mut known: Vec<&Op> = ops.iter().filter(|o| o.complete.is_some()).collect();
    let mut unknown: Vec<&Op> = ops
        .iter()
        .filter(|o| o.complete.is_none())
        .filter(|o| match o.kind {
            Kind::Get(_) => false,
            Kind::Set(v) => {
                let lo = read.partition_point(|&r| r < v);
                read.get(lo).is_some_and(|&r| r - v <= incrs)
            }
            Kind::Incr(_) => true,
        })
        .collect();
    known.sort_by_key(|o| o.invoke);
    unknown.sort_by_key(|o| o.invoke);
    let complete = |i: usize| known[i].complete.expect("known ops are complete");

    let start =
        Config { lo: 0, ahead: Vec::new(), unknown: vec![0; unknown.len().div_ceil(64)], value: None };
    let mut seen: HashSet<Config> = HashSet::new();
    // Depth-first, with an explicit stack: a history has thousands of operations.
    let mut stack: Vec<Config> = vec![start];
    // The deepest configuration reached, for the explanation.
    let mut deepest: (usize, Option<i64>) = (0, None);
    while let Some(config) = stack.pop() {
        let lo = config.lo;
        if lo == known.len() {
            return Verdict::Linearizable;
        }
        if !seen.insert(config.clone()) {
            continue;
        }
        if seen.len() > budget {
            return Verdict::Inconclusive;
        }
        if lo >= deepest.0 {
            deepest = (lo, config.value);
        }
        // The earliest completion among the operations not yet linearized bounds which can go
        // next: one invoked after it cannot precede it.
        let mut horizon = u64::MAX;
        let mut candidates = Vec::new();
        for (i, op) in known.iter().enumerate().skip(lo) {
            if op.invoke >= horizon {
                break;
            }
            if config.linearized(i) {
                continue;
            }
            horizon = horizon.min(complete(i));
            candidates.push(i);
        }
        // Unknown INCRs are interchangeable: trying the earliest one available is enough (a
        // later one could be swapped for it in any order that uses it).
        let mut incr_tried = false;
        for (u, op) in unknown.iter().enumerate() {
            if op.invoke >= horizon {
                break;
            }
            if is_set(&config.unknown, u) {
                continue;
            }
            if matches!(op.kind, Kind::Incr(_)) {
                if incr_tried {
                    continue;
                }
                incr_tried = true;
            }
            if let Some(value) = step(config.value, op.kind, false) {
                let mut next = config.clone();
                set(&mut next.unknown, u);
                next.value = value;
                stack.push(next);
            }
        }
        for i in candidates {
            if known[i].invoke >= horizon {
                continue;
            }
            if let Some(value) = step(config.value, known[i].kind, true) {
                let mut next = config.clone();
                next.linearize(i);
                next.value = value;
                stack.push(next);
            }
        }
    }
    let (at, value) = deepest;
    let stuck: Vec<String> = known[at..]
        .iter()
        .take(6)
        .map(|o| {
            format!(
                "{:?} [{:.3}s..{:.3}s]",
                o.kind,
                o.invoke as f64 / 1e9,
                o.complete.unwrap_or(0) as f64 / 1e9
            )
        })
        .collect();
    Verdict::NotLinearizable(format!(
        "after {at} of {} answered operations the value is {value:?}, and no order explains what follows: {}",
        known.len(),
        stuck.join(", ")
    ))
}
