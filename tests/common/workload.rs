//! A recorded workload for the fault tests: clients doing SET, GET and INCR on a few shared
//! keys (the registers the linearizability checker judges) and SETs of keys of their own
//! (each written once, so a lost one is counted), through the `redis` crate's cluster client
//! with no retries, so every error is seen. Each operation is recorded with monotonic
//! invoke and complete times; an operation whose reply never came, or whose error does not
//! prove it was refused before it ran, is recorded as unknown, never as failed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use crate::linearizability::{Kind, Op};

/// How long a client waits for one reply before it counts the operation as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// What a finished workload saw.
#[derive(Debug, Default)]
pub struct History {
    /// Register operations (shared keys), for the checker.
    pub ops: Vec<Op>,
    /// Own keys whose SET was acknowledged, with the value and when (ms since the start).
    pub acked: Vec<(String, i64)>,
    /// When each acknowledged own key's SET was sent and answered (ms since the start).
    pub acked_at: std::collections::HashMap<String, (u64, u64)>,
    /// Events the test marked (a fault injected, healed), ms since the start.
    pub marks: Vec<(u64, String)>,
    /// Own keys whose SET has an unknown outcome.
    pub unknown: Vec<(String, i64)>,
    /// Operations refused before they ran (MOVED, CLUSTERDOWN, TRYAGAIN, refused connection).
    pub failed: usize,
    /// Register writes refused (by the error's evidence), with the error: for the diagnosis of
    /// a history that is not linearizable (was one applied after all?).
    pub refused_writes: Vec<(String, Kind, String)>,
    /// Errors by kind, for the test's log.
    pub errors: std::collections::BTreeMap<String, usize>,
    /// Longest time between two acknowledged writes (any client): how long the grid stopped
    /// taking writes.
    pub longest_gap: Duration,
    /// When the recording began.
    pub start: Option<Instant>,
}

impl History {
    /// Acknowledged writes: register SETs and INCRs answered, and own keys acknowledged.
    pub fn acked_writes(&self) -> usize {
        let register = self
            .ops
            .iter()
            .filter(|o| o.complete.is_some() && matches!(o.kind, Kind::Set(_) | Kind::Incr(_)))
            .count();
        register + self.acked.len()
    }

    /// Writes with an unknown outcome.
    pub fn unknown_writes(&self) -> usize {
        let register = self
            .ops
            .iter()
            .filter(|o| o.complete.is_none() && matches!(o.kind, Kind::Set(_) | Kind::Incr(_)))
            .count();
        register + self.unknown.len()
    }
}

/// Shared state of the running clients.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    history: Mutex<History>,
    last_ack: Mutex<Instant>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn acked_write(&self) {
        let now = Instant::now();
        let mut last = self.last_ack.lock();
        let gap = now - *last;
        *last = now;
        let mut h = self.history.lock();
        h.longest_gap = h.longest_gap.max(gap);
    }
}

/// Running clients; [`Workload::finish`] stops them and returns the history.
pub struct Workload {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    registers: Vec<String>,
    seeds: Vec<SocketAddr>,
}

/// What the outcome of a failed call is.
enum Outcome {
    /// Refused before it ran.
    Failed,
    /// It may have taken effect.
    Unknown,
}

fn classify(e: &redis::RedisError) -> Outcome {
    if e.is_connection_refusal() {
        return Outcome::Failed;
    }
    match e.code() {
        // Not MOVED or ASK: a chaos run read a value whose SET the client saw end in MOVED
        // (the cluster client may have sent it more than once); they stay unknown.
        Some("CLUSTERDOWN" | "CROSSSLOT") => Outcome::Failed,
        // TRYAGAIN of a key in flight is a refusal; write-through's TRYAGAIN comes after the write.
        Some("TRYAGAIN") if !e.to_string().contains("write-through") => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

fn error_kind(e: &redis::RedisError) -> String {
    e.code().map(str::to_owned).unwrap_or_else(|| format!("{:?}", e.kind()))
}

/// A cluster client with no retries: every error reaches the workload.
pub fn client(seeds: &[SocketAddr]) -> redis::cluster::ClusterClient {
    redis::cluster::ClusterClientBuilder::new(
        seeds.iter().map(|a| format!("redis://{a}/")).collect::<Vec<_>>(),
    )
    .retries(0)
    .connection_timeout(Duration::from_secs(1))
    .response_timeout(OP_TIMEOUT)
    .build()
    .unwrap()
}

impl Workload {
    /// Starts `clients` clients on `registers` shared keys named `{prefix}r:N`, reaching the
    /// grid through `seeds`.
    pub async fn start(seeds: &[SocketAddr], clients: usize, registers: usize, prefix: &str) -> Workload {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            history: Mutex::new(History { start: Some(Instant::now()), ..Default::default() }),
            last_ack: Mutex::new(Instant::now()),
        });
        let registers: Vec<String> = (0..registers).map(|i| format!("{prefix}r:{i}")).collect();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let con = client(seeds).get_async_connection().await.unwrap();
            let (shared, registers, prefix) = (shared.clone(), registers.clone(), prefix.to_string());
            tasks.push(tokio::spawn(run_client(c, con, shared, registers, prefix)));
        }
        Workload { shared, tasks, registers, seeds: seeds.to_vec() }
    }

    /// Notes an event of the test (a fault injected, healed) in the history's timeline.
    pub fn mark(&self, what: impl Into<String>) {
        let at = self.shared.now() / 1_000_000;
        self.shared.history.lock().marks.push((at, what.into()));
    }

    /// Acknowledged writes so far.
    pub fn acked_so_far(&self) -> usize {
        self.shared.history.lock().acked_writes()
    }

    /// Stops the clients and returns what they saw.
    pub async fn finish(self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.shared.history.lock())
    }
}

