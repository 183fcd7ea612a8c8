//! Connection handling: PING/ECHO/HELLO/AUTH/SELECT/QUIT/RESET, CLIENT and COMMAND, and the
//! errors for unknown commands and wrong arity, compared with the reference Redis where
//! deterministic.

mod common;

use common::{Differential, TestNode};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ping_and_echo_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_ping") else { return };
    d.check_str(&["PING"]);
    d.check_str(&["PING", "hello"]);
    d.check_str(&["PING", "a", "b"]);
    d.check_str(&["ECHO", "x y"]);
    d.check_str(&["ECHO"]);
    d.check_str(&["ECHO", ""]);
}

#[test]
fn unknown_commands_and_wrong_arity_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_unknown") else { return };
    d.check_str(&["NOSUCH"]);
    d.check_str(&["nosuch", "a", "b c", ""]);
    d.check_str(&["NOSUCH", &"x".repeat(300)]);
    d.check_str(&["GET"]);
    d.check_str(&["GET", "$a", "b"]);
    d.check_str(&["SET", "$a"]);
    d.check_str(&["CLIENT"]);
    d.check_str(&["CLIENT", "nosuch"]);
    d.check_str(&["COMMAND", "nosuch"]);
}

#[test]
fn hello_switches_protocol_and_replies_with_a_map() {
    let node = TestNode::start();
    let mut c = node.raw();
    let r3 = text(&c.cmd(&[b"HELLO", b"3"]));
    assert!(r3.starts_with("%7\r\n"), "{r3}");
    assert!(r3.contains("$5\r\nproto\r\n:3\r\n"), "{r3}");
    assert!(r3.contains("$6\r\nserver\r\n$5\r\nredis\r\n"), "{r3}");
    // RESP3 now: a missing value is `_`.
    assert_eq!(text(&c.cmd(&[b"GET", b"missing"])), "_\r\n");
    let r2 = text(&c.cmd(&[b"HELLO", b"2"]));
    assert!(r2.starts_with("*14\r\n"), "{r2}");
    assert!(r2.contains("$5\r\nproto\r\n:2\r\n"), "{r2}");
    assert_eq!(text(&c.cmd(&[b"GET", b"missing"])), "$-1\r\n");
    // HELLO without a version keeps the current one.
    assert!(text(&c.cmd(&[b"HELLO"])).contains("proto\r\n:2\r\n"));
    let named = text(&c.cmd(&[b"HELLO", b"3", b"SETNAME", b"me"]));
    assert!(named.starts_with('%'));
    assert_eq!(text(&c.cmd(&[b"CLIENT", b"GETNAME"])), "$2\r\nme\r\n");
}

#[test]
fn hello_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_hello") else { return };
    d.check_str(&["HELLO", "4"]);
    d.check_str(&["HELLO", "1"]);
    d.check_str(&["HELLO", "x"]);
    d.check_str(&["HELLO", "3", "foo"]);
    d.check_str(&["HELLO", "3", "SETNAME", "a b"]);
}

#[test]
fn auth_without_requirepass_matches_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_auth") else { return };
    d.check_str(&["AUTH", "x"]);
    d.check_str(&["AUTH", "default", "anything"]);
    d.check_str(&["AUTH", "nobody", "x"]);
    d.check_str(&["AUTH", "a", "b", "c"]);
}

