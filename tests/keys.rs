//! Generic key commands: replies identical to Redis 7 for every option and error, and the
//! properties of the non-deterministic ones (SCAN, KEYS order, RANDOMKEY, TTL countdown).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Differential, Raw, TestNode};

/// Runs every command through the differential harness.
fn check_all(d: &mut Differential, cmds: &[&[&str]]) {
    for c in cmds {
        d.check_str(c);
    }
}

/// Parses a flat RESP reply: bulk strings of an array (nested arrays flattened), integers
/// as text.
fn strings(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    let mut out = Vec::new();
    let mut lines = text.split("\r\n");
    while let Some(line) = lines.next() {
        if line.starts_with('$') && line != "$-1" {
            out.push(lines.next().unwrap_or_default().to_string());
        } else if let Some(n) = line.strip_prefix(':') {
            out.push(n.to_string());
        }
    }
    out
}

/// A whole SCAN iteration with `extra` options: every key returned and the number of calls.
fn scan_all(raw: &mut Raw, extra: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let reply = strings(raw.cmd_str(&args).as_bytes());
        calls += 1;
        cursor = reply[0].clone();
        keys.extend_from_slice(&reply[1..]);
        if cursor == "0" {
            return (keys, calls);
        }
    }
}

#[test]
fn del_unlink_exists_and_touch_count_live_keys() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_del") else { return };
    check_all(
        &mut d,
        &[
            &["SET", "$a", "1"],
            &["SET", "$b", "2"],
            &["SET", "$c", "3"],
            &["EXISTS", "$a", "$b", "$missing", "$a"],
            &["TOUCH", "$a", "$missing", "$b"],
            &["DEL", "$a", "$missing", "$a"],
            &["EXISTS", "$a"],
            &["UNLINK", "$b", "$c", "$missing"],
            &["EXISTS", "$b", "$c"],
            &["DEL"],
            &["UNLINK"],
            &["EXISTS"],
            &["TOUCH"],
        ],
    );
}

#[test]
fn type_names_the_value_kind() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_type") else { return };
    check_all(
        &mut d,
        &[&["TYPE", "$s"], &["SET", "$s", "v"], &["TYPE", "$s"], &["TYPE"], &["TYPE", "$s", "x"]],
    );
}

#[test]
fn expire_family_honours_nx_xx_gt_lt() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_expire_opts") else { return };
    check_all(
        &mut d,
        &[
            &["EXPIRE", "$k", "100"],
            &["SET", "$k", "v"],
            &["EXPIRE", "$k", "100", "XX"],
            &["EXPIRE", "$k", "100", "GT"],
            &["EXPIRE", "$k", "100", "LT"],
            &["TTL", "$k"],
            &["PERSIST", "$k"],
            &["EXPIRE", "$k", "100", "NX"],
            &["EXPIRE", "$k", "200", "nx"],
            &["EXPIRE", "$k", "300", "XX"],
            &["EXPIRE", "$k", "200", "GT"],
            &["EXPIRE", "$k", "400", "GT"],
            &["EXPIRE", "$k", "500", "gt", "XX"],
            &["TTL", "$k"],
            &["EXPIRE", "$k", "600", "LT"],
            &["EXPIRE", "$k", "450", "LT"],
            &["EXPIRE", "$k", "50", "LT", "xx"],
            &["TTL", "$k"],
            &["PEXPIRE", "$k", "70000", "GT"],
            &["TTL", "$k"],
            &["EXPIREAT", "$k", "4000000000", "GT"],
            &["EXPIRETIME", "$k"],
            &["PEXPIREAT", "$k", "4000000000000", "LT"],
            &["PEXPIREAT", "$k", "3999999999999", "LT"],
            &["PEXPIRETIME", "$k"],
            &["EXPIREAT", "$k", "4000000000", "NX"],
            &["EXPIREAT", "$missing", "4000000000", "XX"],
        ],
    );
}

