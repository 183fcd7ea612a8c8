//! Tower layers that keep web state in a cachegrid grid (or plain Redis / Redis Cluster):
//! [`session`] (a `SessionLayer` and `Session` extractor with the tower-sessions API),
//! [`cache`] (a `CacheLayer` sharing HTTP responses between instances) and the [`grid`]
//! client both use.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use cachegrid_middleware::grid::GridConfig;
//! use cachegrid_middleware::session::{RemoteStore, Session, SessionConfig, SessionLayer};
//!
//! async fn visits(session: Session) -> String {
//!     let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
//!     session.insert("n", n).await.unwrap();
//!     format!("visit {n}")
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RemoteStore::new(GridConfig::single("redis://127.0.0.1:7000"))?;
//! let app: Router = Router::new().route("/", get(visits)).layer(SessionLayer::new(store, SessionConfig::default()));
//! # Ok(()) }
//! ```

pub mod cache;
pub mod grid;
pub mod session;
