//! `/metrics` end to end: the real `kproxy` binary on the manifest source with the recorder
//! plugin, scraped over real HTTP and read with a strict Prometheus text-format (0.0.4) parser.
//!
//! The counts are checked against what happened: the sync histogram counts exactly the syncs
//! the recorder recorded plus the ones it failed; changes, failures, skipped objects,
//! network-programming latency and the Local-policy gauge follow the edits the test makes.
//! The Grafana dashboard in `deploy/grafana/` may only query metrics a running daemon exports.
//!
//! Needs `cargo build --workspace` first, and root (the plugin host loads root-owned plugins).

use kproxy_tests::daemon::{Daemon, DaemonSpec, Recording};
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

const NODE: &str = "metrics-node";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format, version 0.0.4.

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One metric family: its `# TYPE` and its samples.
#[derive(Debug, Clone, Default)]
struct MetricFamily {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("`{v}` is not a number")),
    }
}

/// Parses `{a="x",b="y"}` (the braces included); returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with `{`")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("a label without `=`")?;
        let key = rest[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name `{key}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label `{key}` twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by `,`".into());
        }
    }
}

/// Parses a whole exposition; every sample must belong to the family declared by the
/// `# TYPE` line before it (histogram samples by `_bucket`, `_sum`, `_count`), a family is
/// declared once, and histograms must be cumulative with `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, MetricFamily>, String> {
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_name(name) || helps.insert(name.into(), help.into()).is_some() {
                return Err(err("bad or repeated HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without type".into()))?;
            if !valid_name(name) {
                return Err(err("bad metric name".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("unknown type `{kind}`")));
            }
            if families.contains_key(name) {
                return Err(err("family declared twice".into()));
            }
            families.insert(
                name.into(),
                MetricFamily {
                    kind: kind.into(),
                    help: helps.get(name).cloned(),
                    samples: vec![],
                },
            );
            current = Some(name.into());
            continue;
        }
        if line.starts_with('#') {
            continue; // a comment
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("a sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad sample name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing garbage".into()));
        }
        let family = current
            .as_ref()
            .ok_or_else(|| err("a sample before any TYPE".into()))?;
        let fam = families.get_mut(family).expect("declared above");
        let belongs = if fam.kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family.as_str()))
        } else {
            name == family
        };
        if !belongs {
            return Err(err(format!("sample not of the current family `{family}`")));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("a bucket without `le`".into()));
        }
        fam.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    for (name, fam) in &families {
        if fam.kind != "histogram" {
            continue;
        }
        // Per label set (without `le`): the buckets as (le, count), and `_count`.
        type Series = (Vec<(f64, f64)>, Option<f64>);
        let mut series: BTreeMap<BTreeMap<String, String>, Series> = BTreeMap::new();
        for s in &fam.samples {
            let mut key = s.labels.clone();
            let le = key.remove("le");
            let entry = series.entry(key).or_default();
            if s.name.ends_with("_bucket") {
                entry
                    .0
                    .push((parse_value(le.as_deref().unwrap_or(""))?, s.value));
            } else if s.name.ends_with("_count") {
                entry.1 = Some(s.value);
            }
        }
        for (labels, (mut buckets, count)) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{name}{labels:?}: buckets are not cumulative"));
            }
            let inf = buckets.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
            if inf.is_none() || inf != count {
                return Err(format!(
                    "{name}{labels:?}: +Inf bucket {inf:?} != count {count:?}"
                ));
            }
        }
    }
    Ok(families)
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let f = parse_exposition(good).unwrap();
    assert_eq!(f["a_total"].samples[0].labels["y"], "q\"");
    for bad in [
        "a 1\n",                                                    // no TYPE
        "# TYPE a counter\nb 1\n",                                  // not of the family
        "# TYPE a counter\n# TYPE a counter\n",                     // twice
        "# TYPE a gauge\na{x=1} 1\n",                               // unquoted
        "# TYPE a gauge\na one\n",                                  // not a number
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // inf != count
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon and HTTP.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path`; the status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
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
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    Ok((status, body.to_string()))
}

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

struct Running {
    daemon: Daemon,
    recording: Recording,
    manifests: tempfile::TempDir,
    metrics: SocketAddr,
    healthz: SocketAddr,
}

impl Running {
    fn start(manifests: &[(&str, String)]) -> Running {
        let recording = Recording::new();
        let dir = tempfile::Builder::new()
            .prefix("kproxy-metrics-manifests-")
            .tempdir()
            .unwrap();
        for (name, text) in manifests {
            write_manifest(dir.path(), name, text);
        }
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let metrics = SocketAddr::new(lo, free_port());
        let healthz = SocketAddr::new(lo, free_port());
        // A long sync period: syncs happen only when something changes (or after a failure),
        // so the counts below are exact.
        let config = format!(
            "hostname_override = \"{NODE}\"\nhealthz_bind_address = \"{healthz}\"\n\
             metrics_bind_address = \"{metrics}\"\nip_families = [\"ipv4\"]\n\
             sync_period = \"1h\"\nmin_sync_period = \"100ms\"\ndataplane = \"recorder\"\n{}\n\
             [source]\nkind = \"manifests\"\nmanifest_dir = \"{}\"\n",
            recording.config_section(),
            dir.path().display()
        );
        let daemon = Daemon::start(DaemonSpec {
            plugins: &["recorder"],
            config,
            env: vec![],
            netns: None,
        });
        Running {
            daemon,
            recording,
            manifests: dir,
            metrics,
            healthz,
        }
    }

    fn scrape(&self) -> Result<BTreeMap<String, MetricFamily>, String> {
        let (status, body) = get(self.metrics, "/metrics").map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        parse_exposition(&body).map_err(|e| format!("{e}\n{body}"))
    }

    fn manifest(&self, name: &str, text: &str) {
        write_manifest(self.manifests.path(), name, text);
    }
}

/// The value of the one sample of `family` whose labels include `labels`.
fn value(families: &BTreeMap<String, MetricFamily>, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let family = [sample, sample.trim_end_matches("_count")]
        .into_iter()
        .find(|f| families.contains_key(*f))
        .unwrap_or_else(|| panic!("no family for {sample}"));
    let hits: Vec<&Sample> = families[family]
        .samples
        .iter()
        .filter(|s| s.name == sample)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{sample}{labels:?}: {hits:?}");
    hits[0].value
}

fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!("{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A ClusterIP service `web` with `endpoints` (local ready pods), its slice stamped with a
/// `last-change-trigger-time`, and `extra_port` adding a second port to the Service.
fn web(endpoints: &[&str], trigger: Option<SystemTime>, extra_port: bool) -> String {
    let eps: String = endpoints
        .iter()
        .map(|ip| {
            format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {NODE}\n")
        })
        .collect();
    let annotation = trigger
        .map(|t| {
            format!(
                "  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{}\"}}\n",
                kproxy::actors::health::state::rfc3339(Some(t))
            )
        })
        .unwrap_or_default();
    let extra = if extra_port {
        "  - {name: admin, protocol: TCP, port: 9000, targetPort: 9000}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.0.80\n  clusterIPs: [10.96.0.80]\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n{extra}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: web}}\n{annotation}\
         addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n{eps}"
    )
}

/// A NodePort service with `externalTrafficPolicy: Local` whose only endpoint is elsewhere:
/// external traffic to it is dropped on this node.
fn remote_only() -> String {
    "apiVersion: v1\nkind: Service\nmetadata: {name: remote, namespace: default}\n\
     spec:\n  type: NodePort\n  clusterIP: 10.96.0.81\n  clusterIPs: [10.96.0.81]\n  \
     externalTrafficPolicy: Local\n  ports:\n  \
     - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}\n---\n\
     apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: remote-1\n  \
     namespace: default\n  labels: {kubernetes.io/service-name: remote}\naddressType: IPv4\n\
     ports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n  \
     - addresses: [\"10.244.2.7\"]\n    conditions: {ready: true}\n    nodeName: another-node\n"
        .to_string()
}

const BAD_SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\n\
     spec:\n  clusterIP: 10.96.0.99\n  clusterIPs: [10.96.0.99]\n  ports:\n  \
     - {name: http, protocol: TCP, port: 70000, targetPort: 8080}\n";

// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_parse_and_count_what_happened() {
    let r = Running::start(&[
        ("web.yaml", web(&["10.244.1.2"], None, false)),
        ("remote.yaml", remote_only()),
    ]);
    r.recording
        .wait_for("the first sync", WAIT, |s| s.state.services.len() == 2);
    let (status, mode) = get(r.metrics, "/proxyMode").unwrap();
    assert_eq!((status, mode.as_str()), (200, "recorder"));
    for _ in 0..2 {
        assert_eq!(get(r.healthz, "/healthz").unwrap().0, 200);
    }

    // An endpoint change stamped with its trigger time: network programming latency.
    r.manifest(
        "web.yaml",
        &web(
            &["10.244.1.2", "10.244.1.3"],
            Some(SystemTime::now()),
            false,
        ),
    );
    r.recording.wait_for("two endpoints", WAIT, |s| {
        s.port("default/web", "http")
            .is_some_and(|p| p.endpoints.len() == 2)
    });
    // A Service change, and an invalid Service that is skipped.
    r.manifest("web.yaml", &web(&["10.244.1.2", "10.244.1.3"], None, true));
    r.manifest("bad.yaml", BAD_SERVICE);
    r.recording.wait_for("the admin port", WAIT, |s| {
        s.port("default/web", "admin").is_some()
    });

    // The plugin fails a change, then recovers.
    r.recording.switch("fail", true);
    r.manifest("web.yaml", &web(&["10.244.1.3"], None, true));
    eventually("a failed sync in the metrics", || {
        let m = r.scrape()?;
        let failures = value(&m, "kproxy_sync_failures_total", &[]);
        let pending = value(
            &m,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            &[],
        );
        // The failed change stays pending until a sync applies it.
        (failures >= 1.0 && pending == 1.0)
            .then_some(())
            .ok_or(format!(
                "failures {failures}, endpoint changes pending {pending}"
            ))
    });
    r.recording.switch("fail", false);
    r.recording
        .wait_for("the change after the failure", WAIT, |s| {
            s.port("default/web", "http")
                .is_some_and(|p| p.endpoints.len() == 1)
        });

    // Every sync is counted once: recorded ones plus failed ones.
    let m = eventually("the histogram to count every sync", || {
        let m = r.scrape()?;
        let recorded = r.recording.all().len() as f64;
        let failures = value(&m, "kproxy_sync_failures_total", &[]);
        let count = value(
            &m,
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            &[("ip_family", "IPv4")],
        );
        (count == recorded + failures).then_some(m).ok_or(format!(
            "count {count}, recorded {recorded}, failed {failures}"
        ))
    });
    let recorded = r.recording.all().len() as f64;
    assert!(recorded >= 4.0, "first sync and three changes: {recorded}");
    let failures = value(&m, "kproxy_sync_failures_total", &[]);
    assert_eq!(
        value(
            &m,
            "kproxy_plugin_stats_total",
            &[("plugin", "recorder"), ("name", "syncs_recorded")]
        ),
        recorded,
        "the plugin's own counter agrees"
    );
    assert_eq!(
        value(&m, "kproxy_plugin_stats_total", &[("name", "syncs_failed")]),
        failures
    );
    assert_eq!(
        value(&m, "kproxy_plugin_errors_total", &[("code", "kernel")]),
        failures
    );
    assert_eq!(value(&m, "kproxy_syncs_total", &[]), recorded + failures);
    let full = value(
        &m,
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        &[("ip_family", "IPv4")],
    );
    let partial = value(
        &m,
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
        &[("ip_family", "IPv4")],
    );
    assert_eq!(full + partial, recorded + failures);
    assert!(
        full >= 1.0 && partial >= 1.0,
        "full {full}, partial {partial}"
    );

    // Changes: 2 Services and 2 slices listed, then 1 + 1 Service and 3 slice edits.
    assert!(value(&m, "kubeproxy_sync_proxy_rules_service_changes_total", &[]) >= 3.0);
    assert!(value(&m, "kubeproxy_sync_proxy_rules_endpoint_changes_total", &[]) >= 4.0);
    assert_eq!(
        value(
            &m,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            &[]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            &[]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "kubeproxy_network_programming_duration_seconds_count",
            &[("ip_family", "IPv4")]
        ),
        1.0,
        "one slice change carried a trigger time"
    );
    assert_eq!(
        value(&m, "kproxy_objects_skipped_total", &[("kind", "Service")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            &[("ip_family", "IPv4"), ("traffic_policy", "external")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            &[("ip_family", "IPv4"), ("traffic_policy", "internal")]
        ),
        0.0
    );
    assert_eq!(
        value(&m, "kproxy_programmed_services", &[]),
        3.0,
        "web:http, web:admin, remote"
    );
    assert_eq!(value(&m, "kproxy_programmed_endpoints", &[]), 2.0);
    assert!(value(&m, "kubeproxy_proxy_healthz_total", &[("code", "200")]) >= 2.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value(
        &m,
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        &[("ip_family", "IPv4")],
    );
    let queued = value(
        &m,
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        &[("ip_family", "IPv4")],
    );
    assert!(
        last <= now && last > now - 600.0,
        "last sync {last}, now {now}"
    );
    assert!(
        queued <= last,
        "the last change was queued before the last sync"
    );
    for (family, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "counter",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        ("kubeproxy_proxy_healthz_total", "counter"),
        ("kubeproxy_proxy_livez_total", "counter"),
    ] {
        assert_eq!(m[family].kind, kind, "{family}");
        assert!(m[family].help.is_some(), "{family} has no HELP");
    }
    drop(r.daemon);
}

/// Every metric name an expression mentions (identifiers starting with `kubeproxy_` or
/// `kproxy_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (expr[i..].starts_with("kubeproxy_") || expr[i..].starts_with("kproxy_"))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |e| i + e);
            out.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every PromQL expression in a Grafana dashboard: panel targets (also inside rows) and
