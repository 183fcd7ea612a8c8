//! Grid members as real `cachegrid node` processes, for the tests that run a grid
//! (tests/grid.rs, tests/faults.rs): start and join, restart on the same directory, signal,
//! and wait until the members agree on one map and have moved and synced their slots.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_port, NodeProcess};

/// A failover timeout well above a loaded two-core test machine's hiccups.
pub const FAILOVER_TIMEOUT_MS: u32 = 3000;

/// How a member is started: kept, so a restart starts it the same way.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// `--cluster-node-timeout` in ms.
    pub timeout_ms: u32,
    /// More command-line options.
    pub args: Vec<String>,
    /// Environment variables of the process (libfaketime's, FAILPOINTS).
    pub env: Vec<(String, String)>,
}

impl Default for MemberOptions {
    fn default() -> Self {
        MemberOptions { timeout_ms: FAILOVER_TIMEOUT_MS, args: Vec::new(), env: Vec::new() }
    }
}

impl MemberOptions {
    /// The defaults with `--cluster-replication sync`.
    pub fn sync() -> Self {
        MemberOptions::default().args(&["--cluster-replication", "sync"])
    }

    /// Adds command-line options.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets the failover timeout.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// Adds environment variables.
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
}

/// One grid member: its process, data directory, ports and how it was started.
pub struct Member {
    pub process: NodeProcess,
    pub dir: tempfile::TempDir,
    pub bus: u16,
    pub admin: u16,
    pub zone: &'static str,
    pub options: MemberOptions,
    /// A client port kept across restarts ([`Member::start_on_own_port`]); None: a free one
    /// at every start.
    pub port: Option<u16>,
}

impl Member {
    /// Starts a member in `zone` with the default options; `seed` is a member to join, None
    /// to bootstrap a grid.
    pub fn start(zone: &'static str, seed: Option<&Member>) -> Member {
        Member::start_with(zone, seed, MemberOptions::default())
    }

    /// As `start`, with its own options.
    pub fn start_with(zone: &'static str, seed: Option<&Member>, options: MemberOptions) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let (bus, admin) = (free_port(), free_port());
        let seed = seed.map(Member::seed);
        let process = spawn(dir.path(), zone, bus, admin, None, seed.as_deref(), &options);
        Member { process, dir, bus, admin, zone, options, port: None }
    }

    /// As `start_with`, on a client port of its own that a restart keeps, as a machine that
    /// comes back at its address (clients reconnect where they were).
    pub fn start_on_own_port(zone: &'static str, seed: Option<&Member>, options: MemberOptions) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let (port, bus, admin) = (free_port(), free_port(), free_port());
        let seed = seed.map(Member::seed);
        let process = spawn(dir.path(), zone, bus, admin, Some(port), seed.as_deref(), &options);
        Member { process, dir, bus, admin, zone, options, port: Some(port) }
    }

    /// How another node names this one in `--join`.
    pub fn seed(&self) -> String {
        format!("{}@{}", self.process.addr, self.bus)
    }

    /// Its client (RESP) address.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// The bus address, as `DEBUG BUS-DROP` takes it.
    pub fn bus_addr(&self) -> String {
        format!("127.0.0.1:{}", self.bus)
    }

