//! The `cachegrid` binary: `cachegrid node` runs a node.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tracing::info;

use cachegrid::config::Config;
use cachegrid::node::Node;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A Redis-compatible session store and cache grid.
#[derive(Parser)]
#[command(name = "cachegrid", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cache node.
    Node(NodeArgs),
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML.
    Config(NodeArgs),
    /// Show the grid: every node with its zone, roles, slots, keys, memory, replica lag and
    /// write-behind queue (from a node's admin port).
    Status(AdminArgs),
    /// Exit 0 if a node's admin port answers /health, else 1 (for container health checks).
    Health(AdminArgs),
    /// Take a node out of the grid (the one whose admin port is asked, or --node ID); its slots
    /// move to the other members.
    Leave(LeaveArgs),
    /// Follow the slots moving after a join or a leave with a progress bar, until the grid has
    /// settled. Moves start by themselves when membership changes: this starts nothing.
    Rebalance(RebalanceArgs),
    /// List or replay the dead letters of a Postgres-backed key space: writes Postgres refused
    /// for their content (a constraint, a value too large), kept in `<table>_dead_letters`.
    Deadletters(DeadLettersArgs),
}

/// `cachegrid deadletters list|replay`.
#[derive(Args)]
struct DeadLettersArgs {
    #[command(subcommand)]
    action: DeadLettersAction,
}

