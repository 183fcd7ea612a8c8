//! Connection commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::args::{is, parse_i64};
use super::{cmd, transactions, CommandSpec, Ctx, Keys};
use crate::protocol::{Reply, RespVersion};

/// The Redis version we answer as: clients pick features by it, and we implement 7.2's.
pub const REDIS_VERSION: &str = "7.2.4";

/// Connection commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("ping", -1, &["fast"], Keys::None, "connection", "1.0.0", "Returns the server's liveliness response.", ping),
    cmd("echo", 2, &["fast"], Keys::None, "connection", "1.0.0", "Returns the given string.", echo),
    cmd("hello", -1, &["noscript", "loading", "stale", "fast", "no-auth", "allow-busy"], Keys::None, "connection", "6.0.0", "Handshakes with the Redis server.", hello),
    cmd("auth", -2, &["noscript", "loading", "stale", "fast", "no-auth", "allow-busy"], Keys::None, "connection", "1.0.0", "Authenticates the connection.", auth),
    cmd("select", 2, &["loading", "stale", "fast"], Keys::None, "connection", "1.0.0", "Changes the selected database.", select),
    cmd("quit", -1, &["allow-in-multi", "noscript", "loading", "stale", "fast", "no-auth", "allow-busy"], Keys::None, "connection", "1.0.0", "Closes the connection.", quit),
    cmd("reset", 1, &["allow-in-multi", "noscript", "loading", "stale", "fast", "no-auth", "allow-busy"], Keys::None, "connection", "6.2.0", "Resets the connection.", reset),
];

fn ping(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() <= 2 && ctx.client.in_resp2_pubsub() {
        // In RESP2 Pub/Sub mode a reply must look like a message: `pong <arg or "">`.
        let arg = args.get(1).cloned().unwrap_or_default();
        return Reply::Array(vec![Reply::bulk_static("pong"), Reply::Bulk(arg)]);
    }
    match args.len() {
        1 => Reply::simple("PONG"),
        2 => Reply::Bulk(args[1].clone()),
        _ => super::wrong_arity("ping"),
    }
}

fn echo(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Bulk(args[1].clone())
}

/// Checks `user`/`pass` against the ACL users (`requirepass` is the `default` user's
/// password) and, on success, makes the connection that user. Never logs either.
fn check_password(ctx: &mut Ctx<'_, '_>, user: &[u8], pass: &[u8]) -> bool {
    match ctx.server.acl.authenticate(user, pass) {
        Some(u) => {
            *ctx.client.info.user.lock() = (u.name != "default").then(|| u.name.clone());
            ctx.client.user = (u.name != "default").then_some(u);
            true
        }
        None => false,
    }
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn auth(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() > 3 {
        return super::err::syntax();
    }
    let (user, pass) =
        if args.len() == 2 { (&b"default"[..], &args[1][..]) } else { (&args[1][..], &args[2][..]) };
    if args.len() == 2 && ctx.server.acl.default_is_nopass() {
        return Reply::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        );
    }
    if check_password(ctx, user, pass) {
        ctx.client.authenticated = true;
        Reply::ok()
    } else {
        Reply::error(WRONGPASS)
    }
}

fn hello(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let mut version = ctx.client.resp;
    let mut i = 1;
    if args.len() > 1 {
        match parse_i64(&args[1]) {
            Some(2) => version = RespVersion::Resp2,
            Some(3) => version = RespVersion::Resp3,
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut name = None;
    while i < args.len() {
        let more = args.len() - i - 1;
        if is(&args[i], "AUTH") && more >= 2 {
            if !check_password(ctx, &args[i + 1], &args[i + 2]) {
                return Reply::error(WRONGPASS);
            }
            ctx.client.authenticated = true;
            i += 3;
        } else if is(&args[i], "SETNAME") && more >= 1 {
            if let Err(e) = super::client::validate_name(&args[i + 1]) {
                return e;
            }
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Reply::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if !ctx.client.authenticated {
        return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(name) = name {
        *ctx.client.info.name.lock() = (!name.is_empty()).then_some(name);
    }
    ctx.client.resp = version;
    ctx.client.info.resp.store(if version == RespVersion::Resp3 { 3 } else { 2 }, Ordering::Relaxed);
    Reply::Map(vec![
        (Reply::bulk_static("server"), Reply::bulk_static("redis")),
        (Reply::bulk_static("version"), Reply::bulk_static(REDIS_VERSION)),
        (Reply::bulk_static("proto"), Reply::Int(if version == RespVersion::Resp3 { 3 } else { 2 })),
        (Reply::bulk_static("id"), Reply::Int(ctx.client.id() as i64)),
        (
            Reply::bulk_static("mode"),
            Reply::bulk_static(if ctx.server.cluster.get().is_some() { "cluster" } else { "standalone" }),
        ),
        (Reply::bulk_static("role"), Reply::bulk_static("master")),
        (Reply::bulk_static("modules"), Reply::Array(vec![])),
    ])
}

fn select(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match parse_i64(&args[1]) {
        Some(0) => Reply::ok(),
        Some(_) => Reply::error("ERR DB index is out of range"),
        None => super::err::not_integer(),
    }
}

fn quit(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    ctx.client.close_after_reply = true;
    Reply::ok()
}

fn reset(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    if ctx.client.in_multi() {
        ctx.client.multi = None;
        ctx.client.multi_error = false;
        ctx.client.info.in_multi.store(false, Ordering::Relaxed);
    }
    transactions::unwatch_all(ctx.server, ctx.client);
    // As Redis: tracking off and every subscription dropped, without unsubscribe replies.
    ctx.server.tracking.disable(ctx.client.id());
    ctx.client.tracking = Default::default();
    super::pubsub::unsubscribe_all(ctx.server, ctx.client);
    ctx.client.resp = RespVersion::Resp2;
    ctx.client.info.resp.store(2, Ordering::Relaxed);
    *ctx.client.info.name.lock() = None;
    ctx.client.info.no_evict.store(false, Ordering::Relaxed);
    ctx.client.authenticated = !ctx.server.acl.default_needs_auth();
    ctx.client.user = None;
    *ctx.client.info.user.lock() = None;
    ctx.client.cluster = crate::cluster::ClientFlags { tls: ctx.client.cluster.tls, ..Default::default() };
    Reply::simple("RESET")
}
