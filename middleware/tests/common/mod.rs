//! Shared by the session tests: the three backends (embedded node, a remote cachegrid node
//! started in this process, the Redis on 127.0.0.1:6379), a test app exercising the whole
//! API, and a request helper going through the real layer and router.

#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use cachegrid_middleware::grid::{EmbeddedGrid, Grid, GridConfig};
use cachegrid_middleware::session::{
    EmbeddedStore, Expiry, RemoteStore, Session, SessionConfig, SessionLayer, SessionStore,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Where sessions go in a test.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Node,
    Redis,
    /// Three redis-server processes forming a Redis Cluster, on free ports.
    Cluster,
}

/// A started backend: the store, plus what keeps it alive and how to clean up.
pub struct Env {
    pub backend: Backend,
    pub prefix: String,
    pub url: Option<String>,
    grid: Option<Grid>,
    node: Option<cachegrid::node::Node>,
    pub cluster: Option<RedisCluster>,
}

pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("cgmw:{test}:{}:{nanos}:session:", std::process::id())
}

pub fn redis_up() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !up && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the reference Redis on 127.0.0.1:6379 is not reachable");
    }
    up
}

impl Env {
    /// Starts `backend`; None when it is the reference Redis and that is not running (outside CI).
    pub async fn start(backend: Backend, test: &str) -> Option<Env> {
        let prefix = unique(test);
        match backend {
            Backend::Embedded => {
                let grid = EmbeddedGrid::start_default().await.unwrap();
                Some(Env { backend, prefix, url: None, grid: Some(grid), node: None, cluster: None })
            }
            Backend::Node => {
                let node = cachegrid::node::Node::start(cachegrid::config::Config {
                    port: 0,
                    bind: "127.0.0.1".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
                let url = format!("redis://{}/", node.addr);
                Some(Env { backend, prefix, url: Some(url), grid: None, node: Some(node), cluster: None })
            }
            Backend::Redis => {
                if !redis_up() {
                    eprintln!("skipping: no Redis on 127.0.0.1:6379");
                    return None;
                }
                Some(Env {
                    backend,
                    prefix,
                    url: Some("redis://127.0.0.1:6379/".into()),
                    grid: None,
                    node: None,
                    cluster: None,
                })
            }
            Backend::Cluster => {
                let cluster = RedisCluster::start()?;
                let url = cluster.urls[0].clone();
                Some(Env { backend, prefix, url: Some(url), grid: None, node: None, cluster: Some(cluster) })
            }
        }
    }

    /// A session layer over this backend (a new client for remote ones).
    pub fn app(&self, config: SessionConfig) -> Router {
        self.app_with(config, None)
    }

    /// Like [`Env::app`], with a near cache for remote backends.
    pub fn app_with(
        &self,
        config: SessionConfig,
        near: Option<cachegrid_middleware::grid::NearCacheConfig>,
    ) -> Router {
        let config = config.with_key_prefix(self.prefix.clone());
        match &self.grid {
            Some(grid) => routes(EmbeddedStore::with_grid(grid.clone(), &self.prefix), config),
            None => {
                let mut gc = match &self.cluster {
                    Some(c) => GridConfig::cluster(c.urls.clone()),
                    None => GridConfig::single(self.url.clone().unwrap()),
                };
                gc.near_cache = near;
                routes(RemoteStore::with_grid(Grid::remote(gc).unwrap(), &self.prefix), config)
            }
        }
    }

    /// A raw `redis` connection to the backend (not for the embedded one).
    pub async fn raw(&self) -> Option<redis::aio::MultiplexedConnection> {
        let url = self.url.clone()?;
        Some(redis::Client::open(url).unwrap().get_multiplexed_tokio_connection().await.unwrap())
    }

    /// Number of grid keys under this test's prefix.
    pub async fn keys(&self) -> usize {
        let pattern = format!("{}*", self.prefix);
        if let Some(c) = &self.cluster {
            let mut n = 0;
            for url in &c.urls {
                let mut conn = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_tokio_connection()
                    .await
                    .unwrap();
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
                n += keys.len();
            }
            return n;
        }
        match &self.grid {
            Some(g) => match g.query(redis::cmd("KEYS").arg(&pattern)).await.unwrap() {
                redis::Value::Array(a) => a.len(),
                v => panic!("{v:?}"),
            },
            None => {
                let mut c = self.raw().await.unwrap();
                let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await.unwrap();
                keys.len()
            }
        }
    }

    /// PTTL of the grid key of the session in `cookie` (`id=<id>`, unsigned).
    pub async fn pttl(&self, cookie: &str) -> i64 {
        let key = format!("{}{{{}}}", self.prefix, &cookie["id=".len()..]);
        let cmd = redis::cmd("PTTL").arg(&key).clone();
        if let Some(c) = &self.cluster {
            // The slot's owner answers; the others redirect.
            for url in &c.urls {
                let mut conn = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_tokio_connection()
                    .await
                    .unwrap();
                if let Ok(ms) = cmd.query_async::<i64>(&mut conn).await {
                    return ms;
                }
            }
            panic!("no cluster node answered PTTL {key}");
        }
        match &self.grid {
            Some(g) => match g.query(&cmd).await.unwrap() {
                redis::Value::Int(ms) => ms,
                v => panic!("{v:?}"),
            },
            None => cmd.query_async(&mut self.raw().await.unwrap()).await.unwrap(),
        }
    }

    /// Removes this test's keys from the shared Redis.
    pub async fn cleanup(self) {
        if let Backend::Redis = self.backend {
            let mut c = self.raw().await.unwrap();
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut c).await.unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(keys).query_async(&mut c).await.unwrap();
            }
        }
        if let Some(Grid::Embedded(e)) = &self.grid {
            e.shutdown().await;
        }
        if let Some(node) = self.node {
            let _ = node.shutdown().await;
        }
    }
}

