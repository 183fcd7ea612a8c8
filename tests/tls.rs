//! TLS as operators run it: real `cachegrid node` processes with certificates made at test time
//! (a CA, node and client certificates from `rcgen`), spoken to by `redis-cli --tls` and the
//! `redis` crate over `rediss://`; a grid whose bus is mutual TLS, and a node whose certificate
//! another CA signed that cannot get in.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, NodeProcess};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA that signs certificates for nodes and clients.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `localhost` and 127.0.0.1, good for serving and for connecting (as the
    /// cluster bus needs), and its key, both PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Certificate files in a temporary directory: the CA, a node's and a client's.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap(), ca: Ca::new("cachegrid test CA") };
        pki.write("ca.crt", &pki.ca.cert.pem());
        let (cert, key) = pki.ca.issue("node");
        pki.write("node.crt", &cert);
        pki.write("node.key", &key);
        let (cert, key) = pki.ca.issue("client");
        pki.write("client.crt", &cert);
        pki.write("client.key", &key);
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    /// Flags giving a node this PKI's node certificate.
    fn node_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, file) in [
            ("--tls-cert-file", "node.crt"),
            ("--tls-key-file", "node.key"),
            ("--tls-ca-cert-file", "ca.crt"),
        ] {
            flags.extend([flag.to_string(), self.path(file)]);
        }
        flags
    }

    /// What the `redis` crate needs: the CA, and the client certificate unless `anonymous`.
    fn client_certs(&self, anonymous: bool) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: (!anonymous).then(|| redis::ClientTlsConfig {
                client_cert: self.read("client.crt"),
                client_key: self.read("client.key"),
            }),
            root_cert: Some(self.read("ca.crt")),
        }
    }

    /// A `rediss://` client for `addr`.
    fn client(&self, addr: SocketAddr, anonymous: bool) -> redis::Client {
        redis::Client::build_with_tls(format!("rediss://{addr}/"), self.client_certs(anonymous)).unwrap()
    }

    /// `redis-cli --tls` against `addr` with the client certificate.
    fn redis_cli(&self, addr: SocketAddr, args: &[&str]) -> String {
        let port = addr.port().to_string();
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "--tls", "--cacert", &self.path("ca.crt")])
            .args(["--cert", &self.path("client.crt"), "--key", &self.path("client.key")])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A node serving TLS only, with `more` flags.
