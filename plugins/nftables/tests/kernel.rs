//! The apply layer against a real kernel, each test in a scratch network namespace: full and
//! incremental syncs end in the same table, hand edits are put right, a refused transaction
//! leaves the previous rules serving, cleanup removes only kproxy's tables, and ClientIP
//! affinity survives a full sync.

mod support;

use kproxy_plugin_api::{
    ChangeSet, ErrorCode, IpMode, Plugin, Protocol, ProxyState, ServicePortKey,
};
use kproxy_plugin_nftables::sample::{self, PortBuilder};
use support::{assert_same_table, changes, dataplane, Netns};

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
        .endpoint("10.244.3.6", 8080, false)
        .endpoint("10.244.3.7", 8080, false)
        .build(),
        PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.53", 53)
            .affinity(300)
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
    ])
}

fn full() -> ChangeSet {
    ChangeSet {
        full: true,
        changed: Default::default(),
    }
}

#[test]
fn incremental_sync_ends_in_the_same_table_as_a_full_sync() {
    let Some(ns) = Netns::create() else { return };
    let (a, b) = (state_a(), state_b());
    let (incremental, fresh) = ns.run(|| {
        let mut dp = dataplane(sample::settings(), "");
        let first = dp.sync(&a, &full()).expect("full sync of A");
        assert!(first.full);
        let second = dp
            .sync(&b, &changes(false, &a, &b))
            .expect("incremental sync to B");
        assert!(
            !second.full,
            "an incremental change set must not cause a full sync"
        );
        assert!(second.objects_written < first.objects_written);
        let incremental = (ns.table("ip", "kproxy"), ns.table("ip6", "kproxy"));
        dp.sync(&b, &full()).expect("full sync of B");
        let fresh = (ns.table("ip", "kproxy"), ns.table("ip6", "kproxy"));
        let c = dp.counters();
        assert_eq!((c.syncs, c.full_syncs, c.failed_syncs), (3, 2, 0));
        (incremental, fresh)
    });
    let (inc4, inc6) = incremental;
    let inc4_map = inc4.as_ref().expect("ip table");
    assert!(
        inc4_map.contains_key("map/service-ips")
            && inc4_map
                .keys()
                .filter(|k| k.starts_with("map/endpoints-")
                    && inc4_map[k.as_str()].get("elem").is_some())
                .count()
                >= 3,
        "{inc4_map:?}"
    );
    let (full4, full6) = fresh;
    assert_same_table(&inc4.expect("ip table"), &full4.expect("ip table"), "ip");
    assert_same_table(&inc6.expect("ip6 table"), &full6.expect("ip6 table"), "ip6");
}

#[test]
fn unchanged_incremental_sync_does_not_call_nft() {
    let Some(ns) = Netns::create() else { return };
    let a = state_a();
    ns.run(|| {
        let mut dp = dataplane(sample::settings(), "");
        dp.sync(&a, &full()).unwrap();
        let report = dp.sync(&a, &changes(false, &a, &a)).unwrap();
        assert_eq!(report.objects_written, 0);
        assert_eq!(dp.counters().noop_syncs, 1);
    });
}

#[test]
fn a_full_sync_puts_a_hand_edited_table_right() {
    let Some(ns) = Netns::create() else { return };
    let a = state_a();
    let (before, after) = ns.run(|| {
        let mut dp = dataplane(sample::settings(), "");
        dp.sync(&a, &full()).unwrap();
        let before = ns.table("ip", "kproxy").unwrap();
        for edit in [
            "add rule ip kproxy services ip daddr 1.2.3.4 drop",
            "add element ip kproxy service-ips { 10.96.9.9 . tcp . 80 : drop }",
            "add chain ip kproxy intruder",
            "delete chain ip kproxy reject-chain",
            "flush set ip kproxy no-endpoint-services-reject",
        ] {
            let (ok, _, err) = ns.try_exec(&["nft", edit]);
            // Deleting a chain that is still referenced is refused by the kernel; the others
            // go through. Either way the next full sync must restore the table.
            let _ = (ok, err);
        }
        assert_ne!(
            ns.table("ip", "kproxy").unwrap(),
            before,
            "the edits took effect"
        );
        dp.sync(&a, &full()).unwrap();
        (before, ns.table("ip", "kproxy").unwrap())
    });
    assert_same_table(&after, &before, "after the repair");
}

