//! Change records of backed key spaces, and how values are stored in Postgres.
//!
//! Hashes are stored as `bytea` holding the field map as a sequence of
//! `u32 big-endian field length, field bytes, u32 big-endian value length, value bytes`, in the
//! hash's own order: binary-safe (fields and values may hold any byte, unlike `jsonb`/`hstore`
//! text), and decodable by any client in a few lines.

use crate::store::value::HashLimits;

/// SharedBytes immutable bytes: keys and values of queued records, cloned into the coalescing
/// map and batches by a reference count (no allocation, unlike a `bytes::Bytes` made from a
/// `Vec`, which allocates on its first clone).
pub type SharedBytes = std::sync::Arc<[u8]>;
use crate::store::{HashValue, Value};

/// Redis type of a stored value, as the `type` column says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
#[repr(u8)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the row.
    Put {
        /// Redis type.
        kind: Kind,
        /// Encoded value (see the module comment); cheap to clone into the writer's batches.
        value: SharedBytes,
        /// Absolute expiry in unix milliseconds.
        expires_at_ms: Option<u64>,
    },
    /// Delete the row (DEL, a hash emptied, a TTL that passed).
    Delete,
}

/// One change of one key, as queued on disk and written to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Node-wide monotonically increasing; the row's `version`, so a stale write never wins.
    pub version: u64,
    /// The key (UTF-8: the table's key is `text`); shared by the coalescing map's copies.
    pub key: SharedBytes,
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

/// The on-disk payload as bincode 2 (standard configuration) reads it: segments written by
/// earlier versions, which encoded this with `bincode::encode_into_std_write`, stay readable.
#[derive(bincode::Decode)]
struct WireRecord {
    version: u64,
    key: Vec<u8>,
    slot: u16,
    op: WireOp,
}

#[derive(bincode::Decode)]
enum WireOp {
    Put { kind: Kind, value: Vec<u8>, expires_at_ms: Option<u64> },
    Delete,
}

impl From<WireRecord> for Record {
    fn from(w: WireRecord) -> Record {
        let op = match w.op {
            WireOp::Put { kind, value, expires_at_ms } => {
                Op::Put { kind, value: value.into(), expires_at_ms }
            }
            WireOp::Delete => Op::Delete,
        };
        Record { version: w.version, key: w.key.into(), slot: w.slot, op }
    }
}

/// bincode 2's variable-length unsigned integer (standard configuration).
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v <= 250 {
        out.push(v as u8);
    } else if v <= u16::MAX as u64 {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u32::MAX as u64 {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Encodes the record as bincode 2 would (see [`WireRecord`]), straight into `out`: the hot
/// path of every write to a backed key space, so no writer adapter and no intermediate copy.
fn encode_payload(r: &Record, out: &mut Vec<u8>) {
    put_varint(out, r.version);
    put_varint(out, r.key.len() as u64);
    out.extend_from_slice(&r.key);
    put_varint(out, r.slot as u64);
    match &r.op {
        Op::Put { kind, value, expires_at_ms } => {
            out.push(0);
            out.push(*kind as u8);
            put_varint(out, value.len() as u64);
            out.extend_from_slice(value);
            match expires_at_ms {
                None => out.push(0),
                Some(e) => {
                    out.push(1);
                    put_varint(out, *e);
                }
            }
        }
        Op::Delete => out.push(1),
    }
}

/// [`encode_value`] for a queue record.
pub fn encode_value_shared(value: &Value) -> (Kind, SharedBytes) {
    match value {
        Value::Str(s) => (Kind::Str, SharedBytes::from(&s[..])),
        Value::Hash(_) => {
            let (kind, bytes) = encode_value(value);
            (kind, bytes.into())
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
    out.reserve(8 + 32 + record.weight());
    out.extend_from_slice(&[0; 8]);
    encode_payload(record, out);
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
    let (record, used): (WireRecord, usize) =
        bincode::decode_from_slice(payload, bincode::config::standard()).ok()?;
    (used == len).then(|| (record.into(), 8 + len))
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
            key: SharedBytes::from(&b"session:1"[..]),
            slot: 3,
            op: Op::Put { kind: Kind::Str, value: SharedBytes::from(&b"v"[..]), expires_at_ms: Some(9) },
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

    /// The layout earlier versions wrote with bincode's derive, to check the hand encoder.
    #[derive(bincode::Encode)]
    struct OldRecord {
        version: u64,
        key: Vec<u8>,
        slot: u16,
        op: OldOp,
    }

    #[derive(bincode::Encode)]
    enum OldOp {
        Put { kind: Kind, value: Vec<u8>, expires_at_ms: Option<u64> },
        Delete,
    }

    #[test]
    fn records_are_encoded_exactly_as_bincode_encoded_them_before() {
        let big = vec![7u8; 70_000];
        let cases = [
            (1u64, b"k".to_vec(), 0u16, Some((Kind::Str, b"v".to_vec(), None))),
            (250, b"session:1".to_vec(), 250, Some((Kind::Hash, vec![1; 251], Some(251)))),
            (65_535, vec![b'x'; 300], 16_383, Some((Kind::Str, big.clone(), Some(1_700_000_000_000)))),
            (u64::MAX, Vec::new(), 65_535, None),
            (1 << 40, b"gone".to_vec(), 1, None),
        ];
        for (version, key, slot, put) in cases {
            let (op, old_op) = match put {
                Some((kind, value, exp)) => (
                    Op::Put { kind, value: value.clone().into(), expires_at_ms: exp },
                    OldOp::Put { kind, value, expires_at_ms: exp },
                ),
                None => (Op::Delete, OldOp::Delete),
            };
            let old = OldRecord { version, key: key.clone(), slot, op: old_op };
            let want = bincode::encode_to_vec(&old, bincode::config::standard()).unwrap();
            let r = Record { version, key: key.into(), slot, op };
            let mut got = Vec::new();
            encode_payload(&r, &mut got);
            assert_eq!(got, want);
            let mut framed = Vec::new();
            frame(&r, &mut framed);
            assert_eq!(unframe(&framed).unwrap(), (r, framed.len()));
        }
    }
}
