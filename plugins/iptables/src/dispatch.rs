//! How a packet finds its service: upstream's linear list, or kproxy's tree of chains.
//!
//! Upstream puts one rule per service address into `KUBE-SERVICES` (and per node port into
//! `KUBE-NODEPORTS`), so the first packet of every connection is compared with every service
//! port before it meets its own: the cost grows linearly with the number of services.
//!
//! kproxy builds a radix tree instead. Every entry (one upstream rule: exact destination
//! address, protocol and port, then its target) has a bit-string key — address, then protocol,
//! then port — and the entries are sorted by it. A tree node holds the entries sharing a key
//! prefix; when there are more than [`LEAF_MAX`] of them, it skips the bits they all share and
//! splits on the next few bits — the fewest (up to [`STRIDE`], so at most 16 children) that
//! leave no child above [`LEAF_MAX`] — one rule per child that matches the
//! child's prefix (`-d 10.96.16.0/20`, `-p tcp`, `--dport 30000:30255`) and jumps to the
//! child's chain; a child with one entry is written inline. A packet thus walks at most 16 rules
//! per level over O(log n) levels, then at most [`LEAF_MAX`] exact rules.
//!
//! The behaviour is the same as upstream's list: every entry keeps its exact match, and the
//! tree's prefix rules only skip entries that cannot match. Entries with equal keys (two
//! services claiming one external IP and port) stay in their original order in one leaf, so the
//! first still wins; an entry whose target returns (a firewall or external chain that lets the
//! packet fall through) returns into its parent, where no other entry can match either, exactly
//! as it would continue down upstream's list without a match.
//!
//! The tree is a pure function of the set of entries, and a node's chain name comes from its
//! prefix, so a change of one service rewrites only the chains on its path.

use crate::names;
use kproxy_plugin_api::{IpAddr, IpFamily, Protocol};
use std::fmt::Write as _;

/// The most entries a leaf holds; more are split.
pub const LEAF_MAX: usize = 16;
/// The bits one level of the tree splits on (so at most `2^STRIDE` children).
pub const STRIDE: usize = 4;

/// What a key is made of, which decides how a prefix of it is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// Destination address, protocol, destination port (service IPs).
    Address(IpFamily),
    /// Protocol and destination port (node ports).
    Port,
}

impl Shape {
    fn addr_bits(self) -> usize {
        match self {
            Shape::Address(IpFamily::V4) => 32,
            Shape::Address(IpFamily::V6) => 128,
            Shape::Port => 0,
        }
    }

    fn total_bits(self) -> usize {
        self.addr_bits() + 24
    }
}

/// The key an entry is found by: big-endian bytes of address, protocol number and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    shape: Shape,
    bytes: Vec<u8>,
}

impl Key {
    /// A service address key.
    pub fn address(ip: IpAddr, protocol: Protocol, port: u16) -> Key {
        let n = if ip.is_v4() { 4 } else { 16 };
        let mut bytes = ip.octets[..n].to_vec();
        bytes.push(protocol.number());
        bytes.extend_from_slice(&port.to_be_bytes());
        Key {
            shape: Shape::Address(ip.family),
            bytes,
        }
    }

    /// A node port key.
    pub fn port(protocol: Protocol, port: u16) -> Key {
        let mut bytes = vec![protocol.number()];
        bytes.extend_from_slice(&port.to_be_bytes());
        Key {
            shape: Shape::Port,
            bytes,
        }
    }

    /// The number of leading bits `self` and `other` share.
    fn common_prefix(&self, other: &Key) -> usize {
        for (i, (a, b)) in self.bytes.iter().zip(&other.bytes).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        self.bytes.len() * 8
    }

    fn same_prefix(&self, other: &Key, len: usize) -> bool {
        self.common_prefix(other) >= len
    }

    /// The first `len` bits as hex plus the length: identifies a tree node.
    fn prefix_text(&self, len: usize) -> String {
        let mut out = String::new();
        for i in 0..self.bytes.len() {
            let keep = len.saturating_sub(i * 8).min(8);
            let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            let _ = write!(out, "{:02x}", self.bytes[i] & mask);
        }
        let _ = write!(out, "/{len}");
        out
    }

