//! String commands: GET, SET and the rest of Redis's string family.

use bytes::Bytes;

use std::sync::atomic::Ordering;

use super::args::{format_float, is, parse_f64, parse_i64};
use super::{cmd, err, wrong_arity, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::store::{Db, Entry, Value};

/// Keys at every other argument from 1 on (MSET, MSETNX).
const PAIRS: Keys = Keys::Range { first: 1, last: -1, step: 2 };

/// String commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("get", 2, &["readonly", "fast"], Keys::ONE, "string", "1.0.0", "Returns the string value of a key.", get),
    cmd("set", -3, &["write", "denyoom"], Keys::ONE, "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.", set),
    cmd("setnx", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Set the string value of a key only when the key doesn't exist.", setnx),
    cmd("setex", 4, &["write", "denyoom"], Keys::ONE, "string", "2.0.0", "Sets the string value and expiration time of a key. Creates the key if it doesn't exist.", setex),
    cmd("psetex", 4, &["write", "denyoom"], Keys::ONE, "string", "2.6.0", "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist.", psetex),
    cmd("mget", -2, &["readonly", "fast"], Keys::ALL_ARGS, "string", "1.0.0", "Atomically returns the string values of one or more keys.", mget),
    cmd("mset", -3, &["write", "denyoom"], PAIRS, "string", "1.0.1", "Atomically creates or modifies the string values of one or more keys.", mset),
    cmd("msetnx", -3, &["write", "denyoom"], PAIRS, "string", "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist.", msetnx),
    cmd("getset", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value.", getset),
    cmd("getdel", 2, &["write", "fast"], Keys::ONE, "string", "6.2.0", "Returns the string value of a key after deleting the key.", getdel),
    cmd("getex", -2, &["write", "fast"], Keys::ONE, "string", "6.2.0", "Returns the string value of a key after setting its expiration time.", getex),
    cmd("incr", 2, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", incr),
    cmd("decr", 2, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", decr),
    cmd("incrby", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.", incrby),
    cmd("decrby", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.", decrby),
    cmd("incrbyfloat", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.", incrbyfloat),
    cmd("append", 3, &["write", "denyoom", "fast"], Keys::ONE, "string", "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist.", append),
    cmd("strlen", 2, &["readonly", "fast"], Keys::ONE, "string", "2.2.0", "Returns the length of a string value.", strlen),
    cmd("getrange", 4, &["readonly"], Keys::ONE, "string", "2.4.0", "Returns a substring of the string stored at a key.", getrange),
    cmd("setrange", 4, &["write", "denyoom"], Keys::ONE, "string", "2.2.0", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.", setrange),
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

/// Options of SET and GETEX, parsed as Redis's `parseExtendedStringArgumentsOrReply`.
#[derive(Default)]
struct ExtOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    /// The expiry argument with (unit in ms, absolute); the last of one kind wins.
    expire: Option<(&'a [u8], u64, bool)>,
}

impl ExtOptions<'_> {
    /// Validates the expiry argument, if any, into absolute unix milliseconds.
    fn expire_at(&self, now: u64, cmd: &str) -> Result<Option<u64>, Reply> {
        self.expire.map(|(arg, unit, absolute)| parse_expire(arg, unit, absolute, now, cmd)).transpose()
    }
}

/// Parses options from `args[start..]`; `set` enables NX/XX/GET/KEEPTTL, else PERSIST (GETEX).
fn parse_ext_options(args: &[Bytes], start: usize, set: bool) -> Result<ExtOptions<'_>, Reply> {
    let mut o = ExtOptions::default();
    let mut i = start;
    while i < args.len() {
        let a = &args[i];
        let next = args.get(i + 1);
        let kind = if is(a, "EX") {
            Some((1000, false))
        } else if is(a, "PX") {
            Some((1, false))
        } else if is(a, "EXAT") {
            Some((1000, true))
        } else if is(a, "PXAT") {
            Some((1, true))
        } else {
            None
        };
        if set && is(a, "NX") && !o.xx {
            o.nx = true;
        } else if set && is(a, "XX") && !o.nx {
            o.xx = true;
        } else if set && is(a, "GET") {
            o.get = true;
        } else if set && is(a, "KEEPTTL") && o.expire.is_none() {
            o.keepttl = true;
        } else if !set && is(a, "PERSIST") && o.expire.is_none() {
            o.persist = true;
        } else if let (Some((unit, absolute)), Some(next)) = (kind, next) {
            // One kind of expiry only; the same kind twice takes the last.
            if o.keepttl || o.persist || o.expire.is_some_and(|(_, u, a)| (u, a) != (unit, absolute)) {
                return Err(err::syntax());
            }
            o.expire = Some((next, unit, absolute));
            i += 1;
        } else {
            return Err(err::syntax());
        }
        i += 1;
    }
    Ok(o)
}

fn set(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let opts = match parse_ext_options(args, 3, true) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let expire = match opts.expire_at(ctx.db.now(), "set") {
        Ok(e) => e,
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
    let ttl = match (expire, opts.keepttl) {
        (Some(at), _) => Ttl::At(at),
        (None, true) => Ttl::Keep,
        (None, false) => Ttl::Clear,
    };
    set_string(ctx.db, key, &args[2], ttl, existing.flatten());
    old.unwrap_or(Reply::ok())
}

fn setnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if ctx.db.get_quiet(&args[1]).is_some() {
        return Reply::Int(0);
    }
    set_string(ctx.db, &args[1], &args[2], Ttl::Clear, None);
    Reply::Int(1)
}

/// SETEX and PSETEX: SET with a relative expiry in `unit_ms`.
fn set_with_expire(ctx: &mut Ctx<'_, '_>, args: &[Bytes], unit_ms: u64, name: &str) -> Reply {
    match parse_expire(&args[2], unit_ms, false, ctx.db.now(), name) {
        Ok(at) => {
            set_string(ctx.db, &args[1], &args[3], Ttl::At(at), None);
            Reply::ok()
        }
        Err(e) => e,
    }
}

fn setex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    set_with_expire(ctx, args, 1000, "setex")
}

fn psetex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    set_with_expire(ctx, args, 1, "psetex")
}

fn mget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let values = args[1..].iter().map(|k| match ctx.db.get(k) {
        Some(Entry { value: Value::Str(s), .. }) => Reply::bulk(s),
        _ => Reply::Nil,
    });
    Reply::Array(values.collect())
}

fn mset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len().is_multiple_of(2) {
        return wrong_arity("mset");
    }
    for pair in args[1..].chunks(2) {
        set_string(ctx.db, &pair[0], &pair[1], Ttl::Clear, None);
    }
    Reply::ok()
}

fn msetnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len().is_multiple_of(2) {
        return wrong_arity("msetnx");
    }
    if args[1..].iter().step_by(2).any(|k| ctx.db.get_quiet(k).is_some()) {
        return Reply::Int(0);
    }
    for pair in args[1..].chunks(2) {
        set_string(ctx.db, &pair[0], &pair[1], Ttl::Clear, None);
    }
    Reply::Int(1)
}

fn getset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let old = match get_str(ctx.db, &args[1]) {
        Ok(v) => v.map(Reply::bulk).unwrap_or(Reply::Nil),
        Err(e) => return e,
    };
    set_string(ctx.db, &args[1], &args[2], Ttl::Clear, None);
    old
}

fn getdel(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let reply = match get_str(ctx.db, &args[1]) {
        Ok(Some(v)) => Reply::bulk(v),
        Ok(None) => return Reply::Nil,
        Err(e) => return e,
    };
    ctx.db.remove(&args[1]);
    reply
}

/// GETEX key [EX|PX|EXAT|PXAT time | PERSIST]: the value, then the TTL change; an absolute
/// time in the past deletes the key.
fn getex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let opts = match parse_ext_options(args, 2, false) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let key = &args[1];
    let reply = match get_str(ctx.db, key) {
        Ok(Some(v)) => Reply::bulk(v),
        Ok(None) => return Reply::Nil,
        Err(e) => return e,
    };
    let now = ctx.db.now();
    match opts.expire_at(now, "getex") {
        Err(e) => return e,
        Ok(Some(at)) if at <= now && opts.expire.is_some_and(|(_, _, absolute)| absolute) => {
            ctx.db.remove(key);
        }
        Ok(Some(at)) => {
            ctx.db.set_expire(key, Some(at));
        }
        Ok(None) if opts.persist => {
            if ctx.db.get_quiet(key).is_some_and(|e| e.expire_at().is_some()) {
                ctx.db.set_expire(key, None);
            }
        }
        Ok(None) => {}
    }
    reply
}

