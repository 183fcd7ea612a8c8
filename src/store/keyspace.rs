//! The keyspace: every key of the node, kept per hash slot so that a slot's keys can be
//! counted, listed, scanned and later snapshotted for replication and migration without
//! touching the others. Slots are grouped into shards, each behind its own lock; a command
//! locks the shards of its keys (all of them for keyspace-wide commands) in ascending order,
//! which keeps multi-key commands and transactions atomic without a global lock.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::{HashMap, HashTable};
use parking_lot::{Mutex, MutexGuard};
use rand::Rng;
use smallvec::SmallVec;

use super::slot::{key_slot, SLOT_COUNT};
use super::value::{alloc_size, HashLimits, Value};
use super::{clock, glob::glob_match};

/// What a watcher is told: set when a watched key changes, read by EXEC.
pub type WatchFlag = Arc<AtomicBool>;

/// One key and what the store knows about it.
#[derive(Debug)]
pub struct Entry {
    key: Box<[u8]>,
    /// The value.
    pub value: Value,
    /// Absolute expiry in unix milliseconds; 0 when the key has no TTL.
    expire_at: u64,
    /// LRU clock or LFU counter, depending on the eviction policy.
    access: u32,
    /// Bytes this entry accounts for.
    mem: u32,
}

impl Entry {
    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Absolute expiry in unix milliseconds, if the key has a TTL.
    pub fn expire_at(&self) -> Option<u64> {
        (self.expire_at != 0).then_some(self.expire_at)
    }

    fn is_expired(&self, now: u64) -> bool {
        self.expire_at != 0 && self.expire_at <= now
    }

    fn footprint(&self) -> usize {
        // Table slot (a pointer and a control byte at the usual load factor), the boxed
        // entry, its key and its value.
        9 * 8 / 7
            + alloc_size(std::mem::size_of::<Entry>())
            + alloc_size(self.key.len())
            + self.value.heap_size()
    }
}

/// The keys of one hash slot.
#[derive(Default)]
struct SlotTable {
    /// Boxed entries: a table sized in powers of two is often half empty, and an empty
    /// pointer slot costs 8 bytes where an empty inline entry would cost 56.
    table: HashTable<Box<Entry>>,
    volatile: u32,
}

struct Watcher {
    flag: WatchFlag,
    /// The key was already logically expired at WATCH time (Redis then ignores its deletion).
    expired_at_watch: bool,
}

/// A group of slots behind one lock.
pub struct Shard {
    first_slot: usize,
    slots: Vec<SlotTable>,
    keys: usize,
    volatile: usize,
    expire_cursor: usize,
    watchers: HashMap<Box<[u8]>, Vec<Watcher>>,
}

/// Eviction policies, as Redis names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EvictionPolicy {
    /// Refuse writes when memory is full.
    NoEviction = 0,
    /// Evict the least recently used key.
    AllKeysLru = 1,
    /// Evict the least frequently used key.
    AllKeysLfu = 2,
    /// Evict the least recently used key among keys with a TTL.
    VolatileLru = 3,
    /// Evict the key with the nearest expiry.
    VolatileTtl = 4,
    /// Evict any random key.
    AllKeysRandom = 5,
    /// Evict a random key among keys with a TTL.
    VolatileRandom = 6,
    /// Evict the least frequently used key among keys with a TTL.
    VolatileLfu = 7,
}

impl EvictionPolicy {
    /// All policies with their Redis names.
    pub const ALL: [(EvictionPolicy, &'static str); 8] = [
        (EvictionPolicy::NoEviction, "noeviction"),
        (EvictionPolicy::AllKeysLru, "allkeys-lru"),
        (EvictionPolicy::AllKeysLfu, "allkeys-lfu"),
        (EvictionPolicy::VolatileLru, "volatile-lru"),
        (EvictionPolicy::VolatileTtl, "volatile-ttl"),
        (EvictionPolicy::AllKeysRandom, "allkeys-random"),
        (EvictionPolicy::VolatileRandom, "volatile-random"),
        (EvictionPolicy::VolatileLfu, "volatile-lfu"),
    ];

    /// Parses a Redis policy name (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(p, _)| *p)
    }

    /// The Redis name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(p, _)| *p == self).map(|(_, n)| *n).unwrap_or("noeviction")
    }

    fn is_lfu(self) -> bool {
        matches!(self, EvictionPolicy::AllKeysLfu | EvictionPolicy::VolatileLfu)
    }

    fn volatile_only(self) -> bool {
        matches!(
            self,
            EvictionPolicy::VolatileLru
                | EvictionPolicy::VolatileTtl
                | EvictionPolicy::VolatileRandom
                | EvictionPolicy::VolatileLfu
        )
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL.get(v as usize).map(|(p, _)| *p).unwrap_or(EvictionPolicy::NoEviction)
    }
}

