//! What the grid holds for one key: a stored response (head and body in one value, so a hit
//! is one read) or, under a primary key, the `Vary` header names that pick its variant key.
//! A value is the bincode of [`Stored`] followed by the raw body, so decoding a hit copies no
//! body. The RFC 9111 policy is rebuilt once per grid read and kept with the L1 copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, CACHE_CONTROL, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use serde::{Deserialize, Serialize};

/// One grid value, less the body that follows it.
#[derive(Serialize, Deserialize)]
pub(crate) enum Stored {
    /// A response.
    Response(Meta),
    /// The responses for this primary key vary on these request headers.
    Vary { names: Vec<String>, expires_ms: u64 },
}

/// A stored response's head with the parts of its request the policy needs.
#[derive(Serialize, Deserialize)]
pub(crate) struct Meta {
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
    /// When it stops being fresh.
    fresh_until_ms: u64,
    /// Its stale-while-revalidate and stale-if-error windows past that (0: none).
    swr_ms: u64,
    sie_ms: u64,
}

/// A grid value decoded, ready to answer from (what L1 keeps).
// Always behind an Arc: boxing the large variant would only add a second allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Found {
    Response(Cached),
    Vary { names: Vec<String>, expires_ms: u64 },
}

/// A stored response with its policy built.
pub(crate) struct Cached {
    meta: Meta,
    policy: CachePolicy,
    /// The upstream's `Cache-Control`, shown to clients instead of the policy's (which may
    /// carry the default TTL).
    cache_control: Vec<HeaderValue>,
    pub(crate) body: Bytes,
}

/// What a stored response can do for a request.
pub(crate) enum Use {
    /// Fresh: this head answers.
    Fresh(http::response::Parts),
    /// Stale, but within a window the origin allows: this head answers while revalidating
    /// (`revalidate`), or if the upstream fails (`on_error`).
    Stale { head: http::response::Parts, revalidate: bool, on_error: bool },
    /// Neither (stale past its windows, or the request will not take a cached answer).
    No,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
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

fn directives(h: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    h.get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
}

/// Whether the response states its own freshness (else the route's default TTL applies).
pub(crate) fn explicit_freshness(h: &HeaderMap) -> bool {
    h.contains_key(http::header::EXPIRES)
        || directives(h).any(|d| {
            d.starts_with("max-age") || d.starts_with("s-maxage") || d == "no-cache" || d == "no-store"
        })
}

/// The `stale-while-revalidate` and `stale-if-error` windows (RFC 5861) of a response, zero
/// when a directive forbids a shared cache to serve it stale (RFC 9111 4.2.4: `no-cache`,
/// `must-revalidate`, `proxy-revalidate`, `s-maxage`).
fn stale_windows(h: &HeaderMap) -> (Duration, Duration) {
    let (mut swr, mut sie) = (Duration::ZERO, Duration::ZERO);
    for d in directives(h) {
        let (name, value) = d.split_once('=').unwrap_or((d.as_str(), ""));
        let secs = || Duration::from_secs(value.trim().trim_matches('"').parse().unwrap_or(0));
        match name.trim() {
            "no-cache" | "must-revalidate" | "proxy-revalidate" | "s-maxage" => {
                return (Duration::ZERO, Duration::ZERO)
            }
            "stale-while-revalidate" => swr = secs(),
            "stale-if-error" => sie = secs(),
            _ => {}
        }
    }
    (swr, sie)
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
    swr: Duration,
    sie: Duration,
}

impl Verdict {
    /// How long the grid keeps the entry: its freshness and its stale windows (at most `max_stale`).
    pub(crate) fn keep(&self) -> Duration {
        self.ttl + self.swr.max(self.sie)
    }

    /// When the grid drops the entry, in ms since the epoch.
    pub(crate) fn expires_ms(&self) -> u64 {
        (self.now + self.keep()).duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }
}

/// Whether RFC 9111 lets a shared cache store `res` (to `req`) and reuse it for a while.
pub(crate) fn judge(
    req: &http::request::Parts,
    res: &http::response::Parts,
    default_ttl: Option<Duration>,
    max_stale: Duration,
) -> Option<Verdict> {
    let default_ttl = default_ttl.filter(|_| !explicit_freshness(&res.headers)).map(|d| d.as_secs());
    let now = SystemTime::now();
    let p = policy(req, res.status, policy_headers(&res.headers, default_ttl), now);
    let ttl = p.time_to_live(now);
    let (swr, sie) = stale_windows(&res.headers);
    let verdict = Verdict { default_ttl, now, ttl, swr: swr.min(max_stale), sie: sie.min(max_stale) };
    (p.is_storable() && !ttl.is_zero()).then_some(verdict)
}

impl Meta {
    /// The entry for a response to `req` judged storable.
    pub(crate) fn new(
        req: &http::request::Parts,
        res: &http::response::Parts,
        vary: &[String],
        verdict: &Verdict,
    ) -> Meta {
        let mut kept = HeaderMap::new();
        for name in std::iter::once("host").chain(vary.iter().map(String::as_str)) {
            if let Ok(n) = HeaderName::try_from(name) {
                for v in req.headers.get_all(&n) {
                    kept.append(n.clone(), v.clone());
                }
            }
        }
        let response_time_ms = verdict.now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Meta {
            method: req.method.to_string(),
            uri: req.uri.to_string(),
            req_headers: pairs(&kept),
            status: res.status.as_u16(),
            headers: pairs(&res.headers),
            default_ttl: verdict.default_ttl,
            response_time_ms,
            fresh_until_ms: response_time_ms + verdict.ttl.as_millis() as u64,
            swr_ms: verdict.swr.as_millis() as u64,
            sie_ms: verdict.sie.as_millis() as u64,
        }
    }
}

/// Encodes a grid value: the bincode of `s`, then `body`.
pub(crate) fn encode(s: &Stored, body: &[u8]) -> Vec<u8> {
    let mut v = bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap_or_default();
    v.extend_from_slice(body);
    v
}

/// Decodes a grid value; None for anything else (an old format, a foreign key).
pub(crate) fn decode(value: Vec<u8>) -> Option<Found> {
    let (stored, n): (Stored, usize) =
        bincode::serde::decode_from_slice(&value, bincode::config::standard()).ok()?;
    Some(match stored {
        Stored::Vary { names, expires_ms } => Found::Vary { names, expires_ms },
        Stored::Response(meta) => {
            let body = Bytes::from(value).slice(n..);
            Found::Response(Cached::new(meta, body)?)
        }
    })
}

impl Found {
    /// When the grid drops this value, in ms since the epoch.
    pub(crate) fn expires_ms(&self) -> u64 {
        match self {
            Found::Response(c) => c.meta.fresh_until_ms + c.meta.swr_ms.max(c.meta.sie_ms),
            Found::Vary { expires_ms, .. } => *expires_ms,
        }
    }

