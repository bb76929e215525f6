//! The HealthCheck actor: what operators, load balancers and systemd ask a service proxy.
//!
//! - `/healthz` and `/livez` on the healthz address, with upstream's semantics and JSON
//!   ([`state`]);
//! - one server per service with a `healthCheckNodePort`, answering whether this node has a
//!   ready local endpoint ([`services`]), opened, updated and closed after every successful
//!   sync from the [`crate::actors::sync::summary::StateSummary`] the sync thread computed;
//! - `sd_notify` readiness, watchdog and status ([`notify`]).
//!
//! The actor is a thin shell: it feeds Sync's and Topology's messages into the plain state
//! structs, runs the HTTP servers (on the actor system's thread), and answers their requests
//! by message. Time comes from a [`Clock`], so tests can drive it.

pub mod notify;
pub mod services;
pub mod state;

use crate::{
    actors::sync::{ChangeQueued, SyncFinished},
    metrics::{
        http::{self, HttpHandler, ServerHandle},
        Metrics,
    },
    model::NamespacedName,
};
use actix::prelude::*;
use futures::FutureExt;
use kproxy_plugin_api::{Cidr, IpFamily};
use state::{HealthAnswer, Probe, ProxyHealth};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::net::TcpListener;

/// Where the actor reads the time; injectable so tests control it.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for deciding health.
    fn now(&self) -> Instant;
    /// Wall-clock time, for the JSON bodies.
    fn wall(&self) -> SystemTime;
}

/// The real clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Whether this node may receive load-balancer traffic: not being deleted and without the
/// cluster autoscaler's deletion taint. Sent by Topology when it changes.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct NodeEligibility {
    /// See the type docs.
    pub eligible: bool,
}

/// Asks for the `/healthz` or `/livez` answer.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "HealthAnswer")]
pub struct AskHealth(pub Probe);

/// Asks for a health-check node port's answer; `None` once the service's port has closed.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Option<services::ServiceAnswer>")]
pub struct AskService(pub NamespacedName);

/// How to build a [`HealthCheckActor`].
pub struct HealthConfig {
    /// How long a queued change may wait for a successful sync (upstream: 2 × `syncPeriod`).
    pub timeout: Duration,
    /// The IP families served (one `status` entry each in the JSON).
    pub families: Vec<IpFamily>,
    /// The bound healthz listener, or `None` not to serve `/healthz` and `/livez`.
    pub healthz: Option<TcpListener>,
    /// `nodePortAddresses`: health-check ports bind on the node's addresses inside these
    /// prefixes; empty = every address.
    pub node_port_addresses: Vec<Cidr>,
}

/// See the module docs.
pub struct HealthCheckActor {
    state: ProxyHealth,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    healthz_listener: Option<TcpListener>,
    healthz_server: Option<ServerHandle>,
    node_port_addresses: Vec<Cidr>,
    /// Open health-check ports: service → (port, one server per bound address).
    hc_servers: BTreeMap<NamespacedName, (u16, Vec<ServerHandle>)>,
    /// Local ready endpoints per service, as of the last successful sync.
    hc_counts: BTreeMap<NamespacedName, usize>,
    readiness: notify::Readiness,
}

impl HealthCheckActor {
    /// An actor with the given settings and clock; `metrics` counts `/healthz` and `/livez`
    /// answers.
    pub fn new(config: HealthConfig, clock: Arc<dyn Clock>, metrics: Option<Arc<Metrics>>) -> Self {
        HealthCheckActor {
            state: ProxyHealth::new(config.timeout, &config.families),
            clock,
            metrics,
            healthz_listener: config.healthz,
            healthz_server: None,
            node_port_addresses: config.node_port_addresses,
            hc_servers: BTreeMap::new(),
            hc_counts: BTreeMap::new(),
            readiness: notify::Readiness::default(),
        }
    }

