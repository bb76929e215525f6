//! The apply layer against a real kernel, on both back ends, each test in scratch network
//! namespaces: a partial sync ends where a full sync does, a second full sync leaves the jumps
//! alone, hand edits are put right, a refused restore keeps the old rules and makes the next
//! sync full, cleanup removes only kproxy's chains and jumps (a kube-proxy's stay), and the
//! back end is detected as upstream detects it.

mod support;

use kproxy_dataplane_common::sample::{self, PortBuilder};
use kproxy_plugin_api::{ErrorCode, IpFamily, IpMode, Plugin, Protocol, ProxyState};
use kproxy_plugin_iptables::{
    backend::{self, Backend},
    config::DispatchMode,
    full_restore_input,
    ruleset::{self, Saved},
};
use support::{assert_same, changes, dataplane, full, Scratch, BACKENDS};

fn state_a() -> ProxyState {
    sample::state(vec![
        PortBuilder::new(
            "default",
            "web",
            "http",
            Protocol::Tcp,
            "10.96.0.10,fd00:96::10",
            80,
        )
        .node_port(30080)
        .endpoint("10.244.1.5", 8080, true)
        .endpoint("10.244.2.6", 8080, false)
        .endpoint("fd00:244:0:1::5", 8080, true)
        .build(),
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53)
            .affinity(300)
            .endpoint("10.244.1.7", 53, true)
            .build(),
        PortBuilder::new("default", "lb", "", Protocol::Tcp, "10.96.0.30", 443)
            .lb_ip("198.51.100.1", IpMode::Vip)
            .lb_ip("198.51.100.2", IpMode::Proxy)
            .source_range("203.0.113.0/24")
            .node_port(30081)
            .external_local(32000)
            .endpoint("10.244.1.9", 8443, true)
            .endpoint("10.244.2.9", 8443, false)
            .build(),
        PortBuilder::new("default", "empty", "", Protocol::Sctp, "10.96.0.40", 9000)
            .external_ip("203.0.113.40")
            .build(),
        PortBuilder::new("default", "itp", "", Protocol::Tcp, "10.96.0.50", 80)
            .internal_local()
            .endpoint("10.244.2.50", 80, false)
            .build(),
    ])
}

fn state_b() -> ProxyState {
    let mut ports = vec![
        PortBuilder::new(
            "default",
            "web",
            "http",
            Protocol::Tcp,
            "10.96.0.10,fd00:96::10",
            80,
        )
        .node_port(30080)
        .endpoint("10.244.1.5", 8080, true)
        .endpoint("10.244.3.6", 8080, false)
        .endpoint("10.244.3.7", 8080, false)
        .build(),
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53)
            .affinity(60)
            .endpoint("10.244.1.8", 53, true)
            .build(),
        PortBuilder::new("default", "empty", "", Protocol::Sctp, "10.96.0.40", 9000)
            .external_ip("203.0.113.40")
            .endpoint("10.244.1.40", 9000, true)
            .build(),
        PortBuilder::new("default", "itp", "", Protocol::Tcp, "10.96.0.50", 80)
            .internal_local()
            .endpoint("10.244.2.50", 80, false)
            .build(),
        PortBuilder::new(
            "other",
            "new",
            "",
            Protocol::Tcp,
            "10.96.0.60,fd00:96::60",
            8080,
        )
        .affinity(60)
        .endpoint("fd00:244:0:1::60", 8080, true)
        .build(),
    ];
    // Enough services for a dispatch tree of several levels.
    ports.extend(sample::many_services(120, 1).services.iter().cloned());
    sample::state(ports)
}

fn config(backend: &str) -> String {
    format!("backend = \"{backend}\"")
}

