//! Unit tests for loading and validation: each bad input gives the promised message.

use super::*;
use kproxy_plugin_api::{IpFamily, LocalDetectMode};
use std::{path::PathBuf, time::Duration};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/kproxy/kproxy.toml"))
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

fn load_with(
    text: &str,
    env: &[(&str, &str)],
    overrides: Overrides,
) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kproxy.toml");
    std::fs::write(&file, text).unwrap();
    Config::load(&LoadOptions {
        file,
        file_required: true,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides,
    })
}

#[test]
fn empty_file_gives_upstream_defaults() {
    let c = parse("").unwrap();
    assert_eq!(
        c.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        c.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert_eq!(
        c.masquerade,
        Masquerade {
            all: false,
            bit: 14
        }
    );
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.conntrack.max_per_core, 32768);
    assert_eq!(c.conntrack.min, 131072);
    assert_eq!(
        c.conntrack.tcp_established_timeout,
        Duration::from_secs(86400)
    );
    assert_eq!(
        c.conntrack.tcp_close_wait_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(c.ip_families, vec![IpFamily::V4, IpFamily::V6]);
    assert!(c.localhost_node_ports);
    assert_eq!(c.source.kind, SourceKind::Kubernetes);
    assert_eq!(c.source.kubeconfig, None);
    assert_eq!(c.plugin_dir, PathBuf::from("/usr/lib/kproxy"));
    assert_eq!(c.dataplane, "nftables");
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.logging.level, "info");
    assert_eq!(c.node_port_addresses, NodePortAddresses::All);
    assert_eq!(c.plugin_section_toml(), "");
}

#[test]
fn full_file_is_read_into_types() {
    let c = parse(
        r#"
hostname_override = " Node-1.Example "
healthz_bind_address = "[::]:1234"
metrics_bind_address = ""
cluster_cidrs = ["10.244.0.0/16", "fd00:10:244::/56"]
service_cidrs = ["10.96.0.0/12"]
node_port_addresses = ["192.0.2.0/24"]
min_sync_period = "500ms"
sync_period = "1m"
ip_families = ["ipv6"]
dataplane = "iptables"

[detect_local]
mode = "InterfaceNamePrefix"
interface_name_prefix = "veth"

[masquerade]
all = true
bit = 0

[conntrack]
udp_timeout = "30s"
tcp_be_liberal = true

[source]
kind = "manifests"
manifest_dir = "/tmp/m"

[dataplanes.iptables]
backend = "legacy"
sizes = [1, 2]
[dataplanes.iptables.nested]
x = true

[logging]
format = "json"
level = "info,kproxy::actors=debug"
"#,
    )
    .unwrap();
    assert_eq!(c.hostname_override.as_deref(), Some("node-1.example"));
    assert_eq!(c.node_name(), "node-1.example");
    assert_eq!(c.healthz_bind_address, Some("[::]:1234".parse().unwrap()));
    assert_eq!(c.metrics_bind_address, None);
    assert_eq!(c.min_sync_period, Duration::from_millis(500));
    assert_eq!(c.sync_period, Duration::from_secs(60));
    assert_eq!(c.conntrack.udp_timeout, Duration::from_secs(30));
    assert!(c.conntrack.tcp_be_liberal);
    assert_eq!(c.source.kind, SourceKind::Manifests);
    assert_eq!(c.source.manifest_dir, PathBuf::from("/tmp/m"));
    assert_eq!(c.logging.format, LogFormat::Json);

    let s = c.proxy_settings();
    assert!(!s.ipv4 && s.ipv6);
    assert!(s.masquerade_all);
    assert_eq!(s.masquerade_bit, 0);
    assert_eq!(s.cluster_cidrs.len(), 2);
    assert_eq!(s.service_cidrs[0].to_string(), "10.96.0.0/12");
    assert_eq!(s.node_port_addresses[0].to_string(), "192.0.2.0/24");
    assert_eq!(s.local_detect.mode, LocalDetectMode::InterfaceNamePrefix);
    assert_eq!(s.local_detect.interface.as_str(), "veth");

    // The plugin's section round-trips as TOML, nested tables included.
    let section: toml::Table = c.plugin_section_toml().parse().unwrap();
    assert_eq!(section["backend"].as_str(), Some("legacy"));
    assert_eq!(section["sizes"].as_array().unwrap().len(), 2);
    assert_eq!(section["nested"]["x"].as_bool(), Some(true));
    assert_eq!(c.section_toml("nftables"), "");
}

