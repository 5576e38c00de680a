//! One connection's calls: what the transport knows attached to each, anonymous
//! gRPC calls refused from their headers (the body unread), and the calls in
//! flight counted, so idle deadlines run only when nothing is.
use crate::identity::ConnInfo;
use axum::body::Body;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tower_service::Service;

use super::refusals::Reason;

/// The one gRPC method a client without an SVID may call (the OAuth front
/// door's public documents are `api::oauth::is_public`).
const PUBLIC_GRPC: &[&str] = &["/grpc.health.v1.Health/Check"];

/// The calls in flight on one connection, and whether it has had one.
#[derive(Clone)]
pub(super) struct Activity(Arc<watch::Sender<(usize, bool)>>);

impl Activity {
    pub(super) fn new() -> Self {
        Activity(Arc::new(watch::Sender::new((0, false))))
    }

    pub(super) fn in_flight(&self) -> usize {
        self.0.borrow().0
    }

    fn begin(&self) -> InFlight {
        self.0.send_modify(|(n, any)| {
            *n += 1;
            *any = true;
        });
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no call in flight for
    /// `first` (before its first call) or `after` (since its last one).
    pub(super) fn idle(
        &self,
        first: Duration,
        after: Duration,
    ) -> impl Future<Output = Reason> + use<> {
        let mut rx = self.0.subscribe();
        async move {
            loop {
                let (n, any) = *rx.borrow_and_update();
                if n > 0 {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    continue;
                }
                let (wait, reason) = if any {
                    (after, Reason::IdleTimeout)
                } else {
                    (first, Reason::FirstRequestTimeout)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => return reason,
                    r = rx.changed() => if r.is_err() { return std::future::pending().await },
                }
            }
        }
    }
}

/// One call in flight; it ends when the response body is dropped (for a
/// stream, when the stream ends).
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.send_modify(|(n, _)| *n = n.saturating_sub(1));
    }
}

/// The per-connection hyper service: attaches what the transport knows, refuses
/// anonymous gRPC calls unread, and tracks calls in flight.
#[derive(Clone)]
pub(super) struct ConnService {
    pub router: axum::Router,
    pub info: Arc<ConnInfo>,
    pub refuse_anonymous: bool,
    pub activity: Activity,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        if self.refuse_anonymous
            && let Err(why) = &self.info.identity
            && !PUBLIC_GRPC.contains(&req.uri().path())
            && !crate::api::oauth::is_public(req.uri().path())
        {
            // Refused on its headers: the body is never read, and dropping it
            // tells the client to stop sending (RST_STREAM). A gRPC call is
            // answered with a gRPC status; anything else as the OAuth front
            // door answers a client that failed to authenticate.
            let grpc = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let resp = if grpc {
                crate::error::unauthenticated(why).into_http::<Body>()
            } else {
                use axum::response::IntoResponse;
                crate::error::oauth::OauthError::from(crate::api::Refused::Unauthenticated(
                    why.clone(),
                ))
                .into_response()
            };
            drop(req);
            return Box::pin(std::future::ready(Ok(Tracked::response(resp, in_flight))));
        }
        req.extensions_mut().insert((*self.info).clone());
        let mut router = self.router.clone();
        Box::pin(async move {
            let resp = match router.call(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(Tracked::response(resp, in_flight))
        })
    }
}

/// A response body that keeps its call counted as in flight until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    fn response(resp: hyper::Response<Body>, in_flight: InFlight) -> hyper::Response<Body> {
        resp.map(|inner| {
            Body::new(Tracked {
                inner,
                _in_flight: in_flight,
            })
        })
    }
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