    fn start_healthz(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.healthz_listener.take() else {
            return;
        };
        let addr = ctx.address();
        let handler: HttpHandler = Rc::new(move |req| {
            let probe = match req.uri().path() {
                "/healthz" => Some(Probe::Healthz),
                "/livez" => Some(Probe::Livez),
                _ => None,
            };
            let addr = addr.clone();
            async move {
                let Some(probe) = probe else {
                    return http::not_found();
                };
                match addr.send(AskHealth(probe)).await {
                    Ok(a) => http::nosniff(http::reply(a.status, "application/json", a.body)),
                    Err(_) => http::reply(503, "text/plain; charset=utf-8", "stopping\n"),
                }
            }
            .boxed_local()
        });
        match http::spawn(listener, handler) {
            Ok(server) => {
                tracing::info!(address = %server.addr, "serving /healthz and /livez");
                self.healthz_server = Some(server);
            }
            Err(e) => tracing::error!(error = %e, "cannot serve /healthz"),
        }
    }

    /// Opens, moves and closes health-check ports to match `wanted`, and records the counts.
    fn sync_services(
        &mut self,
        wanted: &[crate::actors::sync::summary::HealthCheckService],
        ctx: &mut Context<Self>,
    ) {
        self.hc_counts = wanted
            .iter()
            .map(|s| (s.service.clone(), s.local_endpoints))
            .collect();
        let open_now: BTreeMap<NamespacedName, u16> = self
            .hc_servers
            .iter()
            .map(|(svc, (port, _))| (svc.clone(), *port))
            .collect();
        let plan = services::plan(&open_now, wanted);
        for svc in plan.close {
            if let Some((port, servers)) = self.hc_servers.remove(&svc) {
                tracing::info!(service = %svc, port, "closing health check");
                servers.into_iter().for_each(ServerHandle::close);
            }
        }
        if plan.open.is_empty() {
            return;
        }
        let addresses = services::bind_addresses(
            &self.node_port_addresses,
            &crate::host::interface_addresses(),
        );
        for (svc, port) in plan.open {
            match self.open_service(&svc, port, &addresses, ctx) {
                Ok(servers) => {
                    tracing::info!(
                        service = %svc,
                        port,
                        addresses = ?servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
                        "opened health check"
                    );
                    self.hc_servers.insert(svc, (port, servers));
                }
                // Tried again after the next successful sync, as upstream.
                Err(e) => {
                    tracing::error!(service = %svc, port, error = %e, "cannot open health check")
                }
            }
        }
    }

    fn open_service(
        &self,
        svc: &NamespacedName,
        port: u16,
        addresses: &[IpAddr],
        ctx: &mut Context<Self>,
    ) -> std::io::Result<Vec<ServerHandle>> {
        if addresses.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no node address matches node_port_addresses",
            ));
        }
        let mut servers = Vec::new();
        for ip in addresses {
            let bound = http::bind(SocketAddr::new(*ip, port)).or_else(|e| {
                // `[::]` without IPv6 on the node: all IPv4 addresses instead.
                if ip.is_unspecified() && ip.is_ipv6() {
                    http::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
                } else {
                    Err(e)
                }
            });
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    servers.into_iter().for_each(ServerHandle::close);
                    return Err(e);
                }
            };
            let addr = ctx.address();
            let name = svc.clone();
            let handler: HttpHandler = Rc::new(move |_req| {
                let addr = addr.clone();
                let name = name.clone();
                async move {
                    match addr.send(AskService(name)).await {
                        Ok(Some(a)) => {
                            let mut r =
                                http::nosniff(http::reply(a.status, "application/json", a.body));
                            r.headers_mut().insert(
                                "x-load-balancing-endpoint-weight",
                                hyper::header::HeaderValue::from(a.weight),
                            );
                            r
                        }
                        _ => http::reply(503, "text/plain; charset=utf-8", "closed\n"),
                    }
                }
                .boxed_local()
            });
            servers.push(http::spawn(listener, handler)?);
        }
        Ok(servers)
    }
}

impl Actor for HealthCheckActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_healthz(ctx);
        notify::status("starting: waiting for the first sync");
        if let Some(every) = notify::watchdog_interval() {
            tracing::info!(
                every_ms = every.as_millis() as u64,
                "sending systemd watchdog keep-alives"
            );
            ctx.run_interval(every, |act, _| {
                if act.state.is_healthy(act.clock.now()) {
                    notify::watchdog();
                }
            });
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(s) = self.healthz_server.take() {
            s.close();
        }
        for (_, (_, servers)) in std::mem::take(&mut self.hc_servers) {
            servers.into_iter().for_each(ServerHandle::close);
        }
    }
}

