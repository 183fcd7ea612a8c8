//! Every command works through the `redis` crate's async client, unchanged: the client a Rust
//! app would use. (Exact replies are checked against Redis by the differential tests; here the
//! point is that a real client library sends and parses each of them.)

mod common;

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt as _;
use redis::{aio::MultiplexedConnection, AsyncCommands, Value};

/// Commands exercised one by one below; the test fails if a command of the node is missing.
const COVERED: &[&str] = &[
    "acl",
    "append",
    "asking",
    "auth",
    "client",
    "cluster",
    "command",
    "debug",
    "config",
    "dbsize",
    "decr",
    "decrby",
    "del",
    "discard",
    "echo",
    "exec",
    "exists",
    "expire",
    "expireat",
    "expiretime",
    "flushall",
    "flushdb",
    "get",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hello",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "info",
    "keys",
    "lastsave",
    "mget",
    "mset",
    "msetnx",
    "multi",
    "persist",
    "pexpire",
    "pexpireat",
    "pexpiretime",
    "ping",
    "psetex",
    "psubscribe",
    "pttl",
    "publish",
    "pubsub",
    "punsubscribe",
    "quit",
    "randomkey",
    "readonly",
    "readwrite",
    "rename",
    "renamenx",
    "reset",
    "scan",
    "select",
    "set",
    "setex",
    "setnx",
    "setrange",
    "shutdown",
    "strlen",
    "subscribe",
    "time",
    "touch",
    "ttl",
    "type",
    "unlink",
    "unsubscribe",
    "unwatch",
    "wait",
    "watch",
];

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn every_command_of_the_node_is_covered_here() {
    let ours: BTreeSet<&str> = cachegrid::commands::all_commands().map(|c| c.name).collect();
    let covered: BTreeSet<&str> = COVERED.iter().copied().collect();
    let missing: Vec<_> = ours.difference(&covered).collect();
    assert!(missing.is_empty(), "commands without a redis-crate test: {missing:?}");
}

#[tokio::test]
async fn debug_is_refused_by_default_and_answers_when_enabled() {
    let node = common::TestNode::start();
    let mut c = node.client().await;
    let refused: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg("0").query_async(&mut c).await;
    assert!(refused.unwrap_err().to_string().contains("DEBUG command not allowed"));
    let node =
        common::TestNode::with_config(|c| c.enable_debug_command = cachegrid::config::DebugCommand::Yes);
    let mut c = node.client().await;
    let _: () = q(&mut c, &["DEBUG", "SLEEP", "0"]).await;
    let status: String = q(&mut c, &["DEBUG", "BUS-STATUS"]).await;
    assert!(!status.is_empty());
}

#[tokio::test]
async fn strings_and_keys() {
    let node = common::TestNode::start();
    let mut c = node.client().await;
    let _: () = c.set("s", "hello").await.unwrap();
    assert_eq!(c.get::<_, String>("s").await.unwrap(), "hello");
    assert_eq!(q::<i64>(&mut c, &["APPEND", "s", " world"]).await, 11);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "s"]).await, 11);
    assert_eq!(q::<String>(&mut c, &["GETRANGE", "s", "0", "4"]).await, "hello");
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "s", "0", "J"]).await, 11);
    assert_eq!(q::<String>(&mut c, &["GETSET", "s", "v2"]).await, "Jello world");
    assert_eq!(q::<i64>(&mut c, &["SETNX", "s", "x"]).await, 0);
    let _: () = q(&mut c, &["SETEX", "ex", "100", "v"]).await;
    let _: () = q(&mut c, &["PSETEX", "px", "100000", "v"]).await;
    assert_eq!(q::<String>(&mut c, &["GETEX", "ex", "PERSIST"]).await, "v");
    let _: () = q(&mut c, &["MSET", "a", "1", "b", "2"]).await;
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "a", "1", "z", "2"]).await, 0);
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["MGET", "a", "b", "nope"]).await,
        vec![Some("1".into()), Some("2".into()), None]
    );
    assert_eq!(q::<i64>(&mut c, &["INCR", "a"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "a", "10"]).await, 12);
    assert_eq!(q::<i64>(&mut c, &["DECR", "a"]).await, 11);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "a", "1"]).await, 10);
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "a", "0.5"]).await, "10.5");
    assert_eq!(q::<String>(&mut c, &["GETDEL", "b"]).await, "2");
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "a", "b"]).await, 1);
    assert_eq!(q::<String>(&mut c, &["TYPE", "a"]).await, "string");
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "a", "100"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "a", "100000"]).await, 1);
    assert!(q::<i64>(&mut c, &["TTL", "a"]).await > 90);
    assert!(q::<i64>(&mut c, &["PTTL", "a"]).await > 90_000);
    assert!(q::<i64>(&mut c, &["EXPIRETIME", "a"]).await > 1_700_000_000);
    assert!(q::<i64>(&mut c, &["PEXPIRETIME", "a"]).await > 1_700_000_000_000);
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "a", "4000000000"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "a", "4000000000000"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "a"]).await, 1);
    let _: () = q(&mut c, &["RENAME", "a", "a2"]).await;
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "a2", "s"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["TOUCH", "a2", "s", "nope"]).await, 2);
    let mut keys: Vec<String> = q(&mut c, &["KEYS", "*"]).await;
    keys.sort();
    assert_eq!(keys, ["a2", "ex", "px", "s"]);
    let (cursor, page): (u64, Vec<String>) = q(&mut c, &["SCAN", "0", "COUNT", "100000"]).await;
    assert_eq!((cursor, page.len()), (0, 4));
    let scanned: Vec<String> = c.scan_match::<_, String>("*").await.unwrap().collect().await;
    assert_eq!(scanned.len(), 4);
    assert!(q::<Option<String>>(&mut c, &["RANDOMKEY"]).await.is_some());
    assert_eq!(q::<i64>(&mut c, &["DEL", "ex", "px"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["UNLINK", "s"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 1);
    let _: () = q(&mut c, &["FLUSHDB"]).await;
    let _: () = q(&mut c, &["FLUSHALL", "ASYNC"]).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
}

#[tokio::test]
async fn hashes() {
    let node = common::TestNode::start();
    let mut c = node.client().await;
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2"]).await, 2);
    let _: () = q(&mut c, &["HMSET", "h", "c", "3"]).await;
    assert_eq!(q::<i64>(&mut c, &["HSETNX", "h", "a", "9"]).await, 0);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "a"]).await, "1");
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["HMGET", "h", "a", "x"]).await,
        vec![Some("1".into()), None]
    );
    let all: HashMap<String, String> = q(&mut c, &["HGETALL", "h"]).await;
    assert_eq!(all.len(), 3);
    assert_eq!(q::<Vec<String>>(&mut c, &["HKEYS", "h"]).await, ["a", "b", "c"]);
    assert_eq!(q::<Vec<String>>(&mut c, &["HVALS", "h"]).await, ["1", "2", "3"]);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]).await, 3);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "b"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "b"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "a", "5"]).await, 6);
    assert_eq!(q::<String>(&mut c, &["HINCRBYFLOAT", "h", "a", "0.25"]).await, "6.25");
    let (cursor, pairs): (u64, Vec<String>) = q(&mut c, &["HSCAN", "h", "0"]).await;
    assert_eq!((cursor, pairs.len()), (0, 6));
    let fields: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "2"]).await;
    assert_eq!(fields.len(), 2);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "a", "b", "c"]).await, 3);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "h"]).await, 0);
}

