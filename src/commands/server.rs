//! Server commands: INFO, DBSIZE, FLUSHALL, FLUSHDB, TIME, LASTSAVE, SHUTDOWN.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use super::args::is;
use super::connection::REDIS_VERSION;
use super::{cmd, err, CommandSpec, Ctx, Keys};
use crate::protocol::{Reply, RespVersion};
use crate::server::Server;
use crate::store::{clock, memory};

/// Server commands.
#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    cmd("info", -1, &["loading", "stale"], Keys::All, "server", "1.0.0", "Returns information and statistics about the server.", info),
    cmd("dbsize", 1, &["readonly", "fast"], Keys::None, "server", "1.0.0", "Returns the number of keys in the database.", dbsize),
    cmd("flushall", -1, &["write"], Keys::All, "server", "1.0.0", "Removes all keys from all databases.", flush),
    cmd("flushdb", -1, &["write"], Keys::All, "server", "1.0.0", "Remove all keys from the current database.", flush),
    cmd("time", 1, &["loading", "stale", "fast"], Keys::None, "server", "2.6.0", "Returns the server time.", time),
    cmd("lastsave", 1, &["loading", "stale", "fast"], Keys::None, "server", "1.0.0", "Returns the Unix timestamp of the last successful save to disk.", lastsave),
    cmd("shutdown", -1, &["admin", "noscript", "loading", "stale", "no-multi", "allow-busy"], Keys::None, "server", "1.0.0", "Synchronously saves the database(s) to disk and shuts down the Redis server.", shutdown),
];

fn dbsize(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    Reply::Int(ctx.server.keyspace.len() as i64)
}

fn flush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    // ASYNC and SYNC both free at once: there is no lazy-free thread.
    if args.len() > 2 || (args.len() == 2 && !is(&args[1], "ASYNC") && !is(&args[1], "SYNC")) {
        return err::syntax();
    }
    ctx.db.flush();
    Reply::ok()
}

fn time(_: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    let us = clock::now_us();
    Reply::Array(vec![
        Reply::bulk_string((us / 1_000_000).to_string()),
        Reply::bulk_string((us % 1_000_000).to_string()),
    ])
}

/// Unix time in seconds at which the node started.
fn start_time(server: &Server) -> u64 {
    (clock::now_ms().saturating_sub(server.uptime().as_millis() as u64)) / 1000
}

fn lastsave(ctx: &mut Ctx<'_, '_>, _: &[Bytes]) -> Reply {
    // Nothing is ever saved: the start is the last time the (empty) data set was "on disk".
    Reply::Int(start_time(ctx.server) as i64)
}

fn shutdown(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let (mut nosave, mut save, mut abort, mut other) = (false, false, false, false);
    for a in &args[1..] {
        if is(a, "NOSAVE") {
            nosave = true;
        } else if is(a, "SAVE") {
            save = true;
        } else if is(a, "NOW") || is(a, "FORCE") {
            other = true;
        } else if is(a, "ABORT") {
            abort = true;
        } else {
            return err::syntax();
        }
    }
    if (abort && (nosave || save || other)) || (nosave && save) {
        return err::syntax();
    }
    if abort {
        // Shutdown is immediate, so none is ever in progress.
        return Reply::error("ERR No shutdown in progress.");
    }
    tracing::info!("SHUTDOWN requested by client {}", ctx.client.id());
    ctx.server.shutdown.cancel();
    ctx.client.close_after_reply = true;
    Reply::NoReply
}

/// Sections in Redis's order; `default` ones are printed by a bare INFO.
const SECTIONS: &[(&str, &str, bool)] = &[
    ("server", "Server", true),
    ("clients", "Clients", true),
    ("memory", "Memory", true),
    ("persistence", "Persistence", true),
    ("stats", "Stats", true),
    ("replication", "Replication", true),
    ("cpu", "CPU", true),
    ("modules", "Modules", true),
    ("commandstats", "Commandstats", false),
    ("errorstats", "Errorstats", true),
    ("latencystats", "Latencystats", false),
    ("cluster", "Cluster", true),
    ("keyspace", "Keyspace", true),
];

