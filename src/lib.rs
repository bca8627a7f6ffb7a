//! Keeps calls to Google and GitHub APIs authenticated.
//!
//! `oauth-refresh-proxy` injects the right OAuth access token into each request, refreshes it
//! before it expires, and — when an API still answers 401 — refreshes once and replays the
//! request, so the code behind it never sees an expired token.
//!
//! * [`Tokens`]: the shared token cache — one refresh per account per token generation,
//!   refresh-ahead, rotated refresh tokens kept and announced through [`Tokens::events`].
//! * [`RefreshLayer`] / [`Refresh`]: the tower middleware around any HTTP client service.
//! * [`refresh`]: how tokens are refreshed ([`BackendRefresher`] talks to a Flashback-compatible
//!   backend; [`DirectRefresher`] to Google's and GitHub's own token endpoints through
//!   [`GoogleRefresher`] and [`GitHubRefresher`]).
//!
//! # How the crate is laid out
//!
//! Requests flow one way, top to bottom; no module calls back up:
//!
//! ```text
//! proxy        the sidecar: listener → server → router → layer → upstream; admin, metrics,
//!   │          webhooks, the served refresh API (refresh_api), config, the demo walkthrough
//! layer        RefreshLayer / Refresh<S>: picks provider and account, injects the token,
//!   │          replays once after a 401 (ReplayBody keeps the body for it)
//! tokens       Tokens: the cache, one refresh per account and generation (flight),
//!   │   └──┐   refresh-ahead, cooldowns, events, the hot path's coarse clock
//!   │    store memory, file (redb) or Redis; the record codec and encryption at rest
//! refresh      Refresher: the backend protocol, or Google's and GitHub's token endpoints;
//!              one retry policy, HTTP client, URL rule and token-endpoint reader for all
//! beside them  provider (hosts → provider), token (Secret), error, single_flight;
//!              reqwest / google_apis / octocrab adapt tokens and layer to those clients
//! ```
//!
//! # Cargo features
//!
//! With `default-features = false` the crate is the layer, the cache, the refreshers (over
//! reqwest) and the memory store. `file-store` and `redis-store` add the durable and shared
//! stores (`store::file`, `store::redis`); `reqwest`, `google-apis` and `octocrab` the
//! integrations (`reqwest::RefreshMiddleware`, `google_apis::TokenSource`, `octocrab`);
//! `test-util` the in-process fakes (`demo`); `sidecar` (the default) the binary and `proxy`.
//!
//! # Example
//!
//! The layer around an in-process service standing in for Google's API, with a refresher that
//! answers at once:
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use oauth_refresh_proxy::refresh::{BoxFuture, Refreshed, Refresher};
//! use oauth_refresh_proxy::{Provider, RefreshError, RefreshLayer, ReplayBody, Secret, TokenSeed, Tokens};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! struct Fresh;
//! impl Refresher for Fresh {
//!     fn refresh<'a>(&'a self, _: Provider, _: &'a Secret) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
//!         Box::pin(async {
//!             Ok(Refreshed { access_token: Secret::new("ya29.fresh"), refresh_token: None, expires_at: None })
//!         })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let tokens = Tokens::builder(Fresh).build();
//! // An access token that the "API" below no longer accepts.
//! tokens.insert(Provider::Google, "alice", TokenSeed::new("1//refresh").access_token("ya29.revoked"));
//!
//! let api = tower::service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
//!     let ok = req.headers()["authorization"] == "Bearer ya29.fresh";
//!     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
//!     Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RefreshLayer::new(tokens.clone()).default_account("alice"))
//!     .service(api);
//!
//! let req = Request::get("https://www.googleapis.com/drive/v3/files")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! let resp = client.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), StatusCode::OK); // 401 → refresh → replay, invisibly
//! assert_eq!(tokens.stats(Provider::Google).replayed, 1);
//! # });
//! ```
#![deny(unsafe_code, missing_docs)]
#![warn(rust_2018_idioms)]

#[cfg(feature = "test-util")]
pub mod demo;
mod error;
#[cfg(feature = "google-apis")]
pub mod google_apis;
pub mod layer;
mod provider;
#[cfg(feature = "sidecar")]
pub mod proxy;
pub mod refresh;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod single_flight;
pub mod token;
mod tokens;

pub use error::{BoxError, Error, ErrorKind};
pub use layer::{Refresh, RefreshLayer, ReplayBody, ResponseFuture};
pub use provider::{Account, Provider, UnknownProvider};
pub use refresh::{
    BackendRefresher, DirectRefresher, GitHubRefresher, GoogleRefresher, RefreshError, RetryPolicy,
};
pub use token::{Secret, TokenSeed};
pub use tokens::store;
pub use tokens::{
    AccountInfo, AccountPage, Events, HealthChange, ProviderStats, RefreshEvent, RefreshOutcome,
    Tokens, TokensBuilder,
};

// Host mapping (hosts beyond the default ones mapped to a provider) and octocrab's client stack through the layer (feature `octocrab`).
pub use provider::{HostPattern, InvalidHost};
#[cfg(feature = "octocrab")]
pub mod octocrab;

/// The README's Rust snippets, compiled and run as doc tests.
#[cfg(all(doctest, feature = "octocrab", feature = "reqwest"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
