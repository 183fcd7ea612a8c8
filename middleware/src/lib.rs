//! Tower layers that keep web state in a cachegrid grid (or plain Redis / Redis Cluster):
//! [`session`] (a `SessionLayer` and `Session` extractor with the tower-sessions API) and the
//! [`grid`] client it shares with the response cache.

pub mod grid;
pub mod session;
