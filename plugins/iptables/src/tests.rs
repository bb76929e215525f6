//! Renderer and restore-planner tests: what a service port turns into, and what a full,
//! partial and cleanup restore writes. No kernel needed.

use crate::{
    config::DispatchMode,
    desired_ruleset, names,
    program::{self, FamilyProgram},
    render::{FamilyCtx, Table},
    ruleset::{self, Commits, Restore, Ruleset, Saved},
};
use kproxy_dataplane_common::sample::{self, PortBuilder};
use kproxy_plugin_api::{IpFamily, IpMode, Protocol, ProxySettings, ProxyState, ServicePortKey};
use std::collections::BTreeSet;

/// The IPv4 context `sample::settings()` renders `state` with.
fn v4_ctx<'a>(settings: &'a ProxySettings, state: &'a ProxyState) -> FamilyCtx<'a> {
    FamilyCtx {
        family: IpFamily::V4,
        settings,
        node: &state.node,
        conntrack_liberal: false,
    }
}

/// A full sync of `state` (IPv4, tree) over a kernel holding `held`: its input and program.
fn full(state: &ProxyState, held: Saved, commits: Commits) -> (Restore, FamilyProgram) {
    let settings = sample::settings();
    let ctx = v4_ctx(&settings, state);
    program::in_memory(|out| program::full_sync(&ctx, true, state, held, commits, out))
}

/// A partial sync from `previous` to `state` re-rendering `changed`: its input and program.
fn partial(
    previous: FamilyProgram,
    state: &ProxyState,
    changed: &[ServicePortKey],
    commits: Commits,
) -> (Restore, FamilyProgram) {
    let settings = sample::settings();
    let ctx = v4_ctx(&settings, state);
    program::in_memory(|out| {
        program::partial_sync(&ctx, true, state, changed, previous, commits, out)
    })
}

fn keys(state: &ProxyState) -> Vec<ServicePortKey> {
    state.services.iter().map(|s| s.key.clone()).collect()
}

fn v4(state: &ProxyState) -> Ruleset {
    desired_ruleset(
        &sample::settings(),
        state,
        IpFamily::V4,
        DispatchMode::Tree,
        false,
    )
}

fn chain<'a>(rs: &'a Ruleset, table: Table, name: &str) -> &'a Vec<String> {
    rs.tables[&table].get(name).unwrap_or_else(|| {
        panic!(
            "no {name} in {}: {:#?}",
            table.name(),
            rs.tables[&table].keys()
        )
    })
}

fn web() -> PortBuilder {
    PortBuilder::new(
        "default",
        "web",
        "http",
        Protocol::Tcp,
        "10.96.0.10,fd00:96::10",
        80,
    )
}

#[test]
fn a_cluster_ip_service_dispatches_balances_and_dnats_as_upstream() {
    let state = sample::state(vec![web()
        .endpoint("10.244.1.5", 8080, true)
        .endpoint("10.244.2.6", 8080, false)
        .build()]);
    let rs = v4(&state);
    let key = &state.services[0].key;
    let svc = names::service_chain(names::Kind::ClusterPolicy, key);
    assert_eq!(
        chain(&rs, Table::Nat, names::SERVICES)[0],
        format!(
            "-d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {svc}"
        )
    );
    let rules = chain(&rs, Table::Nat, &svc);
    assert_eq!(
        rules[0],
        format!(
            "! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {}",
            names::MARK_MASQ
        )
    );
    let sep_a = names::endpoint_chain(key, sample::ip("10.244.1.5"), 8080);
    let sep_b = names::endpoint_chain(key, sample::ip("10.244.2.6"), 8080);
    assert!(
        rules[1].contains("-m statistic --mode random --probability 0.50000000000")
            && rules[1].ends_with(&format!("-j {sep_a}")),
        "{rules:#?}"
    );
    assert!(!rules[2].contains("statistic") && rules[2].ends_with(&format!("-j {sep_b}")));
    assert_eq!(
        chain(&rs, Table::Nat, &sep_a),
        &vec![
            format!("-s 10.244.1.5/32 -m comment --comment \"default/web:http\" -j {}", names::MARK_MASQ),
            "-p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 10.244.1.5:8080".to_string(),
        ]
    );
    // Nothing in filter for a service with endpoints.
    assert!(chain(&rs, Table::Filter, names::SERVICES).is_empty());
    // The IPv6 family sees its own cluster IP, and no endpoints: a reject.
    let rs6 = desired_ruleset(
        &sample::settings(),
        &state,
        IpFamily::V6,
        DispatchMode::Tree,
        false,
    );
    assert_eq!(
        chain(&rs6, Table::Filter, names::SERVICES),
        &vec!["-d fd00:96::10/128 -p tcp -m comment --comment \"default/web:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with tcp-reset".to_string()]
    );
}

