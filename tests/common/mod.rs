//! What every integration test needs: a node (in this process or as a real `cachegrid`
//! process), the reference Redis on 127.0.0.1:6379, and raw RESP connections that compare
//! replies byte for byte.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cachegrid::config::Config;
use cachegrid::node::Node;

/// A node running on its own runtime thread inside the test process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub server: std::sync::Arc<cachegrid::server::Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestNode {
    /// A node with default settings on a free port.
    pub fn start() -> TestNode {
        Self::with_config(|_| {})
    }

    /// A node on a free port, with `tweak` applied to its configuration.
    pub fn with_config(tweak: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = Config { port: 0, ..Config::default() };
        tweak(&mut config);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let node = Node::start(config).await.expect("node starts");
                tx.send((node.addr, node.server.clone())).unwrap();
                let server = node.server.clone();
                tokio::select! {
                    _ = stop_rx => { let _ = node.shutdown().await; }
                    _ = server.shutdown.cancelled() => {}
                }
            });
        });
        let (addr, server) = rx.recv_timeout(Duration::from_secs(10)).expect("node listening");
        TestNode { addr, server, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// `redis://` URL of the node.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A raw RESP connection.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    /// An async `redis` crate connection.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_tokio_connection().await.unwrap()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `cachegrid node` process, for tests that need a real process (signals, redis-cli).
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl NodeProcess {
    /// Spawns the binary with `args` after `node --port 0`, and waits until it listens.
    pub fn spawn(args: &[&str]) -> NodeProcess {
        Self::spawn_with_env(args, &[])
    }

    /// As [`NodeProcess::spawn`], with more environment variables (FAILPOINTS, libfaketime's).
    /// A `--port` in `args` replaces the free port.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let port: &[&str] = if args.contains(&"--port") { &[] } else { &["--port", "0"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
            .arg("node")
            .args(port)
            .args(["--log-format", "text"])
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            // TEST_NODE_RUST_LOG: a more detailed log for a diagnosis (with TEST_NODE_LOG_DIR).
            .env("RUST_LOG", std::env::var("TEST_NODE_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cachegrid");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("node exited before listening").unwrap();
            let plain = strip_ansi(&line);
            if let Some(pos) = plain.find("addr=") {
                break plain[pos + 5..].split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining the log so the node never blocks on a full pipe; with
        // TEST_NODE_LOG_DIR set, keep it there too (one file per node and port).
        let keep = std::env::var_os("TEST_NODE_LOG_DIR").map(|d| {
            let path = std::path::Path::new(&d).join(format!("node-{}-{}.log", addr, child.id()));
            std::fs::File::create(path).expect("create the node's log file")
        });
        std::thread::spawn(move || {
            let mut keep = keep;
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{}", strip_ansi(&line));
                }
            }
        });
        NodeProcess { child, addr }
    }

    /// A raw RESP connection.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A blocking RESP connection that sends commands and returns raw reply bytes.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// The same connection, waiting up to `d` for each reply instead of 10 s.
    pub fn read_timeout(self, d: Duration) -> Raw {
        self.stream.set_read_timeout(Some(d)).unwrap();
        self
    }

    /// Sends `args` as a RESP array and returns the reply frame's bytes.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&encode(args));
        self.read_reply().expect("a reply")
    }

    /// Like [`Raw::cmd`] with string arguments; returns the reply as (lossy) text.
    pub fn cmd_str(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        String::from_utf8_lossy(&self.cmd(&args)).into_owned()
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one complete reply frame (RESP2 or RESP3); None if the connection closed.
    pub fn read_reply(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return Some(self.buf.drain(..n).collect());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Length of the first complete RESP2/RESP3 frame in `buf`. Scanned by hand: the
/// `redis-protocol` decoders reject RESP2 nils in RESP3 mode and maps inside sets.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    frame_end(buf, 0)
}

fn frame_end(buf: &[u8], pos: usize) -> Option<usize> {
    let kind = *buf.get(pos)?;
    let nl = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
    let next = nl + 2;
    let n = || std::str::from_utf8(&buf[pos + 1..nl]).ok()?.parse::<i64>().ok();
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(next),
        b'$' | b'=' | b'!' => match n()? {
            len if len < 0 => Some(next),
            len => {
                let end = next + len as usize + 2;
                (end <= buf.len()).then_some(end)
            }
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = n()?;
            let items = if matches!(kind, b'%' | b'|') { count * 2 } else { count };
            let mut at = next;
            for _ in 0..items.max(0) {
                at = frame_end(buf, at)?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// The reference Redis on 127.0.0.1:6379, if it answers. In CI (CI=true) it must be there;
/// elsewhere a test without it prints why and skips.
pub fn reference_redis() -> Option<SocketAddr> {
    let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => Some(addr),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but the reference Redis on {addr} is not reachable: {e}");
            }
            eprintln!("skipping: reference Redis on {addr} not reachable ({e})");
            None
        }
    }
}

/// A unique key prefix for one test, so tests sharing the reference Redis never collide.
/// A free port on loopback (the kernel's choice, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn unique_prefix(test: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("cgtest:{test}:{}:{nanos}:", std::process::id())
}

/// The same commands sent to our node and to the reference Redis, replies compared exactly.
pub struct Differential {
    pub ours: Raw,
    pub theirs: Raw,
    /// Prefix for every key this test uses.
    pub prefix: String,
    created: Vec<Vec<u8>>,
}

impl Differential {
    /// Connects to `node` and the reference Redis; None (skip) when Redis is absent outside CI.
    pub fn new(node: &TestNode, test: &str) -> Option<Differential> {
        let redis = reference_redis()?;
        Some(Differential {
            ours: node.raw(),
            theirs: Raw::connect(redis),
            prefix: unique_prefix(test),
            created: Vec::new(),
        })
    }

    /// Prefixed key name.
    pub fn key(&mut self, name: &str) -> Vec<u8> {
        let k = format!("{}{}", self.prefix, name).into_bytes();
        if !self.created.contains(&k) {
            self.created.push(k.clone());
        }
        k
    }

    /// Sends `args` to both; returns both replies.
    pub fn both(&mut self, args: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        (self.ours.cmd(args), self.theirs.cmd(args))
    }

    /// Sends `args` to both and asserts the replies are byte-identical.
    #[track_caller]
    pub fn check(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let (ours, theirs) = self.both(args);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "replies differ for {:?}",
            args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>()
        );
        ours
    }

    /// Like [`Differential::check`] with text arguments, where `$name` stands for the prefixed key.
    #[track_caller]
    pub fn check_str(&mut self, args: &[&str]) -> String {
        let owned: Vec<Vec<u8>> = args
            .iter()
            .map(|a| if let Some(k) = a.strip_prefix('$') { self.key(k) } else { a.as_bytes().to_vec() })
            .collect();
        let refs: Vec<&[u8]> = owned.iter().map(|a| a.as_slice()).collect();
        String::from_utf8_lossy(&self.check(&refs)).into_owned()
    }
}

impl Drop for Differential {
    fn drop(&mut self) {
        // Clean up what this test created on the shared reference Redis.
        for k in std::mem::take(&mut self.created) {
            let _ = self.theirs.cmd(&[b"DEL", &k]);
        }
    }
}
