//! What the grid holds for one key: a stored response (head and body in one value, so a hit
//! is one read) or, under a primary key, the `Vary` header names that pick its variant key.
//! The RFC 9111 policy is rebuilt from the stored heads on every read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, CACHE_CONTROL, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy};
use serde::{Deserialize, Serialize};

/// One grid value.
#[derive(Serialize, Deserialize)]
pub(crate) enum Stored {
    /// A response.
    Response(Entry),
    /// The responses for this primary key vary on these request headers.
    Vary(Vec<String>),
}

/// A stored response with the parts of its request the policy needs.
#[derive(Serialize, Deserialize)]
pub(crate) struct Entry {
    method: String,
    uri: String,
    /// Only `Host` and the headers named by `Vary`: nothing else of a request is shared.
    req_headers: Vec<(String, Vec<u8>)>,
    status: u16,
    /// As the upstream sent them.
    headers: Vec<(String, Vec<u8>)>,
    /// The default TTL applied, in seconds, when the response stated no freshness.
    default_ttl: Option<u64>,
    /// When the response was received, in ms since the epoch.
    response_time_ms: u64,
    body: Vec<u8>,
}

fn pairs(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

fn map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_bytes(v)) {
            h.append(k, v);
        }
    }
    h
}

/// Whether the response states its own freshness (else the route's default TTL applies).
pub(crate) fn explicit_freshness(h: &HeaderMap) -> bool {
    h.contains_key(http::header::EXPIRES)
        || h.get_all(CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).any(|v| {
            v.split(',').map(|d| d.trim().to_ascii_lowercase()).any(|d| {
                d.starts_with("max-age") || d.starts_with("s-maxage") || d == "no-cache" || d == "no-store"
            })
        })
}

/// The headers the policy judges: the upstream's plus, when it stated no freshness, the
/// default TTL as `s-maxage` (a shared-cache-only directive, never shown to clients).
fn policy_headers(headers: &HeaderMap, default_ttl: Option<u64>) -> HeaderMap {
    let mut h = headers.clone();
    if let Some(ttl) = default_ttl {
        if let Ok(v) = HeaderValue::from_str(&format!("s-maxage={ttl}")) {
            h.append(CACHE_CONTROL, v);
        }
    }
    h
}

fn policy(
    req: &http::request::Parts,
    res_status: StatusCode,
    res_headers: HeaderMap,
    response_time: SystemTime,
) -> CachePolicy {
    let mut res = http::Response::new(());
    *res.status_mut() = res_status;
    *res.headers_mut() = res_headers;
    CachePolicy::new_options(req, &res, response_time, CacheOptions::default())
}

/// The verdict on a response before its body is read: storable, for how long.
pub(crate) struct Verdict {
    default_ttl: Option<u64>,
    now: SystemTime,
    /// Freshness left, per RFC 9111.
    pub(crate) ttl: Duration,
}

/// Whether RFC 9111 lets a shared cache store `res` (to `req`) and reuse it for a while.
pub(crate) fn judge(
    req: &http::request::Parts,
    res: &http::response::Parts,
    default_ttl: Option<Duration>,
) -> Option<Verdict> {
    let default_ttl = default_ttl.filter(|_| !explicit_freshness(&res.headers)).map(|d| d.as_secs());
    let now = SystemTime::now();
    let p = policy(req, res.status, policy_headers(&res.headers, default_ttl), now);
    let ttl = p.time_to_live(now);
    (p.is_storable() && !ttl.is_zero()).then_some(Verdict { default_ttl, now, ttl })
}

impl Entry {
    /// The entry for a response to `req` judged storable.
    pub(crate) fn new(
        req: &http::request::Parts,
        res: &http::response::Parts,
        vary: &[String],
        verdict: &Verdict,
        body: Bytes,
    ) -> Entry {
        let mut kept = HeaderMap::new();
        for name in std::iter::once("host").chain(vary.iter().map(String::as_str)) {
            if let Ok(n) = HeaderName::try_from(name) {
                for v in req.headers.get_all(&n) {
                    kept.append(n.clone(), v.clone());
                }
            }
        }
        Entry {
            method: req.method.to_string(),
            uri: req.uri.to_string(),
            req_headers: pairs(&kept),
            status: res.status.as_u16(),
            headers: pairs(&res.headers),
            default_ttl: verdict.default_ttl,
            response_time_ms: verdict.now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            body: body.to_vec(),
        }
    }

    /// The head to serve for `req` if the entry may be reused without the upstream now
    /// (fresh and matching per RFC 9111), with an up-to-date `Age`.
    pub(crate) fn fresh_for(&self, req: &http::request::Parts) -> Option<http::response::Parts> {
        let mut stored_req = http::Request::new(());
        *stored_req.method_mut() = Method::from_bytes(self.method.as_bytes()).ok()?;
        *stored_req.uri_mut() = self.uri.parse::<Uri>().ok()?;
        *stored_req.headers_mut() = map(&self.req_headers);
        let (stored_req, ()) = stored_req.into_parts();
        let headers = map(&self.headers);
        let response_time = UNIX_EPOCH + Duration::from_millis(self.response_time_ms);
        let status = StatusCode::from_u16(self.status).ok()?;
        let p = policy(&stored_req, status, policy_headers(&headers, self.default_ttl), response_time);
        match p.before_request(req, SystemTime::now()) {
            http_cache_semantics::BeforeRequest::Fresh(mut parts) => {
                // The crate writes `Date` in RFC 2822 form; HTTP wants IMF-fixdate.
                if let Ok(d) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
                    parts.headers.insert(http::header::DATE, d);
                }
                // Show the client the upstream's Cache-Control, not the default TTL.
                parts.headers.remove(CACHE_CONTROL);
                for v in headers.get_all(CACHE_CONTROL) {
                    parts.headers.append(CACHE_CONTROL, v.clone());
                }
                Some(parts)
            }
            http_cache_semantics::BeforeRequest::Stale { .. } => None,
        }
    }

    /// The stored body.
    pub(crate) fn body(self) -> Bytes {
        Bytes::from(self.body)
    }
}

/// Encodes a grid value.
pub(crate) fn encode(s: &Stored) -> Vec<u8> {
    bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap_or_default()
}

/// Decodes a grid value; None for anything else (an old format, a foreign key).
pub(crate) fn decode(b: &[u8]) -> Option<Stored> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).ok().map(|(s, _)| s)
}

/// Whether the client's conditional headers match the cached head, so a 304 answers it
/// (RFC 9110 13.1.2 and 13.1.3; `If-None-Match` takes precedence).
pub(crate) fn not_modified(req: &HeaderMap, res: &HeaderMap) -> bool {
    if let Some(inm) = req.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = res.get(ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm.split(',').any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    let since = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified =
        res.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// The head of a 304 for `full`: the validators and caching headers only (RFC 9110 15.4.5).
pub(crate) fn head_304(full: &http::response::Parts) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    for name in
        ["cache-control", "content-location", "date", "etag", "expires", "vary", "age", "last-modified"]
    {
        for v in full.headers.get_all(name) {
            parts.headers.append(HeaderName::from_static(name), v.clone());
        }
    }
    parts
}
