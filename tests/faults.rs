//! The fault-injection suite (issue 8's fast cases): real `cachegrid` processes in a grid of
//! three zones with sync replication, a recorded workload of clients (tests/common/workload.rs),
//! faults injected, and the history judged afterwards: no acknowledged write lost, every shared
//! key's history linearizable (tests/common/linearizability.rs), unknown outcomes counted as
//! unknown. Partitions are cut at each node's cluster bus with `DEBUG BUS-DROP` (the nodes
//! listen on 127.0.0.1 only: no network namespaces; docs/RELIABILITY.md says why this is the
//! same for our protocol). Each test prints a `FAULTS ...` line with its figures; `chaos` (ignored
//! here) is the long run scripts/chaos.sh drives.

mod common;
#[path = "common/grid.rs"]
mod grid;
#[path = "common/linearizability.rs"]
mod linearizability;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/workload.rs"]
mod workload;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grid::{wait_for_agreement, wait_for_rebalance_and_sync, Member, MemberOptions};
use workload::Workload;

/// The suite's members: sync replication, DEBUG on (bus faults and failpoints).
fn options() -> MemberOptions {
    MemberOptions::sync().args(&["--enable-debug-command", "local"])
}

/// Starts a member with the suite's options; `seed` to join, None to bootstrap.
fn start(zone: &'static str, seed: Option<&Member>) -> Member {
    Member::start_with(zone, seed, options())
}

/// Three members in three zones, settled.
fn grid_of_three() -> Vec<Member> {
    grid_of_three_with(options())
}

/// Three members in three zones started with `options`, settled.
fn grid_of_three_with(options: MemberOptions) -> Vec<Member> {
    let a = Member::start_with("zone-a", None, options.clone());
    let b = Member::start_with("zone-b", Some(&a), options.clone());
    let c = Member::start_with("zone-c", Some(&a), options);
    let members = vec![a, b, c];
    wait_for_rebalance_and_sync(&members.iter().collect::<Vec<_>>(), 3);
    members
}

fn seeds(members: &[Member]) -> Vec<SocketAddr> {
    members.iter().map(Member::addr).collect()
}

/// Cuts `victim` off from `others`: each side's bus drops calls to the other (both ways: a
/// symmetric partition).
fn isolate(victim: &Member, others: &[&Member]) {
    let peers: Vec<String> = others.iter().map(|m| m.bus_addr()).collect();
    let mut args = vec!["DEBUG", "BUS-DROP"];
    args.extend(peers.iter().map(String::as_str));
    assert_eq!(victim.cmd(&args), "+OK\r\n");
    for o in others {
        assert_eq!(o.cmd(&["DEBUG", "BUS-DROP", &victim.bus_addr()]), "+OK\r\n");
    }
}

/// Clears every bus fault on `members`.
fn heal(members: &[&Member]) {
    for m in members {
        assert_eq!(m.cmd(&["DEBUG", "BUS-HEAL"]), "+OK\r\n");
    }
}

/// A key `m` is the primary of now (it answers a write to it itself).
fn key_owned_by(m: &Member, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| m.cmd(&["SET", k, "before"]) == "+OK\r\n")
        .expect("the member is primary of some slot")
}

