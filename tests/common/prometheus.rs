//! Prometheus text for the admin tests: a grammar-checking parser and `promtool check metrics`
//! when Prometheus's tool is installed. Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Parses Prometheus text exposition, checking its grammar: every sample belongs to a family
/// with a `# TYPE`, names and labels are well formed, values are numbers. Returns
/// `name{labels}` → value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(valid_name(name), "bad metric name in {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line}"
            );
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner =
                    labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("braced labels");
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(valid_name(k), "bad label name in {line}");
                    assert!(!v.trim_end_matches('"').contains('"'), "unescaped quote in {line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without a TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

/// `promtool check metrics` when Prometheus's tool is installed (scripts/test.sh installs it).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but promtool is not installed (apt-get install prometheus)");
        }
        eprintln!("promtool not installed: checked with the built-in parser only");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
