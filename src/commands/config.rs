//! CONFIG GET / SET / RESETSTAT / REWRITE / HELP over the options a node has, with Redis's
//! names. Every parameter is one row of [`PARAMS`] (name, aliases, getter, setter), the single
//! source for CONFIG and for generated documentation.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::args::parse_i64;
use super::{cmd, container, err, CommandSpec, Ctx, Keys};
use crate::config::parse_size;
use crate::protocol::Reply;
use crate::server::Server;
use crate::store::glob::glob_match;
use crate::store::EvictionPolicy;

/// CONFIG.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[container("config", "server", "2.0.0", "A container for server configuration commands.", SUBCOMMANDS)];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("config|get", -3, &["admin", "noscript", "loading", "stale"], Keys::None, "server", "2.0.0", "Returns the effective values of configuration parameters.", get),
    cmd("config|set", -4, &["admin", "noscript", "loading", "stale"], Keys::None, "server", "2.0.0", "Sets configuration parameters in-flight.", set),
    cmd("config|resetstat", 2, &["admin", "noscript", "loading", "stale"], Keys::None, "server", "2.0.0", "Resets the server's statistics.", resetstat),
    cmd("config|rewrite", 2, &["admin", "noscript", "loading", "stale"], Keys::None, "server", "2.8.0", "Persists the effective configuration to file.", rewrite),
    cmd("config|help", 2, &["loading", "stale"], Keys::None, "server", "5.0.0", "Returns helpful text about the different subcommands.", help),
];

/// How CONFIG SET may change a parameter.
#[derive(Clone, Copy)]
pub enum Access {
    /// Changeable at run time: the setter parses the value and applies it to the live state,
    /// or returns the text Redis puts after "CONFIG SET failed ... - ".
    Mutable(fn(&Server, &str) -> Result<(), String>),
    /// Fixed for the life of the node ("can't set immutable config").
    Immutable,
    /// Refused as Redis refuses protected configs by default ("can't set protected config").
    Protected,
}

/// One configuration parameter as CONFIG sees it.
pub struct Param {
    /// Redis's name.
    pub name: &'static str,
    /// Older names that still work (Redis's ziplist aliases).
    pub aliases: &'static [&'static str],
    /// One line for the documentation.
    pub doc: &'static str,
    /// The current value, as CONFIG GET shows it.
    pub get: fn(&Server) -> String,
    /// Whether and how CONFIG SET changes it.
    pub access: Access,
}

const INT_MAX: u64 = i32::MAX as u64;
const LONG_MAX: u64 = i64::MAX as u64;

