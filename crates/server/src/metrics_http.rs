//! The HTTP side of `--metrics-addr`: `GET /metrics` answers Prometheus' text format
//! (`metrics.rs`), `GET /` the status page and `GET /status.json` its data (`status.rs`);
//! any other path is 404, any other method 405.
//!
//! Invariants:
//! - Bounded: at most [`MAX_CONNECTIONS`] scrapers at once (others are closed at once), a
//!   request's headers must arrive within [`HEADER_TIMEOUT`], and bodies are never read.
//! - It shares nothing with the MongoDB listener but `Shared`'s counters: a stuck scraper
//!   cannot hold up a client.
//! - The status page is sent with a Content-Security-Policy that allows only its own inline
//!   script and style and requests to this address: it loads nothing from elsewhere.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::Shared;

const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The status page's policy: its inline script and style, fetches to this origin, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(shared),
        ),
        (&Method::GET, "/") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::status::PAGE.to_string(),
        ),
        (&Method::GET, "/status.json") => (
            StatusCode::OK,
            "application/json",
            crate::status::render_json(shared),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics, the status page at /\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET is served here\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut set = |name, value: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(hyper::header::CONTENT_TYPE, kind);
    set(hyper::header::CACHE_CONTROL, "no-store");
    set(hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if kind.starts_with("text/html") {
        set(hyper::header::CONTENT_SECURITY_POLICY, PAGE_CSP);
    }
    response
}
