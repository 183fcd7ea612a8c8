//! [`CacheLayer`]: answers GET and HEAD from L1 or the grid when RFC 9111 allows; otherwise
//! one request per process (single flight) and one process per grid (a lease) calls the
//! upstream and stores what may be shared. A stale copy answers under stale-while-revalidate
//! (refreshed in the background) and stale-if-error. The grid never turns a request into an
//! error: when it is unreachable, requests pass straight through.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_core::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, IF_MODIFIED_SINCE, IF_NONE_MATCH, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::body::{read_limited, BoxError, Read};
use super::entry::{self, Cached, Found, Meta, Stored, Use};
use super::flight::{follow, Flights, Guard, Outcome, Role};
use super::l1::L1;
use super::{key, CacheConfig, CacheError, CACHE_TAG, X_CACHE, X_CACHE_LEVEL};
use crate::grid::{Grid, GridError, Invalidate};

/// Caches responses to GET and HEAD in the grid, shared by every instance using that grid,
/// optionally with an in-process L1 in front ([`CacheConfig::with_l1`]). Keep a clone to
/// [`purge`](CacheLayer::purge) a URI or [`purge_tag`](CacheLayer::purge_tag) a tag.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use cachegrid_middleware::cache::{CacheConfig, CacheLayer, L1Config};
/// use cachegrid_middleware::grid::EmbeddedGrid;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let grid = EmbeddedGrid::start_default().await?; // or Grid::remote(GridConfig::single(url))?
/// let config = CacheConfig { default_ttl: Some(Duration::from_secs(10)), ..Default::default() }
///     .with_l1(L1Config::default());
/// let cache = CacheLayer::new(grid, config)?;
/// let app: Router = Router::new()
///     .route("/products/42", get(|| async { ([("cache-tag", "product:42")], "a product") }))
///     .layer(cache.clone());
/// // Later, when product 42 changes (on any instance):
/// cache.purge_tag("product:42").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) grid: Grid,
    pub(super) config: CacheConfig,
    flights: Arc<Flights>,
    pub(super) l1: Option<Arc<L1>>,
    /// Whether a grid outage is being reported (logged once, and its end once).
    down: AtomicBool,
}

impl CacheLayer {
    /// A layer storing responses in `grid`. Fails when the config cannot work: a prefix with
    /// `{` or `}`, or an L1 over a grid that sends no invalidations (a cluster).
    pub fn new(grid: Grid, config: CacheConfig) -> Result<Self, CacheError> {
        if config.prefix.contains(['{', '}']) {
            return Err(CacheError::Config("the key prefix may not contain '{' or '}'".into()));
        }
        let l1 = match &config.l1 {
            Some(c) => {
                let l1 = Arc::new(L1::new(c, &config.prefix));
                let weak: Weak<dyn Invalidate> = Arc::downgrade(&l1) as _;
                grid.track(weak).map_err(|e| CacheError::Config(format!("L1: {e}")))?;
                Some(l1)
            }
            None => None,
        };
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                grid,
                config,
                flights: Arc::new(Flights::default()),
                l1,
                down: AtomicBool::new(false),
            }),
        })
    }

    /// Removes the stored responses to GET and HEAD of `uri` (absolute: its host is part of
    /// the key; the scheme is not), with every `Vary` variant, from the grid and so from every
    /// instance. Returns how many grid entries went.
    pub async fn purge(&self, uri: &str) -> Result<usize, CacheError> {
        self.shared.purge(uri).await
    }

    /// Removes every stored response tagged `tag` (by its `Cache-Tag` header) from the grid
    /// and so from every instance. Returns how many grid entries went.
    pub async fn purge_tag(&self, tag: &str) -> Result<usize, CacheError> {
        self.shared.purge_tag(tag).await
    }
}

impl<I> Layer<I> for CacheLayer {
    type Service = CacheService<I>;

    fn layer(&self, inner: I) -> Self::Service {
        CacheService { inner, shared: self.shared.clone() }
    }
}

