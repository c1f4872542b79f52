//! The mock's HTTP server: one HTTP/1.1 connection per task, each request carrying an
//! [`Edge`]: when its head was read (where a provider counts it against a rate limit), and a
//! reset its handler can pull to drop the connection unanswered (accept-then-drop).

use axum::Router;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Put into each request's extensions by [`serve`].
#[derive(Clone)]
pub struct Edge {
    reset: Arc<Notify>,
    arrived: Instant,
}

impl Edge {
    /// Reset the request's connection now.
    pub fn reset(&self) {
        self.reset.notify_one();
    }

    /// When hyper had read the request's head: before the body, the router and the handler,
    /// so a busy mock does not count a request later than it arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }
}

/// Serve `router` on `listener` until `shutdown`, one HTTP/1.1 connection per task, each
/// request carrying an [`Edge`] whose reset closes its connection at once with a TCP reset (the
/// sockets linger 0), which is how accept-then-drop leaves the client without an answer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                // Out of file descriptors and the like: keep serving the others.
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        let router = router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let reset = Arc::new(Notify::new());
            let r = reset.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Edge {
                        reset: r.clone(),
                        arrived: Instant::now(),
                    });
                    router.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = reset.notified() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