#[derive(Subcommand)]
enum DeadLettersAction {
    /// Show the oldest dead letters: id, key, operation, size, version, when and why it failed.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Key space name (as in `[[keyspace]] name`).
        keyspace: String,
        /// Most dead letters shown (at most 10000).
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Write dead letters to Postgres again, once their cause is fixed. Each is written with
    /// its original version, so it never overwrites a newer row; it is removed once written,
    /// and one refused again stays with the new error (exit status 1).
    Replay {
        #[command(flatten)]
        admin: AdminArgs,
        /// Key space name (as in `[[keyspace]] name`).
        keyspace: String,
        /// Ids of the dead letters to replay (from `cachegrid deadletters list`).
        ids: Vec<i64>,
        /// Replay every dead letter of the key space (the oldest 10000 per run).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Flags of `cachegrid rebalance`.
#[derive(Args)]
struct RebalanceArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Give up (exit 1) if slots are still moving after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

/// Flags of `cachegrid leave`.
#[derive(Args)]
struct LeaveArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Id of the member to remove (40 hex characters); default: the node asked.
    #[arg(long)]
    node: Option<String>,
    /// Remove the member at once without moving its keys: for a node that is gone for good.
    #[arg(long)]
    force: bool,
}

/// Which node's admin port to ask.
#[derive(Args)]
struct AdminArgs {
    /// Admin address HOST:PORT; default: the one the node configuration (file, CACHEGRID_*
    /// variables) gives, on loopback for a wildcard bind.
    #[arg(long)]
    admin: Option<String>,
    /// TOML configuration file to derive the admin address from.
    #[arg(long, short, env = "CACHEGRID_CONFIG")]
    config: Option<PathBuf>,
}

/// Flags of `cachegrid node`; each overrides the config file and `CACHEGRID_*` variables.
#[derive(Args, Serialize)]
struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "CACHEGRID_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<String>,
    /// Client port (Redis protocol); 0 picks a free one.
    #[arg(long, short)]
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    /// Worker threads; 0 means one per core.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
    /// Memory limit, e.g. 100mb; 0 for none.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    maxmemory: Option<String>,
    /// Eviction policy at the memory limit.
    #[arg(long = "maxmemory-policy")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "maxmemory-policy")]
    maxmemory_policy: Option<String>,
    /// Most connected clients.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    maxclients: Option<usize>,
    /// Password clients must AUTH with.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    requirepass: Option<String>,
    /// `yes` or `no`: refuse non-loopback clients while the default user has no password.
    #[arg(long, value_parser = ["yes", "no"])]
    #[serde(
        skip_serializing_if = "Option::is_none",
        rename = "protected-mode",
        serialize_with = "ser_yes_no"
    )]
    protected_mode: Option<String>,
    /// Directory for the node's files.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    /// Log filter (e.g. info, cachegrid=debug).
    #[arg(long = "log-level")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "log-level")]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long = "log-format")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "log-format")]
    log_format: Option<String>,
    /// Admin HTTP port (metrics, health, dashboard); default: client port + 1000.
    #[arg(long = "admin-port")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "admin-port")]
    admin_port: Option<u16>,
    /// Address the admin port listens on; default: --bind.
    #[arg(long = "admin-bind")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "admin-bind")]
    admin_bind: Option<String>,
    /// Seconds to keep serving after SIGTERM while /ready answers 503.
    #[arg(long = "shutdown-drain")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "shutdown-drain")]
    shutdown_drain: Option<u64>,
    /// Serve Redis Cluster's protocol (a grid of one until others join).
    #[arg(long = "cluster-enabled")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-enabled")]
    cluster_enabled: Option<bool>,
    /// Failure zone of this node (rack, availability zone).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    /// A member to join (HOST:PORT of its client port, or HOST:PORT@BUSPORT); repeat for more
    /// seeds. Turns cluster mode on.
    #[arg(long = "join")]
    #[serde(skip_serializing_if = "Vec::is_empty", rename = "cluster-join")]
    join: Vec<String>,
    /// Milliseconds a silent member waits before it is failed over (default 1000).
    #[arg(long = "cluster-node-timeout")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-node-timeout")]
    cluster_node_timeout: Option<u64>,
    /// Stand for election 1.1 s after the Raft leader went silent instead of 3-4 s (default false).
    #[arg(long = "cluster-fast-election")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-fast-election")]
    cluster_fast_election: Option<bool>,
    /// Replication of writes in a grid: async (default) or sync.
    #[arg(long = "cluster-replication")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-replication")]
    cluster_replication: Option<String>,
    /// Who may run DEBUG (fault injection): no (default), yes, or local (loopback clients).
    #[arg(long = "enable-debug-command", value_parser = ["no", "yes", "local"])]
    #[serde(skip_serializing_if = "Option::is_none", rename = "enable-debug-command")]
    enable_debug_command: Option<String>,
    /// Cluster bus port; default: client port + 10000.
    #[arg(long = "cluster-port")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-port")]
    cluster_port: Option<u16>,
    /// TLS client port; 0 picks a free one.
    #[arg(long = "tls-port")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-port")]
    tls_port: Option<u16>,
    /// `yes`: serve clients on --tls-port only (no plaintext client port).
    #[arg(long = "tls-only", value_parser = ["yes", "no"])]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-only", serialize_with = "ser_yes_no")]
    tls_only: Option<String>,
    /// PEM certificate of this node (TLS port and cluster bus).
    #[arg(long = "tls-cert-file")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-cert-file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long = "tls-key-file")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-key-file")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that clients and cluster peers are verified against.
    #[arg(long = "tls-ca-cert-file")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-ca-cert-file")]
    tls_ca_cert_file: Option<PathBuf>,
    /// Client certificates on the TLS port: yes (required), optional or no.
    #[arg(long = "tls-auth-clients", value_parser = ["yes", "optional", "no"])]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-auth-clients")]
    tls_auth_clients: Option<String>,
    /// `yes`: mutual TLS on the cluster bus.
    #[arg(long = "tls-cluster", value_parser = ["yes", "no"])]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-cluster", serialize_with = "ser_yes_no")]
    tls_cluster: Option<String>,
    /// TLS versions accepted, e.g. "TLSv1.2 TLSv1.3".
    #[arg(long = "tls-protocols")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "tls-protocols")]
    tls_protocols: Option<String>,
}

