//! Hash commands: the per-field values sessions are stored in. Small hashes stay compact and
//! in insertion order (Redis's listpack), so HGETALL, HKEYS and HSCAN reply in Redis's order.
//! HINCRBYFLOAT shares INCRBYFLOAT's emulation of Redis's long double arithmetic.

use bytes::Bytes;
use rand::Rng;

use super::args::{is, parse_cursor, parse_i64, parse_scan_options};
use super::strings::long_double::Ld;
use super::strings::{parse_long_double, LongDouble};
use super::{cmd, err, wrong_arity, CommandSpec, Ctx, Keys};
use crate::protocol::{Reply, RespVersion};
use crate::store::glob::glob_match;
use crate::store::{Db, HashValue, Value};

/// Hash commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("hset", -4, &["write", "denyoom", "fast"], Keys::ONE, "hash", "2.0.0", "Creates or modifies the value of a field in a hash.", hset),
    cmd("hsetnx", 4, &["write", "denyoom", "fast"], Keys::ONE, "hash", "2.0.0", "Sets the value of a field in a hash only when the field doesn't exist.", hsetnx),
    cmd("hmset", -4, &["write", "denyoom", "fast"], Keys::ONE, "hash", "2.0.0", "Sets the values of multiple fields.", hmset),
    cmd("hget", 3, &["readonly", "fast"], Keys::ONE, "hash", "2.0.0", "Returns the value of a field in a hash.", hget),
    cmd("hmget", -3, &["readonly", "fast"], Keys::ONE, "hash", "2.0.0", "Returns the values of all fields in a hash.", hmget),
    cmd("hdel", -3, &["write", "fast"], Keys::ONE, "hash", "2.0.0", "Deletes one or more fields and their values from a hash. Deletes the hash if no fields remain.", hdel),
    cmd("hexists", 3, &["readonly", "fast"], Keys::ONE, "hash", "2.0.0", "Determines whether a field exists in a hash.", hexists),
    cmd("hlen", 2, &["readonly", "fast"], Keys::ONE, "hash", "2.0.0", "Returns the number of fields in a hash.", hlen),
    cmd("hstrlen", 3, &["readonly", "fast"], Keys::ONE, "hash", "3.2.0", "Returns the length of the value of a field.", hstrlen),
    cmd("hkeys", 2, &["readonly"], Keys::ONE, "hash", "2.0.0", "Returns all fields in a hash.", hkeys),
    cmd("hvals", 2, &["readonly"], Keys::ONE, "hash", "2.0.0", "Returns all values in a hash.", hvals),
    cmd("hgetall", 2, &["readonly"], Keys::ONE, "hash", "2.0.0", "Returns all fields and values in a hash.", hgetall),
    cmd("hincrby", 4, &["write", "denyoom", "fast"], Keys::ONE, "hash", "2.0.0", "Increments the integer value of a field in a hash by a number. Uses 0 as initial value if the field doesn't exist.", hincrby),
    cmd("hincrbyfloat", 4, &["write", "denyoom", "fast"], Keys::ONE, "hash", "2.6.0", "Increments the floating point value of a field by a number. Uses 0 as initial value if the field doesn't exist.", hincrbyfloat),
    cmd("hscan", -3, &["readonly"], Keys::ONE, "hash", "2.8.0", "Iterates over fields and values of a hash.", hscan),
    cmd("hrandfield", -2, &["readonly"], Keys::ONE, "hash", "6.2.0", "Returns one or more random fields from a hash.", hrandfield),
];

/// The hash at `key` for a read (counts a keyspace hit or miss): Ok(None) when missing.
fn hash_read<'e>(db: &'e mut Db<'_>, key: &[u8]) -> Result<Option<&'e HashValue>, Reply> {
    match db.get(key) {
        None => Ok(None),
        Some(e) => match &e.value {
            Value::Hash(h) => Ok(Some(h)),
            _ => Err(err::wrong_type()),
        },
    }
}

