//! CLIENT TRACKING: option parsing, replies and errors compared with the reference Redis, and
//! RESP3 `invalidate` pushes delivered on real connections (default mode, BCAST prefixes,
//! OPTIN/OPTOUT, NOLOOP, REDIRECT, FLUSHALL, expiry).

mod common;

use common::{Differential, Raw, TestNode};

fn hello3(r: &mut Raw) {
    assert!(r.cmd_str(&["HELLO", "3"]).starts_with('%'));
}

/// Asserts no push is pending on `r`: two PINGs answer PONG (a queued push would be written
/// before the second at the latest).
#[track_caller]
fn no_push(r: &mut Raw) {
    assert_eq!(r.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(r.cmd_str(&["PING"]), "+PONG\r\n");
}

fn push_for(key: &str) -> String {
    format!(">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{}\r\n", key.len(), key)
}

fn next(r: &mut Raw) -> String {
    String::from_utf8_lossy(&r.read_reply().expect("a frame")).into_owned()
}

#[test]
fn options_replies_and_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "trk_opts") else { return };
    for cmd in [
        "CLIENT TRACKINGINFO",
        "CLIENT GETREDIR",
        "CLIENT TRACKING",
        "CLIENT TRACKING foo",
        "CLIENT TRACKING on nosuch",
        "CLIENT TRACKING on optin optout",
        "CLIENT TRACKING on redirect 999999",
        "CLIENT TRACKING on redirect abc",
        "CLIENT TRACKING on redirect",
        "CLIENT TRACKING on prefix a",
        "CLIENT TRACKING on prefix",
        "CLIENT TRACKING on bcast prefix a prefix ab",
        "CLIENT TRACKING on bcast optin",
        "CLIENT CACHING yes",
        "CLIENT TRACKING on",
        "CLIENT TRACKINGINFO",
        "CLIENT GETREDIR",
        "CLIENT TRACKING on bcast",
        "CLIENT TRACKING on optin",
        "CLIENT CACHING no",
        "CLIENT CACHING maybe",
        "CLIENT CACHING yes",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING on optout",
        "CLIENT TRACKING off",
        "CLIENT TRACKING on optout noloop",
        "CLIENT CACHING yes",
        "CLIENT CACHING no",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING off",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING on bcast prefix a prefix b noloop",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING on bcast prefix c",
        "CLIENT TRACKING on bcast prefix cd",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING on",
        "CLIENT TRACKING off",
        "CLIENT TRACKINGINFO",
        "HELLO 3",
        "CLIENT TRACKING on optin noloop",
        "CLIENT TRACKINGINFO",
        "CLIENT TRACKING off",
        "CLIENT TRACKINGINFO",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        if cmd == "HELLO 3" {
            d.both(&[b"HELLO", b"3"]);
            continue;
        }
        d.check_str(&args);
    }
}

#[test]
fn default_mode_push_matches_redis_and_is_sent_once() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "trk_default") else { return };
    let key = String::from_utf8(d.key("k")).unwrap();
    let mut writer_ours = node.raw();
    let mut writer_theirs = Raw::connect(common::reference_redis().unwrap());
    hello3(&mut d.ours);
    hello3(&mut d.theirs);
    d.check_str(&["CLIENT", "TRACKING", "on"]);
    d.check_str(&["GET", "$k"]);
    // A key that was never read is not tracked.
    let other = String::from_utf8(d.key("other")).unwrap();
    for w in [&mut writer_ours, &mut writer_theirs] {
        w.cmd_str(&["SET", &key, "1"]);
        w.cmd_str(&["SET", &other, "1"]);
    }
    let (ours, theirs) = (next(&mut d.ours), next(&mut d.theirs));
    assert_eq!(ours, theirs);
    assert_eq!(ours, push_for(&key));
    // Invalidated once: a second write is not reported until the key is read again.
    writer_ours.cmd_str(&["SET", &key, "2"]);
    no_push(&mut d.ours);
}