#[test]
fn a_partial_sync_ends_where_a_full_sync_does() {
    for (backend, name) in BACKENDS {
        let Some(ns) = Scratch::create() else { return };
        let (a, b) = (state_a(), state_b());
        let (partial, fresh) = ns.run(|| {
            let mut dp = dataplane(sample::settings(), &config(name));
            let first = dp.sync(&a, &full()).expect("full sync of A");
            assert!(first.full);
            assert_eq!(dp.backend(), Some(backend));
            let second = dp.sync(&b, &changes(&a, &b)).expect("partial sync to B");
            assert!(!second.full);
            let partial = (ns.save(backend, false), ns.save(backend, true));
            // Back to A and to B again, partially: still the same as a full sync of B.
            dp.sync(&a, &changes(&b, &a))
                .expect("partial sync back to A");
            dp.sync(&b, &changes(&a, &b))
                .expect("partial sync to B again");
            assert_same(&ns.save(backend, false), &partial.0, "B reached twice");
            dp.sync(&b, &full()).expect("full sync of B");
            let fresh = (ns.save(backend, false), ns.save(backend, true));
            let c = dp.counters();
            assert_eq!((c.syncs, c.full_syncs, c.failed_syncs), (5, 2, 0));
            (partial, fresh)
        });
        assert!(
            partial.0["nat"]
                .keys()
                .any(|c| c.starts_with("KPROXY-DSP-")),
            "{name}: B has a dispatch tree"
        );
        assert_same(&partial.0, &fresh.0, &format!("{name} IPv4"));
        assert_same(&partial.1, &fresh.1, &format!("{name} IPv6"));
    }
}

