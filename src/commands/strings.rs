//! String commands: GET, SET and the rest of Redis's string family.

use bytes::Bytes;

use super::args::{is, parse_i64};
use super::{cmd, err, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::store::{Db, Value};

/// String commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("get", 2, &["readonly", "fast"], Keys::ONE, "string", "1.0.0", "Returns the string value of a key.", get),
    cmd("set", -3, &["write", "denyoom"], Keys::ONE, "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.", set),
];

/// The string at `key`: Ok(None) when missing, Err(WRONGTYPE) when not a string.
pub fn get_str<'e>(db: &'e mut Db<'_>, key: &[u8]) -> Result<Option<&'e [u8]>, Reply> {
    match db.get(key) {
        None => Ok(None),
        Some(e) => match &e.value {
            Value::Str(s) => Ok(Some(s)),
            _ => Err(err::wrong_type()),
        },
    }
}

fn get(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match get_str(ctx.db, &args[1]) {
        Ok(Some(v)) => Reply::bulk(v),
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

/// How a write treats the key's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Remove any TTL.
    Clear,
    /// Keep the TTL the key has.
    Keep,
    /// Expire at this unix time in milliseconds.
    At(u64),
}

/// Parses an expiry argument (EX/PX/EXAT/PXAT) into absolute unix milliseconds, with Redis's
/// errors. `cmd` names the command in the error text.
pub fn parse_expire(arg: &[u8], unit_ms: u64, absolute: bool, now: u64, cmd: &str) -> Result<u64, Reply> {
    let v = parse_i64(arg).ok_or_else(err::not_integer)?;
    if v <= 0 || (unit_ms == 1000 && v > i64::MAX / 1000) {
        return Err(err::invalid_expire(cmd));
    }
    let ms = v * unit_ms as i64;
    let at = if absolute { Some(ms) } else { ms.checked_add(now as i64) };
    at.map(|a| a as u64).ok_or_else(|| err::invalid_expire(cmd))
}

#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    expire: Option<u64>,
    /// (unit in ms, absolute) of the expiry option given.
    expire_kind: Option<(u64, bool)>,
}

fn parse_set_options(args: &[Bytes], now: u64) -> Result<SetOptions, Reply> {
    let mut o = SetOptions::default();
    let mut i = 3;
    while i < args.len() {
        let a = &args[i];
        let next = args.get(i + 1);
        if is(a, "NX") && !o.xx {
            o.nx = true;
        } else if is(a, "XX") && !o.nx {
            o.xx = true;
        } else if is(a, "GET") {
            o.get = true;
        } else if is(a, "KEEPTTL") && o.expire_kind.is_none() {
            o.keepttl = true;
        } else if let (Some(next), false) = (next, o.keepttl) {
            let (unit, absolute) = if is(a, "EX") {
                (1000, false)
            } else if is(a, "PX") {
                (1, false)
            } else if is(a, "EXAT") {
                (1000, true)
            } else if is(a, "PXAT") {
                (1, true)
            } else {
                return Err(err::syntax());
            };
            // One kind of expiry only; the same kind twice takes the last.
            if o.expire_kind.is_some_and(|k| k != (unit, absolute)) {
                return Err(err::syntax());
            }
            o.expire = Some(parse_expire(next, unit, absolute, now, "set")?);
            o.expire_kind = Some((unit, absolute));
            i += 1;
        } else {
            return Err(err::syntax());
        }
        i += 1;
    }
    Ok(o)
}

fn set(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let opts = match parse_set_options(args, ctx.db.now()) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let key = &args[1];
    let old = if opts.get {
        match get_str(ctx.db, key) {
            Ok(v) => Some(v.map(Reply::bulk).unwrap_or(Reply::Nil)),
            Err(e) => return e,
        }
    } else {
        None
    };
    let existing = ctx.db.get_quiet(key).map(|e| e.expire_at());
    if (opts.nx && existing.is_some()) || (opts.xx && existing.is_none()) {
        return old.unwrap_or(Reply::Nil);
    }
    let ttl = match (opts.expire, opts.keepttl) {
        (Some(at), _) => Ttl::At(at),
        (None, true) => Ttl::Keep,
        (None, false) => Ttl::Clear,
    };
    set_string(ctx.db, key, &args[2], ttl, existing.flatten());
    old.unwrap_or(Reply::ok())
}

/// Stores a string value with the TTL rule `ttl`; `current_ttl` is the key's TTL before.
pub fn set_string(db: &mut Db<'_>, key: &[u8], value: &[u8], ttl: Ttl, current_ttl: Option<u64>) {
    let expire_at = match ttl {
        Ttl::Clear => 0,
        Ttl::Keep => current_ttl.unwrap_or(0),
        Ttl::At(at) => at,
    };
    db.set(key, Value::Str(value.into()), expire_at);
}
