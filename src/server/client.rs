//! Clients: the state a connection carries (protocol version, auth, transaction), and the
//! registry of everything CLIENT LIST and CLIENT KILL need to see of other connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::commands::CommandSpec;
use crate::protocol::RespVersion;
use crate::store::{clock, WatchFlag};

/// What other connections may see of a client (CLIENT LIST, CLIENT KILL).
pub struct ClientInfo {
    /// Unique, increasing id.
    pub id: u64,
    /// Peer address.
    pub addr: SocketAddr,
    /// Local address.
    pub laddr: SocketAddr,
    /// Creation time (unix ms).
    pub created_ms: u64,
    /// Last command time (unix ms).
    pub last_active_ms: AtomicU64,
    /// CLIENT SETNAME.
    pub name: Mutex<Option<Bytes>>,
    /// CLIENT SETINFO LIB-NAME and LIB-VER.
    pub lib: Mutex<(Bytes, Bytes)>,
    /// The last command run, as CLIENT LIST's `cmd=` (a pointer into the static command
    /// table, so recording it costs one store).
    last_command: AtomicPtr<CommandSpec>,
    /// 2 or 3.
    pub resp: AtomicU8,
    /// Whether a MULTI is open (`flags=x`).
    pub in_multi: AtomicBool,
    /// Number of keys watched.
    pub watching: AtomicU64,
    /// CLIENT NO-EVICT.
    pub no_evict: AtomicBool,
    /// Set by CLIENT KILL or shutdown.
    pub killed: AtomicBool,
    /// Wakes the connection when killed.
    pub kill_signal: Notify,
    /// Out-of-band pushes (CLIENT TRACKING invalidations) the connection writes between replies.
    pub pushes: super::tracking::PushQueue,
    /// The ACL user name after AUTH, for CLIENT LIST's `user=`; None is `default`.
    pub user: Mutex<Option<String>>,
    /// Channels subscribed to (CLIENT LIST `sub=`).
    pub sub: AtomicU64,
    /// Patterns subscribed to (CLIENT LIST `psub=`).
    pub psub: AtomicU64,
}

impl ClientInfo {
    /// Records the command the client runs at `now_ms`.
    pub fn set_last_command(&self, spec: &'static CommandSpec, now_ms: u64) {
        self.last_command.store(spec as *const CommandSpec as *mut CommandSpec, Ordering::Relaxed);
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Name of the last command run, or `NULL` before the first.
    pub fn last_command_name(&self) -> &'static str {
        let p = self.last_command.load(Ordering::Relaxed);
        // SAFETY: only ever set from `&'static CommandSpec` references.
        unsafe { p.as_ref() }.map(|s| s.name).unwrap_or("NULL")
    }

    /// Channel and pattern subscriptions: above 0 the client is in Pub/Sub mode.
    pub fn subscriptions(&self) -> u64 {
        self.sub.load(Ordering::Relaxed) + self.psub.load(Ordering::Relaxed)
    }

    /// Asks the connection to close.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill_signal.notify_one();
    }

    /// One line of CLIENT LIST / CLIENT INFO, in Redis 7's format.
    pub fn describe(&self) -> String {
        let now = clock::now_ms();
        let name = self.name.lock().clone().unwrap_or_default();
        let (lib_name, lib_ver) = self.lib.lock().clone();
        let mut flags = String::new();
        if self.subscriptions() > 0 {
            flags.push('P');
        }
        if self.in_multi.load(Ordering::Relaxed) {
            flags.push('x');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd=8 name={} age={} idle={} flags={} db=0 sub={} psub={} ssub=0 \
             multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=16384 rbp=0 obl=0 oll=0 omem=0 \
             tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&name),
            now.saturating_sub(self.created_ms) / 1000,
            now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)) / 1000,
            flags,
            self.sub.load(Ordering::Relaxed),
            self.psub.load(Ordering::Relaxed),
            self.last_command_name(),
            self.user.lock().as_deref().unwrap_or("default"),
            self.resp.load(Ordering::Relaxed),
            String::from_utf8_lossy(&lib_name),
            String::from_utf8_lossy(&lib_ver),
        )
    }
}

