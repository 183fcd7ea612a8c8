//! [`Session`]: the per-request handle handlers use (an axum extractor), with the tower-sessions
//! API. It records which keys changed so the layer writes back only those.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Expiry, SessionId};

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The value cannot be stored with bincode (serde mode): self-describing types such as
    /// `serde_json::Value` (they need `deserialize_any`) or types whose encoding fails.
    #[error("session value for key {key:?} cannot be stored with bincode: {reason}")]
    Encode {
        /// The session key.
        key: String,
        /// bincode's message.
        reason: String,
    },
    /// A stored value does not decode as the requested type.
    #[error("session value for key {key:?} does not decode as the requested type: {reason}")]
    Decode {
        /// The session key.
        key: String,
        /// bincode's message.
        reason: String,
    },
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// What the layer knows of the session it loaded.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The id from a valid cookie of an existing session.
    pub id: Option<SessionId>,
    /// Current values (encoded).
    pub data: HashMap<String, Bytes>,
    /// Keys changed by this request: true set, false removed.
    pub dirty: HashMap<String, bool>,
    /// `clear()` was called: the stored hash is replaced.
    pub cleared: bool,
    /// `cycle_id()` was called.
    pub cycle: bool,
    /// `flush()` was called.
    pub flushed: bool,
    /// Creation and last refresh (unix ms) of a loaded session.
    pub created_ms: u64,
    pub touched_ms: u64,
    /// False when the grid could not be reached: nothing is saved.
    pub available: bool,
    /// This session's own expiry (`None`: the layer's idle timeout).
    pub expiry: Option<Expiry>,
    /// `set_expiry` changed it: the response saves it and re-sends the cookie.
    pub expiry_dirty: bool,
}

/// The session of the current request. Cheap to clone; every clone is the same session.
///
/// ```
/// use cachegrid_middleware::session::Session;
///
/// async fn counter(session: Session) -> String {
///     let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
///     session.insert("n", n).await.unwrap();
///     n.to_string()
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) state: Arc<Mutex<State>>,
}

impl Session {
    pub(crate) fn new(state: State) -> Session {
        Session { state: Arc::new(Mutex::new(state)) }
    }

    /// The session id, once the session exists in the grid (None for a new session until the
    /// response saves it).
    pub fn id(&self) -> Option<SessionId> {
        self.state.lock().id
    }

    /// False when the grid was unreachable for this request (the session is empty and
    /// nothing will be saved).
    pub fn is_available(&self) -> bool {
        self.state.lock().available
    }

    /// Whether the session holds no keys.
    pub fn is_empty(&self) -> bool {
        self.state.lock().data.is_empty()
    }

    /// The value under `key`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        // Decoded in place: no copy of the value (decode runs no session code).
        let s = self.state.lock();
        s.data.get(key).map(|b| decode(key, b)).transpose()
    }

    /// Stores `value` under `key`. The value is checked to decode back as `T`, so a type
    /// bincode cannot round-trip is refused here, not at the next read.
    pub async fn insert<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: T,
    ) -> Result<(), SessionError> {
        let bytes = bincode::serde::encode_to_vec(&value, config())
            .map_err(|e| SessionError::Encode { key: key.into(), reason: e.to_string() })?;
        decode::<T>(key, &bytes).map_err(|e| match e {
            SessionError::Decode { key, reason } => SessionError::Encode { key, reason },
            e => e,
        })?;
        let mut s = self.state.lock();
        s.data.insert(key.to_owned(), Bytes::from(bytes));
        s.dirty.insert(key.to_owned(), true);
        Ok(())
    }

    /// Removes `key`, returning its value.
    pub async fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let raw = {
            let mut s = self.state.lock();
            let raw = s.data.remove(key);
            if raw.is_some() {
                s.dirty.insert(key.to_owned(), false);
            }
            raw
        };
        raw.map(|b| decode(key, &b)).transpose()
    }

    /// Removes every key; the session (and its id) stays.
    pub async fn clear(&self) {
        let mut s = self.state.lock();
        s.data.clear();
        s.dirty.clear();
        s.cleared = true;
    }

    /// Gives the session a new id, keeping its data (call it at login: it defeats session
    /// fixation). The old id stops working when the response is saved.
    pub async fn cycle_id(&self) {
        self.state.lock().cycle = true;
    }

    /// Sets how this session expires, as tower-sessions' `Session::set_expiry`; it is stored
    /// with the session and applies to later requests too:
    ///
    /// - `None`: the layer's [`idle_timeout`](super::SessionConfig::idle_timeout) (default);
    /// - `Some(Expiry::OnInactivity(d))`: sliding expiry after `d` without a request, instead
    ///   of the layer's idle timeout (refreshed as the idle timeout is, at most once per
    ///   [`refresh_interval`](super::SessionConfig::refresh_interval)); the cookie's
    ///   `Max-Age` is `d`;
    /// - `Some(Expiry::AtDateTime(t))`: at `t` however active the session is; the cookie
    ///   gets `Expires=t` and the matching `Max-Age`;
    /// - `Some(Expiry::OnSessionEnd)`: a browser-session cookie (no `Max-Age`, no `Expires`);
    ///   the grid still drops the session after the layer's idle timeout.
    ///
    /// The layer's [`absolute_timeout`](super::SessionConfig::absolute_timeout) caps every
    /// choice: it is a security bound a handler cannot lift.
    ///
    /// ```
    /// use cachegrid_middleware::session::{Expiry, Session};
    ///
    /// async fn remember_me(session: Session) {
    ///     session.set_expiry(Some(Expiry::OnInactivity(time::Duration::days(30))));
    ///     session.insert("remember", true).await.unwrap();
    /// }
    /// ```
    pub fn set_expiry(&self, expiry: Option<Expiry>) {
        let mut s = self.state.lock();
        if s.expiry != expiry {
            s.expiry = expiry;
            s.expiry_dirty = true;
        }
    }

    /// This session's own expiry, as set by [`Session::set_expiry`] in this or an earlier
    /// request; `None` when the layer's idle timeout applies.
    pub fn expiry(&self) -> Option<Expiry> {
        self.state.lock().expiry
    }

    /// Destroys the session: its data in the grid and the cookie.
    pub async fn flush(&self) {
        let mut s = self.state.lock();
        s.data.clear();
        s.dirty.clear();
        s.flushed = true;
    }
}

fn decode<T: DeserializeOwned>(key: &str, b: &[u8]) -> Result<T, SessionError> {
    // bincode's serde decoder reports unsupported features (deserialize_any) as errors; the
    // catch_unwind is a belt for serde impls of third-party types that panic on bad input.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bincode::serde::decode_from_slice::<T, _>(b, config())
    }));
    match r {
        Ok(Ok((v, _))) => Ok(v),
        Ok(Err(e)) => Err(SessionError::Decode { key: key.into(), reason: e.to_string() }),
        Err(_) => {
            Err(SessionError::Decode { key: key.into(), reason: "the type's deserializer panicked".into() })
        }
    }
}

/// Rejection when the [`SessionLayer`](super::SessionLayer) is missing from the stack.
#[derive(Debug)]
pub struct MissingSessionLayer;

impl axum_core::response::IntoResponse for MissingSessionLayer {
    fn into_response(self) -> axum_core::response::Response {
        (http::StatusCode::INTERNAL_SERVER_ERROR, "Session extractor used without SessionLayer")
            .into_response()
    }
}

impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or(MissingSessionLayer)
    }
}
