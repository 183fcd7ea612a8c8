//! Starting and stopping a node from code: what the binary, the tests and (later) an app
//! embedding a node all use.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::server::{self, Server};

/// A running node.
pub struct Node {
    /// Shared state, for inspection.
    pub server: Arc<Server>,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin HTTP port (metrics, health, cluster, dashboard).
    pub admin: Arc<crate::admin::Admin>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let server = Server::new(config);
        // Bound first: a taken admin port stops the node before it takes clients.
        let admin_listener = crate::admin::bind(&server).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::serve(server.clone(), Some(tx)));
        match rx.await {
            Ok(addr) => {
                let admin = crate::admin::start(server.clone(), admin_listener)?;
                Ok(Node { server, addr, admin, task })
            }
            Err(_) => {
                task.await??;
                Err(anyhow::anyhow!("node stopped before listening"))
            }
        }
    }

    /// Asks the node to stop (as SIGTERM does) and waits until it has.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown.cancel();
        self.task.await?
    }

    /// Waits until the node stops by itself (SHUTDOWN, a signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}
