//! The sockets the node opens (client port, cluster bus): tokio's, or with the `simulation`
//! feature turmoil's simulated network, so tests can run real nodes under partitions, held
//! messages and crashes replayed from a seed (tests/sim.rs). One place to switch, so the rest
//! of the node names `crate::net::TcpStream` and stays the same code in both builds.

#[cfg(not(feature = "simulation"))]
pub use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "simulation")]
pub use turmoil::net::{TcpListener, TcpStream};
