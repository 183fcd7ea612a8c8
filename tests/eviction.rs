//! maxmemory: noeviction refuses writes with Redis's OOM error; the other policies evict the
//! keys Redis would evict and keep memory under the limit.

mod common;

use std::sync::atomic::Ordering;

use common::TestNode;

const LIMIT: u64 = 2 * 1024 * 1024;

fn node(policy: &str) -> TestNode {
    TestNode::with_config(|c| {
        c.maxmemory = LIMIT;
        c.maxmemory_policy = policy.into();
        c.hz = 50;
    })
}

fn value() -> String {
    "v".repeat(1000)
}

#[test]
fn noeviction_refuses_writes_but_serves_reads_and_deletes() {
    let node = node("noeviction");
    let mut c = node.raw();
    let mut refused = None;
    for i in 0..10_000 {
        let r = c.cmd_str(&["SET", &format!("k:{i}"), &value()]);
        if r != "+OK\r\n" {
            refused = Some((i, r));
            break;
        }
    }
    let (i, reply) = refused.expect("writes are refused once memory is full");
    assert_eq!(reply, "-OOM command not allowed when used memory > 'maxmemory'.\r\n");
    assert!(i > 500, "refused too early, at key {i}");
    assert_eq!(c.cmd_str(&["GET", "k:0"]), format!("$1000\r\n{}\r\n", value()));
    assert_eq!(c.cmd_str(&["DEL", "k:0", "k:1", "k:2"]), ":3\r\n");
    assert_eq!(node.server.keyspace.stats.evicted_keys.load(Ordering::Relaxed), 0);
}

#[test]
fn allkeys_lru_keeps_memory_under_the_limit_and_the_recently_used_keys() {
    let node = node("allkeys-lru");
    let mut c = node.raw();
    for i in 0..100 {
        c.cmd_str(&["SET", &format!("hot:{i}"), &value()]);
    }
    for i in 0..10_000 {
        assert_eq!(c.cmd_str(&["SET", &format!("cold:{i}"), &value()]), "+OK\r\n");
        if i % 50 == 0 {
            for h in 0..100 {
                c.cmd_str(&["GET", &format!("hot:{h}")]);
            }
        }
        assert!(node.server.used_memory() as u64 <= LIMIT + 64 * 1024, "over the limit at {i}");
    }
    assert!(node.server.keyspace.stats.evicted_keys.load(Ordering::Relaxed) > 5000);
    assert!(node.server.keyspace.len() < 2500);
    let hot_left = (0..100).filter(|h| c.cmd_str(&["EXISTS", &format!("hot:{h}")]) == ":1\r\n").count();
    assert!(hot_left >= 90, "only {hot_left} of 100 recently used keys survived");
}

#[test]
fn volatile_ttl_evicts_only_keys_with_a_ttl_nearest_first_then_refuses() {
    let node = node("volatile-ttl");
    let mut c = node.raw();
    for i in 0..500 {
        c.cmd_str(&["SET", &format!("keep:{i}"), &value()]);
    }
    let mut refused = false;
    for i in 0..5000 {
        let r = c.cmd_str(&["SET", &format!("tmp:{i}"), &value(), "EX", &(100_000 + i).to_string()]);
        if r.starts_with("-OOM") {
            refused = true;
            break;
        }
    }
    assert!(node.server.keyspace.stats.evicted_keys.load(Ordering::Relaxed) > 0);
    for i in 0..500 {
        assert_eq!(c.cmd_str(&["EXISTS", &format!("keep:{i}")]), ":1\r\n", "keep:{i} was evicted");
    }
    // Without TTL keys left to evict, writes of persistent keys are refused.
    let mut oom = refused;
    for i in 0..5000 {
        if c.cmd_str(&["SET", &format!("more:{i}"), &value()]).starts_with("-OOM") {
            oom = true;
            break;
        }
    }
    assert!(oom, "volatile-ttl must refuse writes when no key with a TTL is left");
}

#[test]
fn allkeys_lfu_keeps_frequently_read_keys() {
    let node = node("allkeys-lfu");
    let mut c = node.raw();
    for i in 0..50 {
        c.cmd_str(&["SET", &format!("hot:{i}"), &value()]);
    }
    for _ in 0..30 {
        for i in 0..50 {
            c.cmd_str(&["GET", &format!("hot:{i}")]);
        }
    }
    for i in 0..8000 {
        assert_eq!(c.cmd_str(&["SET", &format!("cold:{i}"), &value()]), "+OK\r\n");
    }
    let hot_left = (0..50).filter(|i| c.cmd_str(&["EXISTS", &format!("hot:{i}")]) == ":1\r\n").count();
    assert!(hot_left >= 45, "only {hot_left} of 50 frequently read keys survived");
}