/// Counters INFO reports.
#[derive(Default)]
pub struct KeyspaceStats {
    /// Keys removed because their TTL passed.
    pub expired_keys: AtomicU64,
    /// Keys removed to stay under maxmemory.
    pub evicted_keys: AtomicU64,
    /// Reads that found their key.
    pub hits: AtomicU64,
    /// Reads that did not.
    pub misses: AtomicU64,
    /// Writes since start (Redis's `dirty`), for INFO.
    pub dirty: AtomicU64,
}

/// Settings the keyspace reads on every access; changeable at run time by CONFIG SET.
pub struct KeyspaceSettings {
    policy: AtomicU8,
    /// `maxmemory-samples`.
    pub samples: AtomicUsize,
    /// `lfu-log-factor`.
    pub lfu_log_factor: AtomicUsize,
    /// `lfu-decay-time` in minutes.
    pub lfu_decay_time: AtomicUsize,
    /// `hash-max-listpack-entries`.
    pub hash_max_entries: AtomicUsize,
    /// `hash-max-listpack-value`.
    pub hash_max_value: AtomicUsize,
}

impl KeyspaceSettings {
    /// The eviction policy in force.
    pub fn policy(&self) -> EvictionPolicy {
        EvictionPolicy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    /// Changes the eviction policy.
    pub fn set_policy(&self, p: EvictionPolicy) {
        self.policy.store(p as u8, Ordering::Relaxed);
    }

    /// Limits of compact hashes.
    pub fn hash_limits(&self) -> HashLimits {
        HashLimits {
            max_entries: self.hash_max_entries.load(Ordering::Relaxed),
            max_value: self.hash_max_value.load(Ordering::Relaxed),
        }
    }
}

impl Default for KeyspaceSettings {
    fn default() -> Self {
        KeyspaceSettings {
            policy: AtomicU8::new(EvictionPolicy::NoEviction as u8),
            samples: AtomicUsize::new(5),
            lfu_log_factor: AtomicUsize::new(10),
            lfu_decay_time: AtomicUsize::new(1),
            hash_max_entries: AtomicUsize::new(128),
            hash_max_value: AtomicUsize::new(64),
        }
    }
}

/// The node's keys, sharded by hash slot.
pub struct Keyspace {
    shards: Box<[Mutex<Shard>]>,
    slots_per_shard: usize,
    hasher: foldhash::fast::RandomState,
    /// Bytes accounted to entries, summed over shards.
    dataset_bytes: AtomicI64,
    key_count: AtomicI64,
    /// Counters for INFO.
    pub stats: KeyspaceStats,
    /// Run-time settings.
    pub settings: KeyspaceSettings,
    listeners: parking_lot::RwLock<Vec<Arc<dyn ChangeListener>>>,
    has_listeners: AtomicBool,
}

impl Keyspace {
    /// A keyspace with `shards` locks (rounded to a power of two between 1 and 16384).
    pub fn new(shards: usize) -> Self {
        let shards = shards.clamp(1, SLOT_COUNT).next_power_of_two();
        let slots_per_shard = SLOT_COUNT / shards;
        let shards = (0..shards)
            .map(|i| {
                Mutex::new(Shard {
                    first_slot: i * slots_per_shard,
                    slots: (0..slots_per_shard).map(|_| SlotTable::default()).collect(),
                    keys: 0,
                    volatile: 0,
                    expire_cursor: 0,
                    watchers: HashMap::new(),
                })
            })
            .collect();
        Keyspace {
            shards,
            slots_per_shard,
            hasher: Default::default(),
            dataset_bytes: AtomicI64::new(0),
            key_count: AtomicI64::new(0),
            stats: KeyspaceStats::default(),
            settings: KeyspaceSettings::default(),
            listeners: Default::default(),
            has_listeners: AtomicBool::new(false),
        }
    }

    /// Adds a listener that hears of every later change.
    pub fn add_listener(&self, listener: Arc<dyn ChangeListener>) {
        self.listeners.write().push(listener);
        self.has_listeners.store(true, Ordering::Release);
    }

    fn shard_of_slot(&self, slot: usize) -> usize {
        slot / self.slots_per_shard
    }

