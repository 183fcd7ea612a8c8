//! Web sessions in the grid: [`SessionLayer`] (a tower layer) and the [`Session`] extractor,
//! with the tower-sessions API, over a [`RemoteStore`] or an [`EmbeddedStore`].
//!
//! Expiry: the layer's idle timeout (sliding, moved at most once per refresh interval) and
//! absolute lifetime ([`SessionConfig`]); a handler may give one session its own with
//! [`Session::set_expiry`] (tower-sessions' [`Expiry`]), kept with the session; the grid TTL
//! and the cookie's `Max-Age`/`Expires` follow.
//!
//! Concurrency: a request writes back only the keys it changed (HSET/HDEL of those fields),
//! so concurrent requests of one session changing different keys both keep their change.
//! When two requests change the *same* key, the one whose response is saved last wins for
//! that key (last writer wins per key, never per session); `clear()` and `cycle_id()` rewrite
//! the whole session and so replace concurrent changes made since the request loaded it.

mod config;
mod handle;
mod id;
mod layer;
mod store;

pub use config::{Key, OnUnavailable, SameSite, SessionConfig};
pub use handle::{MissingSessionLayer, Session, SessionError};
pub use id::SessionId;
pub use layer::{SessionLayer, SessionService};
pub use store::{EmbeddedStore, RemoteStore, SessionStore, SessionWrite};
/// How one session expires ([`Session::set_expiry`]): tower-sessions' own type, so handlers
/// written for tower-sessions compile unchanged.
pub use tower_sessions_core::Expiry;
