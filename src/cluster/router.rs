//! Routing: for a keyed command in cluster mode, whether this node runs it or the client is
//! sent elsewhere — Redis Cluster's rules (`getNodeByQuery`): CROSSSLOT when keys hash to
//! different slots, CLUSTERDOWN for an unserved slot, MOVED to the slot's primary, ASK or
//! TRYAGAIN while a slot migrates, ASKING to run on an importing slot, READONLY to read on a
//! replica. One slot lookup per command; key existence is checked only for migrating slots.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::slotmap::SlotMap;
use super::state::{ClientFlags, Cluster};
use crate::commands::{transactions, CommandSpec, Keys};
use crate::protocol::Reply;
use crate::server::{ClientState, Server};
use crate::store::key_slot;

/// Redis's CROSSSLOT error.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
/// Redis's reply for a slot no node serves.
pub const UNSERVED: &str = "CLUSTERDOWN Hash slot not served";
/// Redis's reply when a multi-key command's keys are split by a slot migration.
pub const TRYAGAIN: &str = "TRYAGAIN Multiple keys request during rehashing of slot";

/// Where a command runs, decided from the slot map alone.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// Here.
    Local,
    /// Here, unless a key is missing: the slot is migrating away, and missing keys may already
    /// be at the target (`to` is the importing node).
    Migrating {
        /// Slot concerned.
        slot: u16,
        /// Node index of the importer.
        to: u16,
    },
    /// Here if every key exists (or there is only one key): ASKING on an importing slot.
    Importing,
    /// Elsewhere: the reply to send.
    Redirect(Reply),
}

/// Decides where a command over `keys` runs. `me` is this node's index in `map` (None when it
/// is not a member); `write` whether the command changes data.
pub fn route<'k>(
    map: &SlotMap,
    me: Option<u16>,
    mut keys: impl Iterator<Item = &'k [u8]>,
    write: bool,
    client: ClientFlags,
) -> Route {
    let Some(first) = keys.next() else { return Route::Local };
    let slot = key_slot(first);
    if keys.any(|k| key_slot(k) != slot) {
        return Route::Redirect(Reply::error(CROSSSLOT));
    }
    let owners = &map.slots[slot as usize];
    let Some(primary) = owners.primary else { return Route::Redirect(Reply::error(UNSERVED)) };
    let migration = if map.migrations.is_empty() { None } else { map.migrations.get(&slot) };
    if Some(primary) == me {
        return match migration {
            Some(m) => Route::Migrating { slot, to: m.to },
            None => Route::Local,
        };
    }
    if let (Some(m), true) = (migration, client.asking) {
        if Some(m.to) == me {
            return Route::Importing;
        }
    }
    if client.readonly && !write && me.is_some_and(|me| owners.replicas.contains(&me)) {
        return Route::Local;
    }
    Route::Redirect(moved("MOVED", slot, map, primary, client.tls))
}

/// The dispatcher's second look, with the command's keys locked: for a slot migrating away
/// from this node, keys that left since [`check`] send the client on (ASK, or TRYAGAIN when
/// only some left). Costs nothing while no slot migrates. `tls`: the client is on TLS.
pub fn recheck(
    cluster: &Cluster,
    db: &mut crate::store::keyspace::Db<'_>,
    spec: &CommandSpec,
    args: &[Bytes],
    tls: bool,
) -> Option<Reply> {
    if !matches!(spec.keys, Keys::Range { .. }) {
        return None;
    }
    let view = cluster.view();
    if view.map.migrations.is_empty() {
        return None;
    }
    let mut keys = spec.keys.positions(args.len()).map(|i| &args[i][..]);
    let slot = key_slot(keys.next()?);
    let m = view.map.migrations.get(&slot).filter(|m| Some(m.from) == view.me)?;
    let (mut present, mut missing, mut travelling) = (0, 0, 0);
    for i in spec.keys.positions(args.len()) {
        // A key held for its replicas to catch up is still here, but in flight all the same.
        if cluster.is_in_flight(&args[i]) {
            travelling += 1;
        } else if db.exists(&args[i]) {
            present += 1;
        } else {
            missing += 1;
        }
    }
    match (present, missing) {
        _ if travelling > 0 => Some(Reply::error(TRYAGAIN)),
        (_, 0) => None,
        (0, _) => Some(moved("ASK", slot, &view.map, m.to, tls)),
        _ => Some(Reply::error(TRYAGAIN)),
    }
}

