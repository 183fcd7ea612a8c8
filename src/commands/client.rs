//! CLIENT and its subcommands.

use bytes::Bytes;

use super::{cmd, container, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

/// CLIENT.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[container("client", "connection", "2.4.0", "A container for client connection commands.", SUBCOMMANDS)];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("client|id", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "5.0.0", "Returns the unique client ID of the connection.", id),
];

/// Checks a client name as Redis does: no spaces, newlines or special characters.
pub fn validate_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(Reply::error("ERR Client names cannot contain spaces, newlines or special characters."));
    }
    Ok(())
}

fn id(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(ctx.client.id() as i64)
}
