//! The response cache against a real cachegrid node over TCP: what is stored and shared
//! (RFC 9111 via `http-cache-semantics`), Vary, 304s from the cache, two app instances
//! sharing one grid, single flight and the cross-instance lease, the L1 kept correct by the
//! grid's invalidations, stale-while-revalidate and stale-if-error, purges by URI and tag,
//! and pass-through when the grid is down.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cachegrid_middleware::cache::{CacheConfig, CacheError, CacheLayer, L1Config};
use cachegrid_middleware::grid::{Grid, GridConfig};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tower::ServiceExt;

const LAST_MODIFIED: &str = "Mon, 02 Nov 2026 10:00:00 GMT";

/// Upstream calls per path, and whether any carried a validator; switches making the
/// upstream fail (500) or hang.
#[derive(Default)]
struct Calls {
    per_path: Mutex<HashMap<String, usize>>,
    saw_validator: AtomicUsize,
    failing: AtomicBool,
    hanging: AtomicBool,
}

impl Calls {
    fn of(&self, path: &str) -> usize {
        self.per_path.lock().get(path).copied().unwrap_or(0)
    }
}

/// The upstream: one route per caching case, counting its calls.
fn upstream(calls: Arc<Calls>) -> Router {
    let count = |calls: &Arc<Calls>, path: &str, h: &HeaderMap| {
        let mut per_path = calls.per_path.lock();
        let n = per_path.entry(path.to_owned()).or_default();
        *n += 1;
        if h.contains_key("if-none-match") || h.contains_key("if-modified-since") {
            calls.saw_validator.fetch_add(1, Ordering::SeqCst);
        }
        *n
    };
    // Answers with its call count, or 500 while `failing` (after 3 s while `hanging`).
    let counted = |path: &'static str, cache_control: &'static str| {
        let calls = calls.clone();
        get(move |h: HeaderMap| async move {
            let n = count(&calls, path, &h);
            if calls.hanging.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let status = if calls.failing.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, [("cache-control", cache_control)], n.to_string()).into_response()
        })
    };
    let product_calls = calls.clone();
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
        .route("/counter", counted("/counter", "max-age=60"))
        .route("/swr", counted("/swr", "max-age=1, stale-while-revalidate=30"))
        .route("/flaky", counted("/flaky", "max-age=1, stale-if-error=60"))
        .route("/fragile", counted("/fragile", "max-age=1"))
        .route(
            "/product/{id}",
            get(move |h: HeaderMap, axum::extract::Path(id): axum::extract::Path<u32>| async move {
                let n = count(&product_calls, &format!("/product/{id}"), &h);
                let tags = format!("product:{id}, products");
                ([("cache-control", "max-age=60".to_owned()), ("cache-tag", tags)], format!("{id}:{n}"))
            }),
        )
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

    /// Like [`Env::app`], with the layer kept to purge through.
    fn instance(&self, config: CacheConfig) -> (Router, CacheLayer) {
        let layer = CacheLayer::new(grid_client(&self.url), config).unwrap();
        (upstream(self.calls.clone()).layer(layer.clone()), layer)
    }

    /// A plain connection to the node.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str()).unwrap().get_multiplexed_tokio_connection().await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            let _ = node.shutdown().await;
        }
    }
}

fn grid_client(url: &str) -> Grid {
    let mut gc = GridConfig::single(url);
    gc.connect_timeout = Duration::from_millis(500);
    gc.response_timeout = Duration::from_millis(500);
    Grid::remote(gc).unwrap()
}

