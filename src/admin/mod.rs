//! The admin HTTP port (axum): `/metrics` (Prometheus), `/health`, `/ready`, `/cluster` (JSON),
//! `/writebehind/deadletters` and `/writebehind/replay` (dead letters of Postgres-backed key
//! spaces) and `/` (a self-contained live dashboard). It runs beside the client port, by default on
//! the client port + 1000, and is described in `docs/ADMIN.md`. `cli` is the admin side of the
//! `cachegrid` binary (`status`, `health`, `leave`, `rebalance`), which reads this port.

pub mod cli;
pub mod cluster;
pub mod metrics;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::server::Server;
use cluster::{ClusterView, NodeStatus};

/// The dashboard: one page, no external assets.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Commands per second, measured once a second from the node's command counter.
#[derive(Default)]
pub struct OpsRate(AtomicU64);

impl OpsRate {
    /// The last measured rate.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The admin port's state, shared by its handlers; write-behind plugs its figures in through
/// [`Admin::add_collector`], the grid's are read from the server's cluster state.
pub struct Admin {
    server: Arc<Server>,
    /// Where the admin port listens.
    pub addr: SocketAddr,
    metrics: metrics::Metrics,
    rate: OpsRate,
}

impl Admin {
    /// Adds figures to `/metrics`.
    pub fn add_collector(&self, c: Arc<dyn metrics::Collector>) {
        self.metrics.add_collector(c);
    }

    /// This node's own status, as it reports it to `/cluster` here and to peers that ask.
    pub fn local_status(&self) -> NodeStatus {
        cluster::local_status(&self.server, &self.addr.to_string(), self.rate.get())
    }

    /// The `/cluster` document now: every member of the grid (this node alone when standalone).
    pub async fn cluster(&self) -> ClusterView {
        cluster::grid_view(&self.server, self.local_status()).await
    }

    /// The `/metrics` text now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.server)
    }
}

/// Binds the admin port from the node's configuration; called before the client port opens so
/// a taken admin port stops the node from starting at all.
pub async fn bind(server: &Server) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    let (host, port) = server.config.read().admin_addr()?;
    TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port} (admin-bind, admin-port)"))
}

/// Serves the admin port on `listener` until the node shuts down.
pub fn start(server: Arc<Server>, listener: TcpListener) -> anyhow::Result<Arc<Admin>> {
    let addr = listener.local_addr()?;
    let admin = new(server.clone(), addr);
    info!(admin = %addr, "admin HTTP port listening");
    let app = router(admin.clone());
    let shutdown = server.shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
            warn!(error = %e, "admin port stopped");
        }
    });
    Ok(admin)
}

