//! kproxy's iptables dataplane, as the benchmark sees it: the `nat` and `filter` tables of the
//! back end the plugin uses in the lab's node namespace (iptables-nft or iptables-legacy): the
//! one its section names, else the plugin's detection as it plays out in the benchmark's own
//! namespace, where no kubelet leaves hints and nothing but kproxy writes iptables — the back
//! end that holds `KPROXY-SERVICES`, and iptables-nft when neither does (the plugin's tie rule).
//!
//! - The reference is the back end's own plain `iptables-restore -w` of what `iptables-save`
//!   printed, which replaces each table it names whole in one transaction: into empty tables,
//!   and over the same rules. That is the floor of loading these rules. kproxy cannot write
//!   that way (it would wipe every other agent's rules in those tables), so it writes with
//!   `--noflush`, as upstream does; on iptables-nft 1.8 one such transaction is quadratic in
//!   chains, which the plugin avoids by cutting large restores into transactions.
//! - One change is the nf_tables commit that adds or deletes the endpoint's `KPROXY-SEP-`
//!   chain. iptables-nft commits through nf_tables, so the commit monitor sees it; chain names
//!   are hashes (upstream's scheme, which the plugin keeps), so the name is computed for every
//!   benchmark service until one matches (after the commit was timestamped, so the search costs
//!   the measurement nothing). iptables-legacy
//!   does not commit through nf_tables: on that back end no change is seen (all are counted
//!   lost).
//! - The floor under one change is the smallest restore of the kind a change runs: one chain
//!   with one jump, with `iptables-restore --noflush -w`, process start included (kproxy pays
//!   it on every change too).
//!
//! The lab's node namespace is the benchmark's own and nothing but the dataplane writes its
//! iptables tables, so clearing empties `nat` and `filter` outright: one plain restore, fast at
//! any size, where `kproxy cleanup` would first read the table (`iptables-nft-save` is
//! quadratic in chains).

//!
//! The plugin crate itself is not linked in (it exports a plugin root module, as the nftables
//! plugin the benchmark links does, and the two symbols collide): its chain naming is repeated
//! here, pinned to upstream's own test vector.

use super::Dataplane;
use crate::{cluster, datapath, nfmon::Generation};
use anyhow::{anyhow, bail, Context as _};
use kproxy_lab::{Lab, Place};
use sha2::{Digest, Sha256};
use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The tables kproxy's iptables plugin writes.
const TABLES: [&str; 2] = ["nat", "filter"];

/// The root of kproxy's nat dispatch; whichever back end holds it is the one kproxy used.
const SERVICES_CHAIN: &str = "KPROXY-SERVICES";

/// kproxy's chain that sets the masquerade mark: the floor's jump target (always present).
const MARK_MASQ_CHAIN: &str = "KPROXY-MARK-MASQ";

/// The prefix of an endpoint's chain (upstream's `KUBE-SEP-`).
const ENDPOINT_PREFIX: &str = "KPROXY-SEP-";

/// The chain the floor measurement adds and removes (kproxy's prefix, so `kproxy cleanup`
/// would remove it if a run were interrupted).
const FLOOR_CHAIN: &str = "KPROXY-BENCH-FLOOR";

/// The highest service index tried when identifying an endpoint's chain: above the largest
/// size (44,000 services).
const MAX_SERVICES: usize = 100_000;

/// An iptables back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

impl Backend {
    /// `iptables-<backend>[-<what>]`.
    fn binary(self, what: Option<&str>) -> String {
        let backend = match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        match what {
            Some(what) => format!("iptables-{backend}-{what}"),
            None => format!("iptables-{backend}"),
        }
    }
}

/// kproxy's iptables plugin; see the module docs.
#[derive(Debug)]
pub struct Iptables {
    /// Its config section.
    section: String,
    /// The back end the section names, or `None` for `auto`.
    configured: Option<Backend>,
    /// The back end in use, once known.
    backend: OnceLock<Backend>,
}

