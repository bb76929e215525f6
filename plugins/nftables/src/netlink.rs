//! The kernel writer: a transaction as one nf_tables netlink batch, sent on a
//! `NETLINK_NETFILTER` socket, without running `nft`.
//!
//! `nft -f` parses and evaluates the script and, before that, loads its cache of the whole
//! table from the kernel: with 10,000 services that alone costs ~130 ms, for a change of one
//! endpoint. [`Batch`] encodes the same objects ([`crate::rule`]) as `nft` would — the same
//! expressions, registers, set types and userdata, so `nft list table` reads them back exactly
//! as if nft had written them — and [`NetlinkSocket::commit`] sends the batch in one
//! `sendmsg`: the kernel applies it atomically (all or nothing) before the call returns.
//!
//! Anonymous sets (the `numgen` choice of endpoints, `{ … }` address lists) get names kproxy
//! picks (`__map<n>`, `__set<n>`) instead of `__map%d`: the kernel names a `%d` set by scanning
//! every set of the table, which made a full sync with thousands of such sets quadratic.
//!
//! Every message carries a sequence number; on failure the kernel names the first one it
//! refused, and the error quotes what that message did (the object, and for incremental syncs
//! the rule's text) with the kernel's errno and extended-ack message.

use crate::rule::{
    Action, AddrItem, AddrValue, Dir, ElemKey, ElemValue, Match, PortValue, Reject, Rule, Verdict,
    VmapKey,
};
use crate::script::{ElemRef, KeyType, SetKey, SetSpec, SetValue, Sink};
use crate::slots::SLOTS;
use kproxy_plugin_api::{IpAddr, IpFamily, PluginError, Protocol};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// Netlink and nfnetlink framing.
const NETLINK_NETFILTER: libc::c_int = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLM_F_CAPPED: u16 = 0x100;

// nf_tables messages.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

// Set flags and data types.
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

// nft's own datatype ids (userspace `enum datatypes`), which it reads back from the kernel to
// print keys; concatenations shift each part by 6 bits.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

// libnftnl userdata tags.
const UDATA_TABLE_COMMENT: u8 = 0;
const UDATA_RULE_COMMENT: u8 = 0;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_MERGE_ELEMENTS: u8 = 2;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
// nft's expression ids in `typeof` userdata.
const TYPEOF_EXPR_VERDICT: u32 = 1;
const TYPEOF_EXPR_PAYLOAD: u32 = 7;
const TYPEOF_EXPR_CONCAT: u32 = 13;
const TYPEOF_EXPR_NUMGEN: u32 = 23;
// nft's protocol header ids (`enum proto_desc_id`) and field indexes, for payload `typeof`.
const PROTO_DESC_UDP: u32 = 6;
const PROTO_DESC_TCP: u32 = 8;
const PROTO_DESC_SCTP: u32 = 10;
const PROTO_DESC_IP: u32 = 12;
const PROTO_DESC_IP6: u32 = 13;
const IPHDR_DADDR: u32 = 12;
const IP6HDR_DADDR: u32 = 9;
const TH_DPORT: u32 = 2;
const UDATA_SET_COMMENT: u8 = 7;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;

// Verdict codes.
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

// Registers: the verdict register, 16-byte register 1 (= 32-bit registers 8–11) and 2.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_00: u32 = 8;

/// Element attributes of one message are kept under this many bytes: a nested attribute's
/// length is 16 bits.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 48 * 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing netlink message buffer with nested attributes.
#[derive(Debug, Default)]
struct Buf {
    bytes: Vec<u8>,
}

impl Buf {
    fn pad(&mut self) {
        let n = align4(self.bytes.len());
        self.bytes.resize(n, 0);
    }

