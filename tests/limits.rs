//! Limits and robustness of the connection layer: protocol errors close only the offending
//! connection with Redis's error text, limits come from the configuration, and slow, deep or
//! many clients are all served.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{encode, reference_redis, Raw, TestNode};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends `bytes` on a fresh connection and returns the first reply; asserts the server then
/// closes the connection.
fn reply_then_close(mut c: Raw, bytes: &[u8]) -> String {
    c.send(bytes);
    let reply = text(&c.read_reply().expect("an error reply before closing"));
    assert!(c.is_closed(), "connection should close after {reply:?}");
    reply
}

#[test]
fn malformed_requests_get_redis_s_protocol_errors() {
    let node = TestNode::start();
    let redis = reference_redis();
    for bad in [
        &b"*1\r\n$536870913\r\n"[..],
        b"*x\r\n",
        b"*1\r\n:5\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$x\r\n",
        b"SET \"k\r\n",
        b"SET 'k\r\n",
        b"GET \"a\"b\r\n",
    ] {
        let ours = reply_then_close(node.raw(), bad);
        assert!(ours.starts_with("-ERR Protocol error: "), "{ours}");
        if let Some(addr) = redis {
            let theirs = reply_then_close(Raw::connect(addr), bad);
            assert_eq!(ours, theirs, "for {:?}", text(bad));
        }
    }
    // Redis has no multibulk count limit below INT_MAX; ours is proto-max-multibulk-len (1M).
    let ours = reply_then_close(node.raw(), b"*2000000000\r\n");
    assert_eq!(ours, "-ERR Protocol error: invalid multibulk length\r\n");
    // The node is fine.
    assert_eq!(node.raw().cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn configured_bulk_and_multibulk_limits_close_only_the_offender() {
    let node = TestNode::with_config(|c| {
        c.proto_max_bulk_len = 16;
        c.proto_max_multibulk_len = 4;
    });
    let mut other = node.raw();
    assert_eq!(other.cmd_str(&["SET", "k", "0123456789abcdef"]), "+OK\r\n");
    let long = "x".repeat(17);
    let bulk = reply_then_close(node.raw(), &encode(&[b"SET", b"k", long.as_bytes()]));
    assert_eq!(bulk, "-ERR Protocol error: invalid bulk length\r\n");
    let multi = reply_then_close(node.raw(), &encode(&[b"DEL", b"a", b"b", b"c", b"d"]));
    assert_eq!(multi, "-ERR Protocol error: invalid multibulk length\r\n");
    assert_eq!(other.cmd_str(&["GET", "k"]), "$16\r\n0123456789abcdef\r\n");
}

#[test]
fn a_huge_multibulk_count_does_not_allocate() {
    // With the limit out of the way the count alone must not reserve two billion slots.
    let node = TestNode::with_config(|c| c.proto_max_multibulk_len = i32::MAX as u64);
    let mut c = node.raw();
    c.send(b"*2000000000\r\n$4\r\nPING\r\n");
    let mut other = node.raw();
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
    drop(c);
    // And with a small limit it is refused at once.
    let small = TestNode::with_config(|c| c.proto_max_multibulk_len = 8);
    let reply = reply_then_close(small.raw(), b"*2000000000\r\n");
    assert_eq!(reply, "-ERR Protocol error: invalid multibulk length\r\n");
}

#[test]
fn the_query_buffer_limit_closes_the_connection() {
    let node = TestNode::with_config(|c| c.client_query_buffer_limit = 64 * 1024);
    let mut c = node.raw();
    // An unfinished bulk string larger than the limit.
    let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 100_000));
    c.send(&req);
    assert!(c.is_closed());
    assert_eq!(node.raw().cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn maxclients_refuses_extra_connections() {
    let node = TestNode::with_config(|c| c.maxclients = 2);
    let mut a = node.raw();
    let mut b = node.raw();
    assert_eq!(a.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(b.cmd_str(&["PING"]), "+PONG\r\n");
    let mut c = node.raw();
    assert_eq!(text(&c.read_reply().unwrap()), "-ERR max number of clients reached\r\n");
    assert!(c.is_closed());
    drop(a);
    // A slot frees up once a client leaves.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.server.clients.len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(node.raw().cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(b.cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn idle_clients_are_closed_after_the_timeout() {
    let node = TestNode::with_config(|c| c.timeout = 1);
    let mut idle = node.raw();
    assert_eq!(idle.cmd_str(&["PING"]), "+PONG\r\n");
    let start = Instant::now();
    assert!(idle.is_closed());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn a_slow_client_sending_one_byte_at_a_time_gets_its_reply() {
    let node = TestNode::start();
    let mut c = node.raw();
    let req = encode(&[b"SET", b"slow", b"value"]);
    let mut inline = b"GET slow\r\n".to_vec();
    let mut all = req.clone();
    all.append(&mut inline);
    for b in all {
        c.send(&[b]);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(text(&c.read_reply().unwrap()), "+OK\r\n");
    assert_eq!(text(&c.read_reply().unwrap()), "$5\r\nvalue\r\n");
}

#[test]
fn a_pipeline_of_10000_commands_gets_every_reply_in_order() {
    let node = TestNode::start();
    let mut wire = Vec::new();
    for i in 0..10_000 {
        wire.extend(encode(&[b"ECHO", i.to_string().as_bytes()]));
    }
    let stream = std::net::TcpStream::connect(node.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Write from another thread so full socket buffers cannot deadlock the test.
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&wire).unwrap());
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    for i in 0..10_000 {
        let n = loop {
            if let Some(n) = common::frame_len(&buf) {
                break n;
            }
            let got = reader.read(&mut chunk).unwrap();
            assert!(got > 0, "closed after {i} replies");
            buf.extend_from_slice(&chunk[..got]);
        };
        let want = i.to_string();
        assert_eq!(text(&buf[..n]), format!("${}\r\n{want}\r\n", want.len()), "reply {i}");
        buf.drain(..n);
    }
    t.join().unwrap();
}

#[test]
fn five_hundred_concurrent_connections_all_get_answers() {
    let node = TestNode::start();
    let mut conns: Vec<Raw> = (0..500).map(|_| node.raw()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(&encode(&[b"SET", format!("c{i}").as_bytes(), i.to_string().as_bytes()]));
    }
    for c in conns.iter_mut() {
        assert_eq!(text(&c.read_reply().unwrap()), "+OK\r\n");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let v = i.to_string();
        assert_eq!(c.cmd_str(&["GET", &format!("c{i}")]), format!("${}\r\n{v}\r\n", v.len()));
    }
    assert_eq!(node.server.clients.len(), 500);
}

/// Issue 8: 10,000 concurrent connections are held on one machine (the node is a separate
/// process, as in production, so each side has its own descriptors; the node raises its own
/// open-files limit to fit `maxclients`), every one is served, and the one past `maxclients`
/// gets Redis's error while the others keep working.
#[test]
fn ten_thousand_concurrent_connections_are_held_and_served() {
    const CLIENTS: usize = 10_000;
    let limit = rlimit::increase_nofile_limit(CLIENTS as u64 + 1000).unwrap();
    assert!(limit > CLIENTS as u64, "this test needs {CLIENTS} descriptors; the hard limit is {limit}");
    let node = common::NodeProcess::spawn(&["--maxclients", &CLIENTS.to_string()]);
    let mut conns: Vec<Raw> = (0..CLIENTS).map(|_| node.raw()).collect();
    // Every connection sends before any reads: all 10,000 are open and waiting at once.
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(&encode(&[b"SET", format!("conn:{i}").as_bytes(), i.to_string().as_bytes()]));
    }
    for c in conns.iter_mut() {
        assert_eq!(text(&c.read_reply().unwrap()), "+OK\r\n");
    }
    let info = conns[0].cmd_str(&["INFO", "clients"]);
    assert!(info.contains(&format!("connected_clients:{CLIENTS}\r\n")), "{info}");
    let mut extra = node.raw();
    assert_eq!(text(&extra.read_reply().unwrap()), "-ERR max number of clients reached\r\n");
    for (i, c) in conns.iter_mut().enumerate().step_by(97) {
        let v = i.to_string();
        assert_eq!(c.cmd_str(&["GET", &format!("conn:{i}")]), format!("${}\r\n{v}\r\n", v.len()));
    }
    assert_eq!(conns[CLIENTS - 1].cmd_str(&["DBSIZE"]), format!(":{CLIENTS}\r\n"));
}

#[test]
fn inline_commands_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = common::Differential::new(&node, "limits_inline") else { return };
    let key = String::from_utf8(d.key("k")).unwrap();
    for line in [
        format!("SET {key} \"hello world\"\r\n"),
        format!("GET {key}\r\n"),
        format!("SET {key} \"a\\x41\\n\"\n"),
        format!("GET {key}\n"),
        "PING\r\n".to_string(),
        "   ECHO    spaced   \r\n".to_string(),
        "\r\nPING\r\n".to_string(),
    ] {
        d.ours.send(line.as_bytes());
        d.theirs.send(line.as_bytes());
        let (o, t) = (d.ours.read_reply().unwrap(), d.theirs.read_reply().unwrap());
        assert_eq!(text(&o), text(&t), "for {line:?}");
    }
}
