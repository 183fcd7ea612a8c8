//! Values kept in the keyspace. Small hashes keep insertion order like Redis's listpack
//! encoding, so HGETALL replies come out in the same order as Redis's.

use hashbrown::HashMap;

/// A byte string as stored: exact-size, so a million 100-byte values cost what they weigh.
pub type Bytes = Box<[u8]>;

/// The value of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A Redis string (also used for integers and floats).
    Str(Bytes),
    /// A Redis hash.
    Hash(Box<HashValue>),
}

impl Value {
    /// The name TYPE replies with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
        }
    }

    /// Approximate heap bytes owned by the value, for memory accounting.
    pub fn heap_size(&self) -> usize {
        match self {
            Value::Str(s) => alloc_size(s.len()),
            Value::Hash(h) => alloc_size(std::mem::size_of::<HashValue>()) + h.heap_size(),
        }
    }
}

/// Bytes an allocation of `n` bytes really takes (jemalloc's small size classes, roughly).
pub fn alloc_size(n: usize) -> usize {
    match n {
        0 => 0,
        1..=8 => 8,
        9..=128 => n.div_ceil(16) * 16,
        _ => {
            // Four classes per doubling above 128 bytes.
            let spacing = 1usize << ((n - 1).ilog2() - 2);
            n.div_ceil(spacing) * spacing
        }
    }
}

/// Thresholds at which a small, ordered hash becomes a hash table (Redis's
/// `hash-max-listpack-entries` and `hash-max-listpack-value`).
#[derive(Debug, Clone, Copy)]
pub struct HashLimits {
    /// Most fields a compact hash holds.
    pub max_entries: usize,
    /// Longest field or value a compact hash holds.
    pub max_value: usize,
}

impl Default for HashLimits {
    fn default() -> Self {
        HashLimits { max_entries: 128, max_value: 64 }
    }
}

/// A Redis hash: a vector in insertion order while small, a hash table once large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashValue {
    /// Insertion-ordered pairs, as Redis's listpack.
    Compact(Vec<(Bytes, Bytes)>),
    /// A hash table for large hashes.
    Table(HashMap<Bytes, Bytes, foldhash::fast::RandomState>),
}

impl Default for HashValue {
    fn default() -> Self {
        HashValue::Compact(Vec::new())
    }
}

impl HashValue {
    /// Number of fields.
    pub fn len(&self) -> usize {
        match self {
            HashValue::Compact(v) => v.len(),
            HashValue::Table(m) => m.len(),
        }
    }

    /// Whether the hash has no field (such a key is removed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `field`.
    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        match self {
            HashValue::Compact(v) => v.iter().find(|(f, _)| &**f == field).map(|(_, v)| &**v),
            HashValue::Table(m) => m.get(field).map(|v| &**v),
        }
    }

    /// Sets `field` to `value`; true when the field is new.
    pub fn insert(&mut self, field: &[u8], value: &[u8], limits: HashLimits) -> bool {
        if let HashValue::Compact(v) = self {
            if let Some(slot) = v.iter_mut().find(|(f, _)| &**f == field) {
                slot.1 = value.into();
                if value.len() > limits.max_value {
                    self.convert_to_table();
                }
                return false;
            }
            v.push((field.into(), value.into()));
            if v.len() > limits.max_entries
                || field.len() > limits.max_value
                || value.len() > limits.max_value
            {
                self.convert_to_table();
            }
            return true;
        }
        match self {
            HashValue::Table(m) => m.insert(field.into(), value.into()).is_none(),
            HashValue::Compact(_) => unreachable!("converted above"),
        }
    }

    /// Removes `field`; true when it was there.
    pub fn remove(&mut self, field: &[u8]) -> bool {
        match self {
            HashValue::Compact(v) => match v.iter().position(|(f, _)| &**f == field) {
                Some(i) => {
                    v.remove(i);
                    true
                }
                None => false,
            },
            HashValue::Table(m) => m.remove(field).is_some(),
        }
    }

    /// Fields and values, in Redis's order for compact hashes.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
        match self {
            HashValue::Compact(v) => Box::new(v.iter().map(|(f, v)| (&**f, &**v))),
            HashValue::Table(m) => Box::new(m.iter().map(|(f, v)| (&**f, &**v))),
        }
    }

    /// Whether this hash is still in its compact, ordered form.
    pub fn is_compact(&self) -> bool {
        matches!(self, HashValue::Compact(_))
    }

    fn convert_to_table(&mut self) {
        if let HashValue::Compact(v) = self {
            let map = std::mem::take(v).into_iter().collect();
            *self = HashValue::Table(map);
        }
    }

    fn heap_size(&self) -> usize {
        match self {
            HashValue::Compact(v) => {
                alloc_size(v.capacity() * std::mem::size_of::<(Bytes, Bytes)>())
                    + v.iter().map(|(f, v)| alloc_size(f.len()) + alloc_size(v.len())).sum::<usize>()
            }
            HashValue::Table(m) => {
                m.capacity() * (std::mem::size_of::<(Bytes, Bytes)>() + 1)
                    + m.iter().map(|(f, v)| alloc_size(f.len()) + alloc_size(v.len())).sum::<usize>()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_hash_keeps_insertion_order_and_converts_when_large() {
        let limits = HashLimits { max_entries: 3, max_value: 8 };
        let mut h = HashValue::default();
        assert!(h.insert(b"b", b"1", limits));
        assert!(h.insert(b"a", b"2", limits));
        assert!(!h.insert(b"b", b"3", limits));
        let fields: Vec<_> = h.iter().map(|(f, _)| f.to_vec()).collect();
        assert_eq!(fields, vec![b"b".to_vec(), b"a".to_vec()]);
        assert!(h.is_compact());
        h.insert(b"c", b"x", limits);
        h.insert(b"d", b"x", limits);
        assert!(!h.is_compact());
        assert_eq!(h.get(b"b"), Some(&b"3"[..]));
        assert!(h.remove(b"a"));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn long_values_convert_to_a_table() {
        let mut h = HashValue::default();
        h.insert(b"f", &[b'x'; 65], HashLimits::default());
        assert!(!h.is_compact());
    }
}
