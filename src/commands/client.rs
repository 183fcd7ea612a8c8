//! CLIENT and its subcommands: naming, listing and killing connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::args::{is, parse_i64};
use super::{cmd, container, err, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::server::ClientInfo;

mod tracking;

/// CLIENT.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[container("client", "connection", "2.4.0", "A container for client connection commands.", SUBCOMMANDS)];

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("client|id", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "5.0.0", "Returns the unique client ID of the connection.", id),
    cmd("client|setname", 3, &["noscript", "loading", "stale"], Keys::None, "connection", "2.6.9", "Sets the connection name.", setname),
    cmd("client|getname", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "2.6.9", "Returns the name of the connection.", getname),
    cmd("client|setinfo", 4, &["noscript", "loading", "stale"], Keys::None, "connection", "7.2.0", "Sets information specific to the client or connection.", setinfo),
    cmd("client|list", -2, &["admin", "noscript", "loading", "stale"], Keys::None, "connection", "2.4.0", "Lists open connections.", list),
    cmd("client|info", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "6.2.0", "Returns information about the connection.", info),
    cmd("client|kill", -3, &["admin", "noscript", "loading", "stale"], Keys::None, "connection", "2.4.0", "Terminates open connections.", kill),
    cmd("client|no-evict", 3, &["admin", "noscript", "loading", "stale"], Keys::None, "connection", "7.0.0", "Sets the client eviction mode of the connection.", no_evict),
    cmd("client|tracking", -3, &["noscript", "loading", "stale"], Keys::None, "connection", "6.0.0", "Controls server-assisted client-side caching for the connection.", tracking::tracking),
    cmd("client|caching", 3, &["noscript", "loading", "stale"], Keys::None, "connection", "6.0.0", "Instructs the server whether to track the keys in the next request.", tracking::caching),
    cmd("client|getredir", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "6.0.0", "Returns the client ID to which the connection's tracking notifications are redirected.", tracking::getredir),
    cmd("client|trackinginfo", 2, &["noscript", "loading", "stale"], Keys::None, "connection", "6.2.0", "Returns information about server-assisted client-side caching for the connection.", tracking::trackinginfo),
    cmd("client|help", 2, &["loading", "stale"], Keys::None, "connection", "5.0.0", "Returns helpful text about the different subcommands.", help),
];

/// Checks a client name as Redis does: no spaces, newlines or special characters.
pub fn validate_name(name: &[u8]) -> Result<(), Reply> {
    if !printable(name) {
        return Err(Reply::error("ERR Client names cannot contain spaces, newlines or special characters."));
    }
    Ok(())
}

/// Whether every byte is printable ASCII other than space, as CLIENT LIST's format needs.
fn printable(s: &[u8]) -> bool {
    s.iter().all(|c| (b'!'..=b'~').contains(c))
}

fn id(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(ctx.client.id() as i64)
}

fn setname(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if let Err(e) = validate_name(&args[2]) {
        return e;
    }
    *ctx.client.info.name.lock() = (!args[2].is_empty()).then(|| args[2].clone());
    Reply::ok()
}

fn getname(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    match ctx.client.info.name.lock().clone() {
        Some(n) => Reply::Bulk(n),
        None => Reply::Nil,
    }
}

/// CLIENT SETINFO LIB-NAME|LIB-VER value (Redis 7.2); an empty value clears it.
fn setinfo(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let attr = String::from_utf8_lossy(&args[2]);
    let lib_name = is(&args[2], "LIB-NAME");
    if !lib_name && !is(&args[2], "LIB-VER") {
        return Reply::error(format!("ERR Unrecognized option '{attr}'"));
    }
    if !printable(&args[3]) {
        return Reply::error(format!("ERR {attr} cannot contain spaces, newlines or special characters."));
    }
    let mut lib = ctx.client.info.lib.lock();
    if lib_name {
        lib.0 = args[3].clone();
    } else {
        lib.1 = args[3].clone();
    }
    Reply::ok()
}

/// Redis's client types; every connection here is a `normal` one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientType {
    Normal,
    Other,
}

fn client_type(name: &[u8]) -> Result<ClientType, Reply> {
    if is(name, "normal") {
        Ok(ClientType::Normal)
    } else if ["slave", "replica", "pubsub", "master"].iter().any(|t| is(name, t)) {
        Ok(ClientType::Other)
    } else {
        Err(Reply::error(format!("ERR Unknown client type '{}'", String::from_utf8_lossy(name))))
    }
}

