//! cachegrid: a Redis-compatible cache node, the building block of the cachegrid grid.
//!
//! A request travels `server` (socket, connection loop) → `protocol` (framing, limits) →
//! `commands` (dispatch, one file per family) → `store` (the slot-indexed keyspace).

pub mod acl;
pub mod admin;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod faults;
pub mod net;
pub mod node;
pub mod persistence;
pub mod protocol;
pub mod replication;
pub mod server;
#[cfg(feature = "simulation")]
pub mod simulation;
pub mod store;
pub mod tls;