fn init_logging(config: &Config) {
    // openraft narrates every election and membership step at info: keep it to warnings
    // unless the operator asks for it by name.
    let level = if config.log_level.contains("openraft") {
        config.log_level.clone()
    } else {
        format!("{},openraft=warn", config.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "jemalloc")]
    cachegrid::store::memory::use_allocator_stats();
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => {
            let config = Config::load(args.config.as_deref(), &args).context("invalid configuration")?;
            init_logging(&config);
            run_node(config)
        }
        Command::Config(args) => {
            let config = Config::load(args.config.as_deref(), &args).context("invalid configuration")?;
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Status(args) => admin_command(args, |addr| async move {
            print!("{}", cachegrid::admin::cli::status(&addr).await?);
            Ok(())
        }),
        Command::Leave(args) => admin_command(args.admin, |addr| async move {
            let epoch = cachegrid::admin::cli::leave(&addr, args.node.as_deref(), args.force).await?;
            eprintln!("leave committed at slot map epoch {epoch}");
            if args.node.is_none() && !args.force {
                // The asked node is the leaver: follow its keys until it holds none.
                cachegrid::admin::cli::wait_until_left(&addr, std::time::Duration::from_secs(3600)).await?;
            }
            println!("left the grid");
            Ok(())
        }),
        Command::Rebalance(args) => admin_command(args.admin, |addr| async move {
            let limit = std::time::Duration::from_secs(args.timeout);
            print!("{}", cachegrid::admin::cli::rebalance(&addr, limit).await?);
            Ok(())
        }),
        Command::Deadletters(DeadLettersArgs { action }) => match action {
            DeadLettersAction::List { admin, keyspace, count } => admin_command(admin, |addr| async move {
                print!("{}", cachegrid::admin::cli::dead_letters(&addr, &keyspace, count).await?);
                Ok(())
            }),
            DeadLettersAction::Replay { admin, keyspace, ids, all } => {
                admin_command(admin, |addr| async move {
                    print!(
                        "{}",
                        cachegrid::admin::cli::replay_dead_letters(&addr, &keyspace, &ids, all).await?
                    );
                    Ok(())
                })
            }
        },
        Command::Health(args) => admin_command(args, |addr| async move {
            cachegrid::admin::cli::health(&addr).await?;
            println!("ok");
            Ok(())
        }),
    }
}

/// Runs an admin subcommand against the admin address `args` names or the config implies.
fn admin_command<F, Fut>(args: AdminArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let addr = match args.admin {
        Some(a) => a,
        None => {
            let config =
                Config::load(args.config.as_deref(), std::collections::BTreeMap::<String, String>::new())
                    .context("invalid configuration")?;
            cachegrid::admin::cli::default_admin_addr(&config)?
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Err(e) = rt.block_on(f(addr)) {
        // An operator's error, not a crash: one line, no backtrace, exit status 1.
        eprintln!("cachegrid: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Descriptors the node needs besides its clients' (listeners, the bus, files, Postgres), as
/// Redis reserves 32.
const RESERVED_FDS: u64 = 128;

/// Raises the soft open-files limit so `maxclients` connections fit, as Redis does at start; a
/// hard limit too low for them is reported, not fatal (the clients past it are refused).
fn raise_open_files_limit(maxclients: usize) {
    let wanted = maxclients as u64 + RESERVED_FDS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            maxclients,
            "the open files limit is below maxclients + {RESERVED_FDS}: raise the hard limit (ulimit -Hn) to accept every client"
        ),
        Ok(got) => tracing::debug!(limit = got, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
}

fn run_node(config: Config) -> anyhow::Result<()> {
    // Failpoints (a `failpoints` build only): FAILPOINTS applies at start.
    cachegrid::faults::setup().map_err(anyhow::Error::msg)?;
    let mut rt = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if config.threads > 1 {
            b.worker_threads(config.threads);
        }
        b
    };
    let rt = rt.enable_all().build().context("cannot start the runtime")?;
    raise_open_files_limit(config.maxclients);
    let config_drain = config.shutdown_drain;
    rt.block_on(async move {
        info!(version = env!("CARGO_PKG_VERSION"), threads = config.threads, "starting cachegrid node");
        // Handlers first: a SIGTERM that arrives while the node starts must not kill it outright.
        let mut signals = Signals::new()?;
        let node = Node::start(config).await?;
        let server = node.server.clone();
        let drain = config_drain;
        tokio::spawn(async move {
            signals.recv().await;
            server.draining.store(true, std::sync::atomic::Ordering::Relaxed);
            if drain > 0 {
                // Load balancers see /ready fail and move clients away; a second signal cuts it short.
                info!(seconds = drain, "signal received, draining: /ready answers 503 until shutdown");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(drain)) => {}
                    _ = signals.recv() => {}
                }
            }
            info!("signal received, shutting down");
            server.shutdown.cancel();
        });
        node.wait().await
    })
}

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `--protected-mode yes|no` (Redis's spelling) as the config's boolean.
fn ser_yes_no<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(v.as_deref() == Some("yes"))
}
