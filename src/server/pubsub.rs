//! Pub/Sub: who listens to which channel and pattern, and delivery of published messages as
//! pre-encoded frames on each subscriber's push queue, bounded as Redis's
//! `client-output-buffer-limit` bounds it. Costs nothing while nobody subscribes: PUBLISH then
//! reads one atomic, and other commands never look here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::RwLock;

use super::ClientInfo;
use crate::store::glob::glob_match;

/// Channel tracking invalidations go to for a RESP2 client that redirects them (Redis's
/// `__redis__:invalidate`).
pub const INVALIDATE_CHANNEL: &[u8] = b"__redis__:invalidate";

/// The limits of one client class: hard bytes, soft bytes and how long (seconds) the soft limit
/// may be exceeded before the client is closed. 0 disables each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Pending bytes that close the client at once.
    pub hard: u64,
    /// Pending bytes that close the client once exceeded for `soft_secs`.
    pub soft: u64,
    /// How long the soft limit may be exceeded.
    pub soft_secs: u64,
}

#[derive(Default)]
struct AtomicLimit {
    hard: AtomicU64,
    soft: AtomicU64,
    soft_secs: AtomicU64,
}

impl AtomicLimit {
    fn get(&self) -> Limit {
        Limit {
            hard: self.hard.load(Ordering::Relaxed),
            soft: self.soft.load(Ordering::Relaxed),
            soft_secs: self.soft_secs.load(Ordering::Relaxed),
        }
    }

    fn set(&self, l: Limit) {
        self.hard.store(l.hard, Ordering::Relaxed);
        self.soft.store(l.soft, Ordering::Relaxed);
        self.soft_secs.store(l.soft_secs, Ordering::Relaxed);
    }
}

/// The live `client-output-buffer-limit`: the `pubsub` class bounds the pushes waiting for a
/// subscribed client, the `normal` class those of any other client (tracking invalidations;
/// 0 there means the built-in safety bound). The `replica` class is kept for CONFIG only.
#[derive(Default)]
pub struct OutputLimits {
    normal: AtomicLimit,
    replica: AtomicLimit,
    pubsub: AtomicLimit,
}

/// Pending pushes of a normal-class client beyond this close it when its class sets no hard
/// limit: a client that never reads cannot grow the node's memory without bound.
pub const DEFAULT_PUSH_HARD_LIMIT: u64 = 32 * 1024 * 1024;

impl OutputLimits {
    /// Limits parsed from Redis's syntax (`normal 0 0 0 replica 256mb 64mb 60 pubsub 32mb 8mb 60`).
    pub fn parse(spec: &str) -> Result<OutputLimits, String> {
        let limits = OutputLimits::default();
        limits.apply(spec)?;
        Ok(limits)
    }

    /// Applies the classes named in `spec`, as CONFIG SET does; nothing changes on an error.
    pub fn apply(&self, spec: &str) -> Result<(), String> {
        let words: Vec<&str> = spec.split_whitespace().collect();
        if !words.len().is_multiple_of(4) {
            return Err("Wrong number of arguments in buffer limit configuration.".into());
        }
        let mut parsed = Vec::new();
        for w in words.chunks(4) {
            let class = match w[0].to_ascii_lowercase().as_str() {
                "normal" => &self.normal,
                "slave" | "replica" => &self.replica,
                "pubsub" => &self.pubsub,
                _ => return Err("Invalid client class specified in buffer limit configuration.".into()),
            };
            let size = |s: &str| crate::config::parse_size(s);
            let (Some(hard), Some(soft), Ok(soft_secs)) = (size(w[1]), size(w[2]), w[3].parse::<u64>())
            else {
                return Err(
                    "Error in hard, soft or soft_seconds setting in buffer limit configuration.".into()
                );
            };
            parsed.push((class, Limit { hard, soft, soft_secs }));
        }
        for (class, limit) in parsed {
            class.set(limit);
        }
        Ok(())
    }

    /// The value as CONFIG GET shows it (Redis's format, in bytes).
    pub fn describe(&self) -> String {
        let f = |name: &str, l: Limit| format!("{name} {} {} {}", l.hard, l.soft, l.soft_secs);
        format!(
            "{} {} {}",
            f("normal", self.normal.get()),
            f("slave", self.replica.get()),
            f("pubsub", self.pubsub.get())
        )
    }

