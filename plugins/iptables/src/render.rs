//! The pure part: what kproxy's chains must contain for one family, as plain values.
//!
//! [`render_port`] turns one service port into its own chains (`KPROXY-SVC-`, `-SVL-`, `-EXT-`,
//! `-FW-`, `-SEP-`) and its dispatch entries (one per upstream rule in `KUBE-SERVICES`,
//! `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`, `KUBE-PROXY-FIREWALL`); [`render_globals`]
//! writes the fixed chains and the jumps from the built-in chains. [`crate::ruleset`] puts them
//! together. Nothing here touches the kernel.
//!
//! The rules are upstream kube-proxy's iptables mode (`pkg/proxy/iptables/proxier.go`), with
//! `KPROXY-` for `KUBE-`; the README lists where kproxy differs. Rules are written in the order
//! `iptables-save` prints their parts (`-s`, `-d`, `-i`, `-p`, matches, target), so what the
//! kernel shows reads like what was rendered.

use crate::{
    dispatch::{Entry, Key},
    names::{self, Kind},
};
use kproxy_plugin_api::{
    Cidr, Endpoint, FamilyView, IpAddr, IpFamily, LocalDetectMode, NodeFacts, Protocol,
    ProxySettings, ServicePort,
};

/// Upstream's default ClientIP affinity timeout, used when a service gives none.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// An iptables table kproxy writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: reject/drop for services without endpoints, source ranges, forwarding.
    Filter,
    /// `nat`: dispatch, DNAT, masquerade.
    Nat,
}

impl Table {
    /// Both tables, in the order a restore writes them: nat first, then filter (upstream
    /// writes filter first). iptables-legacy commits each table on its own, so the order is
    /// the order the kernel sees them in: with nat first, a filter change that is visible (a
    /// service's REJECT gone, a sync marker's REJECT in place) means the nat rules of the same
    /// sync are in place too. A service that gains endpoints then works the moment its DNAT
    /// lands (its REJECT matches the cluster IP, which DNAT has already rewritten).
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// The chains whose rules are dispatch entries (and so may be laid out as a tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Root {
    /// nat `KPROXY-SERVICES`: cluster, external and LB IPs to their service chains.
    NatServices,
    /// nat `KPROXY-NODEPORTS`: node ports to their external chains.
    NatNodePorts,
    /// filter `KPROXY-SERVICES`: cluster IPs without usable endpoints.
    FilterServices,
    /// filter `KPROXY-EXTERNAL-SERVICES`: external and LB IPs without usable endpoints.
    FilterExternalServices,
    /// filter `KPROXY-EXTERNAL-NODEPORTS`: node ports without usable endpoints.
    FilterExternalNodePorts,
    /// filter `KPROXY-PROXY-FIREWALL`: LB IP traffic the source ranges did not let through.
    FilterProxyFirewall,
    /// filter `KPROXY-NODEPORTS`: health-check node ports accepted.
    FilterNodePorts,
}

impl Root {
    /// Every root.
    pub const ALL: [Root; 7] = [
        Root::NatServices,
        Root::NatNodePorts,
        Root::FilterServices,
        Root::FilterExternalServices,
        Root::FilterExternalNodePorts,
        Root::FilterProxyFirewall,
        Root::FilterNodePorts,
    ];

    /// The table the root lives in.
    pub fn table(self) -> Table {
        match self {
            Root::NatServices | Root::NatNodePorts => Table::Nat,
            _ => Table::Filter,
        }
    }

    /// The root chain's name.
    pub fn chain(self) -> &'static str {
        match self {
            Root::NatServices | Root::FilterServices => names::SERVICES,
            Root::NatNodePorts | Root::FilterNodePorts => names::NODEPORTS,
            Root::FilterExternalServices => names::EXTERNAL_SERVICES,
            Root::FilterExternalNodePorts => names::EXTERNAL_NODEPORTS,
            Root::FilterProxyFirewall => names::PROXY_FIREWALL,
        }
    }
}

/// A chain and its rules (each the text after `-A <chain> `).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// The chain's name.
    pub name: String,
    /// The rules, in order.
    pub rules: Vec<String>,
}

/// Everything one service port adds to one family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRules {
    /// Its own nat chains.
    pub chains: Vec<Chain>,
    /// Its rules in the dispatch chains.
    pub entries: Vec<(Root, Entry)>,
}

