//! Times the plugin's syncs at a given size inside a scratch network namespace (needs root):
//! the first full sync, a second full sync over the same rules (the periodic resync), and a
//! partial sync that changes one endpoint. Not a test: it prints figures.
//!
//! ```text
//! cargo run --release -p kproxy-plugin-iptables --example iptables_sync_bench -- \
//!     [services] [endpoints] [nft|legacy] [tree|linear]
//! ```
//!
//! `KPIPT_DUMP=path` writes the first full sync's restore input to `path` instead of syncing,
//! to time `iptables-restore` on its own. `KPIPT_CHAINS_PER_COMMIT=n` sets how many chains one
//! iptables-nft transaction declares at most (how `NFT_CHAINS_PER_COMMIT` was chosen).

use kproxy_dataplane_common::sample;
use kproxy_plugin_api::{ChangeSet, HostContext, IpFamily, Plugin};
use kproxy_plugin_iptables::{
    config::DispatchMode, full_restore_input, ruleset, IptablesDataplane,
};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(10_000, |a| a.parse().expect("services"));
    let endpoints: usize = args.next().map_or(1, |a| a.parse().expect("endpoints"));
    let backend = args.next().unwrap_or_else(|| "nft".into());
    let dispatch = args.next().unwrap_or_else(|| "tree".into());
    let mut settings = sample::settings();
    settings.ipv6 = false;
    let state = sample::many_services(services, endpoints);

    let mode = if dispatch == "linear" {
        DispatchMode::Linear
    } else {
        DispatchMode::Tree
    };
    let t = Instant::now();
    let per_commit: usize = std::env::var("KPIPT_CHAINS_PER_COMMIT")
        .map_or(ruleset::NFT_CHAINS_PER_COMMIT, |v| {
            v.parse().expect("KPIPT_CHAINS_PER_COMMIT")
        });
    let commits = if backend == "nft" {
        ruleset::Commits::Chains(per_commit)
    } else {
        ruleset::Commits::PerTable
    };
    let input = full_restore_input(
        &settings,
        &state,
        IpFamily::V4,
        mode,
        false,
        Default::default(),
        commits,
    );
    let desired = ruleset::Ruleset::parse(&input.text);
    println!(
        "{services} services x {endpoints} endpoints ({dispatch}): {} chains, {} rules, input {} KiB; render {:.0} ms",
        desired.chain_count(),
        desired.rule_count(),
        input.text.len() / 1024,
        t.elapsed().as_secs_f64() * 1e3
    );
    if let Ok(path) = std::env::var("KPIPT_DUMP") {
        std::fs::write(&path, &input.text).expect("write the input");
        println!("restore input written to {path}");
        return;
    }

    if kproxy_lab::privileges().is_err() {
        eprintln!("iptables_sync_bench needs root for its scratch namespace");
        std::process::exit(2);
    }
    let ns = format!("kpipt-bench-{}", std::process::id());
    kproxy_lab::netns::create(&ns).expect("create the namespace");
    let result = std::panic::catch_unwind(|| {
        kproxy_lab::netns::run_in(&ns, || {
            let ctx = HostContext {
                plugin_config: format!(
                    "backend = \"{backend}\"\ndispatch = \"{dispatch}\"\nconntrack_cleanup = false"
                )
                .into(),
                settings: settings.clone(),
                node: sample::node(),
            };
            let mut dp = IptablesDataplane::new(&ctx).expect("dataplane");
            dp.set_nft_chains_per_commit(per_commit);
            let full = ChangeSet {
                full: true,
                changed: Default::default(),
            };
            for what in ["first full sync", "second full sync"] {
                let t = Instant::now();
                let r = dp.sync(&state, &full).expect("full sync");
                println!(
                    "{what}: {:.0} ms ({} objects)",
                    t.elapsed().as_secs_f64() * 1e3,
                    r.objects_written
                );
            }
            let mut changed = state.clone();
            let mut ports = changed.services.to_vec();
            let i = ports.len() / 2;
            let mut eps = ports[i].endpoints.to_vec();
            eps[0].ready = false;
            eps[0].for_cluster = false;
            eps[0].for_local = false;
            ports[i].endpoints = eps.into();
            let key = ports[i].key.clone();
            changed.services = ports.into();
            let partial = ChangeSet {
                full: false,
                changed: vec![key].into(),
            };
            let t = Instant::now();
            let r = dp.sync(&changed, &partial).expect("partial sync");
            println!(
                "partial sync (one endpoint not ready): {:.1} ms ({} objects)",
                t.elapsed().as_secs_f64() * 1e3,
                r.objects_written
            );
        })
        .expect("enter the namespace")
    });
    let _ = kproxy_lab::netns::delete(&ns);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
