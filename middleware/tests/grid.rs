//! The grid client under the session layer: two app instances sharing a grid through near
//! caches, an unreachable grid (503, or an empty session flagged unavailable), and the
//! stores used through `tower_sessions_core::SessionStore`.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use cachegrid_middleware::grid::{Grid, GridConfig, NearCacheConfig};
use cachegrid_middleware::session::{OnUnavailable, RemoteStore};
use common::{config, routes, send, Backend, Env};

async fn near_caches_never_serve_a_stale_session(b: Backend) {
    let Some(env) = Env::start(b, "near").await else { return };
    let a = env.app_with(config(), Some(NearCacheConfig::default()));
    let b2 = env.app_with(config(), Some(NearCacheConfig::default()));
    let c = send(&a, "POST", "/set/n/0", None).await.cookie();
    for i in 1..=30u64 {
        // Both instances read (and so cache) the session, then one writes through the other.
        assert_eq!(send(&a, "GET", "/get/n", Some(&c)).await.body, (i - 1).to_string());
        assert_eq!(send(&b2, "GET", "/get/n", Some(&c)).await.body, (i - 1).to_string());
        let (writer, reader) = if i % 2 == 0 { (&a, &b2) } else { (&b2, &a) };
        send(writer, "POST", &format!("/set/n/{i}"), Some(&c)).await;
        assert_eq!(
            send(reader, "GET", "/get/n", Some(&c)).await.body,
            i.to_string(),
            "stale read at step {i}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_against_a_cachegrid_node() {
    near_caches_never_serve_a_stale_session(Backend::Node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_against_redis() {
    near_caches_never_serve_a_stale_session(Backend::Redis).await
}

/// Over a Redis Cluster, the near cache reads through a tracking connection to each primary:
/// sessions spread over every node, each write seen by the very next read through the other
/// instance, and every node that served a cached read has a tracking client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_against_a_redis_cluster() {
    let Some(env) = Env::start(Backend::Cluster, "near_cluster").await else { return };
    let near = NearCacheConfig::default();
    let (a, b2) = (env.app_with(config(), Some(near.clone())), env.app_with(config(), Some(near)));
    let mut cookies = Vec::new();
    for _ in 0..12 {
        cookies.push(send(&a, "POST", "/set/n/0", None).await.cookie());
    }
    for i in 1..=5u64 {
        for c in &cookies {
            assert_eq!(send(&a, "GET", "/get/n", Some(c)).await.body, (i - 1).to_string());
            assert_eq!(send(&b2, "GET", "/get/n", Some(c)).await.body, (i - 1).to_string());
        }
        let (writer, reader) = if i % 2 == 0 { (&a, &b2) } else { (&b2, &a) };
        for c in &cookies {
            send(writer, "POST", &format!("/set/n/{i}"), Some(c)).await;
        }
        for c in &cookies {
            assert_eq!(
                send(reader, "GET", "/get/n", Some(c)).await.body,
                i.to_string(),
                "stale read at step {i}"
            );
        }
    }
    // Every primary owns some of the 12 sessions (all on one node: odds of 3 in 3^12), and
    // has tracking clients: ours, one per app instance.
    let urls = &env.cluster.as_ref().unwrap().urls;
    for url in urls {
        let mut conn =
            redis::Client::open(url.as_str()).unwrap().get_multiplexed_tokio_connection().await.unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
        let tracking =
            list.lines().filter(|l| l.split(' ').any(|f| f.starts_with("flags=") && f.contains('t'))).count();
        assert!(tracking >= 2, "no tracking connections on {url}: {list}");
    }
    env.cleanup().await;
}

/// A port with nothing listening.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("redis://127.0.0.1:{port}/")
}

fn dead_store() -> RemoteStore {
    let mut gc = GridConfig::single(dead_url());
    gc.connect_timeout = Duration::from_millis(300);
    RemoteStore::with_grid(Grid::remote(gc).unwrap(), "session:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_grid_answers_503_by_default() {
    let app = routes(dead_store(), config());
    // Loading an existing session fails: 503, handler not run.
    let cookie = format!("id={}", "1".repeat(32));
    let r = send(&app, "GET", "/get/a", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // A new session cannot be saved: 503 too, never a panic or 500.
    let r = send(&app, "POST", "/set/a/1", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_grid_can_continue_with_an_empty_session() {
    let app = routes(dead_store(), config().with_on_unavailable(OnUnavailable::ContinueEmpty));
    let cookie = format!("id={}", "1".repeat(32));
    let r = send(&app, "GET", "/id", Some(&cookie)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "false/false"));
    let r = send(&app, "POST", "/set/a/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_that_comes_back_is_used_again() {
    let Some(env) = Env::start(Backend::Node, "back").await else { return };
    let url = env.url.clone().unwrap();
    let mut gc = GridConfig::single(url);
    gc.min_backoff = Duration::from_millis(10);
    gc.max_backoff = Duration::from_millis(50);
    let app = routes(RemoteStore::with_grid(Grid::remote(gc).unwrap(), &env.prefix), config());
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    // Every connection of the node is killed: the client reconnects on a later request.
    let mut admin = env.raw().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if send(&app, "GET", "/get/a", Some(&c)).await.body == "1" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "never reconnected");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_implement_tower_sessions_core() {
    use tower_sessions_core::session::{Id, Record};
    use tower_sessions_core::SessionStore;
    let Some(env) = Env::start(Backend::Node, "tower").await else { return };
    let store = RemoteStore::new(GridConfig::single(env.url.clone().unwrap())).unwrap();
    let mut data = std::collections::HashMap::new();
    data.insert("user".to_string(), serde_json::json!({"name": "ada", "roles": ["admin"]}));
    let expiry_date = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    let mut record = Record { id: Id::default(), data, expiry_date };
    store.create(&mut record).await.unwrap();
    let loaded = store.load(&record.id).await.unwrap().expect("saved record");
    assert_eq!(loaded.data, record.data);
    assert_eq!(loaded.expiry_date.unix_timestamp(), record.expiry_date.unix_timestamp());
    store.delete(&record.id).await.unwrap();
    assert!(store.load(&record.id).await.unwrap().is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_serves_a_second_instance_with_a_near_cache() {
    use cachegrid_middleware::grid::EmbeddedGrid;
    use cachegrid_middleware::session::EmbeddedStore;
    // Instance A embeds the node; instance B reaches it over the network with a near cache.
    let grid = EmbeddedGrid::start_default().await.unwrap();
    let Grid::Embedded(node) = &grid else { unreachable!() };
    let url = format!("redis://{}/", node.addr());
    let a = routes(EmbeddedStore::with_grid(grid.clone(), "session:"), config());
    let gc = GridConfig::single(url).with_near_cache(NearCacheConfig::default());
    let b = routes(RemoteStore::with_grid(Grid::remote(gc).unwrap(), "session:"), config());
    let c = send(&a, "POST", "/set/n/0", None).await.cookie();
    for i in 1..=20u64 {
        assert_eq!(send(&b, "GET", "/get/n", Some(&c)).await.body, (i - 1).to_string());
        send(&a, "POST", &format!("/set/n/{i}"), Some(&c)).await;
        assert_eq!(send(&b, "GET", "/get/n", Some(&c)).await.body, i.to_string(), "stale read at step {i}");
    }
    node.shutdown().await;
}
