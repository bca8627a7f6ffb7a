//! The sidecar's proxy listener: a router in front of the [`RefreshLayer`].
//!
//! The proxy has no refresh path of its own. For each request it checks the inbound rules
//! (no TRACE, absolute-form or CONNECT), hands `/auth/{provider}/refresh` to the served
//! [`RefreshApi`] when `[refresh_api]` is enabled (before `client_token`, which does not apply
//! there: the API has its own bearer, SPEC 4.9), checks `client_token` (`Proxy-Authorization`,
//! scheme `Bearer` in any case), finds the route, decides the account and the provider,
//! rewrites the URI to the route's upstream, drops hop-by-hop headers, and hands the request,
//! with the account and provider it decided, to the layer-wrapped [`Upstream`] (rustls, HTTP/1.1 and HTTP/2 by
//! ALPN, pooled, every attempt bounded: see [`super::upstream`]). Bodies stream both ways;
//! only the layer's `ReplayBody` keeps up to `max_replay_body` bytes for a replay. The caller's
//! body is bounded by `body_read_timeout` ([`IdleTimeout`]); when it stalls or its framing is
//! malformed the upstream attempt is aborted and the caller gets `408`/`400` (SPEC 4.4).
//!
//! Rate limits (SPEC 4.10, [`super::rate_limit`]): once the account is known, a request of an
//! `enforce` route whose account is known to be limited on the route's upstream is answered
//! `429 rate_limited` and never sent; every upstream answer is looked at for new limits.
//!
//! On the way back, a `Content-Length` beside a `Transfer-Encoding` is dropped, and absolute
//! `Location`/`Link` URLs on the route's upstream are rewritten to the proxy — and so are those
//! inside JSON bodies, unless the route says `rewrite_body = false` ([`super::json_rewrite`]) —
//! but only when the request's `Host` is a plain `host[:port]` ([`rewrite_authority`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceExt};

use super::auth::bearer_matches;
use super::config::{Config, RateLimitMode};
use super::errors::{error_response, from_error, Code};
use super::json_rewrite::{self, JsonRewrite, Prepended, RewriteBody};
use super::metrics::{Metrics, RouteMetrics};
use super::rate_limit::{is_remaining, RateLimits, Resource, UpstreamLimits};
use super::refresh_api::{self, RefreshApi};
use super::router::{rewrite_authority, rewrite_link, rewrite_url, upstream_uri, Router};
use super::timeouts::{IdleTimeout, ProxyTimeouts};
use super::upstream::UpstreamBody;
use crate::layer::{Refresh, RefreshLayer};
use crate::token::Secret;
use crate::{Account, Tokens};

pub use super::upstream::{upstream_client, Upstream, UpstreamClient, UpstreamConnector};

/// The body of the proxy's responses: the upstream's, streamed (and bounded by
/// `upstream.body_idle_timeout`) — as it came, or with its JSON URLs rewritten
/// ([`RewriteBody`]) — or one the proxy made. The rewriting body is boxed: it is five times
/// the size of the others, and every response is moved several times on its way out.
pub type ProxyBody = Either<Either<UpstreamBody, Pin<Box<RewriteBody<UpstreamBody>>>>, Full<Bytes>>;

/// The header naming the account of a request.
pub static X_OAUTH_ACCOUNT: HeaderName = HeaderName::from_static("x-oauth-account");

struct RouteState {
    metrics: RouteMetrics,
    /// The upstream `Host` of a plain `http` upstream ([`plain_http_host`]).
    upstream_host: Option<HeaderValue>,
    default_account: Option<Account>,
    /// Per serving worker: the account its requests last named in `x-oauth-account` on this
    /// route.
    named: Box<[LastNamed]>,
    limits: UpstreamLimits,
    enforce: bool,
}

/// The proxy listener's request handler.
pub struct Proxy {
    router: Router,
    /// Per route (in the router's order): its metrics and its default account, resolved once.
    per_route: Vec<RouteState>,
    unrouted: RouteMetrics,
    /// Per serving worker ([`workers::current`](super::workers::current)), the layer-wrapped
    /// upstream its requests go through. One long-lived service per worker keeps the layer's
    /// lease memo between requests (a clone per request would start empty every time); its
    /// lock is only taken by that worker's thread on the request path, for the synchronous
    /// `poll_ready` and `call` (or a clone, when it is not ready).
    clients: Box<[Mutex<Refresh<Upstream>>]>,
    client_token: Option<Secret>,
    metrics: Arc<Metrics>,
    refresh_api: Option<RefreshApi>,
    body_read_timeout: Duration,
    rate_limits: RateLimits,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.router)
            .field("client_token", &self.client_token)
            .field("refresh_api", &self.refresh_api)
            .field("body_read_timeout", &self.body_read_timeout)
            .finish()
    }
}

