//! Redis Cluster's client side: CLUSTER commands compared with a real redis-server in cluster
//! mode, cluster-aware clients (the `redis` crate, `redis-cli -c`) against a grid of one, and
//! routing (MOVED, ASK, TRYAGAIN, CROSSSLOT, ASKING, READONLY) on two nodes sharing a slot map
//! laid out by hand.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cachegrid::cluster::{Migration, NodeInfo, SlotAssignment, SlotMap};
use cachegrid::store::{key_slot, SLOT_COUNT};
use common::{reference_redis, Differential, Raw, TestNode};

/// A node with `cluster-enabled`, its node id kept in a fresh directory, once its grid of one
/// is committed (so a map laid out by hand afterwards is not replaced by the bootstrap's).
fn cluster_node() -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let node = TestNode::with_config(move |c| {
        c.cluster_enabled = true;
        c.dir = path;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.server.cluster.get().unwrap().map().epoch == 0 {
        assert!(Instant::now() < deadline, "the grid of one is bootstrapped");
        std::thread::sleep(Duration::from_millis(10));
    }
    (node, dir)
}

fn text(reply: Vec<u8>) -> String {
    String::from_utf8_lossy(&reply).into_owned()
}

/// A real redis-server in cluster mode on a free port, owning every slot.
struct RedisCluster {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    fn start() -> Option<RedisCluster> {
        reference_redis()?; // same skip rule as the other differential tests
        let dir = tempfile::tempdir().unwrap();
        // The bus port (port + 10000) must be free too.
        let port = loop {
            let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                break p;
            }
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.path().join("nodes.conf"))
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut raw = Raw::connect(addr);
        assert_eq!(raw.cmd_str(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]), "+OK\r\n");
        while !raw.cmd_str(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "redis cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisCluster { child, addr, _dir: dir })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_standalone_node_refuses_cluster_commands_as_redis_does() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "cluster_disabled") else { return };
    for args in [
        &["CLUSTER", "INFO"][..],
        &["CLUSTER", "KEYSLOT", "foo"],
        &["CLUSTER", "SLOTS"],
        &["CLUSTER", "NODES"],
        &["CLUSTER", "MYID"],
        &["READONLY"],
        &["READWRITE"],
        &["ASKING"],
        &["CLUSTER", "KEYSLOT"],
        &["CLUSTER", "NOSUCH"],
    ] {
        d.check_str(args);
    }
    // Multi-key commands across slots are fine on a standalone node.
    d.check_str(&["MSET", "$a", "1", "$b", "2"]);
    assert!(node.raw().cmd_str(&["INFO", "cluster"]).contains("cluster_enabled:0"));
}

/// Replaces one node's id, address and bus port in a reply with another's, so replies of two
/// servers that differ only there compare equal.
fn normalize(reply: &str, from: (&str, &str, u16), to: (&str, &str, u16)) -> String {
    let mut r = reply.replace(from.0, to.0);
    // RESP2/3 ints and bulk strings carrying the address.
    r = r.replace(&format!(":{}\r\n", from.2), &format!(":{}\r\n", to.2));
    r = r.replace(
        &format!("${}\r\n{}\r\n", from.1.len(), from.1),
        &format!("${}\r\n{}\r\n", to.1.len(), to.1),
    );
    r = r.replace(
        &format!("{}:{}@{}", from.1, from.2, from.2 as u32 + 10000),
        &format!("{}:{}@{}", to.1, to.2, to.2 as u32 + 10000),
    );
    r
}

#[test]
fn cluster_commands_answer_like_a_redis_cluster_node() {
    let Some(redis) = RedisCluster::start() else { return };
    let (node, _dir) = cluster_node();
    let mut ours = node.raw();
    let mut theirs = Raw::connect(redis.addr);
    let our_id = text(ours.cmd(&[b"CLUSTER", b"MYID"]));
    let their_id = text(theirs.cmd(&[b"CLUSTER", b"MYID"]));
    assert!(our_id.starts_with("$40\r\n"), "{our_id}");
    let (our_id, their_id) = (&our_id[5..45], &their_id[5..45]);
    let ours_n = (our_id, "127.0.0.1", node.addr.port());
    let theirs_n = (their_id, "", redis.addr.port());

    let check_both = |ours: &mut Raw, theirs: &mut Raw, args: &[&str]| {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let (o, t) = (normalize(&text(ours.cmd(&a)), ours_n, theirs_n), text(theirs.cmd(&a)));
        // A grid's first agreed map has epoch 1 (Raft's bootstrap entry); a fresh Redis node
        // that took every slot by ADDSLOTS is still at 0.
        let o = o
            .replace("cluster_current_epoch:1\r\n", "cluster_current_epoch:0\r\n")
            .replace("cluster_my_epoch:1\r\n", "cluster_my_epoch:0\r\n")
            .replace(" 0 0 1 connected", " 0 0 0 connected");
        // The address changes a text reply's length: compare its body then.
        let body = |r: &str| {
            if r.starts_with(['$', '=']) {
                r.split_once("\r\n").unwrap().1.to_string()
            } else {
                r.to_string()
            }
        };
        assert_eq!(body(&o), body(&t), "{args:?}");
        assert_eq!(o.as_bytes()[0], t.as_bytes()[0], "{args:?}");
    };
    for proto in [&b"2"[..], b"3"] {
        // Versions and client ids differ; the protocol switch is what matters.
        ours.cmd(&[b"HELLO", proto]);
        theirs.cmd(&[b"HELLO", proto]);
        let mut check = |args: &[&str]| check_both(&mut ours, &mut theirs, args);
        check(&["CLUSTER", "INFO"]);
        check(&["CLUSTER", "SLOTS"]);
        check(&["CLUSTER", "SHARDS"]);
        check(&["CLUSTER", "NODES"]);
        for key in ["foo", "bar", "{user1000}.following", "", "a{}b"] {
            check(&["CLUSTER", "KEYSLOT", key]);
        }
        check(&["SET", "foo", "1"]);
        check(&["SET", "{foo}x", "2"]);
        check(&["CLUSTER", "COUNTKEYSINSLOT", "12182"]);
        check(&["CLUSTER", "COUNTKEYSINSLOT", "0"]);
        check(&["CLUSTER", "GETKEYSINSLOT", "12182", "0"]);
        check(&["CLUSTER", "GETKEYSINSLOT", "0", "10"]);
        check(&["MSET", "a", "1", "b", "2"]);
        check(&["MGET", "foo", "{foo}x"]);
        check(&["READONLY"]);
        check(&["READWRITE"]);
        check(&["ASKING"]);
        check(&["GET", "foo"]);
    }
    // Bad input gets Redis's errors.
    let mut check = |args: &[&str]| check_both(&mut ours, &mut theirs, args);
    for args in [
        &["CLUSTER", "COUNTKEYSINSLOT", "16384"][..],
        &["CLUSTER", "COUNTKEYSINSLOT", "-1"],
        &["CLUSTER", "COUNTKEYSINSLOT", "x"],
        &["CLUSTER", "COUNTKEYSINSLOT", "1", "2"],
        &["CLUSTER", "GETKEYSINSLOT", "1", "-1"],
        &["CLUSTER", "GETKEYSINSLOT", "16384", "1"],
        &["CLUSTER", "GETKEYSINSLOT", "x", "1"],
        &["CLUSTER", "GETKEYSINSLOT", "1", "x"],
        &["CLUSTER", "KEYSLOT"],
        &["CLUSTER", "KEYSLOT", "a", "b"],
        &["CLUSTER", "NOSUCH"],
        &["READONLY", "x"],
    ] {
        check(args);
    }
    // GETKEYSINSLOT lists the same keys (order is each server's own).
    let keys = |raw: &mut Raw| {
        let mut lines: Vec<String> = text(raw.cmd(&[b"CLUSTER", b"GETKEYSINSLOT", b"12182", b"10"]))
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(keys(&mut ours), keys(&mut theirs));
    assert!(node.raw().cmd_str(&["INFO", "cluster"]).contains("cluster_enabled:1"));
}

#[test]
fn the_node_id_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let path = dir.path().to_path_buf();
        TestNode::with_config(move |c| {
            c.cluster_enabled = true;
            c.dir = path;
        })
    };
    let first = start().raw().cmd_str(&["CLUSTER", "MYID"]);
    let second = start().raw().cmd_str(&["CLUSTER", "MYID"]);
    assert_eq!(first, second);
}

