//! Fault injection, for the fault-injection tests (tests/faults.rs, scripts/chaos.sh): the
//! cluster bus filter behind `DEBUG BUS-DROP`, `BUS-DELAY` and `BUS-HEAL`, and the failpoints
//! (the `fail` crate) at the moments between "applied" and "acknowledged". Everything here is
//! inert unless a DEBUG command (off by default, `enable-debug-command`) or, for failpoints, the
//! `failpoints` build feature plus `FAILPOINTS` or `DEBUG FAILPOINT` turns it on.
//!
//! The bus filter is process-wide: every outbound bus exchange of this node goes through
//! [`crate::cluster::bus::BusClient`], whichever task opened it, and the fault tests run each
//! node as its own process.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::RwLock;

/// Names of the failpoints in the node, with where they are.
pub const FAILPOINTS: &[(&str, &str)] = &[
    (
        "replication-before-send",
        "a primary has applied writes locally and is about to send them to a replica",
    ),
    (
        "replication-acked-before-reply",
        "a sync write's replicas have acknowledged it and its client has not been answered",
    ),
    ("replica-applied-before-ack", "a replica has applied a batch and not yet acknowledged it"),
    (
        "migration-before-switch",
        "a slot's keys are copied to its new primary and the switch-over is not yet committed",
    ),
];

/// What [`BusFaults::outbound`] says about one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Send it.
    Pass,
    /// Hold it this long first.
    Delay(Duration),
    /// The peer is unreachable: the exchange fails once its timeout has passed, as with a
    /// network that drops packets.
    Drop,
}

/// Faults on this node's outbound cluster bus traffic.
#[derive(Default)]
pub struct BusFaults {
    /// Whether any fault is set (the common case, none, costs one atomic load).
    active: AtomicBool,
    /// Bus addresses whose exchanges fail.
    dropped: RwLock<HashSet<SocketAddr>>,
    /// Milliseconds every outbound message is held.
    delay_ms: AtomicU64,
}

impl BusFaults {
    /// Makes every exchange with `peers` (bus addresses) fail; adds to those dropped already.
    pub fn drop_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        self.dropped.write().extend(peers);
        self.refresh();
    }

    /// Holds every outbound message `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.refresh();
    }

    /// Clears every bus fault.
    pub fn heal(&self) {
        self.dropped.write().clear();
        self.delay_ms.store(0, Ordering::Relaxed);
        self.refresh();
    }

    fn refresh(&self) {
        let on = !self.dropped.read().is_empty() || self.delay_ms.load(Ordering::Relaxed) > 0;
        self.active.store(on, Ordering::Release);
    }

    /// What to do with an exchange with `peer` (`host:port`; a peer named by host name is
    /// matched only when it is an address).
    pub fn outbound(&self, peer: &str) -> Outbound {
        if !self.active.load(Ordering::Acquire) {
            return Outbound::Pass;
        }
        if let Ok(addr) = peer.parse::<SocketAddr>() {
            if self.dropped.read().contains(&addr) {
                return Outbound::Drop;
            }
        }
        match self.delay_ms.load(Ordering::Relaxed) {
            0 => Outbound::Pass,
            ms => Outbound::Delay(Duration::from_millis(ms)),
        }
    }

    /// The faults set, for `DEBUG BUS-STATUS` (dropped peers sorted, delay in ms).
    pub fn describe(&self) -> (Vec<SocketAddr>, u64) {
        let mut dropped: Vec<SocketAddr> = self.dropped.read().iter().copied().collect();
        dropped.sort();
        (dropped, self.delay_ms.load(Ordering::Relaxed))
    }
}

/// This process's bus faults.
pub fn bus() -> &'static BusFaults {
    static FAULTS: LazyLock<BusFaults> = LazyLock::new(BusFaults::default);
    &FAULTS
}

/// A failpoint named `name` (one of [`FAILPOINTS`]). Configured with the `fail` crate's
/// actions; `return` and `panic` crash the process on the spot (abort: nothing is flushed and
/// no reply leaves, as with SIGKILL), `sleep(ms)` and `pause` hold the thread. A no-op unless
/// built with the `failpoints` feature.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| crash(name));
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Ends the process at once, from a failpoint.
#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing the process");
    std::process::abort()
}

/// Whether this build has failpoints.
pub const fn has_failpoints() -> bool {
    cfg!(feature = "failpoints")
}

/// At start, with failpoints built in: applies `FAILPOINTS` (`name=actions;...`) and makes a
/// failpoint's `panic` end the process (a panic in a task would otherwise end the task only).
/// Returns an error for a malformed `FAILPOINTS`.
pub fn setup() -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if message.starts_with("failpoint ") {
                std::process::abort();
            }
        }));
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, actions) = item
                    .split_once('=')
                    .ok_or_else(|| format!("FAILPOINTS: {item:?} is not name=actions"))?;
                configure(name.trim(), actions.trim())?;
            }
        }
    }
    Ok(())
}

/// Sets failpoint `name` to `actions` (the `fail` crate's syntax; `off` disarms it).
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    if !FAILPOINTS.iter().any(|(n, _)| *n == name) {
        let known: Vec<&str> = FAILPOINTS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown failpoint '{name}' (known: {})", known.join(", ")));
    }
    #[cfg(feature = "failpoints")]
    {
        fail::cfg(name, actions)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = actions;
        Err("failpoints are not compiled in (build with --features failpoints)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_fault_passes_everything() {
        let f = BusFaults::default();
        assert_eq!(f.outbound("127.0.0.1:17000"), Outbound::Pass);
        assert_eq!(f.outbound("not-an-address"), Outbound::Pass);
    }

    #[test]
    fn dropped_peers_fail_and_others_are_delayed_until_healed() {
        let f = BusFaults::default();
        f.drop_peers([addr("127.0.0.1:17000")]);
        f.set_delay(Duration::from_millis(30));
        assert_eq!(f.outbound("127.0.0.1:17000"), Outbound::Drop);
        assert_eq!(f.outbound("127.0.0.1:17001"), Outbound::Delay(Duration::from_millis(30)));
        assert_eq!(f.describe(), (vec![addr("127.0.0.1:17000")], 30));
        f.heal();
        assert_eq!(f.outbound("127.0.0.1:17000"), Outbound::Pass);
        assert_eq!(f.describe(), (vec![], 0));
    }

    #[test]
    fn unknown_failpoints_are_refused() {
        let e = configure("no-such-point", "return").unwrap_err();
        assert!(e.contains("unknown failpoint"), "{e}");
    }
}