/// Lets the workload run for `d`.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Blocking helpers run off the async workers, as the grid tests do.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Stops the workload, reads everything back through `members`, prints and asserts.
async fn judge(scenario: &str, w: Workload, members: &[&Member], recovered: Duration) -> workload::Verdict {
    let history = w.finish().await;
    eprintln!("errors seen by the clients: {:?}", history.errors);
    if std::env::var("FAULTS_TIMELINE").is_ok() {
        let mut per_s = std::collections::BTreeMap::<u64, usize>::new();
        for (_, done) in history.acked_at.values() {
            *per_s.entry(done / 1000).or_default() += 1;
        }
        eprintln!("own keys acknowledged per second: {per_s:?} marks {:?}", history.marks);
    }
    let seeds: Vec<SocketAddr> = members.iter().map(|m| m.addr()).collect();
    let verdict = workload::verify(&seeds, history).await;
    eprintln!("{} recover_ms={}", verdict.summary(scenario), recovered.as_millis());
    // What each member holds of a lost key (READONLY: replicas answer too), for the diagnosis.
    for lost in verdict.lost.iter().take(5) {
        let key = lost.split_whitespace().next().unwrap();
        for m in members {
            let mut raw = m.process.raw();
            raw.cmd_str(&["READONLY"]);
            let slot = raw.cmd_str(&["CLUSTER", "KEYSLOT", key]);
            eprintln!("  {key} (slot {}) on {}: {:?}", slot.trim(), m.zone, raw.cmd_str(&["GET", key]));
        }
    }
    verdict.assert_safe();
    assert!(verdict.acked > 50, "the workload ran: {verdict:?}");
    verdict
}

/// (a) A node cut off from the other two while clients write: its slots fail over to their
/// replicas, it stops acknowledging writes once its lease lapses, and after the partition
/// heals it rejoins. No acknowledged write is lost; every key's history is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_rest_loses_its_slots_stops_acknowledging_and_rejoins() {
    let members = blocking(grid_of_three);
    let w = Workload::start(&seeds(&members), 4, 6, "cut:").await;
    run_for(Duration::from_secs(2)).await;
    let (victim, others) = (&members[2], [&members[0], &members[1]]);
    let owned = blocking(|| key_owned_by(victim, "cut-owned:"));
    let cut = Instant::now();
    w.mark("cut");
    blocking(|| isolate(victim, &others));
    blocking(|| wait_for_agreement(&others, 2));
    w.mark("failed over");
    let failed_over = cut.elapsed();
    // Cut off, its lease has lapsed (half the failover timeout, on its monotonic clock): it
    // acknowledges no write, for the slots it lost or any other.
    let reply = blocking(|| victim.cmd(&["SET", &owned, "during"]));
    assert!(!reply.starts_with('+'), "the cut-off node acknowledged a write: {reply}");
    run_for(Duration::from_secs(2)).await;
    blocking(|| heal(&[&members[0], &members[1], &members[2]]));
    w.mark("healed");
    let healed = Instant::now();
    blocking(|| wait_for_rebalance_and_sync(&members.iter().collect::<Vec<_>>(), 3));
    w.mark("rejoined");
    let rejoined = healed.elapsed();
    eprintln!("failed over in {failed_over:?}; rejoined {rejoined:?} after the heal; the cut-off node answered {reply:?}");
    run_for(Duration::from_secs(1)).await;
    judge("node-cut-off", w, &members.iter().collect::<Vec<_>>(), failed_over).await;
}

