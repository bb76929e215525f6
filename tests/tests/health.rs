//! The HealthCheck actor end to end: the real `kproxy` binary on the manifest source with the
//! recorder plugin, asked over real HTTP.
//!
//! - `/healthz` and `/livez` turn 503 when the plugin stalls with a change queued for longer
//!   than twice `sync_period`, and 200 again once it recovers;
//! - `/healthz` (not `/livez`) is 503 while the Node carries the autoscaler's deletion taint;
//! - a `healthCheckNodePort` answers 200 → 503 → 200 as local endpoints go and come, on the
//!   `node_port_addresses` only, and closes when the service is deleted;
//! - systemd hears `STATUS=`, then `READY=1` after the first sync, and `WATCHDOG=1`.
//!
//! Needs `cargo build --workspace` first, and root (the plugin host loads root-owned plugins).

use kproxy_tests::daemon::{Daemon, DaemonSpec, Recording};
use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

const NODE: &str = "hc-node";
/// Generous: things happen within a second or two, but CI machines stall.
const WAIT: Duration = Duration::from_secs(30);

/// A port nobody listens on right now (bound and released; good enough on a test machine).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `GET path` over a fresh connection; `Err` when nothing listens.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Polls `f` until it returns `Some`, or fails naming `what` and the last thing seen.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits until `GET addr path` answers `status`, and returns the answer.
fn wait_status(addr: SocketAddr, path: &str, status: u16) -> Answer {
    eventually(
        &format!("{path} on {addr} to answer {status}"),
        || match get(addr, path) {
            Ok(a) if a.status == status => Ok(a),
            Ok(a) => Err(format!("{} {}", a.status, a.body)),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Writes a manifest atomically (the source never sees half a file).
fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!("{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

fn web_manifest(endpoints: &[&str]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|ip| {
            format!(
                "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {NODE}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.0.80\n  clusterIPs: [10.96.0.80]\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n\
         ports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n{eps}"
    )
}

/// A LoadBalancer service with `externalTrafficPolicy: Local` and its health-check port;
/// `endpoints` are `(ip, node)`.
fn lb_manifest(hc_port: u16, endpoints: &[(&str, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, node)| {
            format!(
                "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {node}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: shop}}\n\
         spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.90\n  clusterIPs: [10.96.0.90]\n  \
         externalTrafficPolicy: Local\n  healthCheckNodePort: {hc_port}\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30555}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lb-1\n  \
         namespace: shop\n  labels: {{kubernetes.io/service-name: lb}}\naddressType: IPv4\n\
         ports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n{eps}"
    )
}

struct Setup {
    daemon: Daemon,
    recording: Recording,
    manifests: tempfile::TempDir,
    healthz: SocketAddr,
}

fn start(extra_config: &str, env: Vec<(String, String)>, manifests: &[(&str, String)]) -> Setup {
    let recording = Recording::new();
    let dir = tempfile::Builder::new()
        .prefix("kproxy-health-manifests-")
        .tempdir()
        .unwrap();
    for (name, text) in manifests {
        write_manifest(dir.path(), name, text);
    }
    let healthz = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    let config = format!(
        "hostname_override = \"{NODE}\"\nhealthz_bind_address = \"{healthz}\"\n\
         metrics_bind_address = \"\"\nip_families = [\"ipv4\"]\ndataplane = \"recorder\"\n\
         {extra_config}\n{}\n[source]\nkind = \"manifests\"\nmanifest_dir = \"{}\"\n",
        recording.config_section(),
        dir.path().display()
    );
    let daemon = Daemon::start(DaemonSpec {
        plugins: &["recorder"],
        config,
        env,
        netns: None,
    });
    Setup {
        daemon,
        recording,
        manifests: dir,
        healthz,
    }
}

#[test]
fn healthz_turns_unhealthy_while_the_plugin_stalls_and_recovers() {
    let s = start(
        "sync_period = \"1s\"\nmin_sync_period = \"100ms\"",
        vec![],
        &[("web.yaml", web_manifest(&["10.244.1.2"]))],
    );
    s.recording.wait_for("the first sync", WAIT, |r| {
        r.port("default/web", "http").is_some()
    });
    let healthy = wait_status(s.healthz, "/healthz", 200);
    assert_eq!(healthy.header("content-type"), Some("application/json"));
    assert_eq!(healthy.header("x-content-type-options"), Some("nosniff"));
    let body = healthy.json();
    assert_eq!(body["healthy"], true);
    assert_eq!(body["nodeEligible"], true);
    assert_eq!(
        body["lastUpdated"], body["currentTime"],
        "healthy: lastUpdated is now"
    );
    assert_eq!(body["status"]["IPv4"]["healthy"], true);
    assert_eq!(
        wait_status(s.healthz, "/livez", 200).json()["healthy"],
        true
    );
    assert_eq!(get(s.healthz, "/other").unwrap().status, 404);

    // The plugin stalls; a change is queued behind it and waits longer than 2 × 1 s.
    s.recording.switch("stall", true);
    write_manifest(
        s.manifests.path(),
        "web.yaml",
        &web_manifest(&["10.244.1.2", "10.244.1.3"]),
    );
    let sick = wait_status(s.healthz, "/healthz", 503);
    let body = sick.json();
    assert_eq!(body["healthy"], false);
    assert_eq!(body["status"]["IPv4"]["healthy"], false);
    assert_ne!(
        body["lastUpdated"], body["currentTime"],
        "unhealthy: lastUpdated is the last successful sync"
    );
    assert_eq!(
        wait_status(s.healthz, "/livez", 503).json()["healthy"],
        false
    );
    assert!(
        s.recording
            .latest()
            .and_then(|r| r.port("default/web", "http").map(|p| p.endpoints.len()))
            == Some(1),
        "the stalled plugin has not applied the change"
    );

    // It recovers: the change is applied and the proxy is healthy again.
    s.recording.switch("stall", false);
    s.recording.wait_for("the queued change", WAIT, |r| {
        r.port("default/web", "http")
            .is_some_and(|p| p.endpoints.len() == 2)
    });
    assert_eq!(
        wait_status(s.healthz, "/healthz", 200).json()["healthy"],
        true
    );
    assert_eq!(wait_status(s.healthz, "/livez", 200).status, 200);
    drop(s.daemon);
}

#[test]
fn healthz_reports_a_node_the_autoscaler_is_deleting() {
    let node = |tainted: bool| {
        let taints = if tainted {
            "spec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", effect: NoSchedule}\n"
        } else {
            "spec: {}\n"
        };
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\n{taints}")
    };
    let s = start(
        "",
        vec![],
        &[
            ("web.yaml", web_manifest(&["10.244.1.2"])),
            ("node.yaml", node(true)),
        ],
    );
    s.recording.wait_for("the first sync", WAIT, |r| {
        r.port("default/web", "http").is_some()
    });
    let a = wait_status(s.healthz, "/healthz", 503);
    assert_eq!(a.json()["nodeEligible"], false);
    assert_eq!(a.json()["healthy"], true, "the proxy itself is fine");
    let live = wait_status(s.healthz, "/livez", 200);
    assert!(live.json().get("nodeEligible").is_none(), "{}", live.body);

    write_manifest(s.manifests.path(), "node.yaml", &node(false));
    assert_eq!(
        wait_status(s.healthz, "/healthz", 200).json()["nodeEligible"],
        true
    );
    drop(s.daemon);
}

#[test]
fn health_check_node_port_follows_local_endpoints() {
    let hc_port = free_port();
    let s = start(
        "node_port_addresses = [\"127.0.0.0/8\"]",
        vec![],
        &[("lb.yaml", lb_manifest(hc_port, &[("10.244.1.2", NODE)]))],
    );
    let hc = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), hc_port);

    let up = wait_status(hc, "/", 200);
    assert_eq!(up.header("content-type"), Some("application/json"));
    assert_eq!(up.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(up.header("x-load-balancing-endpoint-weight"), Some("1"));
    assert_eq!(
        up.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"lb\"\n\t},\n\t\
         \"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
    // Load balancers probe any path.
    assert_eq!(get(hc, "/healthz").unwrap().status, 200);

    // Bound on node_port_addresses only: not on the node's other addresses.
    for ip in kproxy::host::local_addresses() {
        let other = SocketAddr::new(ip.to_std(), hc_port);
        assert!(
            get(other, "/").is_err(),
            "{other} answers, but only 127.0.0.0/8 is in node_port_addresses"
        );
    }

    // The endpoint moves to another node: no local endpoint, 503.
    write_manifest(
        s.manifests.path(),
        "lb.yaml",
        &lb_manifest(hc_port, &[("10.244.1.2", "other-node")]),
    );
    let down = wait_status(hc, "/", 503);
    assert_eq!(down.json()["localEndpoints"], 0);
    assert_eq!(down.json()["serviceProxyHealthy"], true);
    assert_eq!(down.header("x-load-balancing-endpoint-weight"), Some("0"));

    // Two local endpoints come (and a remote one that does not count).
    write_manifest(
        s.manifests.path(),
        "lb.yaml",
        &lb_manifest(
            hc_port,
            &[
                ("10.244.1.2", NODE),
                ("10.244.1.3", NODE),
                ("10.244.2.9", "other-node"),
            ],
        ),
    );
    let again = eventually("two local endpoints", || match get(hc, "/") {
        Ok(a) if a.status == 200 && a.json()["localEndpoints"] == 2 => Ok(a),
        Ok(a) => Err(format!("{} {}", a.status, a.body)),
        Err(e) => Err(e.to_string()),
    });
    assert_eq!(again.header("x-load-balancing-endpoint-weight"), Some("2"));

    // The service is deleted: its port closes.
    fs::remove_file(s.manifests.path().join("lb.yaml")).unwrap();
    eventually("the health-check port to close", || match get(hc, "/") {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Ok(a) => Err(format!("still answering {} {}", a.status, a.body)),
        Err(e) => Err(e.to_string()),
    });
    s.recording
        .wait_for("the service gone from the state", WAIT, |r| {
            r.state.services.is_empty()
        });
    drop(s.daemon);
}

#[test]
fn systemd_hears_status_ready_after_the_first_sync_and_watchdog() {
    let sockdir = tempfile::Builder::new()
        .prefix("kproxy-notify-")
        .tempdir()
        .unwrap();
    let path = sockdir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let s = start(
        "",
        vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            // 400 ms: kproxy must send WATCHDOG=1 every 200 ms.
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        &[("web.yaml", web_manifest(&["10.244.1.2"]))],
    );

    let mut messages: Vec<String> = Vec::new();
    let mut synced_when_ready = None;
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "READY=1") && synced_when_ready.is_none() {
                synced_when_ready = Some(s.recording.all().len());
            }
            messages.push(msg);
        }
        let watchdogs = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if synced_when_ready.is_some() && watchdogs >= 2 {
            break;
        }
    }
    let ready_at = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 among {messages:?}"));
    assert!(
        synced_when_ready.unwrap() >= 1,
        "READY=1 came before the first sync was recorded"
    );
    assert!(
        messages[..ready_at]
            .iter()
            .any(|m| m.starts_with("STATUS=starting")),
        "a starting status comes first: {messages:?}"
    );
    let ready = &messages[ready_at];
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=synced 1 service ports, 1 endpoints at ")),
        "{ready:?}"
    );
    assert_eq!(
        messages.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "READY=1 is sent once: {messages:?}"
    );
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{messages:?}"
    );
    drop(s.daemon);
}
