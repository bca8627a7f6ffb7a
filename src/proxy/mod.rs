//! The standalone sidecar: a reverse proxy that routes path prefixes to Google and GitHub API
//! upstreams and keeps every request authenticated through the same [`RefreshLayer`] that Rust
//! services embed. This module holds the sidecar's building blocks, starting with its TOML
//! configuration ([`config`], SPEC 4.2): listeners, tokens, refresh settings, store, routes,
//! seeded accounts, the self-hosted refresh API ([`refresh_api`], SPEC 4.9) and the webhooks
//! ([`webhook`], SPEC 4.11).
//!
//! [`RefreshLayer`]: crate::RefreshLayer

pub mod admin;
mod auth;
pub mod config;
pub mod errors;
pub mod json_rewrite;
pub mod listener;
pub mod metrics;
pub mod rate_limit;
pub mod refresh_api;
mod request_body;
pub mod router;
pub mod server;
pub mod sidecar;
pub mod timeouts;
pub mod upstream;
pub mod walkthrough;
pub mod webhook;
pub mod workers;
