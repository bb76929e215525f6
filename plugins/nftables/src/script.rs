//! The writers a transaction is planned into: [`Sink`] is what the renderer and planner call,
//! [`Script`] writes it as an `nft -f` script (one command per line, map elements one per line
//! inside the braces, so the line number nft reports for a failure points at one object), and
//! [`crate::netlink::Batch`] encodes the same transaction as one nf_tables netlink batch.

use crate::rule::{ip_word, ElemKey, ElemValue, Rule};
use crate::slots::SLOTS;
use kproxy_plugin_api::{Cidr, IpAddr, IpFamily, Protocol};
use std::fmt::Write as _;

/// The type of a set's or map's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`.
    Addr(IpFamily),
    /// `ipv4_addr . inet_proto . inet_service`.
    AddrProtoPort(IpFamily),
    /// `inet_proto . inet_service`.
    ProtoPort,
    /// `inet_service`.
    Port,
    /// `typeof numgen random mod 16384` (interval): slot blocks of an even random choice
    /// ([`crate::slots`]).
    Slots,
    /// `ipv4_addr . ipv4_addr`: a source and destination pair.
    AddrPair(IpFamily),
}

impl KeyType {
    fn text(self) -> String {
        let addr = |f| match f {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        };
        match self {
            KeyType::Addr(f) => addr(f).into(),
            KeyType::AddrProtoPort(f) => format!("{} . inet_proto . inet_service", addr(f)),
            KeyType::ProtoPort => "inet_proto . inet_service".into(),
            KeyType::Port => "inet_service".into(),
            KeyType::Slots => format!("numgen random mod {SLOTS}"),
            KeyType::AddrPair(f) => format!("{} . {}", addr(f), addr(f)),
        }
    }
}

/// A named set or map of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// The key type.
    pub key: KeyType,
    /// What elements map to: nothing (a set), a verdict or an endpoint.
    pub value: SetValue,
    /// Keys are ranges (`flags interval`); in a set, overlapping ones are merged
    /// (`auto-merge`).
    pub interval: bool,
    /// A dynamic set whose elements expire after this many seconds (`flags dynamic,timeout`).
    pub timeout: Option<u32>,
    /// `comment "…"`.
    pub comment: Option<&'a str>,
}

/// What the elements of a set or map map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetValue {
    /// Nothing: a set.
    None,
    /// A verdict: a verdict map.
    Verdict,
    /// An endpoint `addr . port` of this family, for `dnat … map` (its port typed as the
    /// protocol's `dport`, as nft's `typeof` needs to accept `meta l4proto <proto>` before it).
    Endpoint(IpFamily, Protocol),
}

impl SetValue {
    /// The value's declaration after the colon, if it is a map; `typeof` form when `typeof`.
    fn text(self, typeof_: bool) -> Option<String> {
        match self {
            SetValue::None => None,
            SetValue::Verdict => Some("verdict".into()),
            SetValue::Endpoint(f, p) if typeof_ => {
                Some(format!("{} daddr . {} dport", ip_word(f), p.as_str()))
            }
            SetValue::Endpoint(f, _) => Some(format!("{} . inet_service", KeyType::Addr(f).text())),
        }
    }
}

impl SetSpec<'_> {
    /// `set` or `map`.
    pub fn what(&self) -> &'static str {
        if self.value == SetValue::None {
            "set"
        } else {
            "map"
        }
    }

    /// The declaration's body, as in `add set t s { <body> }`.
    pub fn body(&self) -> String {
        let typeof_ = self.key == KeyType::Slots;
        let keyword = if typeof_ { "typeof" } else { "type" };
        let mut b = format!("{keyword} {}", self.key.text());
        if let Some(v) = self.value.text(typeof_) {
            let _ = write!(b, " : {v}");
        }
        b.push_str(" ;");
        if self.interval {
            b.push_str(" flags interval ;");
            if self.value == SetValue::None {
                b.push_str(" auto-merge ;");
            }
        }
        if let Some(t) = self.timeout {
            let _ = write!(b, " flags dynamic,timeout ; timeout {t}s ;");
        }
        if let Some(c) = self.comment {
            let _ = write!(b, " comment \"{c}\" ;");
        }
        b
    }
}