/// A read in a `sync` key space never returns a value its replicas do not hold (a dirty
/// read: once read, the value could vanish in a failover to such a replica). The primary's
/// bus to the key's replica is cut one way, so a SET reaches the primary only and times out
/// (outcome unknown); a GET of the key then waits for the replica and, as it stays cut off,
/// answers -TIMEOUT instead of the unreplicated value. Once healed, both hold the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "dirty reads are open: the read wait that passed it was withdrawn (docs/RELIABILITY.md)"]
async fn a_read_never_returns_a_sync_write_its_replica_does_not_hold() {
    // A long failover timeout: the one-way cut must not fail anybody over.
    let members = blocking(|| {
        let slow = options().timeout_ms(20_000);
        let a = Member::start_with("zone-a", None, slow.clone());
        let b = Member::start_with("zone-b", Some(&a), slow.clone());
        let c = Member::start_with("zone-c", Some(&a), slow);
        let members = vec![a, b, c];
        wait_for_rebalance_and_sync(&members.iter().collect::<Vec<_>>(), 3);
        members
    });
    let primary = &members[0];
    let key = blocking(|| key_owned_by(primary, "dirty:"));
    let replica = blocking(|| {
        members[1..]
            .iter()
            .find(|m| {
                let mut raw = m.process.raw();
                raw.cmd_str(&["READONLY"]);
                raw.cmd_str(&["GET", &key]) == "$6\r\nbefore\r\n"
            })
            .expect("the key's replica holds it")
    });
    assert_eq!(blocking(|| primary.cmd(&["DEBUG", "BUS-DROP", &replica.bus_addr()])), "+OK\r\n");
    let set = blocking(|| primary.cmd(&["SET", &key, "after"]));
    assert!(set.starts_with("-TIMEOUT"), "the replica cannot confirm the write: {set}");
    let started = Instant::now();
    let get = blocking(|| primary.cmd(&["GET", &key]));
    assert!(get.starts_with("-TIMEOUT"), "a read waits for the replica, then times out: {get}");
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited for the replication timeout");
    // Keys without an unconfirmed change are read at once.
    let other = blocking(|| key_owned_by(&members[1], "dirty-other:"));
    assert_eq!(blocking(|| members[1].cmd(&["GET", &other])), "$6\r\nbefore\r\n");
    blocking(|| heal(&[primary]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocking(|| primary.cmd(&["GET", &key])) != "$5\r\nafter\r\n" {
        assert!(Instant::now() < deadline, "the write reaches the replica once healed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut raw = replica.process.raw();
    raw.cmd_str(&["READONLY"]);
    assert_eq!(raw.cmd_str(&["GET", &key]), "$5\r\nafter\r\n", "read only once the replica holds it");
}

/// (b) A rotating partition (Jepsen's Hazelcast schedule on three nodes): each member in turn
/// is cut off from a majority of the other two, then the partition heals; clients write
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_majority_loses_no_acknowledged_write() {
    let members = blocking(grid_of_three);
    let all: Vec<&Member> = members.iter().collect();
    let w = Workload::start(&seeds(&members), 4, 6, "rot:").await;
    let mut longest = Duration::ZERO;
    for (round, victim) in members.iter().enumerate() {
        run_for(Duration::from_secs(1)).await;
        let others: Vec<&Member> = all.iter().copied().filter(|m| m.bus != victim.bus).collect();
        let cut = Instant::now();
        w.mark(format!("cut {}", victim.zone));
        blocking(|| isolate(victim, &others));
        blocking(|| wait_for_agreement(&others, 2));
        w.mark("failed over");
        let failed_over = cut.elapsed();
        longest = longest.max(failed_over);
        blocking(|| heal(&all));
        w.mark("healed");
        blocking(|| wait_for_rebalance_and_sync(&all, 3));
        w.mark("rebalanced");
        eprintln!(
            "round {round}: member {} cut off, failed over in {failed_over:?}; {} writes acknowledged so far",
            victim.zone,
            w.acked_so_far()
        );
    }
    run_for(Duration::from_secs(1)).await;
    judge("rotating-majority", w, &all, longest).await;
}

/// (c) The primary of the most slots is stopped (SIGSTOP) for 30 s, far past the failover
/// time, then continued: its slots were failed over, it acknowledges nothing for them when it
/// wakes (its lease ran out on its monotonic clock), and it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_stopped_for_30_seconds_loses_no_acknowledged_write_and_rejoins() {
    let members = blocking(grid_of_three);
    let all: Vec<&Member> = members.iter().collect();
    let w = Workload::start(&seeds(&members), 4, 6, "stop:").await;
    run_for(Duration::from_secs(1)).await;
    let victim = blocking(|| (0..3).max_by_key(|&i| members[i].primaries()).unwrap());
    let owned = blocking(|| key_owned_by(&members[victim], "stop-owned:"));
    let mut to_victim = members[victim].process.raw();
    let others: Vec<&Member> = all.iter().copied().filter(|m| m.bus != members[victim].bus).collect();
    members[victim].signal("-STOP");
    let stopped = Instant::now();
    blocking(|| wait_for_agreement(&others, 2));
    let failed_over = stopped.elapsed();
    run_for(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    members[victim].signal("-CONT");
    let reply = blocking(|| to_victim.cmd_str(&["SET", &owned, "after"]));
    assert!(!reply.starts_with('+'), "the woken node acknowledged a write for a slot it lost: {reply}");
    blocking(|| wait_for_rebalance_and_sync(&all, 3));
    eprintln!("stopped 30 s; failed over in {failed_over:?}; its first answer on waking: {reply:?}");
    run_for(Duration::from_secs(1)).await;
    judge("primary-sigstop-30s", w, &all, failed_over).await;
}

/// libfaketime's preload library, if installed (Debian's `faketime`).
fn libfaketime() -> Option<String> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string())
}

/// (d) Clock skew: one member's clocks run a minute ahead (libfaketime shifts its wall clock
/// and its monotonic clock), and it is cut off and brought back, then another member is:
/// leases and failure detection use each process's own monotonic intervals only, so nothing
/// changes. No acknowledged write lost; histories linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_its_clock_a_minute_ahead_changes_no_safety_decision() {
    let Some(lib) = libfaketime() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but libfaketime is not installed (scripts/test.sh installs Debian's faketime)");
        }
        eprintln!("skipping: libfaketime not installed (apt-get install faketime)");
        return;
    };
    let skewed = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", "+60s"), ("FAKETIME_NO_CACHE", "1")];
    let members = blocking(|| {
        let a = start("zone-a", None);
        let b = start("zone-b", Some(&a));
        let c = Member::start_with("zone-c", Some(&a), options().env(&skewed));
        let members = vec![a, b, c];
        wait_for_rebalance_and_sync(&members.iter().collect::<Vec<_>>(), 3);
        members
    });
    // The skew is real: the skewed node's TIME is a minute ahead.
    let time = |m: &Member| -> i64 {
        let t = m.cmd(&["TIME"]);
        t.lines().nth(2).unwrap().parse().unwrap()
    };
    let skew = blocking(|| time(&members[2]) - time(&members[0]));
    assert!((55..=65).contains(&skew), "member c runs a minute ahead: {skew} s");
    let all: Vec<&Member> = members.iter().collect();
    let w = Workload::start(&seeds(&members), 4, 6, "skew:").await;
    let mut longest = Duration::ZERO;
    for victim in [2, 0] {
        run_for(Duration::from_secs(1)).await;
        let others: Vec<&Member> = all.iter().copied().filter(|m| m.bus != members[victim].bus).collect();
        let cut = Instant::now();
        blocking(|| isolate(&members[victim], &others));
        blocking(|| wait_for_agreement(&others, 2));
        longest = longest.max(cut.elapsed());
        blocking(|| heal(&all));
        blocking(|| wait_for_rebalance_and_sync(&all, 3));
    }
    run_for(Duration::from_secs(1)).await;
    eprintln!("clock skew of member c: +{skew} s");
    judge("clock-skew-60s", w, &all, longest).await;
}

