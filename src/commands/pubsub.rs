//! Pub/Sub commands: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH and PUBSUB,
//! with Redis 7's replies (pushes in RESP3, arrays in RESP2). The registry and delivery live
//! in [`crate::server::pubsub`]; the RESP2 subscribed-mode restriction is in the dispatcher.
//!
//! Not (yet) here: sharded Pub/Sub (SSUBSCRIBE, SPUBLISH; PUBSUB SHARD* answer as for no
//! subscribers), ACL channel permissions (every user may use every channel), and PUBLISH
//! across a cluster (a message reaches the subscribers of the node it was published on).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{cmd, container, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::server::pubsub::Kind;
use crate::server::{ClientState, Server};

/// Pub/Sub commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("subscribe", -2, &["pubsub", "noscript", "loading", "stale"], Keys::None, "pubsub", "2.0.0", "Listens for messages published to channels.", subscribe),
    cmd("unsubscribe", -1, &["pubsub", "noscript", "loading", "stale"], Keys::None, "pubsub", "2.0.0", "Stops listening to messages posted to channels.", unsubscribe),
    cmd("psubscribe", -2, &["pubsub", "noscript", "loading", "stale"], Keys::None, "pubsub", "2.0.0", "Listens for messages published to channels that match one or more patterns.", psubscribe),
    cmd("punsubscribe", -1, &["pubsub", "noscript", "loading", "stale"], Keys::None, "pubsub", "2.0.0", "Stops listening to messages published to channels that match one or more patterns.", punsubscribe),
    cmd("publish", 3, &["pubsub", "loading", "stale", "fast"], Keys::None, "pubsub", "2.0.0", "Posts a message to a channel.", publish),
    container("pubsub", "pubsub", "2.8.0", "A container for Pub/Sub commands.", SUBCOMMANDS),
];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("pubsub|channels", -2, &["pubsub", "loading", "stale"], Keys::None, "pubsub", "2.8.0", "Returns the active channels.", channels),
    cmd("pubsub|numsub", -2, &["pubsub", "loading", "stale"], Keys::None, "pubsub", "2.8.0", "Returns a count of subscribers to channels.", numsub),
    cmd("pubsub|numpat", 2, &["pubsub", "loading", "stale"], Keys::None, "pubsub", "2.8.0", "Returns a count of unique pattern subscriptions.", numpat),
    cmd("pubsub|shardchannels", -2, &["pubsub", "loading", "stale"], Keys::None, "pubsub", "7.0.0", "Returns the active shard channels.", shardchannels),
    cmd("pubsub|shardnumsub", -2, &["pubsub", "loading", "stale"], Keys::None, "pubsub", "7.0.0", "Returns the count of subscribers of shard channels.", numsub_none),
    cmd("pubsub|help", 2, &["loading", "stale"], Keys::None, "pubsub", "6.2.0", "Returns helpful text about the different subcommands.", help),
];

/// Commands a RESP2 client in Pub/Sub mode may still run.
const ALLOWED_WHILE_SUBSCRIBED: &[&str] =
    &["subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ping", "quit", "reset"];

/// Redis's refusal of `spec` on a RESP2 connection in Pub/Sub mode, if it is refused.
pub fn refuse_in_subscribed_mode(spec: &CommandSpec) -> Option<Reply> {
    (!ALLOWED_WHILE_SUBSCRIBED.contains(&spec.name)).then(|| {
        Reply::error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ))
    })
}

fn word(kind: Kind, on: bool) -> &'static str {
    match (kind, on) {
        (Kind::Channel, true) => "subscribe",
        (Kind::Channel, false) => "unsubscribe",
        (Kind::Pattern, true) => "psubscribe",
        (Kind::Pattern, false) => "punsubscribe",
    }
}

/// `[p](un)subscribe <name|nil> <subscriptions left>`: a push in RESP3, an array in RESP2.
fn confirmation(kind: Kind, on: bool, name: Option<Bytes>, client: &ClientState) -> Reply {
    let count = client.channels.len() + client.patterns.len();
    Reply::Push(vec![
        Reply::bulk_static(word(kind, on)),
        name.map_or(Reply::Nil, Reply::Bulk),
        Reply::Int(count as i64),
    ])
}

fn list(client: &mut ClientState, kind: Kind) -> &mut Vec<Bytes> {
    match kind {
        Kind::Channel => &mut client.channels,
        Kind::Pattern => &mut client.patterns,
    }
}

fn counter(client: &ClientState, kind: Kind) -> &std::sync::atomic::AtomicU64 {
    match kind {
        Kind::Channel => &client.info.sub,
        Kind::Pattern => &client.info.psub,
    }
}

