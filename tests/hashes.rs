//! Hash commands reply exactly as Redis 7 does: every command, option and error path is sent
//! to our node and to the reference Redis and the replies compared byte for byte. Hashes stay
//! small (compact) so field order is Redis's insertion order on both sides.

mod common;

use common::{Differential, TestNode};

fn diff(node: &TestNode, name: &str) -> Option<Differential> {
    Differential::new(node, name)
}

/// Switches both connections of `d` to RESP3 (HELLO's reply differs, so it is not compared).
fn resp3(d: &mut Differential) {
    d.ours.cmd(&[b"HELLO", b"3"]);
    d.theirs.cmd(&[b"HELLO", b"3"]);
}

#[test]
fn hset_hget_hmset_hsetnx_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hset") else { return };
    d.check_str(&["HSET", "$h", "a", "1", "b", "2"]);
    d.check_str(&["HSET", "$h", "a", "3", "c", "4"]);
    d.check_str(&["HSET", "$h", "a"]);
    d.check_str(&["HSET", "$h", "a", "1", "b"]);
    d.check_str(&["HSET", "$h"]);
    d.check_str(&["HGET", "$h", "a"]);
    d.check_str(&["HGET", "$h", "nope"]);
    d.check_str(&["HGET", "$missing", "a"]);
    d.check_str(&["HMSET", "$h", "d", "5", "e", "6"]);
    d.check_str(&["HMSET", "$h", "d", "5", "e"]);
    d.check_str(&["HMSET", "$h2", "x", "y"]);
    d.check_str(&["HSETNX", "$h", "a", "new"]);
    d.check_str(&["HSETNX", "$h", "z", "new"]);
    d.check_str(&["HSETNX", "$h3", "z", "new"]);
    d.check_str(&["HGETALL", "$h"]);
    d.check_str(&["HGETALL", "$h3"]);
    d.check_str(&["HSET", "$h", "", ""]);
    d.check_str(&["HGET", "$h", ""]);
    d.check_str(&["HSETNX", "$h"]);
}

#[test]
fn wrong_type_is_refused_by_every_hash_command() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hwrongtype") else { return };
    d.check_str(&["SET", "$s", "v"]);
    for args in [
        &["HSET", "$s", "a", "1"][..],
        &["HSETNX", "$s", "a", "1"],
        &["HMSET", "$s", "a", "1"],
        &["HGET", "$s", "a"],
        &["HMGET", "$s", "a", "b"],
        &["HDEL", "$s", "a"],
        &["HEXISTS", "$s", "a"],
        &["HLEN", "$s"],
        &["HSTRLEN", "$s", "a"],
        &["HKEYS", "$s"],
        &["HVALS", "$s"],
        &["HGETALL", "$s"],
        &["HINCRBY", "$s", "a", "1"],
        &["HINCRBYFLOAT", "$s", "a", "1"],
        &["HSCAN", "$s", "0"],
        &["HRANDFIELD", "$s"],
        &["HRANDFIELD", "$s", "2"],
    ] {
        d.check_str(args);
    }
    d.check_str(&["GET", "$s"]);
}

#[test]
fn hmget_hdel_hexists_hlen_hstrlen_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hdel") else { return };
    d.check_str(&["HSET", "$h", "a", "1", "b", "hello", "c", "3"]);
    d.check_str(&["HMGET", "$h", "a", "nope", "b"]);
    d.check_str(&["HMGET", "$missing", "a", "b"]);
    d.check_str(&["HEXISTS", "$h", "a"]);
    d.check_str(&["HEXISTS", "$h", "nope"]);
    d.check_str(&["HEXISTS", "$missing", "a"]);
    d.check_str(&["HLEN", "$h"]);
    d.check_str(&["HLEN", "$missing"]);
    d.check_str(&["HSTRLEN", "$h", "b"]);
    d.check_str(&["HSTRLEN", "$h", "nope"]);
    d.check_str(&["HSTRLEN", "$missing", "b"]);
    d.check_str(&["HDEL", "$h", "a", "a", "nope"]);
    d.check_str(&["HDEL", "$missing", "a"]);
    d.check_str(&["HGETALL", "$h"]);
    // Deleting the last fields deletes the key.
    d.check_str(&["HDEL", "$h", "b", "c", "d"]);
    d.check_str(&["EXISTS", "$h"]);
    d.check_str(&["HLEN", "$h"]);
    d.check_str(&["HDEL", "$h"]);
}

