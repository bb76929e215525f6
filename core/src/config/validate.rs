//! Turns a [`RawConfig`] into a typed [`Config`], checking every value and saying, for the first
//! bad one, where it was set, its dotted key and what is allowed.

use super::{
    error::ConfigError,
    load::Provenance,
    raw::RawConfig,
    types::{
        Config, Conntrack, DetectLocal, DetectLocalMode, LogFormat, Logging, Masquerade,
        NodePortAddresses, Source, SourceKind,
    },
};
use kproxy_plugin_api::{Cidr, IpFamily};
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

/// What a duration may look like, for messages.
const DURATION_ALLOWED: &str = "a number with a unit, e.g. \"500ms\", \"1s\", \"5m\", \"24h\"";

/// Checks `raw`; `file` is recorded in the result, `prov` attributes errors.
pub fn validate(raw: RawConfig, file: &Path, prov: &Provenance) -> Result<Config, ConfigError> {
    let v = Validator { prov };

    let hostname_override = v.hostname(&raw.hostname_override)?;
    let bind_address = v.ip("bind_address", &raw.bind_address)?;
    let healthz_bind_address =
        v.socket_addr("healthz_bind_address", &raw.healthz_bind_address, 10256)?;
    let metrics_bind_address =
        v.socket_addr("metrics_bind_address", &raw.metrics_bind_address, 10249)?;
    let cluster_cidrs = v.cidrs("cluster_cidrs", &raw.cluster_cidrs)?;
    let service_cidrs = v.cidrs("service_cidrs", &raw.service_cidrs)?;

    let detect_local = v.detect_local(&raw)?;
    let node_port_addresses = v.node_port_addresses(&raw.node_port_addresses)?;

    let masquerade = Masquerade {
        all: raw.masquerade.all,
        bit: u8::try_from(raw.masquerade.bit)
            .ok()
            .filter(|b| *b <= 31)
            .ok_or_else(|| {
                v.invalid(
                    "masquerade.bit",
                    raw.masquerade.bit,
                    "is out of range",
                    "0–31",
                )
            })?,
    };

    let min_sync_period = v.duration("min_sync_period", &raw.min_sync_period)?;
    let sync_period = v.duration("sync_period", &raw.sync_period)?;
    if sync_period.is_zero() {
        return Err(v.invalid(
            "sync_period",
            raw.sync_period.as_str(),
            "must be longer than zero",
            DURATION_ALLOWED,
        ));
    }
    if min_sync_period > sync_period {
        return Err(v.invalid(
            "min_sync_period",
            raw.min_sync_period.as_str(),
            &format!("is longer than sync_period ({:?})", raw.sync_period),
            "a duration no longer than sync_period",
        ));
    }

    let c = &raw.conntrack;
    let conntrack = Conntrack {
        max_per_core: v.count("conntrack.max_per_core", c.max_per_core)?,
        min: v.count("conntrack.min", c.min)?,
        tcp_established_timeout: v.duration(
            "conntrack.tcp_established_timeout",
            &c.tcp_established_timeout,
        )?,
        tcp_close_wait_timeout: v.duration(
            "conntrack.tcp_close_wait_timeout",
            &c.tcp_close_wait_timeout,
        )?,
        tcp_be_liberal: c.tcp_be_liberal,
        udp_timeout: v.duration("conntrack.udp_timeout", &c.udp_timeout)?,
        udp_stream_timeout: v.duration("conntrack.udp_stream_timeout", &c.udp_stream_timeout)?,
    };

    let ip_families = v.ip_families(&raw.ip_families)?;
    let source = v.source(&raw)?;

    if raw.plugin_dir.trim().is_empty() {
        return Err(v.invalid(
            "plugin_dir",
            raw.plugin_dir.as_str(),
            "is empty",
            "the folder holding the plugins, e.g. \"/usr/lib/kproxy\"",
        ));
    }
    let dataplane = v.plugin_name("dataplane", &raw.dataplane)?;
    for name in raw.dataplanes.keys() {
        v.plugin_name(&format!("dataplanes.{name}"), name)?;
    }

    let logging = v.logging(&raw)?;

    Ok(Config {
        file: file.to_path_buf(),
        hostname_override,
        bind_address,
        healthz_bind_address,
        metrics_bind_address,
        cluster_cidrs,
        detect_local,
        node_port_addresses,
        masquerade,
        min_sync_period,
        sync_period,
        conntrack,
        ip_families,
        service_cidrs,
        localhost_node_ports: raw.localhost_node_ports,
        source,
        plugin_dir: PathBuf::from(raw.plugin_dir),
        dataplane,
        dataplanes: raw.dataplanes,
        logging,
        load_options: None,
    })
}

