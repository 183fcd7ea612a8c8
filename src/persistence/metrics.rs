//! Write-behind figures for the admin port's `/metrics`: read at scrape time from the same
//! counters INFO's `persistence` section shows, so the write path pays nothing for them.

use std::sync::atomic::Ordering;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use super::Persistence;
use crate::admin::metrics::Collector;

impl Collector for Persistence {
    fn collect(&self) {
        describe();
        gauge!("cachegrid_postgres_up").set(if self.shared.health.is_up() { 1.0 } else { 0.0 });
        for s in &self.spaces {
            let ks = s.cfg.name.clone();
            if let Some(w) = &s.writer {
                let (keys, oldest) = w.pending();
                let st = &w.stats;
                gauge!("cachegrid_writebehind_pending_keys", "keyspace" => ks.clone()).set(keys as f64);
                gauge!("cachegrid_writebehind_queue_bytes", "keyspace" => ks.clone())
                    .set(w.queue.bytes() as f64);
                gauge!("cachegrid_writebehind_oldest_pending_seconds", "keyspace" => ks.clone())
                    .set(oldest.as_secs_f64());
                for (name, value) in [
                    ("cachegrid_writebehind_batches_total", &st.batches),
                    ("cachegrid_writebehind_rows_written_total", &st.rows_written),
                    ("cachegrid_writebehind_rows_coalesced_total", &st.rows_coalesced),
                    ("cachegrid_writebehind_failures_total", &st.failures),
                    ("cachegrid_writebehind_dead_letters_total", &st.dead_letters),
                    ("cachegrid_writebehind_compactions_total", &w.queue.compaction.runs),
                    (
                        "cachegrid_writebehind_compaction_reclaimed_bytes_total",
                        &w.queue.compaction.bytes_reclaimed,
                    ),
                ] {
                    counter!(name, "keyspace" => ks.clone()).absolute(value.load(Ordering::Relaxed));
                }
            }
        }
    }
}

fn describe() {
    describe_gauge!("cachegrid_postgres_up", Unit::Count, "1 while Postgres is reachable, else 0.");
    describe_gauge!("cachegrid_writebehind_pending_keys", Unit::Count, "Keys waiting to be written.");
    describe_gauge!("cachegrid_writebehind_queue_bytes", Unit::Bytes, "Bytes in the durable queue.");
    describe_gauge!(
        "cachegrid_writebehind_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest write not yet in Postgres."
    );
    describe_counter!("cachegrid_writebehind_batches_total", Unit::Count, "Batches committed.");
    describe_counter!("cachegrid_writebehind_rows_written_total", Unit::Count, "Rows upserted or deleted.");
    describe_counter!(
        "cachegrid_writebehind_rows_coalesced_total",
        Unit::Count,
        "Writes folded into a later write of the same key."
    );
    describe_counter!("cachegrid_writebehind_failures_total", Unit::Count, "Failed batch attempts.");
    describe_counter!("cachegrid_writebehind_dead_letters_total", Unit::Count, "Rows moved to dead letters.");
    describe_counter!(
        "cachegrid_writebehind_compactions_total",
        Unit::Count,
        "Compactions of the durable queue."
    );
    describe_counter!(
        "cachegrid_writebehind_compaction_reclaimed_bytes_total",
        Unit::Bytes,
        "Queue bytes freed by compaction (records superseded by a newer write of their key)."
    );
}

impl Persistence {
    /// Whether Postgres is reachable, and each write-behind queue, for the admin port's
    /// `/cluster` (the same figures `/metrics` exports).
    pub fn admin_status(&self) -> (bool, Vec<crate::admin::cluster::QueueStatus>) {
        let queues = self
            .spaces
            .iter()
            .filter_map(|s| {
                let w = s.writer.as_ref()?;
                let (keys, oldest) = w.pending();
                Some(crate::admin::cluster::QueueStatus {
                    keyspace: s.cfg.name.clone(),
                    pending_keys: keys as u64,
                    queue_bytes: w.queue.bytes(),
                    oldest_pending_seconds: oldest.as_secs_f64(),
                    failures: w.stats.failures.load(Ordering::Relaxed),
                })
            })
            .collect();
        (self.shared.health.is_up(), queues)
    }
}
