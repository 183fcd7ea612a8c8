//! String commands: replies identical to Redis 7 for every option and error path, plus the
//! TTL behaviour and typical flows through the `redis` crate.

mod common;

use std::time::Duration;

use cachegrid::store::{HashValue, Value};
use common::{Differential, TestNode};

/// Runs every command through the differential harness.
fn check_all(d: &mut Differential, cmds: &[&[&str]]) {
    for c in cmds {
        d.check_str(c);
    }
}

/// Makes `$name` a hash on both sides (hash commands are not part of this family), for the
/// WRONGTYPE paths.
fn make_hash(node: &TestNode, d: &mut Differential, name: &str) {
    let key = d.key(name);
    let mut h = HashValue::default();
    h.insert(b"f", b"v", Default::default());
    node.server.keyspace.lock_keys([&key[..]], 0).set(&key, Value::Hash(Box::new(h)), 0);
    d.theirs.cmd(&[b"HSET", &key, b"f", b"v"]);
}

/// The integer of a `:n` reply.
fn int(reply: &str) -> i64 {
    reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("not an integer: {reply}"))
}

#[test]
fn set_options_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_set") else { return };
    check_all(
        &mut d,
        &[
            &["SET", "$k", "v1", "XX"],
            &["SET", "$k", "v1", "NX"],
            &["SET", "$k", "v2", "NX"],
            &["SET", "$k", "v2", "nx", "GET"],
            &["SET", "$k", "v3", "XX", "GET"],
            &["SET", "$new", "v", "GET"],
            &["SET", "$k", "v", "EX", "100"],
            &["TTL", "$k"],
            &["SET", "$k", "v", "KEEPTTL"],
            &["TTL", "$k"],
            &["SET", "$k", "v"],
            &["TTL", "$k"],
            &["SET", "$k", "v", "PX", "100000"],
            &["TTL", "$k"],
            &["SET", "$k", "v", "EXAT", "4000000000"],
            &["EXPIRETIME", "$k"],
            &["SET", "$k", "v", "PXAT", "4000000000123"],
            &["PEXPIRETIME", "$k"],
            &["SET", "$k", "v", "EX", "abc", "EX", "50"],
            &["TTL", "$k"],
            &["SET", "$k", "v", "PXAT", "1"],
            &["EXISTS", "$k"],
            &["SET", "$k", "v", "NX", "XX"],
            &["SET", "$k", "v", "XX", "NX"],
            &["SET", "$k", "v", "EX", "10", "PX", "10"],
            &["SET", "$k", "v", "EX", "10", "KEEPTTL"],
            &["SET", "$k", "v", "KEEPTTL", "EX", "10"],
            &["SET", "$k", "v", "EX"],
            &["SET", "$k", "v", "FOO"],
            &["SET", "$k", "v", "EX", "0"],
            &["SET", "$k", "v", "EX", "-5"],
            &["SET", "$k", "v", "PX", "abc"],
            &["SET", "$k", "v", "EX", "9223372036854775807"],
            &["SET", "$k", "v", "PX", "9223372036854775807"],
            &["SET", "$k", "v", "EXAT", "9223372036854775807"],
            &["SET", "$k"],
        ],
    );
    make_hash(&node, &mut d, "h");
    check_all(&mut d, &[&["SET", "$h", "v", "GET"], &["TYPE", "$h"], &["SET", "$h", "v"], &["GET", "$h"]]);
}

#[test]
fn setnx_setex_psetex_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_setex") else { return };
    check_all(
        &mut d,
        &[
            &["SETNX", "$k", "a"],
            &["SETNX", "$k", "b"],
            &["GET", "$k"],
            &["SETEX", "$k", "100", "c"],
            &["GET", "$k"],
            &["TTL", "$k"],
            &["PSETEX", "$k", "200000", "d"],
            &["TTL", "$k"],
            &["SETEX", "$k", "0", "x"],
            &["SETEX", "$k", "-1", "x"],
            &["SETEX", "$k", "abc", "x"],
            &["SETEX", "$k", "9223372036854775807", "x"],
            &["PSETEX", "$k", "0", "x"],
            &["PSETEX", "$k", "9223372036854775807", "x"],
            &["GET", "$k"],
            &["SETEX", "$k", "10"],
            &["PSETEX", "$k", "10", "x", "y"],
            &["SETNX", "$k"],
        ],
    );
}