#[test]
fn cluster_cidr_mode_without_cidrs_detects_nothing() {
    let s = parse("").unwrap().proxy_settings();
    assert_eq!(s.local_detect.mode, LocalDetectMode::None);
    let s = parse("cluster_cidrs = [\"10.0.0.0/8\"]")
        .unwrap()
        .proxy_settings();
    assert_eq!(s.local_detect.mode, LocalDetectMode::ClusterCidr);
}

#[test]
fn primary_node_port_addresses_resolve_against_the_node() {
    let c = parse("node_port_addresses = [\"primary\"]").unwrap();
    assert_eq!(c.node_port_addresses, NodePortAddresses::Primary);
    let node = kproxy_plugin_api::NodeFacts {
        addresses: vec![
            "192.0.2.7".parse::<std::net::IpAddr>().unwrap().into(),
            "2001:db8::7".parse::<std::net::IpAddr>().unwrap().into(),
        ]
        .into(),
        ..Default::default()
    };
    let s = c.proxy_settings_for_node(&node);
    let got: Vec<String> = s
        .node_port_addresses
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(got, ["192.0.2.7/32", "2001:db8::7/128"]);
    assert!(err("node_port_addresses = [\"primary\", \"10.0.0.0/8\"]")
        .contains("mixes \"primary\" with CIDRs"));
}

#[test]
fn out_of_range_value_names_file_key_and_range() {
    assert_eq!(
        err("[masquerade]\nbit = 40"),
        "/etc/kproxy/kproxy.toml: masquerade.bit = 40 is out of range (allowed: 0–31)"
    );
    assert!(err("[masquerade]\nbit = -1").contains("masquerade.bit = -1 is out of range"));
    assert!(err("[conntrack]\nmin = -5").contains("conntrack.min = -5 is out of range"));
}

