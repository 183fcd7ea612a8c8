//! Session ids: 128 bits from the OS's CSPRNG, written as 32 lowercase hex digits.

use std::fmt;

use rand::rngs::OsRng;
use rand::RngCore;

/// A session id (never logged in full by this crate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub(crate) u128);

impl SessionId {
    /// A fresh random id from the OS's CSPRNG.
    pub fn random() -> SessionId {
        let mut b = [0u8; 16];
        OsRng.fill_bytes(&mut b);
        SessionId(u128::from_le_bytes(b))
    }

    /// Parses the cookie form; anything else (wrong length, non-hex, upper case) is `None`.
    pub fn parse(s: &str) -> Option<SessionId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(SessionId)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to correlate logs, not enough to hijack a session.
        write!(f, "SessionId({:08x}…)", (self.0 >> 96) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        for bad in ["", "abc", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33), "../../etc/passwd"] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
        assert_ne!(SessionId::random(), SessionId::random());
    }
}
