//! Write-behind in a grid: a key written behind by one node, whose slot then moves to another
//! and back, ends in Postgres with its last value — the versions of different nodes compare;
//! and a primary that dies for good with writes still queued for Postgres loses none of them,
//! because the replica that takes its slots writes them behind.

mod common;
#[path = "common/grid.rs"]
mod grid;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use cachegrid::config::Config;
use cachegrid::persistence::KeyspaceConfig;
use common::{free_port, TestNode};
use grid::{wait_for_agreement, wait_for_rebalance_and_sync, Member, MemberOptions};
use postgres::{rows, unique_table, wait_for_rows, MACHINE_URL};

/// An in-process grid member backing `session:*` by `table`; `seed` joins another member.
fn member(table: &str, seed: Option<&TestNode>) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let ks = KeyspaceConfig {
        name: "ks".into(),
        pattern: "session:*".into(),
        table: table.into(),
        write_delay_ms: 50,
        ..KeyspaceConfig::default()
    };
    let seed = seed.map(|s| {
        let map = s.server.cluster.get().unwrap().map();
        let me = map.nodes.iter().find(|n| n.port == s.addr.port()).unwrap();
        format!("127.0.0.1:{}@{}", me.port, me.bus_port)
    });
    let node = TestNode::with_config(move |c: &mut Config| {
        c.postgres_url = Some(MACHINE_URL.into());
        c.keyspace = vec![ks];
        c.dir = path;
        c.cluster_port = free_port();
        match seed {
            Some(s) => c.cluster_join = vec![s],
            None => c.cluster_enabled = true,
        }
    });
    (node, dir)
}

/// Waits until both nodes hold the same map with `known` members and nothing migrating.
fn settle(nodes: &[&TestNode], known: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let maps: Vec<_> = nodes.iter().map(|n| n.server.cluster.get().unwrap().map()).collect();
        if maps.iter().all(|m| m.epoch > 0 && m.nodes.len() == known && m.migrations.is_empty())
            && maps.windows(2).all(|w| w[0] == w[1])
        {
            return;
        }
        assert!(Instant::now() < deadline, "the grid did not settle");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn flush(node: &TestNode) {
    let p = node.server.persistence.get().unwrap().clone();
    let ok = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(p.flush(Duration::from_secs(30)))
    });
    assert!(ok.join().unwrap());
}

fn write_all(client: &redis::cluster::ClusterClient, keys: &[String], value: &str) {
    let mut con = client.get_connection().unwrap();
    for k in keys {
        let _: () = redis::cmd("SET").arg(k).arg(value).query(&mut con).unwrap();
    }
}

#[test]
fn the_last_write_of_a_key_whose_slot_moved_away_and_back_is_the_row() {
    let table = unique_table("grid_wb");
    let (a, _da) = member(&table, None);
    settle(&[&a], 1);
    let keys: Vec<String> = (0..40).map(|i| format!("session:{i}")).collect();
    let client = redis::cluster::ClusterClient::new(vec![a.url()]).unwrap();
    write_all(&client, &keys, "v1");
    flush(&a);

    // b joins: about half of the keys move to it, and are written there.
    let (b, _db) = member(&table, Some(&a));
    settle(&[&a, &b], 2);
    assert!(b.raw().cmd_str(&["DBSIZE"]) != ":0\r\n", "keys moved to b");
    write_all(&client, &keys, "v2");
    flush(&a);
    flush(&b);

    // b leaves: its keys come back to a, which writes them once more.
    let b_id = b.server.cluster.get().unwrap().me;
    let consensus = a.server.consensus.get().unwrap().clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(consensus.leave(b_id, false)).unwrap()
    })
    .join()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.server.cluster.get().unwrap().map().nodes.len() != 1 {
        assert!(Instant::now() < deadline, "b left");
        std::thread::sleep(Duration::from_millis(50));
    }
    settle(&[&a], 1);
    let client = redis::cluster::ClusterClient::new(vec![a.url()]).unwrap();
    write_all(&client, &keys, "v3");
    flush(&a);

    let stored = rows(MACHINE_URL, &table);
    assert_eq!(stored.len(), keys.len());
    for (key, value, _, _) in stored {
        assert_eq!(value, b"v3", "{key}: the last write wins in Postgres");
    }
}

/// A grid member process backing `session:*` by `table` with a 5 s write delay, sync
/// replication; `seed` joins another member.
fn backed_member(zone: &'static str, seed: Option<&Member>, config: &std::path::Path) -> Member {
    let options = MemberOptions::sync().args(&["--config", config.to_str().unwrap()]);
    Member::start_with(zone, seed, options)
}

#[test]
fn a_primary_killed_for_good_with_writes_still_queued_loses_none_of_them_in_postgres() {
    let table = unique_table("grid_handoff");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cachegrid.toml");
    std::fs::write(
        &config,
        format!(
            "postgres-url = \"{MACHINE_URL}\"\n\n[[keyspace]]\nname = \"sessions\"\npattern = \"session:*\"\n\
             table = \"{table}\"\nmode = \"write-behind\"\nread-through = true\nwrite-delay-ms = 5000\n"
        ),
    )
    .unwrap();
    let a = backed_member("a", None, &config);
    let b = backed_member("b", Some(&a), &config);
    let c = backed_member("c", Some(&a), &config);
    wait_for_rebalance_and_sync(&[&a, &b, &c], 3);
    let client = redis::cluster::ClusterClient::builder(vec![format!("redis://{}/", a.addr())])
        .retries(10)
        .build()
        .unwrap();
    let mut con = client.get_connection().unwrap();
    let mut want = std::collections::BTreeMap::new();

    // First values, in Postgres before the kill.
    for i in 0..500 {
        let key = format!("session:{i}");
        let _: () = redis::cmd("SET").arg(&key).arg("v1").query(&mut con).unwrap();
        want.insert(key, b"v1".to_vec());
    }
    wait_for_rows(MACHINE_URL, &table, &want, Duration::from_secs(60));

    // Then, within the write delay, overwrites, new keys and deletions: acknowledged (sync
    // mode: on the replica too) but not yet in Postgres when the busiest primary dies.
    for i in 0..1000 {
        let key = format!("session:{i}");
        let _: () = redis::cmd("SET").arg(&key).arg("v2").query(&mut con).unwrap();
        want.insert(key, b"v2".to_vec());
    }
    for i in 0..100 {
        let key = format!("session:{i}");
        let _: () = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
        want.remove(&key);
    }
    let mut members = vec![a, b, c];
    members.sort_by_key(|m| std::cmp::Reverse(m.primaries()));
    let victim = members.remove(0);
    victim.signal("-KILL");
    let started = Instant::now();

    let survivors: Vec<&Member> = members.iter().collect();
    wait_for_agreement(&survivors, 2);
    wait_for_rows(MACHINE_URL, &table, &want, Duration::from_secs(60));
    let requeued: u64 = survivors
        .iter()
        .map(|m| {
            let info = m.cmd(&["INFO", "persistence"]);
            let line = info.lines().find(|l| l.starts_with("writebehind_handoff_requeued:")).unwrap();
            line.split(':').nth(1).unwrap().trim().parse::<u64>().unwrap()
        })
        .sum();
    println!(
        "HANDOFF rows={} requeued={requeued} converged_after_ms={}",
        want.len(),
        started.elapsed().as_millis()
    );
    assert!(requeued > 0, "the promoted replicas wrote the victim's pending keys behind");
    drop(victim);
}
