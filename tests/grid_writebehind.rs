//! Write-behind in a grid: a key written behind by one node, whose slot then moves to another
//! and back, ends in Postgres with its last value — the versions of different nodes compare.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use cachegrid::config::Config;
use cachegrid::persistence::KeyspaceConfig;
use common::{free_port, TestNode};
use postgres::{rows, unique_table, MACHINE_URL};

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
