//! COMMAND and its subcommands: what redis-cli and cluster clients learn our commands from.

use bytes::Bytes;

use super::{all_commands, cmd, container, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

/// COMMAND.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[container("command", "server", "2.8.13", "Returns detailed information about all commands.", SUBCOMMANDS)];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("command|count", 2, &["loading", "stale"], Keys::None, "server", "2.8.13", "Returns a count of commands.", count),
];

fn count(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(all_commands().count() as i64)
}