/// A rule of a built-in chain that jumps into kproxy's chains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jump {
    /// The table.
    pub table: Table,
    /// The built-in chain (`INPUT`, `PREROUTING`, …).
    pub from: &'static str,
    /// The rule text after `-A <from> `, exactly as `iptables-save` prints it.
    pub rule: String,
}

/// The fixed part of one family's rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Globals {
    /// Fixed chains with their rules (root chains too, holding only their fixed tail rules).
    pub chains: Vec<(Table, Chain)>,
    /// Rules that must stay after the dispatch entries of a root chain.
    pub tails: Vec<(Root, Vec<String>)>,
    /// Jumps from the built-in chains, in the order they must appear at the top of each.
    pub jumps: Vec<Jump>,
}

/// What rendering one family needs besides the service port itself.
#[derive(Debug, Clone, Copy)]
pub struct FamilyCtx<'a> {
    /// The family.
    pub family: IpFamily,
    /// Node-wide settings.
    pub settings: &'a ProxySettings,
    /// The node's current facts (pod CIDRs, addresses).
    pub node: &'a NodeFacts,
    /// Whether `nf_conntrack_tcp_be_liberal` is set (then invalid packets are not dropped, as
    /// upstream).
    pub conntrack_liberal: bool,
}

impl FamilyCtx<'_> {
    fn host_len(&self) -> u8 {
        match self.family {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    fn host(&self, ip: IpAddr) -> String {
        format!("{ip}/{}", self.host_len())
    }

    fn recent_mask(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "255.255.255.255",
            IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        }
    }

    fn mark(&self) -> String {
        format!(
            "{:#x}",
            1u32 << u32::from(self.settings.masquerade_bit.min(31))
        )
    }

    fn first_cidr<'c>(&self, cidrs: impl IntoIterator<Item = &'c Cidr>) -> Option<Cidr> {
        cidrs
            .into_iter()
            .find(|c| c.family() == self.family)
            .copied()
    }

    /// The local-traffic detector as rule parts: `local` true matches traffic from local pods,
    /// false from anywhere else. `None` when it cannot tell (upstream's `IsImplemented()`
    /// false). Upstream's detector takes one CIDR per family; so does this one (the first).
    fn local_match(&self, local: bool) -> Option<RulePart> {
        let not = if local { "" } else { "! " };
        let detect = &self.settings.local_detect;
        match detect.mode {
            LocalDetectMode::ClusterCidr => self
                .first_cidr(self.settings.cluster_cidrs.iter())
                .map(|c| RulePart::Source(format!("{not}-s {c}"))),
            LocalDetectMode::NodeCidr => self
                .first_cidr(self.node.pod_cidrs.iter())
                .map(|c| RulePart::Source(format!("{not}-s {c}"))),
            LocalDetectMode::BridgeInterface if !detect.interface.is_empty() => Some(
                RulePart::InInterface(format!("{not}-i {}", detect.interface)),
            ),
            LocalDetectMode::InterfaceNamePrefix if !detect.interface.is_empty() => Some(
                RulePart::InInterface(format!("{not}-i {}+", detect.interface)),
            ),
            _ => None,
        }
    }

    /// Whether IPv4 node ports are served on 127.0.0.1 (upstream: `localhostNodePorts`, only
    /// when `nodePortAddresses` lets loopback in).
    pub fn localhost_node_ports(&self) -> bool {
        let loopback: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        self.family == IpFamily::V4
            && self.settings.localhost_node_ports
            && (self.settings.node_port_addresses.is_empty()
                || self
                    .settings
                    .node_port_addresses
                    .iter()
                    .any(|c| c.contains(loopback)))
    }
}

/// Parts of a rule other than matches and target, which `iptables-save` prints first.
#[derive(Debug, Clone)]
enum RulePart {
    Source(String),
    InInterface(String),
}

/// Builds one rule in `iptables-save`'s order.
#[derive(Debug, Default)]
struct Rule {
    source: Option<String>,
    dest: Option<String>,
    in_interface: Option<String>,
    protocol: Option<&'static str>,
    matches: Vec<String>,
    target: String,
}