/// Every parameter CONFIG knows, in documentation order.
#[rustfmt::skip]
pub static PARAMS: &[Param] = &[
    Param { name: "bind", aliases: &[], doc: "Address the client port listens on (fixed while running).", get: |s| s.config.read().bind.clone(), access: Access::Immutable },
    Param { name: "port", aliases: &[], doc: "Client port; 0 picks a free one (fixed while running).", get: get_port, access: Access::Immutable },
    Param { name: "maxclients", aliases: &[], doc: "Most connected clients.", get: |s| s.maxclients.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_maxclients) },
    Param { name: "timeout", aliases: &[], doc: "Close a client idle this many seconds; 0 never.", get: |s| s.idle_timeout.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_timeout) },
    Param { name: "proto-max-bulk-len", aliases: &[], doc: "Longest bulk string a client may send (memory units).", get: |s| s.proto_max_bulk_len.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_proto_max_bulk_len) },
    Param { name: "client-query-buffer-limit", aliases: &[], doc: "Largest unparsed input a client may accumulate (memory units).", get: |s| s.query_buffer_limit.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_query_buffer_limit) },
    Param { name: "client-output-buffer-limit", aliases: &[], doc: "Output bounds per client class, as Redis: `<class> <hard> <soft> <soft-seconds>` for normal, replica, pubsub; a subscriber past them is disconnected.", get: |s| s.pubsub.limits.describe(), access: Access::Mutable(set_output_limit) },
    Param { name: "maxmemory", aliases: &[], doc: "Memory limit for data (memory units); 0 means none.", get: |s| s.maxmemory.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_maxmemory) },
    Param { name: "maxmemory-policy", aliases: &[], doc: "What to do at the memory limit: noeviction or an eviction policy.", get: |s| s.keyspace.settings.policy().name().to_string(), access: Access::Mutable(set_policy) },
    Param { name: "maxmemory-samples", aliases: &[], doc: "Keys sampled per eviction.", get: |s| s.keyspace.settings.samples.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_samples) },
    Param { name: "lfu-log-factor", aliases: &[], doc: "LFU counter growth factor.", get: |s| s.keyspace.settings.lfu_log_factor.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_lfu_log_factor) },
    Param { name: "lfu-decay-time", aliases: &[], doc: "LFU decay period in minutes.", get: |s| s.keyspace.settings.lfu_decay_time.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_lfu_decay_time) },
    Param { name: "hz", aliases: &[], doc: "Background task frequency per second (clamped to 1..500).", get: |s| s.config.read().hz.to_string(), access: Access::Mutable(set_hz) },
    Param { name: "hash-max-listpack-entries", aliases: &["hash-max-ziplist-entries"], doc: "Most fields of a compact hash.", get: |s| s.keyspace.settings.hash_max_entries.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_hash_entries) },
    Param { name: "hash-max-listpack-value", aliases: &["hash-max-ziplist-value"], doc: "Longest field or value of a compact hash (memory units).", get: |s| s.keyspace.settings.hash_max_value.load(Ordering::Relaxed).to_string(), access: Access::Mutable(set_hash_value) },
    Param { name: "requirepass", aliases: &[], doc: "Password of the default user; empty means none.", get: |s| s.config.read().requirepass.clone().unwrap_or_default(), access: Access::Mutable(set_requirepass) },
    Param { name: "tls-port", aliases: &[], doc: "TLS client port; 0 when none (fixed while running).", get: |s| s.tls_addr.read().map(|a| a.port()).unwrap_or(0).to_string(), access: Access::Immutable },
    Param { name: "tls-cert-file", aliases: &[], doc: "PEM certificate of this node.", get: |s| path(&s.config.read().tls_cert_file), access: Access::Immutable },
    Param { name: "tls-key-file", aliases: &[], doc: "PEM private key of tls-cert-file (the path, never the key).", get: |s| path(&s.config.read().tls_key_file), access: Access::Immutable },
    Param { name: "tls-ca-cert-file", aliases: &[], doc: "PEM CA certificates clients and peers are verified against.", get: |s| path(&s.config.read().tls_ca_cert_file), access: Access::Immutable },
    Param { name: "tls-auth-clients", aliases: &[], doc: "Client certificates on the TLS port: yes, optional or no.", get: |s| s.config.read().tls_auth_clients.as_str().into(), access: Access::Immutable },
    Param { name: "tls-cluster", aliases: &[], doc: "Mutual TLS on the cluster bus.", get: |s| if s.config.read().tls_cluster { "yes".into() } else { "no".into() }, access: Access::Immutable },
    Param { name: "tls-protocols", aliases: &[], doc: "TLS versions accepted.", get: |s| s.config.read().tls_protocols.clone(), access: Access::Immutable },
    Param { name: "protected-mode", aliases: &[], doc: "Refuse non-loopback clients while the default user has no password.", get: |s| if s.config.read().protected_mode { "yes".into() } else { "no".into() }, access: Access::Mutable(set_protected_mode) },
    Param { name: "enable-debug-command", aliases: &[], doc: "Who may run DEBUG: no, yes, or local (loopback clients); fixed while running, as in Redis.", get: |s| match s.config.read().enable_debug_command { crate::config::DebugCommand::No => "no".into(), crate::config::DebugCommand::Yes => "yes".into(), crate::config::DebugCommand::Local => "local".into() }, access: Access::Immutable },
    Param { name: "dir", aliases: &[], doc: "Directory for the node's files (protected, as in Redis).", get: get_dir, access: Access::Protected },
    Param { name: "databases", aliases: &[], doc: "Number of databases: always 1.", get: |_| "1".into(), access: Access::Immutable },
    Param { name: "save", aliases: &[], doc: "Snapshot schedule: always empty (no persistence); only \"\" is accepted.", get: |_| String::new(), access: Access::Mutable(set_save) },
    Param { name: "appendonly", aliases: &[], doc: "Append-only file: always no (no persistence); only no is accepted.", get: |_| "no".into(), access: Access::Mutable(set_appendonly) },
];

