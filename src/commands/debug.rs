//! DEBUG: fault injection for the fault-injection tests, refused unless
//! `enable-debug-command` allows the client (as Redis 7). `SLEEP` is Redis's; the rest are
//! ours: `BUS-DROP`, `BUS-DELAY`, `BUS-HEAL` and `BUS-STATUS` act on this node's outbound
//! cluster bus (see `crate::faults`), `FAILPOINT` arms a failpoint in a `failpoints` build.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::args::{parse_f64, parse_i64};
use super::{cmd, container, CommandSpec, Ctx, Keys};
use crate::config::DebugCommand;
use crate::protocol::Reply;

/// Longest DEBUG SLEEP and BUS-DELAY: a client cannot stall a node for longer at once.
const MAX_SLEEP_SECS: f64 = 3600.0;
const MAX_DELAY_MS: i64 = 600_000;
/// Most peers dropped at once (a grid has far fewer members).
const MAX_DROPPED: usize = 1024;

const FLAGS: &[&str] = &["admin", "noscript", "loading", "stale"];

/// DEBUG and its subcommands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    container("debug", "server", "1.0.0", "A container for debugging commands.", &[
        cmd("debug|sleep", 3, FLAGS, Keys::None, "server", "1.0.0", "Stops the server for the given number of seconds (blocks the thread serving the connection: the whole node with threads = 1).", sleep),
        cmd("debug|bus-drop", -3, FLAGS, Keys::None, "server", "7.0.0", "Makes every cluster bus call to the given peers (bus HOST:PORT or node id) fail as if they were unreachable.", bus_drop),
        cmd("debug|bus-delay", 3, FLAGS, Keys::None, "server", "7.0.0", "Holds every outbound cluster bus message for the given milliseconds (0: none).", bus_delay),
        cmd("debug|bus-heal", 2, FLAGS, Keys::None, "server", "7.0.0", "Clears every cluster bus fault.", bus_heal),
        cmd("debug|bus-status", 2, FLAGS, Keys::None, "server", "7.0.0", "Shows the cluster bus faults in force.", bus_status),
        cmd("debug|failpoint", 4, FLAGS, Keys::None, "server", "7.0.0", "Sets a failpoint's actions (the fail crate's syntax; off disarms it); needs a failpoints build.", failpoint),
        cmd("debug|help", 2, &["loading", "stale"], Keys::None, "server", "1.0.0", "Shows helpful text about the different subcommands.", help),
    ]),
];

/// Redis 7's refusal when `enable-debug-command` does not allow the client.
const NOT_ALLOWED: &str = "ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\", you can run it from a local connection, otherwise you need to set this option in the configuration file, and then restart the server.";

/// Whether the calling client may run DEBUG.
fn allowed(ctx: &Ctx<'_, '_>) -> Result<(), Reply> {
    let ok = match ctx.server.config.read().enable_debug_command {
        DebugCommand::No => false,
        DebugCommand::Yes => true,
        DebugCommand::Local => crate::acl::protected::is_loopback(ctx.client.info.addr.ip()),
    };
    if ok {
        Ok(())
    } else {
        Err(Reply::error(NOT_ALLOWED))
    }
}

fn sleep(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    let Some(secs) = parse_f64(&args[2]).filter(|s| s.is_finite() && *s >= 0.0) else {
        return Reply::error("ERR value is not a valid float");
    };
    if secs > MAX_SLEEP_SECS {
        return Reply::error(format!("ERR DEBUG SLEEP is limited to {MAX_SLEEP_SECS} seconds"));
    }
    // Blocking on purpose: the point is to stall the node, as Redis's DEBUG SLEEP does.
    std::thread::sleep(Duration::from_secs_f64(secs));
    Reply::ok()
}

