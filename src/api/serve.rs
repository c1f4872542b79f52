//! The API's HTTP server: bounded in connections and in time, so slow or silent clients cannot
//! hold it (docs/security.md).
//!
//! - at most `max_connections` at once: the accept loop waits for a free one, so the rest
//!   wait in the kernel's backlog instead of costing memory;
//! - a request's headers must arrive within `header_timeout` (hyper closes the connection);
//! - a request, body included, must be answered within `request_timeout`: past it the
//!   client gets 408 and the connection is closed;
//! - a connection with no request in flight for `idle_timeout` is closed (a client that
//!   connects and sends nothing, or keeps an idle keep-alive open).

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The server's bounds (`MAILFLEET_API_*`, docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: 1024,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What one connection's watchdog looks at: requests in flight, and when the last one began
/// or ended (ms since the connection was accepted).
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }
}

struct InFlight(Arc<Activity>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `router` on `listener` within `bounds` until `shutdown`; then stop accepting, let
/// each connection finish its request, and return once they are closed (or after the
/// request timeout).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                // Out of file descriptors and the like: keep serving the others.
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity {
                opened: Instant::now(),
                in_flight: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
            });
            let a = activity.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    a.in_flight.fetch_add(1, Ordering::Relaxed);
                    let guard = InFlight(a.clone());
                    let router = router.clone();
                    async move {
                        let _guard = guard;
                        match tokio::time::timeout(bounds.request_timeout, router.oneshot(req))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => Ok(timed_out()),
                        }
                    }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut tick =
                tokio::time::interval(Duration::from_millis(250).min(bounds.idle_timeout));
            loop {
                tokio::select! {
                    _ = &mut conn => return,
                    _ = tick.tick() => {
                        if activity.idle_for().is_some_and(|d| d >= bounds.idle_timeout) {
                            return;
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
            // Shutting down: finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(bounds.request_timeout, conn).await;
        });
    }
    // Every connection's slot comes back when it closes.
    let all = u32::try_from(bounds.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        bounds.request_timeout + Duration::from_secs(1),
        slots.acquire_many(all),
    )
    .await;
    Ok(())
}

fn timed_out() -> Response {
    let mut r = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({"error": "the request took too long to arrive"})),
    )
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}
