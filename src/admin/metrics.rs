//! `/metrics`: the node's counters pushed into a node-local `metrics` recorder when scraped,
//! rendered in Prometheus text format by `metrics-exporter-prometheus`. Scrape-time pushing
//! keeps the hot path free of the recorder; subsystems (replication, write-behind) add their
//! own figures with a [`Collector`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

use super::stats::{CommandTotals, BUCKETS, COMMAND_STATS, LATENCY_BOUNDS};
use crate::server::Server;

/// Pushes a subsystem's figures into the recorder at scrape time, with the `metrics` macros
/// (`gauge!("cachegrid_...").set(v)`). Only figures with real values: no placeholders.
pub trait Collector: Send + Sync {
    /// Called once per scrape, inside the node's recorder.
    fn collect(&self);
}

/// Per latency bucket: (count, summed nanoseconds).
type Buckets = [(u64, u64); BUCKETS];

/// The node's recorder and what was last pushed of the sampled latencies.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Latency buckets already pushed, by command name: histograms take deltas.
    pushed: Mutex<Vec<(&'static str, Buckets)>>,
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
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Metrics { recorder, handle, pushed: Mutex::new(Vec::new()), collectors: Mutex::new(Vec::new()) }
    }

    /// Adds a subsystem's collector.
    pub fn add_collector(&self, c: Arc<dyn Collector>) {
        self.collectors.lock().push(c);
    }

    /// Reads every figure and renders the Prometheus text.
    pub fn render(&self, server: &Server) -> String {
        let collectors = self.collectors.lock().clone();
        metrics::with_local_recorder(&self.recorder, || {
            collect_node(server);
            self.collect_commands(COMMAND_STATS.totals());
            for c in &collectors {
                c.collect();
            }
        });
        self.handle.render()
    }

    fn collect_commands(&self, totals: Vec<CommandTotals>) {
        let mut pushed = self.pushed.lock();
        for t in totals {
            let labels = [("cmd", t.name)];
            counter!("cachegrid_commands_total", &labels).absolute(t.calls);
            counter!("cachegrid_command_errors_total", &labels).absolute(t.errors);
            let idx = match pushed.iter().position(|(n, _)| *n == t.name) {
                Some(i) => i,
                None => {
                    pushed.push((t.name, [(0, 0); BUCKETS]));
                    pushed.len() - 1
                }
            };
            let last = &mut pushed[idx].1;
            let h = histogram!("cachegrid_command_latency_seconds", &labels);
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
}

fn collect_node(server: &Server) {
    let st = &server.stats;
    let ks = &server.keyspace.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter!("cachegrid_commands_processed_total").absolute(load(&st.commands));
    counter!("cachegrid_error_replies_total").absolute(load(&st.error_replies));
    counter!("cachegrid_connections_received_total").absolute(load(&st.connections));
    counter!("cachegrid_connections_rejected_total").absolute(load(&st.rejected));
    counter!("cachegrid_net_input_bytes_total").absolute(load(&st.net_input));
    counter!("cachegrid_net_output_bytes_total").absolute(load(&st.net_output));
    counter!("cachegrid_expired_keys_total").absolute(load(&ks.expired_keys));
    counter!("cachegrid_evicted_keys_total").absolute(load(&ks.evicted_keys));
    counter!("cachegrid_keyspace_hits_total").absolute(load(&ks.hits));
    counter!("cachegrid_keyspace_misses_total").absolute(load(&ks.misses));
    gauge!("cachegrid_connected_clients").set(server.clients.len() as f64);
    gauge!("cachegrid_keys").set(server.keyspace.len() as f64);
    gauge!("cachegrid_keys_with_expiry").set(server.keyspace.volatile_len() as f64);
    gauge!("cachegrid_memory_used_bytes").set(server.used_memory() as f64);
    gauge!("cachegrid_memory_rss_bytes").set(crate::store::memory::rss_bytes() as f64);
    gauge!("cachegrid_maxmemory_bytes").set(server.maxmemory.load(Ordering::Relaxed) as f64);
    gauge!("cachegrid_uptime_seconds").set(server.uptime().as_secs_f64());
    gauge!("cachegrid_ready").set(if super::cluster::is_ready(server) { 1.0 } else { 0.0 });
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
    describe_gauge!("cachegrid_ready", "1 when /ready answers 200 (serving, not draining), else 0.");
}