impl Iptables {
    /// The dataplane configured with `section` (the daemon checks the rest of it).
    pub fn new(section: &str) -> anyhow::Result<Iptables> {
        let table: toml::Table = toml::from_str(section)
            .map_err(|e| anyhow!("[dataplanes.iptables] is not TOML: {e}"))?;
        let configured = match table.get("backend").map(|v| v.as_str()) {
            None | Some(Some("auto")) => None,
            Some(Some("nft")) => Some(Backend::Nft),
            Some(Some("legacy")) => Some(Backend::Legacy),
            Some(other) => bail!(
                "[dataplanes.iptables] backend = {other:?}: expected \"auto\", \"nft\" or \"legacy\""
            ),
        };
        Ok(Iptables {
            section: section.to_string(),
            configured,
            backend: OnceLock::new(),
        })
    }

    /// The back end (see the module docs); decided once.
    fn backend(&self, lab: &Lab) -> anyhow::Result<Backend> {
        if let Some(b) = self.backend.get() {
            return Ok(*b);
        }
        let b = match self.configured {
            Some(b) => b,
            None => {
                let holds = |b: Backend| -> anyhow::Result<bool> {
                    let Some(path) = locate(&b.binary(None)) else {
                        return Ok(false);
                    };
                    let path = path.to_string_lossy().into_owned();
                    let args = [path.as_str(), "-w", "-t", "nat", "-S", SERVICES_CHAIN];
                    Ok(lab.exec(&Place::Node, &args)?.status.success())
                };
                if !holds(Backend::Nft)? && holds(Backend::Legacy)? {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            }
        };
        Ok(*self.backend.get_or_init(|| b))
    }

    /// The path of `iptables-<backend>-<what>` (`restore`, `save`).
    fn tool(&self, lab: &Lab, what: &str) -> anyhow::Result<PathBuf> {
        let name = self.backend(lab)?.binary(Some(what));
        locate(&name).with_context(|| format!("{name} is not installed"))
    }

    /// Runs the restore tool with `args` in the node namespace, feeding it `input`, and times
    /// it from spawn to exit.
    fn restore(&self, lab: &Lab, args: &[&str], input: &str) -> anyhow::Result<Duration> {
        let path = self.tool(lab, "restore")?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let input = input.to_string();
        lab.run_in(&Place::Node, move || run_timed(&path, &args, &input))?
    }
}

/// Finds a binary in `PATH`, then in `/usr/sbin` and `/sbin` (where Debian installs
/// iptables), as the plugin does.
fn locate(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Spawns `path args`, writes `input` to its stdin, waits; the time from spawn to exit.
fn run_timed(path: &Path, args: &[String], input: &str) -> anyhow::Result<Duration> {
    let command = format!("{} {}", path.display(), args.join(" "));
    let started = Instant::now();
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command}"))?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    // A failed write (the tool died early) shows in its status and stderr below.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let output = child.wait_with_output()?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "{command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(took)
}

/// The benchmark's service names (see [`crate::cluster`]), the data path's probe first.
fn service_names() -> impl Iterator<Item = String> {
    std::iter::once(datapath::PROBE_SERVICE.to_string())
        .chain((0..MAX_SERVICES).map(cluster::service_name))
}

/// The `KPROXY-SEP-` chain kproxy names for `endpoint` of service `service`'s only port
/// (`http`, TCP; see [`cluster::service`]).
pub fn endpoint_chain(service: &str, endpoint: Ipv4Addr) -> String {
    let port = format!("{}/{service}:http", cluster::NAMESPACE);
    sep_chain(
        &port,
        "tcp",
        &format!("{endpoint}:{}", cluster::TARGET_PORT),
    )
}

/// Upstream's endpoint chain name with kproxy's prefix: the prefix and the first 16 base32
/// (RFC 4648) characters of SHA-256(`namespace/name:port` + protocol + `ip:port`).
fn sep_chain(service_port: &str, protocol: &str, endpoint: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(format!("{service_port}{protocol}{endpoint}").as_bytes());
    // 16 characters of 5 bits = 80 bits = the first 10 bytes.
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let hash: String = (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 0x1f) as usize] as char)
        .collect();
    format!("{ENDPOINT_PREFIX}{hash}")
}

