//! Grid keys: the primary key names method, host, path and query; a response with `Vary`
//! is stored under a variant key that adds the values of the headers it names.

use http::request::Parts;
use http::HeaderMap;

/// The primary key of a request, or None when it would be longer than `max`.
pub(crate) fn primary(prefix: &str, req: &Parts, max: usize) -> Option<String> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let key = format!("{prefix}{} {host}{pq}", req.method);
    (key.len() <= max).then_some(key)
}

/// The variant key of `primary` for the request headers named in `vary` (lower case).
pub(crate) fn variant(primary: &str, vary: &[String], headers: &HeaderMap, max: usize) -> Option<String> {
    let mut key = format!("{primary}#");
    for name in vary {
        key.push_str(name);
        key.push('=');
        for v in headers.get_all(name.as_str()) {
            // Lossless: header values are bytes; escape the separators.
            for &b in v.as_bytes() {
                match b {
                    b'\\' | b'\n' | b',' => key.push_str(&format!("\\{b:02x}")),
                    _ => key.push(b as char),
                }
            }
            key.push(',');
        }
        key.push('\n');
    }
    (key.len() <= max).then_some(key)
}

/// The header names in a response's `Vary`, lower case, sorted; `None` for `Vary: *`.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.iter().any(|n| n == "*") {
        return None;
    }
    names.sort();
    names.dedup();
    Some(names)
}
