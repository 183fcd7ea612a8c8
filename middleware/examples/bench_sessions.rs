//! The benchmark handler of scripts/bench-sessions.sh behind our session layer: read one
//! session value, write it back incremented.
//!
//! Usage: bench_sessions --listen ADDR [--grid redis://HOST:PORT] [--near-cache]
//! (without --grid: the embedded store)

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use cachegrid_middleware::grid::{GridConfig, NearCacheConfig};
use cachegrid_middleware::session::{EmbeddedStore, RemoteStore, Session, SessionConfig, SessionLayer};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:3002")]
    listen: String,
    #[arg(long)]
    grid: Option<String>,
    #[arg(long)]
    near_cache: bool,
}

async fn bench(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SessionConfig::default().with_secure(false);
    let routes = Router::new().route("/bench", get(bench));
    let app = match &args.grid {
        Some(url) => {
            let mut gc = GridConfig::single(url.clone());
            if args.near_cache {
                gc = gc.with_near_cache(NearCacheConfig::default());
            }
            routes.layer(SessionLayer::new(RemoteStore::new(gc).context("grid")?, config))
        }
        None => {
            routes.layer(SessionLayer::new(EmbeddedStore::start().await.context("embedded node")?, config))
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await.context("bind")?;
    println!("bench_sessions on {}", args.listen);
    axum::serve(listener, app).await?;
    Ok(())
}