/// The service [`CacheLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct CacheService<I> {
    inner: I,
    shared: Arc<Shared>,
}

impl<I, B, RB> Service<Request<B>> for CacheService<I>
where
    I: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move { shared.serve(inner, req).await })
    }
}

/// Which level answered a hit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    L1,
    L2,
}

/// Where a lookup may look.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// L1, then the grid.
    Any,
    /// The grid only: after taking a lease, the grid has the latest word.
    Grid,
}

/// Where a response came from, for `X-Cache` (and `X-Cache-Level`).
#[derive(Clone, Copy)]
enum Source {
    Hit(Level),
    Stale(Level),
    Miss,
    Bypass,
}

fn tagged(mut res: Response<Body>, source: Source) -> Response<Body> {
    let (v, level) = match source {
        Source::Hit(l) => ("HIT", Some(l)),
        Source::Stale(l) => ("STALE", Some(l)),
        Source::Miss => ("MISS", None),
        Source::Bypass => ("BYPASS", None),
    };
    let h = res.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(v));
    if let Some(l) = level {
        h.insert(X_CACHE_LEVEL, HeaderValue::from_static(if l == Level::L1 { "L1" } else { "L2" }));
    }
    h.remove(CACHE_TAG);
    res
}

/// A stored response found for a request.
struct Hit {
    found: Arc<Found>,
    level: Level,
}

impl Hit {
    fn cached(&self) -> &Cached {
        match &*self.found {
            Found::Response(c) => c,
            Found::Vary { .. } => unreachable!("a hit is a response"),
        }
    }
}

/// What the cache holds for a request. `key` is where its response goes (a variant key when
/// the primary's `Vary` is known): the key filled, leased and single-flighted.
enum Lookup {
    Fresh(Hit, http::response::Parts),
    Stale { hit: Hit, head: http::response::Parts, revalidate: bool, on_error: bool, key: String },
    Miss { key: String },
}

/// A stale copy that may answer if the upstream fails.
struct StaleCopy {
    hit: Hit,
    head: http::response::Parts,
}

/// The fill lease on one key, held by this instance; released (deleted) with the fill, or on
/// drop otherwise. If this process dies, it expires.
struct Lease {
    key: String,
    grid: Grid,
    released: bool,
}

impl Lease {
    fn release_cmd(mut self) -> redis::Cmd {
        self.released = true;
        redis::cmd("DEL").arg(&self.key).clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (grid, key) = (self.grid.clone(), std::mem::take(&mut self.key));
            rt.spawn(async move {
                let _ = grid.query(redis::cmd("DEL").arg(key)).await;
            });
        }
    }
}

/// How taking the lease for a miss went.
enum Leased {
    /// Ours: fill the key.
    Held(Lease),
    /// The key was filled (or is being refreshed) meanwhile: this answers.
    Answered(Response<Body>),
    /// No lease (none configured, the grid failed, or the wait ran out): call the upstream.
    Proceed,
}