    /// Locks the shards holding `keys`, in ascending order so that concurrent commands never
    /// deadlock.
    pub fn lock_keys<'a, K: AsRef<[u8]>>(&'a self, keys: impl IntoIterator<Item = K>, now: u64) -> Db<'a> {
        let mut idx: SmallVec<[usize; 4]> =
            keys.into_iter().map(|k| self.shard_of_slot(key_slot(k.as_ref()) as usize)).collect();
        idx.sort_unstable();
        idx.dedup();
        let locked = idx.into_iter().map(|i| (i, self.shards[i].lock())).collect();
        Db { ks: self, locked, all: false, now, memo: Memo::default() }
    }

    /// Locks the shard holding `slot`: what moving a slot's keys to another node needs.
    pub fn lock_slot(&self, slot: u16, now: u64) -> Db<'_> {
        let i = self.shard_of_slot(slot as usize);
        Db {
            ks: self,
            locked: smallvec::smallvec![(i, self.shards[i].lock())],
            all: false,
            now,
            memo: Memo::default(),
        }
    }

    /// Locks every shard, for keyspace-wide commands (KEYS, SCAN, FLUSHALL, ...).
    pub fn lock_all(&self, now: u64) -> Db<'_> {
        let locked = self.shards.iter().enumerate().map(|(i, s)| (i, s.lock())).collect();
        Db { ks: self, locked, all: true, now, memo: Memo::default() }
    }

    /// Locks nothing: for commands that touch no key.
    pub fn lock_none(&self, now: u64) -> Db<'_> {
        Db { ks: self, locked: SmallVec::new(), all: false, now, memo: Memo::default() }
    }

    /// Number of keys, including expired keys not yet reclaimed (as Redis's DBSIZE).
    pub fn len(&self) -> usize {
        self.key_count.load(Ordering::Relaxed).max(0) as usize
    }

    /// Whether the keyspace holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of keys with a TTL.
    pub fn volatile_len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().volatile).sum()
    }

    /// Bytes accounted to keys and values.
    pub fn dataset_bytes(&self) -> usize {
        self.dataset_bytes.load(Ordering::Relaxed).max(0) as usize
    }

    fn hash(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// One pass of active expiry: looks at up to `budget` keys with a TTL, continuing where
    /// the last pass stopped, and removes the expired ones. Returns (checked, expired).
    pub fn active_expire(&self, budget: usize) -> (usize, usize) {
        let now = clock::now_ms();
        let (mut checked, mut expired) = (0, 0);
        let per_shard = (budget / self.shards.len()).max(16);
        for (i, shard) in self.shards.iter().enumerate() {
            let mut guard = shard.lock();
            if guard.volatile == 0 {
                continue;
            }
            let mut db = Db { ks: self, locked: SmallVec::new(), all: false, now, memo: Memo::default() };
            db.locked.push((i, guard));
            let (c, e) = db.expire_sweep(0, per_shard);
            guard = db.locked.pop().unwrap().1;
            drop(guard);
            checked += c;
            expired += e;
        }
        (checked, expired)
    }

    /// Evicts one key by `policy`. Returns false when no key qualifies.
    pub fn evict_one(&self) -> bool {
        let policy = self.settings.policy();
        if policy == EvictionPolicy::NoEviction {
            return false;
        }
        let samples = self.settings.samples.load(Ordering::Relaxed).max(1);
        let now = clock::now_ms();
        let lru_now = now as u32;
        let mut rng = rand::thread_rng();
        // (score: higher is a better victim, shard, key)
        let mut best: Option<(u64, usize, Box<[u8]>)> = None;
        for _ in 0..samples {
            let si = rng.gen_range(0..self.shards.len());
            let shard = self.shards[si].lock();
            if shard.keys == 0 || (policy.volatile_only() && shard.volatile == 0) {
                continue;
            }
            let Some(e) = shard.random_entry(&mut rng, policy.volatile_only()) else {
                continue;
            };
            let score = match policy {
                EvictionPolicy::AllKeysLru | EvictionPolicy::VolatileLru => {
                    lru_idle(lru_now, e.access) as u64
                }
                EvictionPolicy::AllKeysLfu | EvictionPolicy::VolatileLfu => {
                    let decay = self.settings.lfu_decay_time.load(Ordering::Relaxed);
                    255 - lfu_decayed(e.access, decay, now) as u64
                }
                EvictionPolicy::VolatileTtl => u64::MAX - e.expire_at,
                _ => rng.gen(),
            };
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, si, e.key.clone()));
            }
        }
        let Some((_, _, key)) = best else {
            return self.evict_fallback(policy);
        };
        let mut db = self.lock_keys([&key[..]], now);
        db.remove_evicted(&key)
    }

    /// When random sampling found nothing (a sparse keyspace), evicts the first candidate.
    fn evict_fallback(&self, policy: EvictionPolicy) -> bool {
        let now = clock::now_ms();
        for shard in self.shards.iter() {
            let key = {
                let s = shard.lock();
                s.slots
                    .iter()
                    .flat_map(|t| t.table.iter())
                    .find(|e| !policy.volatile_only() || e.expire_at != 0)
                    .map(|e| e.key.clone())
            };
            if let Some(key) = key {
                let mut db = self.lock_keys([&key[..]], now);
                return db.remove_evicted(&key);
            }
        }
        false
    }
}