#[test]
fn hkeys_hvals_hgetall_keep_insertion_order_in_resp2_and_resp3() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hgetall") else { return };
    d.check_str(&["HSET", "$h", "zeta", "1", "alpha", "2", "mid", "3"]);
    d.check_str(&["HSET", "$h", "alpha", "changed", "new", "4"]);
    d.check_str(&["HDEL", "$h", "zeta"]);
    d.check_str(&["HSET", "$h", "zeta", "again"]);
    for c in ["HKEYS", "HVALS", "HGETALL"] {
        d.check_str(&[c, "$h"]);
        d.check_str(&[c, "$missing"]);
    }
    resp3(&mut d);
    for c in ["HKEYS", "HVALS", "HGETALL"] {
        d.check_str(&[c, "$h"]);
        d.check_str(&[c, "$missing"]);
    }
    d.check_str(&["HGET", "$h", "nope"]);
    d.check_str(&["HMGET", "$h", "nope", "mid"]);
}

#[test]
fn hincrby_matches_redis_including_errors() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hincrby") else { return };
    d.check_str(&["HINCRBY", "$h", "n", "5"]);
    d.check_str(&["HINCRBY", "$h", "n", "-12"]);
    d.check_str(&["HINCRBY", "$h", "n", "x"]);
    d.check_str(&["HINCRBY", "$h", "n", "1.5"]);
    d.check_str(&["HSET", "$h", "s", "abc", "big", "9223372036854775807", "sp", " 1", "z", "007"]);
    d.check_str(&["HINCRBY", "$h", "s", "1"]);
    d.check_str(&["HINCRBY", "$h", "sp", "1"]);
    d.check_str(&["HINCRBY", "$h", "z", "1"]);
    d.check_str(&["HINCRBY", "$h", "big", "1"]);
    d.check_str(&["HINCRBY", "$h", "big", "-1"]);
    d.check_str(&["HSET", "$h", "small", "-9223372036854775808"]);
    d.check_str(&["HINCRBY", "$h", "small", "-1"]);
    d.check_str(&["HINCRBY", "$h", "small", "9223372036854775807"]);
    d.check_str(&["HINCRBY", "$h", "n", "9223372036854775808"]);
    d.check_str(&["HGETALL", "$h"]);
    // A bad increment on a missing key creates nothing.
    d.check_str(&["HINCRBY", "$h2", "n", "x"]);
    d.check_str(&["EXISTS", "$h2"]);
}

#[test]
fn hincrbyfloat_matches_redis_including_errors() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hincrbyfloat") else { return };
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "10.5"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "0.25"]);
    // Not exact in binary: Redis's long double digits are emulated.
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "0.1"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "x", "1.1"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "x", "0.2"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "-5"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "5.0e3"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "1e-20"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "g", "3"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "abc"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", " 1"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "inf"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "-inf"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "f", "nan"]);
    d.check_str(&["HSET", "$h", "s", "abc", "i", "7", "inf", "inf"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "s", "1"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "i", "0.25"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "inf", "1"]);
    d.check_str(&["HINCRBYFLOAT", "$h", "i", "-7.25"]);
    d.check_str(&["HGETALL", "$h"]);
    d.check_str(&["HINCRBYFLOAT", "$h2", "f", "x"]);
    d.check_str(&["EXISTS", "$h2"]);
}

