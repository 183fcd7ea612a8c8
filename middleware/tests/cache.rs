//! The response cache against a real cachegrid node over TCP: what is stored and shared
//! (RFC 9111 via `http-cache-semantics`), Vary, 304s from the cache, two app instances
//! sharing one grid, single flight, and pass-through when the grid is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cachegrid_middleware::cache::{CacheConfig, CacheLayer};
use cachegrid_middleware::grid::{Grid, GridConfig};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tower::ServiceExt;

const LAST_MODIFIED: &str = "Mon, 02 Nov 2026 10:00:00 GMT";

/// Upstream calls per path, and whether any carried a validator.
#[derive(Default)]
struct Calls {
    per_path: Mutex<HashMap<String, usize>>,
    saw_validator: AtomicUsize,
}

impl Calls {
    fn of(&self, path: &str) -> usize {
        self.per_path.lock().get(path).copied().unwrap_or(0)
    }
}

/// The upstream: one route per caching case, counting its calls.
fn upstream(calls: Arc<Calls>) -> Router {
    let count = |calls: &Arc<Calls>, path: &str, h: &HeaderMap| {
        *calls.per_path.lock().entry(path.to_owned()).or_default() += 1;
        if h.contains_key("if-none-match") || h.contains_key("if-modified-since") {
            calls.saw_validator.fetch_add(1, Ordering::SeqCst);
        }
    };
    let route = |path: &'static str, headers: &'static [(&'static str, &'static str)], body: &'static str| {
        let calls = calls.clone();
        get(move |h: HeaderMap| async move {
            count(&calls, path, &h);
            (headers
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>()
                .into_iter()
                .fold(axum::http::Response::builder(), |b, (k, v)| b.header(k, v)))
            .body(Body::from(body))
            .unwrap()
        })
    };
    let table_calls = calls.clone();
    let vary_calls = calls.clone();
    let slow_calls = calls.clone();
    let big_calls = calls.clone();
    Router::new()
        .route(
            "/plain",
            route(
                "/plain",
                &[("cache-control", "max-age=60"), ("etag", "\"v1\""), ("last-modified", LAST_MODIFIED)],
                "hello",
            ),
        )
        .route("/short", route("/short", &[("cache-control", "max-age=1")], "short"))
        .route("/silent", route("/silent", &[], "silent"))
        .route("/routed/x", route("/routed/x", &[], "routed"))
        .route("/nostore", route("/nostore", &[("cache-control", "no-store")], "nostore"))
        .route("/private", route("/private", &[("cache-control", "private, max-age=60")], "private"))
        .route(
            "/cookie",
            route("/cookie", &[("cache-control", "public, max-age=60"), ("set-cookie", "id=1")], "cookie"),
        )
        .route(
            "/table",
            get(move |h: HeaderMap, q: axum::extract::Query<HashMap<String, String>>| async move {
                count(&table_calls, "/table", &h);
                let mut res = axum::http::Response::builder();
                for (k, v) in q.0.iter() {
                    res = res.header(k.as_str(), v.as_str());
                }
                res.body(Body::from("table")).unwrap()
            }),
        )
        .route(
            "/vary",
            get(move |h: HeaderMap| async move {
                count(&vary_calls, "/vary", &h);
                let lang =
                    h.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
                ([("cache-control", "max-age=60"), ("vary", "Accept-Language")], lang)
            }),
        )
        .route(
            "/slow",
            get(move |h: HeaderMap| async move {
                count(&slow_calls, "/slow", &h);
                tokio::time::sleep(Duration::from_millis(100)).await;
                ([("cache-control", "max-age=60")], "slow").into_response()
            }),
        )
        .route(
            "/big",
            get(move |h: HeaderMap| async move {
                count(&big_calls, "/big", &h);
                ([("cache-control", "max-age=60")], "x".repeat(5000))
            }),
        )
}

struct Env {
    node: Option<cachegrid::node::Node>,
    url: String,
    calls: Arc<Calls>,
}

impl Env {
    async fn start() -> Env {
        let config = cachegrid::config::Config { port: 0, bind: "127.0.0.1".into(), ..Default::default() };
        let node = cachegrid::node::Node::start(config).await.unwrap();
        let url = format!("redis://{}/", node.addr);
        Env { node: Some(node), url, calls: Arc::new(Calls::default()) }
    }

    /// One app instance: its own grid client and layer, the shared upstream counters.
    fn app(&self, config: CacheConfig) -> Router {
        app_on(&self.url, config, self.calls.clone())
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            let _ = node.shutdown().await;
        }
    }
}

fn app_on(url: &str, config: CacheConfig, calls: Arc<Calls>) -> Router {
    let mut gc = GridConfig::single(url);
    gc.connect_timeout = Duration::from_millis(500);
    gc.response_timeout = Duration::from_millis(500);
    upstream(calls).layer(CacheLayer::new(Grid::remote(gc).unwrap(), config).unwrap())
}

fn config() -> CacheConfig {
    CacheConfig { max_body: 1000, ..Default::default() }
}