impl Shard {
    fn random_entry(&self, rng: &mut impl Rng, volatile: bool) -> Option<&Entry> {
        let n = self.slots.len();
        let start = rng.gen_range(0..n);
        for off in 0..n {
            let t = &self.slots[(start + off) % n];
            if t.table.is_empty() || (volatile && t.volatile == 0) {
                continue;
            }
            if volatile {
                let candidates = t.table.iter().filter(|e| e.expire_at != 0);
                let count = t.volatile as usize;
                let pick = candidates.clone().nth(rng.gen_range(0..count)).or_else(|| candidates.last());
                return pick.map(|e| &**e);
            }
            return t.table.iter().nth(rng.gen_range(0..t.table.len())).map(|e| &**e);
        }
        None
    }
}

/// Keeps a slot's and its shard's counts of keys with a TTL right when a key's TTL goes from
/// `had` to `has`.
fn count_volatile(slot: &mut u32, shard: &mut usize, had: bool, has: bool) {
    match (had, has) {
        (false, true) => {
            *slot += 1;
            *shard += 1;
        }
        (true, false) => {
            *slot -= 1;
            *shard -= 1;
        }
        _ => {}
    }
}

/// Milliseconds since the key was last touched, from the wrapping LRU clock.
fn lru_idle(now: u32, then: u32) -> u32 {
    now.wrapping_sub(then)
}

/// The LFU counter (low 8 bits) after decay by the minutes elapsed (high 16 bits).
fn lfu_decayed(access: u32, decay_minutes: usize, now_ms: u64) -> u8 {
    let counter = (access & 0xff) as u8;
    if decay_minutes == 0 {
        return counter;
    }
    let then = (access >> 8) as u16;
    let now = clock::lfu_minutes_at(now_ms);
    let elapsed = now.wrapping_sub(then) as usize;
    let periods = elapsed / decay_minutes;
    counter.saturating_sub(periods.min(255) as u8)
}

/// Redis's logarithmic LFU increment.
fn lfu_incr(counter: u8, log_factor: usize) -> u8 {
    if counter == 255 {
        return 255;
    }
    let r: f64 = rand::thread_rng().gen();
    let base = counter.saturating_sub(5) as f64;
    let p = 1.0 / (base * log_factor as f64 + 1.0);
    if r < p {
        counter + 1
    } else {
        counter
    }
}

/// Longest key whose location [`Db`] remembers.
const MEMO_KEY: usize = 62;

/// The last key located, with its slot and hash.
struct Memo {
    key: [u8; MEMO_KEY],
    /// Length of `key`; `u8::MAX` when empty.
    len: u8,
    slot: u16,
    hash: u64,
}

impl Default for Memo {
    fn default() -> Self {
        Memo { key: [0; MEMO_KEY], len: u8::MAX, slot: 0, hash: 0 }
    }
}

/// A view of the keyspace with some shards locked: what a command runs against.
pub struct Db<'a> {
    ks: &'a Keyspace,
    locked: SmallVec<[(usize, MutexGuard<'a, Shard>); 2]>,
    all: bool,
    now: u64,
    memo: Memo,
}

/// Why a key is being removed, for counters and watchers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    Command,
    Expired,
    Evicted,
    Migrated,
}

/// Why a key changed, as [`ChangeListener`]s are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeCause {
    /// A command wrote or deleted it.
    Command,
    /// Its TTL passed.
    Expired,
    /// maxmemory evicted it.
    Evicted,
    /// Its slot moved to another node, which holds it now; the key itself did not change.
    Migrated,
}

/// One change to one key: produced once by the keyspace, under the key's shard lock (so
/// listeners see each key's changes in order), and fed to replication, write-behind and
/// client-side caching invalidation alike.
pub struct Change<'e> {
    /// The key.
    pub key: &'e [u8],
    /// Its hash slot.
    pub slot: u16,
    /// The key's state after the change; `None` when it no longer exists.
    pub entry: Option<&'e Entry>,
    /// What caused it.
    pub cause: ChangeCause,
    /// When (unix ms, the command's time).
    pub now_ms: u64,
}

/// Something that must hear of every change to the keyspace. Called with a shard lock held:
/// implementations only record or enqueue, and never call back into the keyspace.
pub trait ChangeListener: Send + Sync {
    /// A key was written or removed.
    fn changed(&self, change: &Change<'_>);
    /// Every key was removed (FLUSHALL / FLUSHDB).
    fn flushed(&self, now_ms: u64);
}

impl<'a> Db<'a> {
    /// The time this command runs at, in unix milliseconds (fixed for the command, as in Redis).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The keyspace this view locks.
    pub fn keyspace(&self) -> &'a Keyspace {
        self.ks
    }

    fn shard(&mut self, slot: usize) -> &mut Shard {
        let idx = self.ks.shard_of_slot(slot);
        if self.all {
            return &mut self.locked[idx].1;
        }
        match self.locked.iter_mut().find(|(i, _)| *i == idx) {
            Some((_, g)) => g,
            None => panic!("command touched slot {slot} whose shard it did not lock"),
        }
    }

