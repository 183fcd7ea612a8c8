//! Generic key commands: DEL, EXISTS, TYPE, expiry, RENAME, KEYS, SCAN and friends.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::args::{is, parse_cursor, parse_i64, parse_scan_options, ScanOptions};
use super::{cmd, err, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::store::glob::glob_match;
use crate::store::{Db, Entry};

/// Source and destination keys (RENAME, RENAMENX).
const TWO_KEYS: Keys = Keys::Range { first: 1, last: 2, step: 1 };

/// Generic key commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("del", -2, &["write"], Keys::ALL_ARGS, "generic", "1.0.0", "Deletes one or more keys.", del),
    cmd("unlink", -2, &["write", "fast"], Keys::ALL_ARGS, "generic", "4.0.0", "Asynchronously deletes one or more keys.", del),
    cmd("exists", -2, &["readonly", "fast"], Keys::ALL_ARGS, "generic", "1.0.0", "Determines whether one or more keys exist.", exists),
    cmd("type", 2, &["readonly", "fast"], Keys::ONE, "generic", "1.0.0", "Determines the type of value stored at a key.", type_),
    cmd("expire", -3, &["write", "fast"], Keys::ONE, "generic", "1.0.0", "Sets the expiration time of a key in seconds.", expire),
    cmd("pexpire", -3, &["write", "fast"], Keys::ONE, "generic", "2.6.0", "Sets the expiration time of a key in milliseconds.", pexpire),
    cmd("expireat", -3, &["write", "fast"], Keys::ONE, "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp.", expireat),
    cmd("pexpireat", -3, &["write", "fast"], Keys::ONE, "generic", "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp.", pexpireat),
    cmd("expiretime", 2, &["readonly", "fast"], Keys::ONE, "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp.", expiretime),
    cmd("pexpiretime", 2, &["readonly", "fast"], Keys::ONE, "generic", "7.0.0", "Returns the expiration time of a key as a Unix milliseconds timestamp.", pexpiretime),
    cmd("ttl", 2, &["readonly", "fast"], Keys::ONE, "generic", "1.0.0", "Returns the expiration time in seconds of a key.", ttl),
    cmd("pttl", 2, &["readonly", "fast"], Keys::ONE, "generic", "2.6.0", "Returns the expiration time in milliseconds of a key.", pttl),
    cmd("persist", 2, &["write", "fast"], Keys::ONE, "generic", "2.2.0", "Removes the expiration time of a key.", persist),
    cmd("rename", 3, &["write"], TWO_KEYS, "generic", "1.0.0", "Renames a key and overwrites the destination.", rename),
    cmd("renamenx", 3, &["write", "fast"], TWO_KEYS, "generic", "1.0.0", "Renames a key only when the target key name doesn't exist.", renamenx),
    cmd("keys", 2, &["readonly"], Keys::All, "generic", "1.0.0", "Returns all key names that match a pattern.", keys),
    cmd("scan", -2, &["readonly"], Keys::All, "generic", "2.8.0", "Iterates over the key names in the database.", scan),
    cmd("randomkey", 1, &["readonly"], Keys::All, "generic", "1.0.0", "Returns a random key name from the database.", randomkey),
    cmd("touch", -2, &["readonly", "fast"], Keys::ALL_ARGS, "generic", "3.2.1", "Returns the number of existing keys out of those specified after updating the time they were last accessed.", touch),
];

/// Looks `key` up like Redis's `lookupKeyReadWithFlags(LOOKUP_NOTOUCH)`: counts a hit or a
/// miss but leaves the key's LRU/LFU data alone.
fn read_notouch<'e>(db: &'e mut Db<'_>, key: &[u8]) -> Option<&'e mut Entry> {
    let stats = &db.keyspace().stats;
    let found = db.peek(key);
    let stat = if found.is_some() { &stats.hits } else { &stats.misses };
    stat.fetch_add(1, Ordering::Relaxed);
    found
}

fn del(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Int(args[1..].iter().filter(|k| ctx.db.remove(k).is_some()).count() as i64)
}

fn exists(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Int(args[1..].iter().filter(|k| read_notouch(ctx.db, k).is_some()).count() as i64)
}

fn type_(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::simple(read_notouch(ctx.db, &args[1]).map(|e| e.value.type_name()).unwrap_or("none"))
}

fn touch(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Int(args[1..].iter().filter(|k| ctx.db.get(k).is_some()).count() as i64)
}

/// The NX/XX/GT/LT options of the EXPIRE family.
#[derive(Default)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn parse_expire_flags(args: &[Bytes]) -> Result<ExpireFlags, Reply> {
    let mut f = ExpireFlags::default();
    for a in &args[3..] {
        if is(a, "NX") {
            f.nx = true;
        } else if is(a, "XX") {
            f.xx = true;
        } else if is(a, "GT") {
            f.gt = true;
        } else if is(a, "LT") {
            f.lt = true;
        } else {
            return Err(Reply::error(format!("ERR Unsupported option {}", String::from_utf8_lossy(a))));
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible"));
    }
    if f.gt && f.lt {
        return Err(Reply::error("ERR GT and LT options at the same time are not compatible"));
    }
    Ok(f)
}

/// EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT, as Redis's `expireGenericCommand`: `relative`
/// adds the command time, `unit_ms` scales the argument; a time in the past deletes the key.
fn expire_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], relative: bool, unit_ms: i64, name: &str) -> Reply {
    let flags = match parse_expire_flags(args) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let Some(mut when) = parse_i64(&args[2]) else {
        return err::not_integer();
    };
    if unit_ms == 1000 {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return err::invalid_expire(name);
        }
        when *= 1000;
    }
    let now = ctx.db.now() as i64;
    let base = if relative { now } else { 0 };
    if when > i64::MAX - base {
        return err::invalid_expire(name);
    }
    when += base;
    let key = &args[1];
    let Some(entry) = ctx.db.get_quiet(key) else {
        return Reply::Int(0);
    };
    let current = entry.expire_at().map(|t| t as i64);
    let refused = (flags.nx && current.is_some())
        || (flags.xx && current.is_none())
        || (flags.gt && current.is_none_or(|c| when <= c))
        || (flags.lt && current.is_some_and(|c| when >= c));
    if refused {
        return Reply::Int(0);
    }
    if when <= now {
        ctx.db.remove(key);
    } else {
        ctx.db.set_expire(key, Some(when as u64));
    }
    Reply::Int(1)
}

fn expire(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    expire_generic(ctx, args, true, 1000, "expire")
}

fn pexpire(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    expire_generic(ctx, args, true, 1, "pexpire")
}

fn expireat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    expire_generic(ctx, args, false, 1000, "expireat")
}

fn pexpireat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    expire_generic(ctx, args, false, 1, "pexpireat")
}

/// TTL, PTTL, EXPIRETIME and PEXPIRETIME: -2 for a missing key, -1 without TTL; seconds are
/// rounded to the nearest as Redis does.
fn ttl_generic(ctx: &mut Ctx<'_, '_>, key: &[u8], in_ms: bool, absolute: bool) -> Reply {
    let now = ctx.db.now() as i64;
    let Some(entry) = read_notouch(ctx.db, key) else {
        return Reply::Int(-2);
    };
    let Some(at) = entry.expire_at() else {
        return Reply::Int(-1);
    };
    let t = if absolute { at as i64 } else { (at as i64 - now).max(0) };
    Reply::Int(if in_ms { t } else { (t + 500) / 1000 })
}

fn ttl(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    ttl_generic(ctx, &args[1], false, false)
}

fn pttl(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    ttl_generic(ctx, &args[1], true, false)
}

fn expiretime(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    ttl_generic(ctx, &args[1], false, true)
}

fn pexpiretime(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    ttl_generic(ctx, &args[1], true, true)
}

fn persist(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let key = &args[1];
    match ctx.db.get_quiet(key).map(|e| e.expire_at().is_some()) {
        Some(true) => {
            ctx.db.set_expire(key, None);
            Reply::Int(1)
        }
        _ => Reply::Int(0),
    }
}

/// RENAME and RENAMENX: the value moves with its TTL; the same name is a no-op for an
/// existing key.
fn rename_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], nx: bool) -> Reply {
    let (src, dst) = (&args[1], &args[2]);
    if ctx.db.get_quiet(src).is_none() {
        return err::no_such_key();
    }
    let done = if nx { Reply::Int(1) } else { Reply::ok() };
    if src == dst {
        return if nx { Reply::Int(0) } else { done };
    }
    if nx && ctx.db.get_quiet(dst).is_some() {
        return Reply::Int(0);
    }
    let entry = ctx.db.remove(src).expect("looked up above");
    let expire_at = entry.expire_at().unwrap_or(0);
    ctx.db.set(dst, entry.value, expire_at);
    done
}

fn rename(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    rename_generic(ctx, args, false)
}

fn renamenx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    rename_generic(ctx, args, true)
}

fn keys(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    Reply::Array(ctx.db.keys(&args[1]).iter().map(|k| Reply::bulk(k)).collect())
}

/// Parses a SCAN cursor as Redis's `strtoul` check does: optional sign, digits, no space;
/// an empty cursor is 0 and a negative one wraps.
/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. The cursor is a slot number (see
/// `Db::scan`), so every key present for the whole iteration is returned.
fn scan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let Some(cursor) = parse_cursor(&args[1]) else {
        return Reply::error("ERR invalid cursor");
    };
    let ScanOptions { count, pattern, type_name } = match parse_scan_options(args, 2, true) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let (next, found) = ctx.db.scan(cursor, count, |e| {
        pattern.is_none_or(|p| glob_match(p, e.key(), false))
            && type_name.is_none_or(|t| t.eq_ignore_ascii_case(e.value.type_name().as_bytes()))
    });
    Reply::Array(vec![
        Reply::bulk_string(next.to_string()),
        Reply::Array(found.iter().map(|k| Reply::bulk(k)).collect()),
    ])
}

fn randomkey(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    ctx.db.random_key().map(|k| Reply::bulk(&k)).unwrap_or(Reply::Nil)
}
