//! Commands: the table of every command the node knows, and the dispatcher that checks a
//! request (name, arity, auth, transactions, memory), locks the keys it names and runs it.
//! Each family lives in its own file with one handler per command.

pub mod args;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod connection;
pub mod debug;
pub mod hashes;
pub mod keys;
pub mod pubsub;
pub mod replication;
pub mod server;
pub mod strings;
pub mod transactions;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;

use crate::protocol::Reply;
use crate::server::{ClientState, Server};
use crate::store::Db;

/// Runs one command against a locked view of the keyspace.
pub type Handler = fn(&mut Ctx<'_, '_>, &[Bytes]) -> Reply;

/// Which keys a command touches, so the dispatcher can lock exactly their shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// No key.
    None,
    /// Keys at argument positions `first..=last` (negative `last` counts from the end), every
    /// `step`, as Redis's legacy key specs.
    Range {
        /// First key position.
        first: i32,
        /// Last key position; -1 is the last argument.
        last: i32,
        /// Distance between keys.
        step: i32,
    },
    /// The whole keyspace (KEYS, SCAN, FLUSHALL, ...).
    All,
}

impl Keys {
    /// One key at argument 1.
    pub const ONE: Keys = Keys::Range { first: 1, last: 1, step: 1 };
    /// Every argument from 1 on is a key.
    pub const ALL_ARGS: Keys = Keys::Range { first: 1, last: -1, step: 1 };

    /// Positions of the keys in `args`.
    pub fn positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, last, step) = match *self {
            Keys::Range { first, last, step } => {
                let last = if last < 0 { argc as i32 + last } else { last.min(argc as i32 - 1) };
                (first, last, step.max(1))
            }
            _ => (1, 0, 1),
        };
        (first..=last).step_by(step as usize).map(|i| i as usize)
    }
}

/// Static description of a command: what COMMAND reports and what the dispatcher checks.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name (`get`), or `container|sub` for subcommands.
    pub name: &'static str,
    /// Redis arity: exact when positive, minimum when negative (counting the name).
    pub arity: i32,
    /// Redis command flags (`write`, `readonly`, `denyoom`, `fast`, `admin`, ...).
    pub flags: &'static [&'static str],
    /// Where its keys are.
    pub keys: Keys,
    /// Redis's command group, for COMMAND DOCS.
    pub group: &'static str,
    /// One line on what it does, for COMMAND DOCS.
    pub summary: &'static str,
    /// The Redis version that introduced it.
    pub since: &'static str,
    /// The handler; containers (CLIENT, CONFIG, ...) dispatch to `subcommands` instead.
    pub handler: Handler,
    /// Subcommands of a container command.
    pub subcommands: &'static [CommandSpec],
}

impl CommandSpec {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// Whether the arity check passes for `argc` arguments (name included).
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Whether this command changes data.
    pub fn is_write(&self) -> bool {
        self.has_flag("write")
    }
}

/// A command with no subcommands (for the static tables of each family).
#[allow(clippy::too_many_arguments)]
pub const fn cmd(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: Keys,
    group: &'static str,
    since: &'static str,
    summary: &'static str,
    handler: Handler,
) -> CommandSpec {
    CommandSpec { name, arity, flags, keys, group, summary, since, handler, subcommands: &[] }
}

/// A container command (CLIENT, CONFIG, COMMAND) whose work is done by `subcommands`.
pub const fn container(
    name: &'static str,
    group: &'static str,
    since: &'static str,
    summary: &'static str,
    subcommands: &'static [CommandSpec],
) -> CommandSpec {
    CommandSpec {
        name,
        arity: -2,
        flags: &[],
        keys: Keys::None,
        group,
        summary,
        since,
        handler: |_, _| Reply::error("ERR container command called without a subcommand"),
        subcommands,
    }
}

/// Everything a handler can reach.
pub struct Ctx<'a, 'db> {
    /// The keys this command may touch, locked.
    pub db: &'a mut Db<'db>,
    /// The calling connection.
    pub client: &'a mut ClientState,
    /// The node.
    pub server: &'a Arc<Server>,
}