/// The parameter called `name` (or one of its aliases), case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Param> {
    PARAMS.iter().find(|p| names(p).any(|n| n.as_bytes().eq_ignore_ascii_case(name)))
}

fn names(p: &'static Param) -> impl Iterator<Item = &'static str> {
    std::iter::once(p.name).chain(p.aliases.iter().copied())
}

fn get_port(s: &Server) -> String {
    match *s.addr.read() {
        Some(addr) => addr.port().to_string(),
        None => s.config.read().port.to_string(),
    }
}

/// A configured path as CONFIG GET shows it; empty when unset.
fn path(p: &Option<std::path::PathBuf>) -> String {
    p.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
}

fn get_dir(s: &Server) -> String {
    let dir = s.config.read().dir.clone();
    std::fs::canonicalize(&dir).unwrap_or(dir).display().to_string()
}

/// Parses an integer parameter as Redis does: `memory` ones take units (1kb, 5mb), then the
/// bounds are checked. Errors are Redis's texts.
fn parse_bounded(v: &str, min: u64, max: u64, memory: bool) -> Result<u64, String> {
    let n = if memory {
        if v.starts_with(|c: char| c.is_ascii_whitespace()) || v.ends_with(|c: char| c.is_ascii_whitespace())
        {
            None
        } else {
            parse_size(v)
        }
        .ok_or("argument must be a memory value")?
    } else {
        let n = parse_i64(v.as_bytes()).ok_or("argument couldn't be parsed into an integer")?;
        // Redis stores a negative value for an unsigned parameter as a huge one.
        n as u64
    };
    if n < min || n > max {
        return Err(format!("argument must be between {min} and {max} inclusive"));
    }
    Ok(n)
}

fn set_maxclients(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 1, u32::MAX as u64, false)?;
    s.maxclients.store(n as usize, Ordering::Relaxed);
    s.config.write().maxclients = n as usize;
    Ok(())
}

fn set_timeout(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, INT_MAX, false)?;
    s.idle_timeout.store(n, Ordering::Relaxed);
    s.config.write().timeout = n;
    Ok(())
}

fn set_proto_max_bulk_len(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 1024 * 1024, LONG_MAX, true)?;
    s.proto_max_bulk_len.store(n as usize, Ordering::Relaxed);
    s.config.write().proto_max_bulk_len = n;
    Ok(())
}

fn set_output_limit(s: &Server, v: &str) -> Result<(), String> {
    s.pubsub.limits.apply(v)?;
    s.config.write().client_output_buffer_limit = s.pubsub.limits.describe();
    Ok(())
}

fn set_query_buffer_limit(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 1024 * 1024, LONG_MAX, true)?;
    s.query_buffer_limit.store(n as usize, Ordering::Relaxed);
    s.config.write().client_query_buffer_limit = n;
    Ok(())
}

fn set_maxmemory(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, u64::MAX, true)?;
    s.maxmemory.store(n, Ordering::Relaxed);
    s.config.write().maxmemory = n;
    Ok(())
}

fn set_policy(s: &Server, v: &str) -> Result<(), String> {
    let p = EvictionPolicy::parse(v).ok_or(
        "argument(s) must be one of the following: volatile-lru, volatile-lfu, volatile-random, volatile-ttl, \
         allkeys-lru, allkeys-lfu, allkeys-random, noeviction",
    )?;
    s.keyspace.settings.set_policy(p);
    s.config.write().maxmemory_policy = p.name().to_string();
    Ok(())
}