#[test]
fn no_endpoints_rejects_everywhere_in_filter() {
    let state = sample::state(vec![PortBuilder::new(
        "default",
        "empty",
        "dns",
        Protocol::Udp,
        "10.96.0.53",
        53,
    )
    .node_port(30053)
    .external_ip("203.0.113.5")
    .lb_ip("198.51.100.5", IpMode::Vip)
    .build()]);
    let rs = v4(&state);
    let nat_chains: Vec<&String> = rs.tables[&Table::Nat].keys().collect();
    assert!(
        nat_chains
            .iter()
            .all(|c| !c.starts_with("KPROXY-SVC-") && !c.starts_with("KPROXY-EXT-")),
        "{nat_chains:?}"
    );
    assert!(chain(&rs, Table::Filter, names::SERVICES)[0]
        .ends_with("-j REJECT --reject-with icmp-port-unreachable"));
    let ext = chain(&rs, Table::Filter, names::EXTERNAL_SERVICES);
    assert_eq!(ext.len(), 3, "{ext:#?}");
    assert!(
        ext[0].starts_with("-d 198.51.100.5/32 -p udp")
            && ext[0].ends_with("-j REJECT --reject-with icmp-port-unreachable")
    );
    assert!(ext[1].starts_with("-d 203.0.113.5/32 -p udp"));
    assert!(ext[2].ends_with(&format!(
        "-m addrtype --dst-type LOCAL -j {}",
        names::EXTERNAL_NODEPORTS
    )));
    assert_eq!(
        chain(&rs, Table::Filter, names::EXTERNAL_NODEPORTS),
        &vec!["-p udp -m comment --comment \"default/empty:dns has no endpoints\" -m udp --dport 30053 -j REJECT --reject-with icmp-port-unreachable".to_string()]
    );
}

#[test]
fn external_policy_local_without_local_endpoints_short_circuits_then_drops() {
    let state = sample::state(vec![PortBuilder::new(
        "default",
        "lb",
        "",
        Protocol::Tcp,
        "10.96.0.30",
        443,
    )
    .node_port(30443)
    .external_local(32000)
    .endpoint("10.244.2.9", 8443, false)
    .build()]);
    let rs = v4(&state);
    let key = &state.services[0].key;
    let ext = names::service_chain(names::Kind::External, key);
    let svc = names::service_chain(names::Kind::ClusterPolicy, key);
    assert_eq!(
        chain(&rs, Table::Nat, names::NODEPORTS),
        &vec![format!(
            "-p tcp -m comment --comment \"default/lb\" -m tcp --dport 30443 -j {ext}"
        )]
    );
    let rules = chain(&rs, Table::Nat, &ext);
    assert_eq!(rules.len(), 3, "{rules:#?}");
    assert!(rules[0].starts_with("-s 10.244.0.0/16 ") && rules[0].ends_with(&format!("-j {svc}")));
    assert!(rules[1].contains("--src-type LOCAL") && rules[1].ends_with(names::MARK_MASQ));
    assert!(rules[2].contains("--src-type LOCAL") && rules[2].ends_with(&svc));
    assert_eq!(
        chain(&rs, Table::Filter, names::EXTERNAL_NODEPORTS),
        &vec!["-p tcp -m comment --comment \"default/lb has no local endpoints\" -m tcp --dport 30443 -j DROP".to_string()]
    );
    assert_eq!(
        chain(&rs, Table::Filter, names::NODEPORTS),
        &vec!["-p tcp -m comment --comment \"default/lb health check node port\" -m tcp --dport 32000 -j ACCEPT".to_string()]
    );
    // The cluster IP still reaches the remote endpoint.
    assert!(chain(&rs, Table::Nat, names::SERVICES)[0].ends_with(&format!("-j {svc}")));
}

