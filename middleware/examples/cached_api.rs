//! A slow product API (5 ms per call) behind the response cache: responses are tagged per
//! product, purged by tag, and shared by every instance using the same grid.
//!
//! ```text
//! cargo run -p cachegrid-middleware --example cached_api                                 # embedded node
//! cargo run -p cachegrid-middleware --example cached_api -- --grid redis://127.0.0.1:7000 # a node or Redis
//! curl -i localhost:3000/products/42           # X-Cache: MISS, then HIT (X-Cache-Level: L2, then L1)
//! curl -X POST localhost:3000/products/42/purge   # purges tag product:42 on every instance
//! curl localhost:3000/stats                    # upstream (handler) calls so far
//! ```
//!
//! Also the app of scripts/bench-cache.sh (`--no-cache`, `--no-l1`, `--max-age`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use cachegrid_middleware::cache::{CacheConfig, CacheLayer, L1Config};
use cachegrid_middleware::grid::{EmbeddedGrid, Grid, GridConfig};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// A grid to keep responses in (`redis://HOST:PORT`); default: a node embedded in this app.
    #[arg(long)]
    grid: Option<String>,
    /// Where the app listens.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
    /// Freshness the handler gives its responses (`Cache-Control: max-age`).
    #[arg(long, default_value_t = 60)]
    max_age: u64,
    /// No in-process L1: every hit reads the grid.
    #[arg(long)]
    no_l1: bool,
    /// No cache at all (the benchmark's baseline).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Clone)]
struct App {
    calls: Arc<AtomicU64>,
    max_age: u64,
    cache: Option<CacheLayer>,
}

/// The slow upstream: 5 ms of "database", then a small JSON body, tagged for purges.
async fn product(State(app): State<App>, Path(id): Path<u64>) -> impl IntoResponse {
    app.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let body = format!("{{\"id\":{id},\"name\":\"product {id}\",\"price_cents\":{}}}", 1000 + id);
    let cache_control = format!("max-age={}, stale-while-revalidate=10, stale-if-error=300", app.max_age);
    (
        [
            ("cache-control", cache_control),
            ("cache-tag", format!("product:{id}, products")),
            ("content-type", "application/json".into()),
        ],
        body,
    )
}

/// POST: the product changed; drop its cached responses everywhere.
async fn purge(State(app): State<App>, Path(id): Path<u64>) -> String {
    match &app.cache {
        Some(cache) => match cache.purge_tag(&format!("product:{id}")).await {
            Ok(n) => format!("purged {n}\n"),
            Err(e) => format!("purge failed: {e}\n"),
        },
        None => "no cache\n".into(),
    }
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    ([("cache-control", "no-store")], format!("{}\n", app.calls.load(Ordering::Relaxed)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let cache = if args.no_cache {
        None
    } else {
        let grid = match &args.grid {
            Some(url) => Grid::remote(GridConfig::single(url.clone())).context("grid URL")?,
            None => {
                let grid = EmbeddedGrid::start_default().await.context("starting the embedded node")?;
                if let Grid::Embedded(node) = &grid {
                    println!("embedded grid node on {}", node.addr());
                }
                grid
            }
        };
        let mut config = CacheConfig::default();
        if !args.no_l1 {
            config = config.with_l1(L1Config::default());
        }
        Some(CacheLayer::new(grid, config).context("cache layer")?)
    };
    let app = App { calls: Arc::new(AtomicU64::new(0)), max_age: args.max_age, cache: cache.clone() };
    let routes = Router::new()
        .route("/products/{id}", get(product))
        .route("/products/{id}/purge", post(purge))
        .route("/stats", get(stats))
        .with_state(app);
    let router = match cache {
        Some(cache) => routes.layer(cache),
        None => routes,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("cached_api on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
