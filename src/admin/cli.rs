//! The admin subcommands of the `cachegrid` binary: `status` prints the grid from a node's
//! `/cluster`, `health` exits 0 when a node's `/health` answers (the container HEALTHCHECK,
//! so the image needs no curl), `leave` takes a node out of the grid. They talk HTTP/1.1 to the admin port through hyper.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cluster::ClusterView;
use crate::config::Config;

/// How long one admin request may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The admin address a node with `config` listens on, as a client reaches it: a wildcard
/// bind (`0.0.0.0`, `::`) is reached on loopback.
pub fn default_admin_addr(config: &Config) -> anyhow::Result<String> {
    let (host, port) = config.admin_addr()?;
    let host = match host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    if port == 0 {
        bail!("the admin port is chosen at start (port 0): pass --admin HOST:PORT");
    }
    Ok(format!("{host}:{port}"))
}

/// GETs `path` from the admin port at `addr` (`host:port`); the status and body.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    request(addr, hyper::Method::GET, path, TIMEOUT).await
}

/// Sends `method path` to the admin port at `addr`, waiting up to `timeout`.
async fn request(
    addr: &str,
    method: hyper::Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, addr)
            .body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await.with_context(|| format!("{method} {path} at {addr}"))?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    })
    .await
    .with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}

/// `cachegrid leave`: asks the node at `addr` to take `node` (itself when None) out of the
/// grid; its slots are re-placed on the others. Returns the new slot map epoch.
///
/// Then [`wait_until_left`] shows the keys moving.
pub async fn leave(addr: &str, node: Option<&str>, force: bool) -> anyhow::Result<u64> {
    let mut path = format!("/cluster/leave?force={force}");
    if let Some(id) = node {
        path.push_str(&format!("&node={id}"));
    }
    // A leave waits for Raft to commit the change.
    let (status, body) = request(addr, hyper::Method::POST, &path, Duration::from_secs(60)).await?;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if status != StatusCode::OK {
        bail!("{addr} refused the leave ({status}): {text}");
    }
    text.strip_prefix("epoch ")
        .and_then(|e| e.parse().ok())
        .with_context(|| format!("unexpected answer {text:?}"))
}

/// `cachegrid health`: Ok when `/health` answers 200.
pub async fn health(addr: &str) -> anyhow::Result<()> {
    let (status, body) = get(addr, "/health").await?;
    if status != StatusCode::OK {
        bail!("{addr}/health answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(())
}

/// `cachegrid status`: the grid as a table.
pub async fn status(addr: &str) -> anyhow::Result<String> {
    let (status, body) = get(addr, "/cluster").await?;
    if status != StatusCode::OK {
        bail!("{addr}/cluster answered {status}");
    }
    let view: ClusterView = serde_json::from_slice(&body).context("unreadable /cluster document")?;
    Ok(render_table(&view))
}

/// The table `cachegrid status` prints: one line per node, grouped by zone.
pub fn render_table(view: &ClusterView) -> String {
    let mut nodes: Vec<_> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| (&a.zone, &a.address).cmp(&(&b.zone, &b.address)));
    let header = ["ZONE", "NODE", "ADDRESS", "ROLE", "SLOTS", "KEYS", "MEMORY", "OPS/S", "CLIENTS", "STATE"];
    let mut rows: Vec<[String; 10]> = vec![header.map(String::from)];
    for n in &nodes {
        let me = if n.id == view.myself { "*" } else { "" };
        rows.push([
            n.zone.clone().unwrap_or_else(|| "-".into()),
            format!("{}{me}", &n.id[..n.id.len().min(8)]),
            n.address.clone(),
            n.role.clone(),
            format!("{} ({})", n.slot_count(), ranges(&n.slots)),
            n.keys.to_string(),
            human_bytes(n.memory_bytes),
            n.ops_per_sec.to_string(),
            n.clients.to_string(),
            if n.ready { "ready".into() } else { "draining".into() },
        ]);
    }
    let widths: Vec<usize> = (0..10).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let slots: u32 = view.nodes.iter().map(|n| n.slot_count()).sum();
    let _ = writeln!(
        out,
        "{} node(s), {slots}/{} slots served; * = the node asked",
        nodes.len(),
        view.slots_total
    );
    out
}

fn ranges(slots: &[[u16; 2]]) -> String {
    let parts: Vec<String> =
        slots.iter().map(|[a, b]| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    parts.join(",")
}

/// Bytes as Redis's `used_memory_human` does (`1.50M`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

/// Polls `/cluster/moving` at `addr` until the node is out of the map, printing the slots it
/// still has to move (every second, on stderr), for at most `limit`.
pub async fn wait_until_left(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    loop {
        let (status, body) = get(addr, "/cluster/moving").await?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if status != StatusCode::OK {
            bail!("{addr}/cluster/moving answered {status}: {text}");
        }
        let field = |name: &str| {
            let mut words = text.split_whitespace();
            words.find(|w| *w == name).and(words.next()).and_then(|v| v.parse::<u64>().ok())
        };
        if field("member") == Some(0) {
            eprintln!("done: the node holds no slot");
            return Ok(());
        }
        let line = format!("moving keys: {} slots left", field("slots_leaving").unwrap_or(0));
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the node has not left after {limit:?}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::cluster::NodeStatus;

    fn node(id: &str, zone: Option<&str>, slots: Vec<[u16; 2]>) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            address: format!("10.0.0.{}:7379", id.len()),
            admin: String::new(),
            zone: zone.map(Into::into),
            role: "primary".into(),
            slots,
            keys: 42,
            memory_bytes: 3 << 20,
            maxmemory_bytes: 0,
            clients: 2,
            ops_per_sec: 7,
            uptime_seconds: 1,
            ready: true,
            version: "0".into(),
        }
    }

    #[test]
    fn the_table_lists_every_node_with_its_slots() {
        let view = ClusterView {
            myself: "aaaaaaaaaa".into(),
            slots_total: 16384,
            nodes: vec![
                node("aaaaaaaaaa", Some("z1"), vec![[0, 8191]]),
                node("bbbbbbbbb", Some("z2"), vec![[8192, 16383]]),
            ],
        };
        let t = render_table(&view);
        assert!(t.contains("z1") && t.contains("aaaaaaaa*") && t.contains("8192 (0-8191)"), "{t}");
        assert!(t.contains("8192 (8192-16383)") && t.contains("3.00M"), "{t}");
        assert!(t.ends_with("2 node(s), 16384/16384 slots served; * = the node asked\n"), "{t}");
    }

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let c = Config { bind: "0.0.0.0".into(), port: 7000, ..Config::default() };
        assert_eq!(default_admin_addr(&c).unwrap(), "127.0.0.1:8000");
        let c = Config { admin_bind: Some("::".into()), admin_port: Some(9000), ..Config::default() };
        assert_eq!(default_admin_addr(&c).unwrap(), "[::1]:9000");
    }
}