#[test]
fn requirepass_demands_auth_first() {
    let node = TestNode::with_config(|c| c.requirepass = Some("s3cret".into()));
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(c.cmd_str(&["PING"]), "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        c.cmd_str(&["AUTH", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        c.cmd_str(&["AUTH", "default", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert!(c.cmd_str(&["HELLO", "3"]).starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(c.cmd_str(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    // RESET forgets the authentication.
    assert_eq!(c.cmd_str(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.cmd_str(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
    // HELLO can authenticate and switch protocol at once.
    let mut h = node.raw();
    assert!(h.cmd_str(&["HELLO", "3", "AUTH", "default", "s3cret"]).starts_with("%7\r\n"));
    assert_eq!(h.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(
        node.raw().cmd_str(&["AUTH", "default", "s3cret"]),
        "+OK\r\n",
        "AUTH with the default user's name works too"
    );
}

#[test]
fn unauthenticated_clients_may_only_send_small_requests() {
    let node = TestNode::with_config(|c| c.requirepass = Some("pw".into()));
    let mut c = node.raw();
    let args: Vec<&[u8]> = std::iter::repeat_n(&b"x"[..], 11).collect();
    c.send(&common::encode(&args));
    assert_eq!(text(&c.read_reply().unwrap()), "-ERR Protocol error: unauthenticated multibulk length\r\n");
    assert!(c.is_closed());
}

#[test]
fn select_accepts_only_database_zero() {
    let node = TestNode::start();
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SELECT", "1"]), "-ERR DB index is out of range\r\n");
    let Some(mut d) = Differential::new(&node, "conn_select") else { return };
    d.check_str(&["SELECT", "0"]);
    d.check_str(&["SELECT", "x"]);
    d.check_str(&["SELECT"]);
}

#[test]
fn quit_replies_ok_and_closes() {
    let node = TestNode::start();
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["QUIT"]), "+OK\r\n");
    assert!(c.is_closed());
}

#[test]
fn reset_leaves_a_transaction_and_restores_defaults() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_reset") else { return };
    d.check_str(&["MULTI"]);
    d.check_str(&["SET", "$k", "v"]);
    d.check_str(&["RESET"]);
    d.check_str(&["EXEC"]);
    d.check_str(&["GET", "$k"]);
    d.check_str(&["CLIENT", "SETNAME", "somebody"]);
    d.check_str(&["RESET"]);
    d.check_str(&["CLIENT", "GETNAME"]);
    let mut c = node.raw();
    c.cmd(&[b"HELLO", b"3"]);
    assert_eq!(c.cmd_str(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.cmd_str(&["GET", "nope"]), "$-1\r\n", "RESET goes back to RESP2");
}

#[test]
fn client_naming_matches_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_client_name") else { return };
    d.check_str(&["CLIENT", "GETNAME"]);
    d.check_str(&["CLIENT", "SETNAME", "a b"]);
    d.check_str(&["CLIENT", "SETNAME", "a\nb"]);
    d.check_str(&["CLIENT", "SETNAME", "worker-1"]);
    d.check_str(&["CLIENT", "GETNAME"]);
    d.check_str(&["CLIENT", "SETNAME", ""]);
    d.check_str(&["CLIENT", "GETNAME"]);
    d.check_str(&["CLIENT", "SETNAME", "x", "y"]);
    d.check_str(&["CLIENT", "ID", "x"]);
    d.check_str(&["CLIENT", "NO-EVICT", "on"]);
    d.check_str(&["CLIENT", "NO-EVICT", "OFF"]);
    d.check_str(&["CLIENT", "NO-EVICT", "maybe"]);
    d.check_str(&["CLIENT", "NO-EVICT"]);
    d.check_str(&["client", "getname", "extra"]);
}

#[test]
fn client_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_client_err") else { return };
    // None of these kills anything on the shared Redis: each fails or matches nobody.
    for args in [
        &["CLIENT", "LIST", "TYPE", "foo"][..],
        &["CLIENT", "LIST", "ID", "abc"],
        &["CLIENT", "LIST", "foo"],
        &["CLIENT", "LIST", "TYPE", "normal", "ID", "1"],
        &["CLIENT", "LIST", "TYPE", "master"],
        &["CLIENT", "LIST", "TYPE", "pubsub"],
        &["CLIENT", "LIST", "ID", "0"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "ID", "abc"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "ID", "999999999"],
        &["CLIENT", "KILL", "TYPE", "foo"],
        &["CLIENT", "KILL", "TYPE", "master"],
        &["CLIENT", "KILL", "USER", "nobody"],
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "SKIPME", "maybe"],
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "ID"],
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "SKIPME", "no"],
        &["CLIENT", "KILL", "foo", "bar"],
        &["CLIENT", "KILL"],
        &["CLIENT", "HELP", "x"],
    ] {
        d.check_str(args);
    }
}

