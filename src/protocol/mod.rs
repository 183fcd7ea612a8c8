//! The Redis protocol: reading requests (RESP multibulk through the `redis-protocol` crate, and
//! inline commands) behind our own limits, and writing replies in RESP2 or RESP3.

pub mod reply;
pub mod request;

pub use reply::{Reply, RespVersion};
pub use request::{Limits, ProtocolError, RequestParser};