/// Replaces the string of an existing `key` in place (keeping its TTL), or creates it.
fn store_str(db: &mut Db<'_>, key: &[u8], value: Box<[u8]>) {
    match db.get_quiet(key) {
        Some(e) => {
            e.value = Value::Str(value);
            db.modified(key);
        }
        None => {
            db.set(key, Value::Str(value), 0);
        }
    }
}

/// INCR, DECR, INCRBY, DECRBY: adds `incr` to the integer at `key` (0 when missing).
fn incr_by(db: &mut Db<'_>, key: &[u8], incr: i64) -> Reply {
    let current = match db.get_quiet(key) {
        None => 0,
        Some(Entry { value: Value::Str(s), .. }) => match parse_i64(s) {
            Some(v) => v,
            None => return err::not_integer(),
        },
        Some(_) => return err::wrong_type(),
    };
    let Some(new) = current.checked_add(incr) else {
        return err::overflow();
    };
    let mut buf = itoa::Buffer::new();
    store_str(db, key, buf.format(new).as_bytes().into());
    Reply::Int(new)
}

fn incr(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    incr_by(ctx.db, &args[1], 1)
}

fn decr(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    incr_by(ctx.db, &args[1], -1)
}

fn incrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match parse_i64(&args[2]) {
        Some(incr) => incr_by(ctx.db, &args[1], incr),
        None => err::not_integer(),
    }
}