#[test]
fn mget_mset_msetnx_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_mset") else { return };
    make_hash(&node, &mut d, "h");
    check_all(
        &mut d,
        &[
            &["MSET", "$a", "1", "$b", "2", "$a", "3"],
            &["MGET", "$a", "$b", "$missing", "$h"],
            &["SET", "$c", "v", "EX", "100"],
            &["MSET", "$c", "4"],
            &["TTL", "$c"],
            &["MSETNX", "$d", "1", "$a", "9"],
            &["MGET", "$d", "$a"],
            &["MSETNX", "$d", "1", "$e", "2"],
            &["MGET", "$d", "$e"],
            &["MSET", "$a", "1", "$b"],
            &["MSETNX", "$a", "1", "$b"],
            &["MSET", "$a"],
            &["MSETNX", "$a"],
            &["MGET"],
        ],
    );
}

#[test]
fn getset_getdel_getex_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_getex") else { return };
    make_hash(&node, &mut d, "h");
    check_all(
        &mut d,
        &[
            &["GETSET", "$k", "a"],
            &["SET", "$k", "a", "EX", "100"],
            &["GETSET", "$k", "b"],
            &["TTL", "$k"],
            &["GETSET", "$h", "x"],
            &["GETDEL", "$k"],
            &["GETDEL", "$k"],
            &["GETDEL", "$h"],
            &["SET", "$k", "v"],
            &["GETEX", "$k"],
            &["GETEX", "$k", "EX", "100"],
            &["TTL", "$k"],
            &["GETEX", "$k", "PX", "200000"],
            &["TTL", "$k"],
            &["GETEX", "$k", "EXAT", "4000000000"],
            &["EXPIRETIME", "$k"],
            &["GETEX", "$k", "PXAT", "4000000000555"],
            &["PEXPIRETIME", "$k"],
            &["GETEX", "$k", "persist"],
            &["TTL", "$k"],
            &["GETEX", "$k", "PERSIST"],
            &["GETEX", "$k", "EX", "10", "PERSIST"],
            &["GETEX", "$k", "PERSIST", "EX", "10"],
            &["GETEX", "$k", "EX", "10", "PX", "10"],
            &["GETEX", "$k", "EX", "abc", "EX", "10"],
            &["TTL", "$k"],
            &["GETEX", "$k", "NX"],
            &["GETEX", "$k", "KEEPTTL"],
            &["GETEX", "$k", "GET"],
            &["GETEX", "$k", "EX"],
            &["GETEX", "$k", "EX", "abc"],
            &["GETEX", "$k", "EX", "0"],
            &["GETEX", "$k", "PX", "-1"],
            &["GETEX", "$missing", "EX", "abc"],
            &["GETEX", "$missing", "EX", "10", "PX", "1"],
            &["GETEX", "$h", "EX", "abc"],
            &["GETEX", "$k", "EXAT", "1"],
            &["EXISTS", "$k"],
            &["GETSET", "$k"],
            &["GETDEL", "$k", "x"],
            &["GETEX"],
        ],
    );
}

