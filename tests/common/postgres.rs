//! Postgres for persistence tests: the machine's server (127.0.0.1:5432, database `test`)
//! for ordinary tests, each on its own tables, and a throwaway server (initdb into a temp
//! dir, run as the `postgres` OS user) that tests kill with SIGKILL to cause a real outage.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Connection string of the machine's Postgres.
pub const MACHINE_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A table name no other test (or earlier run) uses.
pub fn unique_table(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("cg_{test}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs `f` with a connection to `url`, on a small runtime of its own (on its own thread, so
/// it works from async tests too).
pub fn with_pg<T: Send>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to postgres");
                tokio::spawn(conn);
                f(&client).await
            })
        })
        .join()
        .unwrap()
    })
}

/// Executes `sql` (several statements allowed).
pub fn exec(url: &str, sql: &str) {
    with_pg(url, async |c| c.batch_execute(sql).await.expect("sql runs"))
}

/// `SELECT count(*)` of a query's rows.
pub fn count(url: &str, from_where: &str) -> i64 {
    with_pg(url, async |c| {
        c.query_one(&format!("SELECT count(*) FROM {from_where}"), &[]).await.unwrap().get(0)
    })
}

/// Every (key, value, type, expires_at in ms) row of `table`, sorted by key.
pub fn rows(url: &str, table: &str) -> Vec<(String, Vec<u8>, String, Option<i64>)> {
    with_pg(url, async |c| {
        let sql = format!(
            "SELECT key, value, type, round(extract(epoch FROM expires_at) * 1000)::int8 FROM {table} ORDER BY key"
        );
        c.query(&sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
    })
}

/// Polls (for `within` at most) until `table` at `url` holds exactly `want` (key, value) rows;
/// panics with the rows missing, stale or extra.
pub fn wait_for_rows(
    url: &str,
    table: &str,
    want: &std::collections::BTreeMap<String, Vec<u8>>,
    within: Duration,
) {
    wait_for_rows_of(url, table, want, within, false);
}

/// Polls (for `within` at most) until `table` at `url` holds every row of `want` with its
/// value; returns the keys of the rows it holds beyond them. Panics with the rows missing or
/// stale.
pub fn wait_for_rows_allowing_extra(
    url: &str,
    table: &str,
    want: &std::collections::BTreeMap<String, Vec<u8>>,
    within: Duration,
) -> Vec<String> {
    wait_for_rows_of(url, table, want, within, true)
}

fn wait_for_rows_of(
    url: &str,
    table: &str,
    want: &std::collections::BTreeMap<String, Vec<u8>>,
    within: Duration,
    extra_allowed: bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let got: std::collections::BTreeMap<String, Vec<u8>> =
            rows(url, table).into_iter().map(|(k, v, _, _)| (k, v)).collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: want {:?}, row {:?}",
                    String::from_utf8_lossy(v),
                    got.get(k).map(|g| String::from_utf8_lossy(g).into_owned())
                )
            })
            .collect();
        let extra: Vec<String> = got.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
        if missing.is_empty() && (extra_allowed || extra.is_empty()) {
            return extra;
        }
        if Instant::now() > deadline {
            panic!(
                "Postgres differs from the grid: {} rows missing or stale {:?}, {} rows that should be gone {:?}",
                missing.len(),
                &missing[..missing.len().min(10)],
                extra.len(),
                &extra[..extra.len().min(10)]
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn bin(name: &str) -> PathBuf {
    for dir in [
        "/usr/local/bin",
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: the Postgres server binaries are needed for outage tests");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs a server binary as the `postgres` user when we are root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    let root = unsafe_is_root();
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn unsafe_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A Postgres server of its own, in a temp dir, on a free port.
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl ThrowawayPostgres {
    /// initdb and start.
    pub fn start() -> ThrowawayPostgres {
        let dir = tempfile::Builder::new().prefix("cg-pg-").tempdir().unwrap();
        if unsafe_is_root() {
            let ok = Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap().success();
            assert!(ok, "chown the temp dir to postgres");
        }
        let out = as_postgres(&bin("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let pg = ThrowawayPostgres { dir, port: free_port() };
        pg.restart();
        pg
    }

    /// Connection string.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2", self.port)
    }

    /// Starts the server again on the same port and data dir (after [`Self::kill`]).
    pub fn restart(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let out = as_postgres(&bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "postgres did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the postmaster and every backend: a real, abrupt outage.
    pub fn kill(&self) {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else { return };
        let pid = text.lines().next().unwrap_or("").trim().to_string();
        if pid.is_empty() {
            return;
        }
        let children =
            Command::new("pgrep").args(["-P", &pid]).output().map(|o| o.stdout).unwrap_or_default();
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        for child in String::from_utf8_lossy(&children).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", child]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The port must really be closed before the test goes on.
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The fields of key space `name` in INFO persistence (`pending_keys`, `rows_written`, ...),
/// with the database status as `postgres_status`.
pub fn keyspace_info(info: &str, name: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("postgres_status:") {
            out.insert("postgres_status".to_string(), v.trim().to_string());
        }
        if let Some(fields) = line.strip_prefix(&format!("keyspace_{name}:")) {
            for kv in fields.trim().split(',') {
                if let Some((k, v)) = kv.split_once('=') {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    out
}

/// Encodes a hash as the `value` column stores it (u32 BE length-prefixed fields and values).
pub fn encode_hash(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (f, v) in pairs {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes a stored hash into sorted (field, value) pairs.
pub fn decode_hash(b: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn take(b: &mut &[u8]) -> Vec<u8> {
        let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        let v = b[4..4 + n].to_vec();
        *b = &b[4 + n..];
        v
    }
    let mut rest = b;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let f = take(&mut rest);
        let v = take(&mut rest);
        out.push((f, v));
    }
    out.sort();
    out
}