fn tls_node(pki: &Pki, more: &[&str]) -> NodeProcess {
    let mut args: Vec<String> = vec!["--tls-port".into(), "0".into(), "--tls-only".into(), "yes".into()];
    args.extend(pki.node_flags());
    args.extend(more.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::spawn(&args)
}

fn ping(client: &redis::Client) -> redis::RedisResult<String> {
    let mut c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    redis::cmd("PING").query(&mut c)
}

#[test]
fn redis_cli_speaks_tls_to_the_tls_port() {
    let pki = Pki::new();
    let node = tls_node(&pki, &[]);
    assert_eq!(pki.redis_cli(node.addr, &["PING"]), "PONG");
    assert_eq!(pki.redis_cli(node.addr, &["SET", "greeting", "hello over tls"]), "OK");
    assert_eq!(pki.redis_cli(node.addr, &["GET", "greeting"]), "hello over tls");
}

#[test]
fn a_plaintext_client_on_the_tls_port_is_closed_and_the_node_keeps_serving() {
    let pki = Pki::new();
    let node = tls_node(&pki, &[]);
    let mut plain = std::net::TcpStream::connect(node.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut plain, b"*1\r\n$4\r\nPING\r\n").unwrap();
    // At most a TLS alert comes back, never a reply, and then the end of the stream.
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");
    assert!(got.len() < 16, "only an alert, then closed: {got:?}");
    assert_eq!(ping(&pki.client(node.addr, false)).unwrap(), "PONG");
}

#[test]
fn the_redis_crate_works_over_rediss() {
    let pki = Pki::new();
    let node = tls_node(&pki, &[]);
    let mut c = pki.client(node.addr, false).get_connection().unwrap();
    let _: () = redis::cmd("SET").arg("k").arg(b"\x00binary\xff").query(&mut c).unwrap();
    let v: Vec<u8> = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(v, b"\x00binary\xff");
    // A large value crosses many TLS records both ways.
    let big = vec![b'x'; 3 << 20];
    let _: () = redis::cmd("SET").arg("big").arg(&big).query(&mut c).unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query(&mut c).unwrap();
    assert_eq!(back.len(), big.len());
}

#[test]
fn a_client_without_a_certificate_is_refused_when_tls_auth_clients_is_yes() {
    let pki = Pki::new();
    let node = tls_node(&pki, &["--tls-auth-clients", "yes"]);
    assert!(ping(&pki.client(node.addr, true)).is_err());
    assert_eq!(ping(&pki.client(node.addr, false)).unwrap(), "PONG");
}

#[test]
fn a_client_without_a_certificate_is_let_in_when_tls_auth_clients_is_optional_or_no() {
    let pki = Pki::new();
    for mode in ["optional", "no"] {
        let node = tls_node(&pki, &["--tls-auth-clients", mode]);
        assert_eq!(ping(&pki.client(node.addr, true)).unwrap(), "PONG", "tls-auth-clients {mode}");
        assert_eq!(ping(&pki.client(node.addr, false)).unwrap(), "PONG", "tls-auth-clients {mode}");
    }
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_even_when_optional() {
    let pki = Pki::new();
    let node = tls_node(&pki, &["--tls-auth-clients", "optional"]);
    let (cert, key) = Ca::new("someone else's CA").issue("intruder");
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig { client_cert: cert.into(), client_key: key.into() }),
        root_cert: Some(pki.read("ca.crt")),
    };
    let client = redis::Client::build_with_tls(format!("rediss://{}/", node.addr), certs).unwrap();
    assert!(ping(&client).is_err());
}

#[test]
fn plain_and_tls_ports_serve_the_same_data_and_cluster_replies_name_the_port_of_the_asking_client() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> =
        ["--tls-port", "0", "--cluster-enabled", "true", "--dir"].map(String::from).into();
    args.push(dir.path().to_str().unwrap().into());
    args.extend([
        "--cluster-port".into(),
        free_port().to_string(),
        "--admin-port".into(),
        free_port().to_string(),
    ]);
    args.extend(pki.node_flags());
    let node = NodeProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut plain = node.raw();
    let tls_port: u16 =
        plain.cmd_str(&["CONFIG", "GET", "tls-port"]).lines().nth(4).unwrap().parse().unwrap();
    assert_ne!(tls_port, node.addr.port());
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut tls = pki.client(tls_addr, false).get_connection().unwrap();

    assert_eq!(plain.cmd_str(&["SET", "shared", "one"]), "+OK\r\n");
    let v: String = redis::cmd("GET").arg("shared").query(&mut tls).unwrap();
    assert_eq!(v, "one");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !plain.cmd_str(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
        assert!(Instant::now() < deadline, "the grid of one never became ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    let plain_slots = plain.cmd_str(&["CLUSTER", "SLOTS"]);
    assert!(plain_slots.contains(&format!(":{}\r\n", node.addr.port())), "{plain_slots}");
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut tls).unwrap();
    let slots = format!("{slots:?}");
    assert!(slots.contains(&format!("int({tls_port})")), "{slots}");
    assert!(!slots.contains(&format!("int({})", node.addr.port())), "{slots}");
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut tls).unwrap();
    assert!(nodes.contains(&format!("127.0.0.1:{tls_port}@")), "{nodes}");
    // SHARDS names both, as Redis 7 does.
    let shards = plain.cmd_str(&["CLUSTER", "SHARDS"]);
    assert!(shards.contains("tls-port") && shards.contains(&format!(":{tls_port}\r\n")), "{shards}");
    assert!(shards.contains(&format!(":{}\r\n", node.addr.port())), "{shards}");
}

