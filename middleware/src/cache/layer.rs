//! [`CacheLayer`]: answers GET and HEAD from the grid when RFC 9111 allows, otherwise calls
//! the upstream once per key (single flight) and stores what may be shared. The grid never
//! turns a request into an error: when it is unreachable, requests pass straight through.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, IF_MODIFIED_SINCE, IF_NONE_MATCH, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::body::{read_limited, BoxError, Read};
use super::entry::{self, Entry, Stored};
use super::flight::{follow, Flights, Role};
use super::{key, CacheConfig, X_CACHE};
use crate::grid::{Grid, GridError};

/// Caches responses to GET and HEAD in the grid, shared by every instance using that grid.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use cachegrid_middleware::cache::{CacheConfig, CacheLayer};
/// use cachegrid_middleware::grid::EmbeddedGrid;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let grid = EmbeddedGrid::start_default().await.unwrap();
/// let config = CacheConfig { default_ttl: Some(Duration::from_secs(10)), ..Default::default() };
/// let app: Router = Router::new()
///     .route("/", get(|| async { "expensive" }))
///     .layer(CacheLayer::new(grid, config));
/// # }
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

struct Shared {
    grid: Grid,
    config: CacheConfig,
    flights: Arc<Flights>,
    /// Whether a grid outage is being reported (logged once, and its end once).
    down: AtomicBool,
}

impl CacheLayer {
    /// A layer storing responses in `grid`.
    pub fn new(grid: Grid, config: CacheConfig) -> Self {
        CacheLayer {
            shared: Arc::new(Shared {
                grid,
                config,
                flights: Arc::new(Flights::default()),
                down: AtomicBool::new(false),
            }),
        }
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

/// Where a response came from, for `X-Cache`.
#[derive(Clone, Copy)]
enum Source {
    Hit,
    Miss,
    Bypass,
}

fn tagged(mut res: Response<Body>, source: Source) -> Response<Body> {
    let v = match source {
        Source::Hit => "HIT",
        Source::Miss => "MISS",
        Source::Bypass => "BYPASS",
    };
    res.headers_mut().insert(X_CACHE, HeaderValue::from_static(v));
    res
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

impl Shared {
    async fn serve<I, B, RB>(&self, mut inner: I, req: Request<B>) -> Result<Response<Body>, I::Error>
    where
        I: Service<Request<B>, Response = Response<RB>>,
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
        match self.lookup(&primary, &parts).await {
            Ok(Some(hit)) => return Ok(self.answer(&parts, hit.0, hit.1, Source::Hit)),
            Ok(None) => {}
            Err(()) => return pass(inner, Request::from_parts(parts, body), Source::Bypass).await,
        }
        // A miss: one request of this process fills the key, the others wait and look again.
        let _guard = match self.flights.join(&primary) {
            Role::Leader(guard) => Some(guard),
            Role::Follower(rx) => {
                follow(rx, self.config.flight_wait).await;
                None
            }
        };
        // Looked again (as a follower, or as a leader that may have started just after one
        // finished), so a fill that completed meanwhile is not fetched twice.
        if let Ok(Some(hit)) = self.lookup(&primary, &parts).await {
            return Ok(self.answer(&parts, hit.0, hit.1, Source::Hit));
        }
        let head = head_of(&parts);
        let res = inner.call(upstream_request(parts, body)).await?;
        Ok(self.fill(res, &head, &primary).await)
    }

    /// The fresh entry matching this request, if any; `Err` when the grid is unusable.
    async fn lookup(
        &self,
        primary: &str,
        req: &http::request::Parts,
    ) -> Result<Option<(Entry, http::response::Parts)>, ()> {
        let found = match self.get(primary).await? {
            Some(Stored::Vary(names)) => {
                let Some(variant) = key::variant(primary, &names, &req.headers, self.config.max_key) else {
                    return Ok(None);
                };
                self.get(&variant).await?
            }
            other => other,
        };
        Ok(match found {
            Some(Stored::Response(e)) => e.fresh_for(req).map(|head| (e, head)),
            _ => None,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, ()> {
        match self.grid.query(redis::cmd("GET").arg(key)).await {
            Ok(redis::Value::BulkString(b)) => {
                self.up();
                Ok(entry::decode(&b))
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

    async fn set(&self, key: &str, value: &Stored, ttl: std::time::Duration) {
        let px = (ttl + self.config.keep_stale).as_millis().max(1) as u64;
        let cmd = redis::cmd("SET").arg(key).arg(entry::encode(value)).arg("PX").arg(px).clone();
        if let Err(e) = self.grid.query(&cmd).await {
            self.failed(&e);
        }
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("response cache: grid reachable again");
        }
    }

    fn failed(&self, e: &GridError) {
        match e {
            GridError::Unavailable(_) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "response cache: grid unreachable, passing requests through");
                }
            }
            _ => tracing::debug!(error = %e, "response cache: grid call failed"),
        }
    }

    /// Stores the upstream's response when it may be shared, and answers the client.
    async fn fill<RB>(&self, res: Response<RB>, req: &http::request::Parts, primary: &str) -> Response<Body>
    where
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (res, body) = res.into_parts();
        let body = Body::new(body);
        let vary = key::vary_names(&res.headers);
        let verdict = entry::judge(req, &res, self.config.ttl_for(req.uri.path()))
            .filter(|_| !res.headers.contains_key(SET_COOKIE));
        let (Some(vary), Some(verdict)) = (vary, verdict) else {
            return tagged(Response::from_parts(res, body), Source::Miss);
        };
        let bytes = match read_limited(body, self.config.max_body).await {
            Read::Whole(b) => b,
            // Too big, or failed part way (the client sees the same failure): not stored.
            Read::Stream(rest) => return tagged(Response::from_parts(res, Body::new(rest)), Source::Miss),
        };
        let stored = Stored::Response(Entry::new(req, &res, &vary, &verdict, bytes.clone()));
        if vary.is_empty() {
            self.set(primary, &stored, verdict.ttl).await;
        } else if let Some(variant) = key::variant(primary, &vary, &req.headers, self.config.max_key) {
            self.set(primary, &Stored::Vary(vary.clone()), verdict.ttl).await;
            self.set(&variant, &stored, verdict.ttl).await;
        }
        self.answer_fresh(req, res, bytes)
    }

    /// A hit: the cached head (with `Age`), or a 304 when the client's validators match.
    fn answer(
        &self,
        req: &http::request::Parts,
        entry: Entry,
        head: http::response::Parts,
        source: Source,
    ) -> Response<Body> {
        if entry::not_modified(&req.headers, &head.headers) {
            return tagged(Response::from_parts(entry::head_304(&head), Body::empty()), source);
        }
        let body = if req.method == Method::HEAD { Body::empty() } else { Body::from(entry.body()) };
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
