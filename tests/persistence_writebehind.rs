//! Write-behind and write-through to the machine's Postgres (127.0.0.1:5432, database
//! `test`), each test on tables of its own.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::time::Duration;

use cachegrid::config::Config;
use cachegrid::persistence::{KeyspaceConfig, WriteMode};
use common::TestNode;
use postgres::{count, decode_hash, encode_hash, exec, keyspace_info, rows, unique_table, MACHINE_URL};

/// The stored form of owned (field, value) pairs.
fn encode_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&[u8], &[u8])> = pairs.iter().map(|(f, v)| (&f[..], &v[..])).collect();
    encode_hash(&borrowed)
}

fn backed_node(
    table: &str,
    pattern: &str,
    tweak: impl FnOnce(&mut KeyspaceConfig),
) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut ks = KeyspaceConfig {
        name: "ks".into(),
        pattern: pattern.into(),
        table: table.into(),
        write_delay_ms: 200,
        ..KeyspaceConfig::default()
    };
    tweak(&mut ks);
    let path = dir.path().to_path_buf();
    let node = TestNode::with_config(move |c: &mut Config| {
        c.postgres_url = Some(MACHINE_URL.into());
        c.keyspace = vec![ks];
        c.dir = path;
    });
    (node, dir)
}

/// Writes every pending key now and waits until the queues are empty.
fn flush(node: &TestNode) {
    let p = node.server.persistence.get().expect("persistence configured").clone();
    let drained = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(p.flush(Duration::from_secs(60)))
    });
    assert!(drained.join().unwrap(), "queues drained");
}

fn info(node: &TestNode) -> std::collections::HashMap<String, String> {
    let raw = node.raw().cmd_str(&["INFO", "persistence"]);
    keyspace_info(&raw, "ks")
}

/// The grid's live state of keys matching `pattern`: key → (type, value or sorted hash).
async fn grid_state(
    con: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> BTreeMap<String, (String, Vec<u8>)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(con).await.unwrap();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = pipe.query_async(con).await.unwrap();
        let mut pipe = redis::pipe();
        for (k, t) in chunk.iter().zip(&types) {
            if t == "hash" {
                pipe.cmd("HGETALL").arg(k);
            } else {
                pipe.cmd("GET").arg(k);
            }
        }
        let values: Vec<redis::Value> = pipe.query_async(con).await.unwrap();
        for ((k, t), v) in chunk.iter().zip(types).zip(values) {
            let value = match v {
                redis::Value::BulkString(b) => b,
                redis::Value::Array(items) if t == "hash" => {
                    let flat: Vec<Vec<u8>> = redis::from_redis_value(&redis::Value::Array(items)).unwrap();
                    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                        flat.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
                    pairs.sort();
                    encode_pairs(&pairs)
                }
                other => panic!("unexpected {other:?}"),
            };
            out.insert(k.clone(), (t, value));
        }
    }
    out
}

/// The table's rows as the grid state above (hash values re-encoded sorted).
fn table_state(table: &str) -> BTreeMap<String, (String, Vec<u8>)> {
    rows(MACHINE_URL, table)
        .into_iter()
        .map(|(k, v, t, _)| {
            let v = if t == "hash" {
                let pairs = decode_hash(&v);
                encode_pairs(&pairs)
            } else {
                v
            };
            (k, (t, v))
        })
        .collect()
}

