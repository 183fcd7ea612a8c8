//! The dashboard in a real browser: headless Chromium loads `/` from a node's admin port, the
//! page fetches `/cluster` and draws every node grouped by zone, and a screenshot is written
//! to `$CARGO_TARGET_TMPDIR/dashboard*.png`. Without Chromium the test says why and skips
//! (scripts/test.sh installs Debian's `chromium`; with CI=true it must be there).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cachegrid::admin::cluster::{ClusterSource, NodeStatus};
use cachegrid::admin::Admin;
use cachegrid::config::Config;
use cachegrid::node::Node;
use common::Raw;

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but chromium is not installed (scripts/test.sh installs it)");
    }
    eprintln!("skipping: chromium is not installed (apt-get install chromium, or run scripts/test.sh)");
    None
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
fn run_chromium(bin: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            // Let the page's fetch of /cluster and its first render finish before output.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(bin: &Path, url: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    run_chromium(bin, url, &[&format!("--screenshot={}", path.display())]);
    let png = std::fs::read(&path).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    path
}

#[test]
fn the_dashboard_shows_a_node_in_a_browser() {
    let Some(bin) = chromium() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(Node::start(Config { port: 0, ..Config::default() })).unwrap();
    let mut c = Raw::connect(node.addr);
    for i in 0..25 {
        c.cmd_str(&["SET", &format!("k{i}"), "v"]);
    }
    let url = format!("http://{}/", node.admin.addr);
    let dom = run_chromium(&bin, &url, &["--dump-dom"]);
    assert_eq!(dom.matches("data-node=").count(), 1, "{dom}");
    assert!(dom.contains(&format!("class=\"addr\">{}<", node.addr)), "{dom}");
    assert!(dom.contains("16,384 slots"), "{dom}");
    assert!(dom.contains("id=\"t-keys\">25<"), "{dom}");
    assert!(dom.contains("id=\"t-clients\">1<"), "{dom}");
    assert!(dom.contains("<div id=\"state\" class=\"\">updated "), "the last refresh succeeded: {dom}");
    screenshot(&bin, &url, "dashboard-one-node.png");
    rt.block_on(node.shutdown()).unwrap();
}

/// Stands in for the grid's membership: three real nodes, each reporting its own live status,
/// with the zone and slot range the grid would give it. Only the zones and slots are set here.
struct Peers(Vec<(Arc<Admin>, &'static str, [u16; 2])>);

impl ClusterSource for Peers {
    fn nodes(&self, local: NodeStatus) -> Vec<NodeStatus> {
        self.0
            .iter()
            .map(|(admin, zone, slots)| {
                // The local node's status is given; asking its own Admin would recurse.
                let mut n = if admin.addr.to_string() == local.admin {
                    local.clone()
                } else {
                    admin.cluster().nodes.remove(0)
                };
                n.zone = Some(zone.to_string());
                n.slots = vec![*slots];
                n
            })
            .collect()
    }
}

#[test]
fn the_dashboard_groups_three_nodes_by_zone() {
    let Some(bin) = chromium() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nodes: Vec<Node> =
        (0..3).map(|_| rt.block_on(Node::start(Config { port: 0, ..Config::default() })).unwrap()).collect();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = Raw::connect(n.addr);
        for k in 0..(i + 1) * 10 {
            c.cmd_str(&["SET", &format!("n{i}:{k}"), "v"]);
        }
    }
    let ranges = [[0, 5460], [5461, 10922], [10923, 16383]];
    let zones = ["eu-1a", "eu-1b", "eu-1c"];
    let peers = nodes.iter().zip(zones).zip(ranges).map(|((n, z), r)| (n.admin.clone(), z, r)).collect();
    nodes[0].admin.set_cluster_source(Arc::new(Peers(peers)));

    let url = format!("http://{}/", nodes[0].admin.addr);
    let dom = run_chromium(&bin, &url, &["--dump-dom"]);
    for (n, z) in nodes.iter().zip(zones) {
        assert!(dom.contains(&format!("data-zone=\"{z}\"")), "zone {z} missing: {dom}");
        assert!(dom.contains(&format!("class=\"addr\">{}<", n.addr)), "node {} missing", n.addr);
    }
    assert_eq!(dom.matches("data-node=").count(), 3);
    assert!(dom.contains("5,461 slots") && dom.contains("id=\"t-keys\">60<"), "{dom}");
    assert!(dom.contains("16,384 / 16,384"), "{dom}");
    screenshot(&bin, &url, "dashboard-three-zones.png");
    for n in nodes {
        rt.block_on(n.shutdown()).unwrap();
    }
}