fn decrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match parse_i64(&args[2]) {
        None => err::not_integer(),
        Some(i64::MIN) => Reply::error("ERR decrement would overflow"),
        Some(decr) => incr_by(ctx.db, &args[1], -decr),
    }
}

/// Parses a float as `strtold` does, including the hexadecimal form (`0x1.8p3`).
fn parse_long_double(b: &[u8]) -> Option<f64> {
    parse_f64(b).or_else(|| parse_hex_float(b))
}

fn parse_hex_float(b: &[u8]) -> Option<f64> {
    let (neg, rest) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let rest = rest.strip_prefix(b"0x").or_else(|| rest.strip_prefix(b"0X"))?;
    let (mantissa, exp) = match rest.iter().position(|c| *c == b'p' || *c == b'P') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.iter().position(|c| *c == b'.') {
        Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
        None => (mantissa, &[][..]),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for &c in int.iter().chain(frac) {
        v = v * 16.0 + (c as char).to_digit(16)? as f64;
    }
    let mut e = -4 * frac.len() as i32;
    if let Some(exp) = exp {
        let s = std::str::from_utf8(exp).ok()?;
        if s.is_empty() || !s.trim_start_matches(['+', '-']).bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        e = e.saturating_add(s.parse::<i32>().ok()?);
    }
    let v = v * 2f64.powi(e);
    Some(if neg { -v } else { v })
}

/// Formats an INCRBYFLOAT result as Redis's `%.17Lf` with trailing zeros removed.
fn format_incr_float(v: f64) -> String {
    let s = format_float(v);
    let decimals = s.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals <= 17 {
        return s;
    }
    let fixed = format!("{v:.17}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

fn incrbyfloat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let key = &args[1];
    let current = match ctx.db.get_quiet(key) {
        None => 0.0,
        Some(Entry { value: Value::Str(s), .. }) => match parse_long_double(s) {
            Some(v) => v,
            None => return err::not_float(),
        },
        Some(_) => return err::wrong_type(),
    };
    let Some(incr) = parse_long_double(&args[2]) else {
        return err::not_float();
    };
    let new = current + incr;
    if !new.is_finite() {
        return Reply::error("ERR increment would produce NaN or Infinity");
    }
    let text = format_incr_float(new);
    store_str(ctx.db, key, text.as_bytes().into());
    Reply::bulk_string(text)
}

/// Refuses a string longer than `proto-max-bulk-len`, as Redis's `checkStringLength`.
fn check_length(ctx: &Ctx<'_, '_>, size: u64, append: u64) -> Result<(), Reply> {
    let max = ctx.server.proto_max_bulk_len.load(Ordering::Relaxed) as u64;
    match size.checked_add(append) {
        Some(total) if total <= max => Ok(()),
        _ => Err(Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")),
    }
}

fn append(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let (key, add) = (&args[1], &args[2]);
    let old_len = match ctx.db.get_quiet(key) {
        None => {
            ctx.db.set(key, Value::Str(add.as_ref().into()), 0);
            return Reply::Int(add.len() as i64);
        }
        Some(Entry { value: Value::Str(s), .. }) => s.len(),
        Some(_) => return err::wrong_type(),
    };
    if let Err(e) = check_length(ctx, old_len as u64, add.len() as u64) {
        return e;
    }
    if let Some(Entry { value: Value::Str(s), .. }) = ctx.db.get_quiet(key) {
        let mut v = std::mem::take(s).into_vec();
        v.extend_from_slice(add);
        *s = v.into_boxed_slice();
    }
    ctx.db.modified(key);
    Reply::Int((old_len + add.len()) as i64)
}

fn strlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match get_str(ctx.db, &args[1]) {
        Ok(v) => Reply::Int(v.map_or(0, |s| s.len() as i64)),
        Err(e) => e,
    }
}

fn getrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let (Some(start), Some(end)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
        return err::not_integer();
    };
    let s = match get_str(ctx.db, &args[1]) {
        Ok(Some(s)) => s,
        Ok(None) => return Reply::bulk(b""),
        Err(e) => return e,
    };
    if start < 0 && end < 0 && start > end {
        return Reply::bulk(b"");
    }
    let len = s.len() as i128;
    let (mut start, mut end) = (start as i128, end as i128);
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    let start = start.max(0);
    let end = end.max(0).min(len - 1);
    if start > end || len == 0 {
        return Reply::bulk(b"");
    }
    Reply::bulk(&s[start as usize..=end as usize])
}

fn setrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let (key, value) = (&args[1], &args[3]);
    let Some(offset) = parse_i64(&args[2]) else {
        return err::not_integer();
    };
    if offset < 0 {
        return Reply::error("ERR offset is out of range");
    }
    let old_len = match ctx.db.get_quiet(key) {
        None => None,
        Some(Entry { value: Value::Str(s), .. }) => Some(s.len()),
        Some(_) => return err::wrong_type(),
    };
    if value.is_empty() {
        return Reply::Int(old_len.unwrap_or(0) as i64);
    }
    if let Err(e) = check_length(ctx, offset as u64, value.len() as u64) {
        return e;
    }
    let offset = offset as usize;
    let write = |v: &mut Vec<u8>| {
        if v.len() < offset + value.len() {
            v.resize(offset + value.len(), 0);
        }
        v[offset..offset + value.len()].copy_from_slice(value);
        v.len()
    };
    let new_len = match ctx.db.get_quiet(key) {
        Some(Entry { value: Value::Str(s), .. }) => {
            let mut v = std::mem::take(s).into_vec();
            let n = write(&mut v);
            *s = v.into_boxed_slice();
            ctx.db.modified(key);
            n
        }
        _ => {
            let mut v = Vec::new();
            let n = write(&mut v);
            ctx.db.set(key, Value::Str(v.into_boxed_slice()), 0);
            n
        }
    };
    Reply::Int(new_len as i64)
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
