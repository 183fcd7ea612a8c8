//! Storage: the keyspace, its values, slots, expiry and eviction. Knows nothing of sockets or
//! the protocol; commands call it through a [`Db`] view with the right shards locked.

pub mod clock;
pub mod glob;
pub mod keyspace;
pub mod memory;
pub mod slot;
pub mod value;

pub use keyspace::{Db, Entry, EvictionPolicy, Keyspace, WatchFlag};
pub use slot::{key_slot, SLOT_COUNT};
pub use value::{HashValue, Value};
