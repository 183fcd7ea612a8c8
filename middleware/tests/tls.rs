//! The grid client over TLS: `rediss://` URLs with a private CA and a client certificate,
//! against an in-process cachegrid node that serves TLS only, as one node and as a grid of one
//! through the cluster client, with the near cache's tracking connections on TLS too.

mod common;

use std::time::Duration;

use cachegrid::tls::TlsAuthClients;
use cachegrid_middleware::grid::{Grid, GridConfig, GridTls, NearCacheConfig};
use cachegrid_middleware::session::RemoteStore;
use common::{config, routes, send, unique};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

/// A CA, a node certificate and a client certificate, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        for name in ["node", "client"] {
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn grid_tls(&self) -> GridTls {
        GridTls::from_files(
            Some(&self.file("ca.crt")),
            Some((&self.file("client.crt"), &self.file("client.key"))),
        )
        .unwrap()
    }

    /// An in-process node serving TLS only and asking for client certificates.
    async fn node(&self, cluster: bool) -> (cachegrid::node::Node, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let node = cachegrid::node::Node::start(cachegrid::config::Config {
            port: 0,
            bind: "127.0.0.1".into(),
            tls_port: Some(0),
            tls_only: true,
            tls_cert_file: Some(self.file("node.crt")),
            tls_key_file: Some(self.file("node.key")),
            tls_ca_cert_file: Some(self.file("ca.crt")),
            tls_auth_clients: TlsAuthClients::Yes,
            cluster_enabled: cluster,
            cluster_port: if cluster { free_port() } else { 0 },
            admin_port: Some(0),
            dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        (node, dir)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_client_reaches_a_tls_only_node_over_rediss_with_a_client_certificate() {
    let pki = Pki::new();
    let (node, _dir) = pki.node(false).await;
    let url = format!("rediss://{}/", node.addr);
    let grid = Grid::remote(GridConfig::single(url.clone()).with_tls(pki.grid_tls())).unwrap();
    grid.query(redis::cmd("SET").arg("tls-key").arg("v")).await.unwrap();
    let v = grid.query(redis::cmd("GET").arg("tls-key")).await.unwrap();
    assert_eq!(v, redis::Value::BulkString(b"v".to_vec()));

    // Without the client certificate the node refuses the connection.
    let anonymous = GridTls { client_cert: None, ..pki.grid_tls() };
    let mut gc = GridConfig::single(url).with_tls(anonymous);
    gc.connect_timeout = Duration::from_secs(2);
    let refused = Grid::remote(gc).unwrap();
    assert!(refused.query(&redis::cmd("PING")).await.is_err());
    node.shutdown().await.unwrap();
}

/// Sessions through the cluster client and the near cache's tracking connections, all on TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_a_near_cache_work_over_a_tls_grid() {
    let pki = Pki::new();
    let (node, _dir) = pki.node(true).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready =
            node.server.cluster.get().is_some_and(|c| c.view().map.slots.iter().all(|o| o.primary.is_some()));
        if ready {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the grid of one never served every slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prefix = unique("tls");
    let seeds = vec![format!("rediss://{}/", node.addr)];
    let app = |near| {
        let gc = GridConfig::cluster(seeds.clone()).with_tls(pki.grid_tls()).with_near_cache(near);
        routes(
            RemoteStore::with_grid(Grid::remote(gc).unwrap(), &prefix),
            config().with_key_prefix(prefix.clone()),
        )
    };
    let (a, b) = (app(NearCacheConfig::default()), app(NearCacheConfig::default()));
    let c = send(&a, "POST", "/set/n/0", None).await.cookie();
    for i in 1..=5u64 {
        assert_eq!(send(&a, "GET", "/get/n", Some(&c)).await.body, (i - 1).to_string());
        assert_eq!(send(&b, "GET", "/get/n", Some(&c)).await.body, (i - 1).to_string());
        send(&b, "POST", &format!("/set/n/{i}"), Some(&c)).await;
        assert_eq!(send(&a, "GET", "/get/n", Some(&c)).await.body, i.to_string(), "stale read at step {i}");
    }
    // The near caches' reads went over tracking connections of their own, on TLS.
    let gc = GridConfig::single(seeds[0].clone()).with_tls(pki.grid_tls());
    let list = Grid::remote(gc).unwrap().query(redis::cmd("CLIENT").arg("LIST")).await.unwrap();
    let list = match list {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } | redis::Value::SimpleString(text) => text,
        other => panic!("CLIENT LIST: {other:?}"),
    };
    // Tracking connections are the RESP3 ones (the cluster client speaks RESP2).
    let tracking = list.lines().filter(|l| l.split(' ').any(|f| f == "resp=3"));
    assert!(tracking.count() >= 2, "no tracking connections: {list}");
    node.shutdown().await.unwrap();
}