    /// Bytes it takes in memory, roughly (for L1's size bound).
    pub(crate) fn weight(&self) -> usize {
        match self {
            Found::Response(c) => {
                let h: usize = c.meta.headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
                512 + c.body.len() + 2 * h + c.meta.uri.len()
            }
            Found::Vary { names, .. } => 64 + names.iter().map(|n| n.len() + 24).sum::<usize>(),
        }
    }
}

impl Cached {
    fn new(meta: Meta, body: Bytes) -> Option<Cached> {
        let mut stored_req = http::Request::new(());
        *stored_req.method_mut() = Method::from_bytes(meta.method.as_bytes()).ok()?;
        *stored_req.uri_mut() = meta.uri.parse::<Uri>().ok()?;
        *stored_req.headers_mut() = map(&meta.req_headers);
        let (stored_req, ()) = stored_req.into_parts();
        let headers = map(&meta.headers);
        let response_time = UNIX_EPOCH + Duration::from_millis(meta.response_time_ms);
        let status = StatusCode::from_u16(meta.status).ok()?;
        let cache_control = headers.get_all(CACHE_CONTROL).iter().cloned().collect();
        let policy = policy(&stored_req, status, policy_headers(&headers, meta.default_ttl), response_time);
        Some(Cached { meta, policy, cache_control, body })
    }

    /// What this response can do for `req` now, per RFC 9111 (and RFC 5861 when stale).
    pub(crate) fn use_for(&self, req: &http::request::Parts) -> Use {
        let now = SystemTime::now();
        match self.policy.before_request(req, now) {
            BeforeRequest::Fresh(parts) => Use::Fresh(self.shown(parts, now)),
            BeforeRequest::Stale { matches: true, .. } => {
                let stale_for = now_ms().saturating_sub(self.meta.fresh_until_ms);
                let (revalidate, on_error) = (stale_for <= self.meta.swr_ms, stale_for <= self.meta.sie_ms);
                if stale_for == 0 || !(revalidate || on_error) {
                    return Use::No;
                }
                // Everything but its age must still allow the answer (the request's own
                // no-cache, max-age, min-fresh): asked again as if the client took any staleness.
                let mut lenient = http::Request::new(());
                *lenient.method_mut() = req.method.clone();
                *lenient.uri_mut() = req.uri.clone();
                *lenient.headers_mut() = req.headers.clone();
                lenient.headers_mut().append(CACHE_CONTROL, HeaderValue::from_static("max-stale"));
                match self.policy.before_request(&lenient.into_parts().0, now) {
                    BeforeRequest::Fresh(parts) => {
                        Use::Stale { head: self.shown(parts, now), revalidate, on_error }
                    }
                    BeforeRequest::Stale { .. } => Use::No,
                }
            }
            BeforeRequest::Stale { .. } => Use::No,
        }
    }

    /// The head as clients see it.
    fn shown(&self, mut parts: http::response::Parts, now: SystemTime) -> http::response::Parts {
        // The crate writes `Date` in RFC 2822 form; HTTP wants IMF-fixdate.
        if let Ok(d) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
            parts.headers.insert(http::header::DATE, d);
        }
        // Show the client the upstream's Cache-Control, not the default TTL.
        parts.headers.remove(CACHE_CONTROL);
        for v in &self.cache_control {
            parts.headers.append(CACHE_CONTROL, v.clone());
        }
        parts.headers.remove(super::CACHE_TAG);
        parts
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, cc.parse().unwrap());
        h
    }

    #[test]
    fn stale_windows_come_from_rfc_5861_directives_unless_forbidden() {
        let s = Duration::from_secs;
        assert_eq!(stale_windows(&headers("max-age=1, stale-while-revalidate=5")), (s(5), s(0)));
        assert_eq!(stale_windows(&headers("max-age=1, stale-if-error=60")), (s(0), s(60)));
        assert_eq!(stale_windows(&headers("max-age=1, must-revalidate, stale-if-error=60")), (s(0), s(0)));
        assert_eq!(stale_windows(&headers("s-maxage=1, stale-while-revalidate=5")), (s(0), s(0)));
    }
}