    /// The iptables match for "the first `len` bits equal this key's".
    fn prefix_match(&self, len: usize) -> String {
        let addr_bits = self.shape.addr_bits();
        let mut parts = Vec::new();
        if addr_bits > 0 && len > 0 {
            let a = len.min(addr_bits);
            let mut octets = [0u8; 16];
            octets[..addr_bits / 8].copy_from_slice(&self.bytes[..addr_bits / 8]);
            let family = if addr_bits == 32 {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            let masked = kproxy_plugin_api::Cidr::new(IpAddr { family, octets }, a as u8)
                .expect("length within the family");
            parts.push(format!("-d {masked}"));
        }
        if len >= addr_bits + 8 {
            let proto = match self.bytes[addr_bits / 8] {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                other => unreachable!("keys are built from Protocol, not {other}"),
            };
            parts.push(format!("-p {proto}"));
            if len > addr_bits + 8 {
                let bits = len - addr_bits - 8;
                let at = addr_bits / 8 + 1;
                let port = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
                let mask = if bits >= 16 {
                    0xffff
                } else {
                    !(0xffffu16 >> bits)
                };
                let (lo, hi) = (port & mask, port | !mask);
                if lo == hi {
                    parts.push(format!("-m {proto} --dport {lo}"));
                } else {
                    parts.push(format!("-m {proto} --dport {lo}:{hi}"));
                }
            }
        }
        parts.join(" ")
    }

    /// Where a split of `bits` bits ends, for entries that first differ at bit
    /// `first_difference`: never across the address's end and never inside the protocol (a
    /// protocol cannot be matched by a prefix).
    fn split_end(&self, first_difference: usize, bits: usize) -> usize {
        let addr_bits = self.shape.addr_bits();
        if first_difference < addr_bits {
            (first_difference + bits).min(addr_bits)
        } else if first_difference < addr_bits + 8 {
            addr_bits + 8
        } else {
            (first_difference + bits).min(self.shape.total_bits())
        }
    }
}

/// One rule of a dispatch chain: its key and the rule text after `-A <chain> ` (which matches
/// the key exactly, so it is correct wherever the tree puts it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// The rule text.
    pub rule: String,
}

/// Lays out `entries` under the chain `root`: returns the root's rules first, then every tree
/// chain with its rules. `identity` (e.g. `nat/KPROXY-SERVICES`) keeps tree chain names of
/// different roots apart. With `tree` false the root holds every entry in the given order
/// (upstream's layout).
pub fn layout(
    root: &str,
    identity: &str,
    entries: Vec<Entry>,
    tree: bool,
) -> Vec<(String, Vec<String>)> {
    if !tree {
        return vec![(
            root.to_string(),
            entries.into_iter().map(|e| e.rule).collect(),
        )];
    }
    let mut entries = entries;
    // Stable: entries with equal keys keep their order, so the first still wins.
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = vec![(root.to_string(), Vec::new())];
    build(&entries, identity, 0, &mut out);
    out
}

/// The size of the largest run of `entries` (sorted) sharing their first `len` bits.
fn largest_group(entries: &[Entry], len: usize) -> usize {
    let mut largest = 0;
    let mut start = 0;
    for i in 1..=entries.len() {
        if i == entries.len() || !entries[i].key.same_prefix(&entries[start].key, len) {
            largest = largest.max(i - start);
            start = i;
        }
    }
    largest
}

