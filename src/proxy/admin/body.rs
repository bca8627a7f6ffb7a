//! [`AdminBody`]: the body of the admin listener's answers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::ListingBody;

/// The body of the admin listener's answers: one buffer, or a streamed `GET /tokens` page.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use oauth_refresh_proxy::proxy::admin::AdminBody;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let body = AdminBody::from(Full::new(Bytes::from_static(b"ok")));
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
/// # });
/// ```
pub struct AdminBody(pub(super) Kind);

pub(super) enum Kind {
    Full(Full<Bytes>),
    Listing(ListingBody),
}

impl From<Full<Bytes>> for AdminBody {
    fn from(body: Full<Bytes>) -> Self {
        AdminBody(Kind::Full(body))
    }
}

impl std::fmt::Debug for AdminBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Full(_) => "AdminBody::Full",
            Kind::Listing(_) => "AdminBody::Listing",
        })
    }
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Kind::Full(body) => Pin::new(body).poll_frame(cx),
            Kind::Listing(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(body) => body.is_end_stream(),
            Kind::Listing(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(body) => body.size_hint(),
            Kind::Listing(body) => body.size_hint(),
        }
    }
}
