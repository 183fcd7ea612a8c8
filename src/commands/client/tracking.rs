//! CLIENT TRACKING, CACHING, GETREDIR and TRACKINGINFO: the commands of client-side caching,
//! with Redis 7.0's option parsing, replies and errors. The tables live in
//! [`crate::server::tracking`].

use bytes::Bytes;

use super::super::args::is;
use super::super::{err, Ctx};
use crate::protocol::Reply;
use crate::server::tracking::ConnTracking;

/// CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP].
pub fn tracking(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let mut mode = ConnTracking { on: true, ..Default::default() };
    let mut target = None;
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        let a = &args[j];
        if is(a, "redirect") && more {
            j += 1;
            if mode.redirect != 0 {
                return Reply::error("ERR A client can only redirect to a single other client");
            }
            let id = match std::str::from_utf8(&args[j]).ok().and_then(|s| s.parse::<i64>().ok()) {
                Some(id) => id,
                None => return Reply::error("ERR value is not an integer or out of range"),
            };
            match ctx.server.clients.snapshot().into_iter().find(|c| c.id as i64 == id) {
                Some(c) => {
                    mode.redirect = c.id;
                    target = Some(c);
                }
                None => return Reply::error("ERR The client ID you want redirect to does not exist"),
            }
        } else if is(a, "bcast") {
            mode.bcast = true;
        } else if is(a, "optin") {
            mode.optin = true;
        } else if is(a, "optout") {
            mode.optout = true;
        } else if is(a, "noloop") {
            mode.noloop = true;
        } else if is(a, "prefix") && more {
            j += 1;
            mode.prefixes.push(args[j].clone());
        } else {
            return err::syntax();
        }
        j += 1;
    }
    let cur = &ctx.client.tracking;
    if is(&args[2], "on") {
        if !mode.bcast && !mode.prefixes.is_empty() {
            return Reply::error("ERR PREFIX option requires BCAST mode to be enabled");
        }
        if cur.on && cur.bcast != mode.bcast {
            return Reply::error(
                "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        if mode.bcast && (mode.optin || mode.optout) {
            return Reply::error("ERR OPTIN and OPTOUT are not compatible with BCAST");
        }
        if mode.optin && mode.optout {
            return Reply::error("ERR You can't specify both OPTIN mode and OPTOUT mode");
        }
        if (mode.optin && cur.optout) || (mode.optout && cur.optin) {
            return Reply::error(
                "ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        if mode.bcast {
            if let Err(e) = check_prefixes(&cur.prefixes, &mode.prefixes) {
                return e;
            }
        }
        // As Redis: a second ON adds prefixes and replaces the flags; CACHING stays as it was.
        let mut prefixes = if cur.on { cur.prefixes.clone() } else { Vec::new() };
        for p in &mode.prefixes {
            if !prefixes.contains(p) {
                prefixes.push(p.clone());
            }
        }
        if mode.bcast && mode.prefixes.is_empty() && !prefixes.iter().any(|p| p.is_empty()) {
            prefixes.push(Bytes::new());
        }
        mode.caching_given = cur.caching_given;
        mode.prefixes = prefixes;
        ctx.server.tracking.enable(&ctx.client.info, target, &mode);
        ctx.client.tracking = mode;
        Reply::ok()
    } else if is(&args[2], "off") {
        ctx.server.tracking.disable(ctx.client.id());
        let caching = ctx.client.tracking.caching_given;
        ctx.client.tracking = ConnTracking { caching_given: caching, ..Default::default() };
        Reply::ok()
    } else {
        err::syntax()
    }
}

/// Redis refuses prefixes of one client where one starts another.
fn check_prefixes(existing: &[Bytes], new: &[Bytes]) -> Result<(), Reply> {
    let overlaps = |a: &[u8], b: &[u8]| a.starts_with(b) || b.starts_with(a);
    for (i, p) in new.iter().enumerate() {
        for e in existing {
            if e != p && overlaps(p, e) {
                return Err(Reply::error(format!(
                    "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(e)
                )));
            }
        }
        for q in &new[i + 1..] {
            if overlaps(p, q) {
                return Err(Reply::error(format!(
                    "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(q)
                )));
            }
        }
    }
    Ok(())
}

/// CLIENT CACHING YES|NO: opts the next command in (OPTIN) or out (OPTOUT).
pub fn caching(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let t = &mut ctx.client.tracking;
    if !t.on || !(t.optin || t.optout) {
        return Reply::error(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        );
    }
    if is(&args[2], "yes") {
        if !t.optin {
            return Reply::error(
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            );
        }
    } else if is(&args[2], "no") {
        if !t.optout {
            return Reply::error(
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            );
        }
    } else {
        return err::syntax();
    }
    t.caching_given = true;
    Reply::ok()
}

/// CLIENT GETREDIR: the redirect target, 0 without one, -1 when not tracking.
pub fn getredir(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let t = &ctx.client.tracking;
    Reply::Int(if t.on { t.redirect as i64 } else { -1 })
}

/// CLIENT TRACKINGINFO: flags, redirect and prefixes, as Redis 7.0 orders them.
pub fn trackinginfo(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let t = &ctx.client.tracking;
    let mut flags = Vec::new();
    if !t.on {
        flags.push("off");
    } else {
        flags.push("on");
        if t.bcast {
            flags.push("bcast");
        }
        if t.optin {
            flags.push("optin");
            if t.caching_given {
                flags.push("caching-yes");
            }
        }
        if t.optout {
            flags.push("optout");
            if t.caching_given {
                flags.push("caching-no");
            }
        }
        if t.noloop {
            flags.push("noloop");
        }
        if t.redirect != 0 && !ctx.server.clients.snapshot().iter().any(|c| c.id == t.redirect) {
            flags.push("broken_redirect");
        }
    }
    let redirect = if t.on { t.redirect as i64 } else { -1 };
    let prefixes = t.prefixes.iter().map(|p| Reply::Bulk(p.clone())).collect();
    Reply::Map(vec![
        (bulk("flags"), Reply::Set(flags.into_iter().map(bulk).collect())),
        (bulk("redirect"), Reply::Int(redirect)),
        (bulk("prefixes"), Reply::Array(prefixes)),
    ])
}

fn bulk(s: &'static str) -> Reply {
    Reply::Bulk(Bytes::from_static(s.as_bytes()))
}
