//! MULTI / EXEC / DISCARD / WATCH / UNWATCH. EXEC locks the shards of every queued command's
//! keys at once and runs them back to back, so a transaction is atomic like Redis's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{cmd, CommandSpec, Ctx, Keys};
use crate::protocol::Reply;
use crate::server::client::Queued;
use crate::server::{ClientState, Server};
use crate::store::clock;

/// Transaction commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("multi", 1, &["noscript", "loading", "stale", "fast", "no-multi-queue", "allow-busy", "allow-in-multi"], Keys::None, "transactions", "1.2.0", "Starts a transaction.", multi),
    cmd("exec", 1, &["noscript", "loading", "stale", "skip-slowlog", "allow-in-multi"], Keys::None, "transactions", "1.2.0", "Executes all commands in a transaction.", |_, _| unreachable_exec()),
    cmd("discard", 1, &["noscript", "loading", "stale", "fast", "allow-busy", "allow-in-multi"], Keys::None, "transactions", "2.0.0", "Discards a transaction.", discard),
    cmd("watch", -2, &["noscript", "loading", "stale", "fast", "allow-busy", "allow-in-multi"], Keys::ALL_ARGS, "transactions", "2.2.0", "Monitors changes to keys to determine the execution of a transaction.", watch),
    cmd("unwatch", 1, &["noscript", "loading", "stale", "fast", "allow-busy"], Keys::None, "transactions", "2.2.0", "Forgets about watched keys of a transaction.", unwatch),
];

fn unreachable_exec() -> Reply {
    Reply::error("ERR EXEC is handled by the dispatcher")
}

/// Marks the open transaction, if any, as failed (a command could not be queued).
pub fn flag_error_in_multi(client: &mut ClientState) {
    if client.in_multi() {
        client.multi_error = true;
    }
}

/// Queues a command inside MULTI.
pub fn queue(client: &mut ClientState, spec: &'static CommandSpec, args: Vec<Bytes>) -> Reply {
    if let Some(q) = client.multi.as_mut() {
        q.push(Queued { spec, args });
    }
    Reply::simple("QUEUED")
}

fn multi(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    if ctx.client.in_multi() {
        return Reply::error("ERR MULTI calls can not be nested");
    }
    ctx.client.multi = Some(Vec::new());
    ctx.client.multi_error = false;
    ctx.client.info.in_multi.store(true, Ordering::Relaxed);
    Reply::ok()
}

fn end_multi(client: &mut ClientState) -> Vec<Queued> {
    client.multi_error = false;
    client.info.in_multi.store(false, Ordering::Relaxed);
    client.multi.take().unwrap_or_default()
}

fn discard(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    if !ctx.client.in_multi() {
        return Reply::error("ERR DISCARD without MULTI");
    }
    end_multi(ctx.client);
    unwatch_all(ctx.server, ctx.client);
    Reply::ok()
}

fn watch(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    if ctx.client.in_multi() {
        return Reply::error("ERR WATCH inside MULTI is not allowed");
    }
    for key in &args[1..] {
        if ctx.client.watched.iter().any(|(k, _)| k == key) {
            continue;
        }
        let live = ctx.db.watch(key, &ctx.client.watch_flag);
        ctx.client.watched.push((key.clone(), !live));
    }
    ctx.client.info.watching.store(ctx.client.watched.len() as u64, Ordering::Relaxed);
    Reply::ok()
}

fn unwatch(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    // Queued inside MULTI it runs while EXEC holds the shard locks; EXEC unwatches every key
    // when it ends, so there is nothing to do (and locking again would deadlock).
    if !ctx.client.in_exec {
        unwatch_all(ctx.server, ctx.client);
    }
    Reply::ok()
}

/// Drops every WATCH of `client` (UNWATCH, EXEC, DISCARD, disconnect).
pub fn unwatch_all(server: &Server, client: &mut ClientState) {
    if client.watched.is_empty() {
        client.watch_flag.store(false, Ordering::Release);
        return;
    }
    let keys = std::mem::take(&mut client.watched);
    let mut db = server.keyspace.lock_keys(keys.iter().map(|(k, _)| k), clock::now_ms());
    for (key, _) in &keys {
        db.unwatch(key, &client.watch_flag);
    }
    drop(db);
    client.watch_flag.store(false, Ordering::Release);
    client.info.watching.store(0, Ordering::Relaxed);
}

/// The queue bound of a Postgres-backed key space is checked again at EXEC: a transaction
/// queued while the queue had room must not write past it once it is full. Like Redis when
/// memory is full at EXEC (`-EXECABORT Transaction discarded because of: OOM ...`), the whole
/// transaction is discarded with the reason.
fn refused_by_write_behind(server: &Server, queued: &[Queued]) -> Option<Reply> {
    let p = server.persistence.get()?;
    for q in queued.iter().filter(|q| q.spec.is_write()) {
        if let Err(Reply::Error(msg)) = p.admit(q.spec, &q.args) {
            return Some(Reply::error(format!("EXECABORT Transaction discarded because of: {msg}")));
        }
    }
    None
}

/// EXEC: runs the queued commands atomically, or aborts (EXECABORT, or a nil reply when a
/// watched key changed).
pub fn exec(server: &Arc<Server>, client: &mut ClientState) -> Reply {
    if !client.in_multi() {
        return Reply::error("ERR EXEC without MULTI");
    }
    if client.multi_error {
        end_multi(client);
        unwatch_all(server, client);
        return Reply::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let queued = end_multi(client);
    if let Some(reply) = refused_by_write_behind(server, &queued) {
        unwatch_all(server, client);
        return reply;
    }
    let now = client.now_ms;
    let keyspace_wide = queued.iter().any(|q| q.spec.keys == Keys::All);
    let mut db = if keyspace_wide {
        server.keyspace.lock_all(now)
    } else {
        let keys = queued
            .iter()
            .flat_map(|q| q.spec.keys.positions(q.args.len()).map(move |i| &q.args[i]))
            .chain(client.watched.iter().map(|(k, _)| k));
        server.keyspace.lock_keys(keys, now)
    };
    // A watched key that was live at WATCH time and has expired since also aborts (Redis 7).
    let expired =
        client.watched.iter().any(|(k, expired_at_watch)| !expired_at_watch && db.is_logically_expired(k));
    if client.watch_flag.load(Ordering::Acquire) || expired {
        drop(db);
        unwatch_all(server, client);
        return Reply::NilArray;
    }
    let mut replies = Vec::with_capacity(queued.len());
    let _current =
        server.tracking.is_active().then(|| crate::server::tracking::CurrentClient::enter(client.id()));
    client.in_exec = true;
    for q in &queued {
        if let Err(reply) = crate::acl::check_queued(server, client, q.spec, &q.args) {
            replies.push(reply);
            continue;
        }
        let mut ctx = Ctx { db: &mut db, client, server };
        replies.push((q.spec.handler)(&mut ctx, &q.args));
        if server.tracking.is_active() {
            let id = client.id();
            crate::server::tracking::remember_in_exec(
                &server.tracking,
                &client.tracking,
                id,
                q.spec,
                &q.args,
            );
        }
    }
    client.in_exec = false;
    drop(db);
    unwatch_all(server, client);
    Reply::Array(replies)
}
