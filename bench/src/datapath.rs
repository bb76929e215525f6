//! Scenario 4, the data path: TCP connection set-up plus one round trip (the lab's server
//! speaks first: connect, read its answer line) from pod `pod-b` to a cluster IP whose one
//! endpoint is pod `pod-a`, with N services programmed, beside the same exchange sent straight
//! to pod-a's address (the floor: the same hops, no DNAT). The two are interleaved so both see
//! the same machine.

use crate::{
    cluster::{self, Ep, Shape},
    daemon::Daemon,
    dataplane::Dataplane,
    scale::api_server_with,
};
use anyhow::{bail, Context as _};
use kproxy_lab::{client, Lab, Outcome, Place, RequestOptions};
use kproxy_plugin_api::Protocol;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

/// The service the probes go to.
pub const PROBE_SERVICE: &str = "probe";
/// Its cluster IP (below the generated services' range).
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 200);
/// The pod that answers.
pub const SERVER_POD: &str = "pod-a";
/// The pod that asks.
pub const CLIENT_POD: &str = "pod-b";

/// What one size measured.
#[derive(Debug, Clone)]
pub struct DatapathResult {
    /// Services programmed (the probe service included).
    pub services: usize,
    /// Through the cluster IP.
    pub via_service: Vec<Duration>,
    /// Straight to the pod.
    pub direct: Vec<Duration>,
}

/// Measures with `services` services present, `samples` exchanges each way.
pub fn run(
    lab: &Lab,
    dp: &dyn Dataplane,
    services: usize,
    samples: usize,
    scratch: &Path,
) -> anyhow::Result<DatapathResult> {
    let pod = lab
        .plan()
        .pod(SERVER_POD)
        .context("the lab has no server pod")?;
    let pod_ip = pod.ip.v4;
    let shape = Shape {
        services: services.saturating_sub(1),
        endpoints: 1,
    };
    let probe = [
        cluster::service(PROBE_SERVICE, PROBE_IP),
        cluster::slice(
            PROBE_SERVICE,
            &[Ep {
                ip: pod_ip,
                ready: true,
                node: kproxy_lab::plan::NODE_NAME.into(),
            }],
        ),
    ];
    let api = api_server_with(lab, probe.into_iter().chain(cluster::objects(shape)))?;
    let kubeconfig = scratch.join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;
    dp.clear(lab)?;
    let mut daemon = Daemon::start(lab, dp.name(), &dp.plugin_section(), &kubeconfig)?;
    daemon.wait_full_sync(1, crate::scale::SYNC_TIMEOUT)?;

    let via = SocketAddr::from((PROBE_IP, cluster::SERVICE_PORT));
    let direct = SocketAddr::from((pod_ip, cluster::TARGET_PORT));
    let result = lab.run_in(&Place::Pod(CLIENT_POD.into()), move || {
        let opts = RequestOptions {
            src: None,
            src_port: None,
            timeout: Duration::from_secs(2),
        };
        let one = |dst: SocketAddr| -> anyhow::Result<Duration> {
            let t = Instant::now();
            let outcome = client::request(dst, Protocol::Tcp, &opts);
            let took = t.elapsed();
            match outcome {
                Outcome::Answered { pod, .. } if pod == SERVER_POD => Ok(took),
                other => bail!("a probe to {dst} got: {other}"),
            }
        };
        // Warm up caches (neighbours, routes, the daemon settling).
        for _ in 0..50 {
            one(via)?;
            one(direct)?;
        }
        let mut via_service = Vec::with_capacity(samples);
        let mut straight = Vec::with_capacity(samples);
        for k in 0..samples {
            // Alternate which goes first, so neither always follows the other.
            if k % 2 == 0 {
                via_service.push(one(via)?);
                straight.push(one(direct)?);
            } else {
                straight.push(one(direct)?);
                via_service.push(one(via)?);
            }
        }
        Ok::<_, anyhow::Error>((via_service, straight))
    })??;
    daemon.stop();
    drop(daemon);
    dp.clear(lab)?;
    Ok(DatapathResult {
        services,
        via_service: result.0,
        direct: result.1,
    })
}
