//! ACL command categories (`@read`, `@string`, ...): Redis's names, derived for each command
//! from its flags and group so the command table stays the single source of truth.

use crate::commands::CommandSpec;

/// Every category Redis 7 knows, in its order (`ACL CAT`). Ones with no command here yet
/// (lists, streams, ...) are still valid in rules, so Redis ACL files load unchanged.
pub const ALL: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// Commands Redis marks `@dangerous` without the `admin` flag.
const DANGEROUS: &[&str] =
    &["keys", "flushall", "flushdb", "info", "role", "sort", "swapdb", "migrate", "restore"];

/// The category name as the static string of [`ALL`], if `name` is one (case-insensitive).
pub fn canonical(name: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

/// The categories of `spec`.
pub fn of(spec: &CommandSpec) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(4);
    let flags = spec.flags;
    let has = |f: &str| flags.contains(&f);
    match spec.group {
        "generic" => out.push("keyspace"),
        "string" => out.push("string"),
        "hash" => out.push("hash"),
        "connection" => out.push("connection"),
        "transactions" => out.push("transaction"),
        "pubsub" => out.push("pubsub"),
        _ => {}
    }
    if has("write") {
        out.push("write");
    }
    if has("readonly") {
        out.push("read");
    }
    if has("admin") {
        out.extend(["admin", "dangerous"]);
    } else if DANGEROUS.contains(&spec.name) {
        out.push("dangerous");
    }
    out.push(if has("fast") { "fast" } else { "slow" });
    if has("blocking") {
        out.push("blocking");
    }
    out
}

/// Whether `name` (`get`, `client`, `client|list`) is a command or subcommand we know.
pub fn command_exists(name: &str) -> bool {
    let (parent, sub) = match name.split_once('|') {
        Some((p, s)) => (p, Some(s)),
        None => (name, None),
    };
    let Some(spec) = crate::commands::lookup(parent.as_bytes()) else {
        return false;
    };
    match sub {
        None => true,
        Some(_) => spec.subcommands.iter().any(|s| s.name == name),
    }
}

/// Every command and subcommand (full names) in `category`, for `ACL CAT <category>`.
pub fn commands_in(category: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for c in crate::commands::all_commands() {
        if c.subcommands.is_empty() {
            if of(c).contains(&category) {
                out.push(c.name);
            }
        } else {
            out.extend(c.subcommands.iter().filter(|s| of(s).contains(&category)).map(|s| s.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_flags_and_group() {
        let get = crate::commands::lookup(b"get").unwrap();
        let cats = of(get);
        assert!(cats.contains(&"read") && cats.contains(&"string") && cats.contains(&"fast"));
        let set = crate::commands::lookup(b"set").unwrap();
        assert!(of(set).contains(&"write"));
        assert!(commands_in("hash").contains(&"hset"));
        assert!(command_exists("client|list") && !command_exists("client|nosuch"));
    }
}