#[test]
fn client_setinfo_follows_redis_7_2() {
    let node = TestNode::start();
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["CLIENT", "SETINFO", "lib-ver", "5.0.1"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["CLIENT", "SETINFO", "foo", "x"]), "-ERR Unrecognized option 'foo'\r\n");
    assert_eq!(
        c.cmd_str(&["CLIENT", "SETINFO", "lib-name", "a b"]),
        "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(
        c.cmd_str(&["CLIENT", "SETINFO", "LIB-NAME"]),
        "-ERR wrong number of arguments for 'client|setinfo' command\r\n"
    );
    let info = c.cmd_str(&["CLIENT", "INFO"]);
    assert!(info.contains(" lib-name=redis-py lib-ver=5.0.1\n"), "{info}");
    assert_eq!(c.cmd_str(&["CLIENT", "SETINFO", "lib-name", ""]), "+OK\r\n");
    assert!(c.cmd_str(&["CLIENT", "INFO"]).contains(" lib-name= "));
}

fn sync_client(node: &TestNode) -> redis::Connection {
    redis::Client::open(node.url()).unwrap().get_connection().unwrap()
}

/// Waits until closed connections have left the registry.
fn wait_for_clients(node: &TestNode, n: usize) {
    for _ in 0..200 {
        if node.server.clients.len() == n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("expected {n} clients, have {}", node.server.clients.len());
}

/// Parses `k=v` fields of one CLIENT LIST line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ').find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('='))).unwrap_or("")
}

/// The text of a bulk string reply.
fn bulk_text(reply: &str) -> &str {
    let (_, body) = reply.split_once("\r\n").unwrap();
    body.strip_suffix("\r\n").unwrap()
}

#[test]
fn client_list_and_info_describe_every_connection() {
    let node = TestNode::start();
    let mut a = node.raw();
    let mut b = node.raw();
    let a_id = a.cmd_str(&["CLIENT", "ID"]);
    let a_id = a_id.trim_start_matches(':').trim();
    assert_eq!(b.cmd_str(&["CLIENT", "SETNAME", "bee"]), "+OK\r\n");
    let list = a.cmd_str(&["CLIENT", "LIST"]);
    let body = bulk_text(&list);
    assert!(body.ends_with('\n'));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    let mine = lines.iter().find(|l| field(l, "id") == a_id).expect("own line");
    assert_eq!(field(mine, "cmd"), "client|list");
    assert_eq!(field(mine, "laddr"), node.addr.to_string());
    assert!(lines.iter().any(|l| field(l, "name") == "bee"));
    let by_id = a.cmd_str(&["CLIENT", "LIST", "ID", a_id, "999999"]);
    assert_eq!(bulk_text(&by_id).lines().count(), 1);
    assert_eq!(bulk_text(&a.cmd_str(&["CLIENT", "LIST", "TYPE", "normal"])).lines().count(), 2);
    assert_eq!(a.cmd_str(&["CLIENT", "LIST", "TYPE", "replica"]), "$0\r\n\r\n");
    let info = a.cmd_str(&["CLIENT", "INFO"]);
    assert_eq!(field(bulk_text(&info), "id"), a_id);
    assert!(bulk_text(&info).ends_with('\n'));
    // RESP3: verbatim text.
    a.cmd(&[b"HELLO", b"3"]);
    assert!(a.cmd_str(&["CLIENT", "INFO"]).starts_with('='));
}

