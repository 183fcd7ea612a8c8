//! The session layer's specification, through real requests to an axum app, run against each
//! backend: an embedded node, a remote cachegrid node, and the Redis on 127.0.0.1:6379.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use cachegrid_middleware::session::{Key, SessionConfig};
use common::{config, send, Backend, Env};

async fn api_round_trip(b: Backend) {
    let Some(env) = Env::start(b, "api").await else { return };
    let app = env.app(config());
    // Reading an absent session creates nothing.
    let r = send(&app, "GET", "/get/a", None).await;
    assert_eq!((r.status, r.body.as_str(), r.set_cookie.is_none()), (StatusCode::OK, "none", true));
    assert_eq!(env.keys().await, 0);
    // The first insert creates it.
    let r = send(&app, "POST", "/set/a/7", None).await;
    let c = r.cookie();
    assert_eq!(env.keys().await, 1);
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "7");
    assert_eq!(send(&app, "GET", "/id", Some(&c)).await.body, "true/true");
    send(&app, "POST", "/set/b/8", Some(&c)).await;
    assert_eq!(send(&app, "POST", "/remove/a", Some(&c)).await.body, "Some(7)");
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "none");
    assert_eq!(send(&app, "GET", "/get/b", Some(&c)).await.body, "8");
    send(&app, "POST", "/clear", Some(&c)).await;
    assert_eq!(send(&app, "GET", "/get/b", Some(&c)).await.body, "none");
    send(&app, "POST", "/set/b/9", Some(&c)).await;
    // flush destroys the data and removes the cookie.
    let r = send(&app, "POST", "/flush", Some(&c)).await;
    assert!(r.set_cookie.as_deref().unwrap().contains("Max-Age=0"), "{r:?}");
    assert_eq!(env.keys().await, 0);
    assert_eq!(send(&app, "GET", "/get/b", Some(&c)).await.body, "none");
    // A 5xx saves nothing.
    let r = send(&app, "POST", "/fail", None).await;
    assert_eq!((r.status, r.set_cookie), (StatusCode::INTERNAL_SERVER_ERROR, None));
    assert_eq!(env.keys().await, 0);
    // A self-describing type is refused at insert with a clear error.
    let r = send(&app, "POST", "/json", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("cannot be stored with bincode"), "{}", r.body);
    env.cleanup().await;
}

async fn concurrent_requests_keep_every_key(b: Backend) {
    let Some(env) = Env::start(b, "conc").await else { return };
    let app = env.app(config());
    let c = send(&app, "POST", "/set/start/1", None).await.cookie();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (app, c) = (app.clone(), c.clone());
            tokio::spawn(async move { send(&app, "POST", &format!("/incr/k{i}"), Some(&c)).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    for i in 0..100 {
        assert_eq!(send(&app, "GET", &format!("/get/k{i}"), Some(&c)).await.body, "1", "key k{i} lost");
    }
    env.cleanup().await;
}

async fn idle_and_absolute_expiry(b: Backend) {
    let Some(env) = Env::start(b, "exp").await else { return };
    // Idle: 400 ms, refreshed by any request at most every 50 ms.
    let idle = env.app(
        config()
            .with_idle_timeout(Some(Duration::from_millis(400)))
            .with_absolute_timeout(None)
            .with_refresh_interval(Duration::from_millis(50)),
    );
    let c = send(&idle, "POST", "/set/a/1", None).await.cookie();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(send(&idle, "GET", "/get/a", Some(&c)).await.body, "1", "sliding expiry not refreshed");
    }
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(send(&idle, "GET", "/get/a", Some(&c)).await.body, "none");
    // Absolute: 500 ms from creation however active the session is.
    let abs = env.app(
        config()
            .with_idle_timeout(Some(Duration::from_secs(60)))
            .with_absolute_timeout(Some(Duration::from_millis(500)))
            .with_refresh_interval(Duration::ZERO),
    );
    let c = send(&abs, "POST", "/set/a/1", None).await.cookie();
    let mut last = String::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = send(&abs, "POST", "/incr/b", Some(&c)).await.body;
    }
    assert_eq!(
        send(&abs, "GET", "/get/a", Some(&c)).await.body,
        "none",
        "absolute lifetime ignored ({last})"
    );
    env.cleanup().await;
}