impl Proxy {
    /// A proxy for `config`'s routes, taking tokens from `tokens`, each request bounded by
    /// `timeouts`.
    pub fn new(
        config: &Config,
        tokens: Tokens,
        metrics: Arc<Metrics>,
        timeouts: ProxyTimeouts,
    ) -> Self {
        let layer = RefreshLayer::new(tokens).max_replay_body(config.max_replay_body);
        let router = Router::new(config.routes.clone());
        let rate_limits = RateLimits::default();
        let per_route = router
            .routes()
            .iter()
            .map(|r| RouteState {
                metrics: metrics.route(&r.prefix),
                upstream_host: plain_http_host(r),
                default_account: r.default_account.as_deref().map(Account::new),
                named: (0..config.server.workers.max(1))
                    .map(|_| LastNamed::default())
                    .collect(),
                limits: rate_limits.upstream(&r.upstream, r.provider),
                enforce: r.rate_limit == RateLimitMode::Enforce,
            })
            .collect();
        Proxy {
            router,
            per_route,
            unrouted: metrics.route(""),
            clients: {
                let upstream = Upstream::with_pools(&timeouts, config.server.workers);
                (0..config.server.workers.max(1))
                    .map(|_| Mutex::new(layer.layer(upstream.clone())))
                    .collect()
            },
            client_token: config.client_token.clone(),
            metrics,
            refresh_api: None,
            body_read_timeout: timeouts.body_read,
            rate_limits,
        }
    }

