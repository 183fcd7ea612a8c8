//! Change records of backed key spaces, and how values are stored in Postgres.
//!
//! Hashes are stored as `bytea` holding the field map as a sequence of
//! `u32 big-endian field length, field bytes, u32 big-endian value length, value bytes`, in the
//! hash's own order: binary-safe (fields and values may hold any byte, unlike `jsonb`/`hstore`
//! text), and decodable by any client in a few lines.

use crate::store::value::HashLimits;
use crate::store::{HashValue, Value};

/// Redis type of a stored value, as the `type` column says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Kind {
    /// A string (`'string'`).
    Str,
    /// A hash (`'hash'`).
    Hash,
}

impl Kind {
    /// The `type` column's text.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Hash => "hash",
        }
    }

    /// Parses the `type` column.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "string" => Some(Kind::Str),
            "hash" => Some(Kind::Hash),
            _ => None,
        }
    }
}

/// What a record does to its row.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Op {
    /// Insert or replace the row.
    Put {
        /// Redis type.
        kind: Kind,
        /// Encoded value (see the module comment).
        value: Vec<u8>,
        /// Absolute expiry in unix milliseconds.
        expires_at_ms: Option<u64>,
    },
    /// Delete the row (DEL, a hash emptied, a TTL that passed).
    Delete,
}

/// One change of one key, as queued on disk and written to Postgres.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Record {
    /// Node-wide monotonically increasing; the row's `version`, so a stale write never wins.
    pub version: u64,
    /// The key (UTF-8: the table's key is `text`).
    pub key: Vec<u8>,
    /// Hash slot of the key.
    pub slot: u16,
    /// Put or delete.
    pub op: Op,
}

impl Record {
    /// Bytes this record weighs in memory queues, roughly.
    pub fn weight(&self) -> usize {
        64 + self.key.len()
            + match &self.op {
                Op::Put { value, .. } => value.len(),
                Op::Delete => 0,
            }
    }
}

/// Encodes a keyspace value for the `value` column.
pub fn encode_value(value: &Value) -> (Kind, Vec<u8>) {
    match value {
        Value::Str(s) => (Kind::Str, s.to_vec()),
        Value::Hash(h) => {
            let mut out = Vec::with_capacity(value.heap_size());
            for (f, v) in h.iter() {
                out.extend_from_slice(&(f.len() as u32).to_be_bytes());
                out.extend_from_slice(f);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            (Kind::Hash, out)
        }
    }
}

/// Decodes a `value` column back into a keyspace value; `None` if it is malformed.
pub fn decode_value(kind: Kind, bytes: &[u8], limits: HashLimits) -> Option<Value> {
    match kind {
        Kind::Str => Some(Value::Str(bytes.into())),
        Kind::Hash => {
            let mut h = HashValue::default();
            let mut rest = bytes;
            let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let body = rest.get(4..4 + len)?.to_vec();
                *rest = &rest[4 + len..];
                Some(body)
            };
            while !rest.is_empty() {
                let f = take(&mut rest)?;
                let v = take(&mut rest)?;
                h.insert(&f, &v, limits);
            }
            // An empty hash does not exist in Redis.
            (!h.is_empty()).then(|| Value::Hash(Box::new(h)))
        }
    }
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Frames `record` for a queue segment: `u32 LE payload length, u32 LE CRC-32C, payload`
/// (the payload is bincode 2, standard configuration).
pub fn frame(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    bincode::encode_into_std_write(record, out, bincode::config::standard()).expect("Vec write cannot fail");
    let len = (out.len() - start - 8) as u32;
    let crc = CRC.checksum(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the framed record at the start of `buf`: the record and its framed length, or `None`
/// at a torn or corrupt tail (the rest of the segment is then ignored).
pub fn unframe(buf: &[u8]) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let payload = buf.get(8..8 + len)?;
    if CRC.checksum(payload) != crc {
        return None;
    }
    let (record, used) = bincode::decode_from_slice(payload, bincode::config::standard()).ok()?;
    (used == len).then_some((record, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_binary_safe() {
        let mut h = HashValue::default();
        h.insert(b"f\0\xff", b"\x00\x01v", HashLimits::default());
        h.insert(b"", b"empty field", HashLimits::default());
        let v = Value::Hash(Box::new(h));
        let (kind, bytes) = encode_value(&v);
        assert_eq!(decode_value(kind, &bytes, HashLimits::default()), Some(v));
        assert_eq!(decode_value(Kind::Hash, &bytes[..bytes.len() - 1], HashLimits::default()), None);
    }

    #[test]
    fn frames_detect_torn_and_corrupt_tails() {
        let r = Record {
            version: 7,
            key: b"session:1".to_vec(),
            slot: 3,
            op: Op::Put { kind: Kind::Str, value: b"v".to_vec(), expires_at_ms: Some(9) },
        };
        let mut buf = Vec::new();
        frame(&r, &mut buf);
        frame(&Record { op: Op::Delete, ..r.clone() }, &mut buf);
        let (back, used) = unframe(&buf).unwrap();
        assert_eq!(back, r);
        assert!(unframe(&buf[used..buf.len() - 1]).is_none());
        let mut bad = buf.clone();
        bad[used + 9] ^= 1;
        assert!(unframe(&bad[used..]).is_none());
    }
}
