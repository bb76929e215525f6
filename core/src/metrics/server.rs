//! The metrics server on `metrics_bind_address`, with upstream's paths:
//!
//! - `/metrics`: every metric, as Prometheus text 0.0.4, or OpenMetrics when the scraper's
//!   `Accept` header asks for `application/openmetrics-text`;
//! - `/proxyMode`: the active dataplane's name (upstream answers `iptables`, `ipvs`, …);
//! - `/healthz`: `ok` — the process is up (upstream installs the same trivial check here; the
//!   real health answer is on the healthz address).

use super::{
    http::{self, HttpHandler, ServerHandle},
    text, Metrics,
};
use futures::FutureExt;
use std::{io, rc::Rc, sync::Arc};
use tokio::net::TcpListener;

/// Serves the metrics endpoints on `listener` and logs where.
pub fn start(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    proxy_mode: String,
) -> io::Result<ServerHandle> {
    let handler: HttpHandler = Rc::new(move |req| {
        let openmetrics = req
            .headers()
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let reply = match req.uri().path() {
            "/metrics" if openmetrics => http::reply(
                200,
                text::OPENMETRICS_CONTENT_TYPE,
                metrics.encode_openmetrics(),
            ),
            "/metrics" => http::reply(
                200,
                text::PROMETHEUS_CONTENT_TYPE,
                metrics.encode_prometheus(),
            ),
            "/proxyMode" => http::reply(200, "text/plain; charset=utf-8", proxy_mode.clone()),
            "/healthz" => http::reply(200, "text/plain; charset=utf-8", "ok"),
            _ => http::not_found(),
        };
        async move { reply }.boxed_local()
    });
    let server = http::spawn(listener, handler)?;
    tracing::info!(address = %server.addr, "serving /metrics and /proxyMode");
    Ok(server)
}
