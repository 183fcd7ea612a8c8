//! tower-sessions + tower-sessions-redis-store serving the benchmark handler: read one session
//! value, write it back incremented. Usage: sessions-peer LISTEN_ADDR REDIS_URL [POOL_SIZE]

use axum::routing::get;
use axum::Router;
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_redis_store::fred::prelude::*;
use tower_sessions_redis_store::RedisStore;

async fn bench(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:3001".into());
    let url = args.get(2).cloned().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let pool_size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(6);
    let pool = Pool::new(Config::from_url(&url).expect("redis url"), None, None, None, pool_size).expect("pool");
    let _ = pool.connect();
    pool.wait_for_connect().await.expect("redis reachable");
    let layer = SessionManagerLayer::new(RedisStore::new(pool))
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::minutes(30)));
    let app = Router::new().route("/bench", get(bench)).layer(layer);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("sessions-peer on {listen}");
    axum::serve(listener, app).await.expect("serve");
}