#[test]
fn affinity_uses_the_recent_match_with_its_timeout() {
    let state = sample::state(vec![PortBuilder::new(
        "kube-system",
        "dns",
        "dns",
        Protocol::Udp,
        "10.96.0.53",
        53,
    )
    .affinity(300)
    .endpoint("10.244.1.7", 53, true)
    .endpoint("10.244.1.8", 53, true)
    .build()]);
    let rs = v4(&state);
    let key = &state.services[0].key;
    let svc = chain(
        &rs,
        Table::Nat,
        &names::service_chain(names::Kind::ClusterPolicy, key),
    );
    let sep = names::endpoint_chain(key, sample::ip("10.244.1.7"), 53);
    assert!(
        svc[1].contains(&format!(
            "-m recent --rcheck --seconds 300 --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}"
        )),
        "{svc:#?}"
    );
    assert!(chain(&rs, Table::Nat, &sep)[1].contains(&format!(
        "-m recent --set --name {sep} --mask 255.255.255.255 --rsource -m udp -j DNAT"
    )));
}

#[test]
fn source_ranges_guard_lb_ips_only() {
    let state = sample::state(vec![PortBuilder::new(
        "default",
        "lb",
        "",
        Protocol::Tcp,
        "10.96.0.30",
        443,
    )
    .lb_ip("198.51.100.1", IpMode::Vip)
    .lb_ip("198.51.100.2", IpMode::Proxy)
    .source_range("203.0.113.0/24")
    .node_port(30081)
    .endpoint("10.244.1.9", 8443, true)
    .build()]);
    let rs = v4(&state);
    let key = &state.services[0].key;
    let fw = names::service_chain(names::Kind::Firewall, key);
    let ext = names::service_chain(names::Kind::External, key);
    let services = chain(&rs, Table::Nat, names::SERVICES);
    assert!(services
        .iter()
        .any(|r| r.starts_with("-d 198.51.100.1/32") && r.ends_with(&fw)));
    assert!(
        !services.iter().any(|r| r.contains("198.51.100.2")),
        "ipMode Proxy is left alone"
    );
    assert_eq!(
        chain(&rs, Table::Nat, &fw)[0],
        format!("-s 203.0.113.0/24 -m comment --comment \"default/lb loadbalancer IP\" -j {ext}")
    );
    assert!(chain(&rs, Table::Filter, names::PROXY_FIREWALL)[0].ends_with("-j DROP"));
    // The node port goes straight to the external chain.
    assert!(chain(&rs, Table::Nat, names::NODEPORTS)[0].ends_with(&ext));
}

#[test]
fn localhost_node_ports_are_ipv4_only_with_the_anti_martian_rule() {
    let mut settings = sample::settings();
    settings.localhost_node_ports = true;
    let state = sample::state(vec![]);
    let v4 = desired_ruleset(&settings, &state, IpFamily::V4, DispatchMode::Tree, false);
    let tail = chain(&v4, Table::Nat, names::SERVICES)
        .last()
        .unwrap()
        .clone();
    assert!(
        tail.starts_with("-m comment") && tail.ends_with(names::NODEPORTS),
        "{tail}"
    );
    assert!(chain(&v4, Table::Filter, names::FIREWALL)[0].contains("-d 127.0.0.0/8"));
    assert!(v4
        .jumps
        .iter()
        .any(|j| j.from == "OUTPUT" && j.rule.ends_with(names::FIREWALL)));
    let v6 = desired_ruleset(&settings, &state, IpFamily::V6, DispatchMode::Tree, false);
    assert!(chain(&v6, Table::Nat, names::SERVICES)[0].starts_with("! -d ::1/128 "));
    assert!(!v6.tables[&Table::Filter].contains_key(names::FIREWALL));
    settings.localhost_node_ports = false;
    let off = desired_ruleset(&settings, &state, IpFamily::V4, DispatchMode::Tree, false);
    assert!(chain(&off, Table::Nat, names::SERVICES)[0].starts_with("! -d 127.0.0.0/8 "));
    assert!(!off.tables[&Table::Filter].contains_key(names::FIREWALL));
}