#[tokio::test]
async fn transactions_through_the_crate_helpers() {
    let node = common::TestNode::start();
    let mut c = node.client().await;
    let (a, b): (i64, i64) =
        redis::pipe().atomic().incr("x", 1).incr("x", 2).query_async(&mut c).await.unwrap();
    assert_eq!((a, b), (1, 3));
    let _: () = q(&mut c, &["WATCH", "x"]).await;
    let _: () = q(&mut c, &["UNWATCH"]).await;
    let _: () = q(&mut c, &["MULTI"]).await;
    let _: () = q(&mut c, &["DISCARD"]).await;
    let _: () = q(&mut c, &["MULTI"]).await;
    let _: String = q(&mut c, &["SET", "y", "1"]).await;
    let done: Vec<String> = q(&mut c, &["EXEC"]).await;
    assert_eq!(done, ["OK"]);
}

#[tokio::test]
async fn connection_server_and_introspection() {
    let node = common::TestNode::with_config(|c| c.requirepass = Some("pw".into()));
    let client = redis::Client::open(format!("redis://:pw@{}/", node.addr)).unwrap();
    let mut c = client.get_multiplexed_tokio_connection().await.unwrap();
    let _: () = q(&mut c, &["AUTH", "pw"]).await;
    assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(q::<String>(&mut c, &["ECHO", "hi"]).await, "hi");
    let _: () = q(&mut c, &["SELECT", "0"]).await;
    let hello: HashMap<String, Value> = q(&mut c, &["HELLO", "2"]).await;
    assert!(hello.contains_key("server"));
    assert!(q::<i64>(&mut c, &["CLIENT", "ID"]).await > 0);
    assert!(q::<String>(&mut c, &["CLIENT", "LIST"]).await.contains("id="));
    assert!(q::<i64>(&mut c, &["COMMAND", "COUNT"]).await > 50);
    let _: Value = q(&mut c, &["COMMAND", "INFO", "get"]).await;
    let cfg: Vec<String> = q(&mut c, &["CONFIG", "GET", "maxmemory"]).await;
    assert_eq!(cfg, ["maxmemory", "0"]);
    assert!(q::<String>(&mut c, &["INFO", "server"]).await.contains("redis_version:"));
    let (secs, _micros): (String, String) = q(&mut c, &["TIME"]).await;
    assert!(secs.parse::<u64>().unwrap() > 1_700_000_000);
    assert!(q::<i64>(&mut c, &["LASTSAVE"]).await > 0);
    // A standalone node has no replicas: WAIT counts none (tests/grid.rs waits on real ones).
    assert_eq!(q::<i64>(&mut c, &["WAIT", "0", "0"]).await, 0);
    assert_eq!(q::<String>(&mut c, &["RESET"]).await, "RESET");
    // CLUSTER, READONLY, READWRITE and ASKING are cluster-mode commands (tests/cluster.rs runs
    // them in cluster mode): a standalone node refuses them with Redis's error, which the crate
    // surfaces as an error.
    let _: () = q(&mut c, &["AUTH", "pw"]).await;
    for args in [&["CLUSTER", "KEYSLOT", "foo"][..], &["READONLY"], &["READWRITE"], &["ASKING"]] {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        let err = cmd.query_async::<Value>(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("cluster support disabled"), "{args:?}: {err}");
    }
    // QUIT closes the connection after its reply; SHUTDOWN stops the node.
    let mut q2 = client.get_multiplexed_tokio_connection().await.unwrap();
    let _: () = q(&mut q2, &["QUIT"]).await;
    let mut s = client.get_multiplexed_tokio_connection().await.unwrap();
    let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async::<Value>(&mut s).await;
    assert!(
        tokio::net::TcpStream::connect(node.addr).await.is_err() || {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            tokio::net::TcpStream::connect(node.addr).await.is_err()
        }
    );
}

