//! [`SessionLayer`]: reads the session cookie, loads the session from the store before the
//! handler runs, and writes back only what the handler changed (nothing on a 5xx).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use cookie::{Cookie, CookieJar};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::config::unix_ms;
use super::handle::State;
use super::store::{SessionStore, SessionWrite, CREATED, EXPIRY, KEY_FIELD, TOUCHED};
use super::{Expiry, OnUnavailable, Session, SessionConfig, SessionId};
use crate::grid::GridError;

/// Adds a [`Session`] to every request, kept in `store`.
///
/// ```
/// use axum::{routing::get, Router};
/// use cachegrid_middleware::session::{EmbeddedStore, Session, SessionConfig, SessionLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = EmbeddedStore::start().await.unwrap();
/// let app: Router = Router::new()
///     .route("/", get(|s: Session| async move { format!("{:?}", s.get::<u64>("n").await) }))
///     .layer(SessionLayer::new(store, SessionConfig::default()));
/// # }
/// ```
#[derive(Clone)]
pub struct SessionLayer<S> {
    store: S,
    config: Arc<SessionConfig>,
}

impl<S: SessionStore> SessionLayer<S> {
    /// A layer keeping sessions in `store`.
    pub fn new(store: S, config: SessionConfig) -> Self {
        SessionLayer { store, config: Arc::new(config) }
    }
}

impl<S: Clone, I> Layer<I> for SessionLayer<S> {
    type Service = SessionService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        SessionService { inner, store: self.store.clone(), config: self.config.clone() }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct SessionService<S, I> {
    inner: I,
    store: S,
    config: Arc<SessionConfig>,
}

impl<S, I, B, RB> Service<Request<B>> for SessionService<S, I>
where
    S: SessionStore,
    I: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (store, config) = (self.store.clone(), self.config.clone());
        Box::pin(async move {
            let state = match load(&store, &config, cookie_id(&req, &config)).await {
                Ok(s) => s,
                Err(_) if config.on_unavailable == OnUnavailable::Fail => {
                    let mut res = Response::new(RB::default());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(res);
                }
                Err(_) => State { available: false, ..Default::default() },
            };
            let session = Session::new(state);
            req.extensions_mut().insert(session.clone());
            let mut res = inner.call(req).await?;
            if res.status().is_server_error() {
                return Ok(res);
            }
            match save(&store, &config, &session).await {
                Ok(Some(cookie)) => {
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        res.headers_mut().append(SET_COOKIE, v);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "session not saved");
                    if config.on_unavailable == OnUnavailable::Fail {
                        let mut res = Response::new(RB::default());
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        return Ok(res);
                    }
                }
            }
            Ok(res)
        })
    }
}