/// The hash at `key` for a write, created empty when missing and `create` is set. The caller
/// must call [`Db::modified`] afterwards.
fn hash_write<'e>(db: &'e mut Db<'_>, key: &[u8], create: bool) -> Result<Option<&'e mut HashValue>, Reply> {
    let exists = match db.get_quiet(key) {
        None => false,
        Some(e) if matches!(e.value, Value::Hash(_)) => true,
        Some(_) => return Err(err::wrong_type()),
    };
    if !exists {
        if !create {
            return Ok(None);
        }
        db.set(key, Value::Hash(Box::default()), 0);
    }
    match db.get_quiet(key).map(|e| &mut e.value) {
        Some(Value::Hash(h)) => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// Sets every field/value pair of `args[2..]`; returns how many fields are new.
fn set_pairs(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Result<i64, Reply> {
    let limits = ctx.db.keyspace().settings.hash_limits();
    let h = hash_write(ctx.db, &args[1], true)?.expect("created");
    let added = args[2..].chunks(2).filter(|p| h.insert(&p[0], &p[1], limits)).count();
    ctx.db.modified(&args[1]);
    Ok(added as i64)
}

fn hset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if !args.len().is_multiple_of(2) {
        return wrong_arity("hset");
    }
    set_pairs(ctx, args).map(Reply::Int).unwrap_or_else(|e| e)
}

fn hmset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if !args.len().is_multiple_of(2) {
        return wrong_arity("hmset");
    }
    set_pairs(ctx, args).map(|_| Reply::ok()).unwrap_or_else(|e| e)
}

fn hsetnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let limits = ctx.db.keyspace().settings.hash_limits();
    let h = match hash_write(ctx.db, &args[1], true) {
        Ok(h) => h.expect("created"),
        Err(e) => return e,
    };
    if h.get(&args[2]).is_some() {
        return Reply::Int(0);
    }
    h.insert(&args[2], &args[3], limits);
    ctx.db.modified(&args[1]);
    Reply::Int(1)
}

fn hget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => h.and_then(|h| h.get(&args[2])).map(Reply::bulk).unwrap_or(Reply::Nil),
        Err(e) => e,
    }
}

fn hmget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Array(
            args[2..]
                .iter()
                .map(|f| h.and_then(|h| h.get(f)).map(Reply::bulk).unwrap_or(Reply::Nil))
                .collect(),
        ),
        Err(e) => e,
    }
}

fn hdel(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let h = match hash_write(ctx.db, &args[1], false) {
        Ok(Some(h)) => h,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let mut deleted = 0;
    for f in &args[2..] {
        if h.remove(f) {
            deleted += 1;
            if h.is_empty() {
                break;
            }
        }
    }
    if deleted > 0 {
        ctx.db.modified(&args[1]);
    }
    Reply::Int(deleted)
}

fn hexists(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Int(h.is_some_and(|h| h.get(&args[2]).is_some()) as i64),
        Err(e) => e,
    }
}

fn hlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Int(h.map_or(0, |h| h.len()) as i64),
        Err(e) => e,
    }
}

fn hstrlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Int(h.and_then(|h| h.get(&args[2])).map_or(0, |v| v.len()) as i64),
        Err(e) => e,
    }
}

fn hkeys(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Array(h.map(|h| h.iter().map(|(f, _)| Reply::bulk(f)).collect()).unwrap_or_default()),
        Err(e) => e,
    }
}

fn hvals(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Array(h.map(|h| h.iter().map(|(_, v)| Reply::bulk(v)).collect()).unwrap_or_default()),
        Err(e) => e,
    }
}

fn hgetall(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    match hash_read(ctx.db, &args[1]) {
        Ok(h) => Reply::Map(
            h.map(|h| h.iter().map(|(f, v)| (Reply::bulk(f), Reply::bulk(v))).collect()).unwrap_or_default(),
        ),
        Err(e) => e,
    }
}

fn hincrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let Some(incr) = parse_i64(&args[3]) else {
        return err::not_integer();
    };
    let limits = ctx.db.keyspace().settings.hash_limits();
    let h = match hash_write(ctx.db, &args[1], true) {
        Ok(h) => h.expect("created"),
        Err(e) => return e,
    };
    let old = match h.get(&args[2]) {
        None => 0,
        Some(v) => match parse_i64(v) {
            Some(n) => n,
            None => return Reply::error("ERR hash value is not an integer"),
        },
    };
    let Some(new) = old.checked_add(incr) else {
        return err::overflow();
    };
    h.insert(&args[2], itoa::Buffer::new().format(new).as_bytes(), limits);
    ctx.db.modified(&args[1]);
    Reply::Int(new)
}