#[test]
fn node_port_addresses_limit_the_node_port_jump() {
    let mut settings: ProxySettings = sample::settings();
    settings.node_port_addresses =
        vec![sample::cidr("192.168.0.0/24"), sample::cidr("fd00::/8")].into();
    let rs = desired_ruleset(
        &settings,
        &sample::state(vec![]),
        IpFamily::V4,
        DispatchMode::Tree,
        false,
    );
    assert_eq!(
        chain(&rs, Table::Nat, names::SERVICES),
        &vec![format!(
            "-d 192.168.0.0/24 -m comment --comment \"kproxy service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {}",
            names::NODEPORTS
        )]
    );
}

#[test]
fn masquerade_all_masquerades_every_cluster_ip_connection() {
    let mut settings = sample::settings();
    settings.masquerade_all = true;
    let state = sample::state(vec![web().endpoint("10.244.1.5", 8080, true).build()]);
    let rs = desired_ruleset(&settings, &state, IpFamily::V4, DispatchMode::Tree, false);
    let svc = names::service_chain(names::Kind::ClusterPolicy, &state.services[0].key);
    assert!(chain(&rs, Table::Nat, &svc)[0].starts_with("-d 10.96.0.10/32 -p tcp"));
}

fn many(n: usize) -> ProxyState {
    sample::many_services(n, 2)
}

#[test]
fn tree_and_linear_hold_the_same_service_chains() {
    let state = many(300);
    let tree = v4(&state);
    let linear = desired_ruleset(
        &sample::settings(),
        &state,
        IpFamily::V4,
        DispatchMode::Linear,
        false,
    );
    let services = |rs: &Ruleset| -> Vec<String> {
        rs.tables[&Table::Nat]
            .iter()
            .filter(|(c, _)| !c.starts_with("KPROXY-DSP-"))
            .filter(|(c, _)| c.as_str() != names::SERVICES && c.as_str() != names::NODEPORTS)
            .map(|(c, r)| format!("{c}{r:?}"))
            .collect()
    };
    assert_eq!(services(&tree), services(&linear));
    assert_eq!(chain(&linear, Table::Nat, names::SERVICES).len(), 301);
    assert!(chain(&tree, Table::Nat, names::SERVICES).len() <= 17);
    assert!(tree.tables[&Table::Nat]
        .keys()
        .any(|c| c.starts_with("KPROXY-DSP-")));
}

#[test]
fn a_partial_restore_writes_only_the_changed_service_and_its_dispatch_path() {
    let before = many(2000);
    let mut services = before.services.to_vec();
    services[1234].endpoints.truncate(1);
    let changed = [services[1234].key.clone()];
    let after = sample::state(services);
    let (_, old) = full(&before, Saved::default(), Commits::PerTable);
    let (restore, new) = partial(old, &after, &changed, Commits::PerTable);
    let declared: Vec<&str> = restore
        .text
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .collect();
    // The service chain, the removed endpoint chain; nothing in dispatch (the service keeps its
    // entry) and nothing in filter.
    assert_eq!(declared.len(), 2, "{}", restore.text);
    assert!(!restore.text.contains("*filter"));
    assert_eq!(
        restore
            .text
            .lines()
            .filter(|l| l.starts_with("-X "))
            .count(),
        1
    );
    // What the partial sync remembers is what a full sync of the new state writes.
    let (_, from_scratch) = full(&after, Saved::default(), Commits::PerTable);
    assert_eq!(new, from_scratch);
    // Once applied, re-rendering every port changes nothing.
    let (again, _) = partial(new.clone(), &after, &keys(&after), Commits::PerTable);
    assert_eq!(again, Restore::default());

    // A new service rewrites the dispatch chains on its path only.
    let mut added = after.services.to_vec();
    added.push(
        PortBuilder::new("zz", "new", "", Protocol::Tcp, "10.96.200.1", 80)
            .endpoint("10.244.1.200", 80, true)
            .build(),
    );
    let added_key = [added.last().unwrap().key.clone()];
    let (restore, _) = partial(new, &sample::state(added), &added_key, Commits::PerTable);
    let dispatch_declared = restore
        .text
        .lines()
        .filter(|l| l.starts_with(":KPROXY-DSP-") || l.starts_with(":KPROXY-SERVICES"))
        .count();
    assert!(dispatch_declared <= 4, "{}", restore.text);
    // The new service's chains come before the dispatch that jumps to them.
    let first_dispatch = restore.text.find(":KPROXY-DSP-").unwrap_or(usize::MAX);
    let first_own = restore.text.find(":KPROXY-SVC-").unwrap();
    assert!(first_own < first_dispatch.min(restore.text.find(":KPROXY-SERVICES").unwrap()));
}

