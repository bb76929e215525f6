//! The control plane end to end: the real `kproxy` daemon watches the test API server through
//! kube-rs, resolves what it sees, and hands it to the recorder fixture plugin, whose recorded
//! `ProxyState` each test checks — across creates, updates, deletes, scaling, a cut watch, an
//! expired resourceVersion, the API server going away for a while, and invalid objects.
//!
//! Needs `cargo build --workspace` first and root (the plugin host loads only root-owned
//! plugins). No network namespaces: the recorder touches no kernel state.

use kproxy_tests::{
    apiserver::{Kind, Options, TestApiServer},
    daemon::{Daemon, DaemonSpec, RecordedSync, Recording},
};
use serde_json::{json, Value};
use std::time::Duration;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    api: TestApiServer,
    rec: Recording,
    daemon: Daemon,
}

fn start() -> Setup {
    start_with(Options {
        bookmark_interval: None,
        ..Default::default()
    })
}

fn start_with(options: Options) -> Setup {
    let api = TestApiServer::start_with(options).expect("test API server");
    let rec = Recording::new();
    let kubeconfig = rec.path().with_extension("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let config = format!(
        r#"hostname_override = "{NODE}"
healthz_bind_address = ""
metrics_bind_address = ""
min_sync_period = "50ms"
sync_period = "30s"
dataplane = "recorder"
[source]
kind = "kubernetes"
kubeconfig = "{}"
{}"#,
        kubeconfig.display(),
        rec.config_section()
    );
    let daemon = Daemon::start(DaemonSpec {
        plugins: &["recorder"],
        config,
        env: vec![],
        netns: None,
    });
    Setup { api, rec, daemon }
}

fn service(name: &str, cluster_ip: &str, ports: &[(&str, u32, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto, "targetPort": 8080})).collect::<Vec<_>>(),
        }
    })
}

fn slice(name: &str, service: &str, addrs: &[&str]) -> Value {
    slice_with_port(name, service, addrs, "http", 8080)
}

fn slice_with_port(name: &str, service: &str, addrs: &[&str], port_name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true}, "nodeName": NODE
        })).collect::<Vec<_>>(),
    })
}

fn endpoint_ips(sync: &RecordedSync, svc: &str, port: &str) -> Vec<String> {
    sync.port(svc, port)
        .map(|p| p.endpoints.iter().map(|e| e.ip.to_string()).collect())
        .unwrap_or_default()
}

fn has_endpoints(
    svc: &'static str,
    want: &'static [&'static str],
) -> impl Fn(&RecordedSync) -> bool {
    move |s| endpoint_ips(s, svc, "http") == want
}