    /// Slot and table hash of `key`. A command usually touches the same key several times
    /// (look up, change, signal), so the last short key's result is remembered.
    fn loc(&mut self, key: &[u8]) -> (usize, u64) {
        let m = &self.memo;
        if m.len as usize == key.len() && m.len != u8::MAX && &m.key[..key.len()] == key {
            return (m.slot as usize, m.hash);
        }
        let slot = key_slot(key);
        let hash = self.ks.hash(key);
        if key.len() <= MEMO_KEY {
            self.memo.key[..key.len()].copy_from_slice(key);
            self.memo.len = key.len() as u8;
            self.memo.slot = slot;
            self.memo.hash = hash;
        }
        (slot as usize, hash)
    }

    fn locate(&mut self, key: &[u8]) -> (u64, &mut Shard, usize) {
        let (slot, hash) = self.loc(key);
        let shard = self.shard(slot);
        let local = slot - shard.first_slot;
        (hash, shard, local)
    }

    /// The entry of `key` if it exists and has not expired; counts a hit or a miss and
    /// refreshes the key's LRU/LFU data.
    pub fn get(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let found = self.lookup(key, true);
        let stat = if found { &self.ks.stats.hits } else { &self.ks.stats.misses };
        stat.fetch_add(1, Ordering::Relaxed);
        if found {
            self.entry_mut(key)
        } else {
            None
        }
    }

    /// Like [`Db::get`] but counts no hit or miss: for writes and existence checks.
    pub fn get_quiet(&mut self, key: &[u8]) -> Option<&mut Entry> {
        if self.lookup(key, true) {
            self.entry_mut(key)
        } else {
            None
        }
    }

    /// Like [`Db::get_quiet`] without touching LRU/LFU data (TYPE, TTL, OBJECT, SCAN TYPE).
    pub fn peek(&mut self, key: &[u8]) -> Option<&mut Entry> {
        if self.lookup(key, false) {
            self.entry_mut(key)
        } else {
            None
        }
    }