#[tokio::test]
async fn acl_users_through_the_client() {
    let node = common::TestNode::start();
    let mut c = node.client().await;
    let _: () =
        q(&mut c, &["ACL", "SETUSER", "crate_user", "on", ">pw", "~k:*", "+@read", "+acl|whoami"]).await;
    let users: Vec<String> = q(&mut c, &["ACL", "USERS"]).await;
    assert_eq!(users, ["crate_user", "default"]);
    let user: HashMap<String, Value> = q(&mut c, &["ACL", "GETUSER", "crate_user"]).await;
    assert!(user.contains_key("passwords"));
    let list: Vec<String> = q(&mut c, &["ACL", "LIST"]).await;
    assert_eq!(list.len(), 2);
    let cats: Vec<String> = q(&mut c, &["ACL", "CAT"]).await;
    assert!(cats.contains(&"string".to_string()));
    let url = format!("redis://crate_user:pw@{}/", node.addr);
    let mut u = redis::Client::open(url).unwrap().get_multiplexed_tokio_connection().await.unwrap();
    assert_eq!(q::<String>(&mut u, &["ACL", "WHOAMI"]).await, "crate_user");
    let err = redis::cmd("SET").arg("k:1").arg("v").query_async::<Value>(&mut u).await.unwrap_err();
    assert!(err.to_string().contains("NOPERM"), "{err}");
    assert_eq!(q::<i64>(&mut c, &["ACL", "DELUSER", "crate_user"]).await, 1);
}

#[tokio::test]
async fn pubsub_through_the_async_pubsub_and_resp3_pushes() {
    let node = common::TestNode::start();
    let client = redis::Client::open(node.url()).unwrap();
    let mut c = node.client().await;
    // RESP2: the crate's dedicated Pub/Sub connection.
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("news").await.unwrap();
    sub.psubscribe("n*").await.unwrap();
    assert_eq!(q::<i64>(&mut c, &["PUBLISH", "news", "hello"]).await, 2);
    assert_eq!(q::<Vec<String>>(&mut c, &["PUBSUB", "CHANNELS"]).await, vec!["news".to_string()]);
    assert_eq!(q::<(String, i64)>(&mut c, &["PUBSUB", "NUMSUB", "news"]).await, ("news".into(), 1));
    assert_eq!(q::<i64>(&mut c, &["PUBSUB", "NUMPAT"]).await, 1);
    {
        let mut messages = sub.on_message();
        let (m1, m2) = (messages.next().await.unwrap(), messages.next().await.unwrap());
        let mut got = vec![
            (
                m1.get_channel_name().to_string(),
                m1.get_pattern::<Option<String>>().unwrap(),
                m1.get_payload::<String>().unwrap(),
            ),
            (
                m2.get_channel_name().to_string(),
                m2.get_pattern::<Option<String>>().unwrap(),
                m2.get_payload::<String>().unwrap(),
            ),
        ];
        got.sort();
        assert_eq!(
            got,
            vec![("news".into(), None, "hello".into()), ("news".into(), Some("n*".into()), "hello".into())]
        );
    }
    sub.unsubscribe("news").await.unwrap();
    sub.punsubscribe("n*").await.unwrap();
    assert_eq!(q::<i64>(&mut c, &["PUBLISH", "news", "again"]).await, 0);

    // RESP3: a multiplexed connection subscribes and receives pushes.
    let url = format!("{}?protocol=resp3", node.url());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut con3 = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    con3.subscribe("resp3").await.unwrap();
    assert_eq!(q::<i64>(&mut c, &["PUBLISH", "resp3", "pushed"]).await, 1);
    loop {
        let push = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if push.kind == redis::PushKind::Message {
            assert_eq!(
                push.data,
                vec![Value::BulkString(b"resp3".to_vec()), Value::BulkString(b"pushed".to_vec())]
            );
            break;
        }
    }
    con3.unsubscribe("resp3").await.unwrap();
}
