//! MULTI / EXEC / DISCARD / WATCH / UNWATCH: Redis's replies, WATCH across connections, the
//! `redis` crate's transaction helper, and atomicity under concurrency.

mod common;

use std::time::Duration;

use common::{Differential, Raw, TestNode};

#[test]
fn queued_commands_run_on_exec_like_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_basic") else { return };
    d.check_str(&["MULTI"]);
    d.check_str(&["SET", "$a", "1"]);
    d.check_str(&["GET", "$a"]);
    d.check_str(&["DEL", "$b"]);
    d.check_str(&["EXISTS", "$a", "$b"]);
    d.check_str(&["EXEC"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["EXEC"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["SET", "$a", "2"]);
    d.check_str(&["DISCARD"]);
    d.check_str(&["GET", "$a"]);
}

#[test]
fn transaction_misuse_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_misuse") else { return };
    d.check_str(&["EXEC"]);
    d.check_str(&["DISCARD"]);
    d.check_str(&["MULTI", "x"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["WATCH", "$a"]);
    d.check_str(&["SET", "$a", "v"]);
    // Nested MULTI and WATCH inside MULTI do not abort the transaction.
    d.check_str(&["EXEC"]);
    d.check_str(&["UNWATCH"]);
    d.check_str(&["WATCH"]);
    d.check_str(&["UNWATCH", "x"]);
}

#[test]
fn a_command_that_fails_to_queue_aborts_exec() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_abort") else { return };
    for bad in [&["NOSUCHCOMMAND", "x"][..], &["GET"], &["SET", "$a"]] {
        d.check_str(&["MULTI"]);
        d.check_str(&["SET", "$a", "queued"]);
        d.check_str(bad);
        d.check_str(&["GET", "$a"]);
        d.check_str(&["EXEC"]);
        d.check_str(&["GET", "$a"]);
    }
}

#[test]
fn runtime_errors_inside_exec_do_not_stop_the_others() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_runtime") else { return };
    d.check_str(&["MULTI"]);
    d.check_str(&["SET", "$a", "1"]);
    d.check_str(&["SET", "$b", "v", "EX", "0"]);
    d.check_str(&["SET", "$b", "v", "BADOPTION"]);
    d.check_str(&["GET", "$a"]);
    d.check_str(&["EXEC"]);
    if cachegrid::commands::lookup(b"hset").is_some() {
        d.check_str(&["MULTI"]);
        d.check_str(&["HSET", "$h", "f", "v"]);
        d.check_str(&["GET", "$h"]);
        d.check_str(&["SET", "$a", "2"]);
        d.check_str(&["EXEC"]);
    }
}

/// A second connection to each side of `d`, for WATCH tests.
fn second(node: &TestNode) -> (Raw, Raw) {
    (node.raw(), Raw::connect(common::reference_redis().unwrap()))
}

#[test]
fn a_change_by_another_client_aborts_exec() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_watch_other") else { return };
    let (mut ours, mut theirs) = second(&node);
    let k = d.key("k");
    d.check(&[b"SET", &k, b"0"]);
    d.check(&[b"WATCH", &k]);
    assert_eq!(ours.cmd(&[b"SET", &k, b"changed"]), theirs.cmd(&[b"SET", &k, b"changed"]));
    d.check(&[b"MULTI"]);
    d.check(&[b"SET", &k, b"mine"]);
    assert_eq!(d.check(&[b"EXEC"]), b"*-1\r\n");
    d.check(&[b"GET", &k]);
    // EXEC unwatched everything: the next transaction runs.
    d.check(&[b"MULTI"]);
    d.check(&[b"SET", &k, b"mine"]);
    d.check(&[b"EXEC"]);
    // Deleting a watched key counts as a change too.
    d.check(&[b"WATCH", &k]);
    ours.cmd(&[b"DEL", &k]);
    theirs.cmd(&[b"DEL", &k]);
    d.check(&[b"MULTI"]);
    d.check(&[b"GET", &k]);
    assert_eq!(d.check(&[b"EXEC"]), b"*-1\r\n");
}