/// Test 1, at full scale: 100,000 keys (strings, hashes, some with a TTL, some deleted, some
/// expiring) written with pipelining; after a flush Postgres holds exactly the grid's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_converges_to_the_grid_after_a_flush() {
    let table = unique_table("converge");
    let (node, _dir) = backed_node(&table, "t1:*", |_| {});
    let mut con = node.client().await;
    let n = 100_000;
    for start in (0..n).step_by(2000) {
        let mut pipe = redis::pipe();
        for i in start..start + 2000 {
            let key = format!("t1:{i}");
            match i % 10 {
                0..=4 => pipe.cmd("SET").arg(&key).arg(format!("v{i}\0\u{ff}")),
                5 => pipe.cmd("SET").arg(&key).arg(i).arg("EX").arg(3600),
                6 => pipe.cmd("SET").arg(&key).arg(i).arg("PX").arg(300),
                _ => pipe.cmd("HSET").arg(&key).arg("a").arg(i).arg("b\0").arg(b"\xff\x00".as_slice()),
            };
        }
        pipe.query_async::<()>(&mut con).await.unwrap();
    }
    // Some deletes, some hash fields removed, a hash emptied (the key disappears), overwrites.
    let mut pipe = redis::pipe();
    for i in (0..n).step_by(13) {
        pipe.cmd("DEL").arg(format!("t1:{i}"));
    }
    for i in (7..n).step_by(100) {
        pipe.cmd("HDEL").arg(format!("t1:{i}")).arg("a");
    }
    for i in (8..n).step_by(1000) {
        pipe.cmd("HDEL").arg(format!("t1:{i}")).arg("a").arg("b\0");
    }
    for i in (1..n).step_by(10) {
        pipe.cmd("SET").arg(format!("t1:{i}")).arg("overwritten");
    }
    pipe.query_async::<()>(&mut con).await.unwrap();
    // Wait for the 300 ms TTLs to pass and active expiry to remove those keys.
    let expiring = (0..n).filter(|i| i % 10 == 6 && i % 13 != 0).count() as i64;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    for _ in 0..200 {
        let size: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        if before - size >= expiring {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flush(&node);
    let grid = grid_state(&mut con, "t1:*").await;
    let pg = table_state(&table);
    assert!(grid.len() > 70_000, "most keys are live: {}", grid.len());
    assert_eq!(pg.len(), grid.len(), "same number of keys");
    let diff: Vec<_> = grid.iter().filter(|(k, v)| pg.get(*k) != Some(v)).take(5).collect();
    assert!(diff.is_empty(), "rows differ from the grid, e.g. {diff:?}");
    // TTLs became expires_at; keys without one have none.
    let with_ttl = count(MACHINE_URL, &format!("{table} WHERE expires_at IS NOT NULL"));
    assert_eq!(with_ttl, (0..n).filter(|i| i % 10 == 5 && i % 13 != 0).count() as i64);
    let i = info(&node);
    assert_eq!(i["pending_keys"], "0");
    assert_eq!(i["dead_letters"], "0");
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {table}_dead_letters"));
}

/// Test 4, at full scale: 1,000,000 pipelined writes over 1,000 hot keys produce at most
/// 20 % as many row writes (in fact about one row per key per write delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_coalesced_into_few_row_writes() {
    let table = unique_table("coalesce");
    let (node, _dir) = backed_node(&table, "hot:*", |ks| ks.write_delay_ms = 1000);
    let mut con = node.client().await;
    let writes = 1_000_000;
    for start in (0..writes).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..start + 10_000 {
            pipe.cmd("SET").arg(format!("hot:{}", i % 1000)).arg(i).ignore();
        }
        pipe.query_async::<()>(&mut con).await.unwrap();
    }
    flush(&node);
    let i = info(&node);
    let rows_written: u64 = i["rows_written"].parse().unwrap();
    let coalesced: u64 = i["rows_coalesced"].parse().unwrap();
    assert!(rows_written * 5 <= writes, "{rows_written} row writes for {writes} client writes");
    assert_eq!(rows_written + coalesced, writes, "every write is either written or coalesced away");
    // And the last write of every key won.
    let pg = rows(MACHINE_URL, &table);
    assert_eq!(pg.len(), 1000);
    for (k, v, _, _) in pg {
        let n: u64 = k["hot:".len()..].parse().unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), (writes - 1000 + n).to_string());
    }
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {table}_dead_letters"));
}