/// The id in the request's session cookie, if one is there, well-formed and (with signing
/// keys) carrying a valid signature by one of them.
fn cookie_id<B>(req: &Request<B>, config: &SessionConfig) -> Option<SessionId> {
    for header in req.headers().get_all(COOKIE) {
        let Ok(header) = header.to_str() else { continue };
        for c in Cookie::split_parse_encoded(header).flatten() {
            if c.name() != config.cookie_name {
                continue;
            }
            let id = if config.signing_keys.is_empty() {
                SessionId::parse(c.value())
            } else {
                let mut jar = CookieJar::new();
                jar.add_original(c.into_owned());
                config
                    .signing_keys
                    .iter()
                    .find_map(|k| jar.signed(k).get(&config.cookie_name))
                    .and_then(|c| SessionId::parse(c.value()))
            };
            if let Some(id) = id {
                return Some(id);
            }
        }
    }
    None
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn parse_ms(b: &Bytes) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Loads the session `id` names; a missing, unknown or expired one is a fresh empty session.
async fn load<S: SessionStore>(
    store: &S,
    config: &SessionConfig,
    id: Option<SessionId>,
) -> Result<State, GridError> {
    let fresh = State { available: true, ..Default::default() };
    let Some(id) = id else { return Ok(fresh) };
    let fields = store.load(&id).await?;
    let mut state = State { id: Some(id), available: true, ..Default::default() };
    // Without a near cache the reply is ours alone: its values move into the session.
    let fields = Arc::try_unwrap(fields).unwrap_or_else(|shared| (*shared).clone());
    state.data.reserve(fields.len());
    for (f, v) in fields {
        if let Some(k) = f.strip_prefix(KEY_FIELD) {
            state.data.insert(k.to_owned(), v);
        } else if f == CREATED {
            state.created_ms = parse_ms(&v).unwrap_or(0);
        } else if f == TOUCHED {
            state.touched_ms = parse_ms(&v).unwrap_or(0);
        } else if f == EXPIRY {
            state.expiry = decode_expiry(&v);
        }
    }
    if state.created_ms == 0 {
        // Unknown (or a partial hash left by a write racing its expiry): start over.
        return Ok(fresh);
    }
    if config
        .expires_at(state.expiry.as_ref(), state.created_ms, state.touched_ms)
        .is_some_and(|at| at <= now_ms())
    {
        let _ = store.delete(&id).await;
        return Ok(fresh);
    }
    Ok(state)
}

/// Writes back what the handler changed; returns the Set-Cookie value to send, if any.
async fn save<S: SessionStore>(
    store: &S,
    config: &SessionConfig,
    session: &Session,
) -> Result<Option<String>, GridError> {
    let s = std::mem::take(&mut *session.state.lock());
    if !s.available {
        return Ok(None);
    }
    let now = now_ms();
    if s.flushed {
        return match s.id {
            Some(id) => {
                store.delete(&id).await?;
                Ok(Some(removal_cookie(config)))
            }
            None => Ok(None),
        };
    }
    let expiry = s.expiry.as_ref();
    let meta = |created: u64| {
        let mut set = vec![
            (CREATED.to_owned(), Bytes::from(created.to_string())),
            (TOUCHED.to_owned(), Bytes::from(now.to_string())),
        ];
        set.extend(expiry.map(|e| (EXPIRY.to_owned(), encode_expiry(e))));
        set
    };
    let full = |created: u64| {
        let mut set = meta(created);
        set.extend(s.data.iter().map(|(k, v)| (format!("{KEY_FIELD}{k}"), v.clone())));
        SessionWrite {
            replace: true,
            set,
            del: Vec::new(),
            expire_at_ms: config.expires_at(expiry, created, now),
            keep_expiry: false,
        }
    };
    let cookie = |id: SessionId| set_cookie(config, id, expiry, now);
    match s.id {
        None => {
            // Nothing is stored (and no cookie set) until something is inserted.
            if s.data.is_empty() {
                return Ok(None);
            }
            let id = SessionId::random();
            store.write(&id, &full(now)).await?;
            Ok(Some(cookie(id)))
        }
        Some(old) if s.cycle => {
            let id = SessionId::random();
            store.write(&id, &full(s.created_ms)).await?;
            store.delete(&old).await?;
            Ok(Some(cookie(id)))
        }
        Some(id) if s.cleared => {
            store.write(&id, &full(s.created_ms)).await?;
            Ok(Some(cookie(id)))
        }
        Some(id) => {
            let refresh_due = now.saturating_sub(s.touched_ms) >= config.refresh_interval.as_millis() as u64;
            if s.dirty.is_empty() && !refresh_due && !s.expiry_dirty {
                return Ok(None);
            }
            // The idle expiry (grid TTL, `m:t`, cookie) moves at most once per refresh interval;
            // a change in between only writes its fields.
            let refresh = refresh_due || s.expiry_dirty;
            let mut w = SessionWrite {
                expire_at_ms: config.expires_at(expiry, s.created_ms, now),
                keep_expiry: !refresh,
                ..Default::default()
            };
            if refresh {
                w.set.push((TOUCHED.to_owned(), Bytes::from(now.to_string())));
            }
            if s.expiry_dirty {
                match expiry {
                    Some(e) => w.set.push((EXPIRY.to_owned(), encode_expiry(e))),
                    None => w.del.push(EXPIRY.to_owned()),
                }
            }
            for (k, set) in &s.dirty {
                let field = format!("{KEY_FIELD}{k}");
                match (set, s.data.get(k)) {
                    (true, Some(v)) => w.set.push((field, v.clone())),
                    _ => w.del.push(field),
                }
            }
            store.write(&id, &w).await?;
            // The cookie's Max-Age follows the idle expiry, so it is re-sent when that moves.
            Ok(refresh.then(|| cookie(id)))
        }
    }
}

fn base_cookie(config: &SessionConfig, value: String) -> Cookie<'static> {
    let mut c = Cookie::build((config.cookie_name.clone(), value))
        .path(config.path.clone())
        .http_only(config.http_only)
        .secure(config.secure)
        .same_site(config.same_site)
        .build();
    if let Some(d) = &config.domain {
        c.set_domain(d.clone());
    }
    c
}

/// A session's own expiry as stored in its hash: `s`, `i<ms>` or `a<unix ms>`.
fn encode_expiry(e: &Expiry) -> Bytes {
    Bytes::from(match e {
        Expiry::OnSessionEnd => "s".to_owned(),
        Expiry::OnInactivity(d) => format!("i{}", d.whole_milliseconds()),
        Expiry::AtDateTime(t) => format!("a{}", unix_ms(t)),
    })
}

fn decode_expiry(b: &[u8]) -> Option<Expiry> {
    let s = std::str::from_utf8(b).ok()?;
    let (kind, n) = s.split_at_checked(1)?;
    match kind {
        "s" => Some(Expiry::OnSessionEnd),
        "i" => Some(Expiry::OnInactivity(time::Duration::milliseconds(n.parse().ok()?))),
        "a" => {
            let ms: i128 = n.parse().ok()?;
            time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok().map(Expiry::AtDateTime)
        }
        _ => None,
    }
}

/// The session cookie for `id`: its lifetime follows the session's expiry (the layer's idle
/// timeout by default), none for a browser-session cookie.
fn set_cookie(config: &SessionConfig, id: SessionId, expiry: Option<&Expiry>, now_ms: u64) -> String {
    let mut c = base_cookie(config, id.to_string());
    let secs = |s: i64| cookie::time::Duration::seconds(s.max(0));
    match expiry {
        None => {
            if let Some(idle) = config.idle_timeout {
                c.set_max_age(secs(idle.as_secs() as i64));
            }
        }
        Some(Expiry::OnInactivity(d)) => c.set_max_age(secs(d.whole_seconds())),
        Some(Expiry::AtDateTime(t)) => {
            c.set_expires(*t);
            // Rounded up: the cookie never dies before its session.
            c.set_max_age(secs((unix_ms(t) as i64 - now_ms as i64 + 999).div_euclid(1000)));
        }
        Some(Expiry::OnSessionEnd) => {}
    }
    if let Some(key) = config.signing_keys.first() {
        let mut jar = CookieJar::new();
        jar.signed_mut(key).add(c);
        return jar.get(&config.cookie_name).map(|c| c.encoded().to_string()).unwrap_or_default();
    }
    c.encoded().to_string()
}

fn removal_cookie(config: &SessionConfig) -> String {
    let mut c = base_cookie(config, String::new());
    c.make_removal();
    c.encoded().to_string()
}