#[test]
fn untouched_watched_keys_let_exec_run() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_watch_untouched") else { return };
    let (mut ours, mut theirs) = second(&node);
    let (k, other) = (d.key("k"), d.key("other"));
    d.check(&[b"WATCH", &k, &other]);
    // Another client writes a different key, and reads the watched one.
    let elsewhere = d.key("elsewhere");
    ours.cmd(&[b"SET", &elsewhere, b"x"]);
    theirs.cmd(&[b"SET", &elsewhere, b"x"]);
    ours.cmd(&[b"GET", &k]);
    theirs.cmd(&[b"GET", &k]);
    d.check(&[b"MULTI"]);
    d.check(&[b"SET", &k, b"v"]);
    d.check(&[b"EXEC"]);
    // UNWATCH forgets: a later change does not abort.
    d.check(&[b"WATCH", &k]);
    d.check(&[b"UNWATCH"]);
    ours.cmd(&[b"SET", &k, b"y"]);
    theirs.cmd(&[b"SET", &k, b"y"]);
    d.check(&[b"MULTI"]);
    d.check(&[b"GET", &k]);
    d.check(&[b"EXEC"]);
}

#[test]
fn a_watched_key_that_expires_before_exec_aborts_it() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "tx_watch_expire") else { return };
    let k = d.key("k");
    d.check(&[b"SET", &k, b"v", b"PX", b"60"]);
    d.check(&[b"WATCH", &k]);
    std::thread::sleep(Duration::from_millis(120));
    d.check(&[b"MULTI"]);
    d.check(&[b"SET", &k, b"new"]);
    assert_eq!(d.check(&[b"EXEC"]), b"*-1\r\n");
    // A key already missing at WATCH time that stays missing does not abort.
    d.check(&[b"WATCH", &k]);
    d.check(&[b"MULTI"]);
    d.check(&[b"GET", &k]);
    d.check(&[b"EXEC"]);
}

#[test]
fn the_redis_crate_transaction_helper_works() {
    let node = TestNode::start();
    let mut con = redis::Client::open(node.url()).unwrap().get_connection().unwrap();
    let key = "tx:helper";
    let _: () = redis::cmd("SET").arg(key).arg("1").query(&mut con).unwrap();
    let (v,): (String,) = redis::transaction(&mut con, &[key], |con, pipe| {
        let old: String = redis::cmd("GET").arg(key).query(con)?;
        let next = old.parse::<i64>().unwrap() + 1;
        pipe.cmd("SET").arg(key).arg(next).ignore().cmd("GET").arg(key).query(con)
    })
    .unwrap();
    assert_eq!(v, "2");
}

#[test]
fn optimistic_increments_from_8_connections_are_exact() {
    let node = TestNode::start();
    const PER_THREAD: i64 = 50;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = node.url();
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let key = if t % 2 == 0 { "opt:a" } else { "opt:b" };
                for _ in 0..PER_THREAD {
                    let _: () = redis::transaction(&mut con, &[key], |con, pipe| {
                        let old: Option<i64> = redis::cmd("GET").arg(key).query(con)?;
                        pipe.cmd("SET").arg(key).arg(old.unwrap_or(0) + 1).ignore().query(con)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["GET", "opt:a"]), "$3\r\n200\r\n");
    assert_eq!(c.cmd_str(&["GET", "opt:b"]), "$3\r\n200\r\n");
}

#[test]
fn concurrent_incr_transactions_give_exact_totals() {
    if cachegrid::commands::lookup(b"incr").is_none() {
        eprintln!("skipping: INCR is not in the command table yet");
        return;
    }
    let node = TestNode::start();
    const ROUNDS: i64 = 200;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = node.url();
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                for _ in 0..ROUNDS {
                    let (a, b): (i64, i64) = redis::pipe()
                        .atomic()
                        .cmd("INCR")
                        .arg("atom:a")
                        .cmd("INCR")
                        .arg("atom:b")
                        .query(&mut con)
                        .unwrap();
                    // Both keys move together inside one transaction.
                    assert_eq!(a, b);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["GET", "atom:a"]), "$4\r\n1600\r\n");
    assert_eq!(c.cmd_str(&["GET", "atom:b"]), "$4\r\n1600\r\n");
}

/// UNWATCH queued in a transaction runs while EXEC holds the locks of the watched keys; it must
/// answer OK, not lock them again (the commands fuzzer found this deadlock).
#[test]
fn unwatch_queued_in_a_transaction_does_not_deadlock() {
    let node = TestNode::start();
    let Some(mut d) = common::Differential::new(&node, "unwatch_in_multi") else { return };
    d.check_str(&["WATCH", "$k", "$j"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["UNWATCH"]);
    d.check_str(&["SET", "$k", "1"]);
    d.check_str(&["UNWATCH"]);
    d.check_str(&["EXEC"]);
    d.check_str(&["GET", "$k"]);
}