/// Test 7: a record the table's constraint rejects lands in the dead-letter table, with the
/// error, while every other write of its batch lands in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_table_alone() {
    let table = unique_table("poison");
    exec(
        MACHINE_URL,
        &format!(
            "CREATE TABLE {table} (key text PRIMARY KEY, value bytea CHECK (value <> 'poison'::bytea), \
             type text NOT NULL, expires_at timestamptz, version bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now())"
        ),
    );
    let (node, _dir) = backed_node(&table, "p:*", |_| {});
    let mut con = node.client().await;
    let mut pipe = redis::pipe();
    for i in 0..400 {
        let v = if i == 123 { "poison".to_string() } else { format!("good{i}") };
        pipe.cmd("SET").arg(format!("p:{i}")).arg(v).ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();
    flush(&node);
    assert_eq!(count(MACHINE_URL, &table), 399, "every other record of the batch is written");
    let dl = format!("{table}_dead_letters");
    assert_eq!(
        count(MACHINE_URL, &format!("{dl} WHERE key = 'p:123'::bytea AND value = 'poison'::bytea")),
        1
    );
    assert_eq!(count(MACHINE_URL, &format!("{dl} WHERE error LIKE '%check constraint%'")), 1);
    let i = info(&node);
    assert_eq!(i["dead_letters"], "1");
    // The queue is not blocked: later writes still flow.
    let _: () = redis::cmd("SET").arg("p:after").arg("x").query_async(&mut con).await.unwrap();
    flush(&node);
    assert_eq!(count(MACHINE_URL, &format!("{table} WHERE key = 'p:after'")), 1);
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {dl}"));
}

/// Write-through: when the reply arrives the row is committed; a stale version never
/// overwrites a newer row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_replies_after_the_commit() {
    let table = unique_table("wt");
    let (node, _dir) = backed_node(&table, "wt:*", |ks| ks.mode = WriteMode::WriteThrough);
    let mut con = node.client().await;
    for i in 0..20 {
        let _: () = redis::cmd("SET").arg("wt:k").arg(i).query_async(&mut con).await.unwrap();
        let r = rows(MACHINE_URL, &table);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, i.to_string().into_bytes(), "committed before the reply");
    }
    let _: () = redis::cmd("HSET").arg("wt:h").arg("f").arg("v").query_async(&mut con).await.unwrap();
    assert_eq!(count(MACHINE_URL, &format!("{table} WHERE key = 'wt:h' AND type = 'hash'")), 1);
    let _: () = redis::cmd("DEL").arg("wt:h").query_async(&mut con).await.unwrap();
    assert_eq!(count(MACHINE_URL, &format!("{table} WHERE key = 'wt:h'")), 0);
    // Keys outside the key space are not written.
    let _: () = redis::cmd("SET").arg("other").arg(1).query_async(&mut con).await.unwrap();
    assert_eq!(count(MACHINE_URL, &table), 1);
    let binary = node.raw().cmd(&[b"SET", b"wt:\xff", b"x"]);
    assert!(String::from_utf8_lossy(&binary).starts_with("-ERR keys of the Postgres-backed key space"));
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {table}_dead_letters"));
}

/// The admin port's `/metrics` shows the write-behind queue and database state, per key space,
/// read from the same counters as INFO.
#[test]
fn write_behind_figures_reach_the_metrics_endpoint() {
    use cachegrid::admin::metrics::Collector;
    let table = unique_table("metrics");
    let (node, _dir) = backed_node(&table, "m:*", |_| {});
    let mut raw = node.raw();
    for i in 0..50 {
        assert_eq!(raw.cmd_str(&["SET", &format!("m:{}", i % 10), "v"]), "+OK\r\n");
    }
    flush(&node);
    let p = node.server.persistence.get().unwrap().clone();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || p.collect());
    let text = handle.render();
    assert!(text.contains("cachegrid_postgres_up 1"), "{text}");
    let written = text
        .lines()
        .find(|l| l.starts_with("cachegrid_writebehind_rows_written_total{keyspace=\"ks\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rows_written series in {text}"));
    assert!((1.0..=50.0).contains(&written), "{written} rows written for 50 writes over 10 keys");
    assert!(text.contains("cachegrid_writebehind_pending_keys{keyspace=\"ks\"} 0"), "{text}");
    exec(MACHINE_URL, &format!("DROP TABLE IF EXISTS {table}, {table}_dead_letters"));
}

/// Runs `cachegrid ARGS`; (success, stdout + stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachegrid")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The id of the dead letter of `key` in `cachegrid deadletters list` output.
fn dead_letter_id(listing: &str, key: &str) -> String {
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(key))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dead letter for {key} in\n{listing}"))
        .to_string()
}

