//! Replication commands: WAIT. In a grid a slot's primary ships changes to the slot's
//! replicas (see `crate::replication`); WAIT lets a client block until enough of them have
//! applied everything it wrote, as with Redis's replicas.

use bytes::Bytes;

use super::args::parse_i64;
use super::{cmd, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

/// Replication commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("wait", 3, &["noscript"], Keys::None, "generic", "3.0.0", "Blocks until the asynchronous replication of all preceding write commands sent by the connection is completed.", wait),
];

/// `WAIT numreplicas timeout`: the connection finishes it once the command returns (it may
/// block); inside EXEC it answers at once with how many replicas have caught up.
fn wait(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let Some(need) = parse_i64(&args[1]) else {
        return Reply::error("ERR value is not an integer or out of range");
    };
    let Some(timeout) = parse_i64(&args[2]) else {
        return Reply::error("ERR timeout is not an integer or out of range");
    };
    if timeout < 0 {
        return Reply::error("ERR timeout is negative");
    }
    let need = need.max(0) as usize;
    let acked = match ctx.server.replication.get() {
        Some(r) => r.acked_count(ctx.client.wrote.seq, &r.wait_targets(&ctx.client.wrote)),
        None => 0,
    };
    if acked < need && !ctx.client.in_exec {
        ctx.client.pending_wait = Some((need, timeout as u64));
    }
    Reply::Int(acked as i64)
}