/// The key of an element as a writer receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKey<'a> {
    /// A key of kproxy's dispatch sets and maps.
    Key(&'a ElemKey),
    /// A prefix of an interval set.
    Cidr(&'a Cidr),
    /// A client address of an affinity set.
    Client(IpAddr),
}

/// One element as a writer receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemRef<'a> {
    /// The key.
    pub key: SetKey<'a>,
    /// The value, in a map.
    pub value: Option<&'a ElemValue>,
    /// `(timeout, expires)` in seconds, for a remembered affinity client.
    pub timeout: Option<(u32, u64)>,
}

impl<'a> ElemRef<'a> {
    /// An element of a dispatch set or map.
    pub fn new(key: &'a ElemKey, value: Option<&'a ElemValue>) -> Self {
        ElemRef {
            key: SetKey::Key(key),
            value,
            timeout: None,
        }
    }
}

impl std::fmt::Display for ElemRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            SetKey::Key(k) => k.fmt(f)?,
            SetKey::Cidr(c) => c.fmt(f)?,
            SetKey::Client(a) => a.fmt(f)?,
        }
        if let Some(v) = self.value {
            write!(f, " : {v}")?;
        }
        if let Some((timeout, expires)) = self.timeout {
            write!(f, " timeout {timeout}s expires {expires}s")?;
        }
        Ok(())
    }
}

/// What a transaction on one family's table is made of. Calls are made in transaction order;
/// a writer may count the objects it adds ([`Sink::objects`]).
pub trait Sink {
    /// Directs the calls that follow at `family`'s table called `table`.
    fn begin(&mut self, family: IpFamily, table: &str);
    /// Re-creates the table: deletes it if it exists and adds it empty, with a comment.
    fn reset_table(&mut self, comment: &str);
    /// Deletes the table if it exists (a family that was turned off).
    fn remove_table(&mut self);
    /// Adds a regular chain (a no-op if it exists).
    fn add_chain(&mut self, name: &str);
    /// Adds a base chain attached to a hook, policy accept.
    fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32);
    /// Removes every rule of a chain.
    fn flush_chain(&mut self, name: &str);
    /// Deletes an (empty, unreferenced) chain.
    fn delete_chain(&mut self, name: &str);
    /// Appends a rule to a chain.
    fn add_rule(&mut self, chain: &str, rule: &Rule);
    /// Adds a named set or map.
    fn add_set(&mut self, spec: &SetSpec<'_>);
    /// Deletes a named set.
    fn delete_set(&mut self, name: &str);
    /// Adds elements to a set or map; nothing when there are none.
    fn add_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>);
    /// Deletes elements (by key) from a set or map; nothing when there are none.
    fn delete_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>);
    /// Chains, rules, sets and elements added so far (deletions not counted).
    fn objects(&self) -> u64;
}

/// A growing `nft -f` script (of one or more tables).
#[derive(Debug)]
pub struct Script<'a> {
    out: &'a mut String,
    /// `ip kproxy` or `ip6 kproxy`: where the commands go.
    table: String,
    /// Chains, rules, sets and elements added by this script (deletions not counted).
    pub objects: u64,
}

impl<'a> Script<'a> {
    /// Starts writing commands for `family table` (e.g. `ip`, `kproxy`) onto `out`.
    pub fn new(out: &'a mut String, family: &str, table: &str) -> Self {
        Script {
            out,
            table: format!("{family} {table}"),
            objects: 0,
        }
    }

    /// Starts writing onto `out`; [`Sink::begin`] picks the table.
    pub fn empty(out: &'a mut String) -> Self {
        Script {
            out,
            table: String::new(),
            objects: 0,
        }
    }

    fn elements<'e>(
        &mut self,
        verb: &str,
        set: &str,
        items: impl IntoIterator<Item = ElemRef<'e>>,
        count: bool,
    ) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return;
        }
        let _ = write!(self.out, "{verb} element {} {set} {{", self.table);
        let mut first = true;
        for item in items {
            if count {
                self.objects += 1;
            }
            self.out.push_str(if first { "\n\t" } else { ",\n\t" });
            if count {
                let _ = write!(self.out, "{item}");
            } else {
                // A deletion names the key only.
                let key = ElemRef {
                    value: None,
                    timeout: None,
                    ..item
                };
                let _ = write!(self.out, "{key}");
            }
            first = false;
        }
        self.out.push_str("\n}\n");
    }
}

