//! The response future of [`Refresh`](super::Refresh): send, and on a 401 refresh and replay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};

pub(crate) use super::body::Recording;
use super::body::ReplayBody;
use super::saved::SavedRequest;
use super::Config;
use crate::error::{BoxError, Error, ErrorKind};
use crate::provider::{Account, Provider};
use crate::tokens::{Lease, Tokens};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The header marking a 401 whose refresh token was rejected.
pub(crate) static X_OAUTH_REFRESH: HeaderName = HeaderName::from_static("x-oauth-refresh");

pin_project! {
    /// The response future of [`Refresh`](super::Refresh).
    ///
    /// On the hot path (a valid cached token) it is the inner service's future plus a status
    /// check; only a refresh or a 401 moves it onto a boxed slow path.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, S::Response>,
        retry: Option<Retry<S, B>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Sent { #[pin] fut: F },
        Slow { fut: BoxFuture<Result<R, Error>> },
        Failed { err: Option<Box<Error>> },
    }
}

/// The account a request is sent for.
pub(crate) enum AccountOf {
    /// The layer's default account, read from its config: no reference count per request.
    Default,
    /// An account of its own (the request's extension, or the sidecar's route).
    Named(Account),
}

impl AccountOf {
    /// The account; `config` is the layer's, which names the default account.
    #[inline(always)]
    pub(crate) fn of<'a>(&'a self, config: &'a Config) -> &'a Account {
        match self {
            AccountOf::Named(a) => a,
            AccountOf::Default => config.default_account_ref(),
        }
    }
}

impl From<Account> for AccountOf {
    fn from(account: Account) -> Self {
        AccountOf::Named(account)
    }
}

/// Everything needed to handle a 401: the service, the layer's config (the token cache and the
/// default account), the account, and the recorded request.
pub(crate) struct Retry<S, B> {
    pub(crate) svc: S,
    pub(crate) config: Arc<Config>,
    pub(crate) provider: Provider,
    pub(crate) account: AccountOf,
    pub(crate) generation: u64,
    pub(crate) saved: SavedRequest,
    pub(crate) recording: Recording,
    pub(crate) _body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Retry<S, B> {
    /// The request's account.
    pub(crate) fn account(&self) -> &Account {
        self.account.of(&self.config)
    }

    fn tokens(&self) -> &Tokens {
        &self.config.tokens
    }
}

impl<S, B, ResB> Retry<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    ResB: Send + 'static,
{
    fn inner_error(&self, e: S::Error) -> Error {
        Error::inner(Some(self.provider), Some(self.account().clone()), e)
    }

    /// The slow start: wait for a refresh, then send.
    async fn send_after_refresh(
        mut self,
        mut req: Request<ReplayBody<B>>,
    ) -> Result<Response<ResB>, Error> {
        let lease = self
            .tokens()
            .lease(self.provider, self.account().as_str())
            .await?;
        self.generation = lease.generation;
        req.headers_mut().insert(AUTHORIZATION, lease.header);
        let resp = self.svc.call(req).await.map_err(|e| self.inner_error(e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return self.after_unauthorized(resp).await;
        }
        Ok(resp)
    }

    /// A 401: refresh (or take the newer generation), then replay once if the body allows.
    async fn after_unauthorized(self, mut resp: Response<ResB>) -> Result<Response<ResB>, Error> {
        let this = self;
        let (provider, account) = (this.provider, this.account().as_str());
        tracing::debug!(%provider, account, generation = this.generation, "upstream answered 401");
        let lease = match this
            .tokens()
            .lease_after_unauthorized(provider, account, this.generation)
            .await
        {
            Ok(lease) => lease,
            Err(e) if e.kind() == ErrorKind::RefreshRejected => {
                resp.headers_mut().insert(
                    X_OAUTH_REFRESH.clone(),
                    HeaderValue::from_static("rejected"),
                );
                return Ok(resp);
            }
            Err(e) => return Err(e),
        };
        let Some(body) = this.recording.replay::<B>() else {
            tracing::debug!(%provider, account, "request body not replayable; returning the 401 after the refresh");
            this.tokens().count_replay(provider, false);
            return Ok(resp);
        };
        let account = this.account().clone();
        let Some(req) = this.saved.into_request(body, lease.header) else {
            // Never: the URI and headers were copied from valid ones (see `saved`).
            tracing::debug!(%provider, account = account.as_str(), "request URI or headers not restorable; returning the 401 after the refresh");
            this.config.tokens.count_replay(provider, false);
            return Ok(resp);
        };
        drop(resp);
        this.config.tokens.count_replay(provider, true);
        tracing::debug!(%provider, account = account.as_str(), generation = lease.generation, "replaying after 401");
        let svc = this.svc;
        svc.oneshot(req)
            .await
            .map_err(|e| Error::inner(Some(provider), Some(account), e))
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    pub(crate) fn passthrough(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Sent { fut },
            retry: None,
        }
    }

    pub(crate) fn failed(err: Error) -> Self {
        ResponseFuture {
            state: State::Failed {
                err: Some(Box::new(err)),
            },
            retry: None,
        }
    }
}

impl<S, B, ResB> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    ResB: Send + 'static,
{
    /// Sends the request now with `lease`, or — without one — waits for a refresh on the slow
    /// path; either way ready to refresh and replay on a 401.
    ///
    /// Inlined into the layer's `call`, so that the future is built in place rather than moved
    /// through calls (the retry state is a few hundred bytes); the retry state is built once,
    /// for both paths.
    #[inline(always)]
    pub(crate) fn send(
        svc: S,
        config: &Arc<Config>,
        provider: Provider,
        account: AccountOf,
        mut parts: http::request::Parts,
        body: B,
        lease: Option<Lease>,
    ) -> Self {
        // The caller's own `Authorization` never goes out: every path that sends the request
        // `insert`s the lease's, which replaces all of the caller's; it is not saved either.
        let saved = SavedRequest::new(&parts);
        let (body, recording) = ReplayBody::recorded(body, config.max_replay_body);
        let mut retry = Retry {
            svc,
            config: config.clone(),
            provider,
            account,
            generation: 0,
            saved,
            recording,
            _body: std::marker::PhantomData,
        };
        match lease {
            Some(lease) => {
                retry.generation = lease.generation;
                parts.headers.insert(AUTHORIZATION, lease.header);
                let fut = retry.svc.call(Request::from_parts(parts, body));
                ResponseFuture {
                    state: State::Sent { fut },
                    retry: Some(retry),
                }
            }
            None => ResponseFuture {
                state: State::Slow {
                    fut: Box::pin(retry.send_after_refresh(Request::from_parts(parts, body))),
                },
                retry: None,
            },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    ResB: Send + 'static,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Sent { fut } => {
                    let result = ready!(fut.poll(cx));
                    let resp = match result {
                        Ok(resp) => resp,
                        Err(e) => {
                            let (p, a) = match this.retry.as_ref() {
                                Some(r) => (Some(r.provider), Some(r.account().clone())),
                                None => (None, None),
                            };
                            return Poll::Ready(Err(Error::inner(p, a, e)));
                        }
                    };
                    if resp.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(resp));
                    }
                    let Some(retry) = this.retry.take() else {
                        return Poll::Ready(Ok(resp));
                    };
                    let fut = Box::pin(retry.after_unauthorized(resp));
                    this.state.set(State::Slow { fut });
                }
                StateProj::Slow { fut } => return fut.as_mut().poll(cx),
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(*err.take().expect("polled after completion")))
                }
            }
        }
    }
}
