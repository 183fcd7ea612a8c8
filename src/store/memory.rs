//! Memory as INFO reports it and maxmemory checks it: the allocator's own count of live bytes
//! (jemalloc's `stats.allocated`, as Redis reports zmalloc's), refreshed periodically, plus
//! the keyspace's change since the last refresh so eviction reacts between refreshes.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

/// Set by the `cachegrid` binary, whose global allocator is jemalloc. A node embedded in
/// another program cannot read the allocator and counts its dataset bytes instead.
static ALLOCATOR_STATS: AtomicBool = AtomicBool::new(false);

/// Declares that jemalloc is the process's global allocator, so its statistics are the truth.
pub fn use_allocator_stats() {
    ALLOCATOR_STATS.store(true, Ordering::Relaxed);
}

/// The allocator name INFO reports.
pub fn allocator_name() -> &'static str {
    if ALLOCATOR_STATS.load(Ordering::Relaxed) {
        "jemalloc-5.3.0"
    } else {
        "libc"
    }
}

/// Allocated bytes at the last refresh, and the keyspace's dataset bytes then.
#[derive(Default)]
pub struct MemoryGauge {
    allocated: AtomicUsize,
    dataset_at_refresh: AtomicI64,
    peak: AtomicUsize,
}

impl MemoryGauge {
    /// Re-reads the allocator's statistics; `dataset` is the keyspace's current byte count.
    pub fn refresh(&self, dataset: usize) {
        let allocated = allocated_bytes().unwrap_or(dataset);
        self.allocated.store(allocated, Ordering::Relaxed);
        self.dataset_at_refresh.store(dataset as i64, Ordering::Relaxed);
        self.peak.fetch_max(allocated, Ordering::Relaxed);
    }

    /// Best estimate of the bytes in use now.
    pub fn used(&self, dataset: usize) -> usize {
        let base = self.allocated.load(Ordering::Relaxed) as i64;
        let delta = dataset as i64 - self.dataset_at_refresh.load(Ordering::Relaxed);
        (base + delta).max(0) as usize
    }

    /// Highest allocated count seen.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Bytes currently allocated, from the allocator, when it can tell.
#[cfg(feature = "jemalloc")]
pub fn allocated_bytes() -> Option<usize> {
    use tikv_jemalloc_ctl::{epoch, stats};
    if !ALLOCATOR_STATS.load(Ordering::Relaxed) {
        return None;
    }
    epoch::advance().ok()?;
    stats::allocated::read().ok()
}

/// Bytes currently allocated, from the allocator, when it can tell.
#[cfg(not(feature = "jemalloc"))]
pub fn allocated_bytes() -> Option<usize> {
    None
}

/// Resident set size of the process, from /proc.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Total memory of the machine, from /proc/meminfo.
pub fn system_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
