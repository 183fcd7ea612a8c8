//! Node configuration: defaults, then a TOML file, then `CACHEGRID_*` environment variables,
//! then command-line flags, each overriding the one before. Option names are Redis's where
//! Redis has the option, so operators can carry their knowledge over.

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

/// How a slot's primary replicates a write (see `cluster-replication`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Answer at once; replicas catch up (a write acknowledged just before its primary dies
    /// can be lost).
    #[default]
    Async,
    /// Answer once every replica of the slot has applied the write: a failover loses no
    /// acknowledged write.
    Sync,
}

/// Who may run the DEBUG command (`enable-debug-command`, Redis 7's values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DebugCommand {
    /// Nobody.
    #[default]
    No,
    /// Every client.
    Yes,
    /// Clients on loopback only.
    Local,
}

/// Everything a node can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Config {
    /// Address the client port listens on.
    pub bind: String,
    /// Client port (Redis protocol). 0 picks a free port.
    pub port: u16,
    /// Worker threads serving clients; 0 means one per core.
    pub threads: usize,
    /// Lock shards of the keyspace (a power of two).
    pub shards: usize,
    /// Most connected clients (`maxclients`).
    pub maxclients: usize,
    /// Close a client idle this many seconds; 0 never (`timeout`).
    pub timeout: u64,
    /// Longest bulk string a client may send (`proto-max-bulk-len`).
    #[serde(deserialize_with = "de_size")]
    pub proto_max_bulk_len: u64,
    /// Most arguments in one command (`proto-max-multibulk-len`; Redis has no name for it).
    pub proto_max_multibulk_len: u64,
    /// Largest unparsed input a client may accumulate (`client-query-buffer-limit`).
    #[serde(deserialize_with = "de_size")]
    pub client_query_buffer_limit: u64,
    /// Output bounds per client class, in Redis's syntax (`client-output-buffer-limit`): a
    /// subscriber whose pending messages pass the `pubsub` hard limit, or its soft limit for
    /// longer than its seconds, is disconnected.
    pub client_output_buffer_limit: String,
    /// Memory limit for data; 0 means none (`maxmemory`).
    #[serde(deserialize_with = "de_size")]
    pub maxmemory: u64,
    /// What to do at the limit (`maxmemory-policy`).
    pub maxmemory_policy: String,
    /// Keys sampled per eviction (`maxmemory-samples`).
    pub maxmemory_samples: u64,
    /// LFU counter growth (`lfu-log-factor`).
    pub lfu_log_factor: u64,
    /// LFU decay period in minutes (`lfu-decay-time`).
    pub lfu_decay_time: u64,
    /// Background task frequency per second: active expiry and memory refresh (`hz`).
    pub hz: u64,
    /// Most fields of a compact hash (`hash-max-listpack-entries`).
    pub hash_max_listpack_entries: u64,
    /// Longest value of a compact hash (`hash-max-listpack-value`).
    pub hash_max_listpack_value: u64,
    /// Password of the default user; none means no AUTH needed (`requirepass`).
    pub requirepass: Option<String>,
    /// Directory for the node's files.
    pub dir: PathBuf,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `cachegrid=debug`).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Admin HTTP port (metrics, health, cluster JSON, dashboard); unset means the client port
    /// + 1000 (or a free port when `port` is 0).
    pub admin_port: Option<u16>,
    /// Address the admin port listens on; unset means the same as `bind`.
    pub admin_bind: Option<String>,
    /// Seconds a node keeps serving after SIGTERM with `/ready` answering 503, so load
    /// balancers stop sending clients before it closes; 0 stops at once.
    pub shutdown_drain: u64,
    /// Postgres connection string for backed key spaces (`CACHEGRID_POSTGRES_URL`); none
    /// keeps the node a plain in-memory cache.
    pub postgres_url: Option<String>,
    /// fsync policy of the write-behind queue on disk: `always`, `everysec` or `no`, as
    /// Redis's `appendfsync`.
    pub writebehind_fsync: String,
    /// Key spaces backed by Postgres (`[[keyspace]]` tables in TOML).
    pub keyspace: Vec<crate::persistence::KeyspaceConfig>,
    /// Serve Redis Cluster's protocol (slots, MOVED, CLUSTER commands) as a grid member; off: a
    /// standalone node.
    pub cluster_enabled: bool,
    /// Failure zone of this node (rack, availability zone): replicas avoid their primary's.
    pub zone: String,
    /// Replicas per slot (R).
    pub cluster_replicas: usize,
    /// Cluster bus port; 0 means the client port + 10000, as in Redis.
    pub cluster_port: u16,
    /// Address announced to clients and peers; empty means the bind address.
    pub cluster_announce_ip: String,
    /// Members to ask for admission when this node first starts (`HOST:PORT` of a member's
    /// client port, or `HOST:PORT@BUSPORT`); empty: bootstrap a grid of one. Setting it turns
    /// cluster mode on. A restarted member rejoins through its saved Raft state instead.
    pub cluster_join: Vec<String>,
    /// Milliseconds a member may stop answering the Raft leader before it is failed over
    /// (removed, its slots given to their replicas). A member cut off from the leader stops
    /// serving its slots after half of this, so two primaries never serve one slot.
    pub cluster_node_timeout: u64,
    /// A follower stands for election as soon as the Raft leader has been silent for 1.1 s
    /// (plus a jitter), instead of openraft's own timer (about 3-4 s): a dead leader is
    /// replaced in about 1.2 s. Off by default until measured further (docs/BENCHMARKS.md,
    /// "Faster elections"). Every member of a grid should have the same setting.
    pub cluster_fast_election: bool,
    /// How a slot's primary replicates writes of keys outside any `[[keyspace]]` with its own
    /// `replication`: `async` (answer at once, replicas catch up) or `sync` (answer once every
    /// replica of the slot has applied the write).
    pub cluster_replication: ReplicationMode,
    /// Milliseconds a `sync` write waits for its replicas; past it the client is told the
    /// write is applied on the primary but its outcome unknown.
    pub cluster_replication_timeout: u64,
    /// Refuse non-loopback clients while the `default` user has no password
    /// (`protected-mode`, on by default as in Redis).
    pub protected_mode: bool,
    /// ACL users, one per entry in Redis's ACL file syntax without the leading `user`
    /// (`"alice on >secret ~session:* +@read +@write"`); applied after `requirepass`.
    pub acl: Vec<String>,
    /// TLS client port (`tls-port`), serving the same commands as `port` over TLS; unset: no
    /// TLS port, 0 picks a free one.
    pub tls_port: Option<u16>,
    /// Serve clients on `tls-port` only, with no plaintext client port (Redis says `port 0`
    /// for this; here `port = 0` picks a free port). The cluster bus and admin port defaults
    /// then count from `tls-port`.
    pub tls_only: bool,
    /// PEM certificate (chain) of this node (`tls-cert-file`), for the TLS port and the
    /// cluster bus.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls-cert-file` (`tls-key-file`; unencrypted PKCS#8, PKCS#1 or
    /// SEC1). Its contents are never logged.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates and cluster peers are verified against
    /// (`tls-ca-cert-file`).
    pub tls_ca_cert_file: Option<PathBuf>,
    /// Client certificates on the TLS port (`tls-auth-clients`): `yes` requires one signed by
    /// `tls-ca-cert-file`, `optional` verifies one when presented, `no` asks for none.
    pub tls_auth_clients: crate::tls::TlsAuthClients,
    /// Mutual TLS on the cluster bus (`tls-cluster`): peers present `tls-cert-file` and must
    /// carry a certificate signed by `tls-ca-cert-file`. Every member needs the same setting.
    pub tls_cluster: bool,
    /// TLS versions accepted, space-separated (`tls-protocols`): `TLSv1.2`, `TLSv1.3`.
    pub tls_protocols: String,
    /// Who may run DEBUG (`enable-debug-command`, as Redis 7): `no`, `yes`, or `local`
    /// (loopback clients only). DEBUG injects faults (SLEEP, cluster bus partitions and delays,
    /// failpoints) for the fault-injection tests: leave it `no` in production.
    pub enable_debug_command: DebugCommand,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 7379,
            threads: 1,
            shards: 64,
            maxclients: 10000,
            timeout: 0,
            proto_max_bulk_len: 512 * 1024 * 1024,
            proto_max_multibulk_len: 1024 * 1024,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            client_output_buffer_limit: DEFAULT_OUTPUT_BUFFER_LIMIT.into(),
            maxmemory: 0,
            maxmemory_policy: "noeviction".into(),
            maxmemory_samples: 5,
            lfu_log_factor: 10,
            lfu_decay_time: 1,
            hz: 10,
            hash_max_listpack_entries: 128,
            hash_max_listpack_value: 64,
            requirepass: None,
            dir: PathBuf::from("."),
            log_level: "info".into(),
            log_format: "text".into(),
            admin_port: None,
            admin_bind: None,
            shutdown_drain: 0,
            postgres_url: None,
            writebehind_fsync: "everysec".into(),
            keyspace: Vec::new(),
            cluster_enabled: false,
            zone: "default".into(),
            cluster_replicas: 1,
            cluster_port: 0,
            cluster_announce_ip: String::new(),
            cluster_join: Vec::new(),
            cluster_node_timeout: 1000,
            cluster_fast_election: false,
            cluster_replication: ReplicationMode::Async,
            cluster_replication_timeout: 1000,
            protected_mode: true,
            acl: Vec::new(),
            tls_port: None,
            tls_only: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_cert_file: None,
            tls_auth_clients: crate::tls::TlsAuthClients::Yes,
            tls_cluster: false,
            tls_protocols: "TLSv1.2 TLSv1.3".into(),
            enable_debug_command: DebugCommand::No,
        }
    }
}