#[test]
fn hscan_returns_a_compact_hash_in_one_reply() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hscan") else { return };
    d.check_str(&["HSET", "$h", "apple", "1", "banana", "2", "avocado", "3", "cherry", "4"]);
    d.check_str(&["HSCAN", "$h", "0"]);
    d.check_str(&["HSCAN", "$h", "0", "MATCH", "a*"]);
    d.check_str(&["HSCAN", "$h", "0", "match", "*", "count", "1"]);
    d.check_str(&["HSCAN", "$h", "0", "MATCH", "x*"]);
    d.check_str(&["HSCAN", "$h", "17"]);
    d.check_str(&["HSCAN", "$h", "-1"]);
    d.check_str(&["HSCAN", "$h", "+5"]);
    d.check_str(&["HSCAN", "$h", ""]);
    d.check_str(&["HSCAN", "$h", "abc"]);
    d.check_str(&["HSCAN", "$h", " 1"]);
    d.check_str(&["HSCAN", "$h", "18446744073709551616"]);
    d.check_str(&["HSCAN", "$h", "0", "COUNT", "0"]);
    d.check_str(&["HSCAN", "$h", "0", "COUNT", "x"]);
    d.check_str(&["HSCAN", "$h", "0", "COUNT"]);
    d.check_str(&["HSCAN", "$h", "0", "MATCH"]);
    d.check_str(&["HSCAN", "$h", "0", "NOVALUES"]);
    d.check_str(&["HSCAN", "$h", "0", "TYPE", "string"]);
    // A missing key replies an empty scan before looking at the options.
    d.check_str(&["HSCAN", "$missing", "0"]);
    d.check_str(&["HSCAN", "$missing", "0", "COUNT", "0"]);
    d.check_str(&["HSCAN", "$missing", "x"]);
    d.check_str(&["HSCAN", "$h"]);
}

#[test]
fn hscan_of_a_large_hash_returns_every_field() {
    let node = TestNode::start();
    let mut r = node.raw();
    let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), b"big".to_vec()];
    for i in 0..300 {
        args.push(format!("f{i}").into_bytes());
        args.push(format!("v{i}").into_bytes());
    }
    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    assert_eq!(r.cmd(&refs), b":300\r\n");
    let reply = String::from_utf8(r.cmd(&[b"HSCAN", b"big", b"0", b"MATCH", b"f1*"])).unwrap();
    assert!(reply.starts_with("*2\r\n$1\r\n0\r\n*222\r\n"), "{reply}");
    assert_eq!(r.cmd(&[b"HLEN", b"big"]), b":300\r\n");
}

#[test]
fn hrandfield_deterministic_cases_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = diff(&node, "hrandfield") else { return };
    d.check_str(&["HRANDFIELD", "$missing"]);
    d.check_str(&["HRANDFIELD", "$missing", "3"]);
    d.check_str(&["HRANDFIELD", "$missing", "-3", "WITHVALUES"]);
    d.check_str(&["HSET", "$h", "a", "1", "b", "2", "c", "3"]);
    // A count at least the size returns the whole hash in order.
    d.check_str(&["HRANDFIELD", "$h", "3"]);
    d.check_str(&["HRANDFIELD", "$h", "10", "WITHVALUES"]);
    d.check_str(&["HRANDFIELD", "$h", "0"]);
    d.check_str(&["HRANDFIELD", "$h", "x"]);
    d.check_str(&["HRANDFIELD", "$h", "1", "WITHVALUE"]);
    d.check_str(&["HRANDFIELD", "$h", "1", "WITHVALUES", "x"]);
    d.check_str(&["HRANDFIELD", "$h", "-9223372036854775808"]);
    d.check_str(&["HRANDFIELD", "$h", "9223372036854775807", "WITHVALUES"]);
    d.check_str(&["HRANDFIELD", "$h", "-4611686018427387904", "WITHVALUES"]);
    d.check_str(&["HRANDFIELD", "$h", "-4611686018427387905", "WITHVALUES"]);
    d.check_str(&["HSET", "$one", "only", "v"]);
    d.check_str(&["HRANDFIELD", "$one"]);
    d.check_str(&["HRANDFIELD", "$one", "-3", "WITHVALUES"]);
    resp3(&mut d);
    d.check_str(&["HRANDFIELD", "$h", "5", "WITHVALUES"]);
    d.check_str(&["HRANDFIELD", "$one", "-2", "WITHVALUES"]);
    d.check_str(&["HRANDFIELD", "$missing"]);
}

