//! Per-command statistics on the hot path: calls and errors in striped atomic counters (one
//! stripe per worker thread, so threads never share a cache line), and a latency histogram fed
//! by one call in [`SAMPLE_EVERY`]. Nothing here touches the `metrics` recorder: the admin
//! port reads these counters when it is scraped.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use crate::commands::{all_commands, CommandSpec};

/// One call in this many (per command and stripe) has its latency measured.
pub const SAMPLE_EVERY: u64 = 64;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BOUNDS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0,
];

/// Buckets: one per bound, plus the overflow (+Inf).
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

const STRIPES: usize = 8;

/// Calls and errors of every command for one group of threads. Each array is its own heap
/// allocation, so two stripes never share a cache line.
struct Stripe {
    calls: Box<[AtomicU64]>,
    errors: Box<[AtomicU64]>,
}

/// Sampled latencies of one command: counts and summed nanoseconds per bucket.
struct Latency {
    count: [AtomicU64; BUCKETS],
    sum_ns: [AtomicU64; BUCKETS],
}

/// The statistics of every command the node knows (subcommands included); one per node.
pub struct CommandStats {
    specs: &'static [&'static CommandSpec],
    /// How many times CONFIG RESETSTAT zeroed the node's counters, so readers that keep
    /// monotonic totals know a smaller value is a reset.
    resets: AtomicU64,
    stripes: Vec<Stripe>,
    latency: Vec<Latency>,
}

/// Every spec, sorted by address, so a spec's index is found by binary search.
static SPECS: LazyLock<Vec<&'static CommandSpec>> = LazyLock::new(|| {
    let mut specs: Vec<&'static CommandSpec> =
        all_commands().flat_map(|c| std::iter::once(c).chain(c.subcommands.iter())).collect();
    specs.sort_by_key(|s| *s as *const CommandSpec as usize);
    specs
});

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// What [`CommandStats::start`] hands to [`CommandStats::finish`].
pub struct Call {
    index: usize,
    stripe: usize,
    started: Option<Instant>,
}

/// One command's totals, for the scraper.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandTotals {
    /// Name as COMMAND shows it (`get`, `config|get`).
    pub name: &'static str,
    /// Calls.
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Sampled latencies: per bucket, (count, summed nanoseconds).
    pub latency: [(u64, u64); BUCKETS],
}

impl Default for CommandStats {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandStats {
    /// Zeroed counters for every command.
    pub fn new() -> Self {
        let specs = SPECS.as_slice();
        let n = specs.len();
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        let stripes = (0..STRIPES).map(|_| Stripe { calls: zeros(), errors: zeros() }).collect();
        let latency = (0..n)
            .map(|_| Latency {
                count: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        CommandStats { specs, resets: AtomicU64::new(0), stripes, latency }
    }

    fn index(&self, spec: &CommandSpec) -> Option<usize> {
        let addr = spec as *const CommandSpec as usize;
        self.specs.binary_search_by_key(&addr, |s| *s as *const CommandSpec as usize).ok()
    }

    /// Counts a call of `spec`; one in [`SAMPLE_EVERY`] also starts a clock.
    #[inline]
    pub fn start(&self, spec: &CommandSpec) -> Option<Call> {
        let index = self.index(spec)?;
        let stripe = stripe();
        let n = self.stripes[stripe].calls[index].fetch_add(1, Ordering::Relaxed);
        let started = n.is_multiple_of(SAMPLE_EVERY).then(Instant::now);
        Some(Call { index, stripe, started })
    }

    /// Ends a call started by [`CommandStats::start`].
    #[inline]
    pub fn finish(&self, call: Call, error: bool) {
        if error {
            self.stripes[call.stripe].errors[call.index].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = call.started {
            let ns = t.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            let l = &self.latency[call.index];
            let b = bucket(ns);
            l.count[b].fetch_add(1, Ordering::Relaxed);
            l.sum_ns[b].fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Number of resets so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    /// Zeroes every counter (CONFIG RESETSTAT, which zeroes the node's other counters too).
    pub fn reset(&self) {
        self.resets.fetch_add(1, Ordering::AcqRel);
        let stripes = self.stripes.iter().flat_map(|s| s.calls.iter().chain(s.errors.iter()));
        let latency = self.latency.iter().flat_map(|l| l.count.iter().chain(l.sum_ns.iter()));
        for c in stripes.chain(latency) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Totals of every command that was called at least once.
    pub fn totals(&self) -> Vec<CommandTotals> {
        let mut out = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let calls: u64 = self.stripes.iter().map(|s| s.calls[i].load(Ordering::Relaxed)).sum();
            if calls == 0 {
                continue;
            }
            let errors = self.stripes.iter().map(|s| s.errors[i].load(Ordering::Relaxed)).sum();
            let l = &self.latency[i];
            let latency = std::array::from_fn(|b| {
                (l.count[b].load(Ordering::Relaxed), l.sum_ns[b].load(Ordering::Relaxed))
            });
            out.push(CommandTotals { name: spec.name, calls, errors, latency });
        }
        out.sort_by_key(|t| t.name);
        out
    }
}

/// The bucket a latency of `ns` nanoseconds falls in (`value <= bound`, as Prometheus).
pub fn bucket(ns: u64) -> usize {
    let secs = ns as f64 / 1e9;
    LATENCY_BOUNDS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BOUNDS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_prometheus_le() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1000), 0);
        assert_eq!(bucket(1001), 1);
        assert_eq!(bucket(2_500), 1);
        assert_eq!(bucket(2_000_000_000), LATENCY_BOUNDS.len());
    }

    #[test]
    fn calls_errors_and_samples_are_counted_per_command() {
        let stats = CommandStats::new();
        let get = crate::commands::lookup(b"get").unwrap();
        for i in 0..SAMPLE_EVERY * 2 {
            let call = stats.start(get).unwrap();
            stats.finish(call, i % 4 == 0);
        }
        let t = stats.totals();
        let get = t.iter().find(|t| t.name == "get").unwrap();
        assert_eq!(get.calls, SAMPLE_EVERY * 2);
        assert_eq!(get.errors, SAMPLE_EVERY / 2);
        assert_eq!(get.latency.iter().map(|b| b.0).sum::<u64>(), 2);
        assert!(t.iter().all(|t| t.name == "get"), "only called commands are listed");
        stats.reset();
        assert!(stats.totals().is_empty());
    }
}