    /// The limit for pushes to `client`: its class's, by whether it is subscribed.
    pub fn for_client(&self, client: &ClientInfo) -> Limit {
        if client.subscriptions() > 0 {
            return self.pubsub.get();
        }
        let mut l = self.normal.get();
        if l.hard == 0 {
            l.hard = DEFAULT_PUSH_HARD_LIMIT;
        }
        l
    }
}

type Subscribers = HashMap<u64, Arc<ClientInfo>>;

/// The node's subscriptions.
pub struct PubSub {
    /// Channel plus pattern subscriptions across all clients: PUBLISH's fast path.
    subscriptions: AtomicUsize,
    channels: RwLock<HashMap<Bytes, Subscribers>>,
    patterns: RwLock<HashMap<Bytes, Subscribers>>,
    /// Bounds of each subscriber's pending messages (shared with tracking).
    pub limits: Arc<OutputLimits>,
}

/// Which table a subscription is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SUBSCRIBE.
    Channel,
    /// PSUBSCRIBE.
    Pattern,
}

impl PubSub {
    /// An empty registry bounded by `limits`.
    pub fn new(limits: Arc<OutputLimits>) -> PubSub {
        PubSub {
            subscriptions: AtomicUsize::new(0),
            channels: RwLock::new(HashMap::new()),
            patterns: RwLock::new(HashMap::new()),
            limits,
        }
    }

    fn table(&self, kind: Kind) -> &RwLock<HashMap<Bytes, Subscribers>> {
        match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
        }
    }

    /// Adds `client` to `name`'s subscribers; false if it already was one.
    pub fn subscribe(&self, kind: Kind, client: &Arc<ClientInfo>, name: &Bytes) -> bool {
        let added = self
            .table(kind)
            .write()
            .entry(name.clone())
            .or_default()
            .insert(client.id, client.clone())
            .is_none();
        if added {
            self.subscriptions.fetch_add(1, Ordering::AcqRel);
        }
        added
    }

    /// Removes client `id` from `name`'s subscribers; false if it was not one.
    pub fn unsubscribe(&self, kind: Kind, id: u64, name: &[u8]) -> bool {
        let mut t = self.table(kind).write();
        let Some(subs) = t.get_mut(name) else { return false };
        let removed = subs.remove(&id).is_some();
        if subs.is_empty() {
            t.remove(name);
        }
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Sends `message` on `channel` to every subscriber but `me`, and returns how many received
    /// it (a client subscribed by channel and by a matching pattern counts twice, as in Redis),
    /// plus the frames for `me` itself, which go out before its PUBLISH reply.
    pub fn publish(&self, channel: &[u8], message: &[u8], me: u64) -> (usize, Vec<Bytes>) {
        if self.subscriptions.load(Ordering::Acquire) == 0 {
            return (0, Vec::new());
        }
        let mut count = 0;
        let mut own = Vec::new();
        let mut frames = Frames::default();
        if let Some(subs) = self.channels.read().get(channel) {
            for c in subs.values() {
                count += 1;
                let frame = frames.get(c.resp.load(Ordering::Relaxed), |out, v3| {
                    message_frame(out, v3, None, channel, message)
                });
                self.deliver(c, frame, me, &mut own);
            }
        }
        let patterns = self.patterns.read();
        for (pattern, subs) in patterns.iter() {
            if !glob_match(pattern, channel, false) {
                continue;
            }
            let mut frames = Frames::default();
            for c in subs.values() {
                count += 1;
                let frame = frames.get(c.resp.load(Ordering::Relaxed), |out, v3| {
                    message_frame(out, v3, Some(pattern), channel, message)
                });
                self.deliver(c, frame, me, &mut own);
            }
        }
        (count, own)
    }

    fn deliver(&self, to: &ClientInfo, frame: Bytes, me: u64, own: &mut Vec<Bytes>) {
        if to.id == me {
            own.push(frame);
        } else {
            push_to(to, &frame, false, self.limits.for_client(to));
        }
    }

    /// Channel subscribers of `channel` (PUBSUB NUMSUB: patterns not counted).
    pub fn numsub(&self, channel: &[u8]) -> usize {
        self.channels.read().get(channel).map_or(0, |s| s.len())
    }

    /// Distinct patterns subscribed to (PUBSUB NUMPAT).
    pub fn numpat(&self) -> usize {
        self.patterns.read().len()
    }

    /// Channels with subscribers matching `pattern` (PUBSUB CHANNELS).
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let t = self.channels.read();
        t.keys().filter(|c| pattern.is_none_or(|p| glob_match(p, c, false))).cloned().collect()
    }
}