#[test]
fn the_redis_crate_cluster_client_works_against_a_grid_of_one() {
    let (node, _dir) = cluster_node();
    let client = redis::cluster::ClusterClient::new(vec![node.url()]).unwrap();
    let mut con = client.get_connection().unwrap();
    for i in 0..500 {
        let _: () = redis::cmd("SET").arg(format!("key:{i}")).arg(i).query(&mut con).unwrap();
    }
    for i in (0..500).step_by(7) {
        let v: i64 = redis::cmd("GET").arg(format!("key:{i}")).query(&mut con).unwrap();
        assert_eq!(v, i);
    }
    // Keys in many slots: the client splits MGET per slot.
    let keys: Vec<String> = (0..50).map(|i| format!("key:{i}")).collect();
    let vals: Vec<i64> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
    assert_eq!(vals, (0..50).collect::<Vec<_>>());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut con = client.get_async_connection().await.unwrap();
        let _: () = redis::cmd("SET").arg("{tag}a").arg("x").query_async(&mut con).await.unwrap();
        let v: String = redis::cmd("GET").arg("{tag}a").query_async(&mut con).await.unwrap();
        assert_eq!(v, "x");
    });
}

/// Two nodes on one slot map: `a` serves slots below 8192, `b` the rest, each a replica of the
/// other. Returns the nodes (kept alive) and the map.
fn two_node_grid() -> (Vec<(TestNode, tempfile::TempDir)>, SlotMap) {
    let nodes = vec![cluster_node(), cluster_node()];
    let infos: Vec<NodeInfo> = nodes
        .iter()
        .map(|(n, _)| NodeInfo {
            id: n.server.cluster.get().unwrap().me,
            host: "127.0.0.1".into(),
            port: n.addr.port(),
            bus_port: 0,
            zone: "z".into(),
            tls_port: 0,
        })
        .collect();
    let assignment: Vec<SlotAssignment> = (0..SLOT_COUNT)
        .map(|s| {
            let (p, r) = if s < 8192 { (0, 1) } else { (1, 0) };
            SlotAssignment { primary: Some(infos[p].id), replicas: vec![infos[r].id] }
        })
        .collect();
    let map = SlotMap::from_assignment(1, infos, &assignment).unwrap();
    install(&nodes, &map);
    (nodes, map)
}

