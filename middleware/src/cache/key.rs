//! Grid keys. The primary key names method, host, path and query inside a cluster hash tag,
//! `{prefix}{GET host/path?q}`, so every key derived from it (`#` and a suffix: the Vary
//! variants, their index, the fill lease) lives in the same slot and one transaction can
//! write them all. Tag indexes are `{prefix}tag:{tag}`: one hash per tag, in the tag's slot.

use http::request::Parts;
use http::HeaderMap;

/// Appends `s`, escaping `%` and `}` so the hash tag cannot end early (lossless).
fn push_escaped(key: &mut String, s: &str) {
    if !s.contains(['%', '}']) {
        key.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '%' => key.push_str("%25"),
            '}' => key.push_str("%7D"),
            c => key.push(c),
        }
    }
}

/// The primary key of `method` on `host` + `path_and_query`.
pub(crate) fn primary_of(prefix: &str, method: &str, host: &str, pq: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + method.len() + host.len() + pq.len() + 4);
    key.push_str(prefix);
    key.push('{');
    key.push_str(method);
    key.push(' ');
    push_escaped(&mut key, host);
    push_escaped(&mut key, pq);
    key.push('}');
    key
}

/// The host a request is for: its `Host` header, else the URI's authority.
pub(crate) fn host(req: &Parts) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// The primary key of a request, or None when it would be longer than `max`.
pub(crate) fn primary(prefix: &str, req: &Parts, max: usize) -> Option<String> {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let key = primary_of(prefix, req.method.as_str(), host(req), pq);
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

/// The lease key guarding the fill of `key` (a primary or variant key).
pub(crate) fn lease(key: &str) -> String {
    format!("{key}#lease")
}

/// The hash listing the variant keys stored under `primary` (so a purge finds them all).
pub(crate) fn variants(primary: &str) -> String {
    format!("{primary}#variants")
}

/// The hash listing the keys of the responses tagged `tag`.
pub(crate) fn tag(prefix: &str, tag: &str) -> String {
    let mut key = format!("{prefix}tag:{{");
    push_escaped(&mut key, tag);
    key.push('}');
    key
}

/// The tags in a response's `Cache-Tag` headers (comma or space separated), at most `MAX_TAGS`
/// of at most `MAX_TAG_LEN` bytes each, deduplicated.
pub(crate) fn tags(headers: &HeaderMap) -> Vec<String> {
    const MAX_TAGS: usize = 64;
    const MAX_TAG_LEN: usize = 256;
    let mut tags: Vec<String> = headers
        .get_all(super::CACHE_TAG)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ' ', '\t']))
        .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN)
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    tags.truncate(MAX_TAGS);
    tags
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_share_the_primary_hash_tag() {
        let p = primary_of("app:", "GET", "h", "/a}b%7D?x={y}");
        assert_eq!(p, "app:{GET h/a%7Db%257D?x={y%7D}");
        let slot = |k: &str| cachegrid::store::key_slot(k.as_bytes());
        for k in [lease(&p), variants(&p), format!("{p}#accept=en,\n")] {
            assert_eq!(slot(&k), slot(&p), "{k}");
        }
        assert_ne!(primary_of("app:", "GET", "h", "/a}"), primary_of("app:", "GET", "h", "/a%7D"));
    }

    #[test]
    fn cache_tags_split_on_commas_and_spaces() {
        let mut h = HeaderMap::new();
        h.append("cache-tag", "product:42, list  product:42".parse().unwrap());
        h.append("cache-tag", "home".parse().unwrap());
        assert_eq!(tags(&h), ["home", "list", "product:42"]);
    }
}