    /// The rate limits the proxy learnt from its upstreams (for `GET /tokens`, and to share
    /// them between replicas with [`RateLimits::share`]).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.rate_limits
    }

    /// Serves `api` on this listener: `POST /auth/{provider}/refresh` (SPEC 4.9) is answered
    /// by it instead of being routed. Without it those paths are routed like any other.
    pub fn with_refresh_api(mut self, api: RefreshApi) -> Self {
        self.refresh_api = Some(api);
        self
    }

    /// Handles one request from a caller: routes it at once (the inbound rules, the route,
    /// the account, the upstream call) and returns the future of its response.
    ///
    /// The future is written out by hand rather than as nested `async fn`s: hyper keeps it
    /// for every request and moves it on its way in, and an `async fn` reserves room for
    /// every local of every branch (3.4 KiB here, moved four times per request). This one
    /// holds the layer's response future and what the answer's rewriting needs; the rare
    /// paths (the served refresh API, a JSON body rewritten, a service not ready) are boxed.
    pub fn handle(self: &Arc<Self>, req: Request<Incoming>) -> ResponseFuture {
        // Read for the debug line only.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        ResponseFuture {
            state: self.route(req),
            proxy: self.clone(),
            started,
        }
    }

    /// Counts `resp` under `label` (and logs it at debug level).
    fn finish(
        &self,
        label: Label,
        resp: Response<ProxyBody>,
        started: Option<Instant>,
    ) -> Response<ProxyBody> {
        let status = resp.status().as_u16();
        match &label {
            Label::Route(i) => self.per_route[*i].metrics.observe_request(status),
            Label::Unrouted => self.unrouted.observe_request(status),
            Label::Other(name) => self.metrics.observe_request(name, status),
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let route = match &label {
                Label::Route(i) => self.router.routes()[*i].prefix.as_str(),
                Label::Unrouted => "",
                Label::Other(name) => name.as_str(),
            };
            let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
            tracing::debug!(route, status, ?elapsed, "proxied");
        }
        resp
    }

    /// Everything up to the upstream call, synchronously: the answer when the proxy answers
    /// itself, else the call under way.
    fn route(self: &Arc<Self>, req: Request<Incoming>) -> State {
        let own = |label, code, msg| State::answered(label, own_response(code, msg));
        // An upstream echoing TRACE would hand the injected token back to the caller.
        if req.method() == Method::TRACE {
            return own(
                Label::Unrouted,
                Code::MethodNotAllowed,
                "TRACE is not supported: it would echo the injected credentials",
            );
        }
        if req.method() == Method::CONNECT {
            return own(
                Label::Unrouted,
                Code::MethodNotAllowed,
                "CONNECT is not supported: this is not a forward proxy",
            );
        }
        // HTTP/1 absolute-form (`GET http://host/x`) is a forward-proxy request: refused.
        // (HTTP/2 requests always carry :authority, which is the proxy's own.)
        if req.version() < Version::HTTP_2 && req.uri().authority().is_some() {
            return own(
                Label::Unrouted,
                Code::BadRequest,
                "absolute-form request targets are not supported: send the path only",
            );
        }
        // The served refresh API has its own bearer: client_token does not apply (SPEC 4.9).
        if let Some(label) = self
            .refresh_api
            .as_ref()
            .and_then(|_| refresh_api::route_label(req.uri().path()))
        {
            let proxy = self.clone();
            return State::Boxed {
                fut: Box::pin(async move {
                    let api = proxy.refresh_api.as_ref().expect("checked above");
                    (
                        Label::Other(label),
                        api.handle(req).await.map(Either::Right),
                    )
                }),
            };
        }
        if let Some(expected) = &self.client_token {
            if !bearer_matches(expected, req.headers(), &header::PROXY_AUTHORIZATION) {
                return own(
                    Label::Unrouted,
                    Code::Unauthorized,
                    "send Proxy-Authorization: Bearer <client_token>",
                );
            }
        }
        let Some((index, rest)) = self.router.find_index(req.uri().path()) else {
            return own(
                Label::Unrouted,
                Code::UnknownRoute,
                "no route matches this path",
            );
        };
        let route = &self.router.routes()[index];
        let state = &self.per_route[index];
        let label = Label::Route(index);
        // The serving worker this runs on: its account slot, then its upstream service.
        let worker = super::workers::current();
        // One pass over the request's headers finds its hop-by-hop ones and `x-oauth-account`:
        // a request without it (most) costs no lookup of it, and no removal.
        let present = scan::<false>(req.headers());
        let named = match present & FOUND_OAUTH_ACCOUNT {
            0 => None,
            _ => req.headers().get(&X_OAUTH_ACCOUNT),
        };
        let account = match named {
            Some(v) => match v.to_str().map(str::trim) {
                Ok(s) if !s.is_empty() => Some(state.named[worker % state.named.len()].account(s)),
                _ => {
                    return own(
                        label,
                        Code::AccountRequired,
                        "x-oauth-account must be a non-empty ASCII account id",
                    );
                }
            },
            None => state.default_account.clone(),
        };
        let Some(account) = account else {
            let resp = error_response(
                Code::AccountRequired,
                "send x-oauth-account or configure the route's default_account",
                Some(route.provider),
                None,
            );
            return State::answered(label, resp.map(Either::Right));
        };
        // Nothing is sent while the upstream is known to refuse this account (SPEC 4.10).
        let resource = Resource::of_path(rest);
        if state.enforce {
            if let Some(blocked) = state.limits.check(account.as_str(), resource) {
                state.metrics.observe_rate_limited();
                tracing::debug!(
                    route = %route.prefix,
                    account = account.as_str(),
                    retry_after = blocked.retry_after_secs(),
                    "rate limited: request not forwarded"
                );
                let resp = blocked.response(route.provider, account.as_str());
                return State::answered(label, resp.map(Either::Right));
            }
        }
        let Ok(uri) = upstream_uri(route, rest, req.uri().query()) else {
            return own(
                label,
                Code::BadRequest,
                "the request path cannot be forwarded",
            );
        };
        // Kept as a header value (a reference-count increment); read (and checked to be a
        // plain `host[:port]`) only when a response carries Location or Link.
        let proxy_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        let (mut parts, body) = req.into_parts();
        let after = After {
            index,
            method: parts.method.clone(),
            account,
            proxy_host,
            sent: Instant::now(),
        };
        // The caller's body fails with a BodyError when it stalls or its framing is bad: the
        // upstream attempt is aborted and the answer is 408 or 400 (errors::from_error).
        let body = IdleTimeout::new(body, self.body_read_timeout);
        strip_found(&mut parts.headers, present);
        if present & FOUND_OAUTH_ACCOUNT != 0 {
            parts.headers.remove(&X_OAUTH_ACCOUNT);
        }
        match &state.upstream_host {
            Some(host) => {
                parts.headers.insert(header::HOST, host.clone());
            }
            None => {
                parts.headers.remove(header::HOST);
            }
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;

        // The route decided the provider and the account: the layer takes them as they are.
        let mut client = self.clients[worker % self.clients.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match client.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => State::Upstream {
                fut: client.call_for(parts, body, route.provider, after.account.clone()),
                after: Some(after),
            },
            Poll::Ready(Err(e)) => {
                drop(client);
                self.answer(after, Err(e)).into_state()
            }
            // The upstream service has no back-pressure of its own: not taken, but if it ever
            // is, readiness is awaited on a clone, outside the lock.
            Poll::Pending => {
                let mut client = client.clone();
                let proxy = self.clone();
                State::Boxed {
                    fut: Box::pin(async move {
                        let provider = proxy.router.routes()[after.index].provider;
                        let result = match client.ready().await {
                            Ok(client) => {
                                client
                                    .call_for(parts, body, provider, after.account.clone())
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                        match proxy.answer(after, result) {
                            Answer::Now(label, resp) => (label, resp),
                            Answer::Later(fut) => fut.await,
                        }
                    }),
                }
            }
        }
    }

    /// What the caller gets for the upstream's `result`: the answer, its headers rewritten
    /// for the proxy, or the rewriting of its JSON body under way.
    fn answer(&self, after: After, result: Result<Response<UpstreamBody>, crate::Error>) -> Answer {
        let route = &self.router.routes()[after.index];
        let state = &self.per_route[after.index];
        let label = Label::Route(after.index);
        state
            .metrics
            .observe_upstream(after.sent.elapsed().as_secs_f64());
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let resp = from_error(&e);
                match Code::of(&e) {
                    Code::UnknownAccount
                    | Code::AccountRequired
                    | Code::RefreshRejected
                    | Code::RequestTimeout
                    | Code::BadRequest => {
                        tracing::info!(route = %route.prefix, error = %e, "request refused")
                    }
                    _ => tracing::warn!(route = %route.prefix, error = %e, "request failed"),
                }
                return Answer::Now(label, resp.map(Either::Right));
            }
        };
        let present = scan::<true>(resp.headers());
        state.limits.observe_scanned(
            after.account.as_str(),
            resp.status(),
            resp.headers(),
            present & FOUND_RATELIMIT_REMAINING != 0,
        );
        // A message framed by Transfer-Encoding ignores its Content-Length (RFC 9112 §6.3);
        // forwarding that Content-Length would cut the re-framed body short.
        if present & FOUND_TRANSFER_ENCODING != 0 {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let listed_removed = strip_found(resp.headers_mut(), present);
        // (Found before the strip: a `Connection` naming them removed them; the rewriting
        // then finds nothing to rewrite.)
        let rewrite_headers = present & (FOUND_LOCATION | FOUND_LINK) != 0;
        let rewrite_body = route.rewrite_body
            && if listed_removed {
                // `Connection` named headers, maybe `Content-Type`: look at what is left.
                json_rewrite::applies(&after.method, resp.status(), resp.headers())
            } else {
                json_rewrite::applies_scanned(
                    &after.method,
                    resp.status(),
                    present & FOUND_JSON != 0,
                    present & FOUND_ENCODED != 0,
                )
            };
        let as_is = |resp: Response<UpstreamBody>| resp.map(|b| Either::Left(Either::Left(b)));
        if !(rewrite_headers || rewrite_body) {
            return Answer::Now(label, as_is(resp));
        }
        let Some(host) = after
            .proxy_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(rewrite_authority)
        else {
            return Answer::Now(label, as_is(resp));
        };
        if rewrite_headers {
            rewrite_location_and_link(resp.headers_mut(), route, host);
        }
        match JsonRewrite::new(route, host).filter(|_| rewrite_body) {
            Some(rewrite) => Answer::Later(Box::pin(async move {
                let resp = rewrite_json_body(resp, rewrite).await;
                (
                    label,
                    resp.map(|b| Either::Left(Either::Right(Box::pin(b)))),
                )
            })),
            None => Answer::Now(label, as_is(resp)),
        }
    }
}

/// The account a worker's requests last named in `x-oauth-account` on one route.
///
/// An `Account` is an allocation, and a free when the request ends; a caller usually names the
/// same account request after request, so the last one named is kept and a reference to it
/// handed out while the name matches (a new one is made, and kept, when it does not). Only
/// its worker's thread takes the lock.
#[derive(Default)]
struct LastNamed(Mutex<Option<Account>>);

impl LastNamed {
    /// The account `name`.
    fn account(&self, name: &str) -> Account {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some(account) if account.as_str() == name => account.clone(),
            _ => {
                let account = Account::new(name);
                *last = Some(account.clone());
                account
            }
        }
    }
}

