//! Dead letters: writes Postgres refused for their content, kept in `<table>_dead_letters`
//! so that an operator can list them and, once the cause is fixed, replay them without SQL
//! (the admin port's `/writebehind/deadletters` and `cachegrid deadletters`).
//!
//! A replay writes the record with the upsert every batch uses and with its original
//! version, so it never overwrites a row a later write of the key produced; the dead letter
//! is deleted in the same transaction, and a record refused again keeps its row with the new
//! error. (Going through the queue instead would give it a new, higher version.)

use serde::{Deserialize, Serialize};

use super::postgres::{self, PgError};
use super::record::{Kind, Op, Record};
use super::{Persistence, Space};

/// Most dead letters one call lists or replays.
pub const MAX_BATCH: usize = 10_000;

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// Its id in the dead-letter table (what replay takes).
    pub id: i64,
    /// The key (lossy UTF-8).
    pub key: String,
    /// `put` or `delete`.
    pub op: String,
    /// `string` or `hash` for a put.
    pub kind: Option<String>,
    /// Size of the stored value in bytes.
    pub value_bytes: usize,
    /// The write's version.
    pub version: i64,
    /// Why Postgres refused it (the last attempt's error).
    pub error: String,
    /// When it last failed (RFC 3339).
    pub failed_at: String,
}

/// What a replay did with one dead letter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replayed {
    /// The dead letter's id.
    pub id: i64,
    /// The key (lossy UTF-8).
    pub key: String,
    /// `written`; `superseded` (the row already holds a newer write, which stays); or
    /// `failed` (refused again: the dead letter stays, with `error`).
    pub outcome: String,
    /// The new error, when it failed again.
    pub error: Option<String>,
}

/// Why listing or replaying dead letters failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No key space of that name is written to Postgres on this node.
    #[error("no write-behind key space named '{0}' on this node")]
    UnknownKeyspace(String),
    /// Postgres is unreachable (or failed for another reason than the rows).
    #[error(transparent)]
    Postgres(#[from] PgError),
}

impl Persistence {
    fn written_space(&self, keyspace: &str) -> Result<&Space, DeadLetterError> {
        self.spaces
            .iter()
            .find(|s| s.cfg.name == keyspace && s.writer.is_some())
            .ok_or_else(|| DeadLetterError::UnknownKeyspace(keyspace.to_string()))
    }

    /// The oldest `count` (at most [`MAX_BATCH`]) dead letters of `keyspace`.
    pub async fn dead_letters(
        &self,
        keyspace: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let space = self.written_space(keyspace)?;
        let w = space.writer.as_ref().expect("written space");
        let client = w.table.client(&self.shared).await?;
        let sql = format!(
            "SELECT id, key, op, type, coalesce(length(value), 0), version, error,
                    to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
             FROM {} ORDER BY id LIMIT $1",
            postgres::dead_letter_table(&space.cfg.table)
        );
        let rows = client.query(&sql, &[&(count.min(MAX_BATCH) as i64)]).await.map_err(PgError::from)?;
        self.shared.pool.put(client);
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                key: String::from_utf8_lossy(r.get::<_, &[u8]>(1)).into_owned(),
                op: r.get(2),
                kind: r.get(3),
                value_bytes: r.get::<_, i32>(4).max(0) as usize,
                version: r.get(5),
                error: r.get(6),
                failed_at: r.get(7),
            })
            .collect())
    }

    /// Replays the dead letters `ids` of `keyspace` (`None`: the oldest [`MAX_BATCH`]), one
    /// transaction each; unknown ids are skipped. Stops at the first sign that Postgres is
    /// down (what was replayed before stays replayed).
    pub async fn replay_dead_letters(
        &self,
        keyspace: &str,
        ids: Option<&[i64]>,
    ) -> Result<Vec<Replayed>, DeadLetterError> {
        let space = self.written_space(keyspace)?;
        let w = space.writer.as_ref().expect("written space");
        let (table, dl) = (&space.cfg.table, postgres::dead_letter_table(&space.cfg.table));
        let mut client = w.table.client(&self.shared).await?;
        let select = format!(
            "SELECT id, key, op, type, value, round(extract(epoch FROM expires_at) * 1000)::int8, version
             FROM {dl} WHERE ($1::int8[] IS NULL OR id = ANY($1)) ORDER BY id LIMIT {MAX_BATCH}"
        );
        let ids: Option<Vec<i64>> = ids.map(|i| i.iter().copied().take(MAX_BATCH).collect());
        let rows = client.query(&select, &[&ids]).await.map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.get(0);
            let key: Vec<u8> = row.get(1);
            let op: String = row.get(2);
            let kind: Option<String> = row.get(3);
            let value: Option<Vec<u8>> = row.get(4);
            let expires: Option<i64> = row.get(5);
            let version: i64 = row.get(6);
            let shown = String::from_utf8_lossy(&key).into_owned();
            let op = match (op.as_str(), kind.as_deref().and_then(Kind::parse)) {
                ("delete", _) => Op::Delete,
                ("put", Some(kind)) => Op::Put {
                    kind,
                    value: value.unwrap_or_default().into(),
                    expires_at_ms: expires.map(|e| e.max(1) as u64),
                },
                _ => {
                    out.push(Replayed {
                        id,
                        key: shown,
                        outcome: "failed".into(),
                        error: Some(format!("cannot replay: op '{op}' with type {kind:?}")),
                    });
                    continue;
                }
            };
            let record = Record { version: version.max(0) as u64, key: key.into(), slot: 0, op };
            let result = async {
                let tx = client.transaction().await?;
                let changed = postgres::apply(&tx, table, std::slice::from_ref(&record)).await?;
                tx.execute(&format!("DELETE FROM {dl} WHERE id = $1"), &[&id]).await?;
                tx.commit().await?;
                Ok::<_, PgError>(changed)
            }
            .await;
            match result {
                Ok(changed) => {
                    self.shared.health.mark_up();
                    w.stats.dead_letters_replayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let outcome = if changed > 0 { "written" } else { "superseded" };
                    tracing::info!(key = %shown, id, table = %table, outcome, "dead letter replayed");
                    out.push(Replayed { id, key: shown, outcome: outcome.into(), error: None });
                }
                Err(PgError::Content(e)) => {
                    let sql = format!("UPDATE {dl} SET error = $2, failed_at = now() WHERE id = $1");
                    client.execute(&sql, &[&id, &e]).await.map_err(PgError::from)?;
                    tracing::warn!(key = %shown, id, table = %table, error = %e, "dead letter refused again");
                    out.push(Replayed { id, key: shown, outcome: "failed".into(), error: Some(e) });
                }
                Err(e) => {
                    if let PgError::Down(msg) = &e {
                        self.shared.health.mark_down(msg);
                    }
                    return Err(e.into());
                }
            }
        }
        self.shared.pool.put(client);
        Ok(out)
    }
}