fn app_on(url: &str, config: CacheConfig, calls: Arc<Calls>) -> Router {
    upstream(calls).layer(CacheLayer::new(grid_client(url), config).unwrap())
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

    /// `X-Cache` and `X-Cache-Level` ("-" without one), and the body.
    fn seen(&self) -> (&str, &str, &str) {
        let level = self.headers.get("x-cache-level").map(|v| v.to_str().unwrap()).unwrap_or("-");
        (self.x_cache(), level, self.body.as_str())
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

fn with_l1(confirm_hits: bool) -> CacheConfig {
    config().with_l1(L1Config { confirm_hits, ..L1Config::default() })
}

#[tokio::test]
async fn l1_answers_repeat_hits_in_process_and_x_cache_level_tells_which_level() {
    let env = Env::start().await;
    let (a, b) = (env.app(with_l1(false)), env.app(with_l1(false)));
    assert_eq!(get_(&a, "/counter").await.seen(), ("MISS", "-", "1"));
    // A's own fill is not in its L1 (only grid reads are, so their invalidations reach it).
    assert_eq!(get_(&a, "/counter").await.seen(), ("HIT", "L2", "1"));
    assert_eq!(get_(&a, "/counter").await.seen(), ("HIT", "L1", "1"));
    assert_eq!(get_(&b, "/counter").await.seen(), ("HIT", "L2", "1"));
    let hit = get_(&b, "/counter").await;
    assert_eq!(hit.seen(), ("HIT", "L1", "1"));
    assert_eq!(hit.headers["age"], "0");
    assert_eq!(env.calls.of("/counter"), 1);
    env.stop().await;
}

/// The point of the L1 invalidations: an entry replaced or purged through instance A is not
/// served from instance B's L1 afterwards. With `confirm_hits` this holds from the moment
/// A's call returns; without, once the grid's push has arrived (polled for here).
#[tokio::test]
async fn a_purge_or_refill_through_one_instance_reaches_the_l1_of_another() {
    let env = Env::start().await;
    let (a, cache_a) = env.instance(config());
    let confirmed = env.app(with_l1(true));
    let pushed = env.app(with_l1(false));
    get_(&a, "/counter").await;
    for b in [&confirmed, &pushed] {
        get_(b, "/counter").await;
        assert_eq!(get_(b, "/counter").await.seen(), ("HIT", "L1", "1"));
    }
    assert_eq!(cache_a.purge("http://example.test/counter").await.unwrap(), 1);
    assert_eq!(get_(&a, "/counter").await.seen(), ("MISS", "-", "2"), "refilled through A");
    assert_eq!(get_(&confirmed, "/counter").await.seen(), ("HIT", "L2", "2"));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = get_(&pushed, "/counter").await;
        if r.body == "2" {
            assert_eq!(r.seen(), ("HIT", "L2", "2"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the old entry stayed in B's L1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Both L1s hold the new entry now; a refill through A after expiry is the same case.
    assert_eq!(get_(&confirmed, "/counter").await.seen(), ("HIT", "L1", "2"));
    assert_eq!(env.calls.of("/counter"), 2);
    env.stop().await;
}

/// With the node embedded in one instance, its L1 hears of every change synchronously: a
/// purge through another instance (over TCP) is seen at once.
#[tokio::test]
async fn an_embedded_node_invalidates_its_l1_before_the_write_returns() {
    let grid = cachegrid_middleware::grid::EmbeddedGrid::start_default().await.unwrap();
    let Grid::Embedded(node) = &grid else { unreachable!() };
    let calls = Arc::new(Calls::default());
    let embedded = upstream(calls.clone()).layer(CacheLayer::new(grid.clone(), with_l1(false)).unwrap());
    let url = format!("redis://{}/", node.addr());
    let remote = CacheLayer::new(grid_client(&url), config()).unwrap();
    let other = upstream(calls.clone()).layer(remote.clone());
    get_(&embedded, "/counter").await;
    get_(&embedded, "/counter").await;
    assert_eq!(get_(&embedded, "/counter").await.seen(), ("HIT", "L1", "1"));
    assert_eq!(remote.purge("http://example.test/counter").await.unwrap(), 1);
    assert_eq!(get_(&embedded, "/counter").await.seen(), ("MISS", "-", "2"));
    assert_eq!(get_(&other, "/counter").await.seen(), ("HIT", "L2", "2"));
    node.shutdown().await;
}

#[tokio::test]
async fn an_l1_needs_a_grid_that_sends_invalidations() {
    let cluster = Grid::remote(GridConfig::cluster(["redis://127.0.0.1:1/"])).unwrap();
    let err = CacheLayer::new(cluster.clone(), with_l1(false)).err().expect("refused");
    assert!(matches!(err, CacheError::Config(_)), "{err}");
    assert!(CacheLayer::new(cluster, config()).is_ok(), "without L1 a cluster is fine");
    let braces = CacheConfig { prefix: "app{1}:".into(), ..config() };
    assert!(CacheLayer::new(grid_client("redis://127.0.0.1:1/"), braces).is_err());
}

/// 100 concurrent misses for one key, half through each of two instances: one instance
/// takes the grid lease and calls the upstream; the other waits for its fill.
#[tokio::test]
async fn concurrent_misses_across_two_instances_make_one_upstream_call() {
    let env = Env::start().await;
    let (a, b) = (env.app(config()), env.app(with_l1(false)));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { get_(&app, "/slow").await })
        })
        .collect();
    let mut seen = HashMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow"));
        *seen.entry(r.x_cache().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(env.calls.of("/slow"), 1, "{seen:?}");
    assert_eq!(seen["MISS"], 1, "{seen:?}");
    env.stop().await;
}

/// A lease left by an instance that died mid-fill holds the others back only until it
/// expires; then one of them fills the key.
#[tokio::test]
async fn the_lease_of_a_dead_instance_expires() {
    let env = Env::start().await;
    let app = env.app(config());
    let mut raw = env.raw().await;
    let lease = "cgcache:{GET example.test/counter}#lease";
    let _: () =
        redis::cmd("SET").arg(lease).arg("dead").arg("PX").arg(300).query_async(&mut raw).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get_(&app, "/counter").await.seen(), ("MISS", "-", "1"));
    assert!(started.elapsed() >= Duration::from_millis(250), "waited for the lease: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));
    let left: Option<String> = redis::cmd("GET").arg(lease).query_async(&mut raw).await.unwrap();
    assert_eq!(left, None, "the new holder released its lease with the fill");
    env.stop().await;
}

/// RFC 5861 stale-while-revalidate: past its freshness but within the window, a response is
/// served at once (STALE) and refreshed once in the background, across instances.
#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let env = Env::start().await;
    let (a, b) = (env.app(config()), env.app(with_l1(false)));
    assert_eq!(get_(&a, "/swr").await.seen(), ("MISS", "-", "1"));
    get_(&b, "/swr").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { get_(&app, "/swr").await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.x_cache(), r.body.as_str()), (StatusCode::OK, "STALE", "1"));
        assert!(r.headers["age"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while get_(&a, "/swr").await.body != "2" {
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get_(&b, "/swr").await.seen().2, "2");
    assert_eq!(env.calls.of("/swr"), 2, "one refresh for 20 stale answers on two instances");
    env.stop().await;
}

/// RFC 5861 stale-if-error: when the upstream answers 500, the stale copy answers instead;
/// without the directive the 500 goes through.
#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_when_the_upstream_returns_500() {
    let env = Env::start().await;
    let app = env.app(config());
    assert_eq!(get_(&app, "/flaky").await.seen(), ("MISS", "-", "1"));
    assert_eq!(get_(&app, "/fragile").await.seen(), ("MISS", "-", "1"));
    env.calls.failing.store(true, Ordering::SeqCst);
    assert_eq!(get_(&app, "/flaky").await.seen(), ("HIT", "L2", "1"), "still fresh");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let r = get_(&app, "/flaky").await;
        assert_eq!((r.status, r.seen()), (StatusCode::OK, ("STALE", "L2", "1")));
    }
    assert_eq!(env.calls.of("/flaky"), 3, "the upstream is asked each time");
    let r = get_(&app, "/fragile").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::INTERNAL_SERVER_ERROR, "MISS"));
    // Recovered: the next response replaces the stale copy.
    env.calls.failing.store(false, Ordering::SeqCst);
    assert_eq!(get_(&app, "/flaky").await.seen(), ("MISS", "-", "4"));
    assert_eq!(get_(&app, "/flaky").await.seen(), ("HIT", "L2", "4"));
    env.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_when_the_upstream_times_out() {
    let env = Env::start().await;
    let app = env.app(CacheConfig { upstream_timeout: Duration::from_millis(200), ..config() });
    get_(&app, "/flaky").await;
    env.calls.hanging.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    assert_eq!(get_(&app, "/flaky").await.seen(), ("STALE", "L2", "1"));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    env.stop().await;
}