impl Dataplane for Iptables {
    fn name(&self) -> &str {
        "iptables"
    }

    fn plugin_section(&self) -> String {
        self.section.clone()
    }

    fn reference_name(&self) -> &str {
        "iptables-restore"
    }

    fn dump(&self, lab: &Lab) -> anyhow::Result<String> {
        let save = self.tool(lab, "save")?;
        let mut out = String::new();
        for table in TABLES {
            let save = save.to_string_lossy().into_owned();
            out.push_str(&lab.exec_ok(&Place::Node, &[&save, "-t", table])?);
        }
        Ok(out)
    }

    fn clear(&self, lab: &Lab) -> anyhow::Result<()> {
        // A plain restore replaces every table it names: both come back empty.
        let empty: String = TABLES.iter().map(|t| format!("*{t}\nCOMMIT\n")).collect();
        self.restore(lab, &["-w"], &empty)
            .context("emptying nat and filter")?;
        Ok(())
    }

    fn apply_reference(&self, lab: &Lab, file: &Path, replacing: bool) -> anyhow::Result<Duration> {
        let dump = std::fs::read_to_string(file)?;
        if !replacing {
            self.clear(lab)?;
        }
        self.restore(lab, &["-w"], &dump)
            .context("iptables-restore of the saved rules")
    }

    fn is_change_commit(&self, g: &Generation, endpoint: Ipv4Addr) -> bool {
        let sep: Vec<&String> = g
            .chains
            .iter()
            .filter(|c| c.starts_with(ENDPOINT_PREFIX))
            .collect();
        if sep.is_empty() {
            return false;
        }
        service_names().any(|s| {
            let wanted = endpoint_chain(&s, endpoint);
            sep.iter().any(|c| **c == wanted)
        })
    }

    fn commit_floor(&self, lab: &Lab, samples: usize) -> anyhow::Result<Option<Vec<Duration>>> {
        let add = format!(
            "*nat\n:{FLOOR_CHAIN} - [0:0]\n-A {FLOOR_CHAIN} -j {MARK_MASQ_CHAIN}\nCOMMIT\n"
        );
        let delete = format!("*nat\n:{FLOOR_CHAIN} - [0:0]\n-X {FLOOR_CHAIN}\nCOMMIT\n");
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            out.push(self.restore(lab, &["--noflush", "-w"], &add)?);
            self.restore(lab, &["--noflush", "-w"], &delete)?;
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_chains_are_named_as_upstream_names_them() {
        // Upstream's proxier tests call this chain KUBE-SEP-SXIVWICOYRO3J4NJ (the plugin's
        // names.rs pins the same vector).
        assert_eq!(
            sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KPROXY-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn an_endpoint_chain_is_found_among_the_benchmark_services() {
        let ip = Ipv4Addr::new(10, 192, 0, 7);
        let dp = Iptables::new("").unwrap();
        let g = |chains: Vec<String>| Generation {
            at: Instant::now(),
            id: 1,
            process: "iptables-nft-re".into(),
            chains,
            elements: Vec::new(),
            objects: 2,
        };
        let chain = endpoint_chain(&cluster::service_name(4_321), ip);
        assert!(chain.starts_with("KPROXY-SEP-"));
        assert!(dp.is_change_commit(&g(vec!["KPROXY-SVC-X".into(), chain.clone()]), ip));
        // Another endpoint's chain, or no endpoint chain at all, is not this change.
        assert!(!dp.is_change_commit(&g(vec![chain]), Ipv4Addr::new(10, 192, 0, 8)));
        assert!(!dp.is_change_commit(&g(vec!["KPROXY-SVC-X".into()]), ip));
        assert!(Iptables::new("backend = \"nope\"").is_err());
        assert_eq!(
            Iptables::new("backend = \"legacy\"").unwrap().configured,
            Some(Backend::Legacy)
        );
    }
}