#[test]
fn a_missing_or_wrong_certificate_or_key_stops_the_node_with_an_error_naming_the_option() {
    let pki = Pki::new();
    let (other_cert, _) = pki.ca.issue("other");
    pki.write("other.crt", &other_cert);
    let nowhere = pki.path("nowhere.pem");
    // (flag given, file given, option the error names, what it says)
    let cases = [
        ("--tls-key-file", nowhere.clone(), "tls-key-file", "cannot read"),
        ("--tls-cert-file", nowhere.clone(), "tls-cert-file", "cannot read"),
        ("--tls-ca-cert-file", nowhere, "tls-ca-cert-file", "cannot read"),
        ("--tls-key-file", pki.path("node.crt"), "tls-key-file", "no unencrypted PEM private key"),
        ("--tls-cert-file", pki.path("other.crt"), "tls-key-file", "does not match"),
    ];
    for (flag, file, option, why) in cases {
        let mut args: Vec<String> = ["node", "--port", "0", "--tls-port", "0"].map(String::from).into();
        let mut flags = pki.node_flags();
        let at = flags.iter().position(|f| f == flag).unwrap();
        flags[at + 1] = file;
        args.extend(flags);
        let out = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
            .args(&args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{option}: the node must exit");
        assert!(err.contains(option) && err.contains(why), "{option} / {why}: {err}");
        assert!(!err.contains("PRIVATE KEY"), "no key material in errors: {err}");
    }
    // Options that need one another are checked before anything is read.
    let out = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
        .args(["node", "--port", "0", "--tls-port", "0", "--tls-cert-file", &pki.path("node.crt")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls-key-file"));
}

#[test]
fn the_private_key_never_reaches_the_log_even_at_trace_level() {
    let pki = Pki::new();
    let log_path = pki.dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut args = vec!["node".to_string(), "--port".into(), "0".into(), "--tls-port".into(), "0".into()];
    args.extend(["--log-format".into(), "text".into(), "--tls-auth-clients".into(), "yes".into()]);
    args.extend(pki.node_flags());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachegrid"))
        .args(&args)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = wait_for_log(&log_path, "tls_addr=");
    // A good client, one without a certificate, and a plaintext one.
    assert_eq!(ping(&pki.client(addr, false)).unwrap(), "PONG");
    assert!(ping(&pki.client(addr, true)).is_err());
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut plain, b"PING\r\n").unwrap();
    let _ = plain.read_to_end(&mut Vec::new());
    let _ = ping(&pki.client(addr, false)).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("ready"), "the log was written: {text}");
    let key = String::from_utf8(pki.read("node.key")).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "a line of the private key reached the log");
    }
    assert!(!text.contains("PRIVATE KEY"), "the private key reached the log");
}

