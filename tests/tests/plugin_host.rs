//! The plugin host against real plugins: each test `dlopen`s fixture cdylibs built by
//! `cargo build --workspace` (see `tests/fixtures/`), copied into a root-owned temp folder.
//!
//! Run with `cargo build --workspace && cargo test -p kproxy-tests --test plugin_host`.

use kproxy::plugin_host::{LoadError, PluginHost};
use kproxy_plugin_api::{
    abi_stable::std_types::{RString, RVec},
    ChangeSet, Endpoint, ErrorCode, HostContext, IpMode, LoadBalancerIngress, NodeFacts, Protocol,
    ProxySettings, ProxyState, ServicePort, ServicePortKey, SessionAffinity, TrafficPolicy,
    INTERFACE_VERSION,
};
use kproxy_tests::artifacts::PluginDir;
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

fn endpoint(ip: &str, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse::<std::net::IpAddr>().unwrap().into(),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: if local { "node-a" } else { "node-b" }.into(),
        zone: "zone-1".into(),
        is_local: local,
        for_cluster: true,
        for_local: local,
    }
}

/// A state with two service ports, both families, and fields that are not all defaults, so a
/// lossy round trip would show.
fn sample_state(generation: u64) -> ProxyState {
    let web = ServicePort {
        key: ServicePortKey::new("default", "web", "http", Protocol::Tcp),
        cluster_ips: vec![
            "10.96.0.10".parse::<std::net::IpAddr>().unwrap().into(),
            "fd00:10:96::10".parse::<std::net::IpAddr>().unwrap().into(),
        ]
        .into(),
        port: 80,
        node_port: 30080,
        external_ips: RVec::new(),
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: "192.0.2.7".parse::<std::net::IpAddr>().unwrap().into(),
            ip_mode: IpMode::Proxy,
        }]
        .into(),
        load_balancer_source_ranges: vec!["198.51.100.0/24".parse().unwrap()].into(),
        session_affinity: SessionAffinity {
            client_ip: true,
            timeout_seconds: 600,
        },
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Local,
        health_check_node_port: 31000,
        ipvs_scheduler: RString::from("rr"),
        endpoints: vec![endpoint("10.244.1.5", true), endpoint("10.244.2.9", false)].into(),
    };
    let dns = ServicePort {
        key: ServicePortKey::new("kube-system", "dns", "", Protocol::Udp),
        cluster_ips: vec!["10.96.0.53".parse::<std::net::IpAddr>().unwrap().into()].into(),
        port: 53,
        node_port: 0,
        external_ips: RVec::new(),
        load_balancer_ingress: RVec::new(),
        load_balancer_source_ranges: RVec::new(),
        session_affinity: SessionAffinity::default(),
        internal_traffic_policy: TrafficPolicy::Local,
        external_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: 0,
        ipvs_scheduler: RString::new(),
        endpoints: vec![endpoint("10.244.1.6", true)].into(),
    };
    ProxyState {
        generation,
        node: node(),
        services: vec![web, dns].into(),
    }
}

fn node() -> NodeFacts {
    NodeFacts {
        name: "node-a".into(),
        zone: "zone-1".into(),
        addresses: vec!["192.168.5.10".parse::<std::net::IpAddr>().unwrap().into()].into(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()].into(),
    }
}

fn context(records: &Path) -> HostContext {
    HostContext {
        plugin_config: format!("dir = {:?}\n", records.display().to_string()).into(),
        settings: ProxySettings {
            ipv4: true,
            ipv6: true,
            masquerade_bit: 14,
            ..ProxySettings::default()
        },
        node: node(),
    }
}

