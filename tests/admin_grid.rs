//! Operating a real grid through the admin port: `cachegrid node` processes in three zones,
//! joined with `--join`, observed through any member's `/cluster`, `/metrics`, `/ready`, the
//! dashboard (in headless Chromium) and the `cachegrid status` and `cachegrid rebalance`
//! subcommands.

mod common;

#[path = "common/browser.rs"]
mod browser;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use cachegrid::admin::cluster::ClusterView;
use common::{encode, free_port, NodeProcess};
use prometheus::{parse_prometheus, promtool_check};

/// One grid member: its process, data directory and ports (as in `tests/grid.rs`).
struct Member {
    process: NodeProcess,
    _dir: tempfile::TempDir,
    bus: u16,
    admin: u16,
}

impl Member {
    /// Starts a member in `zone`; `seed` is another member to join, None to bootstrap.
    fn start(zone: &str, seed: Option<&Member>) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let (bus, admin) = (free_port(), free_port());
        let (d, b, a) = (dir.path().to_str().unwrap().to_string(), bus.to_string(), admin.to_string());
        let mut args = vec!["--dir", &d, "--zone", zone, "--cluster-port", &b, "--admin-port", &a];
        args.extend(["--cluster-node-timeout", "3000"]);
        let seed = seed.map(|s| format!("{}@{}", s.process.addr, s.bus));
        match &seed {
            Some(s) => args.extend(["--join", s]),
            None => args.extend(["--cluster-enabled", "true"]),
        }
        Member { process: NodeProcess::spawn(&args), _dir: dir, bus, admin }
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin(), path)
    }

    fn cluster(&self) -> ClusterView {
        let (status, body) = self.get("/cluster");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        promtool_check(&text);
        parse_prometheus(&text)
    }

    fn myid(&self) -> String {
        let reply = self.process.raw().cmd_str(&["CLUSTER", "MYID"]);
        reply.lines().nth(1).unwrap_or_default().to_string()
    }
}

/// A plain HTTP/1.0 GET (no runtime: the async tests call it from inside theirs).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin port answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn cachegrid(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cachegrid")).args(args).output().unwrap()
}

