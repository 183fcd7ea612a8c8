//! Server commands and CONFIG: deterministic replies compared with Redis byte for byte, the
//! rest (INFO, TIME, SHUTDOWN) checked by their properties. CONFIG SET only ever changes our
//! node, never the shared reference Redis.

mod common;

use std::collections::HashMap;

use common::{Differential, TestNode};

/// INFO text as sections of fields: `{"server": {"redis_version": "..."}}`.
fn parse_info(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current = String::new();
    for line in text.split("\r\n") {
        if let Some(title) = line.strip_prefix("# ") {
            current = title.to_ascii_lowercase();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once(':') {
            out.get_mut(&current).expect("field inside a section").insert(k.into(), v.into());
        } else {
            assert!(line.is_empty(), "unexpected INFO line {line:?}");
        }
    }
    out
}

/// The payload of a bulk reply.
fn bulk_text(reply: &[u8]) -> String {
    let text = String::from_utf8(reply.to_vec()).unwrap();
    let (_, body) = text.split_once("\r\n").expect("a bulk reply");
    body.strip_suffix("\r\n").unwrap().to_string()
}

fn info(r: &mut common::Raw, section: &str) -> HashMap<String, HashMap<String, String>> {
    let reply = if section.is_empty() { r.cmd(&[b"INFO"]) } else { r.cmd(&[b"INFO", section.as_bytes()]) };
    parse_info(&bulk_text(&reply))
}

#[test]
fn info_has_redis_sections_and_the_fields_tools_read() {
    let node = TestNode::start();
    let mut r = node.raw();
    let all = info(&mut r, "");
    for s in
        ["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "cluster", "keyspace"]
    {
        assert!(all.contains_key(s), "missing section {s}");
    }
    let server = &all["server"];
    assert_eq!(server["redis_version"], cachegrid::commands::connection::REDIS_VERSION);
    assert_eq!(server["redis_mode"], "standalone");
    assert_eq!(server["arch_bits"], "64");
    assert_eq!(server["tcp_port"], node.addr.port().to_string());
    assert_eq!(server["process_id"], std::process::id().to_string());
    assert!(server.contains_key("cachegrid_version"));
    for (section, fields) in [
        ("server", &["os", "uptime_in_seconds", "uptime_in_days", "hz", "run_id"][..]),
        ("clients", &["connected_clients", "maxclients", "blocked_clients"]),
        (
            "memory",
            &[
                "used_memory",
                "used_memory_human",
                "used_memory_rss",
                "used_memory_peak",
                "used_memory_dataset",
                "total_system_memory",
                "maxmemory",
                "maxmemory_human",
                "maxmemory_policy",
                "mem_allocator",
            ],
        ),
        ("persistence", &["loading", "rdb_last_save_time"]),
        (
            "stats",
            &[
                "total_connections_received",
                "total_commands_processed",
                "instantaneous_ops_per_sec",
                "total_net_input_bytes",
                "total_net_output_bytes",
                "rejected_connections",
                "expired_keys",
                "evicted_keys",
                "keyspace_hits",
                "keyspace_misses",
                "total_error_replies",
            ],
        ),
        ("replication", &["role", "connected_slaves"]),
        ("cpu", &["used_cpu_sys", "used_cpu_user"]),
    ] {
        for f in fields {
            assert!(all[section].contains_key(*f), "missing {section}.{f}");
        }
    }
    assert_eq!(all["replication"]["role"], "master");
    assert_eq!(all["memory"]["maxmemory_policy"], "noeviction");
    assert_eq!(all["cluster"]["cluster_enabled"], "0");
    assert_eq!(all["clients"]["connected_clients"], "1");
}

#[test]
fn info_format_is_redis_crlf_sections_separated_by_blank_lines() {
    let node = TestNode::start();
    let mut r = node.raw();
    let text = bulk_text(&r.cmd(&[b"INFO", b"server", b"CLIENTS"]));
    assert!(text.starts_with("# Server\r\nredis_version:"), "{text}");
    assert!(text.contains("\r\n\r\n# Clients\r\n"));
    assert!(text.ends_with("\r\n") && !text.ends_with("\r\n\r\n"));
    assert!(!text.contains("# Memory"));
    // Unknown sections give an empty text; keyspace with no keys is a bare header.
    assert_eq!(r.cmd(&[b"INFO", b"nosuchsection"]), b"$0\r\n\r\n");
    assert_eq!(bulk_text(&r.cmd(&[b"INFO", b"keyspace"])), "# Keyspace\r\n");
    let everything = bulk_text(&r.cmd(&[b"INFO", b"everything"]));
    assert!(everything.contains("# Commandstats") && everything.contains("# Keyspace"));
    let default = bulk_text(&r.cmd(&[b"INFO", b"default"]));
    assert!(!default.contains("# Commandstats") && default.contains("# Keyspace"));
    // RESP3: a verbatim string.
    r.cmd(&[b"HELLO", b"3"]);
    let v = String::from_utf8(r.cmd(&[b"INFO", b"server"])).unwrap();
    assert!(v.starts_with('=') && v.contains("\r\ntxt:# Server\r\n"), "{v}");
}

#[test]
fn info_counters_move_with_traffic() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd(&[b"SET", b"k", b"v"]);
    r.cmd(&[b"SET", b"t", b"v", b"EX", b"100"]);
    let before = info(&mut r, "stats");
    r.cmd(&[b"GET", b"k"]);
    r.cmd(&[b"GET", b"missing"]);
    r.cmd(&[b"NOSUCHCOMMAND"]);
    let after = info(&mut r, "everything");
    let n = |m: &HashMap<String, HashMap<String, String>>, k: &str| m["stats"][k].parse::<u64>().unwrap();
    assert_eq!(n(&after, "keyspace_hits"), n(&before, "keyspace_hits") + 1);
    assert_eq!(n(&after, "keyspace_misses"), n(&before, "keyspace_misses") + 1);
    assert_eq!(n(&after, "total_error_replies"), n(&before, "total_error_replies") + 1);
    assert!(n(&after, "total_commands_processed") > n(&before, "total_commands_processed"));
    assert!(n(&after, "total_net_input_bytes") > n(&before, "total_net_input_bytes"));
    assert_eq!(after["keyspace"]["db0"], "keys=2,expires=1,avg_ttl=0");
    // CONFIG RESETSTAT zeroes them.
    assert_eq!(r.cmd(&[b"CONFIG", b"RESETSTAT"]), b"+OK\r\n");
    let reset = info(&mut r, "stats");
    assert_eq!(n(&reset, "keyspace_hits"), 0);
    assert_eq!(n(&reset, "total_error_replies"), 0);
}

#[test]
fn info_inside_a_transaction_does_not_deadlock() {
    let node = TestNode::start();
    let mut r = node.raw();
    r.cmd(&[b"MULTI"]);
    r.cmd(&[b"SET", b"k", b"v"]);
    r.cmd(&[b"INFO", b"keyspace"]);
    let reply = String::from_utf8(r.cmd(&[b"EXEC"])).unwrap();
    assert!(reply.contains("db0:keys=1,expires=0"), "{reply}");
}

#[test]
fn dbsize_flushall_flushdb_match_redis_and_empty_the_keyspace() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "flush") else { return };
    // Syntax errors only: a real FLUSHALL must never reach the shared Redis.
    d.check_str(&["FLUSHALL", "NOW"]);
    d.check_str(&["FLUSHALL", "ASYNC", "SYNC"]);
    d.check_str(&["FLUSHDB", "x"]);
    d.check_str(&["DBSIZE", "x"]);
    let mut r = node.raw();
    for i in 0..50 {
        r.cmd(&[b"SET", format!("k{i}").as_bytes(), b"v"]);
    }
    r.cmd(&[b"HSET", b"h", b"f", b"v"]);
    assert_eq!(r.cmd(&[b"DBSIZE"]), b":51\r\n");
    assert_eq!(r.cmd(&[b"FLUSHALL"]), b"+OK\r\n");
    assert_eq!(r.cmd(&[b"DBSIZE"]), b":0\r\n");
    assert_eq!(r.cmd(&[b"GET", b"k1"]), b"$-1\r\n");
    r.cmd(&[b"SET", b"a", b"1"]);
    assert_eq!(r.cmd(&[b"FLUSHDB", b"async"]), b"+OK\r\n");
    assert_eq!(r.cmd(&[b"DBSIZE"]), b":0\r\n");
    r.cmd(&[b"SET", b"a", b"1"]);
    assert_eq!(r.cmd(&[b"FLUSHALL", b"SYNC"]), b"+OK\r\n");
    assert_eq!(r.cmd(&[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn time_and_lastsave_are_sane() {
    let node = TestNode::start();
    let mut r = node.raw();
    let reply = String::from_utf8(r.cmd(&[b"TIME"])).unwrap();
    let parts: Vec<&str> = reply.split("\r\n").collect();
    assert_eq!(parts[0], "*2");
    let secs: u64 = parts[2].parse().unwrap();
    let micros: u64 = parts[4].parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(secs.abs_diff(now) <= 2, "{secs} vs {now}");
    assert!(micros < 1_000_000);
    let last = String::from_utf8(r.cmd(&[b"LASTSAVE"])).unwrap();
    let last: u64 = last.trim_start_matches(':').trim().parse().unwrap();
    assert!(last <= now && now - last < 60);
}

#[test]
fn shutdown_closes_the_connection_without_a_reply_and_stops_the_node() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "shutdown") else { return };
    // Only replies that do not shut the reference Redis down are compared.
    d.check_str(&["SHUTDOWN", "ABORT"]);
    d.check_str(&["SHUTDOWN", "NOSAVE", "SAVE"]);
    d.check_str(&["SHUTDOWN", "ABORT", "NOW"]);
    d.check_str(&["SHUTDOWN", "BOGUS"]);
    let mut r = node.raw();
    r.send(&common::encode(&[b"SHUTDOWN", b"NOSAVE", b"NOW", b"FORCE"]));
    assert_eq!(r.read_reply(), None, "no reply, connection closed");
    for _ in 0..100 {
        if std::net::TcpStream::connect(node.addr).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("node still accepts connections after SHUTDOWN");
}

#[test]
fn config_get_matches_redis_for_names_aliases_and_patterns() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "configget") else { return };
    for name in ["maxmemory", "MAXMEMORY", "maxmemory-policy", "hash-max-ziplist-value", "timeout", "nosuch"]
    {
        d.check_str(&["CONFIG", "GET", name]);
    }
    d.check_str(&["CONFIG", "GET", "maxmemory", "maxmemory"]);
    d.check_str(&["CONFIG", "GET", "nosuch*"]);
    d.check_str(&["CONFIG", "GET"]);
    d.check_str(&["CONFIG", "NOSUCH"]);
    d.check_str(&["CONFIG", "HELP"]);
    d.check_str(&["CONFIG", "REWRITE"]);
    // Several matches come in dict order in Redis: compare as sets.
    for pattern in ["hash-max-*", "maxmemory*", "lfu-*"] {
        let (ours, theirs) = d.both(&[b"CONFIG", b"GET", pattern.as_bytes()]);
        let names = |reply: &[u8]| {
            let text = String::from_utf8(reply.to_vec()).unwrap();
            let mut lines: Vec<String> = text
                .split("\r\n")
                .filter(|l| !l.starts_with(['*', '$']) && !l.is_empty())
                .map(String::from)
                .collect();
            let mut pairs: Vec<String> = lines.chunks(2).map(|c| c[0].clone()).collect();
            pairs.sort();
            lines.clear();
            pairs
        };
        let (mut ours_names, mut theirs_names) = (names(&ours), names(&theirs));
        // Redis has more maxmemory-* parameters than we do (eviction tenacity, clients).
        theirs_names.retain(|n| ours_names.contains(n) || !pattern.starts_with("maxmemory"));
        ours_names.sort();
        assert_eq!(ours_names, theirs_names, "{pattern}");
    }
}