impl Sink for Script<'_> {
    fn begin(&mut self, family: IpFamily, table: &str) {
        self.table = format!("{} {table}", crate::rule::ip_word(family));
    }

    fn reset_table(&mut self, comment: &str) {
        let t = &self.table;
        let _ = writeln!(
            self.out,
            "add table {t}\ndelete table {t}\nadd table {t} {{ comment \"{comment}\" ; }}"
        );
    }

    fn remove_table(&mut self) {
        let t = &self.table;
        let _ = writeln!(self.out, "add table {t}\ndelete table {t}");
    }

    fn add_chain(&mut self, name: &str) {
        self.objects += 1;
        let _ = writeln!(self.out, "add chain {} {name}", self.table);
    }

    fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        self.objects += 1;
        let _ = writeln!(
            self.out,
            "add chain {} {name} {{ type {kind} hook {hook} priority {priority} ; policy accept ; }}",
            self.table
        );
    }

    fn flush_chain(&mut self, name: &str) {
        let _ = writeln!(self.out, "flush chain {} {name}", self.table);
    }

    fn delete_chain(&mut self, name: &str) {
        let _ = writeln!(self.out, "delete chain {} {name}", self.table);
    }

    fn add_rule(&mut self, chain: &str, rule: &Rule) {
        self.objects += 1;
        let _ = writeln!(self.out, "add rule {} {chain} {rule}", self.table);
    }

    fn add_set(&mut self, spec: &SetSpec<'_>) {
        self.objects += 1;
        let _ = writeln!(
            self.out,
            "add {} {} {} {{ {} }}",
            spec.what(),
            self.table,
            spec.name,
            spec.body()
        );
    }

    fn delete_set(&mut self, name: &str) {
        let _ = writeln!(self.out, "delete set {} {name}", self.table);
    }

    fn add_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>) {
        self.elements("add", set, elems, true);
    }

    fn delete_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>) {
        self.elements("delete", set, elems, false);
    }

    fn objects(&self) -> u64 {
        self.objects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_go_one_per_line_and_are_counted() {
        let mut out = String::new();
        let mut s = Script::new(&mut out, "ip", "kproxy");
        let a = ElemKey::ProtoPort(Protocol::Tcp, 1);
        let b = ElemKey::ProtoPort(Protocol::Udp, 2);
        let drop = ElemValue::Verdict(crate::rule::Verdict::Drop);
        let accept = ElemValue::Verdict(crate::rule::Verdict::Accept);
        s.add_elements(
            "m",
            [
                ElemRef::new(&a, Some(&drop)),
                ElemRef::new(&b, Some(&accept)),
            ],
        );
        s.delete_elements("m", [ElemRef::new(&a, Some(&drop))]);
        s.add_elements("m", Vec::new());
        assert_eq!(s.objects, 2);
        assert_eq!(
            out,
            "add element ip kproxy m {\n\ttcp . 1 : drop,\n\tudp . 2 : accept\n}\n\
             delete element ip kproxy m {\n\ttcp . 1\n}\n"
        );
    }

    #[test]
    fn set_bodies_read_as_nft_writes_them() {
        let aff = SetSpec {
            name: "a",
            key: KeyType::Addr(IpFamily::V4),
            value: SetValue::None,
            interval: false,
            timeout: Some(10),
            comment: None,
        };
        assert_eq!(
            aff.body(),
            "type ipv4_addr ; flags dynamic,timeout ; timeout 10s ;"
        );
        let map = SetSpec {
            name: "m",
            key: KeyType::AddrProtoPort(IpFamily::V6),
            value: SetValue::Verdict,
            interval: false,
            timeout: None,
            comment: Some("x"),
        };
        assert_eq!(map.what(), "map");
        assert_eq!(
            map.body(),
            "type ipv6_addr . inet_proto . inet_service : verdict ; comment \"x\" ;"
        );
        let slots = SetSpec {
            name: "s",
            key: KeyType::Slots,
            value: SetValue::Endpoint(IpFamily::V4, Protocol::Udp),
            interval: true,
            timeout: None,
            comment: None,
        };
        assert_eq!(
            slots.body(),
            "typeof numgen random mod 16384 : ip daddr . udp dport ; flags interval ;"
        );
    }
}
