//! What a [`SessionLayer`](super::SessionLayer) is configured with: cookie attributes,
//! signing keys, expiry, the grid key prefix, and what to do while the grid is unreachable.

use std::time::Duration;

use super::Expiry;

pub use cookie::{Key, SameSite};

/// What the layer does when the grid cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Answer 503 Service Unavailable: without calling the handler when the session cannot
    /// be loaded; in place of the handler's response when it cannot be saved.
    Fail,
    /// Call the handler with an empty session whose [`is_available`] is false; nothing is
    /// saved for that request.
    ///
    /// [`is_available`]: super::Session::is_available
    ContinueEmpty,
}

/// Session settings; [`SessionConfig::default`] is secure by default.
#[derive(Clone)]
pub struct SessionConfig {
    /// Cookie name (default `id`).
    pub cookie_name: String,
    /// Cookie `Path` (default `/`).
    pub path: String,
    /// Cookie `Domain` (default none: host-only).
    pub domain: Option<String>,
    /// `Secure` (default true).
    pub secure: bool,
    /// `HttpOnly` (default true).
    pub http_only: bool,
    /// `SameSite` (default Lax).
    pub same_site: SameSite,
    /// Sliding idle expiry (default 30 minutes); `None`: none.
    pub idle_timeout: Option<Duration>,
    /// Absolute lifetime from creation (default 24 hours); `None`: none.
    pub absolute_timeout: Option<Duration>,
    /// The idle expiry (grid TTL and cookie `Max-Age`) moves at most this often (default
    /// 60 s): a request within the interval, reading or writing, leaves it where it is, so
    /// reads cost no grid write and writes no PEXPIREAT or Set-Cookie. A session may so end
    /// up to this much before `idle_timeout` after its last request.
    pub refresh_interval: Duration,
    /// Grid key prefix (default `session:`); keys are `{prefix}{ID}` with the id as hash tag.
    pub key_prefix: String,
    /// Signing keys: the first signs, every one verifies (key rotation). Empty: unsigned ids.
    pub signing_keys: Vec<Key>,
    /// Grid unreachable: 503 or an empty session (default 503).
    pub on_unavailable: OnUnavailable,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_name: "id".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            absolute_timeout: Some(Duration::from_secs(24 * 3600)),
            refresh_interval: Duration::from_secs(60),
            key_prefix: "session:".into(),
            signing_keys: Vec::new(),
            on_unavailable: OnUnavailable::Fail,
        }
    }
}

impl SessionConfig {
    /// Sets the cookie name.
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Sets `Secure` (turn off only for plain-HTTP development).
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Sets the idle expiry.
    pub fn with_idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets the absolute lifetime.
    pub fn with_absolute_timeout(mut self, d: Option<Duration>) -> Self {
        self.absolute_timeout = d;
        self
    }

    /// Sets how often an unchanged session's idle expiry is refreshed.
    pub fn with_refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = d;
        self
    }

    /// Signs ids with `keys[0]` and accepts ids signed by any of `keys` (rotation).
    pub fn with_signing_keys(mut self, keys: Vec<Key>) -> Self {
        self.signing_keys = keys;
        self
    }

    /// Sets the behaviour while the grid is unreachable.
    pub fn with_on_unavailable(mut self, on: OnUnavailable) -> Self {
        self.on_unavailable = on;
        self
    }

    /// Sets the grid key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// When a session created at `created_ms`, last touched at `touched_ms` and with its own
    /// `expiry` (if set) expires (unix ms), or `None` if it never does.
    pub(crate) fn expires_at(
        &self,
        expiry: Option<&Expiry>,
        created_ms: u64,
        touched_ms: u64,
    ) -> Option<u64> {
        let sliding = match expiry {
            None | Some(Expiry::OnSessionEnd) => self.idle_timeout.map(|d| d.as_millis() as u64),
            Some(Expiry::OnInactivity(d)) => Some(d.whole_milliseconds().max(0) as u64),
            Some(Expiry::AtDateTime(_)) => None,
        };
        let candidates = [
            sliding.map(|d| touched_ms + d),
            match expiry {
                Some(Expiry::AtDateTime(t)) => Some(unix_ms(t)),
                _ => None,
            },
            self.absolute_timeout.map(|d| created_ms + d.as_millis() as u64),
        ];
        candidates.into_iter().flatten().min()
    }
}

/// `t` as unix milliseconds (0 before 1970).
pub(crate) fn unix_ms(t: &time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}
