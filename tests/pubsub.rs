//! Pub/Sub: subscribe and publish replies and messages byte-identical to the reference
//! Redis in RESP2 and RESP3, the RESP2 subscribed-mode restrictions with Redis's error text,
//! PUBSUB's replies, tracking invalidations redirected to a RESP2 subscriber as
//! `__redis__:invalidate` messages, and slow subscribers closed at their output limit.

mod common;

use std::time::{Duration, Instant};

use common::{encode, reference_redis, unique_prefix, Raw, TestNode};

/// One connection to our node and one to the reference Redis, driven in step.
struct Pair {
    ours: Raw,
    theirs: Raw,
}

impl Pair {
    fn new(node: &TestNode, redis: std::net::SocketAddr, resp3: bool) -> Pair {
        let mut p = Pair { ours: node.raw(), theirs: Raw::connect(redis) };
        if resp3 {
            p.send(&["HELLO", "3"]);
            p.ours.read_reply().unwrap();
            p.theirs.read_reply().unwrap();
        }
        p
    }

    fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.ours.send(&encode(&args));
        self.theirs.send(&encode(&args));
    }

    /// Reads `n` frames from both sides and asserts they are byte-identical.
    #[track_caller]
    fn expect_same(&mut self, n: usize, what: &str) -> String {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..n {
            ours.extend(self.ours.read_reply().expect("our frame"));
            theirs.extend(self.theirs.read_reply().expect("their frame"));
        }
        let (o, t) = (String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        assert_eq!(o, t, "replies differ for {what}");
        o.into_owned()
    }

    /// Sends `args` to both; their next `frames` frames must be identical.
    #[track_caller]
    fn check(&mut self, frames: usize, args: &[&str]) -> String {
        self.send(args);
        self.expect_same(frames, &args.join(" "))
    }
}

fn setup(resp3: bool) -> Option<(TestNode, Pair, String)> {
    let redis = reference_redis()?;
    let node = TestNode::start();
    let pair = Pair::new(&node, redis, resp3);
    Some((node, pair, unique_prefix("pubsub")))
}

fn subscribe_confirmations_match_redis(resp3: bool) {
    let Some((_node, mut p, pre)) = setup(resp3) else { return };
    let (a, b, pat) = (format!("{pre}a"), format!("{pre}b"), format!("{pre}*"));
    p.check(1, &["UNSUBSCRIBE"]);
    p.check(1, &["PUNSUBSCRIBE"]);
    p.check(2, &["SUBSCRIBE", &a, &b]);
    p.check(1, &["SUBSCRIBE", &a]);
    p.check(1, &["PSUBSCRIBE", &pat]);
    p.check(1, &["PSUBSCRIBE", &pat]);
    p.check(1, &["UNSUBSCRIBE", &a]);
    p.check(1, &["UNSUBSCRIBE", "never-subscribed"]);
    p.check(1, &["PUNSUBSCRIBE", "never-subscribed*"]);
    p.check(1, &["PUNSUBSCRIBE"]);
    p.check(1, &["UNSUBSCRIBE"]);
    p.check(1, &["UNSUBSCRIBE"]);
    p.check(1, &["SUBSCRIBE"]);
    p.check(1, &["PSUBSCRIBE"]);
}

#[test]
fn subscribe_confirmations_match_redis_in_resp2() {
    subscribe_confirmations_match_redis(false)
}

#[test]
fn subscribe_confirmations_match_redis_in_resp3() {
    subscribe_confirmations_match_redis(true)
}

fn messages_match_redis(resp3: bool) {
    let Some(redis) = reference_redis() else { return };
    let node = TestNode::start();
    let pre = unique_prefix("pubsub_msg");
    let mut sub = Pair::new(&node, redis, resp3);
    let mut publisher = Pair::new(&node, redis, false);
    let (ch, other, pat) = (format!("{pre}news"), format!("{pre}other"), format!("{pre}n*"));
    sub.check(1, &["SUBSCRIBE", &ch]);
    sub.check(1, &["PSUBSCRIBE", &pat]);
    // Subscribed by channel and by pattern: two receivers, two messages.
    publisher.check(1, &["PUBLISH", &ch, "hello"]);
    sub.expect_same(2, "message and pmessage");
    publisher.check(1, &["PUBLISH", &ch, ""]);
    sub.expect_same(2, "an empty message");
    publisher.check(1, &["PUBLISH", &other, "nobody listens"]);
    let binary = "bin\r\n\0ary";
    publisher.check(1, &["PUBLISH", &format!("{pre}nx"), binary]);
    sub.expect_same(1, "a pattern-only message with CR LF and NUL");
    // The same message twice is delivered twice.
    publisher.check(1, &["PUBLISH", &ch, "again"]);
    publisher.check(1, &["PUBLISH", &ch, "again"]);
    sub.expect_same(4, "a repeated message");
    sub.check(1, &["UNSUBSCRIBE", &ch]);
    publisher.check(1, &["PUBLISH", &ch, "pattern only now"]);
    sub.expect_same(1, "after UNSUBSCRIBE");
}

