//! Server commands: INFO, DBSIZE, FLUSHALL, FLUSHDB, TIME, SHUTDOWN.

use bytes::Bytes;

use super::{cmd, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

/// Server commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("dbsize", 1, &["readonly", "fast"], Keys::None, "server", "1.0.0", "Returns the number of keys in the database.", dbsize),
    cmd("shutdown", -1, &["admin", "noscript", "loading", "stale", "no-multi", "allow-busy"], Keys::None, "server", "1.0.0", "Synchronously saves the database(s) to disk and shuts down the Redis server.", shutdown),
];

fn dbsize(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(ctx.server.keyspace.len() as i64)
}

fn shutdown(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    tracing::info!("SHUTDOWN requested by client {}", ctx.client.id());
    ctx.server.shutdown.cancel();
    ctx.client.close_after_reply = true;
    Reply::ok()
}