/// The admin state without its HTTP port, for a simulated node (turmoil's sockets are not
/// axum's): peers still get the node's status over the cluster bus.
#[cfg(feature = "simulation")]
pub fn unserved(server: Arc<Server>) -> Arc<Admin> {
    new(server, SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The admin state, known to the server and measuring the command rate.
fn new(server: Arc<Server>, addr: SocketAddr) -> Arc<Admin> {
    let admin = Arc::new(Admin {
        server: server.clone(),
        addr,
        metrics: metrics::Metrics::new(),
        rate: OpsRate::default(),
    });
    let _ = server.admin.set(Arc::downgrade(&admin));
    tokio::spawn(measure_rate(admin.clone()));
    admin
}

async fn measure_rate(admin: Arc<Admin>) {
    let stats = &admin.server.stats;
    let mut last = (Instant::now(), stats.commands.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            _ = admin.server.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = (Instant::now(), stats.commands.load(Ordering::Relaxed));
        let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        admin.rate.0.store((now.1.saturating_sub(last.1) as f64 / secs).round() as u64, Ordering::Relaxed);
        last = now;
    }
}

/// The admin routes over `admin`.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster", get(cluster_json))
        .route("/cluster/leave", axum::routing::post(cluster_leave))
        .route("/cluster/moving", get(cluster_moving))
        .route("/writebehind/deadletters", get(dead_letters))
        .route("/writebehind/replay", axum::routing::post(replay_dead_letters))
        .with_state(admin)
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics_text(State(admin): State<Arc<Admin>>) -> Response {
    let body = admin.render_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(admin): State<Arc<Admin>>) -> (StatusCode, String) {
    match cluster::not_ready(&admin.server) {
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        None => (StatusCode::OK, "ready\n".into()),
    }
}

/// Query of `POST /cluster/leave`.
#[derive(serde::Deserialize)]
struct LeaveQuery {
    /// The member to remove; default: the node answering.
    node: Option<String>,
    /// Remove it at once, without moving its keys (a node that is gone for good).
    #[serde(default)]
    force: bool,
}

/// `POST /cluster/leave[?node=ID][&force=true]`: takes a member out of the grid through Raft;
/// answers `epoch N` with the new slot map epoch once committed (its keys move afterwards:
/// see `/cluster/moving`).
async fn cluster_leave(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(q): axum::extract::Query<LeaveQuery>,
) -> (StatusCode, String) {
    let Some(consensus) = admin.server.consensus.get() else {
        return (StatusCode::CONFLICT, "this node is not in cluster mode\n".into());
    };
    let id = match q.node.as_deref().map(str::parse::<crate::cluster::NodeId>) {
        None => admin.server.cluster.get().map(|c| c.me).expect("cluster mode has a cluster"),
        Some(Ok(id)) => id,
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match consensus.leave(id, q.force).await {
        Ok(epoch) => (StatusCode::OK, format!("epoch {epoch}\n")),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
    }
}

/// `GET /cluster/moving`: `member M slots_leaving N epoch E slots_moving G` — whether this
/// node is in the map, how many of its slots are still migrating away, the map epoch, and how
/// many slots are moving in the whole grid. `cachegrid leave` and `cachegrid rebalance` poll
/// it to show progress.
async fn cluster_moving(State(admin): State<Arc<Admin>>) -> (StatusCode, String) {
    let Some(cluster) = admin.server.cluster.get() else {
        return (StatusCode::CONFLICT, "this node is not in cluster mode\n".into());
    };
    let view = cluster.view();
    let leaving = view.me.map_or(0, |me| view.map.migrations.values().filter(|m| m.from == me).count());
    let member = view.me.is_some() as u8;
    let (epoch, moving) = (view.map.epoch, view.map.migrations.len());
    (StatusCode::OK, format!("member {member} slots_leaving {leaving} epoch {epoch} slots_moving {moving}\n"))
}

/// Query of `/writebehind/deadletters` and `/writebehind/replay`.
#[derive(serde::Deserialize)]
struct DeadLetterQuery {
    keyspace: String,
    count: Option<usize>,
    /// Comma-separated dead-letter ids to replay.
    ids: Option<String>,
    /// Replay every dead letter (the oldest 10,000 per call).
    all: Option<bool>,
}

fn dead_letter_error(e: crate::persistence::deadletters::DeadLetterError) -> (StatusCode, String) {
    use crate::persistence::deadletters::DeadLetterError;
    let status = match e {
        DeadLetterError::UnknownKeyspace(_) => StatusCode::NOT_FOUND,
        DeadLetterError::Postgres(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{e}\n"))
}

/// `GET /writebehind/deadletters?keyspace=NAME[&count=N]`: the oldest dead letters of a key
/// space as JSON (`cachegrid deadletters list`).
async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(q): axum::extract::Query<DeadLetterQuery>,
) -> Response {
    let Some(p) = admin.server.persistence.get() else {
        return (StatusCode::NOT_FOUND, "no key space is backed by Postgres on this node\n").into_response();
    };
    match p.dead_letters(&q.keyspace, q.count.unwrap_or(100)).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => dead_letter_error(e).into_response(),
    }
}

/// `POST /writebehind/replay?keyspace=NAME&ids=1,2|all=true`: writes dead letters again
/// (version-checked) and answers what happened to each, as JSON (`cachegrid deadletters
/// replay`).
async fn replay_dead_letters(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(q): axum::extract::Query<DeadLetterQuery>,
) -> Response {
    let Some(p) = admin.server.persistence.get() else {
        return (StatusCode::NOT_FOUND, "no key space is backed by Postgres on this node\n").into_response();
    };
    let ids = match (q.all.unwrap_or(false), q.ids.as_deref()) {
        (true, None) => None,
        (false, Some(list)) => match list.split(',').map(|i| i.trim().parse::<i64>()).collect() {
            Ok(ids) => Some(ids),
            Err(_) => {
                return (StatusCode::BAD_REQUEST, "ids must be integers separated by commas\n")
                    .into_response()
            }
        },
        _ => return (StatusCode::BAD_REQUEST, "give either ids=ID,ID,... or all=true\n").into_response(),
    };
    let ids: Option<Vec<i64>> = ids;
    match p.replay_dead_letters(&q.keyspace, ids.as_deref()).await {
        Ok(done) => Json(done).into_response(),
        Err(e) => dead_letter_error(e).into_response(),
    }
}

async fn cluster_json(State(admin): State<Arc<Admin>>) -> Json<ClusterView> {
    Json(admin.cluster().await)
}