/// CLIENT LIST and CLIENT INFO reply: verbatim text in RESP3, a bulk string in RESP2.
fn lines(clients: &[Arc<ClientInfo>]) -> Reply {
    let mut out = String::new();
    for c in clients {
        out.push_str(&c.describe());
        out.push('\n');
    }
    Reply::Verbatim(Bytes::from(out))
}

/// CLIENT LIST [TYPE type | ID id ...], as Redis 7.0 parses it.
fn list(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let all = ctx.server.clients.snapshot();
    if args.len() == 2 {
        return lines(&all);
    }
    if args.len() == 4 && is(&args[2], "TYPE") {
        return match client_type(&args[3]) {
            Ok(ClientType::Normal) => lines(&all),
            Ok(ClientType::Other) => lines(&[]),
            Err(e) => e,
        };
    }
    if args.len() > 3 && is(&args[2], "ID") {
        let mut found = Vec::new();
        for a in &args[3..] {
            let Some(id) = parse_i64(a) else { return Reply::error("ERR Invalid client ID") };
            found.extend(all.iter().filter(|c| c.id as i64 == id).cloned());
        }
        return lines(&found);
    }
    err::syntax()
}

fn info(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    lines(std::slice::from_ref(&ctx.client.info))
}

/// Filters of the new CLIENT KILL form.
#[derive(Default)]
struct KillFilter {
    id: Option<u64>,
    addr: Option<Bytes>,
    laddr: Option<Bytes>,
    other_type: bool,
    skip_me: bool,
}

impl KillFilter {
    fn parse(args: &[Bytes]) -> Result<KillFilter, Reply> {
        let mut f = KillFilter { skip_me: true, ..Default::default() };
        let mut i = 2;
        while i < args.len() {
            let Some(value) = args.get(i + 1) else { return Err(err::syntax()) };
            let opt = &args[i];
            if is(opt, "ID") {
                match parse_i64(value) {
                    Some(id) if id >= 1 => f.id = Some(id as u64),
                    _ => return Err(Reply::error("ERR client-id should be greater than 0")),
                }
            } else if is(opt, "TYPE") {
                f.other_type = client_type(value)? == ClientType::Other;
            } else if is(opt, "ADDR") {
                f.addr = Some(value.clone());
            } else if is(opt, "LADDR") {
                f.laddr = Some(value.clone());
            } else if is(opt, "USER") {
                if &value[..] != b"default" {
                    let user = String::from_utf8_lossy(value);
                    return Err(Reply::error(format!("ERR No such user '{user}'")));
                }
            } else if is(opt, "SKIPME") {
                if is(value, "yes") {
                    f.skip_me = true;
                } else if is(value, "no") {
                    f.skip_me = false;
                } else {
                    return Err(err::syntax());
                }
            } else {
                return Err(err::syntax());
            }
            i += 2;
        }
        Ok(f)
    }

    fn matches(&self, c: &ClientInfo, me: u64) -> bool {
        !self.other_type
            && self.id.is_none_or(|id| c.id == id)
            && self.addr.as_ref().is_none_or(|a| c.addr.to_string().as_bytes() == &a[..])
            && self.laddr.as_ref().is_none_or(|a| c.laddr.to_string().as_bytes() == &a[..])
            && !(self.skip_me && c.id == me)
    }
}

/// CLIENT KILL addr:port (old form: OK or an error) or CLIENT KILL filter value ... (the
/// number killed). Killing oneself closes the connection after the reply.
fn kill(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let old_form = args.len() == 3;
    let filter = if old_form {
        KillFilter { addr: Some(args[2].clone()), ..Default::default() }
    } else {
        match KillFilter::parse(args) {
            Ok(f) => f,
            Err(e) => return e,
        }
    };
    let me = ctx.client.id();
    let mut killed = 0;
    for c in ctx.server.clients.snapshot() {
        if !filter.matches(&c, me) {
            continue;
        }
        if c.id == me {
            ctx.client.close_after_reply = true;
        } else {
            c.kill();
        }
        killed += 1;
    }
    match (old_form, killed) {
        (true, 0) => Reply::error("ERR No such client"),
        (true, _) => Reply::ok(),
        (false, n) => Reply::Int(n),
    }
}

fn no_evict(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let on = if is(&args[2], "ON") {
        true
    } else if is(&args[2], "OFF") {
        false
    } else {
        return err::syntax();
    };
    ctx.client.info.no_evict.store(on, Ordering::Relaxed);
    Reply::ok()
}

const HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made from the specified address",
    "    * LADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "NO-EVICT (ON|OFF)",
    "    Protect current client connection from eviction.",
    "HELP",
    "    Prints this help.",
];

fn help(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Array(HELP.iter().map(|l| Reply::simple(*l)).collect())
}