/// Issue 3, follow-up: an operator lists and replays dead letters without SQL. A replay that
/// Postgres refuses again leaves the dead letter with the new error; once the cause is fixed
/// a replay writes the record and removes it, and a dead letter older than the key's row
/// (written meanwhile) never overwrites it.
#[test]
fn dead_letters_are_listed_and_replayed_with_the_cli() {
    let table = unique_table("replay");
    exec(
        MACHINE_URL,
        &format!(
            "CREATE TABLE {table} (key text PRIMARY KEY, value bytea CONSTRAINT no_poison CHECK (value <> 'poison'::bytea), \
             type text NOT NULL, expires_at timestamptz, version bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now())"
        ),
    );
    let admin_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyspaceConfig {
        name: "ks".into(),
        pattern: "d:*".into(),
        table: table.clone(),
        write_delay_ms: 50,
        ..KeyspaceConfig::default()
    };
    let path = dir.path().to_path_buf();
    let node = TestNode::with_config(move |c: &mut Config| {
        c.postgres_url = Some(MACHINE_URL.into());
        c.keyspace = vec![ks];
        c.dir = path;
        c.admin_port = Some(admin_port);
    });
    let admin = format!("127.0.0.1:{admin_port}");
    let mut raw = node.raw();
    for (k, v) in [("d:old", "poison"), ("d:stale", "poison"), ("d:fine", "good")] {
        assert_eq!(raw.cmd_str(&["SET", k, v]), "+OK\r\n");
    }
    flush(&node);
    let dl = format!("{table}_dead_letters");
    assert_eq!(count(MACHINE_URL, &dl), 2);

    let (ok, listing) = cli(&["deadletters", "list", "--admin", &admin, "ks"]);
    assert!(ok, "{listing}");
    assert!(listing.contains("no_poison"), "the error is shown: {listing}");
    let (old, stale) = (dead_letter_id(&listing, "d:old"), dead_letter_id(&listing, "d:stale"));

    // The cause is still there: refused again, kept, with the new error.
    exec(MACHINE_URL, &format!("UPDATE {dl} SET error = 'an old error'"));
    let (ok, out) = cli(&["deadletters", "replay", "--admin", &admin, "ks", &old]);
    assert!(!ok, "a dead letter refused again is an error: {out}");
    assert!(out.contains("failed") && out.contains("no_poison"), "{out}");
    assert_eq!(count(MACHINE_URL, &format!("{dl} WHERE error LIKE '%no_poison%'")), 1);
    assert_eq!(count(MACHINE_URL, &dl), 2);

    // d:stale is written again in the grid: its row is newer than its dead letter.
    assert_eq!(raw.cmd_str(&["SET", "d:stale", "fresh"]), "+OK\r\n");
    flush(&node);
    exec(MACHINE_URL, &format!("ALTER TABLE {table} DROP CONSTRAINT no_poison"));
    let (ok, out) = cli(&["deadletters", "replay", "--admin", &admin, "ks", "--all"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{old} d:old written")), "{out}");
    assert!(out.contains(&format!("{stale} d:stale superseded")), "{out}");
    let got: BTreeMap<String, Vec<u8>> =
        rows(MACHINE_URL, &table).into_iter().map(|(k, v, _, _)| (k, v)).collect();
    assert_eq!(got["d:old"], b"poison");
    assert_eq!(got["d:stale"], b"fresh", "a replay never overwrites a newer row");
    assert_eq!(count(MACHINE_URL, &dl), 0, "replayed dead letters are removed");
    let (ok, listing) = cli(&["deadletters", "list", "--admin", &admin, "ks"]);
    assert!(ok && listing.contains("no dead letters"), "{listing}");
    let (ok, out) = cli(&["deadletters", "list", "--admin", &admin, "nope"]);
    assert!(!ok && out.contains("no write-behind key space named 'nope'"), "{out}");
    assert_eq!(info(&node)["dead_letters_replayed"], "2");
    drop(node);
    exec(MACHINE_URL, &format!("DROP TABLE {table}; DROP TABLE {dl}"));
}
