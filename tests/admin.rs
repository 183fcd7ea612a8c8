//! The admin HTTP port of a real node: `/metrics` parses as Prometheus text and moves with
//! traffic, `/health`, `/ready` (503 while draining), `/cluster`, and the `cachegrid status`
//! and `cachegrid health` subcommands that read it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cachegrid::admin::cli;
use cachegrid::admin::cluster::ClusterView;
use common::Raw;
use prometheus::{parse_prometheus, promtool_check};

#[path = "common/prometheus.rs"]
mod prometheus;

/// A `cachegrid node` process with its client and admin addresses.
struct AdminNode {
    child: Child,
    addr: SocketAddr,
    admin: String,
}

impl AdminNode {
    fn spawn(args: &[&str]) -> AdminNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
            .args(["node", "--port", "0", "--log-format", "json", "--log-level", "info"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cachegrid");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let line = lines.next().expect("node exited before listening").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let fields = &v["fields"];
            if let Some(a) = fields["addr"].as_str() {
                addr = Some(a.parse().unwrap());
            }
            if let Some(a) = fields["admin"].as_str() {
                admin = Some(a.to_string());
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        AdminNode { child, addr: addr.unwrap(), admin: admin.unwrap() }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        promtool_check(&text);
        parse_prometheus(&text)
    }
}

impl Drop for AdminNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, body) = rt.block_on(cli::get(addr, path)).expect("admin port answers");
    (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_when_traffic_flows() {
    let node = AdminNode::spawn(&[]);
    let before = node.metrics();
    assert_eq!(get(&before, "cachegrid_keys"), 0.0);
    assert_eq!(get(&before, "cachegrid_ready"), 1.0);
    assert!(get(&before, "cachegrid_memory_used_bytes") > 0.0);

    let mut c = Raw::connect(node.addr);
    for i in 0..200 {
        assert_eq!(c.cmd_str(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    for i in 0..150 {
        c.cmd_str(&["GET", &format!("k{}", i * 2)]); // 100 hits, 50 misses
    }
    c.cmd_str(&["HSET", "h", "f", "v"]);
    assert!(c.cmd_str(&["GET", "h"]).starts_with("-WRONGTYPE"));
    assert!(c.cmd_str(&["NOSUCHCMD"]).starts_with("-ERR unknown command"));
    c.cmd_str(&["SET", "short", "v", "PX", "1"]);
    std::thread::sleep(Duration::from_millis(5));
    c.cmd_str(&["GET", "short"]); // expires on access

    let after = node.metrics();
    let delta = |s: &str| get(&after, s) - before.get(s).copied().unwrap_or(0.0);
    assert_eq!(delta("cachegrid_commands_total{cmd=\"set\"}"), 201.0);
    assert_eq!(delta("cachegrid_commands_total{cmd=\"get\"}"), 152.0);
    assert_eq!(delta("cachegrid_command_errors_total{cmd=\"get\"}"), 1.0);
    assert_eq!(delta("cachegrid_command_errors_total{cmd=\"set\"}"), 0.0);
    assert_eq!(delta("cachegrid_error_replies_total"), 2.0, "WRONGTYPE and the unknown command");
    // As in Redis: the wrong-type GET found its key (a hit); the expired key is a miss.
    assert_eq!(delta("cachegrid_keyspace_hits_total"), 101.0);
    assert_eq!(delta("cachegrid_keyspace_misses_total"), 51.0);
    assert_eq!(delta("cachegrid_expired_keys_total"), 1.0);
    assert_eq!(get(&after, "cachegrid_keys"), 201.0);
    assert_eq!(get(&after, "cachegrid_connected_clients"), 1.0);
    assert!(delta("cachegrid_net_input_bytes_total") > 200.0 * 20.0);
    assert!(delta("cachegrid_net_output_bytes_total") >= 200.0 * 5.0);
    // One call in 64 is timed: SET ran 201 times.
    let timed = get(&after, "cachegrid_command_latency_seconds_count{cmd=\"set\"}");
    assert!((3.0..=5.0).contains(&timed), "{timed} SET calls timed");
    assert_eq!(get(&after, "cachegrid_command_latency_seconds_bucket{cmd=\"set\",le=\"+Inf\"}"), timed);
    assert!(get(&after, "cachegrid_command_latency_seconds_sum{cmd=\"set\"}") > 0.0);

    // Every metric exported is documented.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ADMIN.md")).unwrap();
    let (_, text) = node.get("/metrics");
    for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()) {
        assert!(doc.contains(&format!("| `{name}` |")), "{name} is not in docs/ADMIN.md");
    }

    // A second scrape without traffic pushes no new latency samples.
    let again = node.metrics();
    assert_eq!(get(&again, "cachegrid_command_latency_seconds_count{cmd=\"set\"}"), timed);

    // CONFIG RESETSTAT zeroes INFO's figures, but Prometheus counters only go up: what is
    // counted after the reset is added to what was exported before.
    assert_eq!(c.cmd_str(&["CONFIG", "RESETSTAT"]), "+OK\r\n");
    for i in 0..3 {
        c.cmd_str(&["SET", &format!("k{i}"), "v"]);
    }
    let reset = node.metrics();
    assert_eq!(get(&reset, "cachegrid_commands_total{cmd=\"set\"}"), 204.0);
    assert_eq!(get(&reset, "cachegrid_keyspace_hits_total"), get(&after, "cachegrid_keyspace_hits_total"));
    assert!(c.cmd_str(&["INFO", "stats"]).contains("keyspace_hits:0\r\n"));
}

#[test]
fn health_ready_and_cluster_describe_the_node() {
    let node = AdminNode::spawn(&["--maxmemory", "64mb"]);
    assert_eq!(node.get("/health"), (200, "ok\n".into()));
    assert_eq!(node.get("/ready"), (200, "ready\n".into()));
    let mut c = Raw::connect(node.addr);
    c.cmd_str(&["MSET", "a", "1", "b", "2", "c", "3"]);

    let (status, body) = node.get("/cluster");
    assert_eq!(status, 200);
    let view: ClusterView = serde_json::from_str(&body).unwrap();
    assert_eq!(view.slots_total, 16384);
    assert_eq!(view.nodes.len(), 1);
    let me = &view.nodes[0];
    assert_eq!(me.id, view.myself);
    assert_eq!(me.id.len(), 40);
    assert_eq!(me.address, node.addr.to_string());
    assert_eq!(me.admin, node.admin);
    assert_eq!(me.role, "primary");
    assert_eq!(me.slots, vec![[0, 16383]]);
    assert_eq!(me.keys, 3);
    assert_eq!(me.clients, 1);
    assert_eq!(me.maxmemory_bytes, 64 << 20);
    assert!(me.memory_bytes > 0 && me.ready);
    assert_eq!(me.zone, None, "no zones before the grid");

    assert_eq!(node.get("/nope").0, 404);
    let (status, page) = node.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>cachegrid</title>") && page.contains("fetch(\"cluster\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the dashboard loads nothing from outside"
    );
}

#[test]
fn ready_answers_503_while_the_node_drains_after_sigterm() {
    let node = AdminNode::spawn(&["--shutdown-drain", "2"]);
    assert_eq!(node.get("/ready").0, 200);
    let sent = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while node.get("/ready").0 != 503 {
        assert!(Instant::now() < deadline, "/ready still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(node.get("/ready"), (503, "draining\n".into()));
    assert_eq!(node.get("/health").0, 200, "alive while draining");
    let view: ClusterView = serde_json::from_str(&node.get("/cluster").1).unwrap();
    assert!(!view.nodes[0].ready);
    let m = parse_prometheus(&node.get("/metrics").1);
    assert_eq!(get(&m, "cachegrid_ready"), 0.0);
    // Clients are still served during the drain.
    assert_eq!(Raw::connect(node.addr).cmd_str(&["PING"]), "+PONG\r\n");

    let mut node = node;
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "node did not stop after the drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "stopped before the drain ended: {:?}",
        sent.elapsed()
    );
}

#[test]
fn status_and_health_subcommands_read_the_admin_port() {
    let node = AdminNode::spawn(&[]);
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_cachegrid")).args(args).output().unwrap();

    let out = run(&["status", "--admin", &node.admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ZONE") && lines[0].contains("SLOTS") && lines[0].contains("MEMORY"),
        "{table}"
    );
    assert!(lines[1].contains(&node.addr.to_string()) && lines[1].contains("16384 (0-16383)"), "{table}");
    assert!(lines[1].contains("primary") && lines[1].contains("ready"), "{table}");
    assert_eq!(lines[2], "1 node(s), 16384/16384 slots served; * = the node asked");

    let out = run(&["health", "--admin", &node.admin]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    // The admin address follows from the configuration when not given.
    let port = node.admin.rsplit_once(':').unwrap().1;
    let out = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
        .args(["health"])
        .env("CACHEGRID_ADMIN_PORT", port)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    drop(node);
    let out = run(&["health", "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
}

#[test]
fn a_taken_admin_port_stops_the_node_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
        .args(["node", "--port", "0", "--admin-port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port} (admin-bind, admin-port)")), "{err}");

    let out =
        Command::new(env!("CARGO_BIN_EXE_cachegrid")).args(["node", "--port", "65000"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client port 65000 + 1000 is past 65535"));
}

#[tokio::test]
async fn an_embedded_node_reports_draining_and_shutdown_on_ready() {
    let config = cachegrid::config::Config { port: 0, ..Default::default() };
    let node = cachegrid::node::Node::start(config).await.unwrap();
    let admin = node.admin.addr.to_string();
    let ready = || async { cli::get(&admin, "/ready").await.unwrap().0.as_u16() };
    assert_eq!(ready().await, 200);
    node.server.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ready().await, 503);
    node.server.draining.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ready().await, 200);
    node.shutdown().await.unwrap();
    assert!(cli::get(&admin, "/ready").await.is_err(), "the admin port closes with the node");
}
