//! Redis Cluster's client side on a node: CLUSTER KEYSLOT, COUNTKEYSINSLOT, GETKEYSINSLOT,
//! MYID, INFO, SLOTS, SHARDS, NODES, HELP, and READONLY, READWRITE, ASKING — in Redis 7's reply
//! formats, read from the slot map. Without `cluster-enabled` they all answer as a standalone
//! Redis does.

use bytes::Bytes;

use super::args::parse_i64;
use super::{cmd, container, err, CommandSpec, Ctx, Keys};
use crate::cluster::{Cluster, SlotMap};
use crate::protocol::Reply;
use crate::store::{key_slot, SLOT_COUNT};

#[rustfmt::skip]
static SUBCOMMANDS: &[CommandSpec] = &[
    cmd("cluster|keyslot", 3, &["stale"], Keys::None, "cluster", "3.0.0", "Returns the hash slot of the specified key", keyslot),
    cmd("cluster|countkeysinslot", 3, &["stale"], Keys::All, "cluster", "3.0.0", "Return the number of local keys in the specified hash slot", countkeysinslot),
    cmd("cluster|getkeysinslot", 4, &["stale"], Keys::All, "cluster", "3.0.0", "Return local key names in the specified hash slot", getkeysinslot),
    cmd("cluster|myid", 2, &["stale"], Keys::None, "cluster", "3.0.0", "Return the node id", myid),
    cmd("cluster|info", 2, &["stale"], Keys::None, "cluster", "3.0.0", "Provides info about Redis Cluster node state", info),
    cmd("cluster|slots", 2, &["stale"], Keys::None, "cluster", "3.0.0", "Get array of Cluster slot to node mappings", slots),
    cmd("cluster|shards", 2, &["stale"], Keys::None, "cluster", "7.0.0", "Get array of cluster slots to node mappings", shards),
    cmd("cluster|nodes", 2, &["stale"], Keys::None, "cluster", "3.0.0", "Get Cluster config for the node", nodes),
    cmd("cluster|help", 2, &["loading", "stale"], Keys::None, "cluster", "5.0.0", "Show helpful text about the different subcommands", help),
];

/// CLUSTER and the connection flags cluster clients set.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    container("cluster", "cluster", "3.0.0", "A container for cluster commands", SUBCOMMANDS),
    cmd("readonly", 1, &["loading", "stale", "fast"], Keys::None, "cluster", "3.0.0", "Enables read queries for a connection to a cluster replica node", readonly),
    cmd("readwrite", 1, &["loading", "stale", "fast"], Keys::None, "cluster", "3.0.0", "Disables read queries for a connection to a cluster replica node", readwrite),
    cmd("asking", 1, &["fast"], Keys::None, "cluster", "3.0.0", "Sent by cluster clients after an -ASK redirect", asking),
];

const DISABLED: &str = "ERR This instance has cluster support disabled";

/// The cluster state, or Redis's reply for a standalone node.
fn cluster<'a>(ctx: &'a Ctx<'_, '_>) -> Result<&'a Cluster, Reply> {
    ctx.server.cluster.get().map(|c| &**c).ok_or_else(|| Reply::error(DISABLED))
}

macro_rules! cluster_or_reply {
    ($ctx:expr) => {
        match cluster($ctx) {
            Ok(c) => c,
            Err(reply) => return reply,
        }
    };
}

fn keyslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    Reply::Int(key_slot(&args[2]) as i64)
}

fn countkeysinslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    let Some(slot) = parse_i64(&args[2]) else { return err::not_integer() };
    if !(0..SLOT_COUNT as i64).contains(&slot) {
        return Reply::error("ERR Invalid slot");
    }
    Reply::Int(ctx.db.count_in_slot(slot as usize) as i64)
}

fn getkeysinslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    let (Some(slot), Some(count)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
        return err::not_integer();
    };
    if !(0..SLOT_COUNT as i64).contains(&slot) || count < 0 {
        return Reply::error("ERR Invalid slot or number of keys");
    }
    let keys = ctx.db.keys_in_slot(slot as usize, usize::try_from(count).unwrap_or(usize::MAX));
    Reply::Array(keys.iter().map(|k| Reply::bulk(k)).collect())
}

fn myid(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let c = cluster_or_reply!(ctx);
    Reply::bulk_string(c.me.to_string())
}

fn info(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let c = cluster_or_reply!(ctx);
    let view = c.view();
    let map = &view.map;
    let assigned = map.assigned_slots();
    let size =
        (0..map.nodes.len() as u16).filter(|&i| map.slots.iter().any(|o| o.primary == Some(i))).count();
    let state = if assigned == SLOT_COUNT { "ok" } else { "fail" };
    let mut text = String::new();
    for (k, v) in [
        ("cluster_state", state.to_string()),
        ("cluster_slots_assigned", assigned.to_string()),
        ("cluster_slots_ok", assigned.to_string()),
        ("cluster_slots_pfail", "0".into()),
        ("cluster_slots_fail", "0".into()),
        ("cluster_known_nodes", map.nodes.len().to_string()),
        ("cluster_size", size.to_string()),
        ("cluster_current_epoch", map.epoch.to_string()),
        ("cluster_my_epoch", map.epoch.to_string()),
        ("cluster_stats_messages_sent", "0".into()),
        ("cluster_stats_messages_received", "0".into()),
        ("total_cluster_links_buffer_limit_exceeded", "0".into()),
    ] {
        text.push_str(&format!("{k}:{v}\r\n"));
    }
    Reply::Verbatim(Bytes::from(text))
}