/// Redis's default `client-output-buffer-limit`.
pub const DEFAULT_OUTPUT_BUFFER_LIMIT: &str = "normal 0 0 0 replica 256mb 64mb 60 pubsub 32mb 8mb 60";

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error(transparent)]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("invalid value for '{name}': {reason}")]
    Invalid {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Figment's type errors quote the value; for options that hold passwords, name the option
/// without quoting it, so a typo never prints a secret.
fn redact_secrets(e: figment::Error) -> ConfigError {
    for err in e.clone() {
        let secret = err.path.iter().find_map(|p| ["requirepass", "acl"].into_iter().find(|s| s == p));
        if let Some(name) = secret {
            return ConfigError::Invalid {
                name,
                reason: "wrong type (the value is not shown: it may hold a password)".into(),
            };
        }
    }
    ConfigError::Load(Box::new(e))
}

impl Config {
    /// Loads defaults, `file` (if any), `CACHEGRID_*` variables and then `overrides` (flags).
    pub fn load(file: Option<&std::path::Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            fig = fig.merge(Toml::file_exact(file));
        }
        let config: Config = fig
            // CACHEGRID_CONFIG names the file (a flag's variable), not an option.
            .merge(
                Env::prefixed("CACHEGRID_").ignore(&["config"]).map(|k| k.as_str().replace('_', "-").into()),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(redact_secrets)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether this node is a grid member: `cluster-enabled`, or seeds to join.
    pub fn cluster_mode(&self) -> bool {
        self.cluster_enabled || !self.cluster_join.is_empty()
    }

    /// Checks ranges the type system does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if crate::store::EvictionPolicy::parse(&self.maxmemory_policy).is_none() {
            return Err(ConfigError::Invalid {
                name: "maxmemory-policy",
                reason: format!("unknown policy '{}'", self.maxmemory_policy),
            });
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid { name: "log-format", reason: "must be text or json".into() });
        }
        if let Err(e) = crate::acl::Acl::from_config(self) {
            return Err(ConfigError::Invalid { name: "acl", reason: e.to_string() });
        }
        if self.maxclients == 0 {
            return Err(ConfigError::Invalid { name: "maxclients", reason: "must be at least 1".into() });
        }
        if let Err(reason) = crate::server::pubsub::OutputLimits::parse(&self.client_output_buffer_limit) {
            return Err(ConfigError::Invalid { name: "client-output-buffer-limit", reason });
        }
        if self.cluster_replicas > 5 {
            return Err(ConfigError::Invalid {
                name: "cluster-replicas",
                reason: "must be between 0 and 5".into(),
            });
        }
        if self.zone.is_empty() || self.zone.len() > 64 || self.zone.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::Invalid {
                name: "zone",
                reason: "must be 1 to 64 characters without spaces".into(),
            });
        }
        if !(200..=600_000).contains(&self.cluster_node_timeout) {
            return Err(ConfigError::Invalid {
                name: "cluster-node-timeout",
                reason: "must be between 200 and 600000 milliseconds".into(),
            });
        }
        if !(10..=600_000).contains(&self.cluster_replication_timeout) {
            return Err(ConfigError::Invalid {
                name: "cluster-replication-timeout",
                reason: "must be between 10 and 600000 milliseconds".into(),
            });
        }
        for seed in &self.cluster_join {
            if let Err(reason) = crate::cluster::consensus::seed_bus_address(seed) {
                return Err(ConfigError::Invalid { name: "cluster-join", reason });
            }
        }
        if !(1..=500).contains(&self.hz) {
            return Err(ConfigError::Invalid { name: "hz", reason: "must be between 1 and 500".into() });
        }
        if self.shutdown_drain > 3600 {
            return Err(ConfigError::Invalid {
                name: "shutdown-drain",
                reason: "must be at most 3600 seconds".into(),
            });
        }
        match crate::tls::validate(self) {
            Ok(()) => {}
            Err(crate::tls::TlsError::Option { option, reason }) => {
                return Err(ConfigError::Invalid { name: option, reason })
            }
            Err(e) => return Err(ConfigError::Invalid { name: "tls", reason: e.to_string() }),
        }
        self.admin_addr()?;
        crate::persistence::validate(self).map_err(|(name, reason)| ConfigError::Invalid { name, reason })?;
        Ok(())
    }

    /// The port other defaults count from: `port`, or `tls-port` with `tls-only`.
    pub fn client_port(&self) -> u16 {
        match (self.tls_only, self.tls_port) {
            (true, Some(p)) => p,
            _ => self.port,
        }
    }

    /// Where the admin HTTP port listens: `admin-bind` (or `bind`) and `admin-port` (or the
    /// client port + 1000; a free port when the client port is 0).
    pub fn admin_addr(&self) -> Result<(String, u16), ConfigError> {
        let bind = self.admin_bind.clone().unwrap_or_else(|| self.bind.clone());
        let client = self.client_port();
        let port = match self.admin_port {
            Some(p) => p,
            None if client == 0 => 0,
            None => client.checked_add(1000).ok_or(ConfigError::Invalid {
                name: "admin-port",
                reason: format!("client port {client} + 1000 is past 65535: set admin-port"),
            })?,
        };
        Ok((bind, port))
    }
}