#[test]
fn messages_match_redis_in_resp2() {
    messages_match_redis(false)
}

#[test]
fn messages_match_redis_in_resp3() {
    messages_match_redis(true)
}

#[test]
fn a_resp3_publisher_that_subscribes_gets_its_message_before_the_reply() {
    let Some((_node, mut p, pre)) = setup(true) else { return };
    let ch = format!("{pre}self");
    p.check(1, &["SUBSCRIBE", &ch]);
    let out = p.check(2, &["PUBLISH", &ch, "me"]);
    assert!(out.starts_with(">3\r\n$7\r\nmessage"), "{out}");
    // RESP3 has no subscribed mode: any command runs.
    p.check(1, &["GET", &format!("{pre}k")]);
    p.check(1, &["PING"]);
}

#[test]
fn resp2_subscribed_mode_allows_only_what_redis_allows() {
    let Some((_node, mut p, pre)) = setup(false) else { return };
    let ch = format!("{pre}c");
    p.check(1, &["SUBSCRIBE", &ch]);
    for cmd in [
        vec!["GET", "k"],
        vec!["SET", "k", "v"],
        vec!["PUBLISH", "x", "y"],
        vec!["CLIENT", "LIST"],
        vec!["CLIENT", "ID"],
        vec!["PUBSUB", "NUMPAT"],
        vec!["HELLO", "3"],
        vec!["MULTI"],
        vec!["NOSUCHCOMMAND", "a"],
        vec!["GET"],
        vec!["PING"],
        vec!["PING", "hi"],
        vec!["PING", "a", "b"],
    ] {
        p.check(1, &cmd);
    }
    p.check(1, &["PSUBSCRIBE", &format!("{pre}*")]);
    p.check(1, &["UNSUBSCRIBE"]);
    p.check(1, &["GET", "k"]);
    p.check(1, &["PUNSUBSCRIBE"]);
    // Out of Pub/Sub mode: commands run again.
    p.check(1, &["PING"]);
    p.check(1, &["GET", &format!("{pre}k")]);
    // RESET leaves every channel without a reply per channel.
    p.check(1, &["SUBSCRIBE", &ch]);
    p.check(1, &["RESET"]);
    p.check(1, &["PING"]);
    p.check(1, &["PUBSUB", "NUMSUB", &ch]);
}