#[test]
fn unchanged_syncs_run_no_restore_and_full_syncs_leave_the_jumps_alone() {
    for (backend, name) in BACKENDS {
        let Some(ns) = Scratch::create() else { return };
        let a = state_a();
        ns.run(|| {
            let mut dp = dataplane(sample::settings(), &config(name));
            dp.sync(&a, &full()).unwrap();
            let restores = dp.counters().restores;
            let report = dp.sync(&a, &changes(&a, &a)).unwrap();
            assert_eq!(report.objects_written, 0);
            assert_eq!(dp.counters().noop_syncs, 1);
            assert_eq!(dp.counters().restores, restores, "{name}: no restore");
            // What the kernel shows of the jumps is exactly what kproxy writes: a full restore
            // planned against it neither deletes nor inserts one.
            for family in [IpFamily::V4, IpFamily::V6] {
                let bin = format!(
                    "{}-{}-save",
                    if family == IpFamily::V4 {
                        "iptables"
                    } else {
                        "ip6tables"
                    },
                    backend.as_str()
                );
                let out = std::process::Command::new(&bin).output().unwrap();
                let saved = Saved::parse(&String::from_utf8_lossy(&out.stdout));
                let text = full_restore_input(
                    &sample::settings(),
                    &a,
                    family,
                    DispatchMode::Tree,
                    false,
                    saved,
                    ruleset::Commits::PerTable,
                )
                .text;
                assert!(
                    !text
                        .lines()
                        .any(|l| l.starts_with("-I ") || l.starts_with("-D ")),
                    "{name} {family:?}: jumps churn:\n{}",
                    text.lines()
                        .filter(|l| l.starts_with("-I ") || l.starts_with("-D "))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            let before = ns.save(backend, false);
            let again = dp.sync(&a, &full()).unwrap();
            assert_same(&ns.save(backend, false), &before, name);
            // Every rule reads back exactly as rendered, so a full sync of an unchanged node
            // writes nothing — also with a multi-level dispatch tree and every rule kind.
            assert_eq!(
                again.objects_written, 0,
                "{name}: resync of A wrote something"
            );
            let b = state_b();
            dp.sync(&b, &full()).unwrap();
            let restores = dp.counters().restores;
            let again = dp.sync(&b, &full()).unwrap();
            assert_eq!(
                again.objects_written, 0,
                "{name}: resync of B wrote something"
            );
            assert_eq!(
                dp.counters().restores,
                restores,
                "{name}: resync ran a restore"
            );
        });
    }
}

#[test]
fn a_full_sync_puts_hand_edits_right() {
    for (backend, name) in BACKENDS {
        let Some(ns) = Scratch::create() else { return };
        let a = state_a();
        let ipt = format!("iptables-{name}");
        ns.run(|| {
            let mut dp = dataplane(sample::settings(), &config(name));
            dp.sync(&a, &full()).unwrap();
            let before = ns.save(backend, false);
            for edit in [
                vec![
                    "-t",
                    "nat",
                    "-I",
                    "KPROXY-SERVICES",
                    "-d",
                    "1.2.3.4",
                    "-j",
                    "RETURN",
                ],
                vec!["-t", "nat", "-N", "KPROXY-INTRUDER"],
                vec!["-t", "nat", "-F", "KPROXY-POSTROUTING"],
                vec![
                    "-t",
                    "nat",
                    "-D",
                    "PREROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    "kproxy service portals",
                    "-j",
                    "KPROXY-SERVICES",
                ],
                vec!["-t", "filter", "-A", "FORWARD", "-j", "KPROXY-FORWARD"],
            ] {
                let mut args = vec![ipt.as_str(), "-w"];
                args.extend(edit.iter().copied());
                ns.exec(&args);
            }
            assert_ne!(
                ns.save(backend, false),
                before,
                "{name}: the edits took effect"
            );
            dp.sync(&a, &full()).unwrap();
            assert_same(
                &ns.save(backend, false),
                &before,
                &format!("{name}: after the repair"),
            );
        });
    }
}

#[test]
fn a_refused_restore_keeps_the_old_rules_and_the_next_sync_is_full() {
    for (backend, name) in BACKENDS {
        let Some(ns) = Scratch::create() else { return };
        let a = state_a();
        // B drops `default/web`, whose service chain a user's rule still points at.
        let mut services = a.services.to_vec();
        services.retain(|s| s.key.name.as_str() != "web");
        let b = sample::state(services);
        let ipt = format!("iptables-{name}");
        ns.run(|| {
            let mut dp = dataplane(sample::settings(), &config(name));
            dp.sync(&a, &full()).unwrap();
            let svc = kproxy_plugin_iptables::names::service_chain(
                kproxy_plugin_iptables::names::Kind::ClusterPolicy,
                &a.services
                    .iter()
                    .find(|s| s.key.name.as_str() == "web")
                    .unwrap()
                    .key,
            );
            ns.exec(&[&ipt, "-w", "-t", "nat", "-N", "USER-CHAIN"]);
            ns.exec(&[&ipt, "-w", "-t", "nat", "-A", "USER-CHAIN", "-j", &svc]);
            let before = ns.save(backend, false);
            let err = dp.sync(&b, &changes(&a, &b)).unwrap_err();
            assert_eq!(err.code, ErrorCode::Kernel);
            assert!(err.retryable);
            let m = err.message.as_str();
            assert!(
                m.contains(&format!("iptables-{name}-restore --noflush -w` failed")),
                "{m}"
            );
            assert!(m.contains("at input line") && m.contains("stderr:"), "{m}");
            // The nat table was refused whole (and filter, written after it, never applied).
            assert_eq!(
                ns.save(backend, false)["nat"],
                before["nat"],
                "{name}: nat unchanged"
            );
            assert_eq!(dp.counters().failed_syncs, 1);
            // The user fixes their rule; the next sync is full although the change set is not.
            ns.exec(&[&ipt, "-w", "-t", "nat", "-F", "USER-CHAIN"]);
            let report = dp.sync(&b, &changes(&b, &b)).expect("retry");
            assert!(report.full, "{name}: a sync after a failure is full");
            assert!(!ns.save(backend, false)["nat"].contains_key(&svc));
        });
    }
}

#[test]
fn cleanup_removes_only_kproxy_beside_a_kube_proxy() {
    for (backend, name) in BACKENDS {
        let Some(ns) = Scratch::create() else { return };
        let ipt = format!("iptables-{name}");
        let ip6t = format!("ip6tables-{name}");
        // A kube-proxy look-alike and a user's rule, made before kproxy arrives.
        for cmd in [&ipt, &ip6t] {
            for args in [
                vec!["-t", "nat", "-N", "KUBE-SERVICES"],
                vec![
                    "-t",
                    "nat",
                    "-A",
                    "KUBE-SERVICES",
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "RETURN",
                ],
                vec![
                    "-t",
                    "nat",
                    "-I",
                    "PREROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    "kubernetes service portals",
                    "-j",
                    "KUBE-SERVICES",
                ],
                vec![
                    "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
                ],
            ] {
                let mut full_args = vec![cmd.as_str(), "-w"];
                full_args.extend(args);
                ns.exec(&full_args);
            }
        }
        let before = (ns.save(backend, false), ns.save(backend, true));
        ns.run(|| {
            let mut dp = dataplane(sample::settings(), &config(name));
            dp.sync(&state_b(), &full()).unwrap();
            let during = ns.save(backend, false);
            assert!(during["nat"].contains_key("KUBE-SERVICES"));
            assert!(during["nat"].contains_key("KPROXY-SERVICES"));
            dp.cleanup().expect("cleanup");
        });
        assert_same(
            &ns.save(backend, false),
            &before.0,
            &format!("{name} IPv4 after cleanup"),
        );
        assert_same(
            &ns.save(backend, true),
            &before.1,
            &format!("{name} IPv6 after cleanup"),
        );
    }
}

#[test]
fn the_back_end_is_detected_as_upstream_does() {
    // More legacy rules and no hint: legacy.
    let Some(ns) = Scratch::create() else { return };
    for i in 0..3 {
        ns.exec(&[
            "iptables-legacy",
            "-w",
            "-A",
            "INPUT",
            "-s",
            &format!("192.0.2.{i}"),
            "-j",
            "ACCEPT",
        ]);
    }
    let (choice, nft, legacy) = ns.run(backend::detect);
    assert_eq!(choice, Backend::Legacy, "nft {nft:?} legacy {legacy:?}");
    assert_eq!(legacy.rules, 3);
    // The plugin on `auto` uses it.
    let used = ns.run(|| {
        let mut dp = dataplane(sample::settings(), "");
        dp.sync(&state_a(), &full()).unwrap();
        dp.backend()
    });
    assert_eq!(used, Some(Backend::Legacy));
    assert!(ns.save(Backend::Legacy, false)["nat"].contains_key("KPROXY-SERVICES"));

    // Once kproxy runs there, its own chains keep it there, however many rules nft gains.
    for i in 0..10 {
        ns.exec(&[
            "iptables-nft",
            "-w",
            "-A",
            "INPUT",
            "-s",
            &format!("192.0.2.{i}"),
            "-j",
            "ACCEPT",
        ]);
    }
    let (choice, nft, legacy) = ns.run(backend::detect);
    assert!(
        legacy.kproxy && !nft.kproxy,
        "nft {nft:?} legacy {legacy:?}"
    );
    assert_eq!(choice, Backend::Legacy);

    // kubelet's hint in nft wins over legacy's rule count.
    let Some(ns) = Scratch::create() else { return };
    for i in 0..3 {
        ns.exec(&[
            "iptables-legacy",
            "-w",
            "-A",
            "INPUT",
            "-s",
            &format!("192.0.2.{i}"),
            "-j",
            "ACCEPT",
        ]);
    }
    ns.exec(&[
        "iptables-nft",
        "-w",
        "-t",
        "mangle",
        "-N",
        "KUBE-IPTABLES-HINT",
    ]);
    assert_eq!(ns.run(backend::detect).0, Backend::Nft);

    // Nothing anywhere: nft.
    let Some(ns) = Scratch::create() else { return };
    assert_eq!(ns.run(backend::detect).0, Backend::Nft);
}

#[test]
fn a_full_sync_of_a_large_nft_table_checks_jumps_without_reading_the_table() {
    let Some(ns) = Scratch::create() else { return };
    let (a, b) = (state_a(), state_b());
    ns.run(|| {
        let mut dp = dataplane(sample::settings(), &config("nft"));
        // Every table counts as large here.
        dp.set_large_nft_table(1);
        dp.sync(&a, &full()).unwrap();
        let before = ns.save(Backend::Nft, false);
        // A lost jump is found (built-in chains are read one by one) ...
        ns.exec(&[
            "iptables-nft",
            "-w",
            "-t",
            "nat",
            "-D",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "kproxy service portals",
            "-j",
            "KPROXY-SERVICES",
        ]);
        // ... while a stray rule inside a kproxy chain is not looked for.
        ns.exec(&[
            "iptables-nft",
            "-w",
            "-t",
            "nat",
            "-A",
            "KPROXY-MARK-MASQ",
            "-j",
            "RETURN",
        ]);
        let report = dp.sync(&a, &full()).unwrap();
        assert!(report.full);
        let after = ns.save(Backend::Nft, false);
        assert_eq!(after["nat"]["PREROUTING"], before["nat"]["PREROUTING"]);
        assert_eq!(
            after["nat"]["KPROXY-MARK-MASQ"].len(),
            2,
            "the stray rule stays"
        );
        // Changes still land exactly: a full sync of B from memory equals one read from the
        // kernel (after the stray rule is gone).
        ns.exec(&[
            "iptables-nft",
            "-w",
            "-t",
            "nat",
            "-D",
            "KPROXY-MARK-MASQ",
            "-j",
            "RETURN",
        ]);
        dp.sync(&b, &full()).unwrap();
        let from_memory = ns.save(Backend::Nft, false);
        let mut fresh = dataplane(sample::settings(), &config("nft"));
        fresh.sync(&b, &full()).unwrap();
        assert_same(
            &ns.save(Backend::Nft, false),
            &from_memory,
            "large-table full sync",
        );
    });
}

#[test]
fn syncs_cut_into_many_nft_transactions_end_where_one_transaction_does() {
    let (a, b) = (state_a(), state_b());
    let Some(one) = Scratch::create() else { return };
    let whole = one.run(|| {
        let mut dp = dataplane(sample::settings(), &config("nft"));
        dp.sync(&b, &full())
            .expect("full sync of B in one transaction per table");
        assert_eq!(
            dp.counters().restores,
            4,
            "one restore per table and family (nat, then filter after conntrack cleanup)"
        );
        (one.save(Backend::Nft, false), one.save(Backend::Nft, true))
    });
    let Some(many) = Scratch::create() else {
        return;
    };
    many.run(|| {
        let mut dp = dataplane(sample::settings(), &config("nft"));
        // Seven chains per transaction: every sync below takes several.
        dp.set_nft_chains_per_commit(7);
        dp.sync(&a, &full()).expect("full sync of A");
        dp.sync(&b, &changes(&a, &b)).expect("partial sync to B");
        assert_same(
            &many.save(Backend::Nft, false),
            &whole.0,
            "partial sync to B, IPv4",
        );
        assert_same(
            &many.save(Backend::Nft, true),
            &whole.1,
            "partial sync to B, IPv6",
        );
        // Back to A deletes more stale chains than one transaction holds.
        dp.sync(&a, &changes(&b, &a))
            .expect("partial sync back to A");
        let small = many.save(Backend::Nft, false);
        assert!(small["nat"].len() < whole.0["nat"].len());
        dp.sync(&b, &full()).expect("full sync of B");
        assert_same(
            &many.save(Backend::Nft, false),
            &whole.0,
            "full sync of B, IPv4",
        );
        assert_eq!(dp.counters().failed_syncs, 0);
        dp.cleanup_chains().expect("cleanup");
        let left = many.save(Backend::Nft, false);
        assert!(
            left.values()
                .flat_map(|t| t.keys())
                .all(|c| !c.starts_with("KPROXY-")),
            "cleanup in many transactions left chains: {left:?}"
        );
    });
}