fn set_samples(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 1, INT_MAX, false)?;
    s.keyspace.settings.samples.store(n as usize, Ordering::Relaxed);
    s.config.write().maxmemory_samples = n;
    Ok(())
}

fn set_lfu_log_factor(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, INT_MAX, false)?;
    s.keyspace.settings.lfu_log_factor.store(n as usize, Ordering::Relaxed);
    s.config.write().lfu_log_factor = n;
    Ok(())
}

fn set_lfu_decay_time(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, INT_MAX, false)?;
    s.keyspace.settings.lfu_decay_time.store(n as usize, Ordering::Relaxed);
    s.config.write().lfu_decay_time = n;
    Ok(())
}

fn set_hz(s: &Server, v: &str) -> Result<(), String> {
    // Redis accepts any int and clamps it to 1..500.
    let n = parse_bounded(v, 0, INT_MAX, false)?;
    s.config.write().hz = n.clamp(1, 500);
    Ok(())
}

fn set_hash_entries(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, LONG_MAX, false)?;
    s.keyspace.settings.hash_max_entries.store(n as usize, Ordering::Relaxed);
    s.config.write().hash_max_listpack_entries = n;
    Ok(())
}

fn set_hash_value(s: &Server, v: &str) -> Result<(), String> {
    let n = parse_bounded(v, 0, LONG_MAX, true)?;
    s.keyspace.settings.hash_max_value.store(n as usize, Ordering::Relaxed);
    s.config.write().hash_max_listpack_value = n;
    Ok(())
}

fn set_requirepass(s: &Server, v: &str) -> Result<(), String> {
    // Connections already authenticated stay so, as in Redis.
    s.config.write().requirepass = (!v.is_empty()).then(|| v.to_string());
    s.acl.set_requirepass((!v.is_empty()).then_some(v));
    Ok(())
}

fn set_save(_: &Server, v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        Err("cachegrid has no persistence: only \"\" is accepted".into())
    }
}

fn set_protected_mode(s: &Server, v: &str) -> Result<(), String> {
    let on = match v.to_ascii_lowercase().as_str() {
        "yes" => true,
        "no" => false,
        _ => return Err("argument must be 'yes' or 'no'".into()),
    };
    s.config.write().protected_mode = on;
    Ok(())
}

fn set_appendonly(_: &Server, v: &str) -> Result<(), String> {
    if v.eq_ignore_ascii_case("no") {
        Ok(())
    } else if v.eq_ignore_ascii_case("yes") {
        Err("cachegrid has no persistence: only no is accepted".into())
    } else {
        Err("argument must be 'yes' or 'no'".into())
    }
}

/// Whether a CONFIG GET argument is a pattern rather than a name.
fn is_pattern(p: &[u8]) -> bool {
    p.iter().any(|c| matches!(c, b'[' | b'*' | b'?'))
}

