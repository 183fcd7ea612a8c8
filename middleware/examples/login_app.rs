//! A small axum app with sessions in the grid: login (with id rotation), a per-session
//! counter, a cart and logout.
//!
//! ```text
//! cargo run --example login_app                                  # embedded node, no setup
//! cargo run --example login_app -- --grid redis://127.0.0.1:7000 # a cachegrid node or Redis
//! cargo run --example login_app -- --grid redis://127.0.0.1:7000 --grid redis://127.0.0.1:7001
//!                                        # a grid (Redis Cluster protocol): every --grid a seed
//! curl -c jar -b jar -X POST 'localhost:3000/login?user=ada'; curl -b jar localhost:3000/
//! ```
//!
//! `GET /health` answers `ok` while the app serves: `cachegrid health --admin HOST:PORT`
//! checks it, which is how docker-compose.yml's health check of this app works.

use anyhow::Context;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use cachegrid_middleware::grid::GridConfig;
use cachegrid_middleware::session::{EmbeddedStore, RemoteStore, Session, SessionConfig, SessionLayer};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// A grid to keep sessions in (`redis://HOST:PORT`); default: a node embedded in this app.
    /// Given more than once (or with --cluster), the grid is reached with the Redis Cluster
    /// protocol and each URL is a seed.
    #[arg(long)]
    grid: Vec<String>,
    /// Reach the grid with the Redis Cluster protocol even through a single --grid seed.
    #[arg(long)]
    cluster: bool,
    /// Where the app listens.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
    /// Send the cookie without `Secure` (plain-HTTP testing with clients that insist).
    #[arg(long)]
    insecure: bool,
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

#[derive(Deserialize)]
struct Item {
    item: String,
}

type Reply = Result<String, (StatusCode, String)>;

fn fail(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn home(session: Session) -> Reply {
    let user: Option<String> = session.get("user").await.map_err(fail)?;
    let count: u64 = session.get("count").await.map_err(fail)?.unwrap_or(0);
    let cart: Vec<String> = session.get("cart").await.map_err(fail)?.unwrap_or_default();
    Ok(format!("user: {}\ncount: {count}\ncart: {cart:?}\n", user.as_deref().unwrap_or("(anonymous)")))
}

async fn login(session: Session, Query(q): Query<Login>) -> Reply {
    // A new id at login: a session id an attacker planted before it is worthless after.
    session.cycle_id().await;
    session.insert("user", q.user.clone()).await.map_err(fail)?;
    Ok(format!("welcome, {}\n", q.user))
}

async fn count(session: Session) -> Reply {
    let n: u64 = session.get("count").await.map_err(fail)?.unwrap_or(0) + 1;
    session.insert("count", n).await.map_err(fail)?;
    Ok(format!("{n}\n"))
}

async fn add_to_cart(session: Session, Query(q): Query<Item>) -> Reply {
    let mut cart: Vec<String> = session.get("cart").await.map_err(fail)?.unwrap_or_default();
    cart.push(q.item);
    session.insert("cart", cart.clone()).await.map_err(fail)?;
    Ok(format!("cart: {cart:?}\n"))
}

async fn logout(session: Session) -> &'static str {
    session.flush().await;
    "bye\n"
}

fn routes() -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/count", post(count))
        .route("/cart", post(add_to_cart))
        .route("/logout", post(logout))
        .route("/health", get(|| async { "ok\n" }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let config = SessionConfig::default().with_secure(!args.insecure);
    let routes = routes();
    let router = match args.grid.as_slice() {
        [url] if !args.cluster => {
            let store = RemoteStore::new(GridConfig::single(url.clone())).context("grid URL")?;
            routes.layer(SessionLayer::new(store, config))
        }
        [_, ..] => {
            let store = RemoteStore::new(GridConfig::cluster(args.grid.clone())).context("grid URLs")?;
            routes.layer(SessionLayer::new(store, config))
        }
        [] => {
            let store = EmbeddedStore::start().await.context("starting the embedded node")?;
            println!("embedded grid node on {}", store.addr().expect("embedded"));
            routes.layer(SessionLayer::new(store, config))
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("login_app on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
