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
    /// The admin HTTP port (metrics, health, cluster, dashboard); not served under simulation.
    pub admin: Arc<crate::admin::Admin>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let server = Server::new(config);
        // Bound first: a taken admin port stops the node before it takes clients.
        #[cfg(not(feature = "simulation"))]
        let admin_listener = crate::admin::bind(&server).await?;
        if let Some(p) = crate::persistence::Persistence::start(&server).await? {
            let _ = server.persistence.set(p);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::serve(server.clone(), Some(tx)));
        match rx.await {
            Ok(addr) => {
                #[cfg(not(feature = "simulation"))]
                let admin = crate::admin::start(server.clone(), admin_listener)?;
                // Simulated nodes serve no admin HTTP port (see `admin::unserved`).
                #[cfg(feature = "simulation")]
                let admin = crate::admin::unserved(server.clone());
                if let Some(p) = server.persistence.get() {
                    admin.add_collector(p.clone());
                }
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
        let result = self.task.await?;
        stop_persistence(&self.server).await;
        result
    }

    /// Waits until the node stops by itself (SHUTDOWN, a signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.task.await?;
        stop_persistence(&self.server).await;
        result
    }
}

/// Stops Raft, then flushes the write-behind queues for a few seconds; the rest stays on disk.
async fn stop_persistence(server: &Server) {
    if let Some(c) = server.consensus.get() {
        let _ = c.raft.shutdown().await;
    }
    if let Some(p) = server.persistence.get() {
        p.shutdown(std::time::Duration::from_secs(5)).await;
    }
}