#[test]
fn pubsub_introspection_matches_redis() {
    let Some(redis) = reference_redis() else { return };
    let node = TestNode::start();
    let pre = unique_prefix("pubsub_intro");
    let mut sub = Pair::new(&node, redis, false);
    let mut q = Pair::new(&node, redis, false);
    let (a, b, pat) = (format!("{pre}a"), format!("{pre}b"), format!("{pre}*"));
    let numpat = |r: &mut Raw| -> i64 {
        let s = r.cmd_str(&["PUBSUB", "NUMPAT"]);
        s.trim_start_matches(':').trim().parse().unwrap()
    };
    let before = (numpat(&mut q.ours), numpat(&mut q.theirs));
    sub.check(2, &["SUBSCRIBE", &a, &b]);
    sub.check(1, &["PSUBSCRIBE", &pat]);
    q.check(1, &["PUBSUB", "CHANNELS", &format!("{pre}a*")]);
    q.check(1, &["PUBSUB", "CHANNELS", "no-such-channel-anywhere*"]);
    q.check(1, &["PUBSUB", "NUMSUB", &a, &b, "no-such-channel-anywhere"]);
    q.check(1, &["PUBSUB", "NUMSUB"]);
    // NUMPAT counts every client's patterns on the shared Redis: compare the change.
    let after = (numpat(&mut q.ours), numpat(&mut q.theirs));
    assert_eq!(after.0 - before.0, 1);
    assert_eq!(after.1 - before.1, 1);
    q.check(1, &["PUBSUB", "CHANNELS", "a", "b"]);
    q.check(1, &["PUBSUB", "NUMPAT", "x"]);
    q.check(1, &["PUBSUB", "SHARDNUMSUB", &a]);
    q.check(1, &["PUBSUB", "SHARDCHANNELS", &format!("{pre}*")]);
    q.check(1, &["PUBSUB", "HELP"]);
    q.check(1, &["PUBSUB", "NOPE"]);
    q.check(1, &["PUBSUB"]);
    q.check(1, &["PUBLISH", "x"]);
    // A subscriber that goes away is forgotten.
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ours = q.ours.cmd_str(&["PUBSUB", "NUMSUB", &a]);
        if ours.ends_with(":0\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "subscriber not forgotten: {ours}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(numpat(&mut q.ours), before.0);
}

#[test]
fn client_list_shows_subscriptions() {
    let node = TestNode::start();
    let mut s = node.raw();
    s.send(&encode(&[b"SUBSCRIBE", b"a", b"b"]));
    s.read_reply().unwrap();
    s.read_reply().unwrap();
    s.cmd_str(&["PSUBSCRIBE", "p*"]);
    let list = node.raw().cmd_str(&["CLIENT", "LIST"]);
    let line = list.lines().find(|l| l.contains("sub=2")).unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("flags=P ") && line.contains("psub=1"), "{line}");
}