/// templating queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) if s.contains('_') => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/kproxy-dashboard.json")
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text = fs::read_to_string(dashboard_path()).expect("deploy/grafana/kproxy-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("every panel has an id")),
            "duplicate id"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "panel {} is wider than the grid",
            p["title"]
        );
    }

    let r = Running::start(&[("web.yaml", web(&["10.244.1.2"], None, false))]);
    r.recording
        .wait_for("the first sync", WAIT, |s| !s.state.services.is_empty());
    let exported = eventually("a scrape", || r.scrape());
    let known = |name: &str| {
        exported.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|f| exported.get(f).is_some_and(|m| m.kind == "histogram"))
            })
    };
    let queries = dashboard_queries(&dashboard);
    let mut used = BTreeSet::new();
    for q in &queries {
        for name in metric_names(q) {
            assert!(
                known(&name),
                "the dashboard queries `{name}`, which kproxy does not export: {q}"
            );
            used.insert(name);
        }
    }
    // The dashboard covers what the issue asks for.
    for must in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_network_programming_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "kubeproxy_proxy_healthz_total",
        "kproxy_sync_failures_total",
        "kproxy_plugin_errors_total",
        "kproxy_objects_skipped_total",
        "kproxy_programmed_endpoints",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
    drop(r.daemon);
}