#[test]
fn client_kill_closes_the_chosen_connections() {
    let node = TestNode::start();
    let mut a = node.raw();
    let mut b = node.raw();
    let mut c = node.raw();
    let b_line = b.cmd_str(&["CLIENT", "INFO"]);
    let b_addr = field(bulk_text(&b_line), "addr").to_string();
    // Old form: by address.
    assert_eq!(a.cmd_str(&["CLIENT", "KILL", &b_addr]), "+OK\r\n");
    assert!(b.is_closed());
    assert_eq!(a.cmd_str(&["CLIENT", "KILL", &b_addr]), "-ERR No such client\r\n");
    // New form: by id, replying how many.
    let c_id = c.cmd_str(&["CLIENT", "ID"]).trim_start_matches(':').trim().to_string();
    assert_eq!(a.cmd_str(&["CLIENT", "KILL", "ID", &c_id]), ":1\r\n");
    assert!(c.is_closed());
    // SKIPME yes (the default) spares the caller; SKIPME no does not.
    let a_id = a.cmd_str(&["CLIENT", "ID"]).trim_start_matches(':').trim().to_string();
    assert_eq!(a.cmd_str(&["CLIENT", "KILL", "ID", &a_id]), ":0\r\n");
    let mut d = node.raw();
    wait_for_clients(&node, 2);
    assert_eq!(
        a.cmd_str(&["CLIENT", "KILL", "TYPE", "normal", "USER", "default", "LADDR", &node.addr.to_string()]),
        ":1\r\n"
    );
    assert!(d.is_closed());
    assert_eq!(a.cmd_str(&["CLIENT", "KILL", "ID", &a_id, "SKIPME", "no"]), ":1\r\n");
    assert!(a.is_closed());
}

#[test]
fn client_help_lists_subcommands() {
    let node = TestNode::start();
    let help = node.raw().cmd_str(&["CLIENT", "HELP"]);
    assert!(help.starts_with('*'));
    for sub in ["SETNAME", "GETNAME", "SETINFO", "LIST", "KILL", "NO-EVICT", "HELP"] {
        assert!(help.contains(&format!("+{sub}")), "{sub} missing from {help}");
    }
}

#[test]
fn command_count_is_the_number_of_top_level_commands() {
    let node = TestNode::start();
    let n = cachegrid::commands::all_commands().count();
    assert_eq!(node.raw().cmd_str(&["COMMAND", "COUNT"]), format!(":{n}\r\n"));
    let all = node.raw().cmd_str(&["COMMAND"]);
    assert!(all.starts_with(&format!("*{n}\r\n")), "{}", &all[..20]);
}

#[test]
fn command_info_of_get_is_exactly_redis_s() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_cmdinfo") else { return };
    d.check_str(&["COMMAND", "INFO", "get"]);
    d.check_str(&["COMMAND", "INFO", "GET", "nosuchcommand"]);
    d.check_str(&["COMMAND", "INFO", "client|id"]);
    // RESP3 uses sets and maps inside the entry.
    d.both(&[b"HELLO", b"3"]);
    d.check_str(&["COMMAND", "INFO", "get", "client|id", "nosuch"]);
}

#[test]
fn command_info_shape_matches_redis_for_every_command() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_cmdshape") else { return };
    let mut c = sync_client(&node);
    let mut r = redis::Client::open("redis://127.0.0.1:6379/").unwrap().get_connection().unwrap();
    for spec in cachegrid::commands::all_commands() {
        let ours: redis::Value = redis::cmd("COMMAND").arg("INFO").arg(spec.name).query(&mut c).unwrap();
        let theirs: redis::Value = redis::cmd("COMMAND").arg("INFO").arg(spec.name).query(&mut r).unwrap();
        let (ours, theirs) = (entry(&ours), entry(&theirs));
        assert_eq!(ours.len(), 10, "{}", spec.name);
        assert_eq!(theirs.len(), 10, "{}", spec.name);
        // name, arity, first, last, step are Redis's exactly.
        for i in [0, 1, 3, 4, 5] {
            assert_eq!(ours[i], theirs[i], "field {i} of COMMAND INFO {}", spec.name);
        }
    }
    d.check_str(&["COMMAND", "INFO", "nosuch"]);
}