/// Fills the rules of `out[index]` (the chain for `entries`) and appends the chains below it.
fn build(entries: &[Entry], identity: &str, index: usize, out: &mut Vec<(String, Vec<String>)>) {
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return,
    };
    let differ = first.key.common_prefix(&last.key);
    // Keys of different shapes never meet in one root; equal keys cannot be split further.
    if entries.len() <= LEAF_MAX || differ >= first.key.shape.total_bits() {
        out[index].1 = entries.iter().map(|e| e.rule.clone()).collect();
        return;
    }
    // The fewest bits that leave no child above LEAF_MAX (fewer, fuller chains), else STRIDE.
    let end = (1..STRIDE)
        .map(|bits| first.key.split_end(differ, bits))
        .find(|&end| largest_group(entries, end) <= LEAF_MAX)
        .unwrap_or_else(|| first.key.split_end(differ, STRIDE));
    let mut rules = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let head = &entries[start].key;
        let stop = start
            + entries[start..]
                .iter()
                .take_while(|e| e.key.same_prefix(head, end))
                .count();
        let group = &entries[start..stop];
        if group.len() == 1 {
            rules.push(group[0].rule.clone());
        } else {
            let name = names::dispatch_chain(&format!("{identity}/{}", head.prefix_text(end)));
            rules.push(format!("{} -j {name}", head.prefix_match(end)));
            out.push((name, Vec::new()));
            let child = out.len() - 1;
            build(group, identity, child, out);
        }
        start = stop;
    }
    out[index].1 = rules;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn v4(i: u32) -> IpAddr {
        Ipv4Addr::from(0x0a60_0000 + i).into()
    }

    fn entries(n: u32) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                key: Key::address(v4(i), Protocol::Tcp, 80),
                rule: format!("-d {}/32 -p tcp -m tcp --dport 80 -j SVC-{i}", v4(i)),
            })
            .collect()
    }

    /// Walks the chains as the kernel would for a packet to `dst`, protocol, port: returns
    /// the first matching entry's target and how many rules were looked at.
    fn walk(
        chains: &[(String, Vec<String>)],
        dst: IpAddr,
        proto: &str,
        port: u16,
    ) -> (Option<String>, usize) {
        let map: HashMap<&str, &Vec<String>> =
            chains.iter().map(|(n, r)| (n.as_str(), r)).collect();
        let mut seen = 0;
        fn matches(rule: &str, dst: IpAddr, proto: &str, port: u16) -> bool {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let mut i = 0;
            while i < words.len() {
                match words[i] {
                    "-d" => {
                        let c: kproxy_plugin_api::Cidr = words[i + 1].parse().unwrap();
                        if !c.contains(dst) {
                            return false;
                        }
                    }
                    "-p" if words[i + 1] != proto => return false,
                    "--dport" => {
                        let (lo, hi) = match words[i + 1].split_once(':') {
                            Some((l, h)) => (l.parse().unwrap(), h.parse().unwrap()),
                            None => {
                                let p: u16 = words[i + 1].parse().unwrap();
                                (p, p)
                            }
                        };
                        if port < lo || port > hi {
                            return false;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            true
        }
        fn go(
            map: &HashMap<&str, &Vec<String>>,
            chain: &str,
            dst: IpAddr,
            proto: &str,
            port: u16,
            seen: &mut usize,
        ) -> Option<String> {
            for rule in map[chain].iter() {
                *seen += 1;
                if !matches(rule, dst, proto, port) {
                    continue;
                }
                let target = rule.rsplit(" -j ").next().unwrap();
                if map.contains_key(target) {
                    if let Some(t) = go(map, target, dst, proto, port, seen) {
                        return Some(t);
                    }
                } else {
                    return Some(target.to_string());
                }
            }
            None
        }
        let found = go(&map, &chains[0].0, dst, proto, port, &mut seen);
        (found, seen)
    }

    #[test]
    fn every_entry_is_found_and_the_walk_is_short() {
        let n = 30_000;
        let chains = layout("ROOT", "nat/ROOT", entries(n), true);
        let mut worst = 0;
        for i in (0..n).step_by(97).chain([0, n - 1]) {
            let (found, seen) = walk(&chains, v4(i), "tcp", 80);
            assert_eq!(found.as_deref(), Some(format!("SVC-{i}").as_str()));
            worst = worst.max(seen);
        }
        // Four levels of at most 16 rules, then a leaf of at most 16: far below 30,000.
        assert!(worst <= 5 * 16, "walked {worst} rules");
        // Misses: another port, protocol or address.
        assert_eq!(walk(&chains, v4(5), "tcp", 81).0, None);
        assert_eq!(walk(&chains, v4(5), "udp", 80).0, None);
        assert_eq!(walk(&chains, v4(n + 5), "tcp", 80).0, None);
        // Every chain but the root is small, and every entry appears exactly once.
        let total: usize = chains
            .iter()
            .map(|(_, r)| r.iter().filter(|r| r.contains("SVC-")).count())
            .sum();
        assert_eq!(total, n as usize);
        assert!(chains.iter().all(|(_, r)| r.len() <= 16));
        assert!(chains.iter().all(|(c, _)| c.len() <= names::CHAIN_MAX));
    }

    #[test]
    fn linear_layout_is_upstreams_list() {
        let chains = layout("ROOT", "nat/ROOT", entries(40), false);
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].1.len(), 40);
        assert!(chains[0].1[3].ends_with("-j SVC-3"));
        assert_eq!(walk(&chains, v4(39), "tcp", 80).1, 40);
    }

    #[test]
    fn small_sets_stay_inline() {
        let chains = layout("ROOT", "nat/ROOT", entries(16), true);
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].1.len(), 16);
    }

    #[test]
    fn ports_of_one_address_and_protocols_split_too() {
        let ip = v4(1);
        let mut list = Vec::new();
        for port in 1000..1100u16 {
            for (proto, name) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
                list.push(Entry {
                    key: Key::address(ip, proto, port),
                    rule: format!(
                        "-d {ip}/32 -p {name} -m {name} --dport {port} -j S-{name}-{port}"
                    ),
                });
            }
        }
        let chains = layout("ROOT", "nat/ROOT", list, true);
        for port in [1000u16, 1057, 1099] {
            for name in ["tcp", "udp"] {
                let (found, seen) = walk(&chains, ip, name, port);
                assert_eq!(found, Some(format!("S-{name}-{port}")));
                assert!(seen <= 4 * 16, "{seen}");
            }
        }
        assert!(
            chains
                .iter()
                .any(|(_, r)| r.iter().any(|r| r.contains("--dport 1024:1151 -j"))),
            "{chains:#?}"
        );
    }

    #[test]
    fn equal_keys_keep_their_order() {
        let mut list = entries(40);
        list.push(Entry {
            key: Key::address(v4(7), Protocol::Tcp, 80),
            rule: format!("-d {}/32 -p tcp -m tcp --dport 80 -j SECOND", v4(7)),
        });
        let chains = layout("ROOT", "nat/ROOT", list, true);
        assert_eq!(walk(&chains, v4(7), "tcp", 80).0.as_deref(), Some("SVC-7"));
    }

    #[test]
    fn node_port_keys_match_protocol_and_port_ranges() {
        let list: Vec<Entry> = (0..200u16)
            .map(|i| Entry {
                key: Key::port(Protocol::Udp, 30000 + i),
                rule: format!("-p udp -m udp --dport {} -j NP-{i}", 30000 + i),
            })
            .collect();
        let chains = layout("NP", "nat/NP", list, true);
        let any: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        assert_eq!(
            walk(&chains, any, "udp", 30150).0.as_deref(),
            Some("NP-150")
        );
        assert_eq!(walk(&chains, any, "tcp", 30150).0, None);
        let k = Key::port(Protocol::Udp, 30150);
        assert_eq!(k.prefix_match(8 + 12), "-p udp -m udp --dport 30144:30159");
        assert_eq!(k.prefix_match(8), "-p udp");
        let a = Key::address(
            "fd00:10:96::1".parse::<std::net::IpAddr>().unwrap().into(),
            Protocol::Tcp,
            80,
        );
        assert_eq!(a.prefix_match(64), "-d fd00:10:96::/64");
        assert_eq!(
            a.prefix_match(128 + 24),
            "-d fd00:10:96::1/128 -p tcp -m tcp --dport 80"
        );
    }
}
