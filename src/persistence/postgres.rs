//! The SQL side: schema, batched upserts and deletes with a version check, dead letters,
//! read-through loads, cleanup of expired rows. Table names are validated identifiers.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::record::{Kind, Op, Record};

/// Why a statement failed: the database is unreachable, or it refused this content.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Connection refused, reset, timed out, or a server-side problem unrelated to the rows:
    /// the writes wait and are retried.
    #[error("postgres unavailable: {0}")]
    Down(String),
    /// The database rejected the rows themselves (a constraint, a value too large).
    #[error("postgres rejected the data: {0}")]
    Content(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            // 22: data exception, 23: integrity constraint violation, 54: program limit exceeded.
            if code.starts_with("22") || code.starts_with("23") || code.starts_with("54") {
                return PgError::Content(format!("{} ({code})", db.message()));
            }
            return PgError::Down(format!("{} ({code})", db.message()));
        }
        PgError::Down(e.to_string())
    }
}

/// Opens a connection, with a timeout so a black-holed database counts as down quickly.
pub async fn connect(url: &str) -> Result<Client, PgError> {
    let fut = tokio_postgres::connect(url, NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| PgError::Down("connect timed out".into()))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn index_name(table: &str, suffix: &str) -> String {
    let base = table.rsplit('.').next().unwrap_or(table);
    format!("{base}_{suffix}")
}

/// The dead-letter table of `table`.
pub fn dead_letter_table(table: &str) -> String {
    format!("{table}_dead_letters")
}

/// Creates the table, its expiry index and its dead-letter table if missing.
pub async fn ensure_schema(client: &Client, table: &str) -> Result<(), PgError> {
    let dl = dead_letter_table(table);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            key text PRIMARY KEY,
            value bytea,
            type text NOT NULL,
            expires_at timestamptz,
            version bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX IF NOT EXISTS {ix} ON {table} (expires_at) WHERE expires_at IS NOT NULL;
         CREATE TABLE IF NOT EXISTS {dl} (
            id bigserial PRIMARY KEY,
            key bytea NOT NULL,
            op text NOT NULL,
            value bytea,
            type text,
            expires_at timestamptz,
            version bigint NOT NULL,
            error text NOT NULL,
            failed_at timestamptz NOT NULL DEFAULT now());",
        ix = index_name(table, "expires_at"),
    );
    client.batch_execute(&sql).await?;
    Ok(())
}

/// Highest version stored in `table`, so a restarted node's versions start above it.
pub async fn max_version(client: &Client, table: &str) -> Result<u64, PgError> {
    let row = client.query_one(&format!("SELECT coalesce(max(version), 0) FROM {table}"), &[]).await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

fn key_text(r: &Record) -> Result<&str, PgError> {
    std::str::from_utf8(&r.key).map_err(|_| PgError::Content("key is not UTF-8".into()))
}

/// Writes `batch` (at most one record per key) in one transaction: one multi-row upsert and
/// one multi-row delete, each applied only where the row's version is older.
pub async fn write_batch(client: &mut Client, table: &str, batch: &[Record]) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    apply(&tx, table, batch).await?;
    tx.commit().await?;
    Ok(())
}

/// The statements of [`write_batch`] inside `tx`; how many rows they changed (a record older
/// than its row changes none).
pub async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    batch: &[Record],
) -> Result<u64, PgError> {
    let (mut pk, mut pv, mut pt, mut pe, mut pver) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut dk, mut dver) = (vec![], vec![]);
    for r in batch {
        let key = key_text(r)?;
        match &r.op {
            Op::Put { kind, value, expires_at_ms } => {
                pk.push(key);
                pv.push(value.as_ref());
                pt.push(kind.name());
                pe.push(expires_at_ms.map(|e| e as i64));
                pver.push(r.version as i64);
            }
            Op::Delete => {
                dk.push(key);
                dver.push(r.version as i64);
            }
        }
    }
    let mut changed = 0;
    if !pk.is_empty() {
        let sql = format!(
            "INSERT INTO {table} AS t (key, value, type, expires_at, version, updated_at)
             SELECT k, v, ty, CASE WHEN e IS NULL THEN NULL ELSE to_timestamp(e / 1000.0) END, ver, now()
             FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int8[], $5::int8[]) AS u(k, v, ty, e, ver)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, type = EXCLUDED.type,
                expires_at = EXCLUDED.expires_at, version = EXCLUDED.version, updated_at = now()
             WHERE t.version < EXCLUDED.version"
        );
        changed += tx.execute(&sql, &[&pk, &pv, &pt, &pe, &pver]).await?;
    }
    if !dk.is_empty() {
        let sql = format!(
            "DELETE FROM {table} AS t USING unnest($1::text[], $2::int8[]) AS d(k, ver)
             WHERE t.key = d.k AND t.version < d.ver"
        );
        changed += tx.execute(&sql, &[&dk, &dver]).await?;
    }
    Ok(changed)
}

/// Records a write Postgres refused, with the reason, for an operator to see and replay.
pub async fn dead_letter(client: &Client, table: &str, r: &Record, error: &str) -> Result<(), PgError> {
    let (op, value, kind, exp) = match &r.op {
        Op::Put { kind, value, expires_at_ms } => {
            ("put", Some(value.as_ref()), Some(kind.name()), expires_at_ms.map(|e| e as i64))
        }
        Op::Delete => ("delete", None, None, None),
    };
    let sql = format!(
        "INSERT INTO {} (key, op, value, type, expires_at, version, error)
         VALUES ($1, $2, $3, $4, CASE WHEN $5::int8 IS NULL THEN NULL ELSE to_timestamp($5::int8 / 1000.0) END, $6, $7)",
        dead_letter_table(table)
    );
    client.execute(&sql, &[&r.key.as_ref(), &op, &value, &kind, &exp, &(r.version as i64), &error]).await?;
    Ok(())
}

/// A row loaded by read-through.
pub struct Loaded {
    /// Redis type.
    pub kind: Kind,
    /// Encoded value.
    pub value: Vec<u8>,
    /// Absolute expiry, unix ms.
    pub expires_at_ms: Option<u64>,
}

/// Loads `key` unless absent or expired.
pub async fn load(client: &Client, table: &str, key: &str) -> Result<Option<Loaded>, PgError> {
    let sql = format!(
        "SELECT value, type, round(extract(epoch FROM expires_at) * 1000)::int8 FROM {table}
         WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())"
    );
    let Some(row) = client.query_opt(&sql, &[&key]).await? else {
        return Ok(None);
    };
    let kind: String = row.get(1);
    let Some(kind) = Kind::parse(&kind) else {
        return Err(PgError::Content(format!("unknown type '{kind}' in column type")));
    };
    let value: Option<Vec<u8>> = row.get(0);
    let exp: Option<i64> = row.get(2);
    Ok(Some(Loaded { kind, value: value.unwrap_or_default(), expires_at_ms: exp.map(|e| e.max(1) as u64) }))
}

/// Deletes rows whose TTL has passed (keys that expired while nobody touched them).
pub async fn delete_expired(client: &Client, table: &str) -> Result<u64, PgError> {
    Ok(client.execute(&format!("DELETE FROM {table} WHERE expires_at <= now()"), &[]).await?)
}
