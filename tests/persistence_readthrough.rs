//! Read-through: a cold node serves backed keys from Postgres, remembers absent keys, and
//! says clearly when the database cannot be reached.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use cachegrid::config::Config;
use cachegrid::persistence::{KeyspaceConfig, WriteMode};
use common::TestNode;
use postgres::{encode_hash, exec, keyspace_info, unique_table, MACHINE_URL};

fn node(url: &str, table: &str, mode: WriteMode) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyspaceConfig {
        name: "rt".into(),
        pattern: "rt:*".into(),
        table: table.into(),
        mode,
        read_through: true,
        write_delay_ms: 50,
        ..KeyspaceConfig::default()
    };
    let (url, path) = (url.to_string(), dir.path().to_path_buf());
    let node = TestNode::with_config(move |c: &mut Config| {
        c.postgres_url = Some(url);
        c.keyspace = vec![ks];
        c.dir = path;
    });
    (node, dir)
}

fn queries(node: &TestNode) -> u64 {
    let info = node.raw().cmd_str(&["INFO", "persistence"]);
    keyspace_info(&info, "rt")["rt_queries"].parse().unwrap()
}

/// The backing table's schema, created ahead by the tests that fill it before the node starts.
fn backing_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (key text PRIMARY KEY, value bytea, type text NOT NULL, expires_at timestamptz, \
         version bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());"
    )
}

/// Test 5: a cold node (empty memory) serves backed keys from Postgres; a key absent from both
/// is "not found", and a second miss does not query the database; expired rows are not loaded.
#[test]
fn a_cold_node_loads_backed_keys_and_remembers_absent_ones() {
    let table = unique_table("rt");
    exec(
        MACHINE_URL,
        &format!(
            "{}
             INSERT INTO {table} VALUES ('rt:s', 'hello'::bytea, 'string', NULL, 1, now());
             INSERT INTO {table} VALUES ('rt:ttl', 'soon'::bytea, 'string', now() + interval '1 hour', 1, now());
             INSERT INTO {table} VALUES ('rt:old', 'gone'::bytea, 'string', now() - interval '1 second', 1, now());",
            backing_table_sql(&table)
        ),
    );
    let hash = encode_hash(&[(b"f1", b"v1"), (b"bin\0", b"\xff\x00")]);
    postgres::with_pg(MACHINE_URL, async |c| {
        let sql = format!("INSERT INTO {table} VALUES ('rt:h', $1, 'hash', NULL, 1, now())");
        c.execute(&sql, &[&hash]).await.unwrap();
    });
    let (node, _dir) = node(MACHINE_URL, &table, WriteMode::WriteBehind);
    let mut raw = node.raw();
    assert_eq!(raw.cmd_str(&["DBSIZE"]), ":0\r\n", "the node starts cold");
    assert_eq!(raw.cmd_str(&["GET", "rt:s"]), "$5\r\nhello\r\n");
    assert_eq!(raw.cmd_str(&["HGET", "rt:h", "f1"]), "$2\r\nv1\r\n");
    assert_eq!(raw.cmd(&[b"HGET", b"rt:h", b"bin\0"]), b"$2\r\n\xff\x00\r\n");
    let ttl: i64 = raw.cmd_str(&["TTL", "rt:ttl"])[1..].trim().parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "expires_at becomes the TTL: {ttl}");
    assert_eq!(raw.cmd_str(&["GET", "rt:old"]), "$-1\r\n", "an expired row is not loaded");
    // A hash loaded on a write keeps its other fields.
    assert_eq!(raw.cmd_str(&["HSET", "rt:h", "f2", "v2"]), ":1\r\n");
    assert_eq!(raw.cmd_str(&["HLEN", "rt:h"]), ":3\r\n");
    // Absent from both: not found, and the second miss is answered from the negative cache.
    assert_eq!(raw.cmd_str(&["GET", "rt:absent"]), "$-1\r\n");
    let q = queries(&node);
    assert_eq!(raw.cmd_str(&["GET", "rt:absent"]), "$-1\r\n");
    assert_eq!(raw.cmd_str(&["EXISTS", "rt:absent"]), ":0\r\n");
    assert_eq!(queries(&node), q, "a second miss does not query the database");
    // Writing the key makes it present again at once.
    assert_eq!(raw.cmd_str(&["SET", "rt:absent", "now"]), "+OK\r\n");
    assert_eq!(raw.cmd_str(&["GET", "rt:absent"]), "$3\r\nnow\r\n");
    // Loading is not a write: the loaded rows keep their version 1 (nothing written back).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(postgres::count(MACHINE_URL, &format!("{table} WHERE key = 'rt:s' AND version = 1")), 1);
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE IF EXISTS {table}_dead_letters"));
}

