//! Generic key commands: DEL, EXISTS, TYPE, expiry, RENAME, KEYS, SCAN and friends.

use bytes::Bytes;

use super::{cmd, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

/// Generic key commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("del", -2, &["write"], Keys::ALL_ARGS, "generic", "1.0.0", "Deletes one or more keys.", del),
    cmd("exists", -2, &["readonly", "fast"], Keys::ALL_ARGS, "generic", "1.0.0", "Determines whether one or more keys exist.", exists),
];

fn del(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Int(args[1..].iter().filter(|k| ctx.db.remove(k).is_some()).count() as i64)
}

fn exists(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Int(args[1..].iter().filter(|k| ctx.db.exists(k)).count() as i64)
}