fn info(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> Reply {
    let asked: Vec<String> =
        args[1..].iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect();
    let everything = asked.iter().any(|a| a == "all" || a == "everything");
    let default = asked.is_empty() || asked.iter().any(|a| a == "default");
    let wanted = |name: &str, in_default: bool| {
        everything
            || (default && in_default)
            || asked.iter().any(|a| a == name || (name == "modules" && a == "module_list"))
    };
    let mut out = String::new();
    for &(name, title, in_default) in SECTIONS {
        if !wanted(name, in_default) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let _ = write!(out, "# {title}\r\n");
        section(ctx, name, &mut out);
    }
    if ctx.client.resp == RespVersion::Resp3 {
        Reply::Verbatim(Bytes::from(out))
    } else {
        Reply::Bulk(Bytes::from(out))
    }
}

/// Redis's `bytesToHuman`.
pub fn bytes_to_human(n: u64) -> String {
    const UNITS: [(u64, &str); 5] =
        [(1 << 10, "K"), (1 << 20, "M"), (1 << 30, "G"), (1 << 40, "T"), (1 << 50, "P")];
    if n < 1024 {
        return format!("{n}B");
    }
    for (i, (div, unit)) in UNITS.iter().enumerate() {
        if UNITS.get(i + 1).is_none_or(|(next, _)| n < *next) {
            return format!("{:.2}{unit}", n as f64 / *div as f64);
        }
    }
    format!("{n}B")
}

/// Commands per second since the previous INFO of this node (Redis samples in its cron; a
/// sample per INFO call gives the same figure to pollers like `redis-cli --stat`).
fn ops_per_sec(server: &Server) -> u64 {
    /// Per node (by run id): time of the sample, commands then, rate computed.
    type Samples = HashMap<String, (Instant, u64, u64)>;
    static SAMPLES: LazyLock<Mutex<Samples>> = LazyLock::new(Default::default);
    let now = Instant::now();
    let commands = server.stats.commands.load(Ordering::Relaxed);
    let mut samples = SAMPLES.lock();
    let entry = samples.entry(server.run_id.clone()).or_insert((server.started, 0, 0));
    let elapsed = now.duration_since(entry.0).as_secs_f64();
    if elapsed >= 0.1 {
        let rate = commands.saturating_sub(entry.1) as f64 / elapsed;
        *entry = (now, commands, rate.round() as u64);
    }
    entry.2
}

/// User and system CPU seconds of the process, from /proc (Redis reads getrusage).
fn cpu_times() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (ticks(11), ticks(12))
}

fn os_name() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    format!(
        "{} {} {}",
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH
    )
}

