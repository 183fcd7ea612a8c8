//! Whether Postgres is reachable, with one log line per change of state (never per retry),
//! a small connection pool, and the backoff used while it is down.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_postgres::Client;

use super::postgres::{self, PgError};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The database's state as the node sees it.
pub struct Health {
    state: AtomicU8,
    last_error: Mutex<String>,
    /// Transitions between up and down.
    pub changes: AtomicU64,
    /// Unix ms of the last transition.
    pub since_ms: AtomicU64,
    /// Unix ms of the last failed attempt.
    last_failure_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: AtomicU8::new(UNKNOWN),
            last_error: Mutex::new(String::new()),
            changes: AtomicU64::new(0),
            since_ms: AtomicU64::new(crate::store::clock::now_ms()),
            last_failure_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// A statement succeeded.
    pub fn mark_up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            self.changes.fetch_add(1, Ordering::Relaxed);
            self.since_ms.store(crate::store::clock::now_ms(), Ordering::Relaxed);
            tracing::info!("postgres is reachable: write-behind queues drain");
        }
    }

    /// The database could not be reached.
    pub fn mark_down(&self, error: &str) {
        *self.last_error.lock() = error.to_string();
        self.last_failure_ms.store(crate::store::clock::now_ms(), Ordering::Relaxed);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            self.changes.fetch_add(1, Ordering::Relaxed);
            self.since_ms.store(crate::store::clock::now_ms(), Ordering::Relaxed);
            tracing::warn!(
                error,
                "postgres is unreachable: writes wait in the durable queue, retrying with backoff"
            );
        }
    }

    /// Whether the last attempt reached the database (false until one has).
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Whether the database was found down within the last `ms` milliseconds: callers that
    /// must answer quickly (read-through misses) then fail at once instead of waiting for a
    /// connect timeout; the writers keep probing and flip the state back.
    pub fn recently_down(&self, ms: u64) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
            && crate::store::clock::now_ms().saturating_sub(self.last_failure_ms.load(Ordering::Relaxed)) < ms
    }

    /// `up`, `down` or `unknown`, for INFO.
    pub fn name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            UP => "up",
            DOWN => "down",
            _ => "unknown",
        }
    }

    /// The last connection error, for INFO.
    pub fn last_error(&self) -> String {
        self.last_error.lock().clone()
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each delay scaled by 0.5–1.5.
pub fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5000);
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// A few reusable connections to one database.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    /// A pool for `url`; connects lazily.
    pub fn new(url: String) -> Pool {
        Pool { url, idle: Mutex::new(Vec::new()) }
    }

    /// An open connection: an idle one or a new one.
    pub async fn get(&self) -> Result<Client, PgError> {
        loop {
            let c = self.idle.lock().pop();
            match c {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => return postgres::connect(&self.url).await,
            }
        }
    }

    /// Returns a connection that worked.
    pub fn put(&self, c: Client) {
        let mut idle = self.idle.lock();
        if idle.len() < 16 && !c.is_closed() {
            idle.push(c);
        }
    }
}