/// Installs `map` on every node, and waits until each has dropped the copies the new map
/// makes stale (until then an importer answers TRYAGAIN).
fn install(nodes: &[(TestNode, tempfile::TempDir)], map: &SlotMap) {
    for (n, _) in nodes {
        n.server.cluster.get().unwrap().install(map.clone()).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nodes.iter().any(|(n, _)| !n.server.cluster.get().unwrap().unready_slots().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "stale copies dropped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Index of `id`'s node in `nodes` order (the map sorts nodes by id).
fn node_of(nodes: &[(TestNode, tempfile::TempDir)], map: &SlotMap, slot: u16) -> usize {
    let id = map.node(map.slots[slot as usize].primary.unwrap()).id;
    nodes.iter().position(|(n, _)| n.server.cluster.get().unwrap().me == id).unwrap()
}

#[test]
fn keys_of_other_nodes_are_moved_and_cluster_clients_follow() {
    let (nodes, map) = two_node_grid();
    let foo = key_slot(b"foo"); // 12182
    let owner = node_of(&nodes, &map, foo);
    let other = 1 - owner;
    let (a, b) = (&nodes[other].0, &nodes[owner].0);
    assert_eq!(a.raw().cmd_str(&["GET", "foo"]), format!("-MOVED {foo} 127.0.0.1:{}\r\n", b.addr.port()));
    assert_eq!(b.raw().cmd_str(&["GET", "foo"]), "$-1\r\n");
    assert_eq!(
        a.raw().cmd_str(&["CLUSTER", "KEYSLOT", "foo"]),
        format!(":{foo}\r\n"),
        "keyless commands run anywhere"
    );
    assert_eq!(
        a.raw().cmd_str(&["MGET", "a", "b"]),
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );

    // The redis crate's cluster client spreads keys over both nodes.
    let client = redis::cluster::ClusterClient::new(vec![a.url()]).unwrap();
    let mut con = client.get_connection().unwrap();
    for i in 0..1000 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut con).unwrap();
    }
    for i in 0..1000 {
        let v: i64 = redis::cmd("GET").arg(format!("k{i}")).query(&mut con).unwrap();
        assert_eq!(v, i);
    }
    let sizes: Vec<usize> = nodes.iter().map(|(n, _)| n.server.keyspace.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1000, "{sizes:?}");
    assert!(sizes.iter().all(|&s| s > 300), "both nodes hold keys: {sizes:?}");
    // Each node holds only its own slots.
    for (i, (n, _)) in nodes.iter().enumerate() {
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut n.server_sync()).unwrap();
        for k in keys {
            assert_eq!(node_of(&nodes, &map, key_slot(k.as_bytes())), i, "{k}");
        }
    }

    // redis-cli -c follows MOVED.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &a.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "foo", "from-cli"]), "OK");
    assert_eq!(cli(&["GET", "foo"]), "from-cli");
    assert_eq!(b.raw().cmd_str(&["GET", "foo"]), "$8\r\nfrom-cli\r\n");
}