/// Every top-level command.
pub fn all_commands() -> impl Iterator<Item = &'static CommandSpec> {
    [
        connection::COMMANDS,
        keys::COMMANDS,
        strings::COMMANDS,
        hashes::COMMANDS,
        transactions::COMMANDS,
        pubsub::COMMANDS,
        server::COMMANDS,
        replication::COMMANDS,
        client::COMMANDS,
        cluster::COMMANDS,
        command::COMMANDS,
        config::COMMANDS,
        debug::COMMANDS,
        crate::acl::commands::COMMANDS,
    ]
    .into_iter()
    .flatten()
}

static TABLE: LazyLock<HashMap<&'static str, &'static CommandSpec, foldhash::fast::FixedState>> =
    LazyLock::new(|| all_commands().map(|c| (c.name, c)).collect());

/// Looks a command up by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut lower = [0u8; 32];
    if name.len() > lower.len() {
        return None;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let lower = std::str::from_utf8(&lower[..name.len()]).ok()?;
    TABLE.get(lower).copied()
}

/// Resolves `args` to the spec that runs it: the command, or its subcommand for containers.
/// Errors are the replies Redis gives.
pub fn resolve(args: &[Bytes]) -> Result<&'static CommandSpec, Reply> {
    let Some(cmd) = lookup(&args[0]) else {
        return Err(unknown_command(args));
    };
    if !cmd.subcommands.is_empty() {
        if args.len() < 2 {
            // COMMAND alone lists everything; other containers need a subcommand.
            return if cmd.arity_ok(1) { Ok(cmd) } else { Err(wrong_arity(cmd.name)) };
        }
        let sub = args[1].to_ascii_lowercase();
        let found = cmd
            .subcommands
            .iter()
            .find(|s| s.name.split_once('|').map(|(_, n)| n.as_bytes() == sub.as_slice()).unwrap_or(false));
        let Some(sub_spec) = found else {
            return Err(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                truncate_lossy(&args[1], 128),
                cmd.name.to_ascii_uppercase()
            )));
        };
        if !sub_spec.arity_ok(args.len()) {
            return Err(wrong_arity(sub_spec.name));
        }
        return Ok(sub_spec);
    }
    if !cmd.arity_ok(args.len()) {
        return Err(wrong_arity(cmd.name));
    }
    Ok(cmd)
}

fn truncate_lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

/// Redis's reply for a command it does not know.
pub fn unknown_command(args: &[Bytes]) -> Reply {
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push_str(&format!("'{}' ", truncate_lossy(a, room)));
    }
    Reply::error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        truncate_lossy(&args[0], 128),
        rest
    ))
}

/// Redis's reply for a wrong number of arguments.
pub fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Standard error replies, with Redis's exact texts.
pub mod err {
    use crate::protocol::Reply;

    /// `WRONGTYPE`.
    pub fn wrong_type() -> Reply {
        Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")
    }
    /// `ERR syntax error`.
    pub fn syntax() -> Reply {
        Reply::error("ERR syntax error")
    }
    /// An argument is not an integer.
    pub fn not_integer() -> Reply {
        Reply::error("ERR value is not an integer or out of range")
    }
    /// An argument is not a float.
    pub fn not_float() -> Reply {
        Reply::error("ERR value is not a valid float")
    }
    /// `ERR no such key`.
    pub fn no_such_key() -> Reply {
        Reply::error("ERR no such key")
    }
    /// An integer operation would overflow.
    pub fn overflow() -> Reply {
        Reply::error("ERR increment or decrement would overflow")
    }
    /// Expire time out of range for the command `cmd`.
    pub fn invalid_expire(cmd: &str) -> Reply {
        Reply::error(format!("ERR invalid expire time in '{cmd}' command"))
    }
    /// Memory is full under `noeviction`.
    pub fn oom() -> Reply {
        Reply::error("OOM command not allowed when used memory > 'maxmemory'.")
    }
}

