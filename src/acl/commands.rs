//! The ACL command: SETUSER, GETUSER, DELUSER, LIST, USERS, WHOAMI, CAT (a subset of Redis's).

use bytes::Bytes;

use super::{categories, user};
use crate::commands::{cmd, container, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;

const ADMIN: &[&str] = &["admin", "noscript", "loading", "stale"];
const PLAIN: &[&str] = &["noscript", "loading", "stale"];

/// ACL and its subcommands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[container("acl", "server", "6.0.0", "A container for Access List Control commands.", SUBCOMMANDS)];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("acl|setuser", -3, ADMIN, Keys::None, "server", "6.0.0", "Creates and modifies an ACL user and its rules.", setuser),
    cmd("acl|getuser", 3, ADMIN, Keys::None, "server", "6.0.0", "Lists the ACL rules of a user.", getuser),
    cmd("acl|deluser", -3, ADMIN, Keys::None, "server", "6.0.0", "Deletes ACL users, and terminates their connections.", deluser),
    cmd("acl|list", 2, ADMIN, Keys::None, "server", "6.0.0", "Dumps the effective rules in ACL file format.", list),
    cmd("acl|users", 2, ADMIN, Keys::None, "server", "6.0.0", "Lists all ACL users.", users),
    cmd("acl|whoami", 2, PLAIN, Keys::None, "server", "6.0.0", "Returns the authenticated username of the current connection.", whoami),
    cmd("acl|cat", -2, PLAIN, Keys::None, "server", "6.0.0", "Lists the ACL categories, or the commands inside a category.", cat),
];

/// User names are printable words (at most 256 bytes), so an ACL LIST line stays parseable.
fn valid_name(name: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(name).ok()?;
    (!s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

fn setuser(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args[2].len() > 256 {
        return Reply::error("ERR Usernames are limited to 256 bytes");
    }
    let Some(name) = valid_name(&args[2]) else {
        return Reply::error("ERR Usernames can't contain spaces or null characters");
    };
    match ctx.server.acl.set_user(name, &args[3..]) {
        Ok(()) => Reply::ok(),
        // Redis echoes the refused modifier to the client that sent it; it is never logged.
        Err((i, e)) => Reply::error(format!(
            "ERR Error in ACL SETUSER modifier '{}': {e}",
            String::from_utf8_lossy(&args[3 + i][..args[3 + i].len().min(128)])
        )),
    }
}

fn getuser(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let Some(u) = valid_name(&args[2]).and_then(|n| ctx.server.acl.get(n)) else {
        return Reply::Nil;
    };
    let st = u.state();
    let mut flags = vec![Reply::bulk_static(if st.enabled { "on" } else { "off" })];
    if st.nopass {
        flags.push(Reply::bulk_static("nopass"));
    }
    let passwords = st.passwords.iter().map(|h| Reply::bulk_string(user::hex(h))).collect();
    Reply::Map(vec![
        (Reply::bulk_static("flags"), Reply::Array(flags)),
        (Reply::bulk_static("passwords"), Reply::Array(passwords)),
        (Reply::bulk_static("commands"), Reply::bulk_string(st.describe_commands())),
        (Reply::bulk_static("keys"), Reply::bulk_string(st.describe_keys())),
        (Reply::bulk_static("channels"), Reply::bulk_static(if st.all_channels { "&*" } else { "" })),
        (Reply::bulk_static("selectors"), Reply::Array(vec![])),
    ])
}

fn deluser(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let mut names = Vec::with_capacity(args.len() - 2);
    for a in &args[2..] {
        if a.as_ref() == b"default" {
            return Reply::error("ERR The 'default' user cannot be removed");
        }
        if let Some(n) = valid_name(a) {
            names.push(n);
        }
    }
    Reply::Int(ctx.server.acl.delete(&names) as i64)
}

fn list(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let users = ctx.server.acl.users();
    Reply::Array(
        users
            .iter()
            .map(|u| Reply::bulk_string(format!("user {} {}", u.name, u.state().describe())))
            .collect(),
    )
}

fn users(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Array(ctx.server.acl.users().iter().map(|u| Reply::bulk_string(u.name.clone())).collect())
}

fn whoami(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::bulk_string(ctx.client.user.as_ref().map_or_else(|| "default".to_string(), |u| u.name.clone()))
}

fn cat(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match args.get(2) {
        None => Reply::Array(categories::ALL.iter().map(|c| Reply::bulk_static(c)).collect()),
        Some(_) if args.len() > 3 => crate::commands::wrong_arity("acl|cat"),
        Some(name) => match std::str::from_utf8(name).ok().and_then(categories::canonical) {
            Some(c) => Reply::Array(categories::commands_in(c).into_iter().map(Reply::bulk_static).collect()),
            None => Reply::error(format!(
                "ERR Unknown category '{}'",
                String::from_utf8_lossy(&name[..name.len().min(128)])
            )),
        },
    }
}
