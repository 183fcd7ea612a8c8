//! COMMAND and its subcommands: what redis-cli and cluster clients learn our commands from.
//! Everything is derived from the command table, in Redis 7's reply formats.

use bytes::Bytes;

use super::args::is;
use super::{all_commands, cmd, lookup, resolve, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::store::glob::glob_match;

/// COMMAND: a container that, alone, lists every command (arity -1, unlike other containers).
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[CommandSpec {
    name: "command", arity: -1, flags: &["loading", "stale"], keys: Keys::None, group: "server",
    summary: "Returns detailed information about all commands.", since: "2.8.13", handler: all, subcommands: SUBCOMMANDS,
}];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("command|count", 2, &["loading", "stale"], Keys::None, "server", "2.8.13", "Returns a count of commands.", count),
    cmd("command|info", -2, &["loading", "stale"], Keys::None, "server", "2.8.13", "Returns information about one, multiple or all commands.", info),
    cmd("command|docs", -2, &["loading", "stale"], Keys::None, "server", "7.0.0", "Returns documentary information about one, multiple or all commands.", docs),
    cmd("command|list", -2, &["loading", "stale"], Keys::None, "server", "7.0.0", "Returns a list of command names.", list),
    cmd("command|getkeys", -4, &["loading", "stale"], Keys::None, "server", "2.8.13", "Extracts the key names from an arbitrary command.", getkeys),
    cmd("command|help", 2, &["loading", "stale"], Keys::None, "server", "5.0.0", "Returns helpful text about the different subcommands.", help),
];

/// The command flags Redis reports (our table also holds internal ones, and uses dashes).
const REDIS_FLAGS: &[&str] = &[
    "write",
    "readonly",
    "denyoom",
    "module",
    "admin",
    "pubsub",
    "noscript",
    "blocking",
    "loading",
    "stale",
    "skip_monitor",
    "skip_slowlog",
    "asking",
    "fast",
    "no_auth",
    "may_replicate",
    "sentinel",
    "only_sentinel",
    "no_mandatory_keys",
    "no_async_loading",
    "no_multi",
    "movablekeys",
    "allow_busy",
];

fn flags(spec: &CommandSpec) -> Vec<String> {
    spec.flags.iter().map(|f| f.replace('-', "_")).filter(|f| REDIS_FLAGS.contains(&f.as_str())).collect()
}

/// ACL categories, derived from flags and group in Redis's category order.
fn acl_categories(spec: &CommandSpec) -> Vec<&'static str> {
    let has = |f: &str| spec.flags.contains(&f);
    let group = spec.group;
    let mut cats = Vec::new();
    let mut add = |cond: bool, cat: &'static str| {
        if cond {
            cats.push(cat);
        }
    };
    add(group == "generic" && spec.keys != Keys::None, "@keyspace");
    add(has("readonly"), "@read");
    add(has("write"), "@write");
    add(group == "hash", "@hash");
    add(group == "string", "@string");
    add(group == "pubsub", "@pubsub");
    add(has("admin"), "@admin");
    add(has("fast"), "@fast");
    add(!has("fast"), "@slow");
    add(has("admin"), "@dangerous");
    add(group == "connection", "@connection");
    add(group == "transactions", "@transaction");
    cats
}

/// Legacy (first, last, step) key positions.
fn legacy_keys(spec: &CommandSpec) -> (i64, i64, i64) {
    match spec.keys {
        Keys::Range { first, last, step } => (first as i64, last as i64, step as i64),
        _ => (0, 0, 0),
    }
}

fn pair(k: &'static str, v: Reply) -> (Reply, Reply) {
    (Reply::bulk_static(k), v)
}

/// A Redis 7 key spec for a range of keys (maps and sets, as Redis's RESP3 reply).
fn key_specs(spec: &CommandSpec) -> Vec<Reply> {
    let Keys::Range { first, last, step } = spec.keys else { return vec![] };
    let access = if spec.is_write() { ["RW", "update"] } else { ["RO", "access"] };
    let lastkey = if last < 0 { last } else { last - first };
    let begin = Reply::Map(vec![
        pair("type", Reply::bulk_static("index")),
        pair("spec", Reply::Map(vec![pair("index", Reply::Int(first as i64))])),
    ]);
    let range = Reply::Map(vec![
        pair("lastkey", Reply::Int(lastkey as i64)),
        pair("keystep", Reply::Int(step as i64)),
        pair("limit", Reply::Int(0)),
    ]);
    let find = Reply::Map(vec![pair("type", Reply::bulk_static("range")), pair("spec", range)]);
    vec![Reply::Map(vec![
        pair("flags", Reply::Set(access.iter().map(|f| Reply::simple(*f)).collect())),
        pair("begin_search", begin),
        pair("find_keys", find),
    ])]
}

