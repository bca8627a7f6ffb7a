//! What the benchmark binaries share: the request, an inner service that answers at once, and
//! a way to drive futures that must be ready immediately.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tower::Service;

/// The request every hot-path bench sends (the provider is detected from its host).
pub const URI: &str = "https://www.googleapis.com/drive/v3/files?pageSize=10";

/// Polls a future that must be ready at once (the hot path never waits).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("hot path future was not immediately ready"),
    }
}

/// The inner service: reads the request body, answers 200 at once.
#[derive(Clone)]
pub struct Immediate;

impl<B> Service<Request<B>> for Immediate
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            Ok(Response::new(Empty::new()))
        })
    }
}