struct Res {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Res {
    fn x_cache(&self) -> &str {
        self.headers.get("x-cache").map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

async fn send(app: &Router, method: &str, path: &str, headers: &[(&str, &str)]) -> Res {
    let mut req = Request::builder().method(method).uri(path).header("host", "example.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Res { status: parts.status, headers: parts.headers, body }
}

async fn get_(app: &Router, path: &str) -> Res {
    send(app, "GET", path, &[]).await
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_grid_with_its_age() {
    let env = Env::start().await;
    let app = env.app(config());
    let first = get_(&app, "/plain").await;
    assert_eq!((first.status, first.x_cache(), first.body.as_str()), (StatusCode::OK, "MISS", "hello"));
    let second = get_(&app, "/plain").await;
    assert_eq!((second.status, second.x_cache(), second.body.as_str()), (StatusCode::OK, "HIT", "hello"));
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers["etag"], "\"v1\"");
    assert!(httpdate::parse_http_date(second.headers["date"].to_str().unwrap()).is_ok());
    assert_eq!(env.calls.of("/plain"), 1);

    // HEAD is its own key, and a hit has no body.
    assert_eq!(send(&app, "HEAD", "/plain", &[]).await.x_cache(), "MISS");
    let head = send(&app, "HEAD", "/plain", &[]).await;
    assert_eq!((head.x_cache(), head.body.as_str()), ("HIT", ""));

    // The query is part of the key.
    assert_eq!(get_(&app, "/plain?page=2").await.x_cache(), "MISS");
    assert_eq!(get_(&app, "/plain?page=2").await.x_cache(), "HIT");
    env.stop().await;
}

#[tokio::test]
async fn an_expired_response_is_fetched_again() {
    let env = Env::start().await;
    let app = env.app(config());
    assert_eq!(get_(&app, "/short").await.x_cache(), "MISS");
    assert_eq!(get_(&app, "/short").await.x_cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_(&app, "/short").await.x_cache(), "MISS");
    assert_eq!(env.calls.of("/short"), 2);
    env.stop().await;
}

#[tokio::test]
async fn conditional_requests_are_answered_with_304_from_the_cache() {
    let env = Env::start().await;
    let app = env.app(config());
    // A miss with a validator: the upstream is asked for the full response (to store it).
    let miss = send(&app, "GET", "/plain", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((miss.status, miss.x_cache(), miss.body.as_str()), (StatusCode::NOT_MODIFIED, "MISS", ""));
    assert_eq!(env.calls.saw_validator.load(Ordering::SeqCst), 0);

    let hit = send(&app, "GET", "/plain", &[("if-none-match", "W/\"v0\", \"v1\"")]).await;
    assert_eq!((hit.status, hit.x_cache()), (StatusCode::NOT_MODIFIED, "HIT"));
    assert_eq!(hit.headers["etag"], "\"v1\"");
    let other = send(&app, "GET", "/plain", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((other.status, other.body.as_str()), (StatusCode::OK, "hello"));
    let since = send(&app, "GET", "/plain", &[("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")]).await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let before = send(&app, "GET", "/plain", &[("if-modified-since", "Sun, 01 Nov 2026 10:00:00 GMT")]).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(env.calls.of("/plain"), 1);
    env.stop().await;
}

#[tokio::test]
async fn vary_keeps_one_variant_per_value_of_the_named_headers() {
    let env = Env::start().await;
    let app = env.app(config());
    for (lang, cache) in [("en", "MISS"), ("de", "MISS"), ("en", "HIT"), ("de", "HIT")] {
        let r = send(&app, "GET", "/vary", &[("accept-language", lang)]).await;
        assert_eq!((r.x_cache(), r.body.as_str()), (cache, lang), "{lang}");
    }
    let none = get_(&app, "/vary").await;
    assert_eq!((none.x_cache(), none.body.as_str()), ("MISS", "none"));
    assert_eq!(env.calls.of("/vary"), 3);
    env.stop().await;
}

#[tokio::test]
async fn private_responses_are_never_shared() {
    let env = Env::start().await;
    let app = env.app(CacheConfig { default_ttl: Some(Duration::from_secs(60)), ..config() });
    for path in ["/nostore", "/private", "/cookie"] {
        for _ in 0..2 {
            let r = get_(&app, path).await;
            assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "MISS"), "{path}");
        }
        assert_eq!(env.calls.of(path), 2, "{path}");
    }
    // A request with credentials bypasses the cache, even for a public response.
    for path in ["/plain", "/silent"] {
        for _ in 0..2 {
            let r = send(&app, "GET", path, &[("authorization", "Bearer x")]).await;
            assert_eq!(r.x_cache(), "BYPASS");
        }
        assert_eq!(env.calls.of(path), 2);
    }
    // A client's no-store: nothing stored.
    send(&app, "GET", "/silent", &[("cache-control", "no-store")]).await;
    assert_eq!(get_(&app, "/silent").await.x_cache(), "MISS");
    env.stop().await;
}

#[tokio::test]
async fn the_route_default_ttl_applies_to_responses_that_state_none() {
    let env = Env::start().await;
    let config = CacheConfig { route_ttls: vec![("/routed".into(), Duration::from_secs(60))], ..config() };
    let app = env.app(config);
    assert_eq!(get_(&app, "/routed/x").await.x_cache(), "MISS");
    let hit = get_(&app, "/routed/x").await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("HIT", "routed"));
    // The default TTL is the cache's business: the client sees no Cache-Control.
    assert!(!hit.headers.contains_key("cache-control"));
    // No default for other routes: a response without freshness is not reused.
    assert_eq!(get_(&app, "/silent").await.x_cache(), "MISS");
    assert_eq!(get_(&app, "/silent").await.x_cache(), "MISS");
    env.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_untouched() {
    let env = Env::start().await;
    let app = env.app(config());
    for _ in 0..2 {
        let r = get_(&app, "/big").await;
        assert_eq!((r.x_cache(), r.body.len()), ("MISS", 5000));
    }
    assert_eq!(env.calls.of("/big"), 2);
    env.stop().await;
}

#[tokio::test]
async fn two_app_instances_share_one_grid() {
    let env = Env::start().await;
    let (a, b) = (env.app(config()), env.app(config()));
    assert_eq!(get_(&a, "/plain").await.x_cache(), "MISS");
    let r = get_(&b, "/plain").await;
    assert_eq!((r.x_cache(), r.body.as_str()), ("HIT", "hello"));
    send(&b, "GET", "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(send(&a, "GET", "/vary", &[("accept-language", "fr")]).await.x_cache(), "HIT");
    assert_eq!((env.calls.of("/plain"), env.calls.of("/vary")), (1, 1));
    env.stop().await;
}

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_upstream_call() {
    let env = Env::start().await;
    let app = env.app(config());
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get_(&app, "/slow").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow"));
    }
    assert_eq!(env.calls.of("/slow"), 1);
    env.stop().await;
}

/// Log lines captured by a test (a tracing writer).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock()).matches(needle).count()
    }
}

#[tokio::test]
async fn requests_pass_through_while_the_grid_is_down() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let env = Env::start().await;
    let app = env.app(config());
    assert_eq!(get_(&app, "/plain").await.x_cache(), "MISS");
    let calls = env.calls.clone();
    env.stop().await;
    for _ in 0..3 {
        let r = get_(&app, "/plain").await;
        assert_eq!((r.status, r.x_cache(), r.body.as_str()), (StatusCode::OK, "BYPASS", "hello"));
    }
    assert_eq!(calls.of("/plain"), 4);
    assert_eq!(log.count("response cache: grid unreachable"), 1, "logged once per outage");

