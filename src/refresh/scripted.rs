//! A refresher answering from a script, for the crate's unit tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BoxFuture, RefreshError, Refreshed, Refresher};
use crate::provider::Provider;
use crate::token::Secret;

/// The answers to give, in order, then `default`, each after `delay`; and how many calls
/// were made.
pub(crate) struct Script {
    pub(crate) answers: Mutex<VecDeque<Result<Refreshed, RefreshError>>>,
    pub(crate) calls: AtomicUsize,
    default: Refreshed,
    delay: Duration,
}

impl Script {
    pub(crate) fn new(default: Refreshed) -> Arc<Script> {
        Script::delayed(default, Duration::ZERO)
    }

    /// A script whose every answer comes `delay` after the call.
    pub(crate) fn delayed(default: Refreshed, delay: Duration) -> Arc<Script> {
        Arc::new(Script {
            answers: Mutex::default(),
            calls: AtomicUsize::new(0),
            default,
            delay,
        })
    }

    /// How many calls were made.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Queues `answer` for the next call.
    pub(crate) fn push(&self, answer: Result<Refreshed, RefreshError>) {
        self.answers.lock().unwrap().push_back(answer);
    }
}

/// A [`Refresher`] following a shared [`Script`].
pub(crate) struct Scripted(pub(crate) Arc<Script>);

impl Refresher for Scripted {
    fn refresh<'a>(
        &'a self,
        _: Provider,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<Refreshed, RefreshError>> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.0.answers.lock().unwrap().pop_front();
        let default = self.0.default.clone();
        let delay = self.0.delay;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            next.unwrap_or(Ok(default))
        })
    }
}