#[tokio::test]
async fn hrandfield_random_replies_have_the_right_shape() {
    let node = TestNode::start();
    let mut c = node.client().await;
    let fields: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for f in &fields {
        let _: i64 =
            redis::cmd("HSET").arg("h").arg(f).arg(format!("v-{f}")).query_async(&mut c).await.unwrap();
    }
    let one: String = redis::cmd("HRANDFIELD").arg("h").query_async(&mut c).await.unwrap();
    assert!(fields.contains(&one));
    let distinct: Vec<String> = redis::cmd("HRANDFIELD").arg("h").arg(7).query_async(&mut c).await.unwrap();
    assert_eq!(distinct.len(), 7);
    let mut sorted = distinct.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "positive count gives distinct fields");
    let repeats: Vec<String> = redis::cmd("HRANDFIELD").arg("h").arg(-50).query_async(&mut c).await.unwrap();
    assert_eq!(repeats.len(), 50);
    assert!(repeats.iter().all(|f| fields.contains(f)));
    let pairs: Vec<String> =
        redis::cmd("HRANDFIELD").arg("h").arg(-5).arg("WITHVALUES").query_async(&mut c).await.unwrap();
    assert_eq!(pairs.len(), 10);
    for p in pairs.chunks(2) {
        assert_eq!(p[1], format!("v-{}", p[0]));
    }
}

#[test]
fn hrandfield_resp3_withvalues_replies_pairs() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd(&[b"HELLO", b"3"]);
    r.cmd(&[b"HSET", b"h", b"a", b"1", b"b", b"2", b"c", b"3"]);
    let reply = String::from_utf8(r.cmd(&[b"HRANDFIELD", b"h", b"-2", b"WITHVALUES"])).unwrap();
    assert!(reply.starts_with("*2\r\n*2\r\n$1\r\n"), "{reply}");
    let reply = String::from_utf8(r.cmd(&[b"HRANDFIELD", b"h", b"2", b"WITHVALUES"])).unwrap();
    assert!(reply.starts_with("*2\r\n*2\r\n$1\r\n"), "{reply}");
}

#[test]
fn large_hashes_convert_and_stay_complete() {
    let node = TestNode::with_config(|c| c.hash_max_listpack_entries = 4);
    let mut r = node.raw();
    for i in 0..10 {
        let f = format!("f{i}");
        assert_eq!(r.cmd(&[b"HSET", b"h", f.as_bytes(), b"v"]), b":1\r\n");
    }
    assert_eq!(r.cmd(&[b"HLEN", b"h"]), b":10\r\n");
    let all = String::from_utf8(r.cmd(&[b"HGETALL", b"h"])).unwrap();
    assert!(all.starts_with("*20\r\n"));
    for i in 0..10 {
        assert!(all.contains(&format!("\r\nf{i}\r\n")));
    }
    // A long value converts too, and the value is kept whole.
    let long = vec![b'x'; 100];
    assert_eq!(r.cmd(&[b"HSET", b"h2", b"f", &long]), b":1\r\n");
    assert_eq!(r.cmd(&[b"HSTRLEN", b"h2", b"f"]), b":100\r\n");
}

#[test]
fn hash_reads_count_keyspace_hits_and_misses() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd(&[b"HSET", b"h", b"a", b"1"]);
    let stats = &node.server.keyspace.stats;
    let (h0, m0) = (
        stats.hits.load(std::sync::atomic::Ordering::Relaxed),
        stats.misses.load(std::sync::atomic::Ordering::Relaxed),
    );
    r.cmd(&[b"HGET", b"h", b"a"]);
    r.cmd(&[b"HGET", b"nope", b"a"]);
    assert_eq!(stats.hits.load(std::sync::atomic::Ordering::Relaxed), h0 + 1);
    assert_eq!(stats.misses.load(std::sync::atomic::Ordering::Relaxed), m0 + 1);
}