/// Every connected client, by id.
#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    /// Registers a new connection and returns its shared info.
    pub fn register(&self, addr: SocketAddr, laddr: SocketAddr) -> Arc<ClientInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let now = clock::now_ms();
        let info = Arc::new(ClientInfo {
            id,
            addr,
            laddr,
            created_ms: now,
            last_active_ms: AtomicU64::new(now),
            name: Mutex::new(None),
            lib: Mutex::new((Bytes::new(), Bytes::new())),
            last_command: AtomicPtr::new(std::ptr::null_mut()),
            resp: AtomicU8::new(2),
            in_multi: AtomicBool::new(false),
            watching: AtomicU64::new(0),
            no_evict: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            kill_signal: Notify::new(),
            pushes: Default::default(),
            user: Mutex::new(None),
            sub: AtomicU64::new(0),
            psub: AtomicU64::new(0),
        });
        self.clients.lock().insert(id, info.clone());
        info
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All live clients, by increasing id. A killed client is left out although its task may
    /// not have unregistered yet: it is on its way out, and a second CLIENT KILL must not
    /// find it again.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        self.clients.lock().values().filter(|c| !c.killed.load(Ordering::Acquire)).cloned().collect()
    }

    /// Closes every connection (shutdown).
    pub fn kill_all(&self) {
        for c in self.snapshot() {
            c.kill();
        }
    }
}

/// A command queued by MULTI.
pub struct Queued {
    /// What runs.
    pub spec: &'static CommandSpec,
    /// Its arguments.
    pub args: Vec<Bytes>,
}

/// State of one connection, owned by its task.
pub struct ClientState {
    /// Shared view for other connections.
    pub info: Arc<ClientInfo>,
    /// Protocol version (HELLO).
    pub resp: RespVersion,
    /// Whether AUTH succeeded or no password is set.
    pub authenticated: bool,
    /// Commands queued since MULTI; None outside a transaction.
    pub multi: Option<Vec<Queued>>,
    /// A command failed to queue: EXEC will abort.
    pub multi_error: bool,
    /// EXEC is running the queued commands with their shards locked: a handler must not take
    /// keyspace locks of its own.
    pub in_exec: bool,
    /// Keys under WATCH.
    pub watched: Vec<(Bytes, bool)>,
    /// Raised when a watched key changes.
    pub watch_flag: WatchFlag,
    /// Close the connection once this reply is written (QUIT, protocol errors).
    pub close_after_reply: bool,
    /// Unix milliseconds at which the current batch of requests is served: read once per
    /// batch, as Redis caches its clock, so commands do not each ask the kernel.
    pub now_ms: u64,
    /// CLIENT TRACKING mode of this connection.
    pub tracking: super::tracking::ConnTracking,
    /// READONLY and ASKING.
    pub cluster: crate::cluster::ClientFlags,
    /// The ACL user after AUTH; None is the `default` user.
    pub user: Option<Arc<crate::acl::User>>,
    /// Channels this connection subscribed to, in order (SUBSCRIBE).
    pub channels: Vec<Bytes>,
    /// Patterns this connection subscribed to, in order (PSUBSCRIBE).
    pub patterns: Vec<Bytes>,
    /// What this connection's writes need replicas to apply (its latest change number and
    /// the replicas of the slots it wrote): what WAIT waits for.
    pub wrote: crate::replication::Write,
    /// A WAIT to finish once the command returns: replicas wanted, timeout in ms (0: none).
    pub pending_wait: Option<(usize, u64)>,
}

impl ClientState {
    /// State for a new connection; `authenticated` is false when a password is required.
    pub fn new(info: Arc<ClientInfo>, authenticated: bool) -> Self {
        ClientState {
            info,
            resp: RespVersion::Resp2,
            authenticated,
            multi: None,
            multi_error: false,
            in_exec: false,
            watched: Vec::new(),
            watch_flag: Arc::new(AtomicBool::new(false)),
            close_after_reply: false,
            now_ms: clock::now_ms(),
            tracking: Default::default(),
            cluster: Default::default(),
            user: None,
            channels: Vec::new(),
            patterns: Vec::new(),
            wrote: Default::default(),
            pending_wait: None,
        }
    }

    /// Whether a MULTI is open.
    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Whether the connection is in RESP2 Pub/Sub mode, where only (P)(UN)SUBSCRIBE, PING,
    /// QUIT and RESET may run.
    pub fn in_resp2_pubsub(&self) -> bool {
        (!self.channels.is_empty() || !self.patterns.is_empty()) && self.resp == RespVersion::Resp2
    }

    /// Client id.
    pub fn id(&self) -> u64 {
        self.info.id
    }
}