#[test]
fn config_set_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "configset") else { return };
    // None of these change anything on either side.
    for args in [
        &["CONFIG", "SET", "maxmemory", "abc"][..],
        &["CONFIG", "SET", "hash-max-ziplist-value", "abc"],
        &["CONFIG", "SET", "hash-max-ziplist-entries", "abc"],
        &["CONFIG", "SET", "maxmemory-policy", "foo"],
        &["CONFIG", "SET", "maxclients", "0"],
        &["CONFIG", "SET", "timeout", "-1"],
        &["CONFIG", "SET", "dir", "/tmp"],
        &["CONFIG", "SET", "foo", "bar"],
        &["CONFIG", "SET", "maxmemory"],
        &["CONFIG", "SET", "maxmemory", "1", "foo"],
        &["CONFIG", "SET", "maxmemory", "1", "maxmemory", "2"],
        &["CONFIG", "SET", "hz", "abc"],
        &["CONFIG", "SET", "databases", "2"],
        &["CONFIG", "SET", "maxmemory", "1", "nosuch", "2"],
        &["CONFIG", "SET", "maxmemory", "x", "nosuch", "2"],
        &["CONFIG", "SET", "proto-max-bulk-len", "10"],
        &["CONFIG", "SET", "appendonly", "maybe"],
    ] {
        d.check_str(args);
    }
}