fn changes(full: bool, keys: &[ServicePortKey]) -> ChangeSet {
    ChangeSet {
        full,
        changed: keys.to_vec().into(),
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether the process has `path` mapped, i.e. whether it was ever `dlopen`ed.
fn is_mapped(path: &Path) -> bool {
    fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.ends_with(&*path.display().to_string()))
}

fn assert_one_short_line(msg: &str) {
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(msg.len() < 600, "{} bytes is not short: {msg}", msg.len());
}

#[test]
fn recorder_loads_and_receives_the_state() {
    let plugins = PluginDir::with(&["recorder"]);
    let records = tempfile::tempdir().unwrap();
    let plugin = PluginHost::new(plugins.path()).load("recorder").unwrap();
    assert_eq!(plugin.path, plugins.plugin_path("recorder"));
    assert_eq!(plugin.info.name.as_str(), "recorder");
    assert_eq!(plugin.info.interface, INTERFACE_VERSION);

    let ctx = context(records.path());
    plugin.validate_config(&ctx.plugin_config).unwrap();
    let bad = plugin
        .validate_config("dir = \"/x\"\ncolour = \"blue\"\n")
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::Config);
    assert!(bad.message.contains("colour"), "{bad}");
    let missing = plugin.validate_config("").unwrap_err();
    assert!(missing.message.contains("dir"), "{missing}");

    let mut dataplane = plugin.build(&ctx).unwrap();
    assert_eq!(dataplane.name(), "recorder");
    let context_json = read_json(&records.path().join("context.json"));
    assert_eq!(context_json["plugin_config"], ctx.plugin_config.as_str());
    assert_eq!(context_json["node"]["name"], "node-a");

    let state = sample_state(7);
    let keys = [state.services[0].key.clone()];
    let report = dataplane.sync(&state, &changes(true, &keys)).unwrap();
    assert_eq!((report.services, report.endpoints), (2, 3));

    let first = read_json(&records.path().join("sync-1.json"));
    assert_eq!(first, read_json(&records.path().join("latest.json")));
    assert_eq!(first["seq"], 1);
    assert_eq!(first["generation"], 7);
    assert_eq!(first["full"], true);
    assert_eq!(
        first["changed"],
        serde_json::json!(["default/web:http/tcp"])
    );
    let recorded: ProxyState = serde_json::from_value(first["state"].clone()).unwrap();
    assert_eq!(recorded, state);

    // A second, partial sync with a changed state is recorded as the next one.
    let mut next = sample_state(8);
    next.services.remove(1);
    let gone = [sample_state(8).services[1].key.clone()];
    dataplane.sync(&next, &changes(false, &gone)).unwrap();
    let second = read_json(&records.path().join("latest.json"));
    assert_eq!(second["seq"], 2);
    assert_eq!(second["full"], false);
    assert_eq!(
        second["changed"],
        serde_json::json!(["kube-system/dns:/udp"])
    );
    let recorded: ProxyState = serde_json::from_value(second["state"].clone()).unwrap();
    assert_eq!(recorded, next);

    // The fail switch: a kernel error carrying the file's text, and nothing recorded.
    fs::write(records.path().join("fail"), "nft: table too large\n").unwrap();
    let err = dataplane.sync(&state, &changes(true, &[])).unwrap_err();
    assert_eq!(err.code, ErrorCode::Kernel);
    assert_eq!(err.message.as_str(), "nft: table too large");
    assert!(!records.path().join("sync-3.json").exists());
    fs::remove_file(records.path().join("fail")).unwrap();
    dataplane.sync(&state, &changes(true, &[])).unwrap();
    assert_eq!(read_json(&records.path().join("latest.json"))["seq"], 3);

    let stats: BTreeMap<String, u64> = dataplane
        .stats()
        .counters
        .iter()
        .map(|t| (t.0.to_string(), t.1))
        .collect();
    assert_eq!(stats["syncs_recorded"], 3);
    assert_eq!(stats["syncs_failed"], 1);

    dataplane.cleanup().unwrap();
    assert!(records.path().join("cleaned").exists());
}

