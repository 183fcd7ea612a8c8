//! Headless Chromium for the dashboard tests: find it (skip with a message outside CI when it
//! is missing), dump a page's DOM after its scripts ran, take a screenshot into
//! `$CARGO_TARGET_TMPDIR`. Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium's path; None (the test skips, saying why) when it is not installed outside CI.
pub fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but chromium is not installed (scripts/test.sh installs it)");
    }
    eprintln!("skipping: chromium is not installed (apt-get install chromium, or run scripts/test.sh)");
    None
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
pub fn run_chromium(bin: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            // Let the page's fetch of /cluster and its first render finish before output.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn screenshot(bin: &Path, url: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    run_chromium(bin, url, &[&format!("--screenshot={}", path.display())]);
    let png = std::fs::read(&path).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    eprintln!("dashboard screenshot: {}", path.display());
    path
}
