//! The server: the listener, connections, the client registry, background jobs (active
//! expiry, memory refresh) and shutdown. It owns the shared [`Server`] state that commands see.

pub mod client;
pub mod connection;
pub mod pubsub;
pub mod tracking;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use client::{ClientInfo, ClientRegistry, ClientState};

use crate::config::Config;
use crate::net::TcpListener;
use crate::protocol::Limits;
use crate::store::memory::MemoryGauge;
use crate::store::{EvictionPolicy, Keyspace};

/// Counters INFO stats reports.
#[derive(Default)]
pub struct ServerStats {
    /// Commands processed.
    pub commands: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused by maxclients.
    pub rejected: AtomicU64,
    /// Bytes read from clients.
    pub net_input: AtomicU64,
    /// Bytes written to clients.
    pub net_output: AtomicU64,
    /// Replies that were errors.
    pub error_replies: AtomicU64,
}

/// The node's shared state.
pub struct Server {
    /// The configuration as CONFIG GET shows it (CONFIG SET updates it).
    pub config: RwLock<Config>,
    /// All keys.
    pub keyspace: Keyspace,
    /// Connected clients.
    pub clients: ClientRegistry,
    /// Counters.
    pub stats: ServerStats,
    /// Memory in use, as the allocator reports it.
    pub memory: MemoryGauge,
    /// `maxmemory`, read on every write.
    pub maxmemory: AtomicU64,
    /// `proto-max-bulk-len`.
    pub proto_max_bulk_len: AtomicUsize,
    /// `proto-max-multibulk-len`.
    pub proto_max_multibulk_len: AtomicUsize,
    /// `client-query-buffer-limit`.
    pub query_buffer_limit: AtomicUsize,
    /// `maxclients`.
    pub maxclients: AtomicUsize,
    /// `timeout` in seconds.
    pub idle_timeout: AtomicU64,
    /// Monotonic start, for uptime.
    pub started: Instant,
    /// Random id of this run, as Redis's run_id.
    pub run_id: String,
    /// Fires when the node shuts down.
    pub shutdown: CancellationToken,
    /// Where the client port listens (the TLS port with `tls-only`).
    pub addr: RwLock<Option<SocketAddr>>,
    /// Where the TLS client port listens, when there is one.
    pub tls_addr: RwLock<Option<SocketAddr>>,
    /// CLIENT TRACKING state (also a keyspace change listener).
    pub tracking: Arc<tracking::Tracking>,
    /// Pub/Sub subscriptions.
    pub pubsub: pubsub::PubSub,
    /// Set when the node is about to stop or leave: it still serves, but the admin port's
    /// `/ready` answers 503 so orchestrators and load balancers move clients away first.
    pub draining: std::sync::atomic::AtomicBool,
    /// Calls, errors and sampled latency per command, for the admin port's `/metrics`.
    pub command_stats: crate::admin::stats::CommandStats,
    /// Postgres-backed key spaces, when configured (set once at start).
    pub persistence: std::sync::OnceLock<Arc<crate::persistence::Persistence>>,
    /// Cluster state; set at start when `cluster-enabled` (unset: a standalone node).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// This node's part in the grid's consensus, in cluster mode.
    pub consensus: std::sync::OnceLock<Arc<crate::cluster::Consensus>>,
    /// Replication of this node's slots to their replicas, in cluster mode (the admin port
    /// reads how far behind each replica is).
    pub replication: std::sync::OnceLock<Arc<crate::replication::Replication>>,
    /// The admin port, once it serves: peers ask for this node's status over the cluster bus.
    /// Weak, since the admin port holds the server.
    pub admin: std::sync::OnceLock<std::sync::Weak<crate::admin::Admin>>,
    /// ACL users (the `default` user carries `requirepass`).
    pub acl: crate::acl::Acl,
}

impl Server {
    /// Shared state for `config`.
    pub fn new(config: Config) -> Arc<Server> {
        let keyspace = Keyspace::new(config.shards);
        let policy = EvictionPolicy::parse(&config.maxmemory_policy).unwrap_or(EvictionPolicy::NoEviction);
        keyspace.settings.set_policy(policy);
        let s = &keyspace.settings;
        s.samples.store(config.maxmemory_samples as usize, Ordering::Relaxed);
        s.lfu_log_factor.store(config.lfu_log_factor as usize, Ordering::Relaxed);
        s.lfu_decay_time.store(config.lfu_decay_time as usize, Ordering::Relaxed);
        s.hash_max_entries.store(config.hash_max_listpack_entries as usize, Ordering::Relaxed);
        s.hash_max_value.store(config.hash_max_listpack_value as usize, Ordering::Relaxed);
        let run_id: String = {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            (0..40).map(|_| format!("{:x}", rng.gen_range(0..16))).collect()
        };
        let acl = crate::acl::Acl::from_config(&config).unwrap_or_else(|e| {
            // Fail closed: a node whose ACL cannot be applied lets nobody in.
            tracing::error!(error = %e, "invalid ACL configuration: the default user is off");
            crate::acl::Acl::locked()
        });
        let limits =
            Arc::new(pubsub::OutputLimits::parse(&config.client_output_buffer_limit).unwrap_or_else(|e| {
                tracing::error!(error = %e, "invalid client-output-buffer-limit: Redis's defaults apply");
                pubsub::OutputLimits::parse(crate::config::DEFAULT_OUTPUT_BUFFER_LIMIT)
                    .expect("valid default")
            }));
        let server = Server {
            acl,
            maxmemory: AtomicU64::new(config.maxmemory),
            proto_max_bulk_len: AtomicUsize::new(config.proto_max_bulk_len as usize),
            proto_max_multibulk_len: AtomicUsize::new(config.proto_max_multibulk_len as usize),
            query_buffer_limit: AtomicUsize::new(config.client_query_buffer_limit as usize),
            maxclients: AtomicUsize::new(config.maxclients),
            idle_timeout: AtomicU64::new(config.timeout),
            config: RwLock::new(config),
            keyspace,
            clients: ClientRegistry::default(),
            stats: ServerStats::default(),
            memory: MemoryGauge::default(),
            started: Instant::now(),
            run_id,
            shutdown: CancellationToken::new(),
            addr: RwLock::new(None),
            tls_addr: RwLock::new(None),
            tracking: Arc::new(tracking::Tracking::new(limits.clone())),
            pubsub: pubsub::PubSub::new(limits),
            draining: Default::default(),
            command_stats: Default::default(),
            persistence: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            consensus: std::sync::OnceLock::new(),
            replication: std::sync::OnceLock::new(),
            admin: std::sync::OnceLock::new(),
        };
        server.keyspace.add_listener(server.tracking.clone());
        server.memory.refresh(0);
        Arc::new(server)
    }