fn bus_drop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    let mut peers = Vec::new();
    for a in &args[2..] {
        match resolve_peer(ctx, a) {
            Ok(addr) => peers.push(addr),
            Err(e) => return Reply::error(e),
        }
    }
    let faults = crate::faults::bus();
    if faults.describe().0.len() + peers.len() > MAX_DROPPED {
        return Reply::error(format!("ERR at most {MAX_DROPPED} peers can be dropped"));
    }
    tracing::warn!(peers = ?peers, "DEBUG BUS-DROP: cluster bus calls to these peers now fail");
    faults.drop_peers(peers);
    Reply::ok()
}

/// A peer named as a bus address (`127.0.0.1:17001`) or by node id (looked up in the map).
fn resolve_peer(ctx: &Ctx<'_, '_>, arg: &[u8]) -> Result<SocketAddr, String> {
    let text =
        std::str::from_utf8(arg).map_err(|_| "ERR a peer is a bus HOST:PORT or a node id".to_string())?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let shown: String = text.chars().take(64).collect();
    let id: crate::cluster::NodeId =
        text.parse().map_err(|_| format!("ERR '{shown}' is neither a bus HOST:PORT nor a node id"))?;
    let cluster = ctx.server.cluster.get().ok_or("ERR a node id needs cluster mode")?;
    let view = cluster.view();
    let index = view.map.index_of(&id).ok_or_else(|| format!("ERR unknown node id {shown}"))?;
    let bus = crate::cluster::consensus::bus_address(view.map.node(index));
    bus.parse().map_err(|_| format!("ERR node {shown} has bus address {bus}, not an IP address and port"))
}

fn bus_delay(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    match parse_i64(&args[2]) {
        Some(ms) if (0..=MAX_DELAY_MS).contains(&ms) => {
            tracing::warn!(ms, "DEBUG BUS-DELAY: outbound cluster bus messages are held");
            crate::faults::bus().set_delay(Duration::from_millis(ms as u64));
            Reply::ok()
        }
        _ => Reply::error(format!("ERR the delay is milliseconds between 0 and {MAX_DELAY_MS}")),
    }
}

fn bus_heal(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    tracing::warn!("DEBUG BUS-HEAL: cluster bus faults cleared");
    crate::faults::bus().heal();
    Reply::ok()
}

fn bus_status(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    let (dropped, delay) = crate::faults::bus().describe();
    let dropped: Vec<String> = dropped.iter().map(SocketAddr::to_string).collect();
    Reply::Bulk(Bytes::from(format!("dropped:{}\r\ndelay_ms:{delay}\r\n", dropped.join(","))))
}

fn failpoint(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if let Err(r) = allowed(ctx) {
        return r;
    }
    let (Ok(name), Ok(actions)) = (std::str::from_utf8(&args[2]), std::str::from_utf8(&args[3])) else {
        return Reply::error("ERR failpoint names and actions are text");
    };
    match crate::faults::configure(name, actions) {
        Ok(()) => {
            tracing::warn!(name, actions, "DEBUG FAILPOINT set");
            Reply::ok()
        }
        Err(e) => Reply::error(format!("ERR {e}")),
    }
}

fn help(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let mut lines: Vec<String> = [
        "DEBUG <subcommand> [<arg> ...]. Subcommands are:",
        "SLEEP <seconds>",
        "    Stop the server for <seconds> (decimals allowed).",
        "BUS-DROP <bus-host:port|node-id> [...]",
        "    Make every cluster bus call to these peers fail as if they were unreachable.",
        "BUS-DELAY <milliseconds>",
        "    Hold every outbound cluster bus message this long (0: none).",
        "BUS-HEAL",
        "    Clear every cluster bus fault.",
        "BUS-STATUS",
        "    Show the cluster bus faults in force.",
        "FAILPOINT <name> <actions>",
        "    Set a failpoint (needs a failpoints build; 'return' or 'panic' crash the node, 'off' disarms).",
        "    Failpoints:",
    ]
    .map(String::from)
    .to_vec();
    lines.extend(crate::faults::FAILPOINTS.iter().map(|(n, what)| format!("    {n}: {what}")));
    lines.push("HELP".into());
    lines.push("    Print this help.".into());
    Reply::Array(lines.into_iter().map(|l| Reply::Simple(l.into())).collect())
}