#[test]
fn integer_increments_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_incr") else { return };
    make_hash(&node, &mut d, "h");
    check_all(
        &mut d,
        &[
            &["INCR", "$n"],
            &["INCRBY", "$n", "41"],
            &["DECR", "$n"],
            &["DECRBY", "$n", "-10"],
            &["DECRBY", "$n", "100"],
            &["GET", "$n"],
            &["SET", "$n", "9223372036854775806", "EX", "100"],
            &["INCR", "$n"],
            &["INCR", "$n"],
            &["TTL", "$n"],
            &["INCRBY", "$n", "-9223372036854775807"],
            &["SET", "$n", "-9223372036854775807"],
            &["DECR", "$n"],
            &["DECR", "$n"],
            &["DECRBY", "$n", "-9223372036854775808"],
            &["DECRBY", "$n", "1"],
            &["INCRBY", "$n", "abc"],
            &["INCRBY", "$n", "1.5"],
            &["DECRBY", "$n", "9223372036854775808"],
            &["SET", "$s", "abc"],
            &["INCR", "$s"],
            &["SET", "$s", " 1"],
            &["INCR", "$s"],
            &["SET", "$s", "01"],
            &["DECR", "$s"],
            &["SET", "$s", "1.0"],
            &["INCRBY", "$s", "1"],
            &["SET", "$s", ""],
            &["INCR", "$s"],
            &["INCR", "$h"],
            &["DECRBY", "$h", "1"],
            &["INCRBY", "$h", "abc"],
            &["INCR"],
            &["INCRBY", "$n"],
            &["DECR", "$n", "1"],
        ],
    );
}

#[test]
fn incrbyfloat_matches_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_incrbyfloat") else { return };
    make_hash(&node, &mut d, "h");
    check_all(
        &mut d,
        &[
            &["INCRBYFLOAT", "$f", "10.5"],
            &["INCRBYFLOAT", "$f", "0.1"],
            &["INCRBYFLOAT", "$f", "-5"],
            &["INCRBYFLOAT", "$f", "-5.6"],
            &["SET", "$f", "5.0e3", "EX", "100"],
            &["INCRBYFLOAT", "$f", "2.0e2"],
            &["TTL", "$f"],
            &["INCRBYFLOAT", "$big", "1e20"],
            &["INCRBYFLOAT", "$big", "5200"],
            &["INCRBYFLOAT", "$huge", "1e400"],
            &["INCRBYFLOAT", "$huge", "-1e400"],
            &["INCRBYFLOAT", "$huge", "1e5000"],
            &["INCRBYFLOAT", "$huge", "1e-5000"],
            &["INCRBYFLOAT", "$huge", "-0x1.8p3"],
            &["SET", "$x", "1000"],
            &["INCRBYFLOAT", "$x", "0.1"],
            &["INCRBYFLOAT", "$x", "0.1"],
            &["SET", "$x", "1e15"],
            &["INCRBYFLOAT", "$x", "0.3"],
            &["SET", "$x", "inf"],
            &["INCRBYFLOAT", "$x", "abc"],
            &["INCRBYFLOAT", "$x", "1"],
            &["SET", "$x", "1e"],
            &["INCRBYFLOAT", "$x", "1"],
            &["SET", "$x", "1.5e+2"],
            &["INCRBYFLOAT", "$x", "1E-1"],
            &["INCRBYFLOAT", "$x", "5."],
            &["INCRBYFLOAT", "$x", "."],
            &["INCRBYFLOAT", "$x", "1e+"],
            &["INCRBYFLOAT", "$x", "--1"],
            &["INCRBYFLOAT", "$x", "Infinity"],
            &["INCRBYFLOAT", "$f", "0x10"],
            &["SET", "$f", "0.3"],
            &["INCRBYFLOAT", "$f", "1e-20"],
            &["SET", "$f", "1"],
            &["INCRBYFLOAT", "$f", "-1"],
            &["INCRBYFLOAT", "$f", "1.5e-7"],
            &["INCRBYFLOAT", "$f", ".5"],
            &["INCRBYFLOAT", "$f", "+3"],
            &["INCRBYFLOAT", "$f", "inf"],
            &["INCRBYFLOAT", "$f", "-inf"],
            &["INCRBYFLOAT", "$f", "nan"],
            &["INCRBYFLOAT", "$f", "abc"],
            &["INCRBYFLOAT", "$f", " 1"],
            &["INCRBYFLOAT", "$f", "1 "],
            &["INCRBYFLOAT", "$f", ""],
            &["SET", "$f", "abc"],
            &["INCRBYFLOAT", "$f", "1"],
            &["INCRBYFLOAT", "$f", "abc"],
            &["INCRBYFLOAT", "$h", "1"],
            &["INCRBYFLOAT", "$f"],
        ],
    );
}