#[test]
fn expire_family_rejects_bad_options_and_times() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_expire_errors") else { return };
    check_all(
        &mut d,
        &[
            &["SET", "$k", "v"],
            &["EXPIRE", "$k", "100", "NX", "XX"],
            &["EXPIRE", "$k", "100", "NX", "GT"],
            &["PEXPIRE", "$k", "100", "LT", "NX"],
            &["EXPIRE", "$k", "100", "GT", "LT"],
            &["EXPIREAT", "$k", "100", "XX", "FOO"],
            &["PEXPIREAT", "$k", "100", "bar"],
            &["EXPIRE", "$k", "abc"],
            &["EXPIRE", "$k", "1.5"],
            &["EXPIRE", "$k", "abc", "FOO"],
            &["EXPIRE", "$k", "9223372036854775807"],
            &["EXPIRE", "$k", "-9223372036854775807"],
            &["PEXPIRE", "$k", "9223372036854775807"],
            &["EXPIREAT", "$k", "9223372036854775807"],
            &["EXPIRE", "$missing", "9223372036854775807"],
            &["EXPIRE", "$k"],
            &["PEXPIREAT", "$k"],
            &["TTL", "$k"],
            &["PEXPIREAT", "$k", "9223372036854775807"],
            &["PEXPIRETIME", "$k"],
        ],
    );
}

#[test]
fn expire_in_the_past_deletes_the_key() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_expire_past") else { return };
    check_all(
        &mut d,
        &[
            &["SET", "$a", "v"],
            &["EXPIRE", "$a", "-1"],
            &["EXISTS", "$a"],
            &["SET", "$a", "v"],
            &["PEXPIRE", "$a", "0"],
            &["EXISTS", "$a"],
            &["SET", "$a", "v"],
            &["EXPIREAT", "$a", "1"],
            &["EXISTS", "$a"],
            &["SET", "$a", "v"],
            &["PEXPIREAT", "$a", "-5"],
            &["GET", "$a"],
            &["SET", "$a", "v"],
            &["EXPIRE", "$a", "-1", "GT"],
            &["EXPIRE", "$a", "-1", "LT"],
            &["EXISTS", "$a"],
        ],
    );
}

#[test]
fn ttl_and_expiretime_report_missing_persistent_and_rounded_times() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_ttl") else { return };
    check_all(
        &mut d,
        &[
            &["TTL", "$k"],
            &["PTTL", "$k"],
            &["EXPIRETIME", "$k"],
            &["PEXPIRETIME", "$k"],
            &["SET", "$k", "v"],
            &["TTL", "$k"],
            &["PTTL", "$k"],
            &["EXPIRETIME", "$k"],
            &["PEXPIRETIME", "$k"],
            &["PEXPIREAT", "$k", "4000000000499"],
            &["EXPIRETIME", "$k"],
            &["PEXPIRETIME", "$k"],
            &["PEXPIREAT", "$k", "4000000000500"],
            &["EXPIRETIME", "$k"],
            &["EXPIRE", "$k", "1000"],
            &["TTL", "$k"],
            &["PERSIST", "$k"],
            &["PERSIST", "$k"],
            &["PERSIST", "$missing"],
            &["TTL", "$k"],
            &["PTTL"],
            &["EXPIRETIME", "$k", "x"],
        ],
    );
}

#[test]
fn a_key_expires_after_its_pexpire_and_ttl_counts_down() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd_str(&["SET", "k", "v"]);
    assert_eq!(r.cmd_str(&["PEXPIRE", "k", "150"]), ":1\r\n");
    let pttl: i64 = r.cmd_str(&["PTTL", "k"]).trim()[1..].parse().unwrap();
    assert!((1..=150).contains(&pttl), "pttl {pttl}");
    assert_eq!(r.cmd_str(&["TTL", "k"]), ":0\r\n");
    let at: i64 = r.cmd_str(&["PEXPIRETIME", "k"]).trim()[1..].parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now..=now + 150).contains(&at), "pexpiretime {at} now {now}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.cmd_str(&["PTTL", "k"]), ":-2\r\n");
    assert_eq!(r.cmd_str(&["EXISTS", "k"]), ":0\r\n");
    assert_eq!(r.cmd_str(&["GET", "k"]), "$-1\r\n");
}