/// A boxed future of an answer and the label it is counted under.
type BoxedAnswer = Pin<Box<dyn Future<Output = (Label, Response<ProxyBody>)> + Send>>;

/// What a routed request needs once its upstream answered.
struct After {
    /// The route's index in the router.
    index: usize,
    method: Method,
    account: Account,
    /// The request's `Host`, for rewriting URLs back to the proxy.
    proxy_host: Option<HeaderValue>,
    /// When the upstream call started (`orp_upstream_duration_seconds`).
    sent: Instant,
}

/// An upstream answer as [`Proxy::answer`] made it for the caller.
// `Now` is the common case, returned once and at once: boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Now(Label, Response<ProxyBody>),
    /// Its JSON body's rewriting waits for the body's first frame.
    Later(BoxedAnswer),
}

impl Answer {
    fn into_state(self) -> State {
        match self {
            Answer::Now(label, resp) => State::answered(label, resp),
            Answer::Later(fut) => State::Boxed { fut },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Proxy::handle`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
        proxy: Arc<Proxy>,
        started: Option<Instant>,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State {
        /// The upstream call, through the layer.
        Upstream {
            #[pin]
            fut: crate::layer::ResponseFuture<Upstream, super::upstream::CallerBody>,
            after: Option<After>,
        },
        /// A rare path, boxed: the served refresh API, a JSON body rewritten, a service that
        /// was not ready.
        Boxed { fut: BoxedAnswer },
        /// The proxy's own answer (taken when polled).
        Answered { answer: Option<(Label, Response<ProxyBody>)> },
    }
}

impl State {
    fn answered(label: Label, resp: Response<ProxyBody>) -> Self {
        State::Answered {
            answer: Some((label, resp)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Response<ProxyBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let (label, resp) = loop {
            match this.state.as_mut().project() {
                StateProj::Upstream { fut, after } => {
                    let result = ready!(fut.poll(cx));
                    let after = after
                        .take()
                        .expect("ResponseFuture polled after completion");
                    // The layer's future is done: dropped now, never polled again.
                    match this.proxy.answer(after, result) {
                        Answer::Now(label, resp) => {
                            this.state.set(State::Answered { answer: None });
                            break (label, resp);
                        }
                        Answer::Later(fut) => this.state.set(State::Boxed { fut }),
                    }
                }
                StateProj::Boxed { fut } => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    this.state.set(State::Answered { answer: None });
                    break answer;
                }
                StateProj::Answered { answer } => {
                    break answer
                        .take()
                        .expect("ResponseFuture polled after completion")
                }
            }
        };
        Poll::Ready(this.proxy.finish(label, resp, *this.started))
    }
}

/// Wraps `resp`'s body in the JSON rewriting. The length may change: when the upstream declared
/// a `Content-Length` and the whole body came in the first frame (a small JSON answer), that
/// frame is rewritten at once and the new exact length is sent; otherwise the
/// `Content-Length` is dropped and the body streams (chunked on HTTP/1.1). Waiting for that
/// first frame is bounded by the body's own idle timeout (`upstream.body_idle_timeout`).
async fn rewrite_json_body(
    resp: Response<UpstreamBody>,
    rewrite: JsonRewrite,
) -> Response<RewriteBody<UpstreamBody>> {
    use http_body_util::BodyExt;
    let (mut parts, mut body) = resp.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > 0) else {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, rewrite.wrap(body));
    };
    let first = body.frame().await;
    let mut body = rewrite.wrap(body);
    match first {
        Some(Ok(frame)) if frame.data_ref().is_some_and(|d| d.len() as u64 == declared) => {
            let data = frame.into_data().unwrap_or_default();
            let len = body.prepend(data, Prepended::WholeBody);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        other => {
            parts.headers.remove(header::CONTENT_LENGTH);
            body.unread(other);
        }
    }
    Response::from_parts(parts, body)
}

fn own_response(code: Code, msg: &str) -> Response<ProxyBody> {
    error_response(code, msg, None, None).map(Either::Right)
}

/// What a request is counted under in `orp_requests_total`.
enum Label {
    /// A configured route (its index in the router).
    Route(usize),
    /// No route matched (`route=""`).
    Unrouted,
    /// Another path with its own label (the served refresh API).
    Other(String),
}

/// The fixed hop-by-hop headers of RFC 9110 §7.6.1, `Connection` first.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The indices in [`HOP_BY_HOP`] of the names `len` bytes long: most names have none of the
/// eight lengths, and are told apart without a comparison.
fn hop_by_hop_of_len(len: usize) -> &'static [usize] {
    match len {
        10 => &[0, 1],
        16 => &[2],
        19 => &[3],
        2 => &[4],
        7 => &[5, 7],
        17 => &[6],
        _ => &[],
    }
}

/// `name`'s index in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    hop_by_hop_of_len(name.as_str().len())
        .iter()
        .copied()
        .find(|&i| HOP_BY_HOP[i] == *name)
}

/// Whether `name`, as a `Connection` value lists it (in any case), is one of [`HOP_BY_HOP`].
fn is_listed_hop_by_hop(name: &str) -> bool {
    hop_by_hop_of_len(name.len())
        .iter()
        .any(|&i| HOP_BY_HOP[i].as_str().eq_ignore_ascii_case(name))
}

/// [`scan`]'s bit for `Location`.
const FOUND_LOCATION: u16 = 1 << 8;
/// [`scan`]'s bit for `Link`.
const FOUND_LINK: u16 = 1 << 9;
/// [`scan`]'s bit for `Transfer-Encoding`.
const FOUND_TRANSFER_ENCODING: u16 = 1 << 6; // HOP_BY_HOP[6]
/// [`scan`]'s bit for a `Content-Type` (its first value decides [`FOUND_JSON`]).
const FOUND_CONTENT_TYPE: u16 = 1 << 10;
/// [`scan`]'s bit for a first `Content-Type` that is JSON ([`json_rewrite::is_json_type`]).
const FOUND_JSON: u16 = 1 << 11;
/// [`scan`]'s bit for a `Content-Encoding` value other than `identity`.
const FOUND_ENCODED: u16 = 1 << 12;
/// [`scan`]'s bit for `x-ratelimit-remaining`.
const FOUND_RATELIMIT_REMAINING: u16 = 1 << 13;
/// [`scan`]'s bit for [`X_OAUTH_ACCOUNT`].
const FOUND_OAUTH_ACCOUNT: u16 = 1 << 14;

/// One pass over `headers`: bit `i` set when `HOP_BY_HOP[i]` is there, and the `FOUND_*` bits
/// for what else the handling of a request (`x-oauth-account`) or an answer (`Location`,
/// `Link`, whether the body is JSON and not encoded, GitHub's `x-ratelimit-remaining`) looks
/// for, found in the same pass instead of a lookup each. Names are told apart by length first:
/// most match none of the lengths. `ANSWER`: the headers are an answer's, whose body may be
/// rewritten (a request's `Content-Type` and `Content-Encoding` are not looked at).
fn scan<const ANSWER: bool>(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    // Every value, in order: a name with several is visited once per value.
    for (name, value) in headers {
        match name.as_str().len() {
            8 if *name == header::LOCATION => present |= FOUND_LOCATION,
            4 if *name == header::LINK => present |= FOUND_LINK,
            12 if ANSWER && *name == header::CONTENT_TYPE => {
                if present & FOUND_CONTENT_TYPE == 0 && json_rewrite::is_json_type(value.as_bytes())
                {
                    present |= FOUND_JSON;
                }
                present |= FOUND_CONTENT_TYPE;
            }
            16 if ANSWER && *name == header::CONTENT_ENCODING => {
                if !json_rewrite::is_identity(value) {
                    present |= FOUND_ENCODED;
                }
            }
            21 if is_remaining(name) => present |= FOUND_RATELIMIT_REMAINING,
            15 if *name == X_OAUTH_ACCOUNT => present |= FOUND_OAUTH_ACCOUNT,
            _ => {
                if let Some(i) = hop_by_hop_index(name) {
                    present |= 1 << i;
                }
            }
        }
    }
    present
}

/// Removes the hop-by-hop headers [`scan`] found (`present`) and the names `Connection` lists;
/// whether one of those listed names was there (other headers than the fixed hop-by-hop ones
/// are gone, so what `scan` found of them may no longer hold).
///
/// This runs twice per proxied request, so it allocates nothing: most messages carry none of
/// them (done), else the names `Connection` lists are removed one by one, then the fixed names
/// found.
fn strip_found(headers: &mut HeaderMap, present: u16) -> bool {
    if present & 0xff == 0 {
        return false;
    }
    let mut listed_removed = false;
    if present & 1 != 0 {
        if let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION) {
            if connection.iter().nth(1).is_none() {
                let value = connection.remove();
                listed_removed = remove_listed(headers, &value);
            } else {
                let all: Vec<HeaderValue> = connection.iter().cloned().collect();
                connection.remove_entry_mult();
                for value in &all {
                    listed_removed |= remove_listed(headers, value);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    listed_removed
}

/// Removes the headers a `Connection` value names (other than the fixed hop-by-hop ones, which
/// [`strip_found`] removes itself); whether one of them was there.
/// A name that is no valid header name names nothing.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue) -> bool {
    // The usual value of an HTTP/1.1 upstream's answer names a fixed one, removed anyway.
    if connection.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return false;
    }
    let Ok(listed) = connection.to_str() else {
        return false;
    };
    let mut removed = false;
    for name in listed.split(',').map(str::trim) {
        if !name.is_empty() && !is_listed_hop_by_hop(name) {
            removed |= headers.remove(name).is_some();
        }
    }
    removed
}

/// The `Host` the upstream client would set on an HTTP/1.1 request to `route`'s upstream (its
/// host, and its port unless the scheme's default), for plain `http` upstreams only: the
/// proxy sets it in place of the caller's, so the client finds it there instead of formatting
/// it per request. `None` for `https` upstreams, which may speak HTTP/2 (by ALPN), where the
/// client sends no `Host` and neither should the proxy.
fn plain_http_host(route: &super::config::Route) -> Option<HeaderValue> {
    let uri = &route.upstream;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        return None;
    }
    let host = uri.host()?;
    let value = match uri.port() {
        Some(port) if port.as_u16() != 80 => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

fn rewrite_location_and_link(headers: &mut HeaderMap, route: &super::config::Route, host: &str) {
    if let Some(new) = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| rewrite_url(v, route, host))
    {
        if let Ok(v) = HeaderValue::try_from(new) {
            headers.insert(header::LOCATION, v);
        }
    }
    if headers.contains_key(header::LINK) {
        let values: Vec<HeaderValue> = headers
            .get_all(header::LINK)
            .iter()
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| rewrite_link(s, route, host))
                    .and_then(|s| HeaderValue::try_from(s).ok())
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        headers.remove(header::LINK);
        for v in values {
            headers.append(header::LINK, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::router::test_route;
    use crate::Provider;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    /// Removes the hop-by-hop headers of RFC 9110 §7.6.1 (and those `Connection` names), as
    /// the request path does.
    fn strip_hop_by_hop(headers: &mut HeaderMap) {
        strip_found(headers, scan::<false>(headers));
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_names_are_found_in_any_case_and_only_them() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i));
            assert!(is_listed_hop_by_hop(name.as_str()));
            assert!(is_listed_hop_by_hop(&name.as_str().to_uppercase()));
        }
        for other in [
            "host",
            "connection2",
            "keep-alivx",
            "tf",
            "trailed",
            "user-agent",
        ] {
            let name = HeaderName::from_static(other);
            assert_eq!(hop_by_hop_index(&name), None, "{other:?}");
            assert!(!is_listed_hop_by_hop(other), "{other:?}");
        }
        assert!(!is_listed_hop_by_hop(""));
        assert!(!is_listed_hop_by_hop("keep-alive "));
    }

    #[test]
    fn hop_by_hop_headers_and_the_names_connection_lists_are_dropped() {
        // None of them: nothing changes.
        let mut h = headers(&[("host", "a"), ("accept", "*/*"), ("x-custom", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["accept", "host", "x-custom"]);

        // Every fixed one, and what Connection lists (any case, spaces, empty items, names
        // that are no header names), across several Connection values.
        let mut h = headers(&[
            ("connection", "keep-alive, X-Listed ,,close"),
            ("connection", "x-other, bad name, TE"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Bearer p"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-listed", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "x-kept"]);

        // The common response: one Connection value naming a fixed header.
        let mut h = headers(&[
            ("content-length", "2"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-length"]);

        // A fixed header without Connection, and a Connection value that is no text.
        let mut h = headers(&[("upgrade", "h2c"), ("date", "x")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["date"]);
        let mut h = headers(&[("date", "x")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"date\xff").unwrap(),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["date"]);
    }

    #[test]
    fn a_worker_reuses_the_account_named_last() {
        let last = LastNamed::default();
        let a = last.account("octo");
        let b = last.account("octo");
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "one allocation, shared"
        );
        let c = last.account("bob");
        assert_eq!(c.as_str(), "bob");
        let d = last.account("octo");
        assert_eq!(d.as_str(), "octo");
        assert!(
            !std::ptr::eq(a.as_str(), d.as_str()),
            "made again after bob"
        );
        assert_eq!(last.account("bob").as_str(), "bob");
        assert_eq!(last.account("bo").as_str(), "bo");
        assert_eq!(last.account("bob ").as_str(), "bob ");
    }

    #[test]
    fn one_scan_finds_hop_by_hop_location_and_link() {
        assert_eq!(HOP_BY_HOP[6], header::TRANSFER_ENCODING);
        assert_eq!(
            scan::<true>(&headers(&[("date", "x"), ("content-length", "1")])),
            0
        );
        assert_eq!(
            scan::<true>(&headers(&[("transfer-encoding", "chunked"), ("date", "x")])),
            FOUND_TRANSFER_ENCODING
        );
        assert_eq!(
            scan::<true>(&headers(&[
                ("location", "/a"),
                ("link", "<x>"),
                ("te", "t")
            ])),
            FOUND_LOCATION | FOUND_LINK | 1 << 4
        );
        // Names of the same lengths are not taken for them.
        assert_eq!(
            scan::<true>(&headers(&[("x-locate", "1"), ("lynx", "2")])),
            0
        );
        // What was found is what is stripped; Location and Link stay.
        let mut h = headers(&[
            ("location", "/a"),
            ("keep-alive", "timeout=5"),
            ("link", "<x>"),
        ]);
        let found = scan::<true>(&h);
        strip_found(&mut h, found);
        assert_eq!(names(&h), ["link", "location"]);
    }

    #[test]
    fn the_scan_tells_a_json_body_the_rate_limit_count_and_the_account_and_agrees_with_the_lookups()
    {
        let bits = |pairs: &[(&'static str, &'static str)]| scan::<true>(&headers(pairs)) & !0xff;
        assert_eq!(
            bits(&[("content-type", "application/json")]),
            FOUND_CONTENT_TYPE | FOUND_JSON
        );
        // The first Content-Type decides, as a lookup would.
        assert_eq!(
            bits(&[
                ("content-type", "text/plain"),
                ("content-type", "application/json")
            ]),
            FOUND_CONTENT_TYPE
        );
        assert_eq!(
            bits(&[
                ("content-encoding", " Identity "),
                ("content-encoding", "gzip")
            ]),
            FOUND_ENCODED
        );
        assert_eq!(bits(&[("content-encoding", "identity")]), 0);
        assert_eq!(
            bits(&[("x-ratelimit-remaining", "0")]),
            FOUND_RATELIMIT_REMAINING
        );
        assert_eq!(bits(&[("x-oauth-account", "octo")]), FOUND_OAUTH_ACCOUNT);
        // A request's body is never rewritten: its Content-Type is not looked at.
        assert_eq!(
            scan::<false>(&headers(&[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
                ("x-oauth-account", "octo")
            ])),
            FOUND_OAUTH_ACCOUNT
        );
        // Names of the same lengths are not taken for them.
        assert_eq!(
            bits(&[
                ("x-oauth-accounx", "octo"),
                ("content-typo", "application/json"),
                ("content-encodinx", "gzip"),
                ("x-ratelimit-remainin9", "0"),
            ]),
            0
        );
        // What the scan says of a body is what `json_rewrite::applies` says, for every
        // combination of these headers.
        let types = [
            None,
            Some("application/json"),
            Some("text/html"),
            Some("a/b+json; x=1"),
        ];
        let encodings = [None, Some("identity"), Some("br"), Some("IDENTITY ")];
        for ct in types {
            for ce in encodings {
                for second in [None, Some("gzip"), Some("identity")] {
                    let mut pairs = vec![("date", "x")];
                    pairs.extend(ct.map(|v| ("content-type", v)));
                    pairs.extend(ce.map(|v| ("content-encoding", v)));
                    pairs.extend(second.map(|v| ("content-encoding", v)));
                    let h = headers(&pairs);
                    let found = scan::<true>(&h);
                    for (method, status) in [
                        (Method::GET, http::StatusCode::OK),
                        (Method::HEAD, http::StatusCode::OK),
                        (Method::GET, http::StatusCode::NO_CONTENT),
                        (Method::GET, http::StatusCode::NOT_MODIFIED),
                        (Method::POST, http::StatusCode::NOT_FOUND),
                    ] {
                        assert_eq!(
                            json_rewrite::applies_scanned(
                                &method,
                                status,
                                found & FOUND_JSON != 0,
                                found & FOUND_ENCODED != 0
                            ),
                            json_rewrite::applies(&method, status, &h),
                            "{pairs:?} {method} {status}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stripping_says_whether_connection_listed_other_headers() {
        let strip = |pairs: &[(&'static str, &'static str)]| {
            let mut h = headers(pairs);
            let found = scan::<true>(&h);
            let stripped = strip_found(&mut h, found);
            (stripped, names(&h).join(","))
        };
        assert_eq!(
            strip(&[("connection", "keep-alive"), ("content-type", "x")]),
            (false, "content-type".to_string())
        );
        assert_eq!(
            strip(&[("connection", "close, te"), ("content-type", "x")]),
            (false, "content-type".to_string())
        );
        // Listed but absent: nothing else is gone.
        assert_eq!(
            strip(&[("connection", "x-absent"), ("content-type", "x")]),
            (false, "content-type".to_string())
        );
        assert_eq!(
            strip(&[("connection", "Content-Type"), ("content-type", "x")]),
            (true, String::new())
        );
        assert_eq!(
            strip(&[
                ("connection", "close"),
                ("connection", "x-a"),
                ("x-a", "1"),
                ("date", "d")
            ]),
            (true, "date".to_string())
        );
    }

    #[test]
    fn plain_http_upstreams_get_the_host_the_client_would_set() {
        let host = |upstream: &'static str| {
            plain_http_host(&test_route("/x", upstream, Provider::GitHub))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            host("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host("http://127.0.0.1:8080/base/").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host("http://example.com:80").as_deref(),
            Some("example.com")
        );
        assert_eq!(host("http://example.com").as_deref(), Some("example.com"));
        assert_eq!(
            host("http://example.com:443").as_deref(),
            Some("example.com:443")
        );
        assert_eq!(host("http://[::1]:9000").as_deref(), Some("[::1]:9000"));
        // https may be HTTP/2: left to the client.
        assert_eq!(host("https://api.github.com"), None);
        assert_eq!(host("https://127.0.0.1:8443"), None);
    }
}
