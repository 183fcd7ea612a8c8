//! `/metrics`: the node's counters pushed into a node-local `metrics` recorder when scraped,
//! rendered in Prometheus text format by `metrics-exporter-prometheus`. Scrape-time pushing
//! keeps the hot path free of the recorder; subsystems (write-behind) add their own figures
//! with a [`Collector`], and the grid's (map, slots, moves, replica lag) are read from the
//! node's cluster state.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;

use super::stats::{CommandTotals, BUCKETS, LATENCY_BOUNDS};
use crate::server::Server;

/// Pushes a subsystem's figures into the recorder at scrape time, with the `metrics` macros
/// (`gauge!("cachegrid_...").set(v)`). Only figures with real values: no placeholders.
pub trait Collector: Send + Sync {
    /// Called once per scrape, inside the node's recorder.
    fn collect(&self);
}

/// Per latency bucket: (count, summed nanoseconds).
type Buckets = [(u64, u64); BUCKETS];

/// What was last read of each counter, so `/metrics` counters stay monotonic across
/// CONFIG RESETSTAT (the recorder's counters only go up) and histograms get deltas.
#[derive(Default)]
struct Seen {
    resets: u64,
    counters: HashMap<(&'static str, &'static str), u64>,
    latency: HashMap<&'static str, Buckets>,
}

impl Seen {
    /// Adds what counter `name` (label `cmd`, "" for none) grew by since the last scrape.
    fn counter(&mut self, name: &'static str, cmd: &'static str, now: u64) {
        let before = self.counters.insert((name, cmd), now).unwrap_or(0);
        let grew = now.saturating_sub(before);
        if cmd.is_empty() {
            counter!(name).increment(grew);
        } else {
            counter!(name, "cmd" => cmd).increment(grew);
        }
    }
}

/// The node's recorder and what it last read.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    seen: Mutex<Seen>,
    collectors: Mutex<Vec<Arc<dyn Collector>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with our latency buckets and every metric described.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("cachegrid_command_latency_seconds".into()), LATENCY_BOUNDS)
            .expect("latency buckets are not empty")
            // Gauges are all set again at every scrape: one not set for a second is a series
            // that ended (a replica that left), and goes instead of lingering at its last value.
            .idle_timeout(MetricKindMask::GAUGE, Some(std::time::Duration::from_secs(1)))
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Metrics { recorder, handle, seen: Mutex::new(Seen::default()), collectors: Mutex::new(Vec::new()) }
    }

    /// Adds a subsystem's collector.
    pub fn add_collector(&self, c: Arc<dyn Collector>) {
        self.collectors.lock().push(c);
    }

    /// Reads every figure and renders the Prometheus text.
    pub fn render(&self, server: &Server) -> String {
        let collectors = self.collectors.lock().clone();
        let mut seen = self.seen.lock();
        let resets = server.command_stats.resets();
        if resets != seen.resets {
            // Everything counted since the reset is new.
            seen.counters.clear();
            seen.latency.clear();
            seen.resets = resets;
        }
        metrics::with_local_recorder(&self.recorder, || {
            collect_node(server, &mut seen);
            collect_commands(&mut seen, server.command_stats.totals());
            collect_grid(server, &mut seen);
            for c in &collectors {
                c.collect();
            }
        });
        self.handle.render()
    }
}

fn collect_commands(seen: &mut Seen, totals: Vec<CommandTotals>) {
    for t in totals {
        seen.counter("cachegrid_commands_total", t.name, t.calls);
        seen.counter("cachegrid_command_errors_total", t.name, t.errors);
        let last = seen.latency.entry(t.name).or_insert([(0, 0); BUCKETS]);
        let h = histogram!("cachegrid_command_latency_seconds", "cmd" => t.name);
        for (b, &(count, sum_ns)) in t.latency.iter().enumerate() {
            let n = count.saturating_sub(last[b].0);
            // The mean of the new samples lies in the same bucket, and keeps the sum exact.
            if let Some(mean_ns) = sum_ns.saturating_sub(last[b].1).checked_div(n) {
                h.record_many(mean_ns as f64 / 1e9, n as usize);
            }
            last[b] = (count, sum_ns);
        }
    }
}