/// Tags from the handler's `Cache-Tag` header: a purge through one instance removes the
/// tagged responses for all (grid and both L1s), and nothing else.
#[tokio::test]
async fn a_tag_purge_through_one_instance_is_a_miss_on_both() {
    let env = Env::start().await;
    let (a, cache_a) = env.instance(with_l1(true));
    let (b, cache_b) = env.instance(with_l1(true));
    for path in ["/product/42", "/product/7"] {
        let miss = get_(&a, path).await;
        assert_eq!(miss.x_cache(), "MISS");
        assert!(!miss.headers.contains_key("cache-tag"), "tags are the cache's business");
        get_(&a, path).await;
        get_(&b, path).await;
        assert_eq!(get_(&b, path).await.seen().1, "L1");
    }
    assert_eq!(cache_a.purge_tag("product:42").await.unwrap(), 1);
    assert_eq!(get_(&b, "/product/42").await.seen(), ("MISS", "-", "42:2"));
    assert_eq!(get_(&a, "/product/42").await.seen(), ("HIT", "L2", "42:2"), "never A's old L1 copy");
    assert_eq!(cache_b.purge_tag("product:42").await.unwrap(), 1);
    assert_eq!(get_(&a, "/product/42").await.seen(), ("MISS", "-", "42:3"));
    assert_eq!(get_(&b, "/product/42").await.seen(), ("HIT", "L2", "42:3"));
    assert_eq!(get_(&b, "/product/7").await.seen(), ("HIT", "L1", "7:1"), "untouched");
    // One tag on many responses.
    assert_eq!(cache_b.purge_tag("products").await.unwrap(), 2);
    assert_eq!(get_(&a, "/product/7").await.seen(), ("MISS", "-", "7:2"));
    assert_eq!(cache_a.purge_tag("no-such-tag").await.unwrap(), 0);
    env.stop().await;
}