async fn run_client(
    c: usize,
    mut con: redis::cluster_async::ClusterConnection,
    shared: Arc<Shared>,
    registers: Vec<String>,
    prefix: String,
) {
    let mut n = 0i64;
    let base = (c as i64 + 1) * 1_000_000_000;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let dice = rand::thread_rng().gen_range(0..100);
        if dice < 30 {
            // A key of its own, written once.
            let key = format!("{prefix}own:{c}:{n}");
            let value = base + n;
            let sent = shared.now() / 1_000_000;
            let r = call::<()>(&mut con, redis::cmd("SET").arg(&key).arg(value)).await;
            let failed = {
                let mut h = shared.history.lock();
                match r {
                    Ok(()) => {
                        let answered = shared.now() / 1_000_000;
                        h.acked_at.insert(key.clone(), (sent, answered));
                        h.acked.push((key, value));
                        false
                    }
                    Err(e) => {
                        *h.errors.entry(error_kind(&e)).or_default() += 1;
                        match classify(&e) {
                            Outcome::Failed => h.failed += 1,
                            Outcome::Unknown => h.unknown.push((key, value)),
                        }
                        true
                    }
                }
            };
            if failed {
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                shared.acked_write();
            }
            continue;
        }
        let key = registers[rand::thread_rng().gen_range(0..registers.len())].clone();
        let invoke = shared.now();
        let (kind, result): (Kind, Result<Kind, redis::RedisError>) = if dice < 55 {
            let value = base + n;
            let r = call::<()>(&mut con, redis::cmd("SET").arg(&key).arg(value)).await;
            (Kind::Set(value), r.map(|()| Kind::Set(value)))
        } else if dice < 70 {
            let r = call::<i64>(&mut con, redis::cmd("INCR").arg(&key)).await;
            (Kind::Incr(None), r.map(|v| Kind::Incr(Some(v))))
        } else {
            let r = call::<Option<i64>>(&mut con, redis::cmd("GET").arg(&key)).await;
            (Kind::Get(None), r.map(Kind::Get))
        };
        let complete = shared.now();
        let write = !matches!(kind, Kind::Get(_));
        let failed = {
            let mut h = shared.history.lock();
            match result {
                Ok(kind) => {
                    h.ops.push(Op { key, kind, invoke, complete: Some(complete) });
                    false
                }
                Err(e) => {
                    *h.errors.entry(error_kind(&e)).or_default() += 1;
                    match classify(&e) {
                        Outcome::Failed if write => {
                            h.failed += 1;
                            h.refused_writes.push((key, kind, e.to_string()));
                        }
                        Outcome::Failed => h.failed += 1,
                        // An unanswered read is no operation; an unanswered write may have happened.
                        Outcome::Unknown if write => h.ops.push(Op { key, kind, invoke, complete: None }),
                        Outcome::Unknown => {}
                    }
                    true
                }
            }
        };
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else if write {
            shared.acked_write();
        }
    }
}

/// One command with the client-side deadline (the reply may never come from a stopped node).
async fn call<T: redis::FromRedisValue>(
    con: &mut redis::cluster_async::ClusterConnection,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, cmd.query_async(con)).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no reply in time",
        ))),
    }
}

/// The figures of a finished run, checked against the grid after the faults healed: every
/// acknowledged own key read back (retrying through redirections), a final read of every
/// register added to the history, and the registers' histories checked.
#[derive(Debug)]
pub struct Verdict {
    /// Acknowledged writes.
    pub acked: usize,
    /// Acknowledged own keys missing or wrong.
    pub lost: Vec<String>,
    /// Writes with an unknown outcome.
    pub unknown: usize,
    /// Of the own keys with an unknown outcome, how many turned out written.
    pub unknown_applied: usize,
    /// Operations refused.
    pub failed: usize,
    /// Register keys whose history is not linearizable (or could not be decided), with why.
    pub not_linearizable: std::collections::BTreeMap<String, crate::linearizability::Verdict>,
    /// Register operations checked.
    pub register_ops: usize,
    /// Shared keys (registers) checked.
    pub registers: usize,
    /// Longest time without an acknowledged write.
    pub longest_gap: Duration,
}