    /// The request limits in force.
    pub fn limits(&self, authenticated: bool) -> Limits {
        Limits {
            max_bulk_len: self.proto_max_bulk_len.load(Ordering::Relaxed),
            max_multibulk_len: self.proto_max_multibulk_len.load(Ordering::Relaxed),
            unauthenticated: !authenticated,
        }
    }

    /// Memory in use now, by the allocator's count.
    pub fn used_memory(&self) -> usize {
        self.memory.used(self.keyspace.dataset_bytes())
    }

    /// Makes room under maxmemory before a write that may grow memory, evicting by policy.
    /// False when the write must be refused (noeviction, or nothing left to evict).
    pub fn reserve_memory(&self) -> bool {
        let max = self.maxmemory.load(Ordering::Relaxed) as usize;
        if max == 0 {
            return true;
        }
        // Bounded so one write never spins: Redis too evicts in slices.
        for _ in 0..1024 {
            if self.used_memory() <= max {
                return true;
            }
            if !self.keyspace.evict_one() {
                return false;
            }
        }
        self.used_memory() <= max
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Binds the client port of `server` and serves until shutdown. Returns the bound address
/// through `bound` as soon as it is listening.
pub async fn serve(
    server: Arc<Server>,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = server.config.read().clone();
    // Certificates are read before anything listens: a bad file stops the node at once.
    let tls = crate::tls::load(&config).context("cannot set up TLS")?;
    let bind = config.bind.as_str();
    let plain = match config.tls_only {
        true => None,
        false => Some(
            TcpListener::bind((bind, config.port))
                .await
                .with_context(|| format!("cannot listen on {bind}:{}", config.port))?,
        ),
    };
    let secure = match (config.tls_port, tls.client) {
        (Some(port), Some(acceptor)) => {
            let listener = TcpListener::bind((bind, port))
                .await
                .with_context(|| format!("cannot listen on tls-port {bind}:{port}"))?;
            Some((listener, acceptor))
        }
        _ => None,
    };
    let tls_addr = secure.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let addr = match &plain {
        Some(l) => l.local_addr()?,
        None => tls_addr.expect("tls-only has a TLS listener"),
    };
    *server.addr.write() = Some(addr);
    *server.tls_addr.write() = tls_addr;
    if let Some(bus) = tls.bus {
        crate::cluster::bus::set_tls(bus);
    }
    crate::cluster::start(&server, addr).await.context("cannot start cluster mode")?;
    match tls_addr {
        Some(tls_addr) => info!(%addr, %tls_addr, "cachegrid node ready to accept connections"),
        None => info!(%addr, "cachegrid node ready to accept connections"),
    }
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tokio::spawn(background(server.clone()));
    if let Some((listener, acceptor)) = secure {
        let laddr = tls_addr.expect("bound above");
        tokio::spawn(accept_loop(server.clone(), listener, move |server, stream, peer| {
            connection::accept_tls(server, stream, peer, laddr, acceptor.clone())
        }));
    }
    match plain {
        Some(listener) => {
            accept_loop(server.clone(), listener, move |server, stream, peer| {
                connection::accept(server, stream, peer, addr)
            })
            .await
        }
        None => server.shutdown.cancelled().await,
    }
    info!("shutting down: closing client connections");
    server.clients.kill_all();
    // Give connection tasks a moment to flush their last replies.
    for _ in 0..50 {
        if server.clients.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    info!("bye");
    Ok(())
}

/// Accepts connections on `listener` until shutdown, handing each to `accept`.
async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    accept: impl Fn(Arc<Server>, crate::net::TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(server.clone(), stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Redis's `serverCron` jobs: active expiry and memory statistics, `hz` times a second.
async fn background(server: Arc<Server>) {
    loop {
        let hz = server.config.read().hz.max(1);
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(1000 / hz)) => {}
        }
        server.memory.refresh(server.keyspace.dataset_bytes());
        // Like Redis's active expire cycle: keep going while a quarter of what we look at
        // has expired, within a time budget of a quarter of the period.
        let budget = Duration::from_millis(250 / hz);
        let start = Instant::now();
        loop {
            let (checked, expired) = server.keyspace.active_expire(4096);
            if checked == 0 || expired * 4 < checked || start.elapsed() > budget {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Enforce maxmemory after CONFIG SET lowered it, as Redis does.
        if server.maxmemory.load(Ordering::Relaxed) > 0 {
            server.reserve_memory();
        }
    }
}