fn moved(kind: &str, slot: u16, map: &SlotMap, node: u16, tls: bool) -> Reply {
    Reply::error(format!("{kind} {slot} {}", map.node(node).endpoint_for(tls)))
}

/// The dispatcher's hook: None to run the command here, or the redirection to reply with.
/// Inside MULTI a redirected command fails the transaction; a redirected EXEC discards it,
/// as in Redis.
pub fn check(
    cluster: &Cluster,
    server: &Server,
    client: &mut ClientState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Option<Reply> {
    if cluster.fenced() && (matches!(spec.keys, Keys::Range { .. }) || spec.name == "exec") {
        // Cut off from the majority: another node may own these slots by now.
        return Some(Reply::error("CLUSTERDOWN The cluster is down"));
    }
    // ASKING covers the next command only (or, inside MULTI, the transaction up to EXEC).
    let flags = client.cluster;
    if spec.name != "asking" && (!client.in_multi() || spec.name == "exec") {
        client.cluster.asking = false;
    }
    let exec = spec.name == "exec" && client.in_multi();
    let view = cluster.view();
    let (map, me) = (&view.map, view.me);
    let (route, keys): (Route, Vec<&[u8]>) = if exec {
        let queued = client.multi.as_deref().unwrap_or_default();
        let keys: Vec<&[u8]> = queued
            .iter()
            .filter(|q| matches!(q.spec.keys, Keys::Range { .. }))
            .flat_map(|q| q.spec.keys.positions(q.args.len()).map(move |i| &q.args[i][..]))
            .collect();
        let write = queued.iter().any(|q| q.spec.is_write());
        (route(map, me, keys.iter().copied(), write, flags), keys)
    } else {
        if !matches!(spec.keys, Keys::Range { .. }) {
            return None;
        }
        let keys = || spec.keys.positions(args.len()).map(|i| &args[i][..]);
        let r = route(map, me, keys(), spec.is_write(), flags);
        // Keys are only collected when a migration needs them.
        let collected = if matches!(r, Route::Migrating { .. } | Route::Importing) {
            keys().collect()
        } else {
            Vec::new()
        };
        (r, collected)
    };
    let reply = match route {
        Route::Local => return None,
        Route::Redirect(reply) => reply,
        Route::Migrating { slot, to } => {
            let (present, missing) = presence(server, client.now_ms, &keys);
            match (present, missing) {
                // Keys on their way to the target are in neither place a client can read.
                // So are keys held for their replicas to catch up before they leave.
                _ if keys.iter().any(|k| cluster.is_in_flight(k)) => Reply::error(TRYAGAIN),
                (_, 0) => return None,
                (0, _) => moved("ASK", slot, map, to, flags.tls),
                _ => Reply::error(TRYAGAIN),
            }
        }
        Route::Importing => {
            let (_, missing) = presence(server, client.now_ms, &keys);
            // Until this node's stale copies of the slot are gone, a write here could be
            // dropped with them.
            let ready = keys.first().is_none_or(|k| cluster.slot_ready(key_slot(k)));
            if !ready || (distinct(&keys) > 1 && missing > 0) {
                Reply::error(TRYAGAIN)
            } else {
                return None;
            }
        }
    };
    if exec {
        client.multi = None;
        client.multi_error = false;
        client.info.in_multi.store(false, Ordering::Relaxed);
        transactions::unwatch_all(server, client);
    } else {
        transactions::flag_error_in_multi(client);
    }
    Some(reply)
}

fn distinct(keys: &[&[u8]]) -> usize {
    let mut k = keys.to_vec();
    k.sort_unstable();
    k.dedup();
    k.len()
}

/// How many of `keys` exist here and how many do not. The shards are locked for the check
/// only; see ARCHITECTURE.md on what a migration must do about that window.
fn presence(server: &Server, now: u64, keys: &[&[u8]]) -> (usize, usize) {
    let mut db = server.keyspace.lock_keys(keys.iter().copied(), now);
    let present = keys.iter().filter(|k| db.exists(k)).count();
    (present, keys.len() - present)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Migration, NodeId, NodeInfo, SlotAssignment};
    use crate::store::SLOT_COUNT;

    /// Node 0 serves slots below 8192, node 1 the rest; each replicates the other.
    fn two_nodes() -> SlotMap {
        let nodes: Vec<NodeInfo> = (0..2u8)
            .map(|i| NodeInfo {
                id: NodeId([i; 20]),
                host: "10.0.0.1".into(),
                port: 7000 + i as u16,
                bus_port: 0,
                zone: "z".into(),
                tls_port: 0,
            })
            .collect();
        let a: Vec<SlotAssignment> = (0..SLOT_COUNT)
            .map(|s| {
                let (p, r) = if s < 8192 { (0, 1) } else { (1, 0) };
                SlotAssignment { primary: Some(NodeId([p; 20])), replicas: vec![NodeId([r; 20])] }
            })
            .collect();
        SlotMap::from_assignment(1, nodes, &a).unwrap()
    }

    fn r(map: &SlotMap, me: u16, keys: &[&str], write: bool, flags: ClientFlags) -> Route {
        route(map, Some(me), keys.iter().map(|k| k.as_bytes()), write, flags)
    }

    const PLAIN: ClientFlags = ClientFlags { readonly: false, asking: false, tls: false };

    #[test]
    fn keys_of_owned_slots_run_here_others_are_moved() {
        let map = two_nodes();
        // "foo" is slot 12182 (node 1), "bar" slot 5061 (node 0).
        assert_eq!(r(&map, 0, &["bar"], true, PLAIN), Route::Local);
        assert_eq!(
            r(&map, 0, &["foo"], false, PLAIN),
            Route::Redirect(Reply::error("MOVED 12182 10.0.0.1:7001"))
        );
        assert_eq!(r(&map, 1, &["foo", "{foo}x"], true, PLAIN), Route::Local);
        assert_eq!(r(&map, 0, &[], true, PLAIN), Route::Local);
    }

    #[test]
    fn a_client_on_tls_is_moved_to_the_tls_port_where_the_node_has_one() {
        let mut map = two_nodes();
        let tls = ClientFlags { tls: true, ..PLAIN };
        assert_eq!(
            r(&map, 0, &["foo"], false, tls),
            Route::Redirect(Reply::error("MOVED 12182 10.0.0.1:7001"))
        );
        map.nodes[1].tls_port = 8001;
        assert_eq!(
            r(&map, 0, &["foo"], false, tls),
            Route::Redirect(Reply::error("MOVED 12182 10.0.0.1:8001"))
        );
        assert_eq!(
            r(&map, 0, &["foo"], false, PLAIN),
            Route::Redirect(Reply::error("MOVED 12182 10.0.0.1:7001"))
        );
    }

    #[test]
    fn keys_in_different_slots_are_crossslot_even_when_all_are_local() {
        let map = two_nodes();
        assert_eq!(r(&map, 0, &["bar", "foo"], true, PLAIN), Route::Redirect(Reply::error(CROSSSLOT)));
        assert_eq!(r(&map, 0, &["a", "b"], false, PLAIN), Route::Redirect(Reply::error(CROSSSLOT)));
    }

    #[test]
    fn readonly_clients_read_from_replicas_but_writes_still_move() {
        let map = two_nodes();
        let ro = ClientFlags { readonly: true, asking: false, tls: false };
        assert_eq!(r(&map, 0, &["foo"], false, ro), Route::Local);
        assert!(matches!(r(&map, 0, &["foo"], true, ro), Route::Redirect(_)));
    }

    #[test]
    fn unserved_slots_are_clusterdown() {
        let mut map = two_nodes();
        map.slots[12182].primary = None;
        assert_eq!(r(&map, 0, &["foo"], false, PLAIN), Route::Redirect(Reply::error(UNSERVED)));
    }

    #[test]
    fn migrating_slots_check_keys_and_importers_need_asking() {
        let mut map = two_nodes();
        map.migrations.insert(12182, Migration { from: 1, to: 0 });
        assert_eq!(r(&map, 1, &["foo"], true, PLAIN), Route::Migrating { slot: 12182, to: 0 });
        assert!(matches!(r(&map, 0, &["foo"], true, PLAIN), Route::Redirect(_)));
        let asking = ClientFlags { readonly: false, asking: true, tls: false };
        assert_eq!(r(&map, 0, &["foo"], true, asking), Route::Importing);
    }

    #[test]
    fn a_node_outside_the_map_redirects_everything() {
        let map = two_nodes();
        assert!(matches!(route(&map, None, [&b"bar"[..]].into_iter(), false, PLAIN), Route::Redirect(_)));
    }
}