#[test]
fn bcast_reports_writes_under_the_prefixes_only() {
    let node = TestNode::start();
    let mut r = node.raw();
    let mut w = node.raw();
    hello3(&mut r);
    assert_eq!(r.cmd_str(&["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "session:"]), "+OK\r\n");
    w.cmd_str(&["SET", "other:1", "x"]);
    w.cmd_str(&["HSET", "session:{a}", "f", "1"]);
    assert_eq!(next(&mut r), push_for("session:{a}"));
    no_push(&mut r);
}

#[test]
fn optin_tracks_only_after_caching_yes_and_optout_skips_after_caching_no() {
    let node = TestNode::start();
    let mut r = node.raw();
    let mut w = node.raw();
    hello3(&mut r);
    r.cmd_str(&["CLIENT", "TRACKING", "on", "OPTIN"]);
    r.cmd_str(&["GET", "a"]);
    w.cmd_str(&["SET", "a", "1"]);
    no_push(&mut r);
    r.cmd_str(&["CLIENT", "CACHING", "yes"]);
    r.cmd_str(&["GET", "a"]);
    w.cmd_str(&["SET", "a", "2"]);
    assert_eq!(next(&mut r), push_for("a"));

    let mut o = node.raw();
    hello3(&mut o);
    o.cmd_str(&["CLIENT", "TRACKING", "on", "OPTOUT"]);
    o.cmd_str(&["CLIENT", "CACHING", "no"]);
    o.cmd_str(&["GET", "b"]);
    o.cmd_str(&["GET", "c"]);
    w.cmd_str(&["SET", "b", "1"]);
    w.cmd_str(&["SET", "c", "1"]);
    assert_eq!(next(&mut o), push_for("c"));
    no_push(&mut o);
}

#[test]
fn noloop_skips_the_clients_own_writes() {
    let node = TestNode::start();
    let mut r = node.raw();
    let mut w = node.raw();
    hello3(&mut r);
    r.cmd_str(&["CLIENT", "TRACKING", "on", "NOLOOP"]);
    r.cmd_str(&["GET", "k"]);
    assert_eq!(r.cmd_str(&["SET", "k", "mine"]), "+OK\r\n");
    no_push(&mut r);
    r.cmd_str(&["GET", "k"]);
    w.cmd_str(&["SET", "k", "theirs"]);
    assert_eq!(next(&mut r), push_for("k"));

    // Without NOLOOP the client's own write invalidates too, after the write's reply.
    let mut s = node.raw();
    hello3(&mut s);
    s.cmd_str(&["CLIENT", "TRACKING", "on"]);
    s.cmd_str(&["GET", "k2"]);
    assert_eq!(s.cmd_str(&["SET", "k2", "mine"]), "+OK\r\n");
    assert_eq!(next(&mut s), push_for("k2"));
}

#[test]
fn redirect_sends_to_the_other_connection() {
    let node = TestNode::start();
    let mut sink = node.raw();
    hello3(&mut sink);
    let id = sink.cmd_str(&["CLIENT", "ID"]);
    let id = id.trim_start_matches(':').trim();
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", id]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["CLIENT", "GETREDIR"]), format!(":{id}\r\n"));
    r.cmd_str(&["GET", "k"]);
    node.raw().cmd_str(&["SET", "k", "1"]);
    assert_eq!(next(&mut sink), push_for("k"));
}

#[test]
fn flushall_sends_a_null_invalidation_and_expiry_invalidates() {
    let node = TestNode::start();
    let mut r = node.raw();
    hello3(&mut r);
    r.cmd_str(&["CLIENT", "TRACKING", "on"]);
    r.cmd_str(&["GET", "k"]);
    node.raw().cmd_str(&["FLUSHALL"]);
    assert_eq!(next(&mut r), ">2\r\n$10\r\ninvalidate\r\n_\r\n");

    node.raw().cmd_str(&["SET", "e", "1", "PX", "30"]);
    r.cmd_str(&["GET", "e"]);
    // Active expiry (or the lazy check on this GET) removes it and tells the tracker.
    std::thread::sleep(std::time::Duration::from_millis(60));
    r.send(&common::encode(&[b"GET", b"e"]));
    let a = next(&mut r);
    let b = next(&mut r);
    let frames = [a, b];
    assert!(frames.contains(&push_for("e")), "{frames:?}");
    assert!(frames.contains(&"_\r\n".to_string()), "{frames:?}");
}

#[test]
fn resp2_clients_without_redirect_get_no_pushes_and_disconnect_forgets() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd_str(&["CLIENT", "TRACKING", "on"]);
    r.cmd_str(&["GET", "k"]);
    node.raw().cmd_str(&["SET", "k", "1"]);
    no_push(&mut r);
    assert!(node.server.tracking.is_active());
    drop(r);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while node.server.tracking.is_active() {
        assert!(std::time::Instant::now() < deadline, "tracking not dropped on disconnect");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn pushes_queued_before_a_command_are_written_before_its_reply() {
    // What makes a PING a barrier for a near cache: once a write's reply is out, the next
    // reply on a tracking connection follows the write's invalidation.
    let node = TestNode::start();
    let mut r = node.raw();
    let mut w = node.raw();
    hello3(&mut r);
    r.cmd_str(&["CLIENT", "TRACKING", "on"]);
    for i in 0..50 {
        let key = format!("k{i}");
        r.cmd_str(&["GET", &key]);
        w.cmd_str(&["SET", &key, "v"]);
        r.send(&common::encode(&[b"PING"]));
        assert_eq!(next(&mut r), push_for(&key));
        assert_eq!(next(&mut r), "+PONG\r\n");
    }
}
