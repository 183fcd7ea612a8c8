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

    /// The cookie form, 32 lowercase hex digits, without the formatting machinery (it is
    /// written twice per request, into the grid key).
    pub(crate) fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.to_be_bytes().iter().enumerate() {
            out[2 * i] = DIGITS[(b >> 4) as usize];
            out[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        out
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
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
        assert_eq!(SessionId(0xab).to_string(), format!("{:032x}", 0xab));
        assert_eq!(SessionId(u128::MAX - 1).to_string(), format!("{:032x}", u128::MAX - 1));
    }
}