#[test]
fn unknown_keys_name_the_table_and_what_it_allows() {
    assert_eq!(
        err("[masquerade]\nbitt = 4"),
        "/etc/kproxy/kproxy.toml: unknown key `masquerade.bitt` (allowed keys in [masquerade]: \
         all, bit)"
    );
    let top = err("dataplan = \"x\"");
    assert!(
        top.contains("unknown key `dataplan` (allowed keys in the top level:"),
        "{top}"
    );
    assert!(top.contains("dataplane, dataplanes"), "{top}");
    // Free-form plugin sections are the plugin's business.
    assert!(parse("[dataplanes.nftables]\nanything = 1").is_ok());
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let e = parse("dataplane = \"nftables\"\n[masquerade\nbit = 3").unwrap_err();
    match &e {
        ConfigError::Syntax { line, column, .. } => {
            assert_eq!(*line, 2);
            assert!(*column >= 1);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(
        e.to_string().starts_with("/etc/kproxy/kproxy.toml:2:"),
        "{e}"
    );
    assert!(e.to_string().contains("TOML syntax error"), "{e}");
}

#[test]
fn wrong_types_name_the_key() {
    let e = err("[masquerade]\nbit = \"many\"");
    assert!(e.contains("masquerade.bit has the wrong type"), "{e}");
    let e = err("cluster_cidrs = \"10.0.0.0/8\"");
    assert!(e.contains("cluster_cidrs has the wrong type"), "{e}");
    assert!(
        e.contains("found string \"10.0.0.0/8\", expected a sequence"),
        "{e}"
    );
    let e = err("source = 5");
    assert!(
        e.ends_with("source has the wrong type: found integer `5`, expected a table"),
        "{e}"
    );
}

#[test]
fn bad_values_are_refused_with_what_is_allowed() {
    let cases = [
        ("cluster_cidrs = [\"10.0.0.0/8\", \"10.0.0.0/33\"]", "cluster_cidrs[1] = \"10.0.0.0/33\" is not a CIDR"),
        ("service_cidrs = [\"banana\"]", "service_cidrs[0] = \"banana\" is not a CIDR"),
        ("bind_address = \"1.2.3\"", "bind_address = \"1.2.3\" is not an IP address"),
        ("healthz_bind_address = \"0.0.0.0:70000\"", "healthz_bind_address = \"0.0.0.0:70000\" is not an address with a port"),
        ("metrics_bind_address = \"127.0.0.1:0\"", "metrics_bind_address = \"127.0.0.1:0\""),
        ("min_sync_period = \"soon\"", "min_sync_period = \"soon\" is not a duration"),
        ("sync_period = \"0s\"", "sync_period = \"0s\" must be longer than zero"),
        ("min_sync_period = \"1m\"\nsync_period = \"30s\"", "min_sync_period = \"1m\" is longer than sync_period"),
        ("ip_families = []", "ip_families = [] is empty"),
        ("ip_families = [\"ipv4\", \"ipv4\"]", "ip_families[1] = \"ipv4\" is listed twice"),
        ("ip_families = [\"ipx\"]", "ip_families[0] = \"ipx\" is not an IP family"),
        ("[detect_local]\nmode = \"Magic\"", "detect_local.mode = \"Magic\" is not a detection mode (allowed: ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix)"),
        ("[detect_local]\nmode = \"BridgeInterface\"", "detect_local.bridge_interface = \"\" is empty"),
        ("[detect_local]\nmode = \"InterfaceNamePrefix\"\ninterface_name_prefix = \"a/b\"", "detect_local.interface_name_prefix = \"a/b\" is not an interface name"),
        ("[source]\nkind = \"etcd\"", "source.kind = \"etcd\" is not a source"),
        ("[source]\nkind = \"manifests\"\nmanifest_dir = \"\"", "source.manifest_dir = \"\" is empty"),
        ("dataplane = \"../evil\"", "dataplane = \"../evil\" is not a plugin name"),
        ("[dataplanes.\"Bad Name\"]\nx = 1", "is not a plugin name"),
        ("plugin_dir = \"\"", "plugin_dir = \"\" is empty"),
        ("[logging]\nformat = \"xml\"", "logging.format = \"xml\" is not a log format"),
        ("[logging]\nlevel = \"debg\"", "logging.level = \"debg\" is not a level"),
        ("[logging]\nlevel = \"kproxy=loud\"", "logging.level = \"kproxy=loud\" is not a valid filter"),
        ("hostname_override = \"node_1\"", "hostname_override = \"node_1\" is not a valid node name"),
        ("[conntrack]\ntcp_established_timeout = \"forever\"", "conntrack.tcp_established_timeout = \"forever\" is not a duration"),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(
            got.starts_with("/etc/kproxy/kproxy.toml: "),
            "{text}: {got}"
        );
        assert!(got.contains(want), "{text}:\n got  {got}\n want {want}");
        assert!(got.contains("(allowed: "), "{text}: {got}");
    }
}

#[test]
fn missing_file_is_an_error_only_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.toml");
    let mut opts = LoadOptions {
        file: file.clone(),
        file_required: true,
        env: Vec::new(),
        overrides: Overrides::default(),
    };
    let e = Config::load(&opts).unwrap_err();
    assert_eq!(e, ConfigError::MissingFile { path: file.clone() });
    assert!(e.to_string().starts_with(&format!(
        "{}: the config file does not exist",
        file.display()
    )));
    opts.file_required = false;
    assert_eq!(Config::load(&opts).unwrap().dataplane, "nftables");
}

#[test]
fn environment_overrides_file_and_flags_override_both() {
    let text = "dataplane = \"nftables\"\n[logging]\nlevel = \"warn\"\n[masquerade]\nbit = 3\n";
    let c = load_with(
        text,
        &[
            ("KPROXY_DATAPLANE", "iptables"),
            ("KPROXY_LOGGING__LEVEL", "debug"),
            ("KPROXY_MASQUERADE__BIT", "5"),
            ("KPROXY_MASQUERADE__ALL", "true"),
            ("KPROXY_CLUSTER_CIDRS", "10.244.0.0/16,fd00::/56"),
            ("KPROXY_DATAPLANES__IPTABLES__BACKEND", "legacy"),
            ("PATH", "/usr/bin"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.dataplane, "iptables");
    assert_eq!(c.logging.level, "debug");
    assert_eq!(c.masquerade, Masquerade { all: true, bit: 5 });
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert!(c.plugin_section_toml().contains("backend = \"legacy\""));

    let c = load_with(
        text,
        &[
            ("KPROXY_DATAPLANE", "iptables"),
            ("KPROXY_LOGGING__LEVEL", "debug"),
        ],
        Overrides {
            dataplane: Some("ipvs".into()),
            log_level: Some("trace".into()),
            plugin_dir: Some("/opt/p".into()),
            hostname_override: Some("n1".into()),
            manifest_dir: Some("/srv/m".into()),
            log_format: Some("json".into()),
            kubeconfig: None,
        },
    )
    .unwrap();
    assert_eq!(c.dataplane, "ipvs");
    assert_eq!(c.logging.level, "trace");
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.plugin_dir, PathBuf::from("/opt/p"));
    assert_eq!(c.hostname_override.as_deref(), Some("n1"));
    assert_eq!(c.source.kind, SourceKind::Manifests);
    assert_eq!(c.source.manifest_dir, PathBuf::from("/srv/m"));
}

#[test]
fn errors_point_at_the_variable_or_flag_that_set_the_value() {
    let e = load_with(
        "",
        &[("KPROXY_MASQUERADE__BIT", "99")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "environment variable KPROXY_MASQUERADE__BIT: masquerade.bit = 99 is out of range \
         (allowed: 0–31)"
    );
    let e = load_with(
        "",
        &[("KPROXY_MASQUERADE__BITT", "1")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "environment variable KPROXY_MASQUERADE__BITT: unknown key `masquerade.bitt`"
        ),
        "{e}"
    );
    let e = load_with("", &[("KPROXY_SURPRISE", "1")], Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("environment variable KPROXY_SURPRISE: unknown key `surprise`"),
        "{e}"
    );
    let e = load_with(
        "",
        &[],
        Overrides {
            log_level: Some("loud".into()),
            ..Overrides::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("flag --log-level: logging.level = \"loud\""),
        "{e}"
    );
}

#[test]
fn reload_reads_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kproxy.toml");
    std::fs::write(&file, "dataplane = \"nftables\"").unwrap();
    let c = Config::load(&LoadOptions {
        file: file.clone(),
        file_required: true,
        env: Vec::new(),
        overrides: Overrides::default(),
    })
    .unwrap();
    std::fs::write(&file, "dataplane = \"iptables\"").unwrap();
    assert_eq!(c.reload().unwrap().dataplane, "iptables");
    std::fs::write(&file, "dataplane = 7x").unwrap();
    assert!(matches!(c.reload(), Err(ConfigError::Syntax { .. })));
}

#[test]
fn schema_covers_every_table() {
    let schema = raw::schema();
    for table in [
        "detect_local",
        "masquerade",
        "conntrack",
        "source",
        "logging",
        "dataplanes",
    ] {
        assert!(schema[table].is_table(), "{table}");
    }
    assert_eq!(schema["conntrack"].as_table().unwrap().len(), 7);
}
