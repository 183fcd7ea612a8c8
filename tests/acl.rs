//! Access control as a client sees it: ACL users and their NOPERM errors (compared with the
//! reference Redis where deterministic), `requirepass` as the default user's password, users
//! from configuration, protected mode, and secrets kept out of the logs.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Differential, Raw, TestNode};

/// A user name no other test (or run) uses on the shared reference Redis.
fn unique_user(test: &str) -> String {
    common::unique_prefix(test).replace(':', "_")
}

/// A connection to `addr` authenticated as `user`.
fn login(addr: std::net::SocketAddr, user: &str, pass: &str) -> Raw {
    let mut r = Raw::connect(addr);
    assert_eq!(r.cmd_str(&["AUTH", user, pass]), "+OK\r\n");
    r
}

/// Deletes the users it names on the reference Redis when the test ends, even on failure.
struct Cleanup(Option<std::net::SocketAddr>, Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(addr) = self.0 {
            let mut r = Raw::connect(addr);
            for u in &self.1 {
                r.cmd_str(&["ACL", "DELUSER", u]);
            }
        }
    }
}

#[test]
fn setuser_getuser_list_and_deluser_match_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "acl_setuser") else { return };
    let name = unique_user("acl_setuser");
    let _cleanup = Cleanup(common::reference_redis(), vec![name.clone()]);
    d.check_str(&[
        "ACL",
        "SETUSER",
        &name,
        "on",
        ">s3cret",
        ">other",
        "<other",
        "~cache:*",
        "~session:*",
        "+@hash",
        "-hdel",
    ]);
    // One single-command rule only: Redis 7.0 lists several in the order of its command
    // dict, which is seeded at random per process, so their order differs from run to run.
    d.check_str(&["ACL", "GETUSER", &name]);
    d.check_str(&["ACL", "GETUSER", "no-such-user-here"]);
    // Our LIST holds the same line for this user as Redis's.
    let line = |reply: &str| reply.lines().find(|l| l.contains(&name)).map(str::to_string);
    let (ours, theirs) = d.both(&[b"ACL", b"LIST"]);
    assert_eq!(line(&String::from_utf8_lossy(&ours)), line(&String::from_utf8_lossy(&theirs)));
    assert!(line(&String::from_utf8_lossy(&ours)).unwrap().contains("#"), "passwords appear hashed");
    // Refused rules: nothing changes, and the error names the modifier.
    d.check_str(&["ACL", "SETUSER", &name, "off", "+@nosuchcategory"]);
    d.check_str(&["ACL", "SETUSER", &name, "+nosuchcommand"]);
    d.check_str(&["ACL", "SETUSER", &name, "<not-a-password-of-it"]);
    d.check_str(&["ACL", "SETUSER", &name, "#abc"]);
    d.check_str(&["ACL", "SETUSER", &name, "bogus"]);
    d.check_str(&["ACL", "GETUSER", &name]);
    d.check_str(&["ACL", "SETUSER", "a b"]);
    d.check_str(&["ACL", "CAT"]);
    d.check_str(&["ACL", "CAT", "nosuchcategory"]);
    d.check_str(&["ACL", "DELUSER", "default"]);
    d.check_str(&["ACL", "WHOAMI"]);
    d.check_str(&["ACL", "DELUSER", &name, "never-existed-user"]);
    d.check_str(&["ACL", "GETUSER", &name]);
}

#[test]
fn command_rules_and_key_patterns_refuse_with_redis_errors() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "acl_noperm") else { return };
    let redis = common::reference_redis().unwrap();
    let name = unique_user("acl_noperm");
    let _cleanup = Cleanup(Some(redis), vec![name.clone()]);
    let allowed = d.key("allowed:1");
    let pattern = format!("~{}allowed:*", d.prefix);
    d.check_str(&[
        "ACL",
        "SETUSER",
        &name,
        "on",
        ">pw",
        &pattern,
        "+@string",
        "-append",
        "+client|id",
        "+acl|whoami",
    ]);
    let mut ours = login(node.addr, &name, "pw");
    let mut theirs = login(redis, &name, "pw");
    let other = d.key("other:1");
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![b"SET".to_vec(), allowed.clone(), b"v".to_vec()],
        vec![b"GET".to_vec(), allowed.clone()],
        vec![b"GET".to_vec(), other.clone()],
        vec![b"MSET".to_vec(), allowed.clone(), b"1".to_vec(), other.clone(), b"2".to_vec()],
        vec![b"APPEND".to_vec(), allowed.clone(), b"x".to_vec()],
        vec![b"HSET".to_vec(), allowed.clone(), b"f".to_vec(), b"v".to_vec()],
        vec![b"CLIENT".to_vec(), b"LIST".to_vec()],
        vec![b"CONFIG".to_vec(), b"GET".to_vec(), b"maxclients".to_vec()],
        vec![b"ACL".to_vec(), b"WHOAMI".to_vec()],
        vec![b"ACL".to_vec(), b"SETUSER".to_vec(), b"x".to_vec()],
        // AUTH and HELLO stay allowed, as in Redis.
        vec![b"AUTH".to_vec(), name.as_bytes().to_vec(), b"pw".to_vec()],
        vec![b"MULTI".to_vec()],
    ];
    for args in &cases {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        assert_eq!(
            String::from_utf8_lossy(&ours.cmd(&refs)),
            String::from_utf8_lossy(&theirs.cmd(&refs)),
            "{:?}",
            args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>()
        );
    }
    d.check(&[b"DEL", &allowed]);
}

