//! The dashboard in a real browser: headless Chromium loads `/` from a node's admin port, the
//! page fetches `/cluster` and draws the node, and a screenshot is written to
//! `$CARGO_TARGET_TMPDIR/dashboard*.png`. Without Chromium the test says why and skips
//! (scripts/test.sh installs Debian's `chromium`; with CI=true it must be there). The
//! dashboard of a real three-zone grid is checked in `tests/admin_grid.rs`.

mod common;

#[path = "common/browser.rs"]
mod browser;

use browser::{chromium, run_chromium, screenshot};
use cachegrid::config::Config;
use cachegrid::node::Node;
use common::Raw;

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
