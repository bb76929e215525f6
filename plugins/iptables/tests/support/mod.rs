//! Scratch network namespaces for the plugin's kernel tests: unique names, removed on drop,
//! and every iptables command run inside one — never in the host's namespace.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use kproxy_lab::netns;
use kproxy_plugin_api::{
    ChangeSet, HostContext, Plugin, ProxySettings, ProxyState, ServicePortKey,
};
use kproxy_plugin_iptables::{backend::Backend, IptablesDataplane};
use std::{
    collections::BTreeMap,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Both back ends, by the name the config uses.
pub const BACKENDS: [(Backend, &str); 2] = [(Backend::Nft, "nft"), (Backend::Legacy, "legacy")];

/// A network namespace made for one test.
pub struct Scratch {
    /// Its name under `/run/netns`.
    pub name: String,
}

impl Scratch {
    /// Makes a fresh namespace, or `None` (with the reason printed) when not root outside CI.
    /// Under `CI=true` a missing privilege fails the test.
    pub fn create() -> Option<Scratch> {
        if let Err(why) = kproxy_lab::privileges() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and this test cannot run: it needs root ({why})");
            }
            eprintln!("skipping: this test needs root ({why})");
            return None;
        }
        let name = format!(
            "kpipt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        netns::create(&name).expect("create a scratch namespace");
        Some(Scratch { name })
    }

    /// Runs `f` on a thread inside the namespace; processes it starts run there too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&self.name, f).expect("enter the scratch namespace")
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

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_exec(args);
        assert!(ok, "{args:?} failed: {err}");
        out
    }

    /// `iptables-<backend>-save` (v4 or v6) of the namespace, normalised for comparison:
    /// per table, chain → rules, without the counters and comment lines.
    pub fn save(
        &self,
        backend: Backend,
        v6: bool,
    ) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
        let bin = format!(
            "{}-{}-save",
            if v6 { "ip6tables" } else { "iptables" },
            backend.as_str()
        );
        let text = self.exec(&[&bin]);
        kproxy_plugin_iptables::ruleset::parse_chains(&text)
    }

    /// Only kproxy's chains of [`Scratch::save`] (and the built-in chains' rules).
    pub fn kproxy_chains(
        &self,
        backend: Backend,
        v6: bool,
    ) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
        let mut all = self.save(backend, v6);
        for chains in all.values_mut() {
            chains.retain(|name, rules| name.starts_with("KPROXY-") || !rules.is_empty());
        }
        all.retain(|_, chains| !chains.is_empty());
        all
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = netns::delete(&self.name);
    }
}

/// A dataplane built the way the daemon builds it, with `config` as its TOML section.
pub fn dataplane(settings: ProxySettings, config: &str) -> IptablesDataplane {
    let ctx = HostContext {
        plugin_config: config.into(),
        settings,
        node: kproxy_dataplane_common::sample::node(),
    };
    IptablesDataplane::new(&ctx).expect("build dataplane")
}

/// A full change set.
pub fn full() -> ChangeSet {
    ChangeSet {
        full: true,
        changed: Default::default(),
    }
}

/// A partial change set naming every key of both states.
pub fn changes(a: &ProxyState, b: &ProxyState) -> ChangeSet {
    let mut keys: Vec<ServicePortKey> = a
        .services
        .iter()
        .chain(b.services.iter())
        .map(|s| s.key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    ChangeSet {
        full: false,
        changed: keys.into(),
    }
}

/// Asserts two normalised saves are equal, naming the chains that differ.
pub fn assert_same(
    a: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    b: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    what: &str,
) {
    let mut diffs = Vec::new();
    let tables: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for t in tables {
        let empty = BTreeMap::new();
        let (ca, cb) = (a.get(t).unwrap_or(&empty), b.get(t).unwrap_or(&empty));
        let chains: std::collections::BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
        for c in chains {
            if ca.get(c) != cb.get(c) {
                diffs.push(format!(
                    "{t}/{c}:\n  left:  {:?}\n  right: {:?}",
                    ca.get(c),
                    cb.get(c)
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: rules differ:\n{}",
        diffs.join("\n")
    );
}