/// (e) Slot migration under a fault: one member is cut off, a fourth joins and slots move to
/// it while the partition lasts, then the partition heals and the grid settles on four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_joins_while_one_is_cut_off_and_no_write_is_lost() {
    let mut members = blocking(grid_of_three);
    let w = Workload::start(&seeds(&members), 4, 6, "mig:").await;
    run_for(Duration::from_secs(1)).await;
    let cut = Instant::now();
    blocking(|| isolate(&members[2], &[&members[0], &members[1]]));
    blocking(|| wait_for_agreement(&[&members[0], &members[1]], 2));
    let failed_over = cut.elapsed();
    let d = blocking(|| start("zone-c", Some(&members[0])));
    blocking(|| wait_for_rebalance_and_sync(&[&members[0], &members[1], &d], 3));
    let primaries_of_d = blocking(|| d.primaries());
    eprintln!("fourth member joined during the partition and serves {primaries_of_d} slots");
    blocking(|| heal(&[&members[0], &members[1], &members[2], &d]));
    members.push(d);
    let all: Vec<&Member> = members.iter().collect();
    blocking(|| wait_for_rebalance_and_sync(&all, 4));
    run_for(Duration::from_secs(1)).await;
    judge("join-during-partition", w, &all, failed_over).await;
}

/// Issue 4's failpoints: a member crashes (abort, as SIGKILL) at each moment between
/// "applied" and "acknowledged" in turn, while clients write in sync mode; after its slots
/// fail over and it restarts, every acknowledged write is readable, and the client whose
/// reply never came counts it as unknown, not failed. Needs a `failpoints` build
/// (scripts/test.sh passes `--features cachegrid/failpoints`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_crashing_at_each_failpoint_loses_no_acknowledged_write() {
    if !cfg!(feature = "failpoints") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the test build has no failpoints: run with --features cachegrid/failpoints");
        }
        eprintln!("skipping: built without the failpoints feature (--features cachegrid/failpoints)");
        return;
    }
    let mut members = blocking(grid_of_three);
    for (round, point) in
        ["replication-before-send", "replica-applied-before-ack", "replication-acked-before-reply"]
            .into_iter()
            .enumerate()
    {
        let w = Workload::start(&seeds(&members), 4, 6, &format!("fp{round}:")).await;
        run_for(Duration::from_millis(500)).await;
        let victim = round % 3;
        assert_eq!(blocking(|| members[victim].cmd(&["DEBUG", "FAILPOINT", point, "return"])), "+OK\r\n");
        let armed = Instant::now();
        blocking(|| wait_for_exit(&mut members[victim]));
        let crashed = armed.elapsed();
        let others: Vec<&Member> = (0..3).filter(|&i| i != victim).map(|i| &members[i]).collect();
        blocking(|| wait_for_agreement(&others, 2));
        let failed_over = armed.elapsed() - crashed;
        blocking(|| members[victim].restart());
        let all: Vec<&Member> = members.iter().collect();
        blocking(|| wait_for_rebalance_and_sync(&all, 3));
        run_for(Duration::from_millis(500)).await;
        let v = judge(&format!("failpoint-{point}"), w, &all, failed_over).await;
        eprintln!("{point}: crashed {crashed:?} after arming, failed over {failed_over:?} later");
        if point == "replication-acked-before-reply" {
            // The crash came between the replicas' acknowledgement and the reply: that
            // client's write is unknown to it, and it did take effect.
            assert!(v.unknown >= 1, "the unanswered write is counted as unknown: {v:?}");
        }
    }
    // The migration point: a fourth member joins and the first crashes after copying slots
    // to it, before the switch-over is committed.
    assert_eq!(
        blocking(|| members[0].cmd(&["DEBUG", "FAILPOINT", "migration-before-switch", "return"])),
        "+OK\r\n"
    );
    let w = Workload::start(&seeds(&members), 4, 6, "fpm:").await;
    let d = blocking(|| start("zone-a", Some(&members[1])));
    w.mark("joiner started");
    let armed = Instant::now();
    blocking(|| wait_for_exit(&mut members[0]));
    w.mark("crashed");
    blocking(|| wait_for_agreement(&[&members[1], &members[2], &d], 3));
    w.mark("failed over");
    let failed_over = armed.elapsed();
    blocking(|| members[0].restart());
    w.mark("restarted");
    members.push(d);
    let all: Vec<&Member> = members.iter().collect();
    blocking(|| wait_for_rebalance_and_sync(&all, 4));
    judge("failpoint-migration-before-switch", w, &all, failed_over).await;
}