/// `Session::set_expiry`: stored with the session, followed by the grid TTL and the cookie,
/// capped by the layer's absolute lifetime.
async fn per_session_expiry(b: Backend) {
    let Some(env) = Env::start(b, "setexp").await else { return };
    let app = env.app(config().with_refresh_interval(Duration::from_millis(50)));
    let max_age = |r: &common::Res| {
        let sc = r.set_cookie.clone().expect("a Set-Cookie");
        sc.split("; ").find_map(|a| a.strip_prefix("Max-Age=").map(str::to_owned))
    };

    // OnInactivity: a sliding expiry of its own, instead of the layer's 30 minutes.
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    assert_eq!(send(&app, "GET", "/expiry", Some(&c)).await.body, "default");
    let r = send(&app, "POST", "/expiry/idle/1200", Some(&c)).await;
    assert_eq!(max_age(&r).as_deref(), Some("1"), "{r:?}");
    assert_eq!(send(&app, "GET", "/expiry", Some(&c)).await.body, "idle 1200", "not kept for later requests");
    let ttl = env.pttl(&c).await;
    assert!((0..=1200).contains(&ttl), "grid TTL {ttl} does not follow the session's expiry");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "1", "inactivity expiry not refreshed");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "none");

    // AtDateTime: a fixed end however active the session is; the cookie says when.
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    let r = send(&app, "POST", "/expiry/at/1500", Some(&c)).await;
    let sc = r.set_cookie.clone().unwrap();
    assert!(sc.contains("Expires="), "{sc}");
    assert!(matches!(max_age(&r).as_deref(), Some("1" | "2")), "{sc}");
    assert!((0..=1500).contains(&env.pttl(&c).await));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(send(&app, "POST", "/incr/n", Some(&c)).await.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "none", "AtDateTime extended by activity");

    // OnSessionEnd: a browser-session cookie; the grid keeps the layer's idle timeout.
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    let r = send(&app, "POST", "/expiry/end/0", Some(&c)).await;
    let sc = r.set_cookie.clone().unwrap();
    assert!(!sc.contains("Max-Age") && !sc.contains("Expires"), "{sc}");
    assert!(env.pttl(&c).await > 1_700_000);
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "1");
    // Back to the layer's expiry.
    let r = send(&app, "POST", "/expiry/none/0", Some(&c)).await;
    assert_eq!(max_age(&r).as_deref(), Some("1800"));
    assert_eq!(send(&app, "GET", "/expiry", Some(&c)).await.body, "default");

    // The layer's absolute lifetime caps a longer expiry of the session's own.
    let capped = env.app(config().with_absolute_timeout(Some(Duration::from_millis(600))));
    let c = send(&capped, "POST", "/set/a/1", None).await.cookie();
    send(&capped, "POST", "/expiry/idle/60000", Some(&c)).await;
    assert!(env.pttl(&c).await <= 600);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(send(&capped, "GET", "/get/a", Some(&c)).await.body, "none");
    env.cleanup().await;
}

/// The idle expiry moves at most once per refresh interval: a write in between changes its
/// field only (no Set-Cookie, the grid TTL left where it was); one after it moves both.
async fn writes_between_refreshes_leave_the_expiry(b: Backend) {
    let Some(env) = Env::start(b, "refresh").await else { return };
    let app = env.app(config().with_refresh_interval(Duration::from_millis(800)));
    let c = send(&app, "POST", "/set/a/1", None).await.cookie();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = send(&app, "POST", "/set/a/2", Some(&c)).await;
    assert_eq!(r.set_cookie, None, "cookie re-sent within the refresh interval");
    let ttl = env.pttl(&c).await;
    assert!(ttl <= 1_800_000 - 250, "grid TTL moved within the refresh interval: {ttl}");
    assert_eq!(send(&app, "GET", "/get/a", Some(&c)).await.body, "2");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = send(&app, "POST", "/set/a/3", Some(&c)).await;
    assert!(r.set_cookie.as_deref().is_some_and(|s| s.contains("Max-Age=1800")), "{r:?}");
    assert!(env.pttl(&c).await > 1_800_000 - 200, "grid TTL not refreshed after the interval");
    env.cleanup().await;
}