#[tokio::test]
async fn a_uri_purge_removes_every_variant_and_head() {
    let env = Env::start().await;
    let (app, cache) = env.instance(config());
    for lang in ["en", "de"] {
        send(&app, "GET", "/vary", &[("accept-language", lang)]).await;
    }
    send(&app, "HEAD", "/plain", &[]).await;
    get_(&app, "/plain").await;
    // The Vary marker and both variants.
    assert_eq!(cache.purge("http://example.test/vary").await.unwrap(), 3);
    for lang in ["en", "de"] {
        assert_eq!(send(&app, "GET", "/vary", &[("accept-language", lang)]).await.x_cache(), "MISS");
    }
    assert_eq!(cache.purge("https://example.test/plain").await.unwrap(), 2, "GET and HEAD");
    assert_eq!(send(&app, "HEAD", "/plain", &[]).await.x_cache(), "MISS");
    assert!(matches!(cache.purge("/plain").await, Err(CacheError::BadUri(_))));
    env.stop().await;
}

/// Layers over any grid: the upstream counters and a key prefix of the test's own.
fn instance_on(grid: Grid, config: CacheConfig, calls: &Arc<Calls>) -> (Router, CacheLayer) {
    let layer = CacheLayer::new(grid, config).unwrap();
    (upstream(calls.clone()).layer(layer.clone()), layer)
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("cgcache-test:{test}:{}:{nanos}:", std::process::id())
}

/// The reference Redis speaks the same protocol: RESP3 tracking pushes with NOLOOP reach
/// the other instance's L1, leases and tag indexes (PEXPIRE NX/GT in MULTI) work alike.
#[tokio::test]
async fn the_cache_works_the_same_over_the_reference_redis() {
    if !common::redis_up() {
        return;
    }
    let url = "redis://127.0.0.1:6379/";
    let prefix = unique_prefix("redis");
    let calls = Arc::new(Calls::default());
    let cfg = |confirm_hits| CacheConfig { prefix: prefix.clone(), ..with_l1(confirm_hits) };
    let (a, cache_a) = instance_on(grid_client(url), cfg(false), &calls);
    let (b, _) = instance_on(grid_client(url), cfg(true), &calls);
    for path in ["/product/42", "/product/42", "/product/42"] {
        get_(&a, path).await;
        get_(&b, path).await;
    }
    assert_eq!(get_(&b, "/product/42").await.seen(), ("HIT", "L1", "42:1"));
    assert_eq!(cache_a.purge_tag("product:42").await.unwrap(), 1);
    assert_eq!(get_(&b, "/product/42").await.seen(), ("MISS", "-", "42:2"));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { get_(&app, "/slow").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().body, "slow");
    }
    assert_eq!(calls.of("/slow"), 1);
    let mut raw = redis::Client::open(url).unwrap().get_multiplexed_tokio_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut raw).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut raw).await.unwrap();
    }
}

/// On a Redis Cluster: a primary's keys (entry, Vary marker, variant index, lease) share its
/// hash tag's slot, so fills and URI purges are one transaction; a tag's keys are spread
/// over slots and purged one by one. (No L1 there: the cluster client has no push channel.)
#[tokio::test]
async fn the_cache_works_on_a_redis_cluster() {
    let Some(cluster) = common::RedisCluster::start() else { return };
    let calls = Arc::new(Calls::default());
    let grid = Grid::remote(GridConfig::cluster(cluster.urls.clone())).unwrap();
    let (app, cache) = instance_on(grid, config(), &calls);
    for id in 1..=20 {
        let path = format!("/product/{id}");
        assert_eq!(get_(&app, &path).await.x_cache(), "MISS");
        assert_eq!(get_(&app, &path).await.seen(), ("HIT", "L2", format!("{id}:1").as_str()));
    }
    for lang in ["en", "de", "en"] {
        send(&app, "GET", "/vary", &[("accept-language", lang)]).await;
    }
    assert_eq!(calls.of("/vary"), 2);
    assert_eq!(cache.purge("http://example.test/vary").await.unwrap(), 3);
    assert_eq!(cache.purge_tag("products").await.unwrap(), 20, "twenty keys over many slots");
    assert_eq!(get_(&app, "/product/7").await.seen(), ("MISS", "-", "7:2"));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get_(&app, "/slow").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().body, "slow");
    }
    assert_eq!(calls.of("/slow"), 1);
}