    // A grid that was never there: the same.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = app_on(&format!("redis://127.0.0.1:{port}/"), config(), calls.clone());
    let r = get_(&app, "/vary").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "BYPASS"));
}

#[tokio::test]
async fn an_embedded_node_serves_as_the_grid() {
    let grid = cachegrid_middleware::grid::EmbeddedGrid::start_default().await.unwrap();
    let calls = Arc::new(Calls::default());
    let app = upstream(calls.clone()).layer(CacheLayer::new(grid.clone(), config()).unwrap());
    assert_eq!(get_(&app, "/plain").await.x_cache(), "MISS");
    let hit = get_(&app, "/plain").await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("HIT", "hello"));
    assert_eq!(calls.of("/plain"), 1);
    if let Grid::Embedded(e) = grid {
        e.shutdown().await;
    }
}

/// RFC 9111 freshness as a shared cache sees it: the response headers (given to the upstream
/// in the query), and whether a second request is served from the cache.
#[tokio::test]
async fn freshness_follows_rfc_9111() {
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("cache-control", "max-age=60")], "HIT"),
        (&[("cache-control", "s-maxage=60")], "HIT"),
        (&[("cache-control", "public, max-age=60")], "HIT"),
        (&[("cache-control", "max-age=60, must-revalidate")], "HIT"),
        (&[("expires", &future)], "HIT"),
        (&[("cache-control", "max-age=0")], "MISS"),
        (&[("cache-control", "s-maxage=0, max-age=60")], "MISS"),
        (&[("cache-control", "no-cache, max-age=60")], "MISS"),
        (&[("cache-control", "no-store, max-age=60")], "MISS"),
        (&[("cache-control", "private, max-age=60")], "MISS"),
        (&[("expires", &past)], "MISS"),
        (&[("cache-control", "max-age=60"), ("vary", "*")], "MISS"),
        (&[], "MISS"),
    ];
    let env = Env::start().await;
    let app = env.app(config());
    for (headers, expected) in cases {
        let query: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(' ', "%20").replace(',', "%2C")))
            .collect();
        let path = format!("/table?{}", query.join("&"));
        assert_eq!(get_(&app, &path).await.x_cache(), "MISS", "{headers:?}");
        assert_eq!(get_(&app, &path).await.x_cache(), *expected, "{headers:?}");
    }
    env.stop().await;
}