/// A RESP2 client can take another connection's invalidations as Pub/Sub messages: Redis's
/// REDIRECT to a connection subscribed to `__redis__:invalidate`.
#[test]
fn tracking_redirect_to_a_resp2_subscriber_matches_redis() {
    let Some(redis) = reference_redis() else { return };
    let node = TestNode::start();
    let pre = unique_prefix("pubsub_redir");
    let key = format!("{pre}k");
    let mut sink = Pair::new(&node, redis, false);
    let mut tracker = Pair::new(&node, redis, false);
    let mut writer = Pair::new(&node, redis, false);
    sink.send(&["CLIENT", "ID"]);
    let id = |r: &mut Raw| String::from_utf8(r.read_reply().unwrap()).unwrap()[1..].trim().to_string();
    let (our_id, their_id) = (id(&mut sink.ours), id(&mut sink.theirs));
    sink.check(1, &["SUBSCRIBE", "__redis__:invalidate"]);
    assert_eq!(tracker.ours.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", &our_id]), "+OK\r\n");
    assert_eq!(tracker.theirs.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", &their_id]), "+OK\r\n");
    tracker.check(1, &["GET", &key]);
    writer.check(1, &["SET", &key, "1"]);
    let msg = sink.expect_same(1, "the invalidation message");
    assert_eq!(
        msg,
        format!("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n${}\r\n{key}\r\n", key.len())
    );
    sink.check(1, &["PING"]);
    // Not read again since: no second message.
    writer.check(1, &["SET", &key, "2"]);
    sink.check(1, &["PING"]);
    writer.check(1, &["DEL", &key]);
}

#[test]
fn a_flush_reaches_a_resp2_redirect_subscriber_as_a_null_message() {
    // Checked against the bytes Redis 7.0 sends (FLUSHALL cannot run on the shared Redis):
    // the null is in the tracking client's protocol.
    let node = TestNode::start();
    let mut sink = node.raw();
    let id = sink.cmd_str(&["CLIENT", "ID"]);
    let id = id.trim_start_matches(':').trim().to_string();
    sink.cmd_str(&["SUBSCRIBE", "anything"]);
    let mut t2 = node.raw();
    t2.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", &id]);
    t2.cmd_str(&["GET", "k"]);
    let mut t3 = node.raw();
    assert!(t3.cmd_str(&["HELLO", "3"]).starts_with('%'));
    t3.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", &id]);
    t3.cmd_str(&["GET", "k"]);
    node.raw().cmd_str(&["FLUSHALL"]);
    let mut got = vec![
        String::from_utf8(sink.read_reply().unwrap()).unwrap(),
        String::from_utf8(sink.read_reply().unwrap()).unwrap(),
    ];
    got.sort();
    let head = "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n";
    assert_eq!(got, vec![format!("{head}$-1\r\n"), format!("{head}_\r\n")]);
}

#[test]
fn a_resp2_redirect_target_that_is_not_subscribed_gets_nothing() {
    let node = TestNode::start();
    let mut sink = node.raw();
    let id = sink.cmd_str(&["CLIENT", "ID"]);
    let mut t = node.raw();
    t.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", id.trim_start_matches(':').trim()]);
    t.cmd_str(&["GET", "k"]);
    node.raw().cmd_str(&["SET", "k", "1"]);
    assert_eq!(sink.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(sink.cmd_str(&["PING"]), "+PONG\r\n");
}

/// Publishes `size`-byte messages on `ch` until `done` or `max` messages.
fn flood(publisher: &mut Raw, ch: &str, size: usize, max: usize, mut done: impl FnMut() -> bool) -> usize {
    let payload = "x".repeat(size);
    for i in 0..max {
        if done() {
            return i;
        }
        publisher.cmd_str(&["PUBLISH", ch, &payload]);
    }
    max
}

fn subscriber_count(node: &TestNode) -> usize {
    node.server.clients.snapshot().iter().filter(|c| c.subscriptions() > 0).count()
}

#[test]
fn a_subscriber_past_the_hard_limit_is_disconnected() {
    let node = TestNode::with_config(|c| c.client_output_buffer_limit = "pubsub 4mb 0 0".into());
    let mut slow = node.raw();
    slow.cmd_str(&["SUBSCRIBE", "firehose"]);
    let mut fast = node.raw();
    fast.cmd_str(&["SUBSCRIBE", "firehose"]);
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = got.clone();
    let reader = std::thread::spawn(move || {
        while fast.read_reply().is_some() {
            if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 4000 {
                break;
            }
        }
        fast
    });
    let mut publisher = node.raw();
    // 4000 messages of 16 KiB, far more than the socket buffers and the limit hold, in rounds
    // the reading subscriber keeps up with: it is never more than 1.6 MB behind.
    let payload = "x".repeat(16 * 1024);
    for round in 1..=40 {
        for _ in 0..100 {
            publisher.cmd_str(&["PUBLISH", "firehose", &payload]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.load(std::sync::atomic::Ordering::Relaxed) < round * 100 {
            assert!(Instant::now() < deadline, "the reading subscriber stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let _fast = reader.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscriber_count(&node) != 1 {
        assert!(Instant::now() < deadline, "the slow subscriber is still connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The slow one is gone: after what the socket held, the connection ends.
    let mut frames = 0;
    while slow.read_reply().is_some() {
        frames += 1;
    }
    assert!(frames < 4000, "the slow subscriber got everything ({frames})");
    assert_eq!(publisher.cmd_str(&["PUBSUB", "NUMSUB", "firehose"]), "*2\r\n$8\r\nfirehose\r\n:1\r\n");
}

#[test]
fn a_subscriber_over_the_soft_limit_for_its_seconds_is_disconnected() {
    let node = TestNode::with_config(|c| c.client_output_buffer_limit = "pubsub 0 64kb 1".into());
    let mut slow = node.raw();
    slow.cmd_str(&["SUBSCRIBE", "c"]);
    let mut publisher = node.raw();
    let start = Instant::now();
    // Over the soft limit at once; closed only once it stayed over for more than a second.
    let sent = flood(&mut publisher, "c", 16 * 1024, 100_000, || {
        subscriber_count(&node) == 0 || start.elapsed() > Duration::from_secs(20)
    });
    assert_eq!(subscriber_count(&node), 0, "never disconnected after {sent} messages");
    assert!(start.elapsed() >= Duration::from_secs(1), "closed before its soft seconds");
}

#[test]
fn the_output_limit_is_a_config_setting() {
    let node = TestNode::start();
    let mut r = node.raw();
    assert_eq!(
        r.cmd_str(&["CONFIG", "GET", "client-output-buffer-limit"]),
        "*2\r\n$26\r\nclient-output-buffer-limit\r\n$67\r\nnormal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60\r\n"
    );
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1mb 512kb 10"]), "+OK\r\n");
    assert!(r.cmd_str(&["CONFIG", "GET", "client-output-buffer-limit"]).contains("pubsub 1048576 524288 10"));
    assert!(r.cmd_str(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1mb"]).starts_with("-ERR"));
    assert!(r.cmd_str(&["CONFIG", "SET", "client-output-buffer-limit", "nobody 1 1 1"]).starts_with("-ERR"));
}