#[test]
fn a_refused_command_in_multi_aborts_exec() {
    let node = TestNode::start();
    let mut admin = node.raw();
    admin.cmd_str(&["ACL", "SETUSER", "reader", "on", ">pw", "allkeys", "+@read", "+multi", "+exec"]);
    let mut r = login(node.addr, "reader", "pw");
    assert_eq!(r.cmd_str(&["MULTI"]), "+OK\r\n");
    assert!(r.cmd_str(&["SET", "k", "v"]).starts_with("-NOPERM"));
    assert!(r.cmd_str(&["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(admin.cmd_str(&["EXISTS", "k"]), ":0\r\n");
}

#[test]
fn requirepass_is_the_default_users_password() {
    let node = TestNode::with_config(|c| c.requirepass = Some("topsecret".into()));
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
    assert!(r.cmd_str(&["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(r.cmd_str(&["AUTH", "topsecret"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["ACL", "WHOAMI"]), "$7\r\ndefault\r\n");
    let mut r2 = node.raw();
    assert_eq!(r2.cmd_str(&["AUTH", "default", "topsecret"]), "+OK\r\n");
    // CONFIG SET requirepass changes the default user's password at once.
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", "newpass"]), "+OK\r\n");
    assert!(node.raw().cmd_str(&["AUTH", "topsecret"]).starts_with("-WRONGPASS"));
    assert_eq!(node.raw().cmd_str(&["AUTH", "newpass"]), "+OK\r\n");
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", ""]), "+OK\r\n");
    assert_eq!(node.raw().cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn users_from_configuration_log_in_with_auth_and_hello() {
    let node = TestNode::with_config(|c| {
        c.acl = vec!["user app on >apppw ~session:* +@all".into(), "default off".into()];
    });
    let mut r = node.raw();
    assert_eq!(r.cmd_str(&["PING"]), "-NOAUTH Authentication required.\r\n");
    assert!(r.cmd_str(&["AUTH", "app", "wrong"]).starts_with("-WRONGPASS"));
    let hello = r.cmd_str(&["HELLO", "3", "AUTH", "app", "apppw"]);
    assert!(hello.starts_with("%7"), "{hello}");
    assert_eq!(r.cmd_str(&["ACL", "WHOAMI"]), "$3\r\napp\r\n");
    assert!(r.cmd_str(&["CLIENT", "INFO"]).contains(" user=app "));
    assert_eq!(r.cmd_str(&["SET", "session:1", "v"]), "+OK\r\n");
    assert!(r.cmd_str(&["SET", "cache:1", "v"]).starts_with("-NOPERM"));
    // RESET goes back to the default user, which is off here.
    assert_eq!(r.cmd_str(&["RESET"]), "+RESET\r\n");
    assert_eq!(r.cmd_str(&["GET", "session:1"]), "-NOAUTH Authentication required.\r\n");
}

#[test]
fn a_bad_acl_entry_is_a_config_error_without_the_password() {
    let config =
        cachegrid::config::Config { acl: vec!["bob on >hunter2 +@nosuch".into()], ..Default::default() };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("bob") && err.contains("Unknown command or category"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn deleting_a_user_closes_its_connections() {
    let node = TestNode::start();
    let mut admin = node.raw();
    admin.cmd_str(&["ACL", "SETUSER", "temp", "on", ">pw", "allkeys", "allcommands"]);
    let mut r = login(node.addr, "temp", "pw");
    assert_eq!(r.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(admin.cmd_str(&["ACL", "DELUSER", "temp"]), ":1\r\n");
    r.cmd_str(&["PING"]);
    assert!(r.is_closed());
    assert!(node.raw().cmd_str(&["AUTH", "temp", "pw"]).starts_with("-WRONGPASS"));
}

#[test]
fn protected_mode_is_on_by_default_and_loopback_clients_pass() {
    let node = TestNode::start();
    let mut r = node.raw();
    assert_eq!(
        r.cmd_str(&["CONFIG", "GET", "protected-mode"]),
        "*2\r\n$14\r\nprotected-mode\r\n$3\r\nyes\r\n"
    );
    assert_eq!(r.cmd_str(&["PING"]), "+PONG\r\n");
    // Every 127.0.0.0/8 address is loopback here, so no test client can be remote: the
    // decision the accept loop makes is asked directly, for a remote and a loopback peer.
    let remote: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let local: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert!(cachegrid::acl::refuses(&node.server, remote));
    assert!(!cachegrid::acl::refuses(&node.server, local));
    // A password for the default user opens the node; so does protected-mode no.
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", "pw"]), "+OK\r\n");
    assert!(!cachegrid::acl::refuses(&node.server, remote));
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "requirepass", ""]), "+OK\r\n");
    assert!(cachegrid::acl::refuses(&node.server, remote));
    assert_eq!(r.cmd_str(&["CONFIG", "SET", "protected-mode", "no"]), "+OK\r\n");
    assert!(!cachegrid::acl::refuses(&node.server, remote));
}

#[test]
fn secrets_never_reach_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
        .args(["node", "--port", "0", "--log-format", "text", "--requirepass", "Zq-startup-secret"])
        .env("RUST_LOG", "trace")
        .env("CACHEGRID_LOG_LEVEL", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = wait_for_addr(&log_path);
    let mut r = Raw::connect(addr);
    assert!(r.cmd_str(&["AUTH", "Zq-wrong-secret"]).starts_with("-WRONGPASS"));
    assert_eq!(r.cmd_str(&["AUTH", "Zq-startup-secret"]), "+OK\r\n");
    r.cmd_str(&["HELLO", "3", "AUTH", "default", "Zq-hello-secret"]);
    r.cmd_str(&["ACL", "SETUSER", "u", "on", ">Zq-setuser-secret", "+@nosuch"]);
    r.cmd_str(&["ACL", "SETUSER", "u", "on", ">Zq-setuser-secret"]);
    r.cmd_str(&["CONFIG", "SET", "requirepass", "Zq-config-secret"]);
    r.send(&common::encode(&[b"SHUTDOWN"]));
    let _ = child.wait_timeout_or_kill();
    let mut text = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.contains("ready"), "the log was written: {text}");
    assert!(!text.contains("Zq-"), "a secret reached the log:\n{text}");
}

fn wait_for_addr(path: &std::path::Path) -> std::net::SocketAddr {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(pos) = text.find("addr=") {
            if let Some(a) = text[pos + 5..].split_whitespace().next().and_then(|a| a.parse().ok()) {
                return a;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node did not start");
}

trait WaitOrKill {
    fn wait_timeout_or_kill(&mut self) -> std::io::Result<()>;
}

impl WaitOrKill for std::process::Child {
    /// Waits up to 5 s for the node to exit after SHUTDOWN, then kills it.
    fn wait_timeout_or_kill(&mut self) -> std::io::Result<()> {
        for _ in 0..100 {
            if self.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill()?;
        self.wait().map(|_| ())
    }
}

#[test]
fn the_protected_mode_flag_takes_redis_yes_and_no() {
    let node = common::NodeProcess::spawn(&["--protected-mode", "no"]);
    let reply = node.raw().cmd_str(&["CONFIG", "GET", "protected-mode"]);
    assert_eq!(reply, "*2\r\n$14\r\nprotected-mode\r\n$2\r\nno\r\n");
}

#[test]
fn a_mistyped_secret_option_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    for (i, toml) in [
        "acl = \"alice on >Zq-typo-secret\"\n",
        "acl = [[\"Zq-typo-secret\"]]\n",
        "requirepass = [\"Zq-typo-secret\"]\n",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let err =
            cachegrid::config::Config::load(Some(&path), serde_json::Map::new()).unwrap_err().to_string();
        assert!(!err.contains("Zq-"), "{toml}: {err}");
        assert!(err.contains("acl") || err.contains("requirepass"), "{toml}: {err}");
    }
}

#[test]
fn rules_changed_after_queueing_are_enforced_at_exec_as_in_redis() {
    let node = TestNode::start();
    let Some(mut d) = Differential::new(&node, "acl_exec") else { return };
    let redis = common::reference_redis().unwrap();
    let name = unique_user("acl_exec");
    let _cleanup = Cleanup(Some(redis), vec![name.clone()]);
    d.check_str(&["ACL", "SETUSER", &name, "on", ">pw", "~*", "+get", "+set", "+multi", "+exec"]);
    let (a, b) = (d.key("a"), d.key("b"));
    let mut sessions = [login(node.addr, &name, "pw"), login(redis, &name, "pw")];
    for s in &mut sessions {
        assert_eq!(s.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(s.cmd(&[b"GET", &a]), b"+QUEUED\r\n");
        assert_eq!(s.cmd(&[b"SET", &b, b"1"]), b"+QUEUED\r\n");
    }
    d.check_str(&["ACL", "SETUSER", &name, "-get", "resetkeys", "~nomatch:*"]);
    let [ours, theirs] = &mut sessions;
    let exec = ours.cmd_str(&["EXEC"]);
    assert_eq!(exec, theirs.cmd_str(&["EXEC"]));
    assert!(exec.contains("ACLs rules changed"), "{exec}");
    d.check(&[b"EXISTS", &b]);
}
