//! http-cache-tower with its moka manager in front of the benchmark handler (a 5 ms sleep,
//! then a small JSON body with `Cache-Control: max-age=N, ...`), as a user of that crate would put
//! it in a server: the manager given a real capacity (its default holds 42 entries), and the
//! request URI made absolute first (the crate is a client cache and keys on the full URL).
//!
//! Usage: cache-peer LISTEN_ADDR [MAX_AGE_SECS]; GET /stats gives the upstream call count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Request, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_cache::{CacheMode, HttpCache, HttpCacheOptions, MokaManager};
use http_cache_tower::{HttpCacheError, HttpCacheLayer};
use tower::{ServiceBuilder, ServiceExt};

#[derive(Clone)]
struct App {
    calls: Arc<AtomicU64>,
    max_age: u64,
}

async fn product(State(app): State<App>, Path(id): Path<u64>) -> impl IntoResponse {
    app.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let body = format!("{{\"id\":{id},\"name\":\"product {id}\",\"price_cents\":{}}}", 1000 + id);
    // The same headers as cached_api's handler, less its Cache-Tag.
    let cache_control = format!("max-age={}, stale-while-revalidate=10, stale-if-error=300", app.max_age);
    ([("cache-control", cache_control), ("content-type", "application/json".into())], body)
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    ([("cache-control", "no-store")], app.calls.load(Ordering::Relaxed).to_string())
}

/// The client-cache crate keys on the absolute URL: give it one built from `Host`.
fn absolute(mut req: Request) -> Request {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_owned();
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    if let Ok(uri) = format!("http://{host}{pq}").parse() {
        *req.uri_mut() = uri;
    }
    req
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:3003".into());
    let max_age: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let app = App { calls: Arc::new(AtomicU64::new(0)), max_age };
    let routes =
        Router::new().route("/products/{id}", get(product)).route("/stats", get(stats)).with_state(app);
    let cache = HttpCache {
        mode: CacheMode::Default,
        manager: MokaManager::new(moka::future::Cache::new(100_000)),
        options: HttpCacheOptions::default(),
    };
    let service = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: HttpCacheError| async move {
            (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }))
        .map_request(absolute)
        .layer(HttpCacheLayer::with_cache(cache))
        .service(routes)
        .map_response(|res| res.map(Body::new));
    let app = Router::new().fallback_service(service);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("cache-peer on {listen}");
    axum::serve(listener, app).await.expect("serve");
}
