//! The admin subcommands of the `cachegrid` binary: `status` prints the grid from a node's
//! `/cluster`, `health` exits 0 when a node's `/health` answers (the container HEALTHCHECK,
//! so the image needs no curl), `leave` takes a node out of the grid, `rebalance` follows
//! slots moving until the grid has settled, `deadletters list|replay` shows and replays the
//! writes Postgres refused. They talk HTTP/1.1 to the admin port through
//! hyper.

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
use crate::persistence::deadletters::{DeadLetter, Replayed};

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

/// Keeps what may sit in a query string: letters, digits, `-`, `_` (key space names).
fn query_safe(s: &str) -> anyhow::Result<&str> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("'{s}' is not a key space name");
    }
    Ok(s)
}

/// `cachegrid deadletters list`: the oldest `count` dead letters of `keyspace` as a table.
pub async fn dead_letters(addr: &str, keyspace: &str, count: usize) -> anyhow::Result<String> {
    let path = format!("/writebehind/deadletters?keyspace={}&count={count}", query_safe(keyspace)?);
    let (status, body) = get(addr, &path).await?;
    if status != StatusCode::OK {
        bail!("{addr} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let list: Vec<DeadLetter> = serde_json::from_slice(&body).context("unreadable dead-letter list")?;
    if list.is_empty() {
        return Ok(format!("no dead letters in key space '{keyspace}'\n"));
    }
    let mut rows = vec![["ID", "KEY", "OP", "BYTES", "VERSION", "FAILED AT", "ERROR"].map(String::from)];
    for d in &list {
        let op = match &d.kind {
            Some(k) => format!("{} {k}", d.op),
            None => d.op.clone(),
        };
        rows.push([
            d.id.to_string(),
            d.key.clone(),
            op,
            d.value_bytes.to_string(),
            d.version.to_string(),
            d.failed_at.clone(),
            d.error.replace(['\r', '\n'], " "),
        ]);
    }
    Ok(columns(&rows))
}

/// `cachegrid deadletters replay`: replays `ids` (or every dead letter with `all`) of
/// `keyspace`; one line per dead letter. Errs when any was refused again, so scripts notice.
pub async fn replay_dead_letters(
    addr: &str,
    keyspace: &str,
    ids: &[i64],
    all: bool,
) -> anyhow::Result<String> {
    let which = if all {
        "all=true".to_string()
    } else {
        if ids.is_empty() {
            bail!("name the dead letters to replay (ids from `cachegrid deadletters list`) or pass --all");
        }
        format!("ids={}", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
    };
    let path = format!("/writebehind/replay?keyspace={}&{which}", query_safe(keyspace)?);
    let (status, body) = request(addr, hyper::Method::POST, &path, Duration::from_secs(300)).await?;
    if status != StatusCode::OK {
        bail!("{addr} answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let done: Vec<Replayed> = serde_json::from_slice(&body).context("unreadable replay answer")?;
    let mut out = String::new();
    for r in &done {
        match &r.error {
            Some(e) => writeln!(out, "{} {} {}: {e}", r.id, r.key, r.outcome)?,
            None => writeln!(out, "{} {} {}", r.id, r.key, r.outcome)?,
        }
    }
    let failed = done.iter().filter(|r| r.outcome == "failed").count();
    writeln!(out, "{} replayed, {failed} refused again", done.len() - failed)?;
    if failed > 0 {
        bail!("{}", out.trim_end());
    }
    Ok(out)
}

/// Left-aligned columns separated by two spaces.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
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
    const COLUMNS: usize = 13;
    let header = [
        "ZONE", "NODE", "ADDRESS", "ROLE", "SLOTS", "REPLICAS", "KEYS", "MEMORY", "LAG", "QUEUE", "OPS/S",
        "CLIENTS", "STATE",
    ];
    let mut rows: Vec<[String; COLUMNS]> = vec![header.map(String::from)];
    for n in &nodes {
        let me = if n.id == view.myself { "*" } else { "" };
        let figure = |v: u64| if n.reachable { v.to_string() } else { "?".into() };
        let lag = match (n.reachable, n.replication.is_empty()) {
            (false, _) => "?".to_string(),
            (true, true) => "-".to_string(),
            (true, false) => {
                let (secs, pending) = n.worst_lag();
                format!("{secs:.1}s/{pending}")
            }
        };
        let queue = match (n.reachable, n.writebehind.is_empty()) {
            (false, _) => "?".to_string(),
            (true, true) => "-".to_string(),
            (true, false) => {
                let pending: u64 = n.writebehind.iter().map(|q| q.pending_keys).sum();
                let db = if n.postgres_up == Some(false) { " db down" } else { "" };
                format!("{pending}{db}")
            }
        };
        let state = match (&n.not_ready, n.reachable) {
            (_, false) => "unreachable".to_string(),
            (Some(why), _) => why.clone(),
            (None, _) => "ready".to_string(),
        };
        rows.push([
            n.zone.clone().unwrap_or_else(|| "-".into()),
            format!("{}{me}", &n.id[..n.id.len().min(8)]),
            n.address.clone(),
            format!("{}{}", n.role, if n.leader { " (leader)" } else { "" }),
            format!("{} ({})", n.slot_count(), ranges(&n.slots)),
            n.replica_slot_count().to_string(),
            figure(n.keys),
            if n.reachable { human_bytes(n.memory_bytes) } else { "?".into() },
            lag,
            queue,
            figure(n.ops_per_sec),
            figure(n.clients),
            state,
        ]);
    }
    let widths: Vec<usize> =
        (0..COLUMNS).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let slots: u32 = view.nodes.iter().map(|n| n.slot_count()).sum();
    let mut summary = format!("{} node(s), {slots}/{} slots served", nodes.len(), view.slots_total);
    if let Some(epoch) = view.epoch {
        let zones: std::collections::BTreeSet<_> =
            view.nodes.iter().filter_map(|n| n.zone.as_ref()).collect();
        let _ = write!(
            summary,
            " in {} zone(s), map epoch {epoch}, {} slots moving",
            zones.len(),
            view.slots_moving
        );
    }
    let _ = writeln!(out, "{summary}; * = the node asked");
    out
}

/// Slot ranges as `0-5460,10923`, the first few only (a node's primaries can be many ranges
/// after joins and leaves).
fn ranges(slots: &[[u16; 2]]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = slots.iter().take(SHOWN).map(crate::cluster::slotmap::range_text).collect();
    if slots.len() > SHOWN {
        parts.push(format!("+{} ranges", slots.len() - SHOWN));
    }
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

/// The fields of `/cluster/moving`'s answer (`member 1 slots_leaving 0 epoch 3 ...`).
struct Moving(String);

impl Moving {
    async fn get(addr: &str) -> anyhow::Result<Moving> {
        let (status, body) = get(addr, "/cluster/moving").await?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if status != StatusCode::OK {
            bail!("{addr}/cluster/moving answered {status}: {text}");
        }
        Ok(Moving(text))
    }

    fn field(&self, name: &str) -> Option<u64> {
        let mut words = self.0.split_whitespace();
        words.find(|w| *w == name).and(words.next()).and_then(|v| v.parse::<u64>().ok())
    }
}

/// `cachegrid rebalance`: follows the slots moving in the grid (as the node at `addr` sees
/// the map) with a progress bar on stderr until none is left, for at most `limit`. Placement
/// is a pure function of membership, so a join or a leave starts its moves by itself and
/// there is nothing to trigger; on a settled grid this says so and returns at once.
pub async fn rebalance(addr: &str, limit: Duration) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Write};
    let deadline = tokio::time::Instant::now() + limit;
    let first = Moving::get(addr).await?;
    let Some(moving) = first.field("slots_moving") else {
        bail!("{addr} does not report grid-wide moves ({:?}): is it an older version?", first.0);
    };
    if moving == 0 {
        let epoch = first.field("epoch").unwrap_or(0);
        return Ok(format!("the grid is balanced: no slot is moving (map epoch {epoch})\n"));
    }
    let tty = std::io::stderr().is_terminal();
    let mut total = moving;
    let mut last = String::new();
    loop {
        let now = Moving::get(addr).await?;
        let left = now.field("slots_moving").unwrap_or(0);
        total = total.max(left);
        let line = progress_line(total, left);
        if line != last {
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last = line;
        }
        if left == 0 {
            if tty {
                eprintln!();
            }
            let epoch = now.field("epoch").unwrap_or(0);
            return Ok(format!("done: the grid is balanced, {total} slots moved (map epoch {epoch})\n"));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("slots still moving after {limit:?}: {left} left");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `[#########...........]  512/1365 slots moved, 853 left`.
pub fn progress_line(total: u64, left: u64) -> String {
    const WIDTH: u64 = 30;
    let done = total.saturating_sub(left);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH as usize - filled));
    format!("[{bar}] {done}/{total} slots moved, {left} left")
}

/// Polls `/cluster/moving` at `addr` until the node is out of the map, printing the slots it
/// still has to move (every second, on stderr), for at most `limit`.
pub async fn wait_until_left(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    loop {
        let moving = Moving::get(addr).await?;
        let field = |name: &str| moving.field(name);
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
            bail!("the node has not left after {limit:?}: {}", moving.0);
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
            roles: vec!["primary".into()],
            slots,
            replica_slots: Vec::new(),
            slots_importing: 0,
            slots_migrating: 0,
            leader: false,
            leaving: false,
            reachable: true,
            keys: 42,
            memory_bytes: 3 << 20,
            maxmemory_bytes: 0,
            clients: 2,
            ops_per_sec: 7,
            uptime_seconds: 1,
            ready: true,
            not_ready: None,
            version: "0".into(),
            replication: Vec::new(),
            writebehind: Vec::new(),
            postgres_up: None,
        }
    }

    #[test]
    fn the_table_lists_every_node_with_its_slots() {
        let view = ClusterView {
            myself: "aaaaaaaaaa".into(),
            slots_total: 16384,
            epoch: None,
            slots_moving: 0,
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
    fn the_table_shows_roles_lag_queues_and_unreachable_members_of_a_grid() {
        use crate::admin::cluster::{QueueStatus, ReplicaStatus};
        let mut a = node("aaaaaaaaaa", Some("z1"), vec![[0, 100], [200, 300], [400, 500], [600, 700]]);
        a.role = "primary+replica".into();
        a.leader = true;
        a.replica_slots = vec![[101, 199]];
        a.replication = vec![
            ReplicaStatus { replica: "b".into(), pending_keys: 5, lag_seconds: 0.25 },
            ReplicaStatus { replica: "c".into(), pending_keys: 2, lag_seconds: 1.5 },
        ];
        a.writebehind = vec![QueueStatus {
            keyspace: "sessions".into(),
            pending_keys: 9,
            queue_bytes: 100,
            oldest_pending_seconds: 0.5,
            failures: 0,
        }];
        a.postgres_up = Some(false);
        let mut b = node("bbbbbbbbbb", Some("z2"), vec![]);
        b.reachable = false;
        let view = ClusterView {
            myself: "aaaaaaaaaa".into(),
            slots_total: 16384,
            epoch: Some(7),
            slots_moving: 3,
            nodes: vec![a, b],
        };
        let t = render_table(&view);
        assert!(t.contains("primary+replica (leader)") && t.contains("+1 ranges"), "{t}");
        assert!(t.contains("1.5s/7") && t.contains("9 db down"), "{t}");
        assert!(t.contains("unreachable"), "{t}");
        assert!(t.ends_with("in 2 zone(s), map epoch 7, 3 slots moving; * = the node asked\n"), "{t}");
    }

    #[test]
    fn the_progress_bar_fills_as_slots_move() {
        assert_eq!(progress_line(10, 10), format!("[{}] 0/10 slots moved, 10 left", ".".repeat(30)));
        assert_eq!(
            progress_line(10, 5),
            format!("[{}{}] 5/10 slots moved, 5 left", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(progress_line(0, 0), format!("[{}] 0/0 slots moved, 0 left", "#".repeat(30)));
    }

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let c = Config { bind: "0.0.0.0".into(), port: 7000, ..Config::default() };
        assert_eq!(default_admin_addr(&c).unwrap(), "127.0.0.1:8000");
        let c = Config { admin_bind: Some("::".into()), admin_port: Some(9000), ..Config::default() };
        assert_eq!(default_admin_addr(&c).unwrap(), "[::1]:9000");
    }
}