/// A config for plain-HTTP tests with short defaults.
pub fn config() -> SessionConfig {
    SessionConfig::default()
}

/// The test app: one route per session operation.
pub fn routes<S: SessionStore>(store: S, config: SessionConfig) -> Router {
    Router::new()
        .route(
            "/get/{key}",
            get(|s: Session, Path(k): Path<String>| async move {
                match s.get::<u64>(&k).await {
                    Ok(Some(v)) => v.to_string(),
                    Ok(None) => "none".into(),
                    Err(e) => format!("error: {e}"),
                }
            }),
        )
        .route(
            "/set/{key}/{val}",
            post(|s: Session, Path((k, v)): Path<(String, u64)>| async move {
                s.insert(&k, v).await.unwrap();
                "ok"
            }),
        )
        .route(
            "/incr/{key}",
            post(|s: Session, Path(k): Path<String>| async move {
                let n = s.get::<u64>(&k).await.unwrap().unwrap_or(0) + 1;
                s.insert(&k, n).await.unwrap();
                n.to_string()
            }),
        )
        .route(
            "/remove/{key}",
            post(|s: Session, Path(k): Path<String>| async move {
                format!("{:?}", s.remove::<u64>(&k).await.unwrap())
            }),
        )
        .route(
            "/clear",
            post(|s: Session| async move {
                s.clear().await;
                "ok"
            }),
        )
        .route(
            "/cycle",
            post(|s: Session| async move {
                s.cycle_id().await;
                "ok"
            }),
        )
        .route(
            "/flush",
            post(|s: Session| async move {
                s.flush().await;
                "ok"
            }),
        )
        .route(
            "/expiry/{mode}/{ms}",
            post(|s: Session, Path((mode, ms)): Path<(String, i64)>| async move {
                let d = time::Duration::milliseconds(ms);
                s.set_expiry(match mode.as_str() {
                    "idle" => Some(Expiry::OnInactivity(d)),
                    "at" => Some(Expiry::AtDateTime(time::OffsetDateTime::now_utc() + d)),
                    "end" => Some(Expiry::OnSessionEnd),
                    _ => None,
                });
                "ok"
            }),
        )
        .route(
            "/expiry",
            get(|s: Session| async move {
                match s.expiry() {
                    None => "default".to_string(),
                    Some(Expiry::OnSessionEnd) => "end".into(),
                    Some(Expiry::OnInactivity(d)) => format!("idle {}", d.whole_milliseconds()),
                    Some(Expiry::AtDateTime(_)) => "at".into(),
                }
            }),
        )
        .route("/id", get(|s: Session| async move { format!("{:?}/{}", s.id().is_some(), s.is_available()) }))
        .route(
            "/json",
            post(|s: Session| async move {
                match s.insert("j", serde_json::json!({"a": 1})).await {
                    Ok(()) => (StatusCode::OK, "stored".to_string()),
                    Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
                }
            }),
        )
        .route(
            "/fail",
            post(|s: Session| async move {
                s.insert("x", 1u64).await.unwrap();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .layer(SessionLayer::new(store, config))
}

/// One response, as the tests look at it.
#[derive(Debug)]
pub struct Res {
    pub status: StatusCode,
    pub body: String,
    pub set_cookie: Option<String>,
}

impl Res {
    /// The `name=value` part of Set-Cookie.
    pub fn cookie(&self) -> String {
        self.set_cookie.as_deref().expect("a Set-Cookie").split(';').next().unwrap().to_string()
    }
}

/// Sends one request through `app` (the real layer and router), with `cookie` if given.
pub async fn send(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Res {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let set_cookie = res.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_string());
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Res { status, body, set_cookie }
}

/// A throwaway Redis Cluster: three masters started from the redis-server binary on free
/// ports, joined with `redis-cli --cluster create`; killed on drop.
pub struct RedisCluster {
    pub urls: Vec<String>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// None (skip) when redis-server or redis-cli is missing outside CI.
    pub fn start() -> Option<RedisCluster> {
        use std::process::{Command, Stdio};
        let have = |b: &str| {
            Command::new(b).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
        };
        if !have("redis-server") || !have("redis-cli") {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but redis-server/redis-cli are missing");
            }
            eprintln!("skipping: redis-server or redis-cli missing");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .collect();
        let mut children = Vec::new();
        for p in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{p}.conf"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
        }
        let mut cluster = RedisCluster {
            urls: ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect(),
            children,
            _dir: dir,
        };
        for p in &ports {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(std::time::Instant::now() < deadline, "cluster node {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let ok = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "redis-cli --cluster create failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all_ok = ports.iter().all(|p| {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
            });
            if all_ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.urls.sort();
        Some(cluster)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
