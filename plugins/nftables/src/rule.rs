//! kproxy's rules, set elements and verdicts as typed values.
//!
//! The renderer builds these; two writers consume them: [`std::fmt::Display`] gives the `nft`
//! text (what `nft list` shows, what the README and the tests read), and [`crate::netlink`]
//! encodes the same rule as nf_tables expressions for the kernel. Only the handful of forms
//! kproxy uses exist, so each has exactly one text and one encoding.

use crate::slots::SLOTS;
use kproxy_plugin_api::{Cidr, IpAddr, IpFamily, Protocol};
use std::fmt;

/// A verdict: what a rule or a map element does with the packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// Which address of the packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The source (`saddr`).
    Src,
    /// The destination (`daddr`).
    Dst,
}

impl Dir {
    fn word(self) -> &'static str {
        match self {
            Dir::Src => "saddr",
            Dir::Dst => "daddr",
        }
    }
}

/// One address or prefix, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrItem {
    /// A single address, written without a prefix length.
    Host(IpAddr),
    /// A prefix, written `addr/len`.
    Prefix(Cidr),
}

impl AddrItem {
    /// The first address and the prefix length it covers.
    pub fn range(&self) -> (IpAddr, u8) {
        match *self {
            AddrItem::Host(a) => (a, if a.is_v4() { 32 } else { 128 }),
            AddrItem::Prefix(c) => (c.addr, c.prefix_len),
        }
    }
}

impl fmt::Display for AddrItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrItem::Host(a) => a.fmt(f),
            AddrItem::Prefix(c) => c.fmt(f),
        }
    }
}

/// What an address is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddrValue {
    /// One address or prefix.
    One(AddrItem),
    /// An anonymous set of addresses and prefixes: `{ a, b/16 }`.
    Set(Vec<AddrItem>),
    /// A named set of the table: `@name`.
    Named(String),
}

impl fmt::Display for AddrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrValue::One(a) => a.fmt(f),
            AddrValue::Set(items) => {
                f.write_str("{ ")?;
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    a.fmt(f)?;
                }
                f.write_str(" }")
            }
            AddrValue::Named(n) => write!(f, "@{n}"),
        }
    }
}

