//! Scratch network namespaces for the plugin's kernel tests (until the shared lab in `tests/`
//! can be used): unique names, removed on drop, and a way to run code inside one.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use kproxy_plugin_api::Plugin;
use kproxy_plugin_api::{ChangeSet, HostContext, ProxySettings, ProxyState, ServicePortKey};
use kproxy_plugin_nftables::NftablesDataplane;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made for one test.
pub struct Netns {
    /// Its name under `/var/run/netns`.
    pub name: String,
}

impl Netns {
    /// Makes a fresh namespace, or `None` (with the reason printed) when not root outside CI.
    /// In CI a missing privilege fails the test.
    pub fn create() -> Option<Netns> {
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("this test needs root (CAP_NET_ADMIN) to make network namespaces");
            }
            eprintln!("skipping: this test needs root to make network namespaces");
            return None;
        }
        let name = format!(
            "kpnft-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Runs `f` on a thread that has entered this namespace; processes it starts (nft) are in
    /// the namespace too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace; returns (success, stdout, stderr).
    pub fn try_exec(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `nft -j list table <family> <table>`, normalised for comparison: handles dropped, set
    /// elements sorted, objects keyed by kind and name, rules grouped per chain in order.
    pub fn table(&self, family: &str, table: &str) -> Option<BTreeMap<String, Value>> {
        let (ok, out, _) = self.try_exec(&["nft", "-j", "list", "table", family, table]);
        if !ok {
            return None;
        }
        Some(normalise(&serde_json::from_str(&out).expect("nft JSON")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command, panicking with its stderr when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn normalise(json: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in json["nftables"].as_array().expect("nftables array") {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("handle");
        }
        match kind.as_str() {
            "metainfo" => {}
            "rule" => rules
                .entry(body["chain"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(body["expr"].clone()),
            "set" | "map" => {
                if let Some(elems) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                    elems.sort_by_key(|e| e.to_string());
                }
                out.insert(
                    format!("{kind}/{}", body["name"].as_str().unwrap_or("")),
                    body,
                );
            }
            _ => {
                out.insert(
                    format!("{kind}/{}", body["name"].as_str().unwrap_or("")),
                    body,
                );
            }
        }
    }
    for (chain, list) in rules {
        out.insert(format!("rules/{chain}"), Value::Array(list));
    }
    out
}

/// Asserts two normalised tables are equal, naming the objects that differ.
pub fn assert_same_table(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>, what: &str) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}:\n  left:  {:?}\n  right: {:?}", a.get(k), b.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: tables differ:\n{}",
        diffs.join("\n")
    );
}

/// A dataplane built the way the daemon builds it, with `config` as its TOML section.
pub fn dataplane(settings: ProxySettings, config: &str) -> NftablesDataplane {
    let ctx = HostContext {
        plugin_config: config.into(),
        settings,
        node: kproxy_plugin_nftables::sample::node(),
    };
    NftablesDataplane::new(&ctx).expect("build dataplane")
}

/// A change set naming every key of both states.
pub fn changes(full: bool, a: &ProxyState, b: &ProxyState) -> ChangeSet {
    let mut keys: Vec<ServicePortKey> = a
        .services
        .iter()
        .chain(b.services.iter())
        .map(|s| s.key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    ChangeSet {
        full,
        changed: keys.into(),
    }
}
