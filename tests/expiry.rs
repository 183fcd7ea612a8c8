//! Keys expire as in Redis: a read of an expired key finds nothing and deletes it, and the
//! active cycle reclaims expired keys that nobody reads.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::TestNode;

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn a_read_after_the_ttl_finds_nothing_and_counts_an_expired_key() {
    let node = TestNode::with_config(|c| c.hz = 1);
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["SET", "k", "v", "PX", "30"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(c.cmd_str(&["GET", "k"]), "$-1\r\n");
    assert_eq!(node.server.keyspace.len(), 0, "the lazy read removed it");
    assert_eq!(node.server.keyspace.stats.expired_keys.load(Ordering::Relaxed), 1);
}

#[test]
fn the_active_cycle_reclaims_expired_keys_nobody_reads() {
    let node = TestNode::with_config(|c| c.hz = 50);
    let mut c = node.raw();
    for i in 0..2000 {
        assert_eq!(c.cmd_str(&["SET", &format!("short:{i}"), "v", "PX", "1500"]), "+OK\r\n");
    }
    for i in 0..500 {
        assert_eq!(c.cmd_str(&["SET", &format!("long:{i}"), "v"]), "+OK\r\n");
    }
    // Some short keys may already be gone on a loaded machine: the cycle runs while we insert.
    assert!(node.server.keyspace.len() > 500);
    let reclaimed = wait_until(Duration::from_secs(10), || node.server.keyspace.len() == 500);
    assert!(reclaimed, "{} keys left", node.server.keyspace.len());
    assert_eq!(node.server.keyspace.stats.expired_keys.load(Ordering::Relaxed), 2000);
    assert!(node.server.keyspace.dataset_bytes() > 0);
    assert_eq!(c.cmd_str(&["GET", "long:7"]), "$1\r\nv\r\n");
}

#[test]
fn memory_accounting_returns_to_zero_when_keys_go() {
    let node = TestNode::with_config(|c| c.hz = 50);
    let mut c = node.raw();
    for i in 0..300 {
        // Long enough to outlive their own insertion on a loaded machine.
        c.cmd_str(&["SET", &format!("k:{i}"), &"x".repeat(200), "PX", "1500"]);
    }
    assert!(node.server.keyspace.dataset_bytes() > 300 * 200);
    assert!(wait_until(Duration::from_secs(10), || node.server.keyspace.dataset_bytes() == 0));
}