fn get(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let mut matches: Vec<(Vec<u8>, &'static Param)> = Vec::new();
    for pattern in &args[2..] {
        if !is_pattern(pattern) {
            // A plain name is echoed as given, aliases included.
            if let Some(p) = lookup(pattern) {
                if !matches.iter().any(|(n, _)| n.eq_ignore_ascii_case(pattern)) {
                    matches.push((pattern.to_vec(), p));
                }
            }
            continue;
        }
        for p in PARAMS {
            for name in names(p) {
                if glob_match(pattern, name.as_bytes(), true)
                    && !matches.iter().any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                {
                    matches.push((name.as_bytes().to_vec(), p));
                }
            }
        }
    }
    Reply::Map(
        matches
            .into_iter()
            .map(|(name, p)| (Reply::Bulk(name.into()), Reply::bulk_string((p.get)(ctx.server))))
            .collect(),
    )
}

fn set(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() % 2 == 1 {
        return err::syntax();
    }
    let pairs: Vec<(&Bytes, &Bytes)> = args[2..].chunks(2).map(|c| (&c[0], &c[1])).collect();
    // Check every name first, as Redis does: unknown names win over other errors.
    let mut unknown: Option<&Bytes> = None;
    let mut failure: Option<(&Bytes, String)> = None;
    let mut chosen: Vec<(&Bytes, &'static Param, &Bytes)> = Vec::new();
    for (name, value) in &pairs {
        let Some(p) = lookup(name) else {
            if unknown.is_none() && failure.is_none() {
                unknown = Some(name);
            }
            continue;
        };
        if unknown.is_some() || failure.is_some() {
            continue;
        }
        let refused = match p.access {
            Access::Immutable => Some("can't set immutable config"),
            Access::Protected => Some("can't set protected config"),
            Access::Mutable(_) if chosen.iter().any(|(_, q, _)| std::ptr::eq(*q, p)) => {
                Some("duplicate parameter")
            }
            Access::Mutable(_) => None,
        };
        match refused {
            Some(why) => failure = Some((name, why.to_string())),
            None => chosen.push((name, p, value)),
        }
    }
    if let Some(name) = unknown {
        return Reply::error(format!(
            "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
            String::from_utf8_lossy(name)
        ));
    }
    if failure.is_none() {
        // Set one by one; on a failure put back what was already set (all or nothing).
        let old: Vec<String> = chosen.iter().map(|(_, p, _)| (p.get)(ctx.server)).collect();
        for (i, (name, p, value)) in chosen.iter().enumerate() {
            let Access::Mutable(setter) = p.access else { continue };
            if let Err(why) = setter(ctx.server, &String::from_utf8_lossy(value)) {
                for ((_, q, _), before) in chosen[..i].iter().zip(&old) {
                    if let Access::Mutable(undo) = q.access {
                        let _ = undo(ctx.server, before);
                    }
                }
                failure = Some((name, why));
                break;
            }
        }
    }
    match failure {
        None => Reply::ok(),
        Some((name, why)) => Reply::error(format!(
            "ERR CONFIG SET failed (possibly related to argument '{}') - {why}",
            String::from_utf8_lossy(name)
        )),
    }
}

/// Zeroes the counters INFO reports (CONFIG RESETSTAT).
pub fn reset_stats(server: &Server) {
    let s = &server.stats;
    for c in [&s.commands, &s.connections, &s.rejected, &s.net_input, &s.net_output, &s.error_replies] {
        c.store(0, Ordering::Relaxed);
    }
    let k = &server.keyspace.stats;
    for c in [&k.expired_keys, &k.evicted_keys, &k.hits, &k.misses] {
        c.store(0, Ordering::Relaxed);
    }
    server.command_stats.reset();
}

fn resetstat(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    reset_stats(ctx.server);
    Reply::ok()
}

fn rewrite(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::error("ERR The server is running without a config file")
}

fn help(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    const LINES: &[&str] = &[
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern>",
        "    Return parameters matching the glob-like <pattern> and their values.",
        "SET <directive> <value>",
        "    Set the configuration <directive> to <value>.",
        "RESETSTAT",
        "    Reset statistics reported by the INFO command.",
        "REWRITE",
        "    Rewrite the configuration file.",
        "HELP",
        "    Prints this help.",
    ];
    Reply::Array(LINES.iter().map(|l| Reply::simple(*l)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_param_has_a_unique_name() {
        let mut all: Vec<&str> = PARAMS.iter().flat_map(names).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(lookup(b"HASH-MAX-ZIPLIST-ENTRIES").is_some_and(|p| p.name == "hash-max-listpack-entries"));
    }

    #[test]
    fn integers_are_parsed_and_bounded_like_redis() {
        assert_eq!(parse_bounded("5", 1, 10, false), Ok(5));
        assert_eq!(parse_bounded("1kb", 0, u64::MAX, true), Ok(1024));
        assert_eq!(
            parse_bounded("x", 0, 1, false),
            Err("argument couldn't be parsed into an integer".into())
        );
        assert_eq!(parse_bounded("x", 0, 1, true), Err("argument must be a memory value".into()));
        assert_eq!(
            parse_bounded("0", 1, 10, false),
            Err("argument must be between 1 and 10 inclusive".into())
        );
    }
}
