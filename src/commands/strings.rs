//! String commands: GET, SET and the rest of Redis's string family.

use bytes::Bytes;

use std::sync::atomic::Ordering;

use super::args::{is, parse_i64};
use super::{cmd, err, wrong_arity, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::store::{Db, Entry, Value};
use long_double::Ld;

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

/// A float operand of INCRBYFLOAT and HINCRBYFLOAT as `strtold` reads it (Redis's `string2ld`).
pub enum LongDouble {
    /// A finite value.
    Finite(Ld),
    /// `inf` or `-inf`.
    Infinite,
}

/// Parses like `string2ld`: no leading space, at most 5 KB, decimal, hexadecimal or `inf`;
/// NaN and overflow are refused.
pub fn parse_long_double(b: &[u8]) -> Option<LongDouble> {
    if b.is_empty() || b.len() >= 5 * 1024 || b[0].is_ascii_whitespace() {
        return None;
    }
    if let Some(v) = Ld::parse_decimal(b) {
        return Some(LongDouble::Finite(v));
    }
    let unsigned = b.strip_prefix(b"-").or_else(|| b.strip_prefix(b"+")).unwrap_or(b);
    if unsigned.eq_ignore_ascii_case(b"inf") || unsigned.eq_ignore_ascii_case(b"infinity") {
        return Some(LongDouble::Infinite);
    }
    parse_hex_float(b).filter(|v| v.is_finite()).map(|v| LongDouble::Finite(Ld::from_f64(v)))
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

fn incrbyfloat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let key = &args[1];
    let current = match ctx.db.get_quiet(key) {
        None => LongDouble::Finite(Ld::ZERO),
        Some(Entry { value: Value::Str(s), .. }) => match parse_long_double(s) {
            Some(v) => v,
            None => return err::not_float(),
        },
        Some(_) => return err::wrong_type(),
    };
    let Some(incr) = parse_long_double(&args[2]) else {
        return err::not_float();
    };
    let sum = match (current, incr) {
        (LongDouble::Finite(a), LongDouble::Finite(b)) => a.checked_add(b),
        _ => None,
    };
    let Some(new) = sum else {
        return Reply::error("ERR increment would produce NaN or Infinity");
    };
    let text = new.format_human();
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

/// Redis's INCRBYFLOAT arithmetic: x87 80-bit `long double` (64-bit mantissa) emulated
/// exactly, parsed as `strtold` and printed as `%.17Lf`, so the digits match Redis's.
pub mod long_double {
    use std::cmp::Ordering;

    /// An unsigned big integer, little-endian 32-bit limbs, no trailing zero limbs.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Big(Vec<u32>);

    impl Big {
        fn from_u128(mut v: u128) -> Big {
            let mut l = Vec::new();
            while v > 0 {
                l.push(v as u32);
                v >>= 32;
            }
            Big(l)
        }
        fn is_zero(&self) -> bool {
            self.0.is_empty()
        }
        fn trim(mut self) -> Big {
            while self.0.last() == Some(&0) {
                self.0.pop();
            }
            self
        }
        fn bits(&self) -> u64 {
            match self.0.last() {
                None => 0,
                Some(top) => (self.0.len() as u64 - 1) * 32 + (32 - top.leading_zeros() as u64),
            }
        }
        fn bit(&self, i: u64) -> bool {
            let limb = (i / 32) as usize;
            limb < self.0.len() && (self.0[limb] >> (i % 32)) & 1 == 1
        }
        /// Whether any bit below `i` is set.
        fn any_below(&self, i: u64) -> bool {
            let full = ((i / 32) as usize).min(self.0.len());
            self.0[..full].iter().any(|&l| l != 0)
                || (full < self.0.len()
                    && !i.is_multiple_of(32)
                    && self.0[full] & ((1u32 << (i % 32)) - 1) != 0)
        }
        fn mul_small_add(mut self, m: u32, a: u32) -> Big {
            let mut carry = a as u64;
            for l in self.0.iter_mut() {
                let v = *l as u64 * m as u64 + carry;
                *l = v as u32;
                carry = v >> 32;
            }
            if carry > 0 {
                self.0.push(carry as u32);
            }
            self.trim()
        }
        fn pow10(mut self, n: u64) -> Big {
            for _ in 0..n / 9 {
                self = self.mul_small_add(1_000_000_000, 0);
            }
            self.mul_small_add(10u32.pow((n % 9) as u32), 0)
        }
        fn shl(&self, n: u64) -> Big {
            if self.is_zero() {
                return self.clone();
            }
            let (limbs, bits) = ((n / 32) as usize, (n % 32) as u32);
            let mut out = vec![0u32; limbs];
            let mut carry = 0u32;
            for &l in &self.0 {
                out.push((l << bits) | carry);
                carry = if bits == 0 { 0 } else { l >> (32 - bits) };
            }
            out.push(carry);
            Big(out).trim()
        }
        fn shr(&self, n: u64) -> Big {
            let (limbs, bits) = ((n / 32) as usize, (n % 32) as u32);
            if limbs >= self.0.len() {
                return Big(Vec::new());
            }
            let src = &self.0[limbs..];
            let out = (0..src.len())
                .map(|i| {
                    let hi = if bits == 0 { 0 } else { src.get(i + 1).map_or(0, |h| h << (32 - bits)) };
                    (src[i] >> bits) | hi
                })
                .collect();
            Big(out).trim()
        }
        fn cmp(&self, o: &Big) -> Ordering {
            self.0.len().cmp(&o.0.len()).then_with(|| self.0.iter().rev().cmp(o.0.iter().rev()))
        }
        fn add(&self, o: &Big) -> Big {
            let mut out = Vec::with_capacity(self.0.len().max(o.0.len()) + 1);
            let mut carry = 0u64;
            for i in 0..self.0.len().max(o.0.len()) {
                let v = *self.0.get(i).unwrap_or(&0) as u64 + *o.0.get(i).unwrap_or(&0) as u64 + carry;
                out.push(v as u32);
                carry = v >> 32;
            }
            out.push(carry as u32);
            Big(out).trim()
        }
        /// `self - o`, with `self >= o`.
        fn sub(&self, o: &Big) -> Big {
            let mut out = Vec::with_capacity(self.0.len());
            let mut borrow = 0i64;
            for i in 0..self.0.len() {
                let mut v = self.0[i] as i64 - *o.0.get(i).unwrap_or(&0) as i64 - borrow;
                borrow = (v < 0) as i64;
                if v < 0 {
                    v += 1 << 32;
                }
                out.push(v as u32);
            }
            Big(out).trim()
        }
        /// Quotient (which must fit in 128 bits) and whether a remainder is left.
        fn div(&self, d: &Big) -> (u128, bool) {
            let mut rem = self.clone();
            let mut q = 0u128;
            let top = self.bits() as i64 - d.bits() as i64;
            for k in (0..=top.max(-1)).rev() {
                let shifted = d.shl(k as u64);
                if rem.cmp(&shifted) != Ordering::Less {
                    rem = rem.sub(&shifted);
                    q |= 1 << k;
                }
            }
            (q, !rem.is_zero())
        }
        /// Divides by a small number, returning the remainder.
        fn div_small(&mut self, d: u32) -> u32 {
            let mut rem = 0u64;
            for l in self.0.iter_mut().rev() {
                let v = (rem << 32) | *l as u64;
                *l = (v / d as u64) as u32;
                rem = v % d as u64;
            }
            *self = std::mem::take(self).trim();
            rem as u32
        }
        fn to_decimal(&self) -> String {
            let mut n = self.clone();
            let mut chunks = Vec::new();
            while !n.is_zero() {
                chunks.push(n.div_small(1_000_000_000));
            }
            let mut s = chunks.pop().map_or("0".to_string(), |c| c.to_string());
            for c in chunks.iter().rev() {
                s.push_str(&format!("{c:09}"));
            }
            s
        }
    }

    /// Largest binary exponent (of the top mantissa bit) a long double holds.
    const MAX_EXP: i64 = 16383;
    /// Smallest normal one; smaller values are flushed to zero.
    const MIN_EXP: i64 = -16382;

    /// A finite long double: `(-1)^neg * m * 2^e`, `m` with its top bit set (or zero).
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Ld {
        neg: bool,
        m: u64,
        e: i64,
    }

    impl Ld {
        /// Zero.
        pub const ZERO: Ld = Ld { neg: false, m: 0, e: 0 };

        /// Rounds `n * 2^e` (plus a sticky bit below it) to 64 bits, half to even. None on
        /// overflow.
        fn round(neg: bool, n: &Big, e: i64, sticky: bool) -> Option<Ld> {
            let bits = n.bits();
            if bits == 0 {
                return Some(Ld { neg, ..Ld::ZERO });
            }
            let (mut m, mut e) = if bits <= 64 {
                let v = n.0.iter().rev().fold(0u64, |a, &l| (a << 32) | l as u64);
                (v << (64 - bits), e - (64 - bits) as i64)
            } else {
                let drop = bits - 64;
                let v = n.shr(drop).0.iter().rev().fold(0u64, |a, &l| (a << 32) | l as u64);
                let half = n.bit(drop - 1);
                let rest = sticky || n.any_below(drop - 1);
                let mut v = v as u128;
                if half && (rest || v & 1 == 1) {
                    v += 1;
                }
                if v == 1 << 64 {
                    (1u64 << 63, e + drop as i64 + 1)
                } else {
                    (v as u64, e + drop as i64)
                }
            };
            if e + 63 > MAX_EXP {
                return None;
            }
            if e + 63 < MIN_EXP {
                (m, e) = (0, 0);
            }
            Some(Ld { neg, m, e })
        }

        /// From an f64 (exact).
        pub fn from_f64(v: f64) -> Ld {
            if v == 0.0 {
                return Ld::ZERO;
            }
            let bits = v.to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i64;
            let frac = bits & ((1 << 52) - 1);
            let (mant, e) = if exp == 0 { (frac, -1074) } else { (frac | 1 << 52, exp - 1075) };
            Ld::round(v < 0.0, &Big::from_u128(mant as u128), e, false).unwrap_or(Ld::ZERO)
        }

        /// Parses a plain decimal (`[+-]digits[.digits][e[+-]digits]`) as `strtold`
        /// rounds it. None when it is not one, or overflows.
        pub fn parse_decimal(s: &[u8]) -> Option<Ld> {
            let (neg, mut rest) = match s.first()? {
                b'-' => (true, &s[1..]),
                b'+' => (false, &s[1..]),
                _ => (false, s),
            };
            let mut digits = Big(Vec::new());
            let (mut n_digits, mut scale) = (0u64, 0i64);
            let mut seen_dot = false;
            while let Some(&c) = rest.first() {
                if c.is_ascii_digit() {
                    digits = digits.mul_small_add(10, (c - b'0') as u32);
                    n_digits += 1;
                    scale -= seen_dot as i64;
                } else if c == b'.' && !seen_dot {
                    seen_dot = true;
                } else {
                    break;
                }
                rest = &rest[1..];
            }
            if n_digits == 0 {
                return None;
            }
            if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
                let exp = std::str::from_utf8(exp).ok()?;
                let body = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let v: i64 = body.parse().unwrap_or(i64::MAX / 4).min(100_000);
                scale += if exp.starts_with('-') { -v } else { v };
            } else if !rest.is_empty() {
                return None;
            }
            if digits.is_zero() {
                return Some(Ld { neg, ..Ld::ZERO });
            }
            if scale > 6000 {
                return None;
            }
            if scale < -6000 - n_digits as i64 {
                return None;
            }
            if scale >= 0 {
                return Ld::round(neg, &digits.pow10(scale as u64), 0, false);
            }
            // digits / 10^-scale: a quotient of 66+ bits, then rounding.
            let den = Big::from_u128(1).pow10((-scale) as u64);
            let s = 66 + den.bits() as i64 - digits.bits() as i64;
            let (num, den) =
                if s >= 0 { (digits.shl(s as u64), den) } else { (digits, den.shl((-s) as u64)) };
            let (q, rem) = num.div(&den);
            // Like strtold's ERANGE: an underflow to zero is refused.
            Ld::round(neg, &Big::from_u128(q), -s, rem).filter(|v| v.m != 0)
        }

        /// The sum, rounded to a long double; None on overflow.
        pub fn checked_add(self, o: Ld) -> Option<Ld> {
            if self.m == 0 {
                return Some(o);
            }
            if o.m == 0 {
                return Some(self);
            }
            // Normalised mantissas: (e, m) orders by magnitude. A far smaller term cannot
            // move the rounded result.
            let (hi, lo) = if (self.e, self.m) >= (o.e, o.m) { (self, o) } else { (o, self) };
            if hi.e - lo.e > 130 {
                return Some(hi);
            }
            let emin = hi.e.min(lo.e);
            let a = Big::from_u128(hi.m as u128).shl((hi.e - emin) as u64);
            let b = Big::from_u128(lo.m as u128).shl((lo.e - emin) as u64);
            if hi.neg == lo.neg {
                return Ld::round(hi.neg, &a.add(&b), emin, false);
            }
            match a.cmp(&b) {
                Ordering::Equal => Some(Ld::ZERO),
                Ordering::Greater => Ld::round(hi.neg, &a.sub(&b), emin, false),
                Ordering::Less => Ld::round(lo.neg, &b.sub(&a), emin, false),
            }
        }

        /// `%.17Lf` with trailing zeros (and a trailing dot) removed, `-0` as `0`.
        pub fn format_human(self) -> String {
            let m = Big::from_u128(self.m as u128);
            let text = if self.e >= 0 {
                m.shl(self.e as u64).to_decimal()
            } else {
                let shift = (-self.e) as u64;
                let x = m.pow10(17);
                let mut q = x.shr(shift);
                if shift >= 1 && x.bit(shift - 1) && (x.any_below(shift - 1) || q.bit(0)) {
                    q = q.add(&Big::from_u128(1));
                }
                let digits = q.to_decimal();
                let digits = format!("{digits:0>18}");
                let (int, frac) = digits.split_at(digits.len() - 17);
                let frac = frac.trim_end_matches('0');
                if frac.is_empty() {
                    int.to_string()
                } else {
                    format!("{int}.{frac}")
                }
            };
            if self.neg && text != "0" {
                format!("-{text}")
            } else {
                text
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Ld;

        fn sum(a: &str, b: &str) -> String {
            let a = Ld::parse_decimal(a.as_bytes()).unwrap();
            let b = Ld::parse_decimal(b.as_bytes()).unwrap();
            a.checked_add(b).unwrap().format_human()
        }

        #[test]
        fn sums_print_as_redis_long_double() {
            assert_eq!(sum("1000", "0.1"), "1000.09999999999999998");
            assert_eq!(sum("100", "0.1"), "100.1");
            assert_eq!(sum("12345.678", "0.001"), "12345.67900000000000027");
            assert_eq!(sum("0.2", "0.1"), "0.3");
            assert_eq!(sum("3.3", "1.1"), "4.4");
            assert_eq!(sum("1e15", "0.3"), "1000000000000000.29998779296875");
            assert_eq!(sum("123456789.123", "1"), "123456790.12299999999959255");
            assert_eq!(sum("99.99", "0.01"), "100");
            assert_eq!(sum("5200", "1e20"), "100000000000000005200");
            assert_eq!(sum("0.3", "1e-20"), "0.3");
            assert_eq!(sum("10", "-10.00000000000000000001"), "0");
            assert_eq!(sum("1", "-1"), "0");
            assert_eq!(sum("-1.5", "0"), "-1.5");
            assert_eq!(sum("1e400", "0").len(), 401);
        }

        #[test]
        fn out_of_range_and_malformed_inputs_are_refused() {
            for bad in
                ["1e5000", "1e-5000", "1e99999999999", "", ".", "1e", "1e+", "--1", "1.2.3", "0x10", "inf"]
            {
                assert!(Ld::parse_decimal(bad.as_bytes()).is_none(), "{bad}");
            }
            assert_eq!(Ld::parse_decimal(b"-0.0").unwrap().format_human(), "0");
            assert_eq!(Ld::from_f64(-24.0).format_human(), "-24");
        }
    }
}
