//! Node identity: a 160-bit id written as 40 hex characters, like Redis Cluster's node ids,
//! created once and kept in the node's data directory so a restarted node is the same member.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// File in `dir` holding the node id.
pub const NODE_ID_FILE: &str = "cachegrid-node-id";

/// A node's identity in the grid; ordered so placement is deterministic. `Default` (all zeros)
/// exists only because openraft's node-id bound asks for it; no real node has it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 20]);

/// Problems with a node id or its file.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// The text is not 40 hex characters.
    #[error("a node id is 40 hex characters, got {0:?}")]
    Malformed(String),
    /// The id file could not be read or written.
    #[error("cannot read or write the node id file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl NodeId {
    /// A fresh random id.
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// The id kept in `dir`, created (and `dir` with it) on first use. A file that exists but
    /// does not hold an id is an error: silently replacing it would make a different member.
    pub fn load_or_create(dir: &Path) -> Result<NodeId, NodeIdError> {
        let path = dir.join(NODE_ID_FILE);
        let io = |source| NodeIdError::Io { path: path.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => return text.trim().parse(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let id = NodeId::random();
        // Write then rename, so a crash never leaves a half-written id behind.
        let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{id}").and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form, enough to tell nodes apart in test output.
        write!(f, "NodeId({})", &self.to_string()[..8])
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<NodeId, NodeIdError> {
        let bad = || NodeIdError::Malformed(s.chars().take(64).collect());
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut id = [0u8; 20];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(NodeId(id))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_40_lowercase_hex_and_parse_back() {
        let id = NodeId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 40);
        assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("g".repeat(40).parse::<NodeId>().is_err());
    }

    #[test]
    fn the_id_is_created_once_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = NodeId::load_or_create(&data).unwrap();
        let again = NodeId::load_or_create(&data).unwrap();
        assert_eq!(first, again);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(NodeId::load_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn a_corrupt_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID_FILE), "not an id\n").unwrap();
        assert!(matches!(NodeId::load_or_create(dir.path()), Err(NodeIdError::Malformed(_))));
    }
}