#[test]
fn a_full_sync_over_what_the_kernel_holds_writes_nothing() {
    let state = many(300);
    let (first, program) = full(&state, Saved::default(), Commits::PerTable);
    // The kernel, as iptables-save would print it after the first restore: the chains, and
    // the jumps appended to the built-in chains.
    let jumps: String = Ruleset::parse(&first.text)
        .jumps
        .iter()
        .map(|j| format!("*{}\n-A {} {}\nCOMMIT\n", j.table.name(), j.from, j.rule))
        .collect();
    let kernel = Saved::parse(&format!("{}{jumps}", first.text));
    assert_eq!(
        kernel.table(Table::Nat).unwrap().ours.len(),
        program.shared[&Table::Nat].len()
            + program
                .ports
                .values()
                .map(|p| p.chains.len())
                .sum::<usize>()
    );
    let (again, program_again) = full(&state, kernel.clone(), Commits::PerTable);
    assert_eq!(again, Restore::default());
    assert_eq!(program_again, program);
    // The program's own view of the kernel is the same as the kernel's.
    let mut from_program = program.as_saved();
    for (name, table) in &kernel.tables {
        from_program.tables.entry(name.clone()).or_default().others = table.others.clone();
    }
    assert_eq!(from_program, kernel);
}

#[test]
fn a_full_restore_deletes_stale_chains_and_fixes_jumps_only() {
    let state = sample::state(vec![web().endpoint("10.244.1.5", 8080, true).build()]);
    let desired = v4(&state);
    let jumps: String = desired
        .jumps
        .iter()
        .filter(|j| j.table == Table::Nat)
        .map(|j| format!("-A {} {}\n", j.from, j.rule))
        .collect();
    let saved = Saved::parse(&format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KPROXY-SVC-STALE - [0:0]\n{jumps}\
         -A PREROUTING -j KUBE-SERVICES\nCOMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"kproxy old\" -j KPROXY-GONE\n\
         -A INPUT -j ACCEPT\n:KPROXY-GONE - [0:0]\nCOMMIT\n"
    ));
    let (restore, _) = full(&state, saved, Commits::PerTable);
    let text = &restore.text;
    assert!(text.contains(":KPROXY-SVC-STALE - [0:0]\n") && text.contains("-X KPROXY-SVC-STALE\n"));
    assert!(
        !text.contains("KUBE-SERVICES"),
        "a kube-proxy's chains are not ours: {text}"
    );
    // nat jumps were all there: untouched.
    let nat_start = text.find("*nat").unwrap();
    let nat = &text[nat_start..nat_start + text[nat_start..].find("COMMIT").unwrap()];
    assert!(!nat.contains("-I ") && !nat.contains("-D "), "{nat}");
    // filter: the stray jump goes, ours come in at the top, other rules stay.
    assert!(text.contains("-D INPUT -m comment --comment \"kproxy old\" -j KPROXY-GONE\n"));
    assert!(text.contains(&format!(
        "-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kproxy load balancer firewall\" -j {}\n",
        names::PROXY_FIREWALL
    )));
    assert!(!text.contains("-D INPUT -j ACCEPT"));
    assert!(text.contains("-X KPROXY-GONE\n"));
}