fn section(ctx: &mut Ctx<'_, '_>, name: &str, out: &mut String) {
    let s = ctx.server;
    let ks = &s.keyspace;
    let mut f = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "{k}:{v}\r\n");
    };
    match name {
        "server" => {
            let uptime = s.uptime().as_secs();
            let hz = s.config.read().hz;
            f("redis_version", &REDIS_VERSION);
            f("redis_git_sha1", &"00000000");
            f("redis_git_dirty", &0);
            f("redis_build_id", &"0");
            f("redis_mode", &if ctx.server.cluster.get().is_some() { "cluster" } else { "standalone" });
            f("os", &os_name());
            f("arch_bits", &usize::BITS);
            f("monotonic_clock", &"POSIX clock_gettime");
            f("multiplexing_api", &"epoll");
            f("atomicvar_api", &"c11-builtin");
            f("gcc_version", &"0.0.0");
            f("process_id", &std::process::id());
            f("process_supervised", &"no");
            f("run_id", &s.run_id);
            f("tcp_port", &s.addr.read().map(|a| a.port()).unwrap_or(0));
            f("server_time_usec", &clock::now_us());
            f("uptime_in_seconds", &uptime);
            f("uptime_in_days", &(uptime / 86400));
            f("hz", &hz);
            f("configured_hz", &hz);
            f("lru_clock", &((clock::now_ms() / 1000) & 0xff_ffff));
            f("executable", &std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default());
            f("config_file", &"");
            f("io_threads_active", &0);
            f("cachegrid_version", &env!("CARGO_PKG_VERSION"));
        }
        "clients" => {
            f("connected_clients", &s.clients.len());
            f("cluster_connections", &0);
            f("maxclients", &s.maxclients.load(Ordering::Relaxed));
            f("client_recent_max_input_buffer", &0);
            f("client_recent_max_output_buffer", &0);
            f("blocked_clients", &0);
            f("tracking_clients", &0);
            f("clients_in_timeout_table", &0);
        }
        "memory" => {
            let used = s.used_memory() as u64;
            let rss = memory::rss_bytes() as u64;
            let peak = (s.memory.peak() as u64).max(used);
            let dataset = ks.dataset_bytes() as u64;
            let system = memory::system_memory() as u64;
            let maxmemory = s.maxmemory.load(Ordering::Relaxed);
            let perc =
                |a: u64, b: u64| format!("{:.2}%", if b == 0 { 0.0 } else { a as f64 * 100.0 / b as f64 });
            f("used_memory", &used);
            f("used_memory_human", &bytes_to_human(used));
            f("used_memory_rss", &rss);
            f("used_memory_rss_human", &bytes_to_human(rss));
            f("used_memory_peak", &peak);
            f("used_memory_peak_human", &bytes_to_human(peak));
            f("used_memory_peak_perc", &perc(used, peak));
            f("used_memory_overhead", &used.saturating_sub(dataset));
            f("used_memory_startup", &0);
            f("used_memory_dataset", &dataset);
            f("used_memory_dataset_perc", &perc(dataset, used));
            f("total_system_memory", &system);
            f("total_system_memory_human", &bytes_to_human(system));
            f("maxmemory", &maxmemory);
            f("maxmemory_human", &bytes_to_human(maxmemory));
            f("maxmemory_policy", &ks.settings.policy().name());
            f(
                "mem_fragmentation_ratio",
                &format!("{:.2}", if used == 0 { 0.0 } else { rss as f64 / used as f64 }),
            );
            f("mem_allocator", &crate::store::memory::allocator_name());
            f("lazyfree_pending_objects", &0);
        }
        "persistence" => {
            f("loading", &0);
            f("async_loading", &0);
            f("rdb_changes_since_last_save", &ks.stats.dirty.load(Ordering::Relaxed));
            f("rdb_bgsave_in_progress", &0);
            f("rdb_last_save_time", &start_time(s));
            f("rdb_last_bgsave_status", &"ok");
            f("rdb_last_bgsave_time_sec", &-1);
            f("rdb_current_bgsave_time_sec", &-1);
            f("rdb_saves", &0);
            f("aof_enabled", &0);
            f("aof_rewrite_in_progress", &0);
            f("aof_rewrite_scheduled", &0);
            f("aof_last_rewrite_time_sec", &-1);
            f("aof_current_rewrite_time_sec", &-1);
            f("aof_last_bgrewrite_status", &"ok");
            f("aof_last_write_status", &"ok");
            crate::persistence::info_section(s, out);
        }
        "stats" => {
            let st = &s.stats;
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            f("total_connections_received", &load(&st.connections));
            f("total_commands_processed", &load(&st.commands));
            f("instantaneous_ops_per_sec", &ops_per_sec(s));
            f("total_net_input_bytes", &load(&st.net_input));
            f("total_net_output_bytes", &load(&st.net_output));
            f("instantaneous_input_kbps", &"0.00");
            f("instantaneous_output_kbps", &"0.00");
            f("rejected_connections", &load(&st.rejected));
            f("sync_full", &0);
            f("sync_partial_ok", &0);
            f("sync_partial_err", &0);
            f("expired_keys", &load(&ks.stats.expired_keys));
            f("expired_stale_perc", &"0.00");
            f("expired_time_cap_reached_count", &0);
            f("evicted_keys", &load(&ks.stats.evicted_keys));
            f("evicted_clients", &0);
            f("keyspace_hits", &load(&ks.stats.hits));
            f("keyspace_misses", &load(&ks.stats.misses));
            f("pubsub_channels", &0);
            f("pubsub_patterns", &0);
            f("latest_fork_usec", &0);
            f("total_forks", &0);
            f("total_error_replies", &load(&st.error_replies));
        }
        "replication" => {
            f("role", &"master");
            f("connected_slaves", &0);
            f("master_failover_state", &"no-failover");
            f("master_replid", &s.run_id);
            f("master_replid2", &"0000000000000000000000000000000000000000");
            f("master_repl_offset", &0);
            f("second_repl_offset", &-1);
            f("repl_backlog_active", &0);
            f("repl_backlog_size", &1048576);
            f("repl_backlog_first_byte_offset", &0);
            f("repl_backlog_histlen", &0);
        }
        "cpu" => {
            let (user, sys) = cpu_times();
            f("used_cpu_sys", &format!("{sys:.6}"));
            f("used_cpu_user", &format!("{user:.6}"));
            f("used_cpu_sys_children", &"0.000000");
            f("used_cpu_user_children", &"0.000000");
        }
        "cluster" => {
            f("cluster_enabled", &(ctx.server.cluster.get().is_some() as u8));
        }
        "keyspace" => {
            let keys = ks.len();
            if keys > 0 {
                let expires = ctx.db.volatile_count();
                f("db0", &format!("keys={keys},expires={expires},avg_ttl=0"));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_follow_bytes_to_human() {
        assert_eq!(bytes_to_human(0), "0B");
        assert_eq!(bytes_to_human(1023), "1023B");
        assert_eq!(bytes_to_human(1024), "1.00K");
        assert_eq!(bytes_to_human(1558560), "1.49M");
        assert_eq!(bytes_to_human(25276502016), "23.54G");
    }
}