impl Rule {
    fn new() -> Rule {
        Rule::default()
    }
    fn source(mut self, s: String) -> Rule {
        self.source = Some(s);
        self
    }
    fn dest(mut self, d: String) -> Rule {
        self.dest = Some(format!("-d {d}"));
        self
    }
    fn part(mut self, part: Option<RulePart>) -> Rule {
        match part {
            Some(RulePart::Source(s)) => self.source = Some(s),
            Some(RulePart::InInterface(i)) => self.in_interface = Some(i),
            None => {}
        }
        self
    }
    fn protocol(mut self, p: Protocol) -> Rule {
        self.protocol = Some(p.as_str());
        self
    }
    fn comment(mut self, text: &str) -> Rule {
        self.matches
            .push(format!("-m comment --comment {}", quote(text)));
        self
    }
    fn m(mut self, text: impl Into<String>) -> Rule {
        self.matches.push(text.into());
        self
    }
    fn dport(self, p: Protocol, port: u16) -> Rule {
        self.m(format!("-m {} --dport {port}", p.as_str()))
    }
    fn jump(mut self, target: impl Into<String>) -> String {
        self.target = format!("-j {}", target.into());
        self.text()
    }
    /// A rule without a target (upstream's marker rule at the end of a firewall chain).
    fn no_target(self) -> String {
        self.text()
    }
    fn text(self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.source);
        parts.extend(self.dest);
        parts.extend(self.in_interface);
        if let Some(p) = self.protocol {
            parts.push(format!("-p {p}"));
        }
        parts.extend(self.matches);
        if !self.target.is_empty() {
            parts.push(self.target);
        }
        parts.join(" ")
    }
}

/// Quotes a comment as `iptables-save` does (`xtables_save_string`): bare when it holds only
/// letters, digits, `_` and `-`, else in double quotes (a double quote inside becomes `'`).
fn quote(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        text.to_string()
    } else {
        format!("\"{}\"", text.replace(['"', '\\'], "'"))
    }
}

/// The reject target for a protocol: a TCP reset for TCP, the family's ICMP port unreachable
/// otherwise (spelled out, as `iptables-save` prints it). Upstream writes a plain `REJECT`
/// (ICMP for TCP too); see the README for why kproxy answers TCP with a reset.
fn reject(family: IpFamily, p: Protocol) -> &'static str {
    match (p, family) {
        (Protocol::Tcp, _) => "REJECT --reject-with tcp-reset",
        (_, IpFamily::V4) => "REJECT --reject-with icmp-port-unreachable",
        (_, IpFamily::V6) => "REJECT --reject-with icmp6-port-unreachable",
    }
}