fn hincrbyfloat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    // Redis adds in long double and prints with `%.17Lf`: the same emulation as INCRBYFLOAT.
    let incr = match parse_long_double(&args[3]) {
        Some(LongDouble::Finite(v)) => v,
        Some(LongDouble::Infinite) => return Reply::error("ERR value is NaN or Infinity"),
        None => return err::not_float(),
    };
    let limits = ctx.db.keyspace().settings.hash_limits();
    let h = match hash_write(ctx.db, &args[1], true) {
        Ok(h) => h.expect("created"),
        Err(e) => return e,
    };
    let old = match h.get(&args[2]) {
        None => Some(Ld::ZERO),
        Some(v) => match parse_long_double(v) {
            Some(LongDouble::Finite(n)) => Some(n),
            Some(LongDouble::Infinite) => None,
            None => return Reply::error("ERR hash value is not a float"),
        },
    };
    let Some(new) = old.and_then(|o| o.checked_add(incr)) else {
        return Reply::error("ERR increment would produce NaN or Infinity");
    };
    let text = new.format_human();
    h.insert(&args[2], text.as_bytes(), limits);
    ctx.db.modified(&args[1]);
    Reply::bulk_string(text)
}

/// Validates a SCAN cursor as Redis's `strtoul` check does (sign allowed, no spaces).
fn hscan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if parse_cursor(&args[2]).is_none() {
        return Reply::error("ERR invalid cursor");
    }
    let h = match hash_read(ctx.db, &args[1]) {
        Ok(Some(h)) => h,
        Ok(None) => return Reply::Array(vec![Reply::bulk(b"0"), Reply::Array(vec![])]),
        Err(e) => return e,
    };
    let pattern = match parse_scan_options(args, 3, false) {
        Ok(o) => o.pattern,
        Err(e) => return e,
    };
    // The whole hash in one reply, as Redis does for compact hashes.
    let mut items = Vec::new();
    for (f, v) in h.iter() {
        if pattern.is_none_or(|p| glob_match(p, f, false)) {
            items.push(Reply::bulk(f));
            items.push(Reply::bulk(v));
        }
    }
    Reply::Array(vec![Reply::bulk(b"0"), Reply::Array(items)])
}

fn hrandfield(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if args.len() == 2 {
        return match hash_read(ctx.db, &args[1]) {
            Ok(Some(h)) => {
                let i = rand::thread_rng().gen_range(0..h.len());
                h.iter().nth(i).map(|(f, _)| Reply::bulk(f)).unwrap_or(Reply::Nil)
            }
            Ok(None) => Reply::Nil,
            Err(e) => e,
        };
    }
    let count =
        match parse_i64(&args[2]) {
            None => return err::not_integer(),
            Some(i64::MIN) => return Reply::error(
                "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807",
            ),
            Some(n) => n,
        };
    if args.len() > 4 || (args.len() == 4 && !is(&args[3], "WITHVALUES")) {
        return err::syntax();
    }
    let with_values = args.len() == 4;
    if with_values && !(-i64::MAX / 2..=i64::MAX / 2).contains(&count) {
        return Reply::error("ERR value is out of range");
    }
    let resp3 = ctx.client.resp == RespVersion::Resp3;
    let h = match hash_read(ctx.db, &args[1]) {
        Ok(Some(h)) => h,
        Ok(None) => return Reply::Array(vec![]),
        Err(e) => return e,
    };
    if count == 0 {
        return Reply::Array(vec![]);
    }
    let entries: Vec<(&[u8], &[u8])> = h.iter().collect();
    let n = count.unsigned_abs() as usize;
    let mut rng = rand::thread_rng();
    let picked: Vec<usize> = if count < 0 || count == 1 {
        // Repeats allowed.
        (0..n).map(|_| rng.gen_range(0..entries.len())).collect()
    } else if n >= entries.len() {
        // The whole hash, in its order.
        (0..entries.len()).collect()
    } else {
        rand::seq::index::sample(&mut rng, entries.len(), n).into_vec()
    };
    let mut out = Vec::with_capacity(picked.len().min(1 << 20) * if with_values && !resp3 { 2 } else { 1 });
    for i in picked {
        let (f, v) = entries[i];
        match (with_values, resp3) {
            (true, true) => out.push(Reply::Array(vec![Reply::bulk(f), Reply::bulk(v)])),
            (true, false) => {
                out.push(Reply::bulk(f));
                out.push(Reply::bulk(v));
            }
            _ => out.push(Reply::bulk(f)),
        }
    }
    Reply::Array(out)
}