fn collect_node(server: &Server, seen: &mut Seen) {
    let st = &server.stats;
    let ks = &server.keyspace.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, value) in [
        ("cachegrid_commands_processed_total", load(&st.commands)),
        ("cachegrid_error_replies_total", load(&st.error_replies)),
        ("cachegrid_connections_received_total", load(&st.connections)),
        ("cachegrid_connections_rejected_total", load(&st.rejected)),
        ("cachegrid_net_input_bytes_total", load(&st.net_input)),
        ("cachegrid_net_output_bytes_total", load(&st.net_output)),
        ("cachegrid_expired_keys_total", load(&ks.expired_keys)),
        ("cachegrid_evicted_keys_total", load(&ks.evicted_keys)),
        ("cachegrid_keyspace_hits_total", load(&ks.hits)),
        ("cachegrid_keyspace_misses_total", load(&ks.misses)),
    ] {
        seen.counter(name, "", value);
    }
    gauge!("cachegrid_connected_clients").set(server.clients.len() as f64);
    gauge!("cachegrid_keys").set(server.keyspace.len() as f64);
    gauge!("cachegrid_keys_with_expiry").set(server.keyspace.volatile_len() as f64);
    gauge!("cachegrid_memory_used_bytes").set(server.used_memory() as f64);
    gauge!("cachegrid_memory_rss_bytes").set(crate::store::memory::rss_bytes() as f64);
    gauge!("cachegrid_maxmemory_bytes").set(server.maxmemory.load(Ordering::Relaxed) as f64);
    gauge!("cachegrid_uptime_seconds").set(server.uptime().as_secs_f64());
    gauge!("cachegrid_ready").set(if super::cluster::is_ready(server) { 1.0 } else { 0.0 });
}

/// The grid's figures, in cluster mode: the map, this node's slots and moves, replication.
fn collect_grid(server: &Server, seen: &mut Seen) {
    let Some(cluster) = server.cluster.get() else { return };
    let view = cluster.view();
    let map = &view.map;
    gauge!("cachegrid_cluster_epoch").set(map.epoch as f64);
    gauge!("cachegrid_cluster_members").set(map.nodes.len() as f64);
    gauge!("cachegrid_cluster_slots_moving").set(map.migrations.len() as f64);
    let leader = server.consensus.get().and_then(|c| c.leader());
    gauge!("cachegrid_cluster_leader").set(if leader == Some(cluster.me) { 1.0 } else { 0.0 });
    let (mut primary, mut replica) = (0usize, 0usize);
    let (mut leaving, mut arriving) = (0usize, 0usize);
    if let Some(me) = view.me {
        primary = map.slots.iter().filter(|o| o.primary == Some(me)).count();
        replica = map.slots.iter().filter(|o| o.replicas.contains(&me)).count();
        leaving = map.migrations.values().filter(|m| m.from == me).count();
        arriving = map.migrations.values().filter(|m| m.to == me).count();
    }
    gauge!("cachegrid_cluster_slots", "role" => "primary").set(primary as f64);
    gauge!("cachegrid_cluster_slots", "role" => "replica").set(replica as f64);
    gauge!("cachegrid_migration_slots", "direction" => "out").set(leaving as f64);
    gauge!("cachegrid_migration_slots", "direction" => "in").set(arriving as f64);
    let c = &cluster.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, direction, value) in [
        ("cachegrid_migration_keys_total", "out", load(&c.keys_migrated_out)),
        ("cachegrid_migration_keys_total", "in", load(&c.keys_migrated_in)),
        ("cachegrid_replication_keys_total", "out", load(&c.keys_replicated_out)),
        ("cachegrid_replication_keys_total", "in", load(&c.keys_replicated_in)),
    ] {
        let before = seen.counters.insert((name, direction), value).unwrap_or(0);
        counter!(name, "direction" => direction).increment(value.saturating_sub(before));
    }
    seen.counter("cachegrid_cluster_failovers_total", "", load(&c.failovers));
    if let Some(r) = server.replication.get() {
        for lag in r.lag(super::cluster::replicas_of(map, view.me)) {
            let replica = lag.replica.to_string();
            gauge!("cachegrid_replication_pending_keys", "replica" => replica.clone())
                .set(lag.pending_keys as f64);
            gauge!("cachegrid_replication_lag_seconds", "replica" => replica).set(lag.behind.as_secs_f64());
        }
    }
}

