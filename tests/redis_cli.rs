//! A real node process driven by the real `redis-cli`: commands, `--pipe` mass insert, and a
//! clean shutdown on SIGTERM.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::NodeProcess;

const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// Whether redis-cli is installed; outside CI a missing one skips the test with a reason.
fn have_redis_cli() -> bool {
    if std::path::Path::new(REDIS_CLI).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {REDIS_CLI} is missing");
    }
    eprintln!("skipping: {REDIS_CLI} not installed");
    false
}

fn cli(node: &NodeProcess, args: &[&str]) -> String {
    let out = Command::new(REDIS_CLI)
        .args(["-p", &node.addr.port().to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_runs_commands() {
    if !have_redis_cli() {
        return;
    }
    let node = NodeProcess::spawn(&[]);
    assert_eq!(cli(&node, &["PING"]), "PONG\n");
    assert_eq!(cli(&node, &["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&node, &["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&node, &["--no-raw", "GET", "greeting"]), "\"hello world\"\n");
    assert_eq!(cli(&node, &["--no-raw", "GET", "missing"]), "(nil)\n");
    let info = cli(&node, &["--no-raw", "COMMAND", "INFO", "get"]);
    assert!(info.contains("\"get\"") && info.contains("@read"), "{info}");
    assert!(cli(&node, &["--no-raw", "COMMAND", "DOCS", "client"]).contains("client|list"));
    assert!(cli(&node, &["CLIENT", "LIST"]).contains("cmd=client|list"));
    assert!(cli(&node, &["--no-raw", "COMMAND"]).contains("\"set\""));
    // Commands from stdin, one per line, as `redis-cli < file` runs them.
    let mut child = Command::new(REDIS_CLI)
        .args(["-p", &node.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"SET a 1\nGET a\nNOSUCH x\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("OK\n1\n"), "{out}");
}

#[test]
fn redis_cli_pipe_mass_insert_gets_every_reply() {
    if !have_redis_cli() {
        return;
    }
    let node = NodeProcess::spawn(&[]);
    let mut input = Vec::new();
    for i in 0..10_000 {
        let (k, v) = (format!("mass:{i}"), format!("value-{i}"));
        input.extend(common::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
    }
    let mut child = Command::new(REDIS_CLI)
        .args(["-p", &node.addr.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("errors: 0, replies: 10000"), "{text}");
    assert_eq!(cli(&node, &["DBSIZE"]), "10000\n");
    assert_eq!(cli(&node, &["GET", "mass:9999"]), "value-9999\n");
}

#[test]
fn sigterm_shuts_the_node_down_cleanly() {
    let mut node = NodeProcess::spawn(&[]);
    let mut c = node.raw();
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "node still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    // Its clients were disconnected.
    assert!(c.is_closed());
}