/// One node as CLUSTER SLOTS lists it: ip, port (its TLS port for a client on TLS), id, and
/// (Redis 7) a map of extra names.
fn slot_node(map: &SlotMap, i: u16, tls: bool) -> Reply {
    let n = map.node(i);
    Reply::Array(vec![
        Reply::bulk(n.host.as_bytes()),
        Reply::Int(n.client_port(tls) as i64),
        Reply::bulk_string(n.id.to_string()),
        Reply::Map(vec![]),
    ])
}

fn slots(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let c = cluster_or_reply!(ctx);
    let tls = ctx.client.cluster.tls;
    let view = c.view();
    let map = &view.map;
    let ranges = map.ranges().into_iter().filter_map(|(first, last, owners)| {
        let primary = owners.primary?;
        let mut entry = vec![Reply::Int(first as i64), Reply::Int(last as i64), slot_node(map, primary, tls)];
        entry.extend(owners.replicas.iter().map(|&r| slot_node(map, r, tls)));
        Some(Reply::Array(entry))
    });
    Reply::Array(ranges.collect())
}

fn shards(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let c = cluster_or_reply!(ctx);
    let view = c.view();
    let map = &view.map;
    // A shard is a primary with its replicas; in the grid each distinct owner set is one.
    let mut groups: Vec<(&crate::cluster::Owners, Vec<Reply>)> = Vec::new();
    for (first, last, owners) in map.ranges() {
        if owners.primary.is_none() {
            continue;
        }
        let bounds = [Reply::Int(first as i64), Reply::Int(last as i64)];
        match groups.iter_mut().find(|(o, _)| *o == owners) {
            Some((_, slots)) => slots.extend(bounds),
            None => groups.push((owners, bounds.to_vec())),
        }
    }
    // As Redis 7: `port` for the plaintext port and `tls-port` for the TLS one, each only
    // when the node has it (a TLS-only node announces its TLS port as both).
    let node = |i: u16, role: &'static str| {
        let n = map.node(i);
        let mut fields = vec![(Reply::bulk_static("id"), Reply::bulk_string(n.id.to_string()))];
        if n.tls_port == 0 || n.tls_port != n.port {
            fields.push((Reply::bulk_static("port"), Reply::Int(n.port as i64)));
        }
        if n.tls_port != 0 {
            fields.push((Reply::bulk_static("tls-port"), Reply::Int(n.tls_port as i64)));
        }
        fields.extend([
            (Reply::bulk_static("ip"), Reply::bulk(n.host.as_bytes())),
            (Reply::bulk_static("endpoint"), Reply::bulk(n.host.as_bytes())),
            (Reply::bulk_static("role"), Reply::bulk_static(role)),
            (Reply::bulk_static("replication-offset"), Reply::Int(0)),
            (Reply::bulk_static("health"), Reply::bulk_static("online")),
        ]);
        Reply::Map(fields)
    };
    let out = groups.into_iter().map(|(owners, slots)| {
        let primary = owners.primary.expect("unassigned ranges were skipped");
        let mut nodes = vec![node(primary, "master")];
        nodes.extend(owners.replicas.iter().map(|&r| node(r, "replica")));
        Reply::Map(vec![
            (Reply::bulk_static("slots"), Reply::Array(slots)),
            (Reply::bulk_static("nodes"), Reply::Array(nodes)),
        ])
    });
    Reply::Array(out.collect())
}

fn nodes(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let c = cluster_or_reply!(ctx);
    let tls = ctx.client.cluster.tls;
    let view = c.view();
    let (map, me) = (&view.map, view.me);
    let ranges = map.ranges();
    let mut text = String::new();
    for (i, n) in map.nodes.iter().enumerate() {
        let i = i as u16;
        let flags = if Some(i) == me { "myself,master" } else { "master" };
        text.push_str(&format!(
            "{} {}:{}@{} {flags} - 0 0 {} connected",
            n.id,
            n.host,
            n.client_port(tls),
            n.bus_port,
            map.epoch
        ));
        for (first, last, _) in ranges.iter().filter(|(_, _, o)| o.primary == Some(i)) {
            if first == last {
                text.push_str(&format!(" {first}"));
            } else {
                text.push_str(&format!(" {first}-{last}"));
            }
        }
        if Some(i) == me {
            for (slot, m) in &map.migrations {
                if m.from == i {
                    text.push_str(&format!(" [{slot}->-{}]", map.node(m.to).id));
                } else if m.to == i {
                    text.push_str(&format!(" [{slot}-<-{}]", map.node(m.from).id));
                }
            }
        }
        text.push('\n');
    }
    Reply::Verbatim(Bytes::from(text))
}

fn help(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    let lines = [
        "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "COUNTKEYSINSLOT <slot>",
        "    Return the number of keys in <slot>.",
        "GETKEYSINSLOT <slot> <count>",
        "    Return key names stored by current node in a slot.",
        "INFO",
        "    Return information about the cluster.",
        "KEYSLOT <key>",
        "    Return the hash slot for <key>.",
        "MYID",
        "    Return the node id.",
        "NODES",
        "    Return cluster configuration seen by node. Output format:",
        "    <id> <ip:port> <flags> <master> <pings> <pongs> <epoch> <link> <slot> ...",
        "SLOTS",
        "    Return information about slots range mappings. Each range is made of:",
        "    start, end, master and replicas IP addresses, ports and ids",
        "SHARDS",
        "    Return information about slot range mappings and the nodes associated with them.",
        "HELP",
        "    Prints this help.",
    ];
    Reply::Array(lines.into_iter().map(Reply::simple).collect())
}

fn readonly(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    ctx.client.cluster.readonly = true;
    Reply::ok()
}

fn readwrite(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    ctx.client.cluster.readonly = false;
    Reply::ok()
}

fn asking(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    cluster_or_reply!(ctx);
    ctx.client.cluster.asking = true;
    Reply::ok()
}