/// Executes one request for `client`: the single entry point of every command.
pub fn execute(server: &Arc<Server>, client: &mut ClientState, args: Vec<Bytes>) -> Reply {
    let spec = match resolve(&args) {
        Ok(spec) => spec,
        Err(reply) => {
            transactions::flag_error_in_multi(client);
            return reply;
        }
    };
    server.stats.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stats = &server.command_stats;
    let call = stats.start(spec);
    let reply = execute_spec(server, client, spec, args);
    if let Some(call) = call {
        stats.finish(call, reply.is_error());
    }
    reply
}

/// [`execute`] once the command is known and counted.
fn execute_spec(
    server: &Arc<Server>,
    client: &mut ClientState,
    spec: &'static CommandSpec,
    args: Vec<Bytes>,
) -> Reply {
    client.info.set_last_command(spec, client.now_ms);
    if !client.authenticated && !spec.has_flag("no-auth") {
        transactions::flag_error_in_multi(client);
        return Reply::error("NOAUTH Authentication required.");
    }
    if let Err(reply) = crate::acl::check(server, client, spec, &args) {
        transactions::flag_error_in_multi(client);
        return reply;
    }
    // Cluster mode: the one slot-owner lookup that may redirect the client.
    if let Some(cluster) = server.cluster.get() {
        if let Some(redirect) = crate::cluster::router::check(cluster, server, client, spec, &args) {
            return redirect;
        }
    }
    if client.in_resp2_pubsub() {
        if let Some(reply) = pubsub::refuse_in_subscribed_mode(spec) {
            return reply;
        }
    }
    if spec.is_write() {
        if let Some(p) = server.persistence.get() {
            if let Err(reply) = p.admit(spec, &args) {
                transactions::flag_error_in_multi(client);
                return reply;
            }
        }
    }
    if client.in_multi() && !spec.has_flag("allow-in-multi") {
        if spec.has_flag("no-multi") {
            transactions::flag_error_in_multi(client);
            return Reply::error("ERR Command not allowed inside a transaction");
        }
        if spec.has_flag("denyoom") && !server.reserve_memory() {
            transactions::flag_error_in_multi(client);
            return err::oom();
        }
        return transactions::queue(client, spec, args);
    }
    if spec.has_flag("denyoom") && !server.reserve_memory() {
        return err::oom();
    }
    if spec.name == "exec" {
        return transactions::exec(server, client);
    }
    run(server, client, spec, &args)
}

/// Runs `spec` with its keys locked.
pub fn run(server: &Arc<Server>, client: &mut ClientState, spec: &CommandSpec, args: &[Bytes]) -> Reply {
    let now = client.now_ms;
    let ks = &server.keyspace;
    let mut db = match spec.keys {
        Keys::None => ks.lock_none(now),
        Keys::All => ks.lock_all(now),
        k @ Keys::Range { .. } => ks.lock_keys(k.positions(args.len()).map(|i| &args[i]), now),
    };
    if let Some(cluster) = server.cluster.get() {
        // The router looked at key presence before these locks: a slot's mover may have taken
        // the keys since. Checked again here, where the mover cannot interleave.
        if let Some(redirect) =
            crate::cluster::router::recheck(cluster, &mut db, spec, args, client.cluster.tls)
        {
            return redirect;
        }
    }
    if !server.tracking.is_active() && !client.tracking.caching_given {
        let mut ctx = Ctx { db: &mut db, client, server };
        return (spec.handler)(&mut ctx, args);
    }
    // Tracking: the writer's id for NOLOOP, and what it read, recorded under the key locks.
    let _current = crate::server::tracking::CurrentClient::enter(client.id());
    let mut ctx = Ctx { db: &mut db, client, server };
    let reply = (spec.handler)(&mut ctx, args);
    let id = client.id();
    crate::server::tracking::after_command(&server.tracking, &mut client.tracking, id, spec, args);
    reply
}