    /// Whether `key` exists (and has not expired).
    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.lookup(key, false)
    }

    fn entry_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let (hash, shard, local) = self.locate(key);
        shard.slots[local].table.find_mut(hash, |e| &*e.key == key).map(|e| &mut **e)
    }

    /// Finds the key, removes it when expired, optionally refreshes its access data.
    fn lookup(&mut self, key: &[u8], touch: bool) -> bool {
        let now = self.now;
        let policy = self.ks.settings.policy();
        let log_factor = self.ks.settings.lfu_log_factor.load(Ordering::Relaxed);
        let decay = self.ks.settings.lfu_decay_time.load(Ordering::Relaxed);
        let (hash, shard, local) = self.locate(key);
        let Some(e) = shard.slots[local].table.find_mut(hash, |e| &*e.key == key) else {
            return false;
        };
        if e.is_expired(now) {
            self.remove_with(key, Removal::Expired);
            return false;
        }
        if touch {
            e.access = if policy.is_lfu() {
                let c = lfu_incr(lfu_decayed(e.access, decay, now), log_factor);
                ((clock::lfu_minutes_at(now) as u32) << 8) | c as u32
            } else {
                now as u32
            };
        }
        true
    }

    fn fresh_access(&self) -> u32 {
        if self.ks.settings.policy().is_lfu() {
            // New keys start at LFU_INIT_VAL (5) so they are not evicted at once.
            ((clock::lfu_minutes_at(self.now) as u32) << 8) | 5
        } else {
            self.now as u32
        }
    }

    /// Replaces the value of a live `key` in place; gives `value` back when the key is
    /// missing or expired.
    fn overwrite(&mut self, key: &[u8], value: Value, expire_at: u64) -> Result<Option<Value>, Value> {
        let ks = self.ks;
        let now = self.now;
        let access = self.fresh_access();
        let (hash, shard, local) = self.locate(key);
        let table = &mut shard.slots[local];
        if let Some(e) = table.table.find_mut(hash, |e| &*e.key == key) {
            if !e.is_expired(now) {
                // Overwrite in place: the key and its entry keep their allocations.
                count_volatile(&mut table.volatile, &mut shard.volatile, e.expire_at != 0, expire_at != 0);
                let old = std::mem::replace(&mut e.value, value);
                e.expire_at = expire_at;
                e.access = access;
                let mem = e.footprint() as u32;
                ks.dataset_bytes.fetch_add(mem as i64 - e.mem as i64, Ordering::Relaxed);
                e.mem = mem;
                self.signal(key, Removal::Command);
                return Ok(Some(old));
            }
        }
        Err(value)
    }

    /// Stores `value` under `key` with expiry `expire_at` (unix ms, 0 for none), replacing
    /// any previous value. Returns the previous value if it was live.
    pub fn set(&mut self, key: &[u8], value: Value, expire_at: u64) -> Option<Value> {
        let value = match self.overwrite(key, value, expire_at) {
            Ok(old) => return old,
            Err(value) => value,
        };
        // A key that expired is removed as expired first, as Redis's lookupKeyWrite does.
        self.lookup(key, false);
        let access = self.fresh_access();
        let mut entry = Entry { key: key.into(), value, expire_at, access, mem: 0 };
        entry.mem = entry.footprint() as u32;
        let mem = entry.mem as i64;
        let ks = self.ks;
        let (hash, shard, local) = self.locate(key);
        let table = &mut shard.slots[local];
        if expire_at != 0 {
            table.volatile += 1;
            shard.volatile += 1;
        }
        table.table.insert_unique(hash, Box::new(entry), |e| ks.hash(&e.key));
        shard.keys += 1;
        ks.key_count.fetch_add(1, Ordering::Relaxed);
        ks.dataset_bytes.fetch_add(mem, Ordering::Relaxed);
        self.signal(key, Removal::Command);
        None
    }

    /// Records that the value of `key` was changed in place through [`Db::get`]: memory
    /// accounting, watchers, and removal of a hash left empty.
    pub fn modified(&mut self, key: &[u8]) {
        let ks = self.ks;
        let (hash, shard, local) = self.locate(key);
        let mut now_empty = false;
        if let Some(e) = shard.slots[local].table.find_mut(hash, |e| &*e.key == key) {
            let new = e.footprint() as u32;
            ks.dataset_bytes.fetch_add(new as i64 - e.mem as i64, Ordering::Relaxed);
            e.mem = new;
            now_empty = matches!(&e.value, Value::Hash(h) if h.is_empty());
        }
        if now_empty {
            self.remove_with(key, Removal::Command);
        } else {
            self.signal(key, Removal::Command);
        }
    }

    /// Sets or clears the expiry of an existing key. Returns false if the key is missing.
    pub fn set_expire(&mut self, key: &[u8], expire_at: Option<u64>) -> bool {
        let (hash, shard, local) = self.locate(key);
        let table = &mut shard.slots[local];
        let Some(e) = table.table.find_mut(hash, |e| &*e.key == key) else {
            return false;
        };
        let new = expire_at.unwrap_or(0);
        count_volatile(&mut table.volatile, &mut shard.volatile, e.expire_at != 0, new != 0);
        e.expire_at = new;
        self.signal(key, Removal::Command);
        true
    }

    /// Removes `key` if it exists and has not expired; returns its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        if !self.lookup(key, false) {
            return None;
        }
        self.remove_with(key, Removal::Command)
    }

    /// Removes `key` because its slot moved to another node (which already holds it):
    /// listeners hear [`ChangeCause::Migrated`], so write-behind leaves its row alone.
    pub fn remove_migrated(&mut self, key: &[u8]) -> Option<Entry> {
        self.remove_with(key, Removal::Migrated)
    }

    fn remove_evicted(&mut self, key: &[u8]) -> bool {
        self.remove_with(key, Removal::Evicted).is_some()
    }

    fn remove_with(&mut self, key: &[u8], why: Removal) -> Option<Entry> {
        let ks = self.ks;
        let (hash, shard, local) = self.locate(key);
        let table = &mut shard.slots[local];
        let Ok(found) = table.table.find_entry(hash, |e| &*e.key == key) else {
            return None;
        };
        let (entry, _) = found.remove();
        let entry = *entry;
        if entry.expire_at != 0 {
            table.volatile -= 1;
            shard.volatile -= 1;
        }
        shard.keys -= 1;
        ks.key_count.fetch_sub(1, Ordering::Relaxed);
        ks.dataset_bytes.fetch_sub(entry.mem as i64, Ordering::Relaxed);
        match why {
            Removal::Expired => ks.stats.expired_keys.fetch_add(1, Ordering::Relaxed),
            Removal::Evicted => ks.stats.evicted_keys.fetch_add(1, Ordering::Relaxed),
            Removal::Command | Removal::Migrated => 0,
        };
        self.signal(key, why);
        Some(entry)
    }

    /// Tells WATCHers and change listeners that `key` changed.
    fn signal(&mut self, key: &[u8], why: Removal) {
        if why == Removal::Command {
            self.ks.stats.dirty.fetch_add(1, Ordering::Relaxed);
        }
        if self.ks.has_listeners.load(Ordering::Acquire) {
            self.notify_listeners(key, why);
        }
        let (slot, _) = self.loc(key);
        let shard = self.shard(slot);
        if shard.watchers.is_empty() {
            return;
        }
        if let Some(list) = shard.watchers.get_mut(key) {
            for w in list.iter_mut() {
                if w.expired_at_watch && why == Removal::Expired {
                    w.expired_at_watch = false;
                } else {
                    w.flag.store(true, Ordering::Release);
                }
            }
        }
    }

    fn notify_listeners(&mut self, key: &[u8], why: Removal) {
        let ks = self.ks;
        let now_ms = self.now;
        let (hash, shard, local) = self.locate(key);
        let slot = (shard.first_slot + local) as u16;
        let entry = shard.slots[local].table.find(hash, |e| &*e.key == key).map(|e| &**e);
        let cause = match why {
            Removal::Expired => ChangeCause::Expired,
            Removal::Evicted => ChangeCause::Evicted,
            Removal::Command => ChangeCause::Command,
            Removal::Migrated => ChangeCause::Migrated,
        };
        let change = Change { key, slot, entry, cause, now_ms };
        for l in ks.listeners.read().iter() {
            l.changed(&change);
        }
    }

    /// Registers `flag` to be raised when `key` changes. Returns whether the key is live.
    pub fn watch(&mut self, key: &[u8], flag: &WatchFlag) -> bool {
        let now = self.now;
        let (hash, shard, local) = self.locate(key);
        let state = shard.slots[local].table.find(hash, |e| &*e.key == key).map(|e| e.is_expired(now));
        let list = shard.watchers.entry(key.into()).or_default();
        if !list.iter().any(|w| Arc::ptr_eq(&w.flag, flag)) {
            list.push(Watcher { flag: flag.clone(), expired_at_watch: state == Some(true) });
        }
        state == Some(false)
    }

    /// Whether `key` is present but logically expired (EXEC aborts if a watched key expired).
    pub fn is_logically_expired(&mut self, key: &[u8]) -> bool {
        let now = self.now;
        let (hash, shard, local) = self.locate(key);
        shard.slots[local].table.find(hash, |e| &*e.key == key).is_some_and(|e| e.is_expired(now))
    }

    /// Removes the watch of `flag` on `key`.
    pub fn unwatch(&mut self, key: &[u8], flag: &WatchFlag) {
        let slot = key_slot(key) as usize;
        let shard = self.shard(slot);
        if let Some(list) = shard.watchers.get_mut(key) {
            list.retain(|w| !Arc::ptr_eq(&w.flag, flag));
            if list.is_empty() {
                shard.watchers.remove(key);
            }
        }
    }

    fn require_all(&self) {
        assert!(self.all, "keyspace-wide operation without all shards locked");
    }

    /// Removes every key (FLUSHALL / FLUSHDB). Returns how many there were.
    pub fn flush(&mut self) -> usize {
        self.require_all();
        let ks = self.ks;
        let mut removed = 0;
        for (_, shard) in self.locked.iter_mut() {
            let Shard { watchers, slots, first_slot, .. } = &mut **shard;
            for (key, list) in watchers.iter() {
                let slot = key_slot(key) as usize - *first_slot;
                let hash = ks.hash(key);
                if slots[slot].table.find(hash, |e| &e.key == key).is_some() {
                    list.iter().for_each(|w| w.flag.store(true, Ordering::Release));
                }
            }
            for t in shard.slots.iter_mut() {
                removed += t.table.len();
                *t = SlotTable::default();
            }
            shard.keys = 0;
            shard.volatile = 0;
        }
        ks.key_count.store(0, Ordering::Relaxed);
        ks.dataset_bytes.store(0, Ordering::Relaxed);
        ks.stats.dirty.fetch_add(removed as u64, Ordering::Relaxed);
        for l in ks.listeners.read().iter() {
            l.flushed(self.now);
        }
        removed
    }

    /// Live keys matching `pattern` (KEYS).
    pub fn keys(&mut self, pattern: &[u8]) -> Vec<Box<[u8]>> {
        self.require_all();
        let now = self.now;
        let all = pattern == b"*";
        let mut out = Vec::new();
        for (_, shard) in self.locked.iter() {
            for t in shard.slots.iter() {
                for e in t.table.iter() {
                    if !e.is_expired(now) && (all || glob_match(pattern, &e.key, false)) {
                        out.push(e.key.clone());
                    }
                }
            }
        }
        out
    }

    /// One SCAN step from `cursor` (a slot number): whole slots are returned until at least
    /// `count` keys were looked at, so every key present for the whole scan is returned once.
    /// Returns the next cursor (0 when done) and the keys found.
    pub fn scan(
        &mut self,
        cursor: u64,
        count: usize,
        mut filter: impl FnMut(&Entry) -> bool,
    ) -> (u64, Vec<Box<[u8]>>) {
        self.require_all();
        let now = self.now;
        let mut out = Vec::new();
        let mut seen = 0;
        let mut slot = cursor as usize;
        while slot < SLOT_COUNT && seen < count.max(1) {
            let shard = &self.locked[self.ks.shard_of_slot(slot)].1;
            let t = &shard.slots[slot - shard.first_slot];
            seen += t.table.len();
            for e in t.table.iter() {
                if !e.is_expired(now) && filter(e) {
                    out.push(e.key.clone());
                }
            }
            slot += 1;
        }
        let next = if slot >= SLOT_COUNT { 0 } else { slot as u64 };
        (next, out)
    }

    /// A random live key (RANDOMKEY), if any.
    pub fn random_key(&mut self) -> Option<Box<[u8]>> {
        self.require_all();
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            if self.ks.is_empty() {
                return None;
            }
            let weights: usize = self.locked.iter().map(|(_, s)| s.keys).sum();
            if weights == 0 {
                return None;
            }
            let mut pick = rng.gen_range(0..weights);
            let si = self
                .locked
                .iter()
                .position(|(_, s)| {
                    if pick < s.keys {
                        true
                    } else {
                        pick -= s.keys;
                        false
                    }
                })
                .unwrap_or(0);
            let key = self.locked[si].1.random_entry(&mut rng, false).map(|e| e.key.clone())?;
            if self.lookup(&key, false) {
                return Some(key);
            }
        }
        None
    }

    /// Number of keys in `slot`, counting expired keys not yet reclaimed.
    pub fn count_in_slot(&mut self, slot: usize) -> usize {
        let shard = self.shard(slot);
        shard.slots[slot - shard.first_slot].table.len()
    }

    /// Up to `max` keys of `slot` (CLUSTER GETKEYSINSLOT; later, migration), expired keys not
    /// yet reclaimed included, as Redis counts them.
    pub fn keys_in_slot(&mut self, slot: usize, max: usize) -> Vec<Box<[u8]>> {
        let shard = self.shard(slot);
        shard.slots[slot - shard.first_slot].table.iter().take(max).map(|e| e.key.clone()).collect()
    }

    /// Removes expired keys from the locked shards, looking at up to `budget` entries.
    fn expire_sweep(&mut self, shard_pos: usize, budget: usize) -> (usize, usize) {
        let now = self.now;
        let (mut checked, mut expired_keys) = (0usize, Vec::new());
        {
            let shard = &mut self.locked[shard_pos].1;
            let n = shard.slots.len();
            let mut visited = 0;
            while checked < budget && visited < n {
                let local = shard.expire_cursor % n;
                shard.expire_cursor = (shard.expire_cursor + 1) % n;
                visited += 1;
                let t = &shard.slots[local];
                if t.volatile == 0 {
                    continue;
                }
                for e in t.table.iter() {
                    checked += 1;
                    if e.is_expired(now) {
                        expired_keys.push(e.key.clone());
                    }
                }
            }
        }
        for key in &expired_keys {
            self.remove_with(key, Removal::Expired);
        }
        (checked, expired_keys.len())
    }

    /// Number of keys with a TTL, counted over the locked shards (INFO keyspace under
    /// `Keys::All`, safe inside EXEC where [`Keyspace::volatile_len`] would lock again).
    pub fn volatile_count(&self) -> usize {
        self.require_all();
        self.locked.iter().map(|(_, s)| s.volatile).sum()
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;

    /// (key, value after the change, cause)
    type Record = (Vec<u8>, Option<Vec<u8>>, ChangeCause);

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Record>>);

    impl ChangeListener for Recorder {
        fn changed(&self, c: &Change<'_>) {
            let value = c.entry.map(|e| match &e.value {
                Value::Str(s) => s.to_vec(),
                Value::Hash(_) => b"<hash>".to_vec(),
            });
            self.0.lock().push((c.key.to_vec(), value, c.cause));
        }
        fn flushed(&self, _: u64) {
            self.0.lock().push((b"*".to_vec(), None, ChangeCause::Command));
        }
    }

    #[test]
    fn every_write_produces_exactly_one_change_record() {
        let ks = Keyspace::new(4);
        let rec = Arc::new(Recorder::default());
        ks.add_listener(rec.clone());
        let now = clock::now_ms();
        {
            let mut db = ks.lock_keys([b"k"], now);
            db.set(b"k", Value::Str(b"1".as_slice().into()), 0);
            db.set(b"k", Value::Str(b"2".as_slice().into()), 0);
            db.set_expire(b"k", Some(now - 1));
            assert!(db.get(b"k").is_none());
        }
        ks.lock_all(now).flush();
        let got = rec.0.lock().clone();
        assert_eq!(
            got,
            vec![
                (b"k".to_vec(), Some(b"1".to_vec()), ChangeCause::Command),
                (b"k".to_vec(), Some(b"2".to_vec()), ChangeCause::Command),
                (b"k".to_vec(), Some(b"2".to_vec()), ChangeCause::Command),
                (b"k".to_vec(), None, ChangeCause::Expired),
                (b"*".to_vec(), None, ChangeCause::Command),
            ]
        );
    }
}
