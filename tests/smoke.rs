//! The node answers over real TCP, to the `redis` crate and to raw RESP.

mod common;

use common::TestNode;

#[tokio::test]
async fn redis_crate_can_set_and_get() {
    let node = TestNode::start();
    let mut c = node.client().await;
    let _: () = redis::cmd("SET").arg("greeting").arg("hello").query_async(&mut c).await.unwrap();
    let v: String = redis::cmd("GET").arg("greeting").query_async(&mut c).await.unwrap();
    assert_eq!(v, "hello");
}

#[test]
fn differential_set_get_matches_redis() {
    let node = TestNode::start();
    let Some(mut d) = common::Differential::new(&node, "smoke") else { return };
    d.check_str(&["SET", "$k", "v"]);
    d.check_str(&["GET", "$k"]);
    d.check_str(&["SET", "$k", "v", "NX", "GET"]);
    d.check_str(&["SET", "$k", "v", "EX", "0"]);
    d.check_str(&["SET", "$k", "v", "EX", "10", "PX", "10"]);
    d.check_str(&["NOSUCHCOMMAND", "a", "b"]);
    d.check_str(&["GET"]);
}
