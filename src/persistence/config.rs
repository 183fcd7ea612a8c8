//! Configuration of backed key spaces: which keys go to which table, and how.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// How writes to a key space reach Postgres.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Queued durably on local disk, coalesced per key and written in batches later.
    WriteBehind,
    /// As write-behind, but the client's reply waits until Postgres committed the write.
    WriteThrough,
    /// Never written (a read-through-only key space).
    None,
}

/// fsync policy of the durable queue, as Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before the reply of every write batch.
    Always,
    /// fsync once a second in the background (default).
    EverySec,
    /// Leave it to the operating system.
    No,
}

impl FsyncPolicy {
    /// Parses `always`, `everysec` or `no`.
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Some(FsyncPolicy::Always),
            "everysec" => Some(FsyncPolicy::EverySec),
            "no" => Some(FsyncPolicy::No),
            _ => None,
        }
    }
}

/// One key space backed by a Postgres table (a `[[keyspace]]` table in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct KeyspaceConfig {
    /// Name, for INFO, logs and the queue's directory.
    pub name: String,
    /// Glob pattern of the keys it holds, e.g. `session:*` (first matching key space wins).
    pub pattern: String,
    /// Postgres table (created if missing); optionally schema-qualified.
    pub table: String,
    /// `write-behind`, `write-through` or `none`.
    pub mode: WriteMode,
    /// Load a key missing from memory from Postgres.
    pub read_through: bool,
    /// How long a key's writes are coalesced before being written, in milliseconds.
    pub write_delay_ms: u64,
    /// Most rows in one batch.
    pub batch_size: usize,
    /// Most batches in flight at once.
    pub max_inflight_batches: usize,
    /// Bound of the durable queue on disk; writes are refused with TRYAGAIN beyond it.
    #[serde(deserialize_with = "crate::config::de_size")]
    pub queue_max_bytes: u64,
    /// Most rows written per second, so a backlog drains without flattening Postgres.
    pub max_rows_per_sec: u64,
    /// How long an absent key is remembered, in milliseconds, so misses do not storm Postgres.
    pub negative_ttl_ms: u64,
    /// In a grid: `sync` or `async` replication of this key space's writes; unset, the node's
    /// `cluster-replication`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::config::ReplicationMode>,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        KeyspaceConfig {
            name: String::new(),
            pattern: String::new(),
            table: String::new(),
            mode: WriteMode::WriteBehind,
            read_through: false,
            write_delay_ms: 1000,
            batch_size: 500,
            max_inflight_batches: 4,
            queue_max_bytes: 1024 * 1024 * 1024,
            max_rows_per_sec: 100_000,
            negative_ttl_ms: 5000,
            replication: None,
        }
    }
}

/// Whether `name` is safe to splice into SQL as an identifier (letters, digits, `_`, one `.`).
pub fn valid_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 60
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        })
}

/// Checks the persistence options of `config`: (option name, reason) on error.
pub fn validate(config: &Config) -> Result<(), (&'static str, String)> {
    if FsyncPolicy::parse(&config.writebehind_fsync).is_none() {
        return Err(("writebehind-fsync", "must be always, everysec or no".into()));
    }
    let mut names = std::collections::HashSet::new();
    for ks in &config.keyspace {
        if ks.name.is_empty() || !ks.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err((
                "keyspace.name",
                format!("'{}' must be non-empty letters, digits, - or _", ks.name),
            ));
        }
        if !names.insert(ks.name.clone()) {
            return Err(("keyspace.name", format!("'{}' is configured twice", ks.name)));
        }
        if ks.pattern.is_empty() {
            return Err(("keyspace.pattern", format!("key space '{}' needs a key pattern", ks.name)));
        }
        if !valid_table_name(&ks.table) {
            return Err(("keyspace.table", format!("'{}' is not a plain table name", ks.table)));
        }
        if !(1..=10_000).contains(&ks.batch_size) {
            return Err(("keyspace.batch-size", "must be between 1 and 10000".into()));
        }
        if !(1..=64).contains(&ks.max_inflight_batches) {
            return Err(("keyspace.max-inflight-batches", "must be between 1 and 64".into()));
        }
        if ks.max_rows_per_sec == 0 {
            return Err(("keyspace.max-rows-per-sec", "must be at least 1".into()));
        }
        if ks.queue_max_bytes < 4096 {
            return Err(("keyspace.queue-max-bytes", "must be at least 4kb".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn keyspaces_come_from_toml_and_the_url_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[keyspace]]\nname = \"sessions\"\npattern = \"session:*\"\ntable = \"sessions\"\n\
             mode = \"write-through\"\nread-through = true\nqueue-max-bytes = \"64mb\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("CACHEGRID_POSTGRES_URL", "host=127.0.0.1 dbname=test");
            let c = Config::load(Some(&file), std::collections::BTreeMap::<String, String>::new()).unwrap();
            assert_eq!(c.postgres_url.as_deref(), Some("host=127.0.0.1 dbname=test"));
            let ks = &c.keyspace[0];
            assert_eq!(
                (ks.name.as_str(), ks.mode, ks.read_through),
                ("sessions", WriteMode::WriteThrough, true)
            );
            assert_eq!((ks.write_delay_ms, ks.batch_size, ks.queue_max_bytes), (1000, 500, 64 << 20));
            Ok(())
        });
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(valid_table_name("sessions"));
        assert!(valid_table_name("app.sessions_2"));
        assert!(!valid_table_name("x; drop table y"));
        assert!(!valid_table_name("a.b.c"));
        assert!(!valid_table_name("1abc"));
    }
}