    /// Starts a message; returns its offset for [`Buf::end_msg`].
    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.extend_from_slice(&[family, 0]);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = (self.bytes.len() - start) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let len = (4 + s.len() + 1) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        let len = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` holding `data`, nested in `ty`.
    fn data_value(&mut self, ty: u16, data: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, data);
        self.end_nest(n);
    }

    /// `NFTA_DATA_VERDICT` nested in `ty`.
    fn data_verdict(&mut self, ty: u16, v: &Verdict) {
        let n = self.nest(ty);
        let inner = self.nest(NFTA_DATA_VERDICT);
        let (code, chain) = match v {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
        };
        self.be32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            self.str(NFTA_VERDICT_CHAIN, c);
        }
        self.end_nest(inner);
        self.end_nest(n);
    }
}

/// libnftnl's userdata: `(tag, len, value)` triples.
fn udata(items: &[(u8, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (tag, value) in items {
        v.push(*tag);
        v.push(value.len() as u8);
        v.extend_from_slice(value);
    }
    v
}

/// `typeof numgen random mod N` as nft stores it: the expression id and the expression's own
/// userdata (type random, modulus, offset 0).
fn numgen_typeof(modulus: u32) -> Vec<u8> {
    let data = udata(&[
        (0, &1u32.to_ne_bytes()),
        (1, &modulus.to_ne_bytes()),
        (2, &0u32.to_ne_bytes()),
    ]);
    udata(&[(0, &TYPEOF_EXPR_NUMGEN.to_ne_bytes()), (1, &data)])
}

/// `: verdict` in a `typeof` map, as nft stores it.
fn verdict_typeof() -> Vec<u8> {
    udata(&[(0, &TYPEOF_EXPR_VERDICT.to_ne_bytes()), (1, &[])])
}

/// `: ip daddr . tcp dport` in a `typeof` map, as nft stores it: a concatenation whose parts
/// are payload expressions, each named by its protocol header and field.
fn endpoint_typeof(family: IpFamily, proto: Protocol) -> Vec<u8> {
    let payload = |desc: u32, field: u32| {
        let inner = udata(&[(0, &desc.to_ne_bytes()), (1, &field.to_ne_bytes())]);
        udata(&[(0, &TYPEOF_EXPR_PAYLOAD.to_ne_bytes()), (1, &inner)])
    };
    let addr = match family {
        IpFamily::V4 => payload(PROTO_DESC_IP, IPHDR_DADDR),
        IpFamily::V6 => payload(PROTO_DESC_IP6, IP6HDR_DADDR),
    };
    let l4 = match proto {
        Protocol::Tcp => PROTO_DESC_TCP,
        Protocol::Udp => PROTO_DESC_UDP,
        Protocol::Sctp => PROTO_DESC_SCTP,
    };
    let port = payload(l4, TH_DPORT);
    let parts = udata(&[(0, &addr), (1, &port)]);
    udata(&[(0, &TYPEOF_EXPR_CONCAT.to_ne_bytes()), (1, &parts)])
}

/// An endpoint as a slot map's data: the address, then the port in its own 4-byte slot.
fn endpoint_bytes(addr: IpAddr, port: u16) -> Vec<u8> {
    let mut v = addr_vec(addr);
    v.extend_from_slice(&port.to_be_bytes());
    v.resize(align4(v.len()), 0);
    v
}

fn comment_bytes(text: &str) -> Vec<u8> {
    // Userdata values are at most 255 bytes, NUL included.
    let mut b: Vec<u8> = text.as_bytes().iter().copied().take(254).collect();
    b.push(0);
    b
}

/// The bytes of an address as the kernel compares them.
fn addr_vec(a: IpAddr) -> Vec<u8> {
    match a.family {
        IpFamily::V4 => a.octets[..4].to_vec(),
        IpFamily::V6 => a.octets.to_vec(),
    }
}

fn family_code(f: IpFamily) -> u8 {
    match f {
        IpFamily::V4 => libc::NFPROTO_IPV4 as u8,
        IpFamily::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

/// The kernel's register layout of a key: each part starts on a 4-byte boundary.
fn key_bytes(key: &ElemKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    let mut part = |bytes: &[u8]| {
        v.extend_from_slice(bytes);
        v.resize(align4(v.len()), 0);
    };
    match key {
        ElemKey::Addr(a) => part(&addr_vec(*a)),
        ElemKey::AddrProtoPort(a, p, port) => {
            part(&addr_vec(*a));
            part(&[p.number()]);
            part(&port.to_be_bytes());
        }
        ElemKey::ProtoPort(p, port) => {
            part(&[p.number()]);
            part(&port.to_be_bytes());
        }
        ElemKey::Port(port) => v.extend_from_slice(&port.to_be_bytes()),
        // A slot range is two kernel elements ([`key_parts`]); alone, its first slot.
        ElemKey::Slots(first, _) => v.extend_from_slice(&first.to_be_bytes()),
        ElemKey::AddrPair(a) => {
            part(&addr_vec(*a));
            part(&addr_vec(*a));
        }
    }
    v
}

/// The kernel elements one key is made of: `(key bytes, interval end)`. A slot range is its
/// first slot and, flagged as an interval end, the slot after its last (the numgen result is
/// converted to big endian before the lookup, as nft does, so ranges sort as numbers).
fn key_parts(key: &ElemKey) -> Vec<(Vec<u8>, bool)> {
    match key {
        ElemKey::Slots(first, last) => vec![
            (first.to_be_bytes().to_vec(), false),
            ((last + 1).to_be_bytes().to_vec(), true),
        ],
        k => vec![(key_bytes(k), false)],
    }
}

/// `(nft type id, key length, concat field lengths, byte order)` of a key type.
fn key_type(k: KeyType) -> (u32, u32, Vec<u32>, u32) {
    let addr = |f| match f {
        IpFamily::V4 => (TYPE_IPADDR, 4u32),
        IpFamily::V6 => (TYPE_IP6ADDR, 16u32),
    };
    match k {
        KeyType::Addr(f) => {
            let (t, l) = addr(f);
            (t, l, Vec::new(), BYTEORDER_BIG)
        }
        KeyType::AddrProtoPort(f) => {
            let (t, l) = addr(f);
            let ty = (((t << TYPE_BITS) | TYPE_INET_PROTOCOL) << TYPE_BITS) | TYPE_INET_SERVICE;
            (ty, l + 4 + 4, vec![l, 1, 2], BYTEORDER_BIG)
        }
        KeyType::ProtoPort => (
            (TYPE_INET_PROTOCOL << TYPE_BITS) | TYPE_INET_SERVICE,
            8,
            vec![1, 2],
            BYTEORDER_BIG,
        ),
        KeyType::Port => (TYPE_INET_SERVICE, 2, Vec::new(), BYTEORDER_BIG),
        KeyType::Slots => (TYPE_INTEGER, 4, Vec::new(), BYTEORDER_HOST),
        KeyType::AddrPair(f) => {
            let (t, l) = addr(f);
            ((t << TYPE_BITS) | t, 2 * l, vec![l, l], BYTEORDER_BIG)
        }
    }
}

/// One interval of an address set: the first address and the one after the last, if any.
fn interval_elements(items: &[AddrItem]) -> Vec<(Vec<u8>, bool)> {
    // Ranges as u128 over the family's width.
    let width = items
        .first()
        .map_or(32, |i| if i.range().0.is_v4() { 32u32 } else { 128 });
    let to_int = |a: IpAddr| -> u128 {
        let b = addr_vec(a);
        b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x))
    };
    let from_int = |v: u128| -> Vec<u8> {
        let n = (width / 8) as usize;
        (0..n).map(|i| (v >> (8 * (n - 1 - i))) as u8).collect()
    };
    let mut ranges: Vec<(u128, u128)> = items
        .iter()
        .map(|i| {
            let (a, len) = i.range();
            let start = to_int(a);
            let host_bits = width - u32::from(len);
            let size: u128 = if host_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            (start, start | size)
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let max = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let mut out = Vec::new();
    for (s, e) in merged {
        out.push((from_int(s), false));
        if e < max {
            out.push((from_int(e + 1), true));
        }
    }
    out
}

/// What a message of the batch did, for error messages. Only incremental batches (a few
/// messages) keep the object's name and the rule's text; a full sync's million messages keep
/// only `what`, and the name is read back from the message itself if the kernel refuses it.
#[derive(Debug, Clone)]
struct Desc {
    what: &'static str,
    object: Option<String>,
    rule: Option<String>,
}

/// The batch is written in chunks of about this size (sent together with one `sendmsg`), so a
/// 200 MB full sync never needs one contiguous buffer that doubles as it grows.
const CHUNK_BYTES: usize = 4 << 20;

/// One nf_tables transaction, built message by message; see the module docs.
#[derive(Debug)]
pub struct Batch<'n> {
    /// Finished chunks.
    chunks: Vec<Vec<u8>>,
    /// The chunk being written.
    buf: Buf,
    family: u8,
    ip: IpFamily,
    table: String,
    seq: u32,
    descs: Vec<Desc>,
    /// Quote each rule's text in its description (incremental syncs: few rules).
    describe_rules: bool,
    /// The transaction-local id of the next anonymous set.
    next_set_id: u32,
    /// The number of the next anonymous set's name; kept by the caller across batches so names
    /// never repeat in a table.
    names: &'n mut u64,
    objects: u64,
}

impl<'n> Batch<'n> {
    /// An empty batch. `anon_names` numbers anonymous sets across batches.
    pub fn new(anon_names: &'n mut u64, describe_rules: bool) -> Self {
        let mut buf = Buf::default();
        let begin = buf.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        buf.end_msg(begin);
        Batch {
            chunks: Vec::new(),
            buf,
            family: libc::NFPROTO_IPV4 as u8,
            ip: IpFamily::V4,
            table: String::new(),
            seq: 1,
            descs: Vec::new(),
            describe_rules,
            next_set_id: 1,
            names: anon_names,
            objects: 0,
        }
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// The batch's size in bytes (without the end marker).
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum::<usize>() + self.buf.bytes.len()
    }

    fn msg(&mut self, ty: u16, flags: u16, desc: Desc) -> usize {
        self.seq += 1;
        self.descs.push(desc);
        if self.buf.bytes.len() >= CHUNK_BYTES {
            let full =
                std::mem::replace(&mut self.buf.bytes, Vec::with_capacity(CHUNK_BYTES + 65536));
            self.chunks.push(full);
        }
        self.buf.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            self.seq,
            self.family,
            0,
        )
    }

    fn desc(&self, what: &'static str, object: &str) -> Desc {
        Desc {
            what,
            object: self.describe_rules.then(|| object.to_string()),
            rule: None,
        }
    }

    /// The finished batch: its chunks (the messages and the end marker), what each message
    /// did, and the first message's sequence number.
    fn finish(mut self) -> (Vec<Vec<u8>>, Vec<Desc>, u32) {
        let end = self.buf.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq + 1,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        self.buf.end_msg(end);
        self.chunks.push(self.buf.bytes);
        (self.chunks, self.descs, 2)
    }

    fn table_msg(&mut self, ty: u16, flags: u16, comment: Option<&str>) {
        let what = if ty == NFT_MSG_NEWTABLE {
            "add table"
        } else {
            "delete table"
        };
        let d = self.desc(what, &self.table.clone());
        let m = self.msg(ty, flags, d);
        let table = self.table.clone();
        self.buf.str(NFTA_TABLE_NAME, &table);
        if let Some(c) = comment {
            self.buf.attr(
                NFTA_TABLE_USERDATA,
                &udata(&[(UDATA_TABLE_COMMENT, &comment_bytes(c))]),
            );
        }
        self.buf.end_msg(m);
    }

    /// Adds an anonymous set with `elements` (key bytes, interval end) and returns its name
    /// and transaction id.
    fn anonymous_set(
        &mut self,
        prefix: &str,
        flags: u32,
        key: (u32, u32, u32),
        elements: &[(Vec<u8>, bool, Option<Verdict>)],
    ) -> (String, u32) {
        let name = format!("{prefix}{}", *self.names);
        *self.names += 1;
        let id = self.next_set_id;
        self.next_set_id += 1;
        let (ty, len, order) = key;
        let d = self.desc("add anonymous set", &name);
        let m = self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, d);
        let table = self.table.clone();
        self.buf.str(NFTA_SET_TABLE, &table);
        self.buf.str(NFTA_SET_NAME, &name);
        self.buf.be32(NFTA_SET_FLAGS, flags);
        self.buf.be32(NFTA_SET_KEY_TYPE, ty);
        self.buf.be32(NFTA_SET_KEY_LEN, len);
        if flags & NFT_SET_MAP != 0 {
            self.buf.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
        }
        self.buf.be32(NFTA_SET_ID, id);
        let desc = self.buf.nest(NFTA_SET_DESC);
        self.buf.be32(NFTA_SET_DESC_SIZE, elements.len() as u32);
        self.buf.end_nest(desc);
        self.buf.attr(
            NFTA_SET_USERDATA,
            &udata(&[(UDATA_SET_KEYBYTEORDER, &order.to_ne_bytes())]),
        );
        self.buf.end_msg(m);

        let d = self.desc("add elements to anonymous set", &name);
        let m = self.msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, d);
        self.buf.str(NFTA_SET_ELEM_LIST_TABLE, &table);
        self.buf.str(NFTA_SET_ELEM_LIST_SET, &name);
        self.buf.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
        let list = self.buf.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for (k, end, v) in elements {
            let e = self.buf.nest(NFTA_LIST_ELEM);
            if *end {
                self.buf
                    .be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            }
            self.buf.data_value(NFTA_SET_ELEM_KEY, k);
            if let Some(v) = v {
                self.buf.data_verdict(NFTA_SET_ELEM_DATA, v);
            }
            self.buf.end_nest(e);
        }
        self.buf.end_nest(list);
        self.buf.end_msg(m);
        (name, id)
    }

    /// Encodes `rule`'s expressions; anonymous sets it needs are added first.
    fn expressions(&mut self, rule: &Rule) -> Vec<u8> {
        let mut e = Exprs::default();
        for m in &rule.matches {
            self.encode_match(&mut e, m);
        }
        self.encode_action(&mut e, &rule.action);
        e.buf.bytes
    }

    fn addr_lookup_set(&mut self, items: &[AddrItem]) -> (String, u32) {
        let mut elems: Vec<(Vec<u8>, bool, Option<Verdict>)> = interval_elements(items)
            .into_iter()
            .map(|(k, end)| (k, end, None))
            .collect();
        let zero = vec![0u8; if self.ip == IpFamily::V4 { 4 } else { 16 }];
        if elems.first().is_some_and(|(k, _, _)| *k != zero) {
            // nft starts an anonymous interval set with an interval end at 0.
            elems.insert(0, (zero, true, None));
        }
        let (ty, len) = match self.ip {
            IpFamily::V4 => (TYPE_IPADDR, 4),
            IpFamily::V6 => (TYPE_IP6ADDR, 16),
        };
        self.anonymous_set(
            "__set",
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL,
            (ty, len, BYTEORDER_BIG),
            &elems,
        )
    }

    fn encode_match(&mut self, e: &mut Exprs, m: &Match) {
        match m {
            Match::Addr {
                family,
                dir,
                neg,
                value,
            } => {
                let (off, len) = addr_offset(*family, *dir);
                // nft turns a one-element `{ x }` into a plain comparison; so does kproxy.
                let single;
                let value = match value {
                    AddrValue::Set(items) if items.len() == 1 => {
                        single = AddrValue::One(items[0]);
                        &single
                    }
                    v => v,
                };
                match value {
                    AddrValue::One(item) => {
                        let (addr, plen) = item.range();
                        let full = len * 8;
                        let bytes = addr_vec(addr);
                        if u32::from(plen) == full || plen % 8 == 0 && plen > 0 {
                            let n = (u32::from(plen) / 8) as usize;
                            e.payload(1, off, n as u32, REG_1);
                            e.cmp(REG_1, *neg, &bytes[..n]);
                        } else {
                            e.payload(1, off, len, REG_1);
                            let mut mask = vec![0u8; len as usize];
                            for (i, b) in mask.iter_mut().enumerate() {
                                let bits = u32::from(plen).saturating_sub(8 * i as u32).min(8);
                                *b = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
                            }
                            e.bitwise(REG_1, &mask, &vec![0u8; len as usize]);
                            e.cmp(REG_1, *neg, &bytes);
                        }
                    }
                    AddrValue::Set(items) => {
                        let (name, id) = self.addr_lookup_set(items);
                        e.payload(1, off, len, REG_1);
                        e.lookup(REG_1, &name, Some(id), None, *neg);
                    }
                    AddrValue::Named(set) => {
                        e.payload(1, off, len, REG_1);
                        e.lookup(REG_1, set, None, None, *neg);
                    }
                }
            }
            Match::Dport { proto, value } => {
                e.meta_load(META_L4PROTO, REG_1);
                e.cmp(REG_1, false, &[proto.number()]);
                e.payload(2, 2, 2, REG_1);
                match value {
                    PortValue::One(p) => e.cmp(REG_1, false, &p.to_be_bytes()),
                    PortValue::Named(set) => e.lookup(REG_1, set, None, None, false),
                }
            }
            Match::L4Proto(p) => {
                e.meta_load(META_L4PROTO, REG_1);
                e.cmp(REG_1, false, &[p.number()]);
            }
            Match::IifName {
                neg,
                name,
                wildcard,
            } => {
                e.meta_load(META_IIFNAME, REG_1);
                let mut bytes = name.as_bytes().to_vec();
                if !*wildcard {
                    bytes.resize(16, 0);
                }
                e.cmp(REG_1, *neg, &bytes);
            }
            Match::FibLocal(dir) => {
                let flag = match dir {
                    Dir::Src => FIB_F_SADDR,
                    Dir::Dst => FIB_F_DADDR,
                };
                e.fib(flag);
                e.cmp(REG_1, false, &RTN_LOCAL.to_ne_bytes());
            }
            Match::CtStateNew => {
                e.ct_state();
                e.bitwise(REG_1, &CT_STATE_NEW.to_ne_bytes(), &0u32.to_ne_bytes());
                e.cmp(REG_1, true, &0u32.to_ne_bytes());
            }
            Match::MarkClear(bit) => {
                e.meta_load(META_MARK, REG_1);
                e.bitwise(REG_1, &bit.to_ne_bytes(), &0u32.to_ne_bytes());
                e.cmp(REG_1, false, &0u32.to_ne_bytes());
            }
            Match::KeyIn { key, set } => {
                load_key(e, *key);
                e.lookup(REG_1, set, None, None, false);
            }
            Match::AddrPairIn { family, set } => {
                let (src, len) = addr_offset(*family, Dir::Src);
                let (dst, _) = addr_offset(*family, Dir::Dst);
                e.payload(1, src, len, REG_1);
                e.payload(1, dst, len, REG32_00 + len / 4);
                e.lookup(REG_1, set, None, None, false);
            }
        }
    }

    fn encode_action(&mut self, e: &mut Exprs, a: &Action) {
        match a {
            Action::Verdict(v) => e.immediate_verdict(v),
            Action::Vmap { key, map } => {
                load_key(e, *key);
                e.lookup(REG_1, map, None, Some(REG_VERDICT), false);
            }
            Action::SlotVmap { start, map } => {
                e.numgen(SLOTS, *start);
                e.hton32(REG_1);
                e.lookup(REG_1, map, None, Some(REG_VERDICT), false);
            }
            Action::DnatSlots { family, start, map } => {
                e.numgen(SLOTS, *start);
                e.hton32(REG_1);
                e.lookup(REG_1, map, None, Some(REG_1), false);
                let addr_len = match family {
                    IpFamily::V4 => 4,
                    IpFamily::V6 => 16,
                };
                e.dnat(family_code(*family), REG_1, REG32_00 + addr_len / 4);
            }
            Action::MarkOr(bit) => {
                e.meta_load(META_MARK, REG_1);
                e.bitwise(REG_1, &(!bit).to_ne_bytes(), &bit.to_ne_bytes());
                e.meta_set(META_MARK, REG_1);
            }
            Action::MarkXor(bit) => {
                e.meta_load(META_MARK, REG_1);
                e.bitwise(REG_1, &u32::MAX.to_ne_bytes(), &bit.to_ne_bytes());
                e.meta_set(META_MARK, REG_1);
            }
            Action::Masquerade => e.masquerade_fully_random(),
            Action::Reject(Reject::TcpReset) => e.reject(NFT_REJECT_TCP_RST, 0),
            Action::Reject(Reject::PortUnreachable) => {
                let code = match self.ip {
                    IpFamily::V4 => ICMP_PORT_UNREACH,
                    IpFamily::V6 => ICMPV6_PORT_UNREACH,
                };
                e.reject(NFT_REJECT_ICMP_UNREACH, code);
            }
            Action::UpdateSaddr { family, set } => {
                let (off, len) = addr_offset(*family, Dir::Src);
                e.payload(1, off, len, REG_1);
                e.dynset_update(set, REG_1);
            }
            Action::Dnat { addr, port } => {
                e.immediate_value(REG_1, &addr_vec(*addr));
                e.immediate_value(REG_2, &port.to_be_bytes());
                e.dnat(family_code(addr.family), REG_1, REG_2);
            }
        }
    }
}

const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_L4PROTO: u32 = 16;
const FIB_F_SADDR: u32 = 1;
const FIB_F_DADDR: u32 = 2;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const CT_STATE_NEW: u32 = 1 << 3;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// `(offset, length)` of an address in the network header.
fn addr_offset(family: IpFamily, dir: Dir) -> (u32, u32) {
    match (family, dir) {
        (IpFamily::V4, Dir::Src) => (12, 4),
        (IpFamily::V4, Dir::Dst) => (16, 4),
        (IpFamily::V6, Dir::Src) => (8, 16),
        (IpFamily::V6, Dir::Dst) => (24, 16),
    }
}

/// Loads a dispatch key (`ip daddr . meta l4proto . th dport`, …) into the registers from
/// `REG_1` on, as concatenated keys are laid out: each part from a fresh 32-bit register.
fn load_key(e: &mut Exprs, key: VmapKey) {
    match key {
        VmapKey::DaddrProtoPort(fam) => {
            let (off, len) = addr_offset(fam, Dir::Dst);
            e.payload(1, off, len, REG_1);
            let next = REG32_00 + len / 4;
            e.meta_load(META_L4PROTO, next);
            e.payload(2, 2, 2, next + 1);
        }
        VmapKey::ProtoPort => {
            e.meta_load(META_L4PROTO, REG_1);
            e.payload(2, 2, 2, REG32_00 + 1);
        }
    }
}

/// The `NFTA_RULE_EXPRESSIONS` list of one rule.
#[derive(Default)]
struct Exprs {
    buf: Buf,
}

impl Exprs {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Buf)) {
        let elem = self.buf.nest(NFTA_LIST_ELEM);
        self.buf.str(NFTA_EXPR_NAME, name);
        let data = self.buf.nest(NFTA_EXPR_DATA);
        body(&mut self.buf);
        self.buf.end_nest(data);
        self.buf.end_nest(elem);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.expr("payload", |b| {
            b.be32(1, dreg); // NFTA_PAYLOAD_DREG
            b.be32(2, base); // NFTA_PAYLOAD_BASE
            b.be32(3, offset); // NFTA_PAYLOAD_OFFSET
            b.be32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    fn cmp(&mut self, sreg: u32, neg: bool, data: &[u8]) {
        self.expr("cmp", |b| {
            b.be32(1, sreg); // NFTA_CMP_SREG
            b.be32(2, u32::from(neg)); // NFTA_CMP_OP: EQ 0, NEQ 1
            b.data_value(3, data); // NFTA_CMP_DATA
        });
    }

    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            b.be32(1, reg); // NFTA_BITWISE_SREG
            b.be32(2, reg); // NFTA_BITWISE_DREG
            b.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            b.data_value(4, mask); // NFTA_BITWISE_MASK
            b.data_value(5, xor); // NFTA_BITWISE_XOR
        });
    }

    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            b.be32(2, key); // NFTA_META_KEY
            b.be32(1, dreg); // NFTA_META_DREG
        });
    }

    fn meta_set(&mut self, key: u32, sreg: u32) {
        self.expr("meta", |b| {
            b.be32(2, key); // NFTA_META_KEY
            b.be32(3, sreg); // NFTA_META_SREG
        });
    }

    fn lookup(&mut self, sreg: u32, set: &str, id: Option<u32>, dreg: Option<u32>, inv: bool) {
        self.expr("lookup", |b| {
            b.str(1, set); // NFTA_LOOKUP_SET
            b.be32(2, sreg); // NFTA_LOOKUP_SREG
            if let Some(d) = dreg {
                b.be32(3, d); // NFTA_LOOKUP_DREG
            }
            if let Some(id) = id {
                b.be32(4, id); // NFTA_LOOKUP_SET_ID
            }
            if inv {
                b.be32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
            }
        });
    }

    fn immediate_verdict(&mut self, v: &Verdict) {
        self.expr("immediate", |b| {
            b.be32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
            b.data_verdict(2, v); // NFTA_IMMEDIATE_DATA
        });
    }

    fn immediate_value(&mut self, dreg: u32, data: &[u8]) {
        self.expr("immediate", |b| {
            b.be32(1, dreg);
            b.data_value(2, data);
        });
    }

    fn numgen(&mut self, modulus: u32, offset: u32) {
        self.expr("numgen", |b| {
            b.be32(1, REG_1); // NFTA_NG_DREG
            b.be32(2, modulus); // NFTA_NG_MODULUS
            b.be32(3, 1); // NFTA_NG_TYPE: NFT_NG_RANDOM
            b.be32(4, offset); // NFTA_NG_OFFSET
        });
    }

    /// `byteorder reg = hton(reg, 4, 4)`: a 32-bit value in host order to big endian.
    fn hton32(&mut self, reg: u32) {
        self.expr("byteorder", |b| {
            b.be32(1, reg); // NFTA_BYTEORDER_SREG
            b.be32(2, reg); // NFTA_BYTEORDER_DREG
            b.be32(3, 1); // NFTA_BYTEORDER_OP: NFT_BYTEORDER_HTON
            b.be32(4, 4); // NFTA_BYTEORDER_LEN
            b.be32(5, 4); // NFTA_BYTEORDER_SIZE
        });
    }

    fn fib(&mut self, flags: u32) {
        self.expr("fib", |b| {
            b.be32(1, REG_1); // NFTA_FIB_DREG
            b.be32(2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
            b.be32(3, flags); // NFTA_FIB_FLAGS
        });
    }

    fn ct_state(&mut self) {
        self.expr("ct", |b| {
            b.be32(1, REG_1); // NFTA_CT_DREG
            b.be32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
        });
    }

    fn masquerade_fully_random(&mut self) {
        self.expr("masq", |b| {
            b.be32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY); // NFTA_MASQ_FLAGS
        });
    }

    fn reject(&mut self, ty: u32, code: u8) {
        self.expr("reject", |b| {
            b.be32(1, ty); // NFTA_REJECT_TYPE
            b.attr(2, &[code]); // NFTA_REJECT_ICMP_CODE
        });
    }

    fn dynset_update(&mut self, set: &str, sreg: u32) {
        self.expr("dynset", |b| {
            b.str(1, set); // NFTA_DYNSET_SET_NAME
            b.be32(3, 1); // NFTA_DYNSET_OP: NFT_DYNSET_OP_UPDATE
            b.be32(4, sreg); // NFTA_DYNSET_SREG_KEY
        });
    }

    fn dnat(&mut self, family: u8, addr: u32, proto: u32) {
        self.expr("nat", |b| {
            b.be32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
            b.be32(2, u32::from(family)); // NFTA_NAT_FAMILY
            b.be32(3, addr); // NFTA_NAT_REG_ADDR_MIN
            b.be32(5, proto); // NFTA_NAT_REG_PROTO_MIN
            b.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
        });
    }
}

impl Sink for Batch<'_> {
    fn begin(&mut self, family: IpFamily, table: &str) {
        self.ip = family;
        self.family = family_code(family);
        self.table = table.to_string();
    }

    fn reset_table(&mut self, comment: &str) {
        self.table_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, None);
        self.table_msg(NFT_MSG_DELTABLE, 0, None);
        self.table_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, Some(comment));
    }

    fn remove_table(&mut self) {
        self.table_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, None);
        self.table_msg(NFT_MSG_DELTABLE, 0, None);
    }

    fn add_chain(&mut self, name: &str) {
        self.objects += 1;
        let d = self.desc("add chain", name);
        let m = self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, d);
        let table = self.table.clone();
        self.buf.str(NFTA_CHAIN_TABLE, &table);
        self.buf.str(NFTA_CHAIN_NAME, name);
        self.buf.end_msg(m);
    }

    fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        self.objects += 1;
        let hooknum: u32 = match hook {
            "prerouting" => 0,
            "input" => 1,
            "forward" => 2,
            "output" => 3,
            _ => 4, // postrouting
        };
        let d = self.desc("add base chain", name);
        let m = self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, d);
        let table = self.table.clone();
        self.buf.str(NFTA_CHAIN_TABLE, &table);
        self.buf.str(NFTA_CHAIN_NAME, name);
        let h = self.buf.nest(NFTA_CHAIN_HOOK);
        self.buf.be32(NFTA_HOOK_HOOKNUM, hooknum);
        self.buf.be32(NFTA_HOOK_PRIORITY, priority as u32);
        self.buf.end_nest(h);
        self.buf.be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
        self.buf.str(NFTA_CHAIN_TYPE, kind);
        self.buf.end_msg(m);
    }

    fn flush_chain(&mut self, name: &str) {
        let d = self.desc("flush chain", name);
        let m = self.msg(NFT_MSG_DELRULE, 0, d);
        let table = self.table.clone();
        self.buf.str(NFTA_RULE_TABLE, &table);
        self.buf.str(NFTA_RULE_CHAIN, name);
        self.buf.end_msg(m);
    }

    fn delete_chain(&mut self, name: &str) {
        let d = self.desc("delete chain", name);
        let m = self.msg(NFT_MSG_DELCHAIN, 0, d);
        let table = self.table.clone();
        self.buf.str(NFTA_CHAIN_TABLE, &table);
        self.buf.str(NFTA_CHAIN_NAME, name);
        self.buf.end_msg(m);
    }

    fn add_rule(&mut self, chain: &str, rule: &Rule) {
        self.objects += 1;
        let exprs = self.expressions(rule);
        let mut d = self.desc("add rule to chain", chain);
        if self.describe_rules {
            d.rule = Some(rule.to_string());
        }
        let m = self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, d);
        let table = self.table.clone();
        self.buf.str(NFTA_RULE_TABLE, &table);
        self.buf.str(NFTA_RULE_CHAIN, chain);
        let n = self.buf.nest(NFTA_RULE_EXPRESSIONS);
        self.buf.bytes.extend_from_slice(&exprs);
        self.buf.end_nest(n);
        if let Some(c) = &rule.comment {
            self.buf.attr(
                NFTA_RULE_USERDATA,
                &udata(&[(UDATA_RULE_COMMENT, &comment_bytes(c))]),
            );
        }
        self.buf.end_msg(m);
    }

    fn add_set(&mut self, spec: &SetSpec<'_>) {
        self.objects += 1;
        let (ty, len, concat, order) = key_type(spec.key);
        let mut flags = 0;
        if spec.value != SetValue::None {
            flags |= NFT_SET_MAP;
        }
        if spec.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if spec.timeout.is_some() {
            flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
        }
        let d = self.desc("add set", spec.name);
        let m = self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, d);
        let table = self.table.clone();
        self.buf.str(NFTA_SET_TABLE, &table);
        self.buf.str(NFTA_SET_NAME, spec.name);
        self.buf.be32(NFTA_SET_FLAGS, flags);
        self.buf.be32(NFTA_SET_KEY_TYPE, ty);
        self.buf.be32(NFTA_SET_KEY_LEN, len);
        match spec.value {
            SetValue::None => {}
            SetValue::Verdict => self.buf.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT),
            SetValue::Endpoint(f, _) => {
                let (t, l) = match f {
                    IpFamily::V4 => (TYPE_IPADDR, 4),
                    IpFamily::V6 => (TYPE_IP6ADDR, 16),
                };
                self.buf
                    .be32(NFTA_SET_DATA_TYPE, (t << TYPE_BITS) | TYPE_INET_SERVICE);
                self.buf.be32(NFTA_SET_DATA_LEN, l + 4);
            }
        }
        if let Some(t) = spec.timeout {
            self.buf.be64(NFTA_SET_TIMEOUT, u64::from(t) * 1000);
        }
        let id = self.next_set_id;
        self.next_set_id += 1;
        self.buf.be32(NFTA_SET_ID, id);
        // Concatenations need no field description outside interval sets (as nft writes them):
        // the key type says how the key splits.
        let _ = concat;
        let order = order.to_ne_bytes();
        let merge = 1u32.to_ne_bytes();
        let comment = spec.comment.map(comment_bytes);
        let zero = 0u32.to_ne_bytes();
        let (key_typeof, data_typeof) = match (spec.key, spec.value) {
            (KeyType::Slots, SetValue::Endpoint(f, p)) => {
                (numgen_typeof(SLOTS), endpoint_typeof(f, p))
            }
            (KeyType::Slots, _) => (numgen_typeof(SLOTS), verdict_typeof()),
            _ => (Vec::new(), Vec::new()),
        };
        let mut items: Vec<(u8, &[u8])> = vec![(UDATA_SET_KEYBYTEORDER, &order)];
        if !key_typeof.is_empty() {
            // As nft writes `typeof numgen random mod 16384 : verdict` (or `: ip daddr . …`).
            items.push((UDATA_SET_DATABYTEORDER, &zero));
            items.push((UDATA_SET_KEY_TYPEOF, &key_typeof));
            items.push((UDATA_SET_DATA_TYPEOF, &data_typeof));
            items.push((UDATA_SET_DATA_INTERVAL, &zero));
        }
        if spec.interval && spec.value == SetValue::None {
            items.push((UDATA_SET_MERGE_ELEMENTS, &merge));
        }
        if let Some(c) = &comment {
            items.push((UDATA_SET_COMMENT, c));
        }
        self.buf.attr(NFTA_SET_USERDATA, &udata(&items));
        self.buf.end_msg(m);
    }

    fn delete_set(&mut self, name: &str) {
        let d = self.desc("delete set", name);
        let m = self.msg(NFT_MSG_DELSET, 0, d);
        let table = self.table.clone();
        self.buf.str(NFTA_SET_TABLE, &table);
        self.buf.str(NFTA_SET_NAME, name);
        self.buf.end_msg(m);
    }

    fn add_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>) {
        self.elements(NFT_MSG_NEWSETELEM, set, elems, true);
    }

    fn delete_elements<'e>(&mut self, set: &str, elems: impl IntoIterator<Item = ElemRef<'e>>) {
        self.elements(NFT_MSG_DELSETELEM, set, elems, false);
    }

    fn objects(&self) -> u64 {
        self.objects
    }
}

impl Batch<'_> {
    fn elements<'e>(
        &mut self,
        ty: u16,
        set: &str,
        elems: impl IntoIterator<Item = ElemRef<'e>>,
        add: bool,
    ) {
        let what = if add {
            "add elements to"
        } else {
            "delete elements from"
        };
        let mut open: Option<(usize, usize)> = None;
        for el in elems {
            // One element may be two kernel elements (an interval's start and end).
            let mut parts: Vec<(Vec<u8>, bool)> = Vec::with_capacity(2);
            match el.key {
                SetKey::Key(k) => parts.extend(key_parts(k)),
                SetKey::Client(a) => parts.push((addr_vec(a), false)),
                SetKey::Cidr(c) => parts.extend(interval_elements(&[AddrItem::Prefix(*c)])),
            }
            for (key, end) in parts {
                let (msg, list) = match open {
                    Some(o) if self.buf.bytes.len() - o.1 < ELEMENTS_PER_MESSAGE_BYTES => o,
                    other => {
                        if let Some((m, l)) = other {
                            self.buf.end_nest(l);
                            self.buf.end_msg(m);
                        }
                        let d = self.desc(what, set);
                        let m = self.msg(ty, if add { NLM_F_CREATE } else { 0 }, d);
                        let table = self.table.clone();
                        self.buf.str(NFTA_SET_ELEM_LIST_TABLE, &table);
                        self.buf.str(NFTA_SET_ELEM_LIST_SET, set);
                        let l = self.buf.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
                        (m, l)
                    }
                };
                open = Some((msg, list));
                if add {
                    self.objects += 1;
                }
                let e = self.buf.nest(NFTA_LIST_ELEM);
                if end {
                    self.buf
                        .be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                self.buf.data_value(NFTA_SET_ELEM_KEY, &key);
                if add && !end {
                    match el.value {
                        Some(ElemValue::Verdict(v)) => self.buf.data_verdict(NFTA_SET_ELEM_DATA, v),
                        Some(ElemValue::Endpoint(a, port)) => self
                            .buf
                            .data_value(NFTA_SET_ELEM_DATA, &endpoint_bytes(*a, *port)),
                        None => {}
                    }
                    if let Some((timeout, expires)) = el.timeout {
                        self.buf
                            .be64(NFTA_SET_ELEM_TIMEOUT, u64::from(timeout) * 1000);
                        self.buf.be64(NFTA_SET_ELEM_EXPIRATION, expires * 1000);
                    }
                }
                self.buf.end_nest(e);
            }
        }
        if let Some((m, l)) = open {
            self.buf.end_nest(l);
            self.buf.end_msg(m);
        }
    }
}

/// The name of the object message `seq` of a batch acts on: its table's name for a table
/// message, else the second attribute (table first, then the chain or set).
fn object_name(chunks: &[Vec<u8>], seq: u32) -> Option<String> {
    for chunk in chunks {
        let mut rest = chunk.as_slice();
        while rest.len() >= 20 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
            if len < 20 || len > rest.len() {
                break;
            }
            let ty = u16::from_ne_bytes([rest[4], rest[5]]) & 0xff;
            if u32::from_ne_bytes(rest[8..12].try_into().ok()?) == seq {
                let want = if ty == NFT_MSG_NEWTABLE || ty == NFT_MSG_DELTABLE {
                    0
                } else {
                    1
                };
                let mut attrs = &rest[20..len];
                let mut i = 0;
                while attrs.len() >= 4 {
                    let l = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                    if l < 4 || l > attrs.len() {
                        break;
                    }
                    if i == want {
                        let v = &attrs[4..l];
                        let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                        return Some(String::from_utf8_lossy(&v[..end]).into_owned());
                    }
                    i += 1;
                    attrs = &attrs[align4(l).min(attrs.len())..];
                }
                return None;
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
    }
    None
}

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    sndbuf: usize,
}

impl NetlinkSocket {
    /// Opens the socket.
    pub fn open() -> Result<NetlinkSocket, PluginError> {
        let fail = |what: &str| {
            PluginError::kernel(format!(
                "nf_tables netlink socket: {what}: {}",
                std::io::Error::last_os_error()
            ))
        };
        // SAFETY: plain socket calls; the descriptor is owned by `fd` at once.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(fail("socket"));
            }
            OwnedFd::from_raw_fd(fd)
        };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `addr` is a valid sockaddr_nl of the given size.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        } < 0
        {
            return Err(fail("bind"));
        }
        let s = NetlinkSocket { fd, sndbuf: 0 };
        s.set(SOL_NETLINK, NETLINK_EXT_ACK, 1);
        s.set(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        s.set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        Ok(s)
    }

    fn set(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
        // SAFETY: setsockopt with a pointer to an int and its size.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) == 0
        }
    }

    /// Sends `batch` as one transaction. The kernel processes it within the `sendmsg` call and
    /// queues an error for each message it refused; none means it committed.
    pub fn commit(&mut self, batch: Batch<'_>) -> Result<(), PluginError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (chunks, descs, first_seq) = batch.finish();
        let total: usize = chunks.iter().map(Vec::len).sum();
        // The whole batch must fit one socket write.
        if total + 4096 > self.sndbuf {
            let want = (total + (1 << 20)).min(i32::MAX as usize / 2);
            if !self.set(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want as i32) {
                self.set(libc::SOL_SOCKET, libc::SO_SNDBUF, want as i32);
            }
            self.sndbuf = want;
        }
        self.drain();
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let mut iov: Vec<libc::iovec> = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: a zeroed msghdr is valid; every field set below points at live data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: sending buffers we own, described by `msg`, to the kernel's netlink address.
        let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if sent < 0 {
            return Err(PluginError::kernel(format!(
                "nf_tables netlink: sending a batch of {total} bytes ({} messages) failed: {}",
                descs.len(),
                std::io::Error::last_os_error()
            )));
        }
        let errors = self.read_errors();
        let Some((seq, errno, text)) = errors.into_iter().find(|e| e.1 != 0) else {
            return Ok(());
        };
        let what = seq
            .checked_sub(first_seq)
            .and_then(|i| descs.get(i as usize))
            .map_or_else(
                || format!("message {seq}"),
                |d| {
                    let object = d
                        .object
                        .clone()
                        .or_else(|| object_name(&chunks, seq))
                        .unwrap_or_default();
                    match &d.rule {
                        Some(r) => format!("{} `{object}`: `{r}`", d.what),
                        None => format!("{} `{object}`", d.what),
                    }
                },
            );
        let os = std::io::Error::from_raw_os_error(-errno);
        let mut message = format!(
            "nf_tables netlink transaction ({} messages) refused at {what}: {os}",
            descs.len()
        );
        if let Some(t) = text {
            message.push_str(&format!(" ({t})"));
        }
        Err(PluginError::kernel(message))
    }

    /// Discards anything queued (answers to an earlier batch).
    fn drain(&self) {
        let _ = self.read_errors();
    }

    /// `(seq, errno, extended-ack message)` of every error message queued.
    fn read_errors(&self) -> Vec<(u32, i32, Option<String>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv into our buffer, non-blocking.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return out;
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                if ty == NLMSG_ERROR && len >= 16 + 4 + 16 {
                    let payload = &rest[16..len];
                    let errno = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
                    let orig = &payload[4..];
                    let seq = u32::from_ne_bytes(orig[8..12].try_into().expect("4 bytes"));
                    let orig_len =
                        u32::from_ne_bytes(orig[0..4].try_into().expect("4 bytes")) as usize;
                    let mut text = None;
                    if flags & NLM_F_ACK_TLVS != 0 {
                        let skip = if flags & NLM_F_CAPPED != 0 {
                            16
                        } else {
                            align4(orig_len)
                        };
                        if let Some(mut tlvs) = orig.get(skip..) {
                            while tlvs.len() >= 4 {
                                let l = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
                                let t = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
                                if l < 4 || l > tlvs.len() {
                                    break;
                                }
                                if t == NLMSGERR_ATTR_MSG {
                                    let s = &tlvs[4..l];
                                    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
                                    text = Some(String::from_utf8_lossy(&s[..end]).into_owned());
                                }
                                tlvs = &tlvs[align4(l).min(tlvs.len())..];
                            }
                        }
                    }
                    out.push((seq, errno, text));
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{cidr, ip};
    use kproxy_plugin_api::Protocol;

    #[test]
    fn interval_sets_hold_starts_and_ends_merged() {
        let items = [
            AddrItem::Prefix(cidr("1.2.3.0/24")),
            AddrItem::Host(ip("5.6.7.8")),
            AddrItem::Prefix(cidr("1.2.3.128/25")),
        ];
        let got = interval_elements(&items);
        assert_eq!(
            got,
            vec![
                (vec![1, 2, 3, 0], false),
                (vec![1, 2, 4, 0], true),
                (vec![5, 6, 7, 8], false),
                (vec![5, 6, 7, 9], true),
            ]
        );
        let all = interval_elements(&[AddrItem::Prefix(cidr("0.0.0.0/0"))]);
        assert_eq!(all, vec![(vec![0, 0, 0, 0], false)]);
    }

    #[test]
    fn concatenated_keys_use_four_byte_register_slots() {
        let k = ElemKey::AddrProtoPort(ip("10.96.0.1"), Protocol::Tcp, 80);
        assert_eq!(key_bytes(&k), vec![10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(
            key_bytes(&ElemKey::ProtoPort(Protocol::Udp, 30000)),
            vec![17, 0, 0, 0, 0x75, 0x30, 0, 0]
        );
        let (ty, len, fields, _) = key_type(KeyType::AddrProtoPort(IpFamily::V4));
        assert_eq!((ty, len, fields), (29453, 12, vec![4, 1, 2]));
    }

    #[test]
    fn a_batch_is_framed_and_numbered() {
        let mut names = 0;
        let mut b = Batch::new(&mut names, true);
        b.begin(IpFamily::V4, "kproxy");
        b.add_chain("c");
        let rule = Rule::when(
            vec![Match::Addr {
                family: IpFamily::V4,
                dir: Dir::Src,
                neg: true,
                value: AddrValue::Set(vec![
                    AddrItem::Prefix(cidr("10.0.0.0/8")),
                    AddrItem::Prefix(cidr("192.168.0.0/16")),
                ]),
            }],
            Action::Verdict(Verdict::Drop),
        );
        b.add_rule("c", &rule);
        assert_eq!(b.objects(), 2);
        let (chunks, descs, first) = b.finish();
        assert_eq!(chunks.len(), 1);
        let bytes = &chunks[0];
        assert_eq!(object_name(&chunks, 2).as_deref(), Some("c"));
        // chain, anonymous set, its elements, the rule.
        assert_eq!(descs.len(), 4);
        assert_eq!(first, 2);
        assert_eq!(names, 1, "one anonymous name used");
        // Begin marker, then the chain message with seq 2, ..., end marker.
        let len0 = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
        assert_eq!(
            u16::from_ne_bytes([bytes[4], bytes[5]]),
            NFNL_MSG_BATCH_BEGIN
        );
        let seq1 = u32::from_ne_bytes(bytes[len0 + 8..len0 + 12].try_into().unwrap());
        assert_eq!(seq1, 2);
        assert_eq!(
            descs[3].rule.as_deref(),
            Some("ip saddr != { 10.0.0.0/8, 192.168.0.0/16 } drop")
        );
    }
}