/// The fixed chains, their rules and the jumps into them.
pub fn render_globals(ctx: &FamilyCtx<'_>) -> Globals {
    let mark = ctx.mark();
    let mut g = Globals::default();
    let mut chain = |table: Table, name: &str, rules: Vec<String>| {
        g.chains.push((
            table,
            Chain {
                name: name.to_string(),
                rules,
            },
        ))
    };
    let localhost = ctx.localhost_node_ports();

    // filter
    for name in [
        names::SERVICES,
        names::EXTERNAL_SERVICES,
        names::EXTERNAL_NODEPORTS,
        names::NODEPORTS,
        names::PROXY_FIREWALL,
    ] {
        chain(Table::Filter, name, Vec::new());
    }
    let mut forward = Vec::new();
    if !ctx.conntrack_liberal {
        // Upstream: invalid packets would otherwise reset connections (kubernetes#74839).
        forward.push(Rule::new().m("-m conntrack --ctstate INVALID").jump("DROP"));
    }
    forward.push(
        Rule::new()
            .comment("kproxy forwarding rules")
            .m(format!("-m mark --mark {mark}/{mark}"))
            .jump("ACCEPT"),
    );
    forward.push(
        Rule::new()
            .comment("kproxy forwarding conntrack rule")
            .m("-m conntrack --ctstate RELATED,ESTABLISHED")
            .jump("ACCEPT"),
    );
    chain(Table::Filter, names::FORWARD, forward);
    if localhost {
        // route_localnet opens 127.0.0.0/8 to the outside (kubernetes#90259); upstream's
        // mitigation, in kproxy's own chain.
        chain(
            Table::Filter,
            names::FIREWALL,
            vec![Rule::new()
                .source("! -s 127.0.0.0/8".into())
                .dest("127.0.0.0/8".into())
                .comment("block incoming localnet connections")
                .m("-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT")
                .jump("DROP")],
        );
    }

    // nat
    chain(Table::Nat, names::SERVICES, Vec::new());
    chain(Table::Nat, names::NODEPORTS, Vec::new());
    chain(
        Table::Nat,
        names::POSTROUTING,
        vec![
            Rule::new()
                .m(format!("-m mark ! --mark {mark}/{mark}"))
                .jump("RETURN"),
            // Clear the mark so a packet that traverses the stack again is not masqueraded
            // twice.
            // `--xor-mark`, as iptables-save prints it.
            Rule::new().jump(format!("MARK --set-xmark {mark}/0x0")),
            Rule::new()
                .comment("kproxy service traffic requiring SNAT")
                .jump("MASQUERADE --random-fully"),
        ],
    );
    chain(
        Table::Nat,
        names::MARK_MASQ,
        // `--or-mark`, as iptables-save prints it.
        vec![Rule::new().jump(format!("MARK --set-xmark {mark}/{mark}"))],
    );

    // Tails: node ports come last in KPROXY-SERVICES, after every service address.
    let nodeports_comment =
        "kproxy service nodeports; NOTE: this must be the last rule in this chain";
    let mut services_tail = Vec::new();
    if ctx.settings.node_port_addresses.is_empty() {
        // Block localhost node ports where they are not served (IPv6 never; IPv4 unless
        // localhostNodePorts), as upstream.
        let not_loopback = match ctx.family {
            IpFamily::V6 => Some("! -d ::1/128"),
            IpFamily::V4 if !localhost => Some("! -d 127.0.0.0/8"),
            IpFamily::V4 => None,
        };
        let mut r = Rule::new();
        r.dest = not_loopback.map(String::from);
        services_tail.push(
            r.comment(nodeports_comment)
                .m("-m addrtype --dst-type LOCAL")
                .jump(names::NODEPORTS),
        );
    } else {
        let loopback = match ctx.family {
            IpFamily::V4 => Cidr::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8),
            IpFamily::V6 => Cidr::new(std::net::Ipv6Addr::LOCALHOST, 128),
        }
        .expect("constant prefix");
        let cidrs: Vec<Cidr> = ctx
            .settings
            .node_port_addresses
            .iter()
            .filter(|c| c.family() == ctx.family)
            .copied()
            .collect();
        // Upstream skips loopback node addresses unless localhost node ports are on (IPv4
        // only); a CIDR that holds loopback addresses is cut the same way.
        let cut_loopback = !localhost && cidrs.iter().any(|c| c.contains(loopback.addr));
        if cut_loopback {
            services_tail.push(
                Rule::new()
                    .dest(loopback.to_string())
                    .comment("kproxy localhost node ports are off")
                    .jump("RETURN"),
            );
        }
        for c in cidrs {
            services_tail.push(
                Rule::new()
                    .dest(c.to_string())
                    .comment(nodeports_comment)
                    .m("-m addrtype --dst-type LOCAL")
                    .jump(names::NODEPORTS),
            );
        }
    }
    g.tails.push((Root::NatServices, services_tail));
    g.tails.push((
        Root::FilterExternalServices,
        vec![Rule::new()
            .comment("kproxy node ports without usable endpoints")
            .m("-m addrtype --dst-type LOCAL")
            .jump(names::EXTERNAL_NODEPORTS)],
    ));

    // Jumps from the built-in chains, top to bottom as upstream ends up with them.
    let new = "-m conntrack --ctstate NEW";
    let jump = |table: Table, from: &'static str, ct: bool, comment: &str, to: &str| Jump {
        table,
        from,
        rule: {
            let r = Rule::new();
            let r = if ct { r.m(new) } else { r };
            r.comment(&format!("{}{comment}", names::JUMP_COMMENT_PREFIX))
                .jump(to)
        },
    };
    use Table::{Filter, Nat};
    let lb_fw = "load balancer firewall";
    let ext = "externally-visible service portals";
    let portals = "service portals";
    g.jumps = vec![
        jump(Filter, "INPUT", true, lb_fw, names::PROXY_FIREWALL),
        jump(
            Filter,
            "INPUT",
            false,
            "health check service ports",
            names::NODEPORTS,
        ),
        jump(Filter, "INPUT", true, ext, names::EXTERNAL_SERVICES),
        jump(Filter, "FORWARD", true, lb_fw, names::PROXY_FIREWALL),
        jump(Filter, "FORWARD", false, "forwarding rules", names::FORWARD),
        jump(Filter, "FORWARD", true, portals, names::SERVICES),
        jump(Filter, "FORWARD", true, ext, names::EXTERNAL_SERVICES),
        jump(Filter, "OUTPUT", true, lb_fw, names::PROXY_FIREWALL),
        jump(Filter, "OUTPUT", true, portals, names::SERVICES),
        jump(Nat, "PREROUTING", false, portals, names::SERVICES),
        jump(Nat, "OUTPUT", false, portals, names::SERVICES),
        jump(
            Nat,
            "POSTROUTING",
            false,
            "postrouting rules",
            names::POSTROUTING,
        ),
    ];
    if localhost {
        g.jumps.push(jump(
            Filter,
            "INPUT",
            false,
            "localnet firewall",
            names::FIREWALL,
        ));
        g.jumps.push(jump(
            Filter,
            "OUTPUT",
            false,
            "localnet firewall",
            names::FIREWALL,
        ));
    }
    // Stable: keeps the order above within each chain.
    g.jumps.sort_by_key(|j| (j.table, j.from));
    g
}