/// Waits until the node's log has `field` (`addr=`, `tls_addr=`) and returns its address.
fn wait_for_log(path: &Path, field: &str) -> SocketAddr {
    for _ in 0..400 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(pos) = text.find(field) {
            let rest = &text[pos + field.len()..];
            if let Some(a) = rest.split_whitespace().next().and_then(|a| a.parse().ok()) {
                return a;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("node did not start");
}

/// A grid member serving TLS only, with mutual TLS on its bus.
struct Member {
    process: NodeProcess,
    bus: u16,
    _dir: tempfile::TempDir,
}

impl Member {
    fn start(pki_flags: &[String], seed: Option<&Member>) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let bus = free_port();
        let mut args: Vec<String> = ["--tls-port", "0", "--tls-only", "yes", "--tls-cluster", "yes", "--dir"]
            .map(String::from)
            .into();
        args.push(dir.path().to_str().unwrap().into());
        args.extend([
            "--cluster-port".into(),
            bus.to_string(),
            "--admin-port".into(),
            free_port().to_string(),
        ]);
        args.extend(["--cluster-node-timeout".into(), "3000".into()]);
        match seed {
            Some(s) => args.extend(["--join".into(), format!("{}@{}", s.process.addr, s.bus)]),
            None => args.extend(["--cluster-enabled".into(), "true".into()]),
        }
        args.extend(pki_flags.iter().cloned());
        let process = NodeProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Member { process, bus, _dir: dir }
    }

    fn cluster(&self, pki: &Pki, sub: &str) -> String {
        let mut c = pki.client(self.process.addr, false).get_connection().unwrap();
        redis::cmd("CLUSTER").arg(sub).query(&mut c).unwrap()
    }
}

fn wait_for_grid(pki: &Pki, members: &[&Member], known: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = format!("cluster_known_nodes:{known}\r\n");
    loop {
        let infos: Vec<String> = members.iter().map(|m| m.cluster(pki, "INFO")).collect();
        if infos.iter().all(|i| i.contains(&want) && i.contains("cluster_state:ok")) {
            return;
        }
        assert!(Instant::now() < deadline, "no grid of {known}: {infos:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_grid_with_mutual_tls_on_its_bus_forms_serves_cluster_clients_and_keeps_out_another_cas_node(
) {
    let pki = Pki::new();
    let flags = pki.node_flags();
    let a = Member::start(&flags, None);
    wait_for_grid(&pki, &[&a], 1);
    let b = Member::start(&flags, Some(&a));
    let c = Member::start(&flags, Some(&b));
    wait_for_grid(&pki, &[&a, &b, &c], 3);

    // The redis crate's cluster client follows CLUSTER SLOTS and MOVED over TLS.
    let client = redis::cluster::ClusterClientBuilder::new(vec![format!("rediss://{}/", a.process.addr)])
        .certs(pki.client_certs(false))
        .retries(20)
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // A loaded machine may miss the first attempt's timeouts: a few tries, as an app would.
    let mut conn = None;
    for attempt in 0..5 {
        match client.get_async_connection().await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) if attempt < 4 => eprintln!("cluster client not connected yet: {e}"),
            Err(e) => panic!("the cluster client cannot connect: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut conn = conn.expect("connected");
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query_async(&mut conn).await.unwrap();
    }
    for i in 0..200 {
        let v: i64 = redis::cmd("GET").arg(format!("k{i}")).query_async(&mut conn).await.unwrap();
        assert_eq!(v, i);
    }
    // Every member holds some of them: the keys really were spread over the grid (once the
    // slots the joins gave the newcomers have moved: they may still be moving when the grid
    // first agrees on three members).
    for m in [&a, &b, &c] {
        let mut one = pki.client(m.process.addr, false).get_connection().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = redis::cmd("DBSIZE").query(&mut one).unwrap();
            if n > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a member holds none of the keys");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // redis-cli -c follows MOVED to the TLS ports.
    for key in ["alpha", "bravo", "charlie", "delta"] {
        assert_eq!(pki.redis_cli(c.process.addr, &["-c", "SET", key, "v"]), "OK");
        assert_eq!(pki.redis_cli(a.process.addr, &["-c", "GET", key]), "v");
    }

    // A node that trusts the grid's CA but whose own certificate another CA signed.
    let intruder_pki = Pki::new();
    let mut intruder_flags = intruder_pki.node_flags();
    let ca_at = intruder_flags.iter().position(|f| f == "--tls-ca-cert-file").unwrap();
    intruder_flags[ca_at + 1] = pki.path("ca.crt");
    let intruder = Member::start(&intruder_flags, Some(&a));
    std::thread::sleep(Duration::from_secs(8));
    for m in [&a, &b, &c] {
        let info = m.cluster(&pki, "INFO");
        assert!(info.contains("cluster_known_nodes:3\r\n") && info.contains("cluster_state:ok"), "{info}");
    }
    // Its own port trusts the grid's CA for clients, and shows the intruder's certificate.
    let certs =
        redis::TlsCertificates { root_cert: Some(intruder_pki.read("ca.crt")), ..pki.client_certs(false) };
    let own = redis::Client::build_with_tls(format!("rediss://{}/", intruder.process.addr), certs).unwrap();
    let mut own = own.get_connection().unwrap();
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut own).unwrap();
    assert!(!info.contains("cluster_known_nodes:4"), "{info}");
    // The grid still serves.
    for i in 0..200 {
        let v: i64 = redis::cmd("GET").arg(format!("k{i}")).query_async(&mut conn).await.unwrap();
        assert_eq!(v, i);
    }
}