#[test]
fn a_panic_in_sync_is_an_error_and_the_host_lives_on() {
    let plugins = PluginDir::with(&["recorder"]);
    let records = tempfile::tempdir().unwrap();
    let plugin = PluginHost::new(plugins.path()).load("recorder").unwrap();
    let ctx = context(records.path());
    let state = sample_state(1);
    let mut dataplane = plugin.build(&ctx).unwrap();
    dataplane.sync(&state, &changes(true, &[])).unwrap();

    fs::write(records.path().join("panic"), "").unwrap();
    let err = dataplane.sync(&state, &changes(true, &[])).unwrap_err();
    assert_eq!(err.code, ErrorCode::Panic);
    assert!(err.message.contains("panic switch"), "{err}");

    // The panicked dataplane stays unusable, even once the switch is gone, and says so.
    fs::remove_file(records.path().join("panic")).unwrap();
    let again = dataplane.sync(&state, &changes(true, &[])).unwrap_err();
    assert_eq!(again.code, ErrorCode::Panic);
    assert!(again.message.contains("rebuilt"), "{again}");
    assert!(!records.path().join("sync-2.json").exists());

    // A rebuilt one works, in the same process.
    let mut rebuilt = plugin.build(&ctx).unwrap();
    rebuilt.sync(&state, &changes(true, &[])).unwrap();
    assert_eq!(read_json(&records.path().join("latest.json"))["seq"], 2);
}

#[test]
fn the_stall_switch_blocks_sync_until_it_is_removed() {
    let plugins = PluginDir::with(&["recorder"]);
    let records = tempfile::tempdir().unwrap();
    let plugin = PluginHost::new(plugins.path()).load("recorder").unwrap();
    let mut dataplane = plugin.build(&context(records.path())).unwrap();
    let stall = records.path().join("stall");
    fs::write(&stall, "").unwrap();
    // The dataplane moves to another thread, as it does in the daemon's sync thread.
    let syncing = std::thread::spawn(move || {
        let result = dataplane.sync(&sample_state(5), &changes(true, &[]));
        (dataplane, result)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !syncing.is_finished(),
        "sync returned while the stall file exists"
    );
    assert!(!records.path().join("latest.json").exists());
    fs::remove_file(&stall).unwrap();
    let (_dataplane, result) = syncing.join().unwrap();
    result.unwrap();
    assert_eq!(
        read_json(&records.path().join("latest.json"))["generation"],
        5
    );
}

#[test]
fn a_plugin_built_against_a_changed_interface_is_refused_in_one_line() {
    let plugins = PluginDir::with(&["changed"]);
    let err = PluginHost::new(plugins.path()).load("changed").unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, LoadError::Incompatible { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "cannot load {}: built against an incompatible kproxy plugin interface (",
            plugins.plugin_path("changed").display()
        )),
        "{msg}"
    );
    // The fixture adds a field to `Endpoint`; the reason points there, not at abi_stable's
    // 60 KB report.
    assert!(msg.contains("in type Endpoint:"), "{msg}");
    assert_one_short_line(&msg);
}

#[test]
fn a_plugin_for_another_interface_version_is_refused_naming_both() {
    let plugins = PluginDir::with(&["future"]);
    let err = PluginHost::new(plugins.path()).load("future").unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, LoadError::InterfaceVersion { .. }), "{msg}");
    assert!(
        msg.contains(&plugins.plugin_path("future").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("interface 99.0"), "{msg}");
    assert!(
        msg.contains(&format!("speaks {INTERFACE_VERSION}")),
        "{msg}"
    );
    assert_one_short_line(&msg);
}

#[test]
fn a_group_writable_plugin_file_is_refused_before_it_is_opened() {
    let plugins = PluginDir::with(&["recorder"]);
    let path = plugins.plugin_path("recorder");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o775)).unwrap();
    let err = PluginHost::new(plugins.path())
        .load("recorder")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Unsafe { .. }), "{msg}");
    assert_eq!(
        msg,
        format!(
            "refusing {}: group-writable (mode 0775); plugins must be writable only by root",
            path.display()
        )
    );
    assert!(
        !is_mapped(&path),
        "{} was opened before being refused",
        path.display()
    );
}