/// A copy of a request head without its extensions, kept to judge and answer the response
/// while the request itself goes upstream.
fn head_of(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// The upstream statuses stale-if-error covers (RFC 5861 section 4).
fn is_error(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

impl Shared {
    async fn serve<I, B, RB>(self: Arc<Self>, inner: I, req: Request<B>) -> Result<Response<Body>, I::Error>
    where
        I: Service<Request<B>, Response = Response<RB>> + Send + 'static,
        I::Future: Send + 'static,
        B: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let cacheable_request = (parts.method == Method::GET || parts.method == Method::HEAD)
            && !parts.headers.contains_key(AUTHORIZATION);
        let primary = key::primary(&self.config.prefix, &parts, self.config.max_key);
        let Some(primary) = primary.filter(|_| cacheable_request) else {
            return pass(inner, Request::from_parts(parts, body), Source::Bypass).await;
        };
        let (stale, key) = match self.lookup(&primary, &parts).await {
            Err(()) => return pass(inner, Request::from_parts(parts, body), Source::Bypass).await,
            Ok(Lookup::Fresh(hit, head)) => {
                return Ok(self.answer(&parts, &hit, head, Source::Hit(hit.level)))
            }
            Ok(Lookup::Stale { hit, head, revalidate: true, key, .. }) => {
                // RFC 5861: answer with the stale copy now, refresh it in the background.
                let res = self.answer(&parts, &hit, head, Source::Stale(hit.level));
                self.clone().refresh(inner, Request::from_parts(parts, body), primary, key);
                return Ok(res);
            }
            Ok(Lookup::Stale { hit, head, on_error, key, .. }) => {
                (on_error.then_some(StaleCopy { hit, head }), key)
            }
            Ok(Lookup::Miss { key }) => (None, key),
        };
        // A miss: one request of this process fills the key, the others wait and look again.
        let guard = match self.flights.join(&key) {
            Role::Leader(guard) => Some(guard),
            Role::Follower(rx) => {
                let outcome = follow(rx, self.config.flight_wait).await;
                match self.lookup(&primary, &parts).await {
                    Ok(Lookup::Fresh(hit, head)) => {
                        return Ok(self.answer(&parts, &hit, head, Source::Hit(hit.level)))
                    }
                    Ok(Lookup::Stale { hit, head, revalidate, on_error, .. })
                        if revalidate || (on_error && outcome == Outcome::Failed) =>
                    {
                        return Ok(self.answer(&parts, &hit, head, Source::Stale(hit.level)))
                    }
                    _ => None,
                }
            }
        };
        // The leader of this process: one instance of all fills the key.
        let lease = match guard {
            Some(_) => match self.lease(&key, &primary, &parts).await {
                Leased::Held(lease) => Some(lease),
                Leased::Answered(res) => return Ok(res),
                Leased::Proceed => None,
            },
            None => None,
        };
        let head = head_of(&parts);
        self.call_and_fill(inner, upstream_request(parts, body), head, &primary, stale, lease, guard).await
    }

    /// What the cache holds for this request; `Err` when the grid is unusable.
    async fn lookup(&self, primary: &str, req: &http::request::Parts) -> Result<Lookup, ()> {
        self.lookup_in(primary, req, Via::Any).await
    }

    /// [`Shared::lookup`] from L1 or the grid itself.
    async fn lookup_in(&self, primary: &str, req: &http::request::Parts, via: Via) -> Result<Lookup, ()> {
        let Some((mut found, mut level)) = self.get(primary, via).await? else {
            return Ok(Lookup::Miss { key: primary.to_owned() });
        };
        let mut key = primary.to_owned();
        if let Found::Vary { names, .. } = &*found {
            let Some(variant) = key::variant(primary, names, &req.headers, self.config.max_key) else {
                return Ok(Lookup::Miss { key });
            };
            match self.get(&variant, via).await? {
                Some((f, l)) => (found, level) = (f, l),
                None => return Ok(Lookup::Miss { key: variant }),
            }
            key = variant;
        }
        let Found::Response(cached) = &*found else { return Ok(Lookup::Miss { key }) };
        Ok(match cached.use_for(req) {
            Use::Fresh(head) => Lookup::Fresh(Hit { found, level }, head),
            Use::Stale { head, revalidate, on_error } => {
                Lookup::Stale { hit: Hit { found, level }, head, revalidate, on_error, key }
            }
            Use::No => Lookup::Miss { key },
        })
    }

    /// One grid value, from L1 when it has it (and `via` allows); `Err` when the grid is unusable.
    async fn get(&self, key: &str, via: Via) -> Result<Option<(Arc<Found>, Level)>, ()> {
        let mut epoch = 0;
        if let Some(l1) = &self.l1 {
            epoch = l1.epoch();
            if let Some(hit) = l1.get(key).filter(|_| via == Via::Any) {
                if !l1.confirm_hits {
                    return Ok(Some((hit, Level::L1)));
                }
                // The barrier: invalidations queued before it arrive before its reply.
                if self.grid.barrier().await.is_ok() && l1.confirms(key, &hit) {
                    return Ok(Some((hit, Level::L1)));
                }
            }
        }
        match self.grid.query(redis::cmd("GET").arg(key)).await {
            Ok(redis::Value::BulkString(b)) => {
                self.up();
                let Some(found) = entry::decode(b) else { return Ok(None) };
                let found = Arc::new(found);
                if let Some(l1) = &self.l1 {
                    l1.fill(key, epoch, found.clone());
                }
                Ok(Some((found, Level::L2)))
            }
            Ok(_) => {
                self.up();
                Ok(None)
            }
            Err(e) => {
                self.failed(&e);
                Err(())
            }
        }
    }

    /// Takes the fill lease on `key`, or waits (polling, with backoff) until the instance
    /// holding it has filled the key, its lease is gone (done without storing, or expired with
    /// its holder) or `lease_wait` has passed.
    async fn lease(&self, key: &str, primary: &str, req: &http::request::Parts) -> Leased {
        let Some(ttl) = self.config.lease else {
            // Looked again: a fill that completed just before this request led is not repeated.
            if let Ok(Lookup::Fresh(hit, head)) = self.lookup(primary, req).await {
                return Leased::Answered(self.answer(req, &hit, head, Source::Hit(hit.level)));
            }
            return Leased::Proceed;
        };
        let deadline = Instant::now() + self.config.lease_wait;
        let mut delay = Duration::from_millis(2);
        loop {
            match self.try_lease(key, ttl).await {
                Some(Some(lease)) => {
                    // A fill may have completed between the miss and the lease (asked of the
                    // grid: L1 may not have heard of it yet).
                    return match self.lookup_in(primary, req, Via::Grid).await {
                        Ok(Lookup::Fresh(hit, head)) => {
                            Leased::Answered(self.answer(req, &hit, head, Source::Hit(hit.level)))
                        }
                        _ => Leased::Held(lease),
                    };
                }
                Some(None) => {}
                None => return Leased::Proceed,
            }
            if Instant::now() + delay > deadline {
                return Leased::Proceed;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
            match self.lookup_in(primary, req, Via::Grid).await {
                Ok(Lookup::Fresh(hit, head)) => {
                    return Leased::Answered(self.answer(req, &hit, head, Source::Hit(hit.level)))
                }
                Ok(Lookup::Stale { hit, head, revalidate: true, .. }) => {
                    return Leased::Answered(self.answer(req, &hit, head, Source::Stale(hit.level)))
                }
                Err(()) => return Leased::Proceed,
                Ok(_) => {}
            }
        }
    }

    /// One attempt at the lease on `key`: `Some(Some(lease))` taken, `Some(None)` held by
    /// another instance, `None` when the grid failed.
    async fn try_lease(&self, key: &str, ttl: Duration) -> Option<Option<Lease>> {
        let lease_key = key::lease(key);
        let token: u64 = rand::random();
        let cmd = redis::cmd("SET")
            .arg(&lease_key)
            .arg(format!("{token:016x}"))
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .clone();
        match self.grid.query(&cmd).await {
            Ok(redis::Value::Okay) => {
                Some(Some(Lease { key: lease_key, grid: self.grid.clone(), released: false }))
            }
            Ok(redis::Value::Nil) => Some(None),
            Ok(other) => {
                tracing::debug!(reply = ?other, "response cache: unexpected lease reply");
                None
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Refreshes a stale entry in the background with the client's request (it was answered
    /// from the stale copy): once per process (single flight) and per grid (the lease).
    fn refresh<I, B, RB>(self: Arc<Self>, mut inner: I, req: Request<B>, primary: String, key: String)
    where
        I: Service<Request<B>, Response = Response<RB>> + Send + 'static,
        I::Future: Send + 'static,
        B: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let Role::Leader(guard) = self.flights.join(&key) else { return };
        tokio::spawn(async move {
            let _guard = guard;
            let lease = match self.config.lease {
                Some(ttl) => match self.try_lease(&key, ttl).await {
                    Some(Some(lease)) => Some(lease),
                    Some(None) => return, // another instance refreshes it
                    None => None,
                },
                None => None,
            };
            let (parts, body) = req.into_parts();
            // Refreshed meanwhile (by another instance: L1 may not have heard of it yet)?
            if let Ok(Lookup::Fresh(..)) = self.lookup_in(&primary, &parts, Via::Grid).await {
                return;
            }
            let head = head_of(&parts);
            let res = match inner.call(upstream_request(parts, body)).await {
                Ok(res) => res,
                Err(_) => return,
            };
            if !is_error(res.status()) {
                self.fill(res, &head, &primary, lease).await;
            }
        });
    }

    /// Calls the upstream and stores its response when it may be shared. With a stale copy
    /// under stale-if-error at hand, an upstream error, 5xx or timeout answers with that copy.
    #[allow(clippy::too_many_arguments)]
    async fn call_and_fill<I, B, RB>(
        &self,
        mut inner: I,
        req: Request<B>,
        head: http::request::Parts,
        primary: &str,
        stale: Option<StaleCopy>,
        lease: Option<Lease>,
        mut guard: Option<Guard>,
    ) -> Result<Response<Body>, I::Error>
    where
        I: Service<Request<B>, Response = Response<RB>>,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let res = match stale {
            None => inner.call(req).await?,
            Some(copy) => {
                let why = match tokio::time::timeout(self.config.upstream_timeout, inner.call(req)).await {
                    Ok(Ok(res)) if !is_error(res.status()) => Ok(res),
                    Ok(Ok(res)) => Err(format!("status {}", res.status())),
                    Ok(Err(_)) => Err("an error".to_owned()),
                    Err(_) => Err("a timeout".to_owned()),
                };
                match why {
                    Ok(res) => res,
                    Err(why) => {
                        tracing::debug!(key = primary, upstream = %why, "response cache: serving stale (stale-if-error)");
                        if let Some(g) = guard.as_mut() {
                            g.failed();
                        }
                        return Ok(self.answer(&head, &copy.hit, copy.head, Source::Stale(copy.hit.level)));
                    }
                }
            }
        };
        Ok(self.fill(res, &head, primary, lease).await)
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("response cache: grid reachable again");
        }
    }

    pub(super) fn failed(&self, e: &GridError) {
        match e {
            GridError::Unavailable(_) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "response cache: grid unreachable, passing requests through");
                }
            }
            _ => tracing::debug!(error = %e, "response cache: grid call failed"),
        }
    }

    /// Stores the upstream's response when it may be shared (one transaction: the entry, its
    /// Vary marker and variant index, the lease's release, its tags unless on a cluster), and
    /// answers the client.
    async fn fill<RB>(
        &self,
        res: Response<RB>,
        req: &http::request::Parts,
        primary: &str,
        lease: Option<Lease>,
    ) -> Response<Body>
    where
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (res, body) = res.into_parts();
        let body = Body::new(body);
        let vary = key::vary_names(&res.headers);
        let verdict = entry::judge(req, &res, self.config.ttl_for(req.uri.path()), self.config.max_stale)
            .filter(|_| !res.headers.contains_key(SET_COOKIE));
        let (Some(vary), Some(verdict)) = (vary, verdict) else {
            return tagged(Response::from_parts(res, body), Source::Miss);
        };
        let entry_key = if vary.is_empty() {
            Some(primary.to_owned())
        } else {
            key::variant(primary, &vary, &req.headers, self.config.max_key)
        };
        let Some(entry_key) = entry_key else {
            return tagged(Response::from_parts(res, body), Source::Miss);
        };
        let bytes = match read_limited(body, self.config.max_body).await {
            Read::Whole(b) => b,
            // Too big, or failed part way (the client sees the same failure): not stored.
            Read::Stream(rest) => return tagged(Response::from_parts(res, Body::new(rest)), Source::Miss),
        };
        let px = verdict.keep().as_millis().max(1) as u64;
        let expires_ms = verdict.expires_ms();
        let meta = Meta::new(req, &res, &vary, &verdict);
        let mut cmds = Vec::new();
        if !vary.is_empty() {
            let marker = Stored::Vary { names: vary.clone(), expires_ms };
            cmds.push(
                redis::cmd("SET").arg(primary).arg(entry::encode(&marker, &[])).arg("PX").arg(px).clone(),
            );
        }
        let value = entry::encode(&Stored::Response(meta), &bytes);
        cmds.push(redis::cmd("SET").arg(&entry_key).arg(value).arg("PX").arg(px).clone());
        if !vary.is_empty() {
            cmds.extend(index_cmds(&key::variants(primary), &entry_key, expires_ms, px));
        }
        if let Some(lease) = lease {
            cmds.push(lease.release_cmd());
        }
        let written = [primary.to_owned(), entry_key.clone()];
        let tags = key::tags(&res.headers);
        let tag_cmds =
            tags.iter().map(|t| index_cmds(&key::tag(&self.config.prefix, t), &entry_key, expires_ms, px));
        if self.grid.is_cluster() {
            // Each tag's index lives in its tag's slot: one transaction per slot.
            let mut batches = vec![cmds];
            batches.extend(tag_cmds);
            for batch in batches {
                if let Err(e) = self.grid.transaction(&batch).await {
                    self.failed(&e);
                }
            }
        } else {
            cmds.extend(tag_cmds.flatten());
            if let Err(e) = self.grid.transaction(&cmds).await {
                self.failed(&e);
            }
        }
        // Other instances' L1s hear of the write from the grid; this one's, here.
        self.forget(&written);
        self.answer_fresh(req, res, bytes)
    }

    /// A hit: the cached head (with `Age`), or a 304 when the client's validators match.
    fn answer(
        &self,
        req: &http::request::Parts,
        hit: &Hit,
        head: http::response::Parts,
        source: Source,
    ) -> Response<Body> {
        if entry::not_modified(&req.headers, &head.headers) {
            return tagged(Response::from_parts(entry::head_304(&head), Body::empty()), source);
        }
        let body =
            if req.method == Method::HEAD { Body::empty() } else { Body::from(hit.cached().body.clone()) };
        tagged(Response::from_parts(head, body), source)
    }

    /// A miss just stored: the upstream's response, or a 304 when the client's validators match.
    fn answer_fresh(
        &self,
        req: &http::request::Parts,
        head: http::response::Parts,
        body: Bytes,
    ) -> Response<Body> {
        if entry::not_modified(&req.headers, &head.headers) {
            return tagged(Response::from_parts(entry::head_304(&head), Body::empty()), Source::Miss);
        }
        tagged(Response::from_parts(head, Body::from(body)), Source::Miss)
    }
}

/// Adds `member` to the index hash `index` (field: the key, value: when it expires) and
/// keeps the index at least as long as its longest-lived member.
fn index_cmds(index: &str, member: &str, expires_ms: u64, px: u64) -> Vec<redis::Cmd> {
    vec![
        redis::cmd("HSET").arg(index).arg(member).arg(expires_ms).clone(),
        redis::cmd("PEXPIRE").arg(index).arg(px).arg("NX").clone(),
        redis::cmd("PEXPIRE").arg(index).arg(px).arg("GT").clone(),
    ]
}

/// The request sent upstream on a miss: the client's validators are held back, so the
/// upstream sends a full response to store; the client's 304 is then made from it.
fn upstream_request<B>(mut parts: http::request::Parts, body: B) -> Request<B> {
    parts.headers.remove(IF_NONE_MATCH);
    parts.headers.remove(IF_MODIFIED_SINCE);
    Request::from_parts(parts, body)
}

/// Calls the upstream without the cache.
async fn pass<I, B, RB>(mut inner: I, req: Request<B>, source: Source) -> Result<Response<Body>, I::Error>
where
    I: Service<Request<B>, Response = Response<RB>>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let res = inner.call(req).await?;
    Ok(tagged(res.map(Body::new), source))
}