#[test]
fn rename_moves_the_value_with_its_ttl() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_rename") else { return };
    check_all(
        &mut d,
        &[
            &["RENAME", "$src", "$dst"],
            &["RENAMENX", "$src", "$dst"],
            &["RENAME", "$src", "$src"],
            &["SET", "$src", "v1"],
            &["RENAME", "$src", "$src"],
            &["RENAMENX", "$src", "$src"],
            &["EXPIRE", "$src", "100"],
            &["RENAME", "$src", "$dst"],
            &["EXISTS", "$src"],
            &["GET", "$dst"],
            &["TTL", "$dst"],
            &["SET", "$src", "v2"],
            &["RENAME", "$src", "$dst"],
            &["GET", "$dst"],
            &["TTL", "$dst"],
            &["SET", "$src", "v3"],
            &["RENAMENX", "$src", "$dst"],
            &["GET", "$src"],
            &["RENAMENX", "$src", "$other"],
            &["GET", "$other"],
            &["EXISTS", "$src"],
            &["RENAME", "$src"],
            &["RENAMENX", "$a", "$b", "$c"],
        ],
    );
}

#[test]
fn keys_returns_the_matching_keys() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_keys") else { return };
    for k in ["alpha", "beta", "bob", "b[x", "c"] {
        d.check_str(&["SET", &format!("${k}"), "v"]);
    }
    let prefix = d.prefix.clone();
    for pat in ["*", "b*", "b?b", "[ab]*", "b\\[x", "*a", "nomatch*", "[^a]*"] {
        let pattern = format!("{prefix}{pat}");
        let (ours, theirs) = d.both(&[b"KEYS", pattern.as_bytes()]);
        let ours: BTreeSet<_> = strings(&ours).into_iter().collect();
        let theirs: BTreeSet<_> = strings(&theirs).into_iter().collect();
        assert_eq!(ours, theirs, "KEYS {pattern}");
    }
    d.check_str(&["KEYS"]);
    d.check_str(&["KEYS", "a", "b"]);
}

#[test]
fn scan_iterates_matching_keys_of_a_type() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_scan") else { return };
    for i in 0..30 {
        d.check_str(&["SET", &format!("$k{i}"), "v"]);
    }
    let prefix = d.prefix.clone();
    let all = format!("{prefix}*");
    let ones = format!("{prefix}k1*");
    for extra in [
        vec!["MATCH", all.as_str()],
        vec!["match", ones.as_str(), "count", "3"],
        vec!["MATCH", all.as_str(), "TYPE", "STRING", "COUNT", "1000"],
        vec!["MATCH", all.as_str(), "TYPE", "hash"],
        vec!["MATCH", all.as_str(), "TYPE", "nosuchtype"],
        vec!["TYPE", "string", "MATCH", all.as_str(), "MATCH", ones.as_str()],
    ] {
        let (ours, _) = scan_all(&mut d.ours, &extra);
        let (theirs, _) = scan_all(&mut d.theirs, &extra);
        let ours_set: BTreeSet<_> = ours.iter().cloned().collect();
        assert_eq!(ours.len(), ours_set.len(), "SCAN {extra:?} returned a key twice");
        assert_eq!(ours_set, theirs.into_iter().collect::<BTreeSet<_>>(), "SCAN {extra:?}");
    }
}

#[test]
fn scan_rejects_bad_cursors_counts_and_options() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "keys_scan_errors") else { return };
    check_all(
        &mut d,
        &[
            &["SCAN", "abc"],
            &["SCAN", " 0"],
            &["SCAN", "0 "],
            &["SCAN", "+"],
            &["SCAN", "1.5"],
            &["SCAN", "99999999999999999999999"],
            &["SCAN", "abc", "COUNT", "0"],
            &["SCAN", "0", "COUNT", "0"],
            &["SCAN", "0", "COUNT", "-1"],
            &["SCAN", "0", "COUNT", "abc"],
            &["SCAN", "0", "COUNT"],
            &["SCAN", "0", "MATCH"],
            &["SCAN", "0", "TYPE"],
            &["SCAN", "0", "FOO", "bar"],
            &["SCAN", "0", "COUNT", "10", "bar"],
            &["SCAN"],
        ],
    );
}