/// A message frame encoded at most once per protocol version.
#[derive(Default)]
struct Frames {
    v2: Option<Bytes>,
    v3: Option<Bytes>,
}

impl Frames {
    fn get(&mut self, resp: u8, encode: impl FnOnce(&mut BytesMut, bool)) -> Bytes {
        let v3 = resp == 3;
        let slot = if v3 { &mut self.v3 } else { &mut self.v2 };
        slot.get_or_insert_with(|| {
            let mut out = BytesMut::new();
            encode(&mut out, v3);
            out.freeze()
        })
        .clone()
    }
}

fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.put_u8(b'$');
    out.put_slice(itoa::Buffer::new().format(b.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

/// `message channel payload`, or `pmessage pattern channel payload`: an array in RESP2, a
/// push in RESP3.
fn message_frame(out: &mut BytesMut, v3: bool, pattern: Option<&[u8]>, channel: &[u8], payload: &[u8]) {
    out.reserve(48 + channel.len() + payload.len() + pattern.map_or(0, |p| p.len()));
    out.put_u8(if v3 { b'>' } else { b'*' });
    match pattern {
        Some(p) => {
            out.put_slice(b"4\r\n$8\r\npmessage\r\n");
            bulk(out, p);
        }
        None => out.put_slice(b"3\r\n$7\r\nmessage\r\n"),
    }
    bulk(out, channel);
    bulk(out, payload);
}

/// A RESP2 tracking invalidation as Redis sends it to a redirect client in Pub/Sub mode: a
/// `message` on `__redis__:invalidate` whose payload is `value` (already encoded: an array
/// of keys, or a null for a flush).
pub fn invalidate_message(value: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(40 + value.len());
    out.put_slice(b"*3\r\n$7\r\nmessage\r\n");
    bulk(&mut out, INVALIDATE_CHANNEL);
    out.put_slice(value);
    out
}

/// Queues `frame` for `to` under `limit`; a client over its limit is closed, as Redis closes
/// a client past its output buffer limit. Pushes to a closing client are dropped.
pub fn push_to(to: &ClientInfo, frame: &[u8], dedup: bool, limit: Limit) {
    if to.killed.load(Ordering::Acquire) {
        return;
    }
    if !to.pushes.push(frame, dedup, limit) {
        tracing::warn!(
            client = to.id,
            "closing client that went past its output buffer limit (client-output-buffer-limit)"
        );
        to.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_print_as_redis() {
        let l = OutputLimits::parse("normal 0 0 0 replica 256mb 64mb 60 pubsub 32mb 8mb 60").unwrap();
        assert_eq!(l.describe(), "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60");
        l.apply("pubsub 1mb 0 0").unwrap();
        assert_eq!(l.pubsub.get(), Limit { hard: 1 << 20, soft: 0, soft_secs: 0 });
        assert!(l.apply("pubsub 1mb 0").is_err());
        assert!(l.apply("nobody 1 1 1").is_err());
        assert!(l.apply("pubsub x 1 1").is_err());
        assert_eq!(l.pubsub.get().hard, 1 << 20, "a bad value changes nothing");
    }

    #[test]
    fn message_frames_are_redis_bytes() {
        let mut out = BytesMut::new();
        message_frame(&mut out, false, None, b"ch", b"hi");
        assert_eq!(&out[..], b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
        let mut out = BytesMut::new();
        message_frame(&mut out, true, Some(b"c*"), b"ch", b"");
        assert_eq!(&out[..], b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$0\r\n\r\n");
    }
}
