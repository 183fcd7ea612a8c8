//! A cachegrid node inside the app process: app servers become grid members, and this
//! process's session calls run the node's command dispatcher directly, without a socket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use cachegrid::config::Config;
use cachegrid::node::Node;
use cachegrid::protocol::RespVersion;
use cachegrid::server::{ClientState, Server};
use parking_lot::Mutex;

use super::{Grid, GridError, Invalidate, Listeners};
use cachegrid::store::keyspace::{Change, ChangeListener};

/// Most idle dispatcher contexts kept for reuse.
const POOL: usize = 64;

/// A node running in this process, serving other processes on `addr` as well.
pub struct EmbeddedGrid {
    node: Mutex<Option<Node>>,
    server: Arc<Server>,
    addr: SocketAddr,
    /// Reusable client contexts for the dispatcher (one per concurrent call).
    pool: Mutex<Vec<ClientState>>,
    /// Near caches told of every change to the node's keyspace.
    listeners: Arc<Listeners>,
}

/// The node's change records, handed to the near caches (under the writer's shard lock, so a
/// cache has dropped a key before the write that changed it returns).
struct Forward(Arc<Listeners>);

impl ChangeListener for Forward {
    fn changed(&self, change: &Change<'_>) {
        self.0.invalidate(change.key);
    }

    fn flushed(&self, _now_ms: u64) {
        self.0.clear();
    }
}

impl EmbeddedGrid {
    /// Starts a node with `config` on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Grid, GridError> {
        let node = Node::start(config).await.map_err(|e| GridError::Unavailable(format!("{e:#}")))?;
        let (server, addr) = (node.server.clone(), node.addr);
        let listeners = Arc::new(Listeners::default());
        server.keyspace.add_listener(Arc::new(Forward(listeners.clone())));
        Ok(Grid::Embedded(Arc::new(EmbeddedGrid {
            node: Mutex::new(Some(node)),
            server,
            addr,
            pool: Mutex::new(Vec::new()),
            listeners,
        })))
    }

    /// A node on a free loopback port with default settings.
    pub async fn start_default() -> Result<Grid, GridError> {
        EmbeddedGrid::start(Config { port: 0, bind: "127.0.0.1".into(), ..Config::default() }).await
    }

    /// Where other processes reach this node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's state.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        let node = self.node.lock().take();
        if let Some(node) = node {
            let _ = node.shutdown().await;
        }
    }

    /// Tells `listener` of every change to the node's keys.
    pub(crate) fn track(&self, listener: std::sync::Weak<dyn Invalidate>) {
        self.listeners.add(listener);
    }

    fn client(&self) -> ClientState {
        if let Some(c) = self.pool.lock().pop() {
            return c;
        }
        let info = self.server.clients.register(self.addr, self.addr);
        let mut c = ClientState::new(info, true);
        c.resp = RespVersion::Resp2;
        c
    }

    fn release(&self, c: ClientState) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL && !c.in_multi() {
            pool.push(c);
        } else {
            self.server.clients.unregister(c.id());
        }
    }

    fn run(&self, client: &mut ClientState, args: Vec<bytes::Bytes>) -> Result<redis::Value, GridError> {
        client.now_ms = cachegrid::store::clock::now_ms();
        let reply = cachegrid::commands::execute(&self.server, client, args);
        let mut out = BytesMut::new();
        reply.encode(RespVersion::Resp2, &mut out);
        match redis::parse_redis_value(&out) {
            Ok(redis::Value::ServerError(e)) => Err(GridError::Reply(format!("{e:?}"))),
            Ok(v) => Ok(v),
            Err(e) => Err(GridError::Reply(e.to_string())),
        }
    }

    /// Runs one command.
    pub fn query(&self, cmd: &redis::Cmd) -> Result<redis::Value, GridError> {
        let mut c = self.client();
        let r = self.run(&mut c, args_of(cmd));
        self.release(c);
        r
    }

    /// Runs `cmds` as one MULTI/EXEC transaction.
    pub fn transaction(&self, cmds: &[redis::Cmd]) -> Result<Vec<redis::Value>, GridError> {
        self.run_pipeline(cmds.iter())
    }

    /// Runs `cmds` as one MULTI/EXEC transaction (in process, a pipeline costs no less).
    pub fn run_pipeline<'a>(
        &self,
        cmds: impl Iterator<Item = &'a redis::Cmd>,
    ) -> Result<Vec<redis::Value>, GridError> {
        let mut c = self.client();
        let r = self.run_transaction(&mut c, cmds);
        if c.in_multi() {
            let _ = self.run(&mut c, vec![bytes::Bytes::from_static(b"DISCARD")]);
        }
        self.release(c);
        r
    }

    fn run_transaction<'a>(
        &self,
        c: &mut ClientState,
        cmds: impl Iterator<Item = &'a redis::Cmd>,
    ) -> Result<Vec<redis::Value>, GridError> {
        self.run(c, vec![bytes::Bytes::from_static(b"MULTI")])?;
        for cmd in cmds {
            self.run(c, args_of(cmd))?;
        }
        match self.run(c, vec![bytes::Bytes::from_static(b"EXEC")])? {
            redis::Value::Array(items) => Ok(items),
            other => Err(GridError::Protocol(format!("EXEC gave {other:?}"))),
        }
    }
}

fn args_of(cmd: &redis::Cmd) -> Vec<bytes::Bytes> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => bytes::Bytes::copy_from_slice(b),
            redis::Arg::Cursor => bytes::Bytes::from_static(b"0"),
        })
        .collect()
}