async fn id_rotation(b: Backend) {
    let Some(env) = Env::start(b, "cycle").await else { return };
    let app = env.app(config());
    let old = send(&app, "POST", "/set/user/42", None).await.cookie();
    let new = send(&app, "POST", "/cycle", Some(&old)).await.cookie();
    assert_ne!(old, new);
    assert_eq!(send(&app, "GET", "/get/user", Some(&new)).await.body, "42");
    assert_eq!(send(&app, "GET", "/get/user", Some(&old)).await.body, "none", "the old id still works");
    assert_eq!(env.keys().await, 1);
    env.cleanup().await;
}

async fn cookies_flags_malformed_and_forged(b: Backend) {
    let Some(env) = Env::start(b, "cookies").await else { return };
    let app = env.app(config());
    let r = send(&app, "POST", "/set/a/1", None).await;
    let sc = r.set_cookie.clone().unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
        assert!(sc.contains(flag), "{flag} missing in {sc}");
    }
    let id = r.cookie()["id=".len()..].to_string();
    assert_eq!(id.len(), 32, "128-bit id");
    for bad in [
        "id=".to_string(),
        "id=garbage".to_string(),
        format!("id={}", "0".repeat(32)),
        format!("id={}", id.to_uppercase()),
        format!("id={id}x"),
        "id=%ff%fe; id=\"quoted\"".to_string(),
        "=; ;;".to_string(),
    ] {
        let r = send(&app, "GET", "/get/a", Some(&bad)).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"), "cookie {bad:?}");
    }
    // Signed ids: a forged or unsigned id starts fresh; a key rotation keeps old cookies valid.
    let (k1, k2) = (Key::generate(), Key::generate());
    let signed = env.app(config().with_signing_keys(vec![k1.clone()]));
    let c = send(&signed, "POST", "/set/a/5", None).await.cookie();
    assert_eq!(send(&signed, "GET", "/get/a", Some(&c)).await.body, "5");
    let value = &c["id=".len()..];
    let forged = format!("id={}{}", &value[..value.len() - 32], "0".repeat(32));
    assert_eq!(send(&signed, "GET", "/get/a", Some(&forged)).await.body, "none");
    assert_eq!(
        send(&signed, "GET", "/get/a", Some(&format!("id={id}"))).await.body,
        "none",
        "unsigned id accepted"
    );
    let rotated = env.app(config().with_signing_keys(vec![k2.clone(), k1.clone()]));
    assert_eq!(send(&rotated, "GET", "/get/a", Some(&c)).await.body, "5", "old key rejected after rotation");
    let retired = env.app(config().with_signing_keys(vec![k2]));
    assert_eq!(send(&retired, "GET", "/get/a", Some(&c)).await.body, "none");
    env.cleanup().await;
}

macro_rules! suite {
    ($($m:ident => $b:expr),*) => {$(
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn api_round_trip() { super::api_round_trip($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_requests_keep_every_key() { super::concurrent_requests_keep_every_key($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn idle_and_absolute_expiry() { super::idle_and_absolute_expiry($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_session_expiry() { super::per_session_expiry($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn writes_between_refreshes_leave_the_expiry() { super::writes_between_refreshes_leave_the_expiry($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn id_rotation() { super::id_rotation($b).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cookies_flags_malformed_and_forged() { super::cookies_flags_malformed_and_forged($b).await }
        }
    )*};
}

suite!(embedded => Backend::Embedded, node => Backend::Node, redis => Backend::Redis, cluster => Backend::Cluster);

#[allow(unused)]
fn _uses(_: SessionConfig) {}