/// Checks one value at a time and builds errors with the right origin.
struct Validator<'a> {
    prov: &'a Provenance,
}

impl Validator<'_> {
    fn invalid(
        &self,
        key: &str,
        value: impl Into<toml::Value>,
        problem: &str,
        allowed: &str,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.prov.origin(key),
            key: key.to_string(),
            value: value.into().to_string(),
            problem: problem.into(),
            allowed: allowed.into(),
        }
    }

    fn hostname(&self, raw: &str) -> Result<Option<String>, ConfigError> {
        // Upstream trims and lower-cases the override before using it as the node name.
        let name = raw.trim().to_lowercase();
        if name.is_empty() {
            return Ok(None);
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(self.invalid(
                "hostname_override",
                raw,
                "is not a valid node name",
                "a DNS subdomain: labels of a-z, 0-9 and '-', joined by '.', at most 253 \
                 characters; empty = the hostname",
            ));
        }
        Ok(Some(name))
    }

    fn ip(&self, key: &str, raw: &str) -> Result<IpAddr, ConfigError> {
        raw.trim().parse().map_err(|_| {
            self.invalid(
                key,
                raw,
                "is not an IP address",
                "an IPv4 or IPv6 address, e.g. \"0.0.0.0\" or \"::\"",
            )
        })
    }

    /// `ip:port`, `[v6]:port` or a bare IP (with `default_port`); empty = disabled.
    fn socket_addr(
        &self,
        key: &str,
        raw: &str,
        default_port: u16,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let text = raw.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let addr = text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .filter(|a| a.port() != 0);
        match addr {
            Some(a) => Ok(Some(a)),
            None => Err(self.invalid(
                key,
                raw,
                "is not an address with a port",
                &format!(
                    "\"IP:PORT\" with a port in 1–65535, \"[IPv6]:PORT\", a bare IP (port \
                     {default_port}), or \"\" to turn the server off"
                ),
            )),
        }
    }

    fn cidr(&self, key: &str, raw: &str) -> Result<Cidr, ConfigError> {
        raw.trim().parse::<Cidr>().map_err(|reason| {
            self.invalid(
                key,
                raw,
                &format!("is not a CIDR ({reason})"),
                "an address prefix such as \"10.244.0.0/16\" or \"fd00:10:244::/56\"",
            )
        })
    }

    fn cidrs(&self, key: &str, raw: &[String]) -> Result<Vec<Cidr>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, c)| self.cidr(&format!("{key}[{i}]"), c))
            .collect()
    }

    fn node_port_addresses(&self, raw: &[String]) -> Result<NodePortAddresses, ConfigError> {
        let key = "node_port_addresses";
        if raw.iter().any(|s| s.trim() == "primary") {
            if raw.len() != 1 {
                return Err(self.invalid(
                    key,
                    toml::Value::Array(raw.iter().map(|s| s.as_str().into()).collect()),
                    "mixes \"primary\" with CIDRs",
                    "either [\"primary\"] alone or a list of CIDRs",
                ));
            }
            return Ok(NodePortAddresses::Primary);
        }
        if raw.is_empty() {
            return Ok(NodePortAddresses::All);
        }
        Ok(NodePortAddresses::Cidrs(self.cidrs(key, raw)?))
    }

    fn detect_local(&self, raw: &RawConfig) -> Result<DetectLocal, ConfigError> {
        let d = &raw.detect_local;
        let mode = match d.mode.as_str() {
            "ClusterCIDR" => DetectLocalMode::ClusterCidr,
            "NodeCIDR" => DetectLocalMode::NodeCidr,
            "BridgeInterface" => DetectLocalMode::BridgeInterface,
            "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
            _ => {
                return Err(self.invalid(
                    "detect_local.mode",
                    d.mode.as_str(),
                    "is not a detection mode",
                    "ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix",
                ))
            }
        };
        let needs = |key: &str, value: &str| -> Result<(), ConfigError> {
            if value.is_empty() {
                return Err(self.invalid(
                    key,
                    value,
                    &format!("is empty but detect_local.mode = {:?} needs it", d.mode),
                    "an interface name (or prefix) of 1–15 characters",
                ));
            }
            self.interface(key, value)
        };
        match mode {
            DetectLocalMode::BridgeInterface => {
                needs("detect_local.bridge_interface", &d.bridge_interface)?
            }
            DetectLocalMode::InterfaceNamePrefix => needs(
                "detect_local.interface_name_prefix",
                &d.interface_name_prefix,
            )?,
            _ => {}
        }
        if !d.bridge_interface.is_empty() {
            self.interface("detect_local.bridge_interface", &d.bridge_interface)?;
        }
        if !d.interface_name_prefix.is_empty() {
            self.interface(
                "detect_local.interface_name_prefix",
                &d.interface_name_prefix,
            )?;
        }
        Ok(DetectLocal {
            mode,
            bridge_interface: d.bridge_interface.clone(),
            interface_name_prefix: d.interface_name_prefix.clone(),
        })
    }

    /// A Linux interface name: 1–15 bytes, no '/', no whitespace, not "." or "..".
    fn interface(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let ok = !value.is_empty()
            && value.len() <= 15
            && value != "."
            && value != ".."
            && !value
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if ok {
            Ok(())
        } else {
            Err(self.invalid(
                key,
                value,
                "is not an interface name",
                "1–15 characters without '/', ':' or whitespace",
            ))
        }
    }

    fn duration(&self, key: &str, raw: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(raw.trim())
            .map_err(|_| self.invalid(key, raw, "is not a duration", DURATION_ALLOWED))
    }

    fn count(&self, key: &str, raw: i64) -> Result<u32, ConfigError> {
        u32::try_from(raw)
            .ok()
            .filter(|n| *n <= i32::MAX as u32)
            .ok_or_else(|| self.invalid(key, raw, "is out of range", "0–2147483647"))
    }

    fn ip_families(&self, raw: &[String]) -> Result<Vec<IpFamily>, ConfigError> {
        let allowed = "a non-empty list of \"ipv4\" and/or \"ipv6\", each once";
        if raw.is_empty() {
            return Err(self.invalid(
                "ip_families",
                toml::Value::Array(Vec::new()),
                "is empty",
                allowed,
            ));
        }
        let mut out = Vec::new();
        for (i, f) in raw.iter().enumerate() {
            let key = format!("ip_families[{i}]");
            let family = match f.trim() {
                "ipv4" => IpFamily::V4,
                "ipv6" => IpFamily::V6,
                _ => {
                    return Err(self.invalid(&key, f.as_str(), "is not an IP family", allowed));
                }
            };
            if out.contains(&family) {
                return Err(self.invalid(&key, f.as_str(), "is listed twice", allowed));
            }
            out.push(family);
        }
        Ok(out)
    }

    fn source(&self, raw: &RawConfig) -> Result<Source, ConfigError> {
        let s = &raw.source;
        let kind = match s.kind.as_str() {
            "kubernetes" => SourceKind::Kubernetes,
            "manifests" => SourceKind::Manifests,
            _ => {
                return Err(self.invalid(
                    "source.kind",
                    s.kind.as_str(),
                    "is not a source",
                    "\"kubernetes\" (the API server) or \"manifests\" (a folder of YAML files)",
                ))
            }
        };
        if kind == SourceKind::Manifests && s.manifest_dir.trim().is_empty() {
            return Err(self.invalid(
                "source.manifest_dir",
                s.manifest_dir.as_str(),
                "is empty but source.kind = \"manifests\" needs it",
                "the folder holding Service and EndpointSlice YAML files",
            ));
        }
        let kubeconfig = s.kubeconfig.trim();
        Ok(Source {
            kind,
            kubeconfig: (!kubeconfig.is_empty()).then(|| PathBuf::from(kubeconfig)),
            manifest_dir: PathBuf::from(s.manifest_dir.trim()),
        })
    }

    /// A plugin name: what `libkproxy_plugin_<name>.so` is built from.
    fn plugin_name(&self, key: &str, raw: &str) -> Result<String, ConfigError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(raw.to_string())
        } else {
            Err(self.invalid(
                key,
                raw,
                "is not a plugin name",
                "1–64 characters of a-z, 0-9, '_' and '-', e.g. \"nftables\", \"iptables\"",
            ))
        }
    }

    fn logging(&self, raw: &RawConfig) -> Result<Logging, ConfigError> {
        let l = &raw.logging;
        let format = match l.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(self.invalid(
                    "logging.format",
                    l.format.as_str(),
                    "is not a log format",
                    "\"text\", \"json\"",
                ))
            }
        };
        let allowed = "off, error, warn, info, debug, trace, or tracing EnvFilter directives \
                       such as \"info,kproxy::actors=debug\"";
        let level = l.level.trim();
        // A single bare word must be a level: EnvFilter would read a misspelt level ("debg") as
        // a target name and silently log nothing.
        let is_directive_list = level.contains('=') || level.contains(',') || level.contains(':');
        let bare_ok = matches!(
            level.to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info" | "debug" | "trace"
        );
        if level.is_empty() || (!is_directive_list && !bare_ok) {
            return Err(self.invalid("logging.level", l.level.as_str(), "is not a level", allowed));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
            return Err(self.invalid(
                "logging.level",
                l.level.as_str(),
                &format!("is not a valid filter ({e})"),
                allowed,
            ));
        }
        Ok(Logging {
            format,
            level: level.to_string(),
        })
    }
}
