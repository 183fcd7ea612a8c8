//! Read-through: a miss on a backed key loads the row from Postgres. Concurrent misses for
//! one key make one query; absent keys are remembered briefly (a moka cache) so a storm of
//! misses never reaches the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::postgres::{self, Loaded};
use super::writer::Table;
use super::Shared;

type Flight = Arc<OnceCell<Result<Option<Arc<Loaded>>, String>>>;

/// Counters INFO reports.
#[derive(Default)]
pub struct LoaderStats {
    /// Queries sent to Postgres.
    pub queries: AtomicU64,
    /// Rows loaded into memory.
    pub loaded: AtomicU64,
    /// Misses answered by the negative cache.
    pub negative_hits: AtomicU64,
    /// Loads that failed because the database was unreachable.
    pub errors: AtomicU64,
}

/// The read-through loader of one key space.
pub struct Loader {
    table: Arc<Table>,
    negative: moka::sync::Cache<Vec<u8>, ()>,
    flights: Mutex<HashMap<Vec<u8>, Flight>>,
    /// Counters.
    pub stats: LoaderStats,
}

impl Loader {
    /// A loader for `table` remembering absent keys for `negative_ttl`.
    pub fn new(table: Arc<Table>, negative_ttl: Duration) -> Loader {
        Loader {
            table,
            negative: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(negative_ttl).build(),
            flights: Mutex::new(HashMap::new()),
            stats: LoaderStats::default(),
        }
    }

    /// Whether `key` is known to be absent from Postgres.
    pub fn known_absent(&self, key: &[u8]) -> bool {
        let hit = self.negative.contains_key(key);
        if hit {
            self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Forgets that `key` was absent (it was just written). Cheap: safe under a shard lock.
    pub fn forget_absent(&self, key: &[u8]) {
        if self.negative.contains_key(key) {
            self.negative.invalidate(key);
        }
    }

    /// Loads `key`: the row, `None` if absent or expired, or the error when the database is
    /// unreachable. One query however many callers ask at once.
    pub async fn load(&self, shared: &Shared, key: &[u8]) -> Result<Option<Arc<Loaded>>, String> {
        if shared.health.recently_down(1000) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(format!("postgres unavailable: {}", shared.health.last_error()));
        }
        let flight = self.flights.lock().entry(key.to_vec()).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                self.stats.queries.fetch_add(1, Ordering::Relaxed);
                let text = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
                let client = self.table.client(shared).await.map_err(|e| {
                    shared.health.mark_down(&e.to_string());
                    e.to_string()
                })?;
                let r = postgres::load(&client, &self.table.name, text).await;
                match r {
                    Ok(row) => {
                        shared.pool.put(client);
                        shared.health.mark_up();
                        if row.is_none() {
                            self.negative.insert(key.to_vec(), ());
                        }
                        Ok(row.map(Arc::new))
                    }
                    Err(e) => {
                        if let postgres::PgError::Down(msg) = &e {
                            shared.health.mark_down(msg);
                        }
                        Err(e.to_string())
                    }
                }
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock();
            if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(key);
            }
        }
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}