fn entry(v: &redis::Value) -> Vec<redis::Value> {
    match v {
        redis::Value::Array(items) => match &items[0] {
            redis::Value::Array(e) => e.clone(),
            other => panic!("not an entry: {other:?}"),
        },
        other => panic!("not an array: {other:?}"),
    }
}

#[test]
fn command_subcommand_errors_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_cmd_err") else { return };
    for args in [
        &["COMMAND", "COUNT", "x"][..],
        &["COMMAND", "GETKEYS"],
        &["COMMAND", "GETKEYS", "get"],
        &["COMMAND", "GETKEYS", "ping"],
        &["COMMAND", "GETKEYS", "nosuch", "a"],
        &["COMMAND", "GETKEYS", "get", "a", "b"],
        &["COMMAND", "GETKEYS", "set", "a", "b"],
        &["COMMAND", "GETKEYS", "del", "a", "b", "c"],
        &["COMMAND", "GETKEYS", "client", "id"],
        &["COMMAND", "GETKEYS", "ping", "x"],
        &["COMMAND", "DOCS", "nosuch"],
        &["COMMAND", "LIST", "x"],
        &["COMMAND", "LIST", "FILTERBY"],
        &["COMMAND", "LIST", "FILTERBY", "foo", "x"],
        &["COMMAND", "LIST", "FILTERBY", "MODULE", "x"],
        &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "nocat"],
        &["COMMAND", "LIST", "FILTERBY", "PATTERN", "nosuch*"],
    ] {
        d.check_str(args);
    }
}

#[test]
fn command_docs_and_list_describe_our_commands() {
    let node = TestNode::start();
    let mut c = sync_client(&node);
    let docs: redis::Value =
        redis::cmd("COMMAND").arg("DOCS").arg("get").arg("client").query(&mut c).unwrap();
    let text = format!("{docs:?}");
    for part in ["summary", "since", "group", "string", "subcommands", "client|setname"] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    let all: Vec<String> = redis::cmd("COMMAND").arg("LIST").query(&mut c).unwrap();
    assert!(all.contains(&"get".to_string()) && all.contains(&"client|kill".to_string()));
    let pat: Vec<String> = redis::cmd("COMMAND")
        .arg("LIST")
        .arg("FILTERBY")
        .arg("PATTERN")
        .arg("CLIENT*")
        .query(&mut c)
        .unwrap();
    assert!(pat.iter().all(|n| n.starts_with("client")) && pat.len() > 5, "{pat:?}");
    let conn: Vec<String> = redis::cmd("COMMAND")
        .arg("LIST")
        .arg("FILTERBY")
        .arg("ACLCAT")
        .arg("connection")
        .query(&mut c)
        .unwrap();
    assert!(conn.contains(&"ping".to_string()) && !conn.contains(&"get".to_string()));
    let keys: Vec<String> =
        redis::cmd("COMMAND").arg("GETKEYS").arg("SET").arg("k1").arg("v").query(&mut c).unwrap();
    assert_eq!(keys, ["k1"]);
    let help: Vec<String> = redis::cmd("COMMAND").arg("HELP").query(&mut c).unwrap();
    assert!(help[0].starts_with("COMMAND <subcommand>"));
}

#[test]
fn wait_on_a_standalone_node_matches_redis_without_replicas() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "conn_wait") else { return };
    d.check_str(&["SET", "k", "v"]);
    d.check_str(&["WAIT", "0", "0"]);
    d.check_str(&["WAIT", "-1", "0"]);
    // No replica ever answers: the timeout passes, none counted.
    d.check_str(&["WAIT", "1", "20"]);
    d.check_str(&["WAIT", "a", "0"]);
    d.check_str(&["WAIT", "0", "a"]);
    d.check_str(&["WAIT", "0", "-1"]);
    d.check_str(&["WAIT", "1"]);
    d.check_str(&["MULTI"]);
    d.check_str(&["WAIT", "1", "0"]);
    d.check_str(&["EXEC"]);
}