    /// The admin HTTP address, as `cachegrid leave --admin` takes it.
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin)
    }

    /// Runs a command on this member and returns the reply as RESP text. Waits up to 60 s: a
    /// one-thread member that joins replays the Raft log on its only thread and answers
    /// nothing meanwhile (open, docs/RELIABILITY.md); on a slow machine that took over 10 s.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.process.raw().read_timeout(Duration::from_secs(60)).cmd_str(args)
    }

    /// SIGKILLs the process (if it still runs) and starts it again on the same directory,
    /// ports and options, with no seed: a crash and restart. The client port is a new one
    /// unless the member was started with [`Member::start_on_own_port`].
    pub fn restart(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        self.process =
            spawn(self.dir.path(), self.zone, self.bus, self.admin, self.port, None, &self.options);
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-KILL`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.process.child.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Its node id, from CLUSTER MYID.
    pub fn myid(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"]).lines().nth(1).unwrap_or_default().to_string()
    }

    /// GET on its admin port; returns the body.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
    }

    /// Slots it is primary of, from its CLUSTER NODES line.
    pub fn primaries(&self) -> usize {
        let nodes = self.cmd(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .find(|l| l.contains("myself") && l.contains("master"))
            .map(|l| {
                l.split_whitespace()
                    .skip(8)
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1),
                        None => r.parse::<usize>().ok().map(|_| 1),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn spawn(
    dir: &std::path::Path,
    zone: &str,
    bus: u16,
    admin: u16,
    port: Option<u16>,
    seed: Option<&str>,
    options: &MemberOptions,
) -> NodeProcess {
    let (dir, bus, admin) = (dir.to_str().unwrap(), bus.to_string(), admin.to_string());
    let timeout = options.timeout_ms.to_string();
    let port = port.map(|p| p.to_string());
    let mut args = vec!["--dir", dir, "--zone", zone, "--cluster-port", &bus, "--admin-port", &admin];
    if let Some(p) = &port {
        args.extend(["--port", p]);
    }
    args.extend(["--cluster-node-timeout", &timeout]);
    match seed {
        Some(s) => args.extend(["--join", s]),
        None => args.extend(["--cluster-enabled", "true"]),
    }
    args.extend(options.args.iter().map(String::as_str));
    let env: Vec<(&str, &str)> = options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NodeProcess::spawn_with_env(&args, &env)
}

/// Waits (90 s at most) until every member reports `known` nodes and the same agreed epoch
/// and slot layout; returns that layout (CLUSTER SLOTS).
pub fn wait_for_agreement(members: &[&Member], known: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let infos: Vec<String> = members.iter().map(|m| m.cmd(&["CLUSTER", "INFO"])).collect();
        let slots: Vec<String> = members.iter().map(|m| m.cmd(&["CLUSTER", "SLOTS"])).collect();
        let want = format!("cluster_known_nodes:{known}\r\n");
        let epoch =
            |i: &String| i.lines().find(|l| l.starts_with("cluster_current_epoch")).map(str::to_owned);
        // Epoch 0 is a node's own view before the grid's first entry is committed.
        let agreed = |i: &String| !i.contains("cluster_current_epoch:0\r\n");
        if infos.iter().all(|i| i.contains(&want) && i.contains("cluster_state:ok") && agreed(i))
            && infos.iter().all(|i| epoch(i) == epoch(&infos[0]))
            && slots.iter().all(|s| s == &slots[0])
        {
            return slots[0].clone();
        }
        assert!(Instant::now() < deadline, "no agreement on {known} nodes: {infos:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (120 s at most) until no member has slots left to move and all agree on `known`
/// nodes.
pub fn wait_for_rebalance(members: &[&Member], known: usize) {
    settle(members, known, false)
}

/// As [`wait_for_rebalance`], and every member is ready (`/ready`: its replicas' full syncs
/// done). With one replica per slot, a second failure before a replacement replica has
/// caught up loses what only the second victim held (README): a test that injects one fault
/// after another waits for this in between.
pub fn wait_for_rebalance_and_sync(members: &[&Member], known: usize) {
    settle(members, known, true)
}

fn settle(members: &[&Member], known: usize, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let moving: Vec<String> = members.iter().map(|m| m.admin_get("/cluster/moving")).collect();
        if moving.iter().all(|t| t.contains("slots_leaving 0 ")) {
            wait_for_agreement(members, known);
            let again: Vec<String> = members.iter().map(|m| m.admin_get("/cluster/moving")).collect();
            let ready = !ready || members.iter().all(|m| m.admin_get("/ready") == "ready\n");
            if ready
                && again.iter().all(|t| t.contains("slots_leaving 0 "))
                && again.windows(2).all(|w| w[0] == w[1])
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "slots still moving: {moving:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (60 s at most) until every member's `/ready` says it serves and has caught up (no
/// full sync or import under way).
pub fn wait_until_ready(members: &[&Member]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: Vec<String> = members.iter().map(|m| m.admin_get("/ready")).collect();
        if states.iter().all(|s| s == "ready\n") {
            return;
        }
        assert!(Instant::now() < deadline, "members not ready: {states:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cluster client over `members` that retries `retries` times (up to 300 ms apart) through
/// redirections, failovers and a grid that is not serving yet.
pub fn cluster_client(members: &[&Member], retries: u32) -> redis::cluster::ClusterClient {
    let seeds: Vec<String> = members.iter().map(|m| format!("redis://{}/", m.addr())).collect();
    redis::cluster::ClusterClientBuilder::new(seeds)
        .retries(retries)
        .max_retry_wait(300)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
