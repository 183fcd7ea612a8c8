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
    /// Serve Redis Cluster's protocol (a grid of one until others join).
    #[arg(long = "cluster-enabled")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cluster-enabled")]
    cluster_enabled: Option<bool>,
    /// Failure zone of this node (rack, availability zone).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
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
    }
}

fn run_node(config: Config) -> anyhow::Result<()> {
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
    rt.block_on(async move {
        info!(version = env!("CARGO_PKG_VERSION"), threads = config.threads, "starting cachegrid node");
        let node = Node::start(config).await?;
        let server = node.server.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("signal received, shutting down");
            server.shutdown.cancel();
        });
        node.wait().await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