#[test]
fn services_and_slices_flow_to_the_plugin_through_create_update_scale_and_delete() {
    let s = start();
    s.api
        .apply(&service("web", "10.96.0.10", &[("http", 80, "TCP")]))
        .unwrap();
    s.api
        .apply(&slice("web-1", "web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    let first = s.rec.wait_for(
        "web with 2 endpoints",
        WAIT,
        has_endpoints("default/web", &["10.244.1.2", "10.244.1.3"]),
    );
    let port = first.port("default/web", "http").unwrap();
    assert_eq!(port.port, 80);
    assert_eq!(
        port.cluster_ips
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        ["10.96.0.10"]
    );
    assert!(port
        .endpoints
        .iter()
        .all(|e| e.port == 8080 && e.is_local && e.for_cluster));

    // Scale up, then down, then to zero.
    s.api
        .apply(&slice(
            "web-1",
            "web",
            &["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"],
        ))
        .unwrap();
    s.rec.wait_for(
        "scale to 4",
        WAIT,
        has_endpoints(
            "default/web",
            &["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"],
        ),
    );
    s.api
        .apply(&slice("web-1", "web", &["10.244.1.4"]))
        .unwrap();
    let one = s.rec.wait_for(
        "scale to 1",
        WAIT,
        has_endpoints("default/web", &["10.244.1.4"]),
    );
    assert!(!one.full, "an endpoint change is applied as a partial sync");
    assert_eq!(one.changed, ["default/web:http/tcp"]);

    // A second slice adds endpoints; deleting the first removes its endpoints only.
    s.api
        .apply(&slice("web-2", "web", &["10.244.2.9"]))
        .unwrap();
    s.rec.wait_for(
        "two slices merged",
        WAIT,
        has_endpoints("default/web", &["10.244.1.4", "10.244.2.9"]),
    );
    s.api
        .delete(Kind::EndpointSlice, "default", "web-1")
        .unwrap();
    s.rec.wait_for(
        "first slice deleted",
        WAIT,
        has_endpoints("default/web", &["10.244.2.9"]),
    );

    // A port change on the service is seen; then the service is deleted and its port goes.
    s.api
        .apply(&service("web", "10.96.0.10", &[("http", 8000, "TCP")]))
        .unwrap();
    s.rec.wait_for("port changed", WAIT, |r| {
        r.port("default/web", "http")
            .is_some_and(|p| p.port == 8000)
    });
    s.api.delete(Kind::Service, "default", "web").unwrap();
    let gone = s.rec.wait_for("service deleted", WAIT, |r| {
        r.port("default/web", "http").is_none()
    });
    assert!(gone.changed.contains(&"default/web:http/tcp".to_string()));
}

#[test]
fn a_cut_watch_resumes_and_an_expired_resource_version_relists() {
    let s = start();
    s.api
        .apply(&service("a", "10.96.0.11", &[("http", 80, "TCP")]))
        .unwrap();
    s.api.apply(&slice("a-1", "a", &["10.244.1.2"])).unwrap();
    s.rec
        .wait_for("a", WAIT, has_endpoints("default/a", &["10.244.1.2"]));
    assert!(s.api.wait_for_watches(Kind::EndpointSlice, 1, WAIT));

    // Cut every watch mid-stream: the daemon resumes and sees later changes.
    s.api.drop_watches();
    s.api.apply(&slice("a-1", "a", &["10.244.1.3"])).unwrap();
    s.rec.wait_for(
        "change after a cut watch",
        WAIT,
        has_endpoints("default/a", &["10.244.1.3"]),
    );

    // Changes the daemon cannot watch, then the history expires: when it reconnects, its
    // resourceVersion is gone (410), so it must relist — and converge, including on a deletion
    // it never saw as an event.
    s.api
        .apply(&service("b", "10.96.0.12", &[("http", 80, "TCP")]))
        .unwrap();
    s.rec
        .wait_for("b", WAIT, |r| r.port("default/b", "http").is_some());
    let lists_before = s
        .api
        .request_count(kproxy_tests::apiserver::Verb::List, Kind::EndpointSlice);
    s.api.pause();
    s.api.delete(Kind::Service, "default", "b").unwrap();
    s.api
        .apply(&slice("a-1", "a", &["10.244.1.4", "10.244.1.5"]))
        .unwrap();
    s.api.compact();
    s.api.resume().unwrap();
    let after = s.rec.wait_for("converged after relist", WAIT, |r| {
        endpoint_ips(r, "default/a", "http") == ["10.244.1.4", "10.244.1.5"]
            && r.port("default/b", "http").is_none()
    });
    assert_eq!(after.service_names(), ["default/a"]);
    let lists_after = s
        .api
        .request_count(kproxy_tests::apiserver::Verb::List, Kind::EndpointSlice);
    assert!(
        lists_after > lists_before,
        "the expired resourceVersion must cause a relist"
    );
}

#[test]
fn while_the_api_server_is_away_the_last_state_stays_and_it_converges_after() {
    let mut s = start();
    s.api
        .apply(&service("a", "10.96.0.11", &[("http", 80, "TCP")]))
        .unwrap();
    s.api.apply(&slice("a-1", "a", &["10.244.1.2"])).unwrap();
    let before = s
        .rec
        .wait_for("a", WAIT, has_endpoints("default/a", &["10.244.1.2"]));

    s.api.pause();
    // Changes made while the server is away (as if by another API server replica).
    s.api.apply(&slice("a-1", "a", &["10.244.1.7"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.daemon.is_running(),
        "the daemon must survive the API server going away"
    );
    let during = s.rec.latest().unwrap();
    assert_eq!(
        endpoint_ips(&during, "default/a", "http"),
        ["10.244.1.2"],
        "the last known state stays"
    );
    assert!(during.seq >= before.seq);

    s.api.resume().unwrap();
    s.rec.wait_for(
        "converged after the API server came back",
        Duration::from_secs(60),
        has_endpoints("default/a", &["10.244.1.7"]),
    );
}

#[test]
fn invalid_objects_are_skipped_and_everything_else_keeps_working() {
    let mut s = start();
    s.api
        .apply(&service("good", "10.96.0.20", &[("http", 80, "TCP")]))
        .unwrap();
    s.api
        .apply(&slice("good-1", "good", &["10.244.1.2"]))
        .unwrap();

    let mut bad_ip = service("bad-ip", "10.96.0.21", &[("http", 80, "TCP")]);
    bad_ip["spec"]["clusterIP"] = json!("banana");
    bad_ip["spec"]["clusterIPs"] = json!(["banana"]);
    let port_zero = service("port-zero", "10.96.0.22", &[("http", 0, "TCP")]);
    let port_big = service("port-big", "10.96.0.23", &[("http", 70000, "TCP")]);
    let bad_proto = service("bad-proto", "10.96.0.24", &[("http", 80, "ICMP")]);
    let dup_ports = service(
        "dup-ports",
        "10.96.0.25",
        &[("a", 80, "TCP"), ("b", 80, "TCP")],
    );
    let mut huge = service("huge", "10.96.0.26", &[("http", 80, "TCP")]);
    huge["metadata"]["annotations"] = json!({"big": "x".repeat(1 << 20)});
    for bad in [
        &bad_ip, &port_zero, &port_big, &bad_proto, &dup_ports, &huge,
    ] {
        s.api.apply(bad).unwrap();
    }
    let bad_addr = slice("good-2", "good", &["10.244.1.999"]);
    let mut bad_type = slice("good-3", "good", &["10.244.1.3"]);
    bad_type["addressType"] = json!("Carrier-Pigeon");
    let mut no_label = slice("orphan", "good", &["10.244.1.4"]);
    no_label["metadata"]["labels"] = json!({});
    for bad in [&bad_addr, &bad_type, &no_label] {
        s.api.apply(bad).unwrap();
    }
    // A valid change after the bad ones still arrives.
    s.api
        .apply(&service("after", "10.96.0.30", &[("http", 80, "TCP")]))
        .unwrap();
    let r = s.rec.wait_for("the valid services", WAIT, |r| {
        r.port("default/after", "http").is_some()
    });
    let mut names = r.service_names();
    names.dedup();
    assert_eq!(
        names,
        ["default/after", "default/good"],
        "only valid services are programmed"
    );
    assert_eq!(
        endpoint_ips(&r, "default/good", "http"),
        ["10.244.1.2"],
        "invalid slices add nothing"
    );
    assert!(s.daemon.is_running());
    let log = s.daemon.log();
    for name in [
        "bad-ip",
        "port-zero",
        "port-big",
        "bad-proto",
        "dup-ports",
        "huge",
        "good-2",
        "good-3",
        "orphan",
    ] {
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(name)),
            "expected a warning naming {name}; log:\n{log}"
        );
    }
}

#[test]
fn labelled_headless_and_external_name_services_are_ignored() {
    let s = start();
    let mut other_proxy = service("other-proxy", "10.96.0.40", &[("http", 80, "TCP")]);
    other_proxy["metadata"]["labels"] =
        json!({"service.kubernetes.io/service-proxy-name": "someone-else"});
    let mut headless = service("headless", "None", &[("http", 80, "TCP")]);
    headless["spec"]["clusterIPs"] = json!(["None"]);
    let external_name = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.invalid", "ports": [{"name": "http", "port": 80}]}
    });
    for svc in [&other_proxy, &headless, &external_name] {
        s.api.apply(svc).unwrap();
    }
    s.api
        .apply(&slice("other-proxy-1", "other-proxy", &["10.244.1.2"]))
        .unwrap();
    s.api
        .apply(&service("mine", "10.96.0.41", &[("http", 80, "TCP")]))
        .unwrap();
    let r = s
        .rec
        .wait_for("mine", WAIT, |r| r.port("default/mine", "http").is_some());
    assert_eq!(r.service_names(), ["default/mine"]);
}