/// Renders one service port for one family, or `None` when it has no cluster IP of that family
/// (upstream's per-family proxier never sees such a port).
pub fn render_port(ctx: &FamilyCtx<'_>, sp: &ServicePort) -> Option<PortRules> {
    let fam = ctx.family;
    let key = &sp.key;
    let proto = key.protocol;
    let cluster_ip = *sp.cluster_ips.iter().find(|a| a.family == fam)?;
    let name = names::service_port_name(key);
    let FamilyView {
        external_ips,
        lb_ips,
        externally_accessible,
        internal_local: itp_local,
        external_local: etp_local,
        cluster_endpoints: cluster_eps,
        local_endpoints: local_eps,
        has_endpoints,
    } = sp.family_view(fam);
    let source_ranges: Vec<Cidr> = sp
        .load_balancer_source_ranges
        .iter()
        .filter(|c| c.family() == fam)
        .copied()
        .collect();

    let cluster_chain =
        (!cluster_eps.is_empty()).then(|| names::service_chain(Kind::ClusterPolicy, key));
    let local_chain = (!local_eps.is_empty()).then(|| names::service_chain(Kind::LocalPolicy, key));
    let internal_chain = if itp_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let external_policy_chain = if etp_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let has_internal = has_endpoints && internal_chain.is_some();
    let has_external = has_endpoints && external_policy_chain.is_some();
    let external_chain = names::service_chain(Kind::External, key);
    let uses_external_chain = has_endpoints && externally_accessible;
    let firewall_chain = names::service_chain(Kind::Firewall, key);
    let uses_firewall = has_endpoints && !lb_ips.is_empty() && !source_ranges.is_empty();
    let lb_target = if uses_firewall {
        &firewall_chain
    } else {
        &external_chain
    };

    let (internal_filter, external_filter, filter_comment) = if !has_endpoints {
        (
            reject(fam, proto),
            reject(fam, proto),
            format!("{name} has no endpoints"),
        )
    } else {
        ("DROP", "DROP", format!("{name} has no local endpoints"))
    };

    let mut out = PortRules::default();
    let mut entry =
        |root: Root, key: Key, rule: String| out.entries.push((root, Entry { key, rule }));
    let to = |addr: IpAddr| Rule::new().dest(ctx.host(addr)).protocol(proto);

    // Cluster IP.
    let cluster_key = Key::address(cluster_ip, proto, sp.port);
    match (has_internal, internal_chain) {
        (true, Some(chain)) => entry(
            Root::NatServices,
            cluster_key,
            to(cluster_ip)
                .comment(&format!("{name} cluster IP"))
                .dport(proto, sp.port)
                .jump(chain),
        ),
        _ => entry(
            Root::FilterServices,
            cluster_key,
            to(cluster_ip)
                .comment(&filter_comment)
                .dport(proto, sp.port)
                .jump(internal_filter),
        ),
    }

    // External IPs.
    for &ip in &external_ips {
        let k = Key::address(ip, proto, sp.port);
        if has_endpoints {
            entry(
                Root::NatServices,
                k.clone(),
                to(ip)
                    .comment(&format!("{name} external IP"))
                    .dport(proto, sp.port)
                    .jump(&external_chain),
            );
        }
        if !has_external {
            entry(
                Root::FilterExternalServices,
                k,
                to(ip)
                    .comment(&filter_comment)
                    .dport(proto, sp.port)
                    .jump(external_filter),
            );
        }
    }

    // Load-balancer IPs.
    for &ip in &lb_ips {
        let k = Key::address(ip, proto, sp.port);
        if has_endpoints {
            entry(
                Root::NatServices,
                k.clone(),
                to(ip)
                    .comment(&format!("{name} loadbalancer IP"))
                    .dport(proto, sp.port)
                    .jump(lb_target),
            );
        }
        if uses_firewall {
            entry(
                Root::FilterProxyFirewall,
                k.clone(),
                to(ip)
                    .comment(&format!("{name} traffic not accepted by {firewall_chain}"))
                    .dport(proto, sp.port)
                    .jump("DROP"),
            );
        }
        if !has_external {
            entry(
                Root::FilterExternalServices,
                k,
                to(ip)
                    .comment(&filter_comment)
                    .dport(proto, sp.port)
                    .jump(external_filter),
            );
        }
    }

    // Node port. Not subject to loadBalancerSourceRanges, as upstream.
    if sp.node_port != 0 {
        let k = Key::port(proto, sp.node_port);
        if has_endpoints {
            entry(
                Root::NatNodePorts,
                k.clone(),
                Rule::new()
                    .protocol(proto)
                    .comment(&name)
                    .dport(proto, sp.node_port)
                    .jump(&external_chain),
            );
        }
        if !has_external {
            entry(
                Root::FilterExternalNodePorts,
                k,
                Rule::new()
                    .protocol(proto)
                    .comment(&filter_comment)
                    .dport(proto, sp.node_port)
                    .jump(external_filter),
            );
        }
    }

    // Health-check node port: accepted whether or not there are local endpoints.
    if sp.health_check_node_port != 0 {
        entry(
            Root::FilterNodePorts,
            Key::port(Protocol::Tcp, sp.health_check_node_port),
            Rule::new()
                .protocol(Protocol::Tcp)
                .comment(&format!("{name} health check node port"))
                .dport(Protocol::Tcp, sp.health_check_node_port)
                .jump("ACCEPT"),
        );
    }

    // The service port's own chains.
    let mut chains: Vec<Chain> = Vec::new();
    let policy_masq = has_internal.then(|| {
        let r = to(cluster_ip);
        let r = if ctx.settings.masquerade_all {
            Some(r)
        } else {
            // Off-cluster traffic to the cluster IP may bounce off this node: masquerade it.
            ctx.local_match(false).map(|m| r.part(Some(m)))
        };
        r.map(|r| {
            r.comment(&format!("{name} cluster IP"))
                .dport(proto, sp.port)
                .jump(names::MARK_MASQ)
        })
    });
    let affinity = sp.session_affinity.client_ip;
    let timeout = match sp.session_affinity.timeout_seconds {
        0 => DEFAULT_AFFINITY_TIMEOUT,
        t => t,
    };
    let ep_chain = |e: &Endpoint| names::endpoint_chain(key, e.ip, e.port);
    let ep_comment = |e: &Endpoint| format!("{name} -> {}", names::endpoint_string(e.ip, e.port));
    let policy_rules = |eps: &[&Endpoint]| -> Vec<String> {
        let mut rules = Vec::new();
        if affinity {
            for e in eps {
                rules.push(
                    Rule::new()
                        .comment(&ep_comment(e))
                        .m(format!(
                            "-m recent --rcheck --seconds {timeout} --reap --name {} --mask {} --rsource",
                            ep_chain(e),
                            ctx.recent_mask()
                        ))
                        .jump(ep_chain(e)),
                );
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            let mut r = Rule::new().comment(&ep_comment(e));
            if i + 1 < n {
                r = r.m(format!(
                    "-m statistic --mode random --probability {}",
                    probability(n - i)
                ));
            }
            rules.push(r.jump(ep_chain(e)));
        }
        rules
    };
    for (chain, eps) in [(&cluster_chain, &cluster_eps), (&local_chain, &local_eps)] {
        if let Some(chain) = chain {
            let mut rules = Vec::new();
            if Some(chain) == internal_chain.as_ref() {
                rules.extend(policy_masq.clone().flatten());
            }
            rules.extend(policy_rules(eps));
            chains.push(Chain {
                name: chain.clone(),
                rules,
            });
        }
    }

    if uses_external_chain {
        let mut rules = Vec::new();
        if !etp_local {
            rules.push(
                Rule::new()
                    .comment(&format!(
                        "masquerade traffic for {name} external destinations"
                    ))
                    .jump(names::MARK_MASQ),
            );
        } else {
            if let (Some(local), Some(cluster)) = (ctx.local_match(true), &cluster_chain) {
                rules.push(
                    Rule::new()
                        .part(Some(local))
                        .comment(&format!("pod traffic for {name} external destinations"))
                        .jump(cluster),
                );
            }
            rules.push(
                Rule::new()
                    .comment(&format!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    ))
                    .m("-m addrtype --src-type LOCAL")
                    .jump(names::MARK_MASQ),
            );
            if let Some(cluster) = &cluster_chain {
                rules.push(
                    Rule::new()
                        .comment(&format!(
                            "route LOCAL traffic for {name} external destinations"
                        ))
                        .m("-m addrtype --src-type LOCAL")
                        .jump(cluster),
                );
            }
        }
        if has_external {
            if let Some(policy) = external_policy_chain {
                rules.push(Rule::new().jump(policy));
            }
        }
        chains.push(Chain {
            name: external_chain.clone(),
            rules,
        });
    }

    if uses_firewall {
        let comment = format!("{name} loadbalancer IP");
        let mut rules: Vec<String> = source_ranges
            .iter()
            .map(|c| {
                Rule::new()
                    .source(format!("-s {c}"))
                    .comment(&comment)
                    .jump(&external_chain)
            })
            .collect();
        // A VIP is often a local address too: a request from this node to it then loops back
        // with the VIP as source. Let it in when the node itself is allowed.
        let node_allowed = ctx
            .node
            .addresses
            .iter()
            .any(|a| a.family == fam && source_ranges.iter().any(|c| c.contains(*a)));
        if node_allowed {
            for &ip in &lb_ips {
                rules.push(
                    Rule::new()
                        .source(format!("-s {}", ctx.host(ip)))
                        .comment(&comment)
                        .jump(&external_chain),
                );
            }
        }
        rules.push(
            Rule::new()
                .comment(&format!(
                    "other traffic to {name} will be dropped by {}",
                    names::PROXY_FIREWALL
                ))
                .no_target(),
        );
        chains.push(Chain {
            name: firewall_chain.clone(),
            rules,
        });
    }

    let mut reachable: Vec<&Endpoint> = cluster_eps.iter().chain(&local_eps).copied().collect();
    reachable.sort_by_key(|e| (e.ip, e.port));
    reachable.dedup_by(|a, b| (a.ip, a.port) == (b.ip, b.port));
    for e in reachable {
        let chain = ep_chain(e);
        let mut dnat = Rule::new().protocol(proto).comment(&name);
        if affinity {
            dnat = dnat.m(format!(
                "-m recent --set --name {chain} --mask {} --rsource",
                ctx.recent_mask()
            ));
        }
        let rules = vec![
            // Hairpin: an endpoint reaching itself through the service must be masqueraded,
            // or it would answer itself directly.
            Rule::new()
                .source(format!("-s {}", ctx.host(e.ip)))
                .comment(&name)
                .jump(names::MARK_MASQ),
            dnat.m(format!("-m {}", proto.as_str())).jump(format!(
                "DNAT --to-destination {}",
                names::endpoint_string(e.ip, e.port)
            )),
        ];
        chains.push(Chain { name: chain, rules });
    }
    out.chains = chains;
    Some(out)
}

/// `1/n` as `iptables-save` prints it: the kernel keeps `round(2^31 / n)`, printed divided
/// by 2^31 with 11 decimals. Upstream writes `%0.10f` of 1/n, which the kernel stores as the
/// same number; writing the printed form lets a full sync see that a chain is unchanged.
pub fn probability(n: usize) -> String {
    const SCALE: f64 = 2147483648.0; // 2^31
    let stored = (SCALE / n as f64).round();
    format!("{:.11}", stored / SCALE)
}
