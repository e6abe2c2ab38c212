//! The daemon's HTTP endpoints: `/metrics` (Prometheus) and `/health` (the JSON an
//! application's `/health` has; 200 when ok or degraded, 503 when unhealthy).
//!
//! Both answer from cached state that the daemon refreshes in the background: a scrape
//! never waits on a database or the store, so a hung target cannot hang a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use ops_core::{Error, HealthSummary, Result};

/// What the endpoints serve.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The metrics text.
    pub metrics: String,
    /// The newest health summary.
    pub health: Option<HealthSummary>,
}

/// Shared, refreshed by the daemon, read by every request.
pub type SharedState = Arc<RwLock<Served>>;

/// The Prometheus text format (see [`crate::metrics::prometheus_text`]).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` now (so a taken port is an error at start-up, not later) and serves
/// until `stop` is cancelled.
///
/// # Errors
/// [`ops_core::ErrorKind::Io`] when the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::io(
            format!(
                "listening on {addr} for /metrics and /health (is another process using the port?)"
            ),
            e,
        )
    })
}

/// Serves requests on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: SharedState, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, say: wait a little rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // A client that stalls is dropped after a while.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: SharedState,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let s = state.read().await;
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, PROMETHEUS_TEXT, s.metrics.clone()),
        "/health" => match &s.health {
            Some(h) => (
                if h.serving() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                serde_json::to_string(h).unwrap_or_default(),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                r#"{"status":"unknown","reason":"the first health check has not finished yet"}"#
                    .to_owned(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "dbops serves /metrics and /health\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