impl Handler<SyncFinished> for HealthCheckActor {
    type Result = ();
    fn handle(&mut self, msg: SyncFinished, ctx: &mut Context<Self>) {
        let o = &msg.outcome;
        let ok = o.result.is_ok();
        self.state
            .sync_finished(ok, msg.pending_since, self.clock.now(), self.clock.wall());
        if let Some(summary) = &o.summary {
            self.sync_services(&summary.health_checks, ctx);
        }
        let failure = o
            .result
            .as_ref()
            .err()
            .map(|e| (msg.failures, e.code.as_str()));
        let notice = self.readiness.sync_finished(
            ok,
            o.full,
            o.services,
            o.endpoints,
            o.finished_at,
            failure,
        );
        notify::send(&notice);
    }
}

impl Handler<ChangeQueued> for HealthCheckActor {
    type Result = ();
    fn handle(&mut self, msg: ChangeQueued, _: &mut Context<Self>) {
        self.state.queued(msg.pending_since);
    }
}

impl Handler<NodeEligibility> for HealthCheckActor {
    type Result = ();
    fn handle(&mut self, msg: NodeEligibility, _: &mut Context<Self>) {
        if msg.eligible != self.state.node_eligible() {
            tracing::info!(
                eligible = msg.eligible,
                "node eligibility for load-balancer traffic changed"
            );
        }
        self.state.set_node_eligible(msg.eligible);
    }
}

impl Handler<AskHealth> for HealthCheckActor {
    type Result = MessageResult<AskHealth>;
    fn handle(&mut self, msg: AskHealth, _: &mut Context<Self>) -> Self::Result {
        let answer = self
            .state
            .answer(msg.0, self.clock.now(), self.clock.wall());
        if let Some(m) = &self.metrics {
            match msg.0 {
                Probe::Healthz => m.healthz_answered(answer.status),
                Probe::Livez => m.livez_answered(answer.status),
            }
        }
        MessageResult(answer)
    }
}

impl Handler<AskService> for HealthCheckActor {
    type Result = MessageResult<AskService>;
    fn handle(&mut self, msg: AskService, _: &mut Context<Self>) -> Self::Result {
        if !self.hc_servers.contains_key(&msg.0) {
            return MessageResult(None);
        }
        let count = self.hc_counts.get(&msg.0).copied().unwrap_or(0);
        let healthy = self.state.is_healthy(self.clock.now());
        MessageResult(Some(services::answer(&msg.0, count, healthy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A clock that moves only when told to.
    struct ManualClock {
        base: Instant,
        wall: SystemTime,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.offset.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.base + *self.offset.lock().unwrap()
        }
        fn wall(&self) -> SystemTime {
            self.wall + *self.offset.lock().unwrap()
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[test]
    fn healthz_over_http_follows_the_injected_clock_and_listener() {
        actix::System::new().block_on(async {
            let clock = Arc::new(ManualClock {
                base: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                offset: Mutex::new(Duration::ZERO),
            });
            // The caller binds (port 0 here) and hands the listener over.
            let listener = http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            let metrics = Arc::new(Metrics::new(&[IpFamily::V4], "test"));
            let actor = HealthCheckActor::new(
                HealthConfig {
                    timeout: Duration::from_secs(60),
                    families: vec![IpFamily::V4],
                    healthz: Some(listener),
                    node_port_addresses: vec![],
                },
                clock.clone(),
                Some(metrics.clone()),
            )
            .start();

            let (status, body) = get(addr, "/healthz").await;
            assert_eq!(status, 200, "healthy while starting");
            assert_eq!(body["currentTime"], "2023-11-14T22:13:20Z");

            actor
                .send(ChangeQueued {
                    pending_since: clock.now(),
                })
                .await
                .unwrap();
            clock.advance(Duration::from_secs(59));
            assert_eq!(get(addr, "/healthz").await.0, 200);
            clock.advance(Duration::from_secs(1));
            let (status, body) = get(addr, "/livez").await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["currentTime"], "2023-11-14T22:14:20Z");
            assert_eq!(get(addr, "/healthz").await.0, 503);
            assert_eq!(get(addr, "/nope").await.0, 404);

            let text = metrics.encode_prometheus();
            assert!(
                text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1\n"),
                "{text}"
            );
            assert!(
                text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 2\n"),
                "{text}"
            );
            assert!(
                text.contains("kubeproxy_proxy_livez_total{code=\"503\"} 1\n"),
                "{text}"
            );
        });
    }
}