#[test]
fn incrbyfloat_digits_match_redis_long_double_for_many_values() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_incrbyfloat_many") else { return };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..150 {
        let sign = if next(3) == 0 { "-" } else { "" };
        let digits = next(12) as u32 + 1;
        let int = next(10u64.pow(digits));
        let frac = format!("{:0width$}", next(1_000_000), width = 6);
        let incr = match next(4) {
            0 => format!("{sign}{int}"),
            1 => {
                let len = next(6) as usize + 1;
                format!("{sign}{int}.{}", &frac[..len])
            }
            2 => format!("{sign}0.{frac}"),
            _ => format!("{sign}{}e{}", next(1000), next(40) as i64 - 20),
        };
        d.check_str(&["INCRBYFLOAT", "$acc", &incr]);
    }
}

#[test]
fn append_strlen_getrange_setrange_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "str_ranges") else { return };
    make_hash(&node, &mut d, "h");
    check_all(
        &mut d,
        &[
            &["STRLEN", "$s"],
            &["APPEND", "$s", "Hello"],
            &["APPEND", "$s", " World"],
            &["APPEND", "$s", ""],
            &["STRLEN", "$s"],
            &["GETRANGE", "$s", "0", "4"],
            &["GETRANGE", "$s", "-5", "-1"],
            &["GETRANGE", "$s", "-1", "-5"],
            &["GETRANGE", "$s", "5", "3"],
            &["GETRANGE", "$s", "0", "-1"],
            &["GETRANGE", "$s", "-100", "100"],
            &["GETRANGE", "$s", "100", "200"],
            &["GETRANGE", "$s", "-9223372036854775808", "9223372036854775807"],
            &["GETRANGE", "$s", "0", "abc"],
            &["GETRANGE", "$missing", "0", "-1"],
            &["GETRANGE", "$missing", "x", "-1"],
            &["SETRANGE", "$s", "6", "Redis"],
            &["GET", "$s"],
            &["SETRANGE", "$s", "20", "!"],
            &["GET", "$s"],
            &["SETRANGE", "$s", "0", ""],
            &["SETRANGE", "$s", "-1", "x"],
            &["SETRANGE", "$s", "abc", "x"],
            &["SETRANGE", "$s", "536870911", "xx"],
            &["SETRANGE", "$s", "9223372036854775807", "x"],
            &["SETRANGE", "$new", "0", ""],
            &["EXISTS", "$new"],
            &["SETRANGE", "$new", "536870912", ""],
            &["SETRANGE", "$new", "536870912", "x"],
            &["SETRANGE", "$new", "3", "abc"],
            &["GET", "$new"],
            &["SET", "$t", "abc", "EX", "100"],
            &["SETRANGE", "$t", "1", "X"],
            &["APPEND", "$t", "d"],
            &["TTL", "$t"],
            &["GET", "$t"],
            &["SET", "$i", "12345"],
            &["GETRANGE", "$i", "1", "2"],
            &["APPEND", "$i", "6"],
            &["INCR", "$i"],
            &["APPEND", "$h", "x"],
            &["STRLEN", "$h"],
            &["GETRANGE", "$h", "0", "1"],
            &["SETRANGE", "$h", "0", "x"],
            &["SETRANGE", "$h", "0", ""],
            &["APPEND", "$s"],
            &["STRLEN"],
            &["GETRANGE", "$s", "0"],
            &["SETRANGE", "$s", "0"],
        ],
    );
}