/// What a destination port is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortValue {
    /// One port.
    One(u16),
    /// A named set of ports: `@name`.
    Named(String),
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ip saddr != 10.0.0.0/8`, `ip6 daddr @set`, …
    Addr {
        /// The family (`ip` or `ip6`).
        family: IpFamily,
        /// Source or destination.
        dir: Dir,
        /// `!=` rather than `==`.
        neg: bool,
        /// The value.
        value: AddrValue,
    },
    /// `tcp dport 80`, `tcp dport @set` (implies the protocol).
    Dport {
        /// The protocol.
        proto: Protocol,
        /// The port or set.
        value: PortValue,
    },
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `iifname "cni0"`, `iifname != "veth*"`.
    IifName {
        /// `!=` rather than `==`.
        neg: bool,
        /// The name, without the wildcard.
        name: String,
        /// Whether the name is a prefix (`name*`).
        wildcard: bool,
    },
    /// `fib saddr type local` / `fib daddr type local`.
    FibLocal(Dir),
    /// `ct state new`.
    CtStateNew,
    /// `mark and <bit> == 0`.
    MarkClear(u32),
    /// `ip daddr . meta l4proto . th dport @<set>`, `meta l4proto . th dport @<set>`: the
    /// packet's destination is in a named set (the same keys a verdict map looks up).
    KeyIn {
        /// What is looked up.
        key: VmapKey,
        /// The set.
        set: String,
    },
    /// `ip saddr . ip daddr @<set>`: the source and destination pair is in a named set.
    AddrPairIn {
        /// The family (`ip` or `ip6`).
        family: IpFamily,
        /// The set of `addr . addr` pairs.
        set: String,
    },
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Addr {
                family,
                dir,
                neg,
                value,
            } => {
                let op = if *neg { "!= " } else { "" };
                write!(f, "{} {} {op}{value}", ip_word(*family), dir.word())
            }
            Match::Dport { proto, value } => match value {
                PortValue::One(p) => write!(f, "{} dport {p}", proto.as_str()),
                PortValue::Named(n) => write!(f, "{} dport @{n}", proto.as_str()),
            },
            Match::L4Proto(p) => write!(f, "meta l4proto {}", p.as_str()),
            Match::IifName {
                neg,
                name,
                wildcard,
            } => {
                let op = if *neg { "!= " } else { "" };
                if *wildcard {
                    write!(f, "iifname {op}\"{name}*\"")
                } else {
                    write!(f, "iifname {op}{name:?}")
                }
            }
            Match::FibLocal(dir) => write!(f, "fib {} type local", dir.word()),
            Match::CtStateNew => f.write_str("ct state new"),
            Match::MarkClear(bit) => write!(f, "mark and {bit:#010x} == 0"),
            Match::KeyIn { key, set } => write!(f, "{key} @{set}"),
            Match::AddrPairIn { family, set } => {
                let ip = ip_word(*family);
                write!(f, "{ip} saddr . {ip} daddr @{set}")
            }
        }
    }
}

/// The key a verdict-map dispatch looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmapKey {
    /// `ip daddr . meta l4proto . th dport`.
    DaddrProtoPort(IpFamily),
    /// `meta l4proto . th dport`.
    ProtoPort,
}

impl fmt::Display for VmapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmapKey::DaddrProtoPort(fam) => {
                write!(f, "{} daddr . meta l4proto . th dport", ip_word(*fam))
            }
            VmapKey::ProtoPort => f.write_str("meta l4proto . th dport"),
        }
    }
}

/// How a packet is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `reject with tcp reset` (after `meta l4proto tcp`).
    TcpReset,
    /// `reject`: the family's ICMP port unreachable.
    PortUnreachable,
}

/// What a rule does once its conditions hold (the last statement).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A verdict.
    Verdict(Verdict),
    /// `<key> vmap @<map>`.
    Vmap {
        /// What is looked up.
        key: VmapKey,
        /// The verdict map.
        map: String,
    },
    /// `numgen random mod 16384 offset <start> vmap @<map>`: an even random choice among the
    /// endpoint chains of a slot block ([`crate::slots`]: `<start>-<x> : goto c0, …`). The rule
    /// does not depend on the number of endpoints: a change rewrites only map elements.
    SlotVmap {
        /// The first number of the chain's block.
        start: u32,
        /// The slot map.
        map: String,
    },
    /// `dnat ip to numgen random mod 16384 offset <start> map @<map>` (after
    /// `meta l4proto <proto>`): an even random choice among the endpoints (`addr . port`) of a
    /// slot block. Choosing through data rather than a `goto` per endpoint keeps an endpoint
    /// change cheap for the kernel: a transaction of data elements does not make it
    /// re-validate the table's whole jump graph.
    DnatSlots {
        /// The family (`ip` or `ip6`).
        family: IpFamily,
        /// The first number of the chain's block.
        start: u32,
        /// The slot map.
        map: String,
    },
    /// `mark set mark or <bit>`.
    MarkOr(u32),
    /// `mark set mark xor <bit>`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// `reject …`.
    Reject(Reject),
    /// `update @<set> { ip saddr }`.
    UpdateSaddr {
        /// The family (`ip saddr` or `ip6 saddr`).
        family: IpFamily,
        /// The dynamic set.
        set: String,
    },
    /// `dnat to <addr>:<port>` (after `meta l4proto <proto>`).
    Dnat {
        /// The endpoint's address.
        addr: IpAddr,
        /// The endpoint's port.
        port: u16,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Verdict(v) => v.fmt(f),
            Action::Vmap { key, map } => write!(f, "{key} vmap @{map}"),
            Action::SlotVmap { start, map } => {
                write!(f, "{} vmap @{map}", slot_draw(*start))
            }
            Action::DnatSlots { family, start, map } => write!(
                f,
                "dnat {} to {} map @{map}",
                ip_word(*family),
                slot_draw(*start)
            ),
            Action::MarkOr(bit) => write!(f, "mark set mark or {bit:#010x}"),
            Action::MarkXor(bit) => write!(f, "mark set mark xor {bit:#010x}"),
            Action::Masquerade => f.write_str("masquerade fully-random"),
            Action::Reject(Reject::TcpReset) => f.write_str("reject with tcp reset"),
            Action::Reject(Reject::PortUnreachable) => f.write_str("reject"),
            Action::UpdateSaddr { family, set } => {
                write!(f, "update @{set} {{ {} saddr }}", ip_word(*family))
            }
            Action::Dnat { addr, port } => match addr.family {
                IpFamily::V4 => write!(f, "dnat to {addr}:{port}"),
                IpFamily::V6 => write!(f, "dnat to [{addr}]:{port}"),
            },
        }
    }
}

/// One rule: conditions, an action, and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold, in order.
    pub matches: Vec<Match>,
    /// What the rule does.
    pub action: Action,
    /// `comment "…"`.
    pub comment: Option<String>,
}

impl Rule {
    /// A rule with no conditions.
    pub fn new(action: Action) -> Rule {
        Rule {
            matches: Vec::new(),
            action,
            comment: None,
        }
    }

    /// A rule with conditions.
    pub fn when(matches: Vec<Match>, action: Action) -> Rule {
        Rule {
            matches,
            action,
            comment: None,
        }
    }

    /// `goto <chain>`.
    pub fn goto(chain: &str) -> Rule {
        Rule::new(Action::Verdict(Verdict::Goto(chain.into())))
    }

    /// `jump <chain>`.
    pub fn jump(chain: &str) -> Rule {
        Rule::new(Action::Verdict(Verdict::Jump(chain.into())))
    }

    /// Adds a comment.
    pub fn comment(mut self, text: &str) -> Rule {
        self.comment = Some(text.into());
        self
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        self.action.fmt(f)?;
        if let Some(c) = &self.comment {
            write!(f, " comment \"{c}\"")?;
        }
        Ok(())
    }
}

/// The key of a set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemKey {
    /// `10.96.0.10` (cluster-ips).
    Addr(IpAddr),
    /// `10.96.0.10 . tcp . 80` (service-ips and the like).
    AddrProtoPort(IpAddr, Protocol, u16),
    /// `tcp . 30080` (node ports).
    ProtoPort(Protocol, u16),
    /// `30256` (health-check node ports).
    Port(u16),
    /// `16384-21844`: the slots of one endpoint in a slot map (first and last, inclusive).
    Slots(u32, u32),
    /// `10.244.1.5 . 10.244.1.5`: an endpoint as both source and destination (hairpin).
    AddrPair(IpAddr),
}

impl fmt::Display for ElemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemKey::Addr(a) => a.fmt(f),
            ElemKey::AddrProtoPort(a, p, port) => write!(f, "{a} . {} . {port}", p.as_str()),
            ElemKey::ProtoPort(p, port) => write!(f, "{} . {port}", p.as_str()),
            ElemKey::Port(port) => port.fmt(f),
            ElemKey::Slots(first, last) => write!(f, "{first}-{last}"),
            ElemKey::AddrPair(a) => write!(f, "{a} . {a}"),
        }
    }
}

/// The value of a map element: a verdict, or the endpoint a slot map's `dnat` goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemValue {
    /// `goto service-…`, `drop`, … (verdict maps).
    Verdict(Verdict),
    /// `10.244.1.5 . 8080` (endpoint slot maps).
    Endpoint(IpAddr, u16),
}

impl From<Verdict> for ElemValue {
    fn from(v: Verdict) -> Self {
        ElemValue::Verdict(v)
    }
}

impl fmt::Display for ElemValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemValue::Verdict(v) => v.fmt(f),
            ElemValue::Endpoint(a, port) => write!(f, "{a} . {port}"),
        }
    }
}

/// `numgen random mod 16384 offset <start>`: a random number in the block starting at `start`.
fn slot_draw(start: u32) -> String {
    format!("numgen random mod {SLOTS} offset {start}")
}

/// `ip` or `ip6`.
pub fn ip_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{cidr, ip};

    #[test]
    fn rules_print_as_nft_writes_them() {
        let r = Rule::when(
            vec![
                Match::Addr {
                    family: IpFamily::V4,
                    dir: Dir::Dst,
                    neg: false,
                    value: AddrValue::One(AddrItem::Host(ip("10.96.0.10"))),
                },
                Match::Dport {
                    proto: Protocol::Tcp,
                    value: PortValue::One(80),
                },
                Match::Addr {
                    family: IpFamily::V4,
                    dir: Dir::Src,
                    neg: true,
                    value: AddrValue::One(AddrItem::Prefix(cidr("10.244.0.0/16"))),
                },
            ],
            Action::Verdict(Verdict::Jump("mark-for-masquerade".into())),
        );
        assert_eq!(
            r.to_string(),
            "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        let n = Rule::new(Action::SlotVmap {
            start: 32768,
            map: "affinity-endpoints-02".into(),
        });
        assert_eq!(
            n.to_string(),
            "numgen random mod 16384 offset 32768 vmap @affinity-endpoints-02"
        );
        let s = Rule::when(
            vec![Match::L4Proto(Protocol::Tcp)],
            Action::DnatSlots {
                family: IpFamily::V6,
                start: 16384,
                map: "endpoints-tcp-01".into(),
            },
        );
        assert_eq!(
            s.to_string(),
            "meta l4proto tcp dnat ip6 to numgen random mod 16384 offset 16384 map @endpoints-tcp-01"
        );
        let h = Match::AddrPairIn {
            family: IpFamily::V4,
            set: "hairpin".into(),
        };
        assert_eq!(h.to_string(), "ip saddr . ip daddr @hairpin");
        let k = Match::KeyIn {
            key: VmapKey::DaddrProtoPort(IpFamily::V6),
            set: "gone".into(),
        };
        assert_eq!(k.to_string(), "ip6 daddr . meta l4proto . th dport @gone");
        assert_eq!(ElemKey::Slots(0, 21844).to_string(), "0-21844");
        let d = Rule::when(
            vec![Match::L4Proto(Protocol::Udp)],
            Action::Dnat {
                addr: ip("fd00::5"),
                port: 53,
            },
        );
        assert_eq!(d.to_string(), "meta l4proto udp dnat to [fd00::5]:53");
        let c = Rule::when(vec![Match::FibLocal(Dir::Src)], Action::MarkOr(0x4000)).comment("x y");
        assert_eq!(
            c.to_string(),
            "fib saddr type local mark set mark or 0x00004000 comment \"x y\""
        );
        let i = Match::IifName {
            neg: true,
            name: "veth".into(),
            wildcard: true,
        };
        assert_eq!(i.to_string(), "iifname != \"veth*\"");
        assert_eq!(
            ElemKey::AddrProtoPort(ip("10.0.0.1"), Protocol::Sctp, 9).to_string(),
            "10.0.0.1 . sctp . 9"
        );
    }
}