impl Verdict {
    /// One line for the test's log and for scripts/chaos.sh.
    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "FAULTS scenario={scenario} acked={} lost={} unknown={} unknown_applied={} failed={} register_ops={} registers={} not_linearizable={} longest_gap_ms={}",
            self.acked,
            self.lost.len(),
            self.unknown,
            self.unknown_applied,
            self.failed,
            self.register_ops,
            self.registers,
            self.not_linearizable.len(),
            self.longest_gap.as_millis()
        )
    }

    /// Fails the test if an acknowledged write was lost. A register history that is not
    /// linearizable is printed, and fails the test only with `FAULTS_STRICT=1`: the grid has a
    /// known open anomaly (stale register values around failovers, docs/RELIABILITY.md) that
    /// is not fixed yet.
    #[track_caller]
    pub fn assert_safe(&self) {
        if !self.not_linearizable.is_empty() {
            eprintln!(
                "NOT LINEARIZABLE (known open anomaly, docs/RELIABILITY.md): {:?}",
                self.not_linearizable
            );
        }
        assert!(
            self.lost.is_empty(),
            "{} acknowledged writes lost: {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(20)]
        );
        if std::env::var("FAULTS_STRICT").is_ok_and(|v| v == "1") {
            assert!(self.not_linearizable.is_empty(), "not linearizable: {:?}", self.not_linearizable);
        }
    }
}

/// Reads everything back through `seeds` (with retries: the grid has settled) and judges.
pub async fn verify(seeds: &[SocketAddr], history: History) -> Verdict {
    let client = redis::cluster::ClusterClientBuilder::new(
        seeds.iter().map(|a| format!("redis://{a}/")).collect::<Vec<_>>(),
    )
    .retries(30)
    .build()
    .unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let start = history.start.expect("recorded");
    let mut lost = Vec::new();
    for (key, value) in &history.acked {
        let v: Option<i64> = read(&mut con, key).await;
        if v != Some(*value) {
            let (sent, answered) = history.acked_at.get(key).copied().unwrap_or_default();
            lost.push(format!(
                "{key} (sent at {sent} ms, acknowledged {value} at {answered} ms, read {v:?})"
            ));
        }
    }
    let mut unknown_applied = 0;
    for (key, value) in &history.unknown {
        if read(&mut con, key).await == Some(*value) {
            unknown_applied += 1;
        }
    }
    let mut ops = history.ops.clone();
    let mut keys: Vec<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
    let registers = keys.len();
    for key in keys {
        let invoke = start.elapsed().as_nanos() as u64;
        let v: Option<i64> = read(&mut con, &key).await;
        let complete = start.elapsed().as_nanos() as u64;
        ops.push(Op { key, kind: Kind::Get(v), invoke, complete: Some(complete) });
    }
    if !lost.is_empty() {
        eprintln!("timeline (ms since the start): {:?}", history.marks);
    }
    // A value read that only a refused write could have produced means the refusal was wrong.
    for (key, kind, error) in &history.refused_writes {
        if let Kind::Set(v) = kind {
            if ops.iter().any(|o| o.key == *key && matches!(o.kind, Kind::Get(Some(r)) if r == *v)) {
                eprintln!("refused write took effect: {key} {kind:?}: {error}");
            }
        }
    }
    let register_ops = ops.len();
    let dump = ops.clone();
    let not_linearizable =
        tokio::task::spawn_blocking(move || crate::linearizability::check_all(&ops)).await.unwrap();
    if let Some(dir) = std::env::var_os("FAULTS_HISTORY_DIR") {
        dump_histories(std::path::Path::new(&dir), &dump, &not_linearizable, &history.marks);
    }
    Verdict {
        acked: history.acked_writes(),
        lost,
        unknown: history.unknown_writes(),
        unknown_applied,
        failed: history.failed,
        not_linearizable,
        register_ops,
        registers,
        longest_gap: history.longest_gap,
    }
}

/// GET with retries until the grid answers (it has healed; a moment of CLUSTERDOWN may remain).
async fn read(con: &mut redis::cluster_async::ClusterConnection, key: &str) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match redis::cmd("GET").arg(key).query_async::<Option<i64>>(con).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reading {key} back: {e}"),
        }
    }
}

/// Writes the whole history of each key that is not linearizable to `dir` (one file per key,
/// one operation a line, by invocation), for the diagnosis: `FAULTS_HISTORY_DIR`.
fn dump_histories(
    dir: &std::path::Path,
    ops: &[Op],
    bad: &std::collections::BTreeMap<String, crate::linearizability::Verdict>,
    marks: &[(u64, String)],
) {
    use std::io::Write;
    for (key, verdict) in bad {
        let mut mine: Vec<&Op> = ops.iter().filter(|o| &o.key == key).collect();
        mine.sort_by_key(|o| o.invoke);
        let name = key.replace([':', '/'], "_");
        let Ok(mut f) = std::fs::File::create(dir.join(format!("{name}.history"))) else { return };
        let _ = writeln!(f, "# {verdict:?}");
        let _ = writeln!(f, "# marks (ms): {marks:?}");
        for o in mine {
            let done = o.complete.map_or("unknown".to_string(), |c| format!("{:.4}", c as f64 / 1e9));
            let _ = writeln!(f, "{:.4} {done} {:?}", o.invoke as f64 / 1e9, o.kind);
        }
    }
}