trait SyncClient {
    fn server_sync(&self) -> redis::Connection;
}

impl SyncClient for TestNode {
    fn server_sync(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

#[test]
fn readonly_connections_read_slots_this_node_replicates() {
    let (nodes, map) = two_node_grid();
    let foo = key_slot(b"foo");
    let replica = &nodes[1 - node_of(&nodes, &map, foo)].0;
    let mut c = replica.raw();
    assert!(c.cmd_str(&["GET", "foo"]).starts_with("-MOVED"));
    assert_eq!(c.cmd_str(&["READONLY"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "foo"]), "$-1\r\n", "served here (no replication yet, so empty)");
    assert!(c.cmd_str(&["SET", "foo", "x"]).starts_with("-MOVED"), "writes still go to the primary");
    assert_eq!(c.cmd_str(&["READWRITE"]), "+OK\r\n");
    assert!(c.cmd_str(&["GET", "foo"]).starts_with("-MOVED"));
}

#[test]
fn a_migrating_slot_answers_ask_and_tryagain_and_asking_opens_the_importer() {
    let (nodes, mut map) = two_node_grid();
    let foo = key_slot(b"foo");
    let src = node_of(&nodes, &map, foo);
    let (from, to) = (&nodes[src].0, &nodes[1 - src].0);
    assert_eq!(from.raw().cmd_str(&["SET", "foo", "here"]), "+OK\r\n");
    // The slot of "foo" starts moving to the other node.
    map.epoch += 1;
    let (fi, ti) = (map.slots[foo as usize].primary.unwrap(), map.slots[foo as usize].replicas[0]);
    map.migrations.insert(foo, Migration { from: fi, to: ti });
    install(&nodes, &map);
    let to_ep = format!("127.0.0.1:{}", to.addr.port());
    let from_ep = format!("127.0.0.1:{}", from.addr.port());

    let mut c = from.raw();
    assert_eq!(c.cmd_str(&["GET", "foo"]), "$4\r\nhere\r\n", "keys still here are served");
    assert_eq!(
        c.cmd_str(&["GET", "{foo}gone"]),
        format!("-ASK {foo} {to_ep}\r\n"),
        "missing keys may have moved"
    );
    assert_eq!(
        c.cmd_str(&["MGET", "foo", "{foo}gone"]),
        "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
    );

    let mut c = to.raw();
    assert_eq!(
        c.cmd_str(&["GET", "{foo}gone"]),
        format!("-MOVED {foo} {from_ep}\r\n"),
        "without ASKING: the source"
    );
    assert_eq!(c.cmd_str(&["ASKING"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "{foo}gone", "moved"]), "+OK\r\n");
    assert!(c.cmd_str(&["GET", "{foo}gone"]).starts_with("-MOVED"), "ASKING covers one command");
    assert_eq!(c.cmd_str(&["ASKING"]), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["MGET", "{foo}gone", "{foo}other"]),
        "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
    );
    assert_eq!(c.cmd_str(&["ASKING"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "{foo}gone"]), "$5\r\nmoved\r\n");

    // The move completes: the new owner serves, the old one redirects for good.
    map.epoch += 1;
    map.migrations.clear();
    map.slots[foo as usize] = cachegrid::cluster::Owners { primary: Some(ti), replicas: vec![fi] };
    install(&nodes, &map);
    assert_eq!(from.raw().cmd_str(&["GET", "foo"]), format!("-MOVED {foo} {to_ep}\r\n"));
    assert_eq!(to.raw().cmd_str(&["GET", "{foo}gone"]), "$5\r\nmoved\r\n");
}

#[test]
fn a_node_drops_its_copies_of_a_slot_it_no_longer_serves() {
    let (nodes, mut map) = two_node_grid();
    let foo = key_slot(b"foo");
    let old = node_of(&nodes, &map, foo);
    assert_eq!(nodes[old].0.raw().cmd_str(&["SET", "foo", "v"]), "+OK\r\n");
    // The slot changes hands (as after a failover): the old primary becomes a replica, which
    // is filled by its new primary's full sync, never from what it held before.
    map.epoch += 1;
    let o = map.slots[foo as usize].clone();
    map.slots[foo as usize] =
        cachegrid::cluster::Owners { primary: Some(o.replicas[0]), replicas: vec![o.primary.unwrap()] };
    install(&nodes, &map);
    let mut c = nodes[old].0.raw();
    assert_eq!(c.cmd_str(&["READONLY"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "foo"]), "$-1\r\n");
    assert_eq!(c.cmd_str(&["DBSIZE"]), ":0\r\n");
}

#[test]
fn transactions_are_routed_as_a_whole() {
    let (nodes, map) = two_node_grid();
    let here = &nodes[node_of(&nodes, &map, key_slot(b"bar"))].0; // "bar" is slot 5061
    let mut c = here.raw();
    // A queued command for another node fails the transaction, as in Redis.
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert!(c.cmd_str(&["SET", "foo", "1"]).starts_with("-MOVED"));
    assert_eq!(c.cmd_str(&["EXEC"]), "-EXECABORT Transaction discarded because of previous errors.\r\n");
    // Commands each fine alone but on different slots: EXEC says CROSSSLOT and discards.
    let (k1, k2) = ("bar", "{bar}x");
    assert_eq!(key_slot(k1.as_bytes()), key_slot(k2.as_bytes()));
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", k1, "1"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["SET", k2, "2"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "*2\r\n+OK\r\n+OK\r\n");
    let other_local = (0..10_000).map(|i| format!("k{i}")).find(|k| {
        let s = key_slot(k.as_bytes());
        s != key_slot(b"bar") && node_of(&nodes, &map, s) == node_of(&nodes, &map, key_slot(b"bar"))
    });
    let other_local = other_local.unwrap();
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", k1, "1"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["SET", &other_local, "2"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "-CROSSSLOT Keys in request don't hash to the same slot\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "-ERR EXEC without MULTI\r\n", "the transaction was discarded");
}

#[test]
fn the_binary_serves_a_grid_of_one_to_redis_cli_in_cluster_mode() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::NodeProcess::spawn(&[
        "--cluster-enabled",
        "true",
        "--zone",
        "eu-1a",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &node.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello");
    assert!(cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
    let id = std::fs::read_to_string(dir.path().join(cachegrid::cluster::node_id::NODE_ID_FILE)).unwrap();
    assert_eq!(cli(&["CLUSTER", "MYID"]), id.trim());
}

/// A node as CLUSTER SLOTS lists it: ip, port, id.
type SlotsNode = (String, i64, String);

#[test]
fn slots_shards_and_nodes_describe_primaries_and_replicas_of_every_range() {
    let (nodes, map) = two_node_grid();
    let (a, b) = (&nodes[0].0, &nodes[1].0);
    let id = |n: &TestNode| n.server.cluster.get().unwrap().me.to_string();
    let port = |n: &TestNode| n.addr.port() as i64;
    let mut con = redis::Client::open(a.url()).unwrap().get_connection().unwrap();
    // CLUSTER SLOTS: [first, last, primary, replica] per range, nodes as [ip, port, id, {}].
    let slots: Vec<(i64, i64, SlotsNode, SlotsNode)> = {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
        let redis::Value::Array(ranges) = v else { panic!("{v:?}") };
        ranges
            .iter()
            .map(|r| {
                let redis::Value::Array(f) = r else { panic!() };
                let node = |v: &redis::Value| {
                    let redis::Value::Array(n) = v else { panic!() };
                    assert_eq!(n.len(), 4);
                    redis::from_redis_value::<(String, i64, String)>(&redis::Value::Array(n[..3].to_vec()))
                        .unwrap()
                };
                (
                    redis::from_redis_value(&f[0]).unwrap(),
                    redis::from_redis_value(&f[1]).unwrap(),
                    node(&f[2]),
                    node(&f[3]),
                )
            })
            .collect()
    };
    let owner = |slot: u16| &nodes[node_of(&nodes, &map, slot)].0;
    assert_eq!(slots.len(), 2);
    for (first, last, primary, replica) in &slots {
        let p = owner(*first as u16);
        let r = if std::ptr::eq(p, a) { b } else { a };
        assert_eq!(primary, &("127.0.0.1".to_string(), port(p), id(p)));
        assert_eq!(replica, &("127.0.0.1".to_string(), port(r), id(r)));
        assert!(*last == 8191 || *last == 16383);
    }
    // CLUSTER NODES: one line per node, this one flagged myself, each with its primary range.
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let mine = lines.iter().find(|l| l.starts_with(&id(a))).unwrap();
    assert!(mine.contains(" myself,master - 0 0 1 connected "), "{mine}");
    assert!(mine.ends_with(if node_of(&nodes, &map, 0) == 0 { " 0-8191" } else { " 8192-16383" }), "{mine}");
    // CLUSTER SHARDS: two shards, each a master and a replica.
    let shards = a.raw().cmd_str(&["CLUSTER", "SHARDS"]);
    assert!(shards.starts_with("*2\r\n"), "{shards}");
    assert_eq!(shards.matches("$6\r\nmaster\r\n").count(), 2, "{shards}");
    assert_eq!(shards.matches("$7\r\nreplica\r\n").count(), 2, "{shards}");
    assert!(a
        .raw()
        .cmd_str(&["CLUSTER", "INFO"])
        .contains("cluster_known_nodes:2\r\ncluster_size:2\r\ncluster_current_epoch:1"));
}