/// Parses a memory size the way Redis does: `100`, `1k` (1000), `1kb` (1024), `5mb`, `1gb`.
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// Deserializes a size given as a number or with Redis's units (`"1gb"`).
pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_size(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid size '{s}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_redis_units() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1k"), Some(1000));
        assert_eq!(parse_size("1kb"), Some(1024));
        assert_eq!(parse_size("2GB"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn flags_override_environment_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "port = 7001\nmaxmemory = \"1mb\"\nhz = 20\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("CACHEGRID_PORT", "7002");
            jail.set_env("CACHEGRID_MAXMEMORY_POLICY", "allkeys-lru");
            #[derive(Serialize)]
            struct Flags {
                hz: u64,
            }
            let c = Config::load(Some(&file), Flags { hz: 30 }).unwrap();
            assert_eq!(c.port, 7002);
            assert_eq!(c.maxmemory, 1024 * 1024);
            assert_eq!(c.maxmemory_policy, "allkeys-lru");
            assert_eq!(c.hz, 30);
            Ok(())
        });
    }

    #[test]
    fn cluster_options_are_checked() {
        let ok = Config {
            cluster_enabled: true,
            zone: "eu-west-1a".into(),
            cluster_replicas: 2,
            ..Config::default()
        };
        assert!(ok.validate().is_ok());
        assert!(Config { zone: "".into(), ..ok.clone() }.validate().is_err());
        assert!(Config { zone: "a b".into(), ..ok.clone() }.validate().is_err());
        assert!(Config { cluster_replicas: 6, ..ok }.validate().is_err());
    }
}