#[test]
fn config_set_updates_live_state_atomically() {
    let node = TestNode::start();
    let mut r = node.raw();
    let ok = b"+OK\r\n".to_vec();
    assert_eq!(
        r.cmd_str(&["CONFIG", "SET", "maxmemory", "10mb", "maxmemory-policy", "ALLKEYS-LRU"]).as_bytes(),
        ok
    );
    assert_eq!(r.cmd_str(&["CONFIG", "GET", "maxmemory"]), "*2\r\n$9\r\nmaxmemory\r\n$8\r\n10485760\r\n");
    assert_eq!(
        r.cmd_str(&["CONFIG", "GET", "maxmemory-policy"]),
        "*2\r\n$16\r\nmaxmemory-policy\r\n$11\r\nallkeys-lru\r\n"
    );
    let s = &node.server;
    assert_eq!(s.maxmemory.load(std::sync::atomic::Ordering::Relaxed), 10 << 20);
    assert_eq!(s.keyspace.settings.policy().name(), "allkeys-lru");
    assert_eq!(s.config.read().maxmemory_policy, "allkeys-lru");
    // All or nothing: the bad second value leaves the first unchanged.
    let e = r.cmd_str(&["CONFIG", "SET", "maxmemory", "1gb", "maxmemory-samples", "0"]);
    assert!(
        e.starts_with("-ERR CONFIG SET failed (possibly related to argument 'maxmemory-samples')"),
        "{e}"
    );
    assert_eq!(s.maxmemory.load(std::sync::atomic::Ordering::Relaxed), 10 << 20);
    // Aliases set the same parameter; compact hashes follow the new limit.
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "hash-max-ziplist-entries", "2"]).as_bytes(), ok);
    assert_eq!(
        r.cmd_str(&["CONFIG", "GET", "hash-max-listpack-entries"]),
        "*2\r\n$25\r\nhash-max-listpack-entries\r\n$1\r\n2\r\n"
    );
    assert_eq!(s.keyspace.settings.hash_limits().max_entries, 2);
    for (name, value) in [
        ("timeout", "30"),
        ("maxclients", "50"),
        ("proto-max-bulk-len", "2mb"),
        ("client-query-buffer-limit", "4mb"),
        ("lfu-log-factor", "5"),
        ("lfu-decay-time", "2"),
        ("hash-max-listpack-value", "1kb"),
    ] {
        assert_eq!(r.cmd_str(&["CONFIG", "SET", name, value]).as_bytes(), ok, "{name}");
    }
    assert_eq!(s.idle_timeout.load(std::sync::atomic::Ordering::Relaxed), 30);
    assert_eq!(s.maxclients.load(std::sync::atomic::Ordering::Relaxed), 50);
    assert_eq!(s.proto_max_bulk_len.load(std::sync::atomic::Ordering::Relaxed), 2 << 20);
    assert_eq!(s.query_buffer_limit.load(std::sync::atomic::Ordering::Relaxed), 4 << 20);
    assert_eq!(s.keyspace.settings.hash_limits().max_value, 1024);
    // hz is clamped like Redis's.
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "hz", "1000"]).as_bytes(), ok);
    assert_eq!(r.cmd_str(&["CONFIG", "GET", "hz"]), "*2\r\n$2\r\nhz\r\n$3\r\n500\r\n");
    // Read-only parameters tools look at.
    assert_eq!(r.cmd_str(&["CONFIG", "GET", "databases"]), "*2\r\n$9\r\ndatabases\r\n$1\r\n1\r\n");
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "save", ""]).as_bytes(), ok);
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "appendonly", "no"]).as_bytes(), ok);
    let e = r.cmd_str(&["CONFIG", "SET", "port", "1234"]);
    assert!(e.contains("can't set immutable config"), "{e}");
    // RESP3: a map.
    r.cmd(&[b"HELLO", b"3"]);
    assert_eq!(r.cmd_str(&["CONFIG", "GET", "timeout"]), "%1\r\n$7\r\ntimeout\r\n$2\r\n30\r\n");
}

#[test]
fn config_set_requirepass_requires_auth_on_new_connections() {
    let node = TestNode::start();
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", "s3cret"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["PING"]), "+PONG\r\n", "the current connection stays authenticated");
    let mut other = node.raw();
    assert!(other.cmd_str(&["PING"]).starts_with("-NOAUTH"));
    assert_eq!(other.cmd_str(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", ""]), "+OK\r\n");
    assert_eq!(node.raw().cmd_str(&["PING"]), "+PONG\r\n");
}