#[test]
fn scan_cursor_forms_accepted_by_strtoul_work() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd_str(&["SET", "k", "v"]);
    for cursor in ["", "+0", "000", "-0"] {
        let reply = strings(r.cmd_str(&["SCAN", cursor, "COUNT", "100000"]).as_bytes());
        assert_eq!(reply, vec!["0", "k"], "cursor {cursor:?}");
    }
}

#[test]
fn scan_returns_every_key_present_throughout_despite_concurrent_writes() {
    let node = TestNode::start();
    let mut r = node.raw();
    let stable: BTreeSet<String> = (0..1000).map(|i| format!("stable:{i}")).collect();
    for k in &stable {
        r.cmd_str(&["SET", k, "v"]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let mut w = node.raw();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                w.cmd_str(&["SET", &format!("churn:{i}"), "v"]);
                if i >= 50 {
                    w.cmd_str(&["DEL", &format!("churn:{}", i - 50)]);
                }
                i += 1;
            }
            i
        })
    };
    let (keys, calls) = scan_all(&mut r, &["COUNT", "10"]);
    stop.store(true, Ordering::Relaxed);
    let writes = churn.join().unwrap();
    let found: BTreeSet<String> = keys.into_iter().collect();
    let missing: Vec<_> = stable.difference(&found).collect();
    assert!(
        missing.is_empty(),
        "SCAN missed {} keys, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(calls > 10, "COUNT 10 should take many calls, took {calls}");
    assert!(writes > 0);
}

#[test]
fn randomkey_is_nil_when_empty_and_a_live_key_otherwise() {
    let node = TestNode::start();
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["RANDOMKEY"]), "$-1\r\n");
    let keys: BTreeSet<String> = (0..20).map(|i| format!("r{i}")).collect();
    for k in &keys {
        r.cmd_str(&["SET", k, "v"]);
    }
    r.cmd_str(&["SET", "gone", "v", "PX", "1"]);
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..50 {
        let k = strings(r.cmd_str(&["RANDOMKEY"]).as_bytes());
        assert!(keys.contains(&k[0]), "RANDOMKEY returned {k:?}");
    }
    assert_eq!(r.cmd_str(&["RANDOMKEY", "x"]), "-ERR wrong number of arguments for 'randomkey' command\r\n");
}

#[tokio::test]
async fn redis_crate_session_lifecycle() {
    let node = TestNode::start();
    let mut c = node.client().await;
    let _: () = redis::cmd("SET").arg("session:1").arg("data").query_async(&mut c).await.unwrap();
    let set: bool =
        redis::cmd("EXPIRE").arg("session:1").arg(60).arg("NX").query_async(&mut c).await.unwrap();
    assert!(set);
    let ttl: i64 = redis::cmd("TTL").arg("session:1").query_async(&mut c).await.unwrap();
    assert!((59..=60).contains(&ttl));
    let _: () = redis::cmd("RENAME").arg("session:1").arg("session:2").query_async(&mut c).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg("session:2").query_async(&mut c).await.unwrap();
    assert!((59_000..=60_000).contains(&ttl));
    let kind: String = redis::cmd("TYPE").arg("session:2").query_async(&mut c).await.unwrap();
    assert_eq!(kind, "string");
    let (cursor, keys): (String, Vec<String>) =
        redis::cmd("SCAN").arg(0).arg("COUNT").arg(100_000).query_async(&mut c).await.unwrap();
    assert_eq!((cursor.as_str(), keys), ("0", vec!["session:2".to_string()]));
    let removed: i64 = redis::cmd("DEL").arg("session:2").arg("session:1").query_async(&mut c).await.unwrap();
    assert_eq!(removed, 1);
    let exists: i64 = redis::cmd("EXISTS").arg("session:2").query_async(&mut c).await.unwrap();
    assert_eq!(exists, 0);
}