#[test]
fn cleanup_removes_only_kproxy() {
    let saved = Saved::parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KPROXY-SERVICES - [0:0]\n:KUBE-SERVICES - [0:0]\n\
         -A PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KPROXY-SERVICES -j RETURN\nCOMMIT\n",
    );
    assert!(saved.has_kproxy());
    let text = ruleset::cleanup_restore(&saved, Commits::PerTable).text;
    assert_eq!(
        text,
        "*nat\n-D PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES\n:KPROXY-SERVICES - [0:0]\n-X KPROXY-SERVICES\nCOMMIT\n"
    );
    assert!(!Saved::parse("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n").has_kproxy());
}

#[test]
fn probabilities_are_written_as_iptables_save_prints_them() {
    use crate::render::probability;
    assert_eq!(probability(2), "0.50000000000");
    assert_eq!(probability(3), "0.33333333349");
    assert_eq!(probability(10), "0.10000000009");
}

/// The `*table … COMMIT` blocks of a restore input, each as its lines.
fn transactions(text: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for line in text.lines() {
        current.push(line);
        if line == "COMMIT" {
            out.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "input ends inside a block: {current:?}");
    out
}

#[test]
fn a_large_restore_is_cut_into_transactions_children_first() {
    let state = many(400);
    let (whole, _) = full(&state, Saved::default(), Commits::PerTable);
    let (cut, _) = full(&state, Saved::default(), Commits::Chains(50));
    assert_eq!(transactions(&whole.text).len(), 2, "nat and filter");
    let blocks = transactions(&cut.text);
    assert!(blocks.len() > 10, "{} blocks", blocks.len());
    // The same lines, and the same count of objects.
    let lines = |t: &str| {
        let mut l: Vec<String> = t
            .lines()
            .filter(|l| !l.starts_with('*') && *l != "COMMIT")
            .map(str::to_string)
            .collect();
        l.sort();
        l
    };
    assert_eq!(lines(&cut.text), lines(&whole.text));
    assert_eq!(cut.objects, whole.objects);
    let mut declared: BTreeSet<String> = BTreeSet::new();
    for (i, block) in blocks.iter().enumerate() {
        let table = block[0];
        let next_table = blocks.get(i + 1).map(|b| b[0]);
        let chains: Vec<&str> = block.iter().filter_map(|l| l.strip_prefix(':')).collect();
        assert!(chains.len() <= 50, "block {i} declares {}", chains.len());
        declared.extend(
            chains
                .iter()
                .map(|c| format!("{table}{}", c.split(' ').next().unwrap())),
        );
        for rule in block
            .iter()
            .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
        {
            if let Some(target) = rule
                .split(" -j ")
                .nth(1)
                .map(|t| t.split(' ').next().unwrap())
            {
                if target.starts_with("KPROXY-") {
                    assert!(
                        declared.contains(&format!("{table}{target}")),
                        "block {i} jumps to {target} before it is written: {rule}"
                    );
                }
            }
        }
        // The built-in jumps come in each table's last transaction.
        let has_jumps = block.iter().any(|l| l.starts_with("-I "));
        assert_eq!(has_jumps, next_table != Some(table), "block {i} of {table}");
    }
}

#[test]
fn many_stale_chains_are_all_flushed_before_any_is_deleted() {
    let big = many(400);
    let (_, program) = full(&big, Saved::default(), Commits::PerTable);
    let (cut, _) = partial(program, &many(10), &keys(&big), Commits::Chains(50));
    let blocks = transactions(&cut.text);
    let first_delete = blocks
        .iter()
        .position(|b| b.iter().any(|l| l.starts_with("-X ")))
        .expect("stale chains are deleted");
    let deleted: Vec<&str> = cut
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("-X "))
        .collect();
    assert!(deleted.len() > 700, "{} deleted", deleted.len());
    let flushed_before: BTreeSet<&str> = blocks[..first_delete]
        .iter()
        .flatten()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|d| d.split(' ').next().unwrap())
        .collect();
    for chain in &deleted {
        assert!(
            flushed_before.contains(chain),
            "{chain} deleted before it was flushed"
        );
    }
    // Deletion blocks only delete.
    for block in &blocks[first_delete..] {
        assert!(
            block[1..block.len() - 1]
                .iter()
                .all(|l| l.starts_with("-X ")),
            "{block:?}"
        );
    }
}