#[test]
fn a_refused_transaction_keeps_the_old_rules_and_the_next_sync_is_full() {
    // The kernel refuses to delete a chain something still jumps to. A hand edit makes one of
    // kproxy's endpoint chains (a ClientIP-affinity service's) such a target, and the next
    // sync removes that endpoint.
    for writer in ["netlink", "nft"] {
        let Some(ns) = Netns::create() else { return };
        let a = state_a();
        let mut services = a.services.to_vec();
        let dns = services
            .iter_mut()
            .find(|s| s.key.name.as_str() == "dns")
            .expect("dns");
        let mut endpoints = dns.endpoints.to_vec();
        endpoints[0].ip = sample::ip("10.244.1.8");
        dns.endpoints = endpoints.into();
        let without = sample::state(services);
        let key = ServicePortKey::new("kube-system", "dns", "dns", Protocol::Udp);
        let victim = kproxy_plugin_nftables::names::endpoint_object(
            kproxy_plugin_nftables::names::Kind::Endpoint,
            &key,
            sample::ip("10.244.1.7"),
            53,
        );
        ns.run(|| {
            let mut dp = dataplane(sample::settings(), &format!("writer = \"{writer}\""));
            dp.sync(&a, &full()).unwrap();
            ns.exec(&["nft", "add", "chain", "ip", "kproxy", "hand-made"]);
            ns.exec(&[
                "nft",
                "add",
                "rule",
                "ip",
                "kproxy",
                "hand-made",
                "jump",
                &victim,
            ]);
            let before = ns.table("ip", "kproxy").unwrap();
            let err = dp
                .sync(
                    &without,
                    &ChangeSet {
                        full: false,
                        changed: vec![key.clone()].into(),
                    },
                )
                .expect_err("the kernel must refuse to delete a chain in use");
            assert_eq!(err.code, ErrorCode::Kernel);
            assert!(err.retryable);
            let m = err.message.as_str();
            eprintln!("[{writer}] the refused sync said: {m}");
            assert!(m.contains(&victim), "the refused object is named: {m}");
            assert!(
                m.to_lowercase().contains("busy"),
                "the kernel's message (EBUSY): {m}"
            );
            if writer == "nft" {
                assert!(m.contains("`nft -f -` failed"), "{m}");
                assert!(m.contains("at script line "), "{m}");
            } else {
                assert!(m.contains("nf_tables netlink transaction"), "{m}");
                assert!(m.contains("delete chain"), "{m}");
            }
            assert_same_table(
                &ns.table("ip", "kproxy").unwrap(),
                &before,
                "after the failure",
            );

            // The next sync, even if only incremental was asked for, is full: it re-creates
            // the table (the hand edit goes) and succeeds.
            let report = dp.sync(&without, &changes(false, &a, &without)).unwrap();
            assert!(report.full);
            assert_eq!(dp.counters().failed_syncs, 1);
            let listing = ns.exec(&["nft", "list", "table", "ip", "kproxy"]);
            assert!(!listing.contains("hand-made"), "{listing}");
            assert!(!listing.contains(&victim), "{listing}");
        });
    }
}

#[test]
fn cleanup_removes_kproxy_tables_and_nothing_else() {
    let Some(ns) = Netns::create() else { return };
    ns.exec(&["nft", "add table ip bystander; add chain ip bystander c"]);
    let a = state_a();
    ns.run(|| {
        let mut dp = dataplane(sample::settings(), "table = \"kproxy-test\"");
        dp.sync(&a, &full()).unwrap();
        assert!(ns.table("ip", "kproxy-test").is_some());
        assert!(ns.table("ip6", "kproxy-test").is_some());
        dp.cleanup().unwrap();
        // Cleaning up twice is fine.
        dp.cleanup().unwrap();
    });
    assert!(ns.table("ip", "kproxy-test").is_none());
    assert!(ns.table("ip6", "kproxy-test").is_none());
    assert!(ns.table("ip", "bystander").is_some());
}

#[test]
fn disabling_a_family_removes_its_table() {
    let Some(ns) = Netns::create() else { return };
    let a = state_a();
    ns.run(|| {
        dataplane(sample::settings(), "").sync(&a, &full()).unwrap();
        let mut v4_only = sample::settings();
        v4_only.ipv6 = false;
        dataplane(v4_only, "").sync(&a, &full()).unwrap();
    });
    assert!(ns.table("ip", "kproxy").is_some());
    assert!(ns.table("ip6", "kproxy").is_none());
}

#[test]
fn affinity_entries_survive_a_full_sync() {
    let Some(ns) = Netns::create() else { return };
    let a = state_a();
    ns.run(|| {
        let mut dp = dataplane(sample::settings(), "");
        dp.sync(&a, &full()).unwrap();
        let table = ns.table("ip", "kproxy").unwrap();
        let set = table
            .keys()
            .find(|k| k.starts_with("set/affinity-"))
            .expect("an affinity set")
            .trim_start_matches("set/")
            .to_string();
        ns.exec(&[
            "nft",
            &format!("add element ip kproxy {set} {{ 10.244.9.9 }}"),
        ]);
        dp.sync(&a, &full()).unwrap();
        let (_, out, _) = ns.try_exec(&["nft", "list", "set", "ip", "kproxy", &set]);
        assert!(out.contains("10.244.9.9"), "entry lost:\n{out}");
    });
}