/// One COMMAND INFO entry.
fn info_entry(spec: &CommandSpec) -> Reply {
    let (first, last, step) = legacy_keys(spec);
    Reply::Array(vec![
        Reply::bulk_static(spec.name),
        Reply::Int(spec.arity as i64),
        Reply::Set(flags(spec).into_iter().map(Reply::simple).collect()),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
        Reply::Set(acl_categories(spec).into_iter().map(Reply::simple).collect()),
        Reply::Set(vec![]),
        Reply::Set(key_specs(spec)),
        Reply::Set(spec.subcommands.iter().map(info_entry).collect()),
    ])
}

/// Finds a command or `container|sub` by name, case-insensitively.
fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    let Some(bar) = name.iter().position(|&b| b == b'|') else { return lookup(name) };
    let container = lookup(&name[..bar])?;
    container.subcommands.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

fn all(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Array(all_commands().map(info_entry).collect())
}

fn count(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(all_commands().count() as i64)
}

fn info(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() == 2 {
        return Reply::Array(all_commands().map(info_entry).collect());
    }
    Reply::Array(args[2..].iter().map(|n| find(n).map(info_entry).unwrap_or(Reply::Nil)).collect())
}

/// One COMMAND DOCS value: summary, since, group and, for containers, the subcommands' docs.
fn doc(spec: &CommandSpec) -> Reply {
    let mut fields = vec![
        (Reply::bulk_static("summary"), Reply::bulk_static(spec.summary)),
        (Reply::bulk_static("since"), Reply::bulk_static(spec.since)),
        (Reply::bulk_static("group"), Reply::bulk_static(spec.group)),
    ];
    if !spec.subcommands.is_empty() {
        fields.push((Reply::bulk_static("subcommands"), docs_of(spec.subcommands.iter())));
    }
    Reply::Map(fields)
}

fn docs_of<'a>(specs: impl Iterator<Item = &'a CommandSpec>) -> Reply {
    Reply::Map(specs.map(|s| (Reply::bulk_static(s.name), doc(s))).collect())
}

fn docs(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() == 2 {
        return docs_of(all_commands());
    }
    // Unknown names are left out, as Redis does.
    docs_of(args[2..].iter().filter_map(|n| find(n)))
}

/// Every command name, subcommands included (`client|id`).
fn names() -> impl Iterator<Item = &'static CommandSpec> {
    all_commands().flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
}

/// COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern].
fn list(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let keep: Box<dyn Fn(&CommandSpec) -> bool> = match args.len() {
        2 => Box::new(|_| true),
        5 if is(&args[2], "FILTERBY") => {
            let value = args[4].clone();
            if is(&args[3], "MODULE") {
                Box::new(|_| false)
            } else if is(&args[3], "ACLCAT") {
                Box::new(move |s| {
                    acl_categories(s).iter().any(|c| c.as_bytes()[1..].eq_ignore_ascii_case(&value))
                })
            } else if is(&args[3], "PATTERN") {
                Box::new(move |s| glob_match(&value, s.name.as_bytes(), true))
            } else {
                return super::err::syntax();
            }
        }
        _ => return super::err::syntax(),
    };
    Reply::Array(names().filter(|s| keep(s)).map(|s| Reply::bulk_static(s.name)).collect())
}

/// COMMAND GETKEYS cmd arg ...: the keys the dispatcher would lock.
fn getkeys(_: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let full = &args[2..];
    let spec = match resolve(full) {
        Ok(spec) => spec,
        Err(_) if lookup(&full[0]).is_none() => return Reply::error("ERR Invalid command specified"),
        Err(_) => return Reply::error("ERR Invalid number of arguments specified for command"),
    };
    match spec.keys {
        Keys::Range { .. } => {
            let keys: Vec<Reply> =
                spec.keys.positions(full.len()).map(|i| Reply::Bulk(full[i].clone())).collect();
            if keys.is_empty() {
                return Reply::error("ERR Invalid arguments specified for command");
            }
            Reply::Array(keys)
        }
        _ => Reply::error("ERR The command has no key arguments"),
    }
}

const HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all Redis commands.",
    "COUNT",
    "    Return the total number of commands in this Redis server.",
    "LIST",
    "    Return a list of all commands in this Redis server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple Redis commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "GETKEYS <full-command>",
    "    Return the keys from a full Redis command.",
    "HELP",
    "    Prints this help.",
];

fn help(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Array(HELP.iter().map(|l| Reply::simple(*l)).collect())
}