fn describe() {
    use Unit::{Bytes, Count, Seconds};
    describe_counter!(
        "cachegrid_commands_processed_total",
        Count,
        "Commands processed (INFO total_commands_processed)."
    );
    describe_counter!("cachegrid_commands_total", Count, "Calls by command.");
    describe_counter!("cachegrid_command_errors_total", Count, "Calls answered with an error, by command.");
    describe_histogram!(
        "cachegrid_command_latency_seconds",
        Seconds,
        "Execution time by command, sampled: one call in 64 per command and worker stripe."
    );
    describe_counter!("cachegrid_error_replies_total", Count, "Error replies, unknown commands included.");
    describe_counter!("cachegrid_connections_received_total", Count, "Client connections accepted.");
    describe_counter!(
        "cachegrid_connections_rejected_total",
        Count,
        "Client connections refused at maxclients."
    );
    describe_counter!("cachegrid_net_input_bytes_total", Bytes, "Bytes read from clients.");
    describe_counter!("cachegrid_net_output_bytes_total", Bytes, "Bytes written to clients.");
    describe_counter!("cachegrid_expired_keys_total", Count, "Keys removed because their TTL passed.");
    describe_counter!("cachegrid_evicted_keys_total", Count, "Keys evicted by maxmemory-policy.");
    describe_counter!("cachegrid_keyspace_hits_total", Count, "Key lookups that found the key.");
    describe_counter!("cachegrid_keyspace_misses_total", Count, "Key lookups that found nothing.");
    describe_gauge!("cachegrid_connected_clients", Count, "Connected clients.");
    describe_gauge!("cachegrid_keys", Count, "Keys held (DBSIZE).");
    describe_gauge!("cachegrid_keys_with_expiry", Count, "Keys with a TTL.");
    describe_gauge!("cachegrid_memory_used_bytes", Bytes, "Memory in use, by the allocator's count.");
    describe_gauge!("cachegrid_memory_rss_bytes", Bytes, "Resident set size of the process.");
    describe_gauge!("cachegrid_maxmemory_bytes", Bytes, "The maxmemory limit; 0 means none.");
    describe_gauge!("cachegrid_uptime_seconds", Seconds, "Seconds since the node started.");
    describe_gauge!(
        "cachegrid_ready",
        "1 when /ready answers 200 (serving, caught up, not draining or leaving), else 0."
    );
    describe_gauge!("cachegrid_cluster_epoch", "Epoch of the slot map in force on this node.");
    describe_gauge!("cachegrid_cluster_members", Count, "Members in this node's slot map.");
    describe_gauge!("cachegrid_cluster_leader", "1 while this node is the Raft leader, else 0.");
    describe_gauge!(
        "cachegrid_cluster_slots",
        Count,
        "Slots this node serves, by role (primary or replica)."
    );
    describe_gauge!("cachegrid_cluster_slots_moving", Count, "Slots moving between nodes in the whole grid.");
    describe_gauge!(
        "cachegrid_migration_slots",
        Count,
        "Slots migrating from this node (out) or to it (in)."
    );
    describe_counter!(
        "cachegrid_migration_keys_total",
        Count,
        "Keys moved with their slots, sent (out) or received (in)."
    );
    describe_counter!(
        "cachegrid_replication_keys_total",
        Count,
        "Keys shipped to replicas (out) or applied from primaries (in)."
    );
    describe_counter!(
        "cachegrid_cluster_failovers_total",
        Count,
        "Silent members this node failed over as Raft leader."
    );
    describe_gauge!(
        "cachegrid_replication_pending_keys",
        Count,
        "Changed keys not yet sent to a replica of this node's slots."
    );
    describe_gauge!(
        "cachegrid_replication_lag_seconds",
        Seconds,
        "Seconds since a replica of this node's slots was last caught up; 0 when it is."
    );
}