#[test]
fn strings_longer_than_proto_max_bulk_len_are_refused() {
    let node = TestNode::with_config(|c| c.proto_max_bulk_len = 1024 * 1024);
    let mut r = node.raw();
    let chunk = "x".repeat(1024 * 1024 - 10);
    assert_eq!(r.cmd_str(&["APPEND", "k", &chunk]), ":1048566\r\n");
    assert_eq!(r.cmd_str(&["APPEND", "k", "0123456789"]), ":1048576\r\n");
    let too_long = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
    assert_eq!(r.cmd_str(&["APPEND", "k", "y"]), too_long);
    assert_eq!(r.cmd_str(&["SETRANGE", "k", "1048576", "y"]), too_long);
    assert_eq!(r.cmd_str(&["SETRANGE", "k", "1048575", "y"]), ":1048576\r\n");
    assert_eq!(r.cmd_str(&["STRLEN", "k"]), ":1048576\r\n");
}

#[test]
fn psetex_and_set_px_keys_expire() {
    let node = TestNode::start();
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["PSETEX", "a", "100", "v"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["SET", "b", "v", "PX", "100"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["GETEX", "c", "PX", "100"]), "$-1\r\n");
    r.cmd_str(&["SET", "c", "v"]);
    assert_eq!(r.cmd_str(&["GETEX", "c", "PX", "100"]), "$1\r\nv\r\n");
    r.cmd_str(&["SET", "d", "5", "PX", "100"]);
    assert_eq!(r.cmd_str(&["INCR", "d"]), ":6\r\n");
    for k in ["a", "b", "c", "d"] {
        let pttl = int(&r.cmd_str(&["PTTL", k]));
        assert!((1..=100).contains(&pttl), "{k}: pttl {pttl}");
    }
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(r.cmd_str(&["MGET", "a", "b", "c", "d"]), "*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n");
    assert_eq!(r.cmd_str(&["INCR", "d"]), ":1\r\n");
    assert_eq!(r.cmd_str(&["PTTL", "d"]), ":-1\r\n");
}

#[tokio::test]
async fn redis_crate_counter_and_cache_flows() {
    let node = TestNode::start();
    let mut c = node.client().await;
    let n: i64 = redis::cmd("INCR").arg("hits").query_async(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("INCRBY").arg("hits").arg(41).query_async(&mut c).await.unwrap();
    assert_eq!(n, 42);
    let f: f64 = redis::cmd("INCRBYFLOAT").arg("score").arg(2.5).query_async(&mut c).await.unwrap();
    assert_eq!(f, 2.5);
    let _: () = redis::cmd("MSET").arg("a").arg("1").arg("b").arg("2").query_async(&mut c).await.unwrap();
    let values: Vec<Option<String>> =
        redis::cmd("MGET").arg("a").arg("b").arg("nope").query_async(&mut c).await.unwrap();
    assert_eq!(values, vec![Some("1".into()), Some("2".into()), None]);
    let _: () = redis::cmd("SETEX").arg("page").arg(60).arg("<html>").query_async(&mut c).await.unwrap();
    let page: String = redis::cmd("GETEX").arg("page").arg("PERSIST").query_async(&mut c).await.unwrap();
    assert_eq!(page, "<html>");
    let ttl: i64 = redis::cmd("TTL").arg("page").query_async(&mut c).await.unwrap();
    assert_eq!(ttl, -1);
    let len: i64 = redis::cmd("APPEND").arg("page").arg("</html>").query_async(&mut c).await.unwrap();
    assert_eq!(len, 13);
    let part: String = redis::cmd("GETRANGE").arg("page").arg(0).arg(5).query_async(&mut c).await.unwrap();
    assert_eq!(part, "<html>");
    let old: Option<String> = redis::cmd("GETDEL").arg("page").query_async(&mut c).await.unwrap();
    assert_eq!(old.as_deref(), Some("<html></html>"));
    let gone: Option<String> = redis::cmd("GET").arg("page").query_async(&mut c).await.unwrap();
    assert_eq!(gone, None);
}