#[test]
fn a_world_writable_plugin_folder_is_refused_before_anything_is_opened() {
    let plugins = PluginDir::with(&["recorder"]);
    let path = plugins.plugin_path("recorder");
    fs::set_permissions(plugins.path(), fs::Permissions::from_mode(0o757)).unwrap();
    let host = PluginHost::new(plugins.path());
    let err = host.load("recorder").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Unsafe { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("refusing {}: ", path.display())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "its folder {} is world-writable",
            plugins.path().display()
        )),
        "{msg}"
    );
    assert_one_short_line(&msg);
    // `kproxy plugins` sees the same refusal.
    let found = host.discover().unwrap();
    assert_eq!(found.len(), 1);
    assert!(matches!(found[0].1, Err(LoadError::Unsafe { .. })));
    assert!(
        !is_mapped(&path),
        "{} was opened before being refused",
        path.display()
    );
}

#[test]
fn a_missing_plugin_names_the_folder_and_what_is_there() {
    let plugins = PluginDir::with(&["recorder", "future"]);
    let err = PluginHost::new(plugins.path())
        .load("nftables")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Missing { .. }), "{msg}");
    assert_eq!(
        msg,
        format!(
            "no plugin `nftables` in {}: {} does not exist (plugins there: future, recorder)",
            plugins.path().display(),
            plugins.plugin_path("nftables").display()
        )
    );
    let empty = PluginDir::empty();
    let msg = PluginHost::new(empty.path())
        .load("nftables")
        .unwrap_err()
        .to_string();
    assert!(msg.ends_with("(the folder holds no plugins)"), "{msg}");
}

#[test]
fn discover_reports_every_plugin_with_its_result() {
    let plugins = PluginDir::with(&["recorder", "future", "changed"]);
    let found = PluginHost::new(plugins.path()).discover().unwrap();
    let summary: Vec<(String, Result<String, String>)> = found
        .into_iter()
        .map(|(path, r)| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            (
                file,
                r.map(|p| p.info.name.to_string())
                    .map_err(|e| e.to_string()),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(summary[0].0, "libkproxy_plugin_changed.so");
    assert!(summary[0].1.as_ref().unwrap_err().contains("incompatible"));
    assert_eq!(summary[1].0, "libkproxy_plugin_future.so");
    assert!(summary[1].1.as_ref().unwrap_err().contains("99.0"));
    assert_eq!(
        summary[2],
        ("libkproxy_plugin_recorder.so".into(), Ok("recorder".into()))
    );
}

/// One event seen by [`Capture`].
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

/// A minimal subscriber that keeps every event, for asserting on log forwarding.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_string(),
            level: *event.metadata().level(),
            fields,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn plugin_tracing_events_reach_the_host_subscriber() {
    let plugins = PluginDir::with(&["recorder"]);
    let records = tempfile::tempdir().unwrap();
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let plugin = PluginHost::new(plugins.path()).load("recorder").unwrap();
        let mut dataplane = plugin.build(&context(records.path())).unwrap();
        dataplane
            .sync(&sample_state(3), &changes(true, &[]))
            .unwrap();
        fs::write(records.path().join("fail"), "no luck").unwrap();
        dataplane
            .sync(&sample_state(4), &changes(true, &[]))
            .unwrap_err();
    });
    let seen = capture.0.lock().unwrap().clone();
    let from_plugin: Vec<&Seen> = seen
        .iter()
        .filter(|e| e.target == "kproxy::plugin")
        .collect();
    let synced = from_plugin
        .iter()
        .find(|e| e.fields.get("message").map(String::as_str) == Some("recorded sync"))
        .unwrap_or_else(|| panic!("no `recorded sync` event among {seen:#?}"));
    assert_eq!(synced.level, tracing::Level::INFO);
    assert_eq!(synced.fields["plugin"], "recorder");
    assert_eq!(synced.fields["plugin_target"], "kproxy_plugin_recorder");
    let fields = &synced.fields["fields"];
    for expected in ["seq=1", "generation=3", "services=2", "endpoints=3"] {
        assert!(
            fields.split(' ').any(|f| f == expected),
            "`{expected}` missing from {fields:?}"
        );
    }
    let warned = from_plugin
        .iter()
        .find(|e| e.level == tracing::Level::WARN)
        .unwrap_or_else(|| panic!("no warning from the failed sync among {seen:#?}"));
    assert!(warned.fields["fields"].contains("no luck"), "{warned:?}");
}