/// Waits until `m`'s process has ended (a failpoint crashed it).
fn wait_for_exit(m: &mut Member) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.process.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the failpoint never fired");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The long run scripts/chaos.sh drives (ignored in the normal suite): mixed faults one after
/// another while clients write — a member cut off, a primary SIGKILLed and restarted, a
/// primary SIGSTOPped for 5 to 35 s, every bus message delayed, a failpoint crash — each
/// healed and the grid settled before the next. `CHAOS_SECONDS` (default 1800) bounds the
/// run; `CHAOS_KILLS=N` runs N primary kills instead. Prints a `CHAOS` line per fault and a
/// `FAULTS` line at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: scripts/chaos.sh runs it"]
async fn chaos() {
    use rand::Rng;
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (seconds, kills) = (env("CHAOS_SECONDS", 1800), env("CHAOS_KILLS", 0));
    // The chaos keys are written behind to a Postgres of the run's own, which the "postgres"
    // fault kills (CHAOS_POSTGRES=0: no database).
    let pg = (env("CHAOS_POSTGRES", 1) == 1).then(|| blocking(postgres::ThrowawayPostgres::start));
    let config_dir = tempfile::tempdir().unwrap();
    let mut member_options = options();
    if let Some(pg) = &pg {
        let config = config_dir.path().join("cachegrid.toml");
        std::fs::write(&config, chaos_keyspace_config(&pg.url())).unwrap();
        member_options = member_options.args(&["--config", config.to_str().unwrap()]);
    }
    let mut members = blocking(|| grid_of_three_with(member_options));
    let w = Workload::start(&seeds(&members), 4, 8, "chaos:").await;
    let started = Instant::now();
    let mut recoveries: Vec<Duration> = Vec::new();
    let mut n = 0u64;
    loop {
        if (kills > 0 && n >= kills) || (kills == 0 && started.elapsed() >= Duration::from_secs(seconds)) {
            break;
        }
        run_for(Duration::from_secs(1)).await;
        let mut kinds = if kills > 0 { vec!["kill"] } else { vec!["cut", "kill", "stop", "delay"] };
        if kills == 0 && cfg!(feature = "failpoints") {
            kinds.push("crash");
        }
        if kills == 0 && pg.is_some() {
            kinds.push("postgres");
        }
        let mut kind = kinds[rand::thread_rng().gen_range(0..kinds.len())];
        let victim = blocking(|| (0..3).max_by_key(|&i| members[i].primaries()).unwrap());
        let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let t = Instant::now();
        let recovered = match kind {
            "kill" => blocking(|| kill_and_restart(&mut members, victim, &others)),
            "cut" => {
                blocking(|| isolate(&members[victim], &[&members[others[0]], &members[others[1]]]));
                blocking(|| wait_for_agreement(&[&members[others[0]], &members[others[1]]], 2));
                let r = t.elapsed();
                blocking(|| heal(&members.iter().collect::<Vec<_>>()));
                r
            }
            "stop" => {
                let pause = Duration::from_secs(rand::thread_rng().gen_range(5..=35));
                members[victim].signal("-STOP");
                blocking(|| wait_for_agreement(&[&members[others[0]], &members[others[1]]], 2));
                let r = t.elapsed();
                run_for(pause.saturating_sub(t.elapsed())).await;
                members[victim].signal("-CONT");
                r
            }
            "postgres" => {
                // Postgres SIGKILLed for 5-30 s; half the time the busiest primary is
                // SIGKILLed in the middle of the outage too, with writes queued for the database,
                // and restarted before Postgres is.
                let pg = pg.as_ref().unwrap();
                let outage = Duration::from_secs(rand::thread_rng().gen_range(5..=30));
                blocking(|| pg.kill());
                let mut r = Duration::ZERO;
                if rand::thread_rng().gen_bool(0.5) {
                    kind = "postgres+kill";
                    run_for(outage / 2).await;
                    r = blocking(|| kill_and_restart(&mut members, victim, &others));
                }
                run_for(outage.saturating_sub(t.elapsed())).await;
                blocking(|| pg.restart());
                r
            }
            "delay" => {
                for m in &members {
                    blocking(|| m.cmd(&["DEBUG", "BUS-DELAY", "200"]));
                }
                run_for(Duration::from_secs(5)).await;
                blocking(|| heal(&members.iter().collect::<Vec<_>>()));
                Duration::ZERO
            }
            _ => {
                let points = [
                    "replication-before-send",
                    "replica-applied-before-ack",
                    "replication-acked-before-reply",
                ];
                let point = points[rand::thread_rng().gen_range(0..points.len())];
                blocking(|| members[victim].cmd(&["DEBUG", "FAILPOINT", point, "return"]));
                blocking(|| wait_for_exit(&mut members[victim]));
                blocking(|| wait_for_agreement(&[&members[others[0]], &members[others[1]]], 2));
                let r = t.elapsed();
                blocking(|| members[victim].restart());
                r
            }
        };
        blocking(|| wait_for_rebalance_and_sync(&members.iter().collect::<Vec<_>>(), 3));
        n += 1;
        if kind != "delay" && kind != "postgres" {
            recoveries.push(recovered);
        }
        eprintln!(
            "CHAOS fault={n} kind={kind} victim={} failover_ms={} settled_ms={} elapsed_s={} acked={}",
            members[victim].zone,
            recovered.as_millis(),
            t.elapsed().as_millis(),
            started.elapsed().as_secs(),
            w.acked_so_far()
        );
    }
    recoveries.sort();
    let p = |q: f64| {
        recoveries.get(((recoveries.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    };
    eprintln!(
        "CHAOS summary faults={n} seconds={} failover_p50_ms={} failover_max_ms={}",
        started.elapsed().as_secs(),
        p(0.5).as_millis(),
        p(1.0).as_millis()
    );
    let scenario = if kills > 0 { "chaos-primary-kills" } else { "chaos-mixed" };
    judge(scenario, w, &members.iter().collect::<Vec<_>>(), p(1.0)).await;
    if let Some(pg) = &pg {
        // Postgres ends equal to the grid: every chaos key the grid holds has its row, with the
        // grid's value. Rows beyond the grid's keys are the open defect of unacknowledged writes
        // written behind (docs/RELIABILITY.md): counted, and a failure with FAULTS_STRICT=1.
        let t = Instant::now();
        let want = blocking(|| grid_state(&members, "chaos:"));
        let extra = blocking(|| {
            postgres::wait_for_rows_allowing_extra(&pg.url(), "chaos_rows", &want, Duration::from_secs(180))
        });
        eprintln!(
            "FAULTS scenario={scenario}-postgres rows={} missing_or_stale=0 extra={} converged_ms={}",
            want.len(),
            extra.len(),
            t.elapsed().as_millis()
        );
        if !extra.is_empty() {
            eprintln!(
                "ROWS BEYOND THE GRID (known open defect, docs/RELIABILITY.md): {:?}",
                &extra[..extra.len().min(20)]
            );
        }
        if std::env::var("FAULTS_STRICT").is_ok_and(|v| v == "1") {
            assert!(extra.is_empty(), "rows beyond the grid's keys: {extra:?}");
        }
    }
}

/// SIGKILLs `members[victim]`, waits until `others` agree on a map without it, and starts it
/// again on its directory; returns how long the failover took.
fn kill_and_restart(members: &mut [Member], victim: usize, others: &[usize]) -> Duration {
    let t = Instant::now();
    let _ = members[victim].process.child.kill();
    let _ = members[victim].process.child.wait();
    wait_for_agreement(&[&members[others[0]], &members[others[1]]], 2);
    let failover = t.elapsed();
    members[victim].restart();
    failover
}

/// The chaos run's config: `chaos:*` written behind to `url`'s table `chaos_rows`.
fn chaos_keyspace_config(url: &str) -> String {
    format!(
        "postgres-url = \"{url}\"\n\n[[keyspace]]\nname = \"chaos\"\npattern = \"chaos:*\"\n\
         table = \"chaos_rows\"\nmode = \"write-behind\"\nread-through = false\n"
    )
}

/// Every key under `prefix` any member holds, with its value as its primary serves it.
fn grid_state(members: &[Member], prefix: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut keys = std::collections::BTreeSet::new();
    for m in members {
        let mut con =
            redis::Client::open(format!("redis://{}/", m.addr())).unwrap().get_connection().unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let client = grid::cluster_client(&members.iter().collect::<Vec<_>>(), 30);
    let mut con = client.get_connection().unwrap();
    keys.into_iter()
        .filter_map(|k| {
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(&mut con).unwrap();
            v.map(|v| (k, v))
        })
        .collect()
}