/// Concurrent misses of one key make one query (single flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_query() {
    let table = unique_table("rtsf");
    let (node, _dir) = node(MACHINE_URL, &table, WriteMode::None);
    exec(MACHINE_URL, &format!("INSERT INTO {table} VALUES ('rt:k', 'v'::bytea, 'string', NULL, 1, now())"));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut con = node.client().await;
        tasks.push(tokio::spawn(async move {
            let v: Option<String> = redis::cmd("GET").arg("rt:k").query_async(&mut con).await.unwrap();
            v
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("v"));
    }
    assert!(queries(&node) <= 2, "one query per flight, {} made", queries(&node));
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {table}_dead_letters"));
}

/// While the database is unreachable a miss says so, distinct from "not found"; keys in
/// memory and keys outside backed key spaces are served as usual.
#[test]
fn a_miss_while_the_database_is_unreachable_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=test connect_timeout=1");
    let (node, _dir) = node(&url, "rt_unreachable", WriteMode::WriteBehind);
    let mut raw = node.raw();
    let reply = raw.cmd_str(&["GET", "rt:x"]);
    assert!(reply.starts_with("-TRYAGAIN read-through of key space 'rt' failed"), "{reply}");
    assert!(raw.cmd_str(&["HGET", "rt:x", "f"]).starts_with("-TRYAGAIN read-through"));
    // A plain SET needs no load: backed keys can still be written (they are queued), and
    // then read from memory.
    assert_eq!(raw.cmd_str(&["SET", "rt:x", "1"]), "+OK\r\n");
    assert_eq!(raw.cmd_str(&["GET", "rt:x"]), "$1\r\n1\r\n");
    assert_eq!(raw.cmd_str(&["SET", "plain", "1"]), "+OK\r\n");
    assert_eq!(raw.cmd_str(&["GET", "plain"]), "$1\r\n1\r\n");
    let info = raw.cmd_str(&["INFO", "persistence"]);
    assert_eq!(keyspace_info(&info, "rt")["postgres_status"], "down");
}

/// A key evicted while its write is still queued is read back as written, not as the older
/// row Postgres still holds.
#[test]
fn a_miss_serves_a_queued_write_before_the_older_row() {
    let table = unique_table("rtq");
    exec(
        MACHINE_URL,
        &format!(
            "{}
             INSERT INTO {table} VALUES ('rt:k', 'old'::bytea, 'string', NULL, 1, now()),
                                        ('rt:gone', 'old'::bytea, 'string', NULL, 1, now());",
            backing_table_sql(&table)
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyspaceConfig {
        name: "rt".into(),
        pattern: "rt:*".into(),
        table: table.clone(),
        read_through: true,
        write_delay_ms: 60_000,
        ..KeyspaceConfig::default()
    };
    let path = dir.path().to_path_buf();
    let node = TestNode::with_config(move |c: &mut Config| {
        c.postgres_url = Some(MACHINE_URL.into());
        c.keyspace = vec![ks];
        c.dir = path;
        c.maxmemory_policy = "allkeys-random".into();
    });
    let mut raw = node.raw();
    assert_eq!(raw.cmd_str(&["SET", "rt:k", "new"]), "+OK\r\n");
    assert_eq!(raw.cmd_str(&["DEL", "rt:gone"]), ":1\r\n", "loaded, then deleted");
    // Evict everything: the writes are still queued (the write delay is a minute).
    raw.cmd_str(&["CONFIG", "SET", "maxmemory", "1"]);
    raw.cmd_str(&["SET", "x", "y"]);
    raw.cmd_str(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(raw.cmd_str(&["KEYS", "rt:*"]), "*0\r\n", "evicted");
    assert_eq!(raw.cmd_str(&["GET", "rt:k"]), "$3\r\nnew\r\n");
    assert_eq!(raw.cmd_str(&["GET", "rt:gone"]), "$-1\r\n");
    let p = node.server.persistence.get().unwrap().clone();
    let drained = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(p.flush(std::time::Duration::from_secs(3)))
    });
    let i = keyspace_info(&raw.cmd_str(&["INFO", "persistence"]), "rt");
    assert!(drained.join().unwrap(), "{i:?}");
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {table}_dead_letters"));
}