/// Waits until every member's `/cluster` lists `known` nodes, all reachable and ready, on the
/// same map epoch with no slot moving; returns the first member's view.
fn wait_until_settled(members: &[&Member], known: usize) -> ClusterView {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let views: Vec<ClusterView> = members.iter().map(|m| m.cluster()).collect();
        let settled = views.iter().all(|v| {
            v.nodes.len() == known
                && v.slots_moving == 0
                && v.epoch == views[0].epoch
                && v.nodes.iter().all(|n| n.reachable && n.ready)
                // A replica placement dropped stays listed until its successor's full sync is
                // committed as done (make-before-break): R = 1 settles at one per slot.
                && v.nodes.iter().map(|n| n.replica_slot_count()).sum::<u32>()
                    <= v.nodes.iter().map(|n| n.slot_count()).sum::<u32>()
        });
        if settled {
            return views.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "the grid did not settle on {known} nodes: {views:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `name{labels}` samples whose series starts with `prefix`.
fn series<'m>(m: &'m BTreeMap<String, f64>, prefix: &str) -> Vec<(&'m String, f64)> {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k, *v)).collect()
}

fn get(m: &BTreeMap<String, f64>, s: &str) -> f64 {
    *m.get(s).unwrap_or_else(|| panic!("no {s} in /metrics"))
}

/// Writes `n` keys `prefix:i` to a grid of one through one pipelined connection.
fn fill(m: &Member, prefix: &str, n: usize) {
    let mut raw = m.process.raw();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut buf = Vec::new();
        for i in chunk {
            let key = format!("{prefix}:{i}");
            buf.extend(encode(&[b"SET", key.as_bytes(), b"some value of a session"]));
        }
        raw.send(&buf);
        for _ in chunk {
            assert_eq!(raw.read_reply().unwrap(), b"+OK\r\n");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_shows_the_whole_grid_and_its_metrics_move_with_traffic() {
    let a = Member::start("zone-a", None);
    let b = tokio::task::block_in_place(|| Member::start("zone-b", Some(&a)));
    let c = tokio::task::block_in_place(|| Member::start("zone-c", Some(&b)));
    let view = tokio::task::block_in_place(|| wait_until_settled(&[&a, &b, &c], 3));

    // /cluster, asked of any member, lists all three with zones, roles and slots.
    let ids: BTreeSet<String> = [&a, &b, &c].iter().map(|m| m.myid()).collect();
    let listed: BTreeSet<String> = view.nodes.iter().map(|n| n.id.clone()).collect();
    assert_eq!(listed, ids);
    let zones: BTreeSet<&str> = view.nodes.iter().filter_map(|n| n.zone.as_deref()).collect();
    assert_eq!(zones, BTreeSet::from(["zone-a", "zone-b", "zone-c"]));
    let primaries: u32 = view.nodes.iter().map(|n| n.slot_count()).sum();
    let replicas: u32 = view.nodes.iter().map(|n| n.replica_slot_count()).sum();
    assert_eq!(primaries, 16384, "every slot has one primary");
    assert_eq!(replicas, 16384, "and one replica (R = 1)");
    for n in &view.nodes {
        assert!((5461..=5462).contains(&n.slot_count()), "balanced primaries: {n:?}");
        assert_eq!(n.roles, ["primary", "replica"], "{n:?}");
        assert!(!n.admin.is_empty() && !n.version.is_empty(), "figures from the member itself: {n:?}");
        assert_eq!(n.replication.len(), 2, "two replicas take copies of each node's slots: {n:?}");
    }
    assert_eq!(view.nodes.iter().filter(|n| n.leader).count(), 1, "one Raft leader");
    let addresses: BTreeSet<String> = view.nodes.iter().map(|n| n.address.clone()).collect();
    assert_eq!(addresses, [&a, &b, &c].iter().map(|m| m.addr().to_string()).collect());

    // `cachegrid status` prints the same grid as a table.
    let out = tokio::task::block_in_place(|| cachegrid(&["status", "--admin", &c.admin()]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "a header, three nodes, a summary: {table}");
    assert!(
        lines[0].starts_with("ZONE") && lines[0].contains("REPLICAS") && lines[0].contains("LAG"),
        "{table}"
    );
    for (line, m) in lines[1..4].iter().zip([&a, &b, &c]) {
        assert!(line.contains(&m.addr().to_string()) && line.contains("primary+replica"), "{table}");
        assert!(line.trim_end().ends_with("ready"), "{table}");
    }
    assert!(lines[1].starts_with("zone-a") && lines[3].starts_with("zone-c"), "grouped by zone: {table}");
    assert!(table.contains("(leader)"), "{table}");
    assert!(lines[4].starts_with("3 node(s), 16384/16384 slots served in 3 zone(s), map epoch"), "{table}");

    // /metrics: Prometheus text with the grid's figures, the same map on every member.
    let before: Vec<BTreeMap<String, f64>> = [&a, &b, &c].iter().map(|m| m.metrics()).collect();
    let epoch = get(&before[0], "cachegrid_cluster_epoch");
    assert!(epoch >= 1.0);
    let mut leaders = 0.0;
    let mut primary_slots = 0.0;
    for m in &before {
        assert_eq!(get(m, "cachegrid_cluster_epoch"), epoch);
        assert_eq!(get(m, "cachegrid_cluster_members"), 3.0);
        assert_eq!(get(m, "cachegrid_cluster_slots_moving"), 0.0);
        assert_eq!(get(m, "cachegrid_ready"), 1.0);
        leaders += get(m, "cachegrid_cluster_leader");
        primary_slots += get(m, "cachegrid_cluster_slots{role=\"primary\"}");
        assert!(get(m, "cachegrid_cluster_slots{role=\"replica\"}") > 5000.0);
        assert_eq!(series(m, "cachegrid_replication_lag_seconds{").len(), 2, "a lag per replica");
        assert_eq!(series(m, "cachegrid_replication_pending_keys{").len(), 2);
    }
    assert_eq!((leaders, primary_slots), (1.0, 16384.0));

    // Traffic: 600 keys through a cluster client; each is shipped to its replica.
    let client = redis::cluster::ClusterClient::new(vec![format!("redis://{}/", a.addr())]).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    for i in 0..600 {
        let _: () = redis::cmd("SET").arg(format!("user:{i}")).arg(i).query_async(&mut con).await.unwrap();
    }
    let sum = |ms: &[BTreeMap<String, f64>], s: &str| {
        ms.iter().map(|m| m.get(s).copied().unwrap_or(0.0)).sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after: Vec<BTreeMap<String, f64>> =
            tokio::task::block_in_place(|| [&a, &b, &c].iter().map(|m| m.metrics()).collect());
        let shipped = sum(&after, "cachegrid_replication_keys_total{direction=\"out\"}")
            - sum(&before, "cachegrid_replication_keys_total{direction=\"out\"}");
        if shipped >= 600.0 {
            break after;
        }
        assert!(Instant::now() < deadline, "600 keys shipped to replicas, {shipped} so far");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let applied = sum(&after, "cachegrid_replication_keys_total{direction=\"in\"}")
        - sum(&before, "cachegrid_replication_keys_total{direction=\"in\"}");
    assert!(applied >= 600.0, "replicas applied them: {applied}");
    assert_eq!(sum(&after, "cachegrid_keys"), 1200.0, "a primary copy and a replica copy of each");
    let sets = sum(&after, "cachegrid_commands_total{cmd=\"set\"}")
        - sum(&before, "cachegrid_commands_total{cmd=\"set\"}");
    assert_eq!(sets, 600.0);
    for m in &after {
        for (s, v) in series(m, "cachegrid_replication_lag_seconds{") {
            assert!((0.0..60.0).contains(&v), "{s} {v}");
        }
    }
    // Every metric exported is documented.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ADMIN.md")).unwrap();
    let (_, text) = tokio::task::block_in_place(|| a.get("/metrics"));
    for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()) {
        assert!(doc.contains(&format!("| `{name}` |")), "{name} is not in docs/ADMIN.md");
    }

    // A member that stops answering is shown as unreachable (until it is failed over and
    // leaves the map); the page never fails because of it.
    let c_id = c.myid();
    drop(c); // SIGKILL
    let started = Instant::now();
    let view = tokio::task::block_in_place(|| a.cluster());
    assert!(started.elapsed() < Duration::from_secs(3), "/cluster does not hang on a dead member");
    match view.nodes.iter().find(|n| n.id == c_id) {
        Some(n) => {
            assert!(!n.reachable && !n.ready && n.not_ready.as_deref() == Some("unreachable"), "{n:?}")
        }
        None => assert_eq!(view.nodes.len(), 2, "already failed over: {view:?}"),
    }
    let out = tokio::task::block_in_place(|| cachegrid(&["status", "--admin", &a.admin()]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_follows_the_moves_after_a_join_and_ready_fails_while_a_node_leaves() {
    // 20,000 keys on a grid of one, so a join has keys to move in most slots.
    let a = Member::start("zone-a", None);
    tokio::task::block_in_place(|| wait_until_settled(&[&a], 1));
    fill(&a, "s", 20_000);
    let out = cachegrid(&["rebalance", "--admin", &a.admin()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("the grid is balanced: no slot is moving"));

    // b joins: once its join is committed, half of a's slots move, and `rebalance` follows them.
    let b = tokio::task::block_in_place(|| Member::start("zone-b", Some(&a)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.cluster().nodes.len() < 2 {
        assert!(Instant::now() < deadline, "b joins");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The joiner is not ready while slots are still importing to it.
    let (status, reason) = b.get("/ready");
    if status == 503 {
        assert!(
            reason.starts_with("catching up") || reason.starts_with("waiting for the grid's map"),
            "{reason}"
        );
    }
    let out = cachegrid(&["rebalance", "--admin", &a.admin(), "--timeout", "120"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("cachegrid rebalance printed:\n{stderr}{stdout}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("slots moved,") && stderr.lines().next().unwrap().starts_with('['),
        "a progress bar: {stderr}"
    );
    assert!(stdout.starts_with("done: the grid is balanced"), "{stdout}");
    let view = tokio::task::block_in_place(|| wait_until_settled(&[&a, &b], 2));
    assert_eq!(view.nodes.iter().map(|n| n.slot_count()).collect::<Vec<_>>(), [8192, 8192]);
    let moved = get(&a.metrics(), "cachegrid_migration_keys_total{direction=\"out\"}");
    let arrived = get(&b.metrics(), "cachegrid_migration_keys_total{direction=\"in\"}");
    assert!(moved > 5_000.0 && moved == arrived, "about half the keys moved: {moved} sent, {arrived} stored");

    // c joins; then b leaves: b's /ready fails from the moment its leave is agreed.
    let c = tokio::task::block_in_place(|| Member::start("zone-c", Some(&a)));
    tokio::task::block_in_place(|| wait_until_settled(&[&a, &b, &c], 3));
    assert_eq!(b.get("/ready"), (200, "ready\n".into()));
    let b_admin = b.admin();
    let leaver = std::thread::spawn(move || cachegrid(&["leave", "--admin", &b_admin]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let (status, reason) = b.get("/ready");
        if status == 503 {
            break reason;
        }
        assert!(Instant::now() < deadline, "b's /ready still 200 while it leaves");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(reason == "leaving the grid\n" || reason == "not a member of the grid\n", "{reason}");
    let out = leaver.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(b.get("/ready"), (503, "not a member of the grid\n".into()));
    assert_eq!(get(&b.metrics(), "cachegrid_ready"), 0.0);
    let view = tokio::task::block_in_place(|| wait_until_settled(&[&a, &c], 2));
    assert_eq!(view.nodes.iter().map(|n| n.slot_count()).sum::<u32>(), 16384);
    let out = cachegrid(&["rebalance", "--admin", &c.admin()]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("the grid is balanced"), "{out:?}");
}

#[test]
fn the_dashboard_shows_every_node_of_a_three_zone_grid_in_a_browser() {
    let Some(bin) = browser::chromium() else { return };
    let a = Member::start("zone-a", None);
    let b = Member::start("zone-b", Some(&a));
    let c = Member::start("zone-c", Some(&a));
    wait_until_settled(&[&a, &b, &c], 3);
    for (i, m) in [&a, &b, &c].iter().enumerate() {
        // Keys each node is primary of: a grid of three answers MOVED for the others.
        let mut raw = m.process.raw();
        let mut stored = 0;
        for k in 0.. {
            if raw.cmd_str(&["SET", &format!("n{i}:{k}"), "v"]) == "+OK\r\n" {
                stored += 1;
            }
            if stored == 10 {
                break;
            }
        }
    }
    let url = format!("http://{}/", b.admin());
    let dom = browser::run_chromium(&bin, &url, &["--dump-dom"]);
    for (m, z) in [(&a, "zone-a"), (&b, "zone-b"), (&c, "zone-c")] {
        assert!(dom.contains(&format!("data-zone=\"{z}\"")), "zone {z} missing: {dom}");
        assert!(dom.contains(&format!("class=\"addr\">{}<", m.addr())), "node {} missing: {dom}", m.addr());
    }
    assert_eq!(dom.matches("data-node=").count(), 3, "{dom}");
    assert_eq!(dom.matches("class=\"slots replica\"").count(), 3, "a replica bar per node: {dom}");
    assert!(dom.contains("16,384 / 16,384"), "{dom}");
    assert!(dom.contains(">leader<") && dom.contains("replica lag"), "{dom}");
    assert!(dom.contains("<div id=\"state\" class=\"\">updated "), "the last refresh succeeded: {dom}");
    browser::screenshot(&bin, &url, "dashboard-grid-three-zones.png");
}