fn add(ctx: &mut Ctx<'_, '_>, kind: Kind, names: &[Bytes]) -> Reply {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if !list(ctx.client, kind).contains(name) {
            ctx.server.pubsub.subscribe(kind, &ctx.client.info, name);
            list(ctx.client, kind).push(name.clone());
            counter(ctx.client, kind).fetch_add(1, Ordering::Relaxed);
        }
        out.push(confirmation(kind, true, Some(name.clone()), ctx.client));
    }
    Reply::Frames(out)
}

/// Drops one subscription of `client`; false if it had none by that name.
fn drop_one(server: &Server, client: &mut ClientState, kind: Kind, name: &[u8]) -> bool {
    let names = list(client, kind);
    let Some(i) = names.iter().position(|n| n == name) else { return false };
    names.remove(i);
    server.pubsub.unsubscribe(kind, client.id(), name);
    counter(client, kind).fetch_sub(1, Ordering::Relaxed);
    true
}

fn remove(ctx: &mut Ctx<'_, '_>, kind: Kind, names: &[Bytes]) -> Reply {
    let names: Vec<Bytes> = if names.is_empty() { list(ctx.client, kind).clone() } else { names.to_vec() };
    if names.is_empty() {
        // Nothing to leave: one reply with a null name, as Redis.
        return confirmation(kind, false, None, ctx.client);
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        drop_one(ctx.server, ctx.client, kind, &name);
        out.push(confirmation(kind, false, Some(name), ctx.client));
    }
    Reply::Frames(out)
}

fn subscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    add(ctx, Kind::Channel, &args[1..])
}

fn unsubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    remove(ctx, Kind::Channel, &args[1..])
}

fn psubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    add(ctx, Kind::Pattern, &args[1..])
}

fn punsubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    remove(ctx, Kind::Pattern, &args[1..])
}

/// Leaves every channel and pattern without replying (disconnect, RESET).
pub fn unsubscribe_all(server: &Server, client: &mut ClientState) {
    for kind in [Kind::Channel, Kind::Pattern] {
        for name in std::mem::take(list(client, kind)) {
            server.pubsub.unsubscribe(kind, client.id(), &name);
        }
        counter(client, kind).store(0, Ordering::Relaxed);
    }
}

/// PUBLISH channel message: the number of clients that received it. A RESP3 publisher that
/// is itself subscribed gets its message before this reply, as from Redis.
fn publish(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let (count, own) = ctx.server.pubsub.publish(&args[1], &args[2], ctx.client.id());
    let count = Reply::Int(count as i64);
    if own.is_empty() {
        return count;
    }
    Reply::Frames(own.into_iter().map(Reply::Raw).chain(std::iter::once(count)).collect())
}

/// Redis's error for a PUBSUB subcommand given too many arguments.
fn subcommand_syntax(args: &[Bytes]) -> Reply {
    Reply::error(format!(
        "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
        String::from_utf8_lossy(&args[1][..args[1].len().min(128)])
    ))
}

fn channels(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() > 3 {
        return subcommand_syntax(args);
    }
    let found = ctx.server.pubsub.channels(args.get(2).map(|p| p.as_ref()));
    Reply::Array(found.into_iter().map(Reply::Bulk).collect())
}

fn numsub(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let mut out = Vec::with_capacity((args.len() - 2) * 2);
    for ch in &args[2..] {
        out.push(Reply::Bulk(ch.clone()));
        out.push(Reply::Int(ctx.server.pubsub.numsub(ch) as i64));
    }
    Reply::Array(out)
}

fn numpat(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(ctx.server.pubsub.numpat() as i64)
}

/// No sharded channels exist: an empty list.
fn shardchannels(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() > 3 {
        return subcommand_syntax(args);
    }
    Reply::Array(Vec::new())
}

/// No sharded channels exist: every count is 0.
fn numsub_none(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Array(args[2..].iter().flat_map(|ch| [Reply::Bulk(ch.clone()), Reply::Int(0)]).collect())
}

fn help(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    const LINES: &[&str] = &[
        "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "CHANNELS [<pattern>]",
        "    Return the currently active channels matching a <pattern> (default: '*').",
        "NUMPAT",
        "    Return number of subscriptions to patterns.",
        "NUMSUB [<channel> ...]",
        "    Return the number of subscribers for the specified channels, excluding",
        "    pattern subscriptions(default: no channels).",
        "SHARDCHANNELS [<pattern>]",
        "    Return the currently active shard level channels matching a <pattern> (default: '*').",
        "SHARDNUMSUB [<shardchannel> ...]",
        "    Return the number of subscribers for the specified shard level channel(s)",
        "HELP",
        "    Prints this help.",
    ];
    Reply::Array(LINES.iter().map(|l| Reply::simple(*l)).collect())
}
