//! Stale conntrack cleanup for UDP and SCTP services, over netlink (no process per entry).
//!
//! UDP and SCTP have no connection teardown a client would notice: once conntrack has DNATed a
//! flow to an endpoint, every later packet of that flow follows the entry, even after the
//! endpoint is gone, and a flow that hit the service while it had no endpoints stays un-NATed.
//! Upstream kube-proxy therefore reconciles after each sync (`pkg/proxy/conntrack/cleanup.go`):
//! an entry whose original destination is a service address and port (or whose original
//! destination port is a node port) and whose reply source is not a serving endpoint of that
//! service port is deleted. [`clean_stale`] does the same. It is keyed by address *and* port
//! (upstream keys by address only), so two UDP ports of one service with different endpoints do
//! not disturb each other.
//!
//! The split mirrors the rest of kproxy: [`StaleFlowIndex`] decides (pure, unit-tested),
//! [`Conntrack`] is the thin netlink layer.

use kproxy_plugin_api::{IpFamily, IpMode, Protocol, ProxyState};
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple},
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
};

/// `CTA_ZONE`: an entry in a non-default zone must be deleted with its zone.
const CTA_ZONE: u16 = 18;

/// The receive buffer: the kernel never sends a netlink datagram larger than 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// Why talking to conntrack failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened or used.
    #[error("conntrack netlink {op}: {source}")]
    Io {
        /// What was being done (`open`, `dump`, `delete`).
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("conntrack netlink {op}: the kernel answered: {source}")]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The kernel's error code as an I/O error.
        source: io::Error,
    },
}

/// What one cleanup did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Entries of the cleaned protocols looked at.
    pub scanned: u64,
    /// Entries deleted.
    pub deleted: u64,
}

/// One conntrack entry, as far as stale-flow cleanup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The IP protocol number.
    pub protocol: u8,
    /// The original direction's destination address (the service address the client used).
    pub orig_dst: IpAddr,
    /// The original direction's destination port.
    pub orig_dport: u16,
    /// The reply direction's source address (the endpoint, when the flow was DNATed).
    pub reply_src: IpAddr,
    /// The original tuple as the kernel sent it, handed back to delete exactly this entry.
    orig_tuple: Vec<Tuple>,
    /// The entry's zone attribute, if any.
    zone: Option<DefaultNla>,
}

impl Flow {
    /// Builds a flow by hand (tests, and callers that know a tuple).
    pub fn new(
        protocol: u8,
        orig_src: (IpAddr, u16),
        orig_dst: (IpAddr, u16),
        reply_src: IpAddr,
    ) -> Flow {
        Flow {
            protocol,
            orig_dst: orig_dst.0,
            orig_dport: orig_dst.1,
            reply_src,
            orig_tuple: vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress(orig_src.0),
                    IPTuple::DestinationAddress(orig_dst.0),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(protocol.into()),
                    ProtoTuple::SourcePort(orig_src.1),
                    ProtoTuple::DestinationPort(orig_dst.1),
                ]),
            ],
            zone: None,
        }
    }

    fn from_attributes(attributes: &[ConntrackAttribute]) -> Option<Flow> {
        let mut orig = None;
        let mut reply = None;
        let mut zone = None;
        for a in attributes {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
                ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                    zone = Some(nla.clone())
                }
                _ => {}
            }
        }
        let orig = orig?;
        let (_, orig_dst, protocol, _, orig_dport) = tuple_parts(orig)?;
        let (reply_src, _, _, _, _) = tuple_parts(reply?)?;
        Some(Flow {
            protocol,
            orig_dst,
            orig_dport,
            reply_src,
            orig_tuple: orig.clone(),
            zone,
        })
    }
}

/// `(src, dst, protocol, sport, dport)` of a tuple.
fn tuple_parts(tuple: &[Tuple]) -> Option<(IpAddr, IpAddr, u8, u16, u16)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(parts) => {
                for p in parts {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((src?, dst?, proto?, sport, dport))
}

/// For every UDP/SCTP service address and node port: the endpoints that may keep flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleFlowIndex {
    services: HashMap<(u8, IpAddr, u16), HashSet<IpAddr>>,
    node_ports: HashMap<(u8, u16), HashSet<IpAddr>>,
}

impl StaleFlowIndex {
    /// Indexes the service ports of `protocols` in `state`, for addresses of `families`.
    /// Every serving endpoint counts, whatever the traffic policies: a policy change must not
    /// cut flows that still work (upstream's rule).
    pub fn from_state(state: &ProxyState, families: &[IpFamily], protocols: &[Protocol]) -> Self {
        let mut index = StaleFlowIndex::default();
        for sp in state.services.iter() {
            if !protocols.contains(&sp.key.protocol) {
                continue;
            }
            let proto = sp.key.protocol.number();
            let serving: HashSet<IpAddr> = sp
                .endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| e.ip.to_std())
                .collect();
            let addresses = sp
                .cluster_ips
                .iter()
                .chain(sp.external_ips.iter())
                .copied()
                .chain(
                    sp.load_balancer_ingress
                        .iter()
                        .filter(|i| i.ip_mode == IpMode::Vip)
                        .map(|i| i.ip),
                )
                .filter(|a| families.contains(&a.family));
            for addr in addresses {
                index
                    .services
                    .insert((proto, addr.to_std(), sp.port), serving.clone());
            }
            if sp.node_port != 0 {
                index
                    .node_ports
                    .entry((proto, sp.node_port))
                    .or_default()
                    .extend(serving.iter().copied());
            }
        }
        index
    }

    /// Whether there is nothing to clean (no UDP/SCTP service port).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.node_ports.is_empty()
    }

    /// Whether `flow` goes to a service address or node port but not to one of its serving
    /// endpoints.
    pub fn is_stale(&self, flow: &Flow) -> bool {
        let by_address = self
            .services
            .get(&(flow.protocol, flow.orig_dst, flow.orig_dport))
            .is_some_and(|eps| !eps.contains(&flow.reply_src));
        let by_node_port = self
            .node_ports
            .get(&(flow.protocol, flow.orig_dport))
            .is_some_and(|eps| !eps.contains(&flow.reply_src));
        by_address || by_node_port
    }
}

/// Deletes the stale entries of `protocols` (UDP and SCTP, usually) in the calling thread's
/// network namespace, for the addresses of `families`.
pub fn clean_stale(
    state: &ProxyState,
    families: &[IpFamily],
    protocols: &[Protocol],
) -> Result<CleanupReport, ConntrackError> {
    let index = StaleFlowIndex::from_state(state, families, protocols);
    let mut report = CleanupReport::default();
    if index.is_empty() {
        return Ok(report);
    }
    let numbers: Vec<u8> = protocols.iter().map(|p| p.number()).collect();
    let mut ct = Conntrack::open()?;
    for &family in families {
        for flow in ct.dump(family)? {
            if !numbers.contains(&flow.protocol) {
                continue;
            }
            report.scanned += 1;
            if index.is_stale(&flow) && ct.delete(family, &flow)? {
                tracing::debug!(
                    protocol = flow.protocol,
                    orig_dst = %flow.orig_dst,
                    orig_dport = flow.orig_dport,
                    reply_src = %flow.reply_src,
                    "deleted stale conntrack entry"
                );
                report.deleted += 1;
            }
        }
    }
    Ok(report)
}

/// A ctnetlink socket in the namespace of the thread that opened it.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens a netfilter netlink socket.
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let io = |source| ConntrackError::Io { op: "open", source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Conntrack {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Every entry of `family`. Entries the parser cannot read are skipped.
    pub fn dump(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let mut flows = Vec::new();
        self.request(
            "dump",
            family,
            NLM_F_REQUEST | NLM_F_DUMP,
            ConntrackMessage::Get(vec![]),
            |message| {
                if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)) =
                    &message.inner
                {
                    if let Some(flow) = Flow::from_attributes(attributes) {
                        flows.push(flow);
                    }
                }
            },
        )?;
        Ok(flows)
    }

    /// Deletes `flow`; false when it was already gone.
    pub fn delete(&mut self, family: IpFamily, flow: &Flow) -> Result<bool, ConntrackError> {
        let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(flow.orig_tuple.clone())];
        if let Some(zone) = &flow.zone {
            attributes.push(ConntrackAttribute::Other(zone.clone()));
        }
        match self.request(
            "delete",
            family,
            NLM_F_REQUEST | NLM_F_ACK,
            ConntrackMessage::Delete(attributes),
            |_| {},
        ) {
            Ok(()) => Ok(true),
            Err(ConntrackError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc_enoent()) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one request and reads answers until the dump ends or the ack arrives.
    fn request(
        &mut self,
        op: &'static str,
        family: IpFamily,
        flags: u16,
        message: ConntrackMessage,
        mut on_message: impl FnMut(&NetfilterMessage),
    ) -> Result<(), ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let nf_family = match family {
            IpFamily::V4 => NetfilterProtoFamily::IPv4,
            IpFamily::V6 => NetfilterProtoFamily::IPv6,
        };
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(nf_family, 0, 0),
                message,
            )),
        );
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| ConntrackError::Io { op, source })?;

        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| ConntrackError::Io { op, source })?;
            let mut offset = 0;
            while offset + 16 <= n {
                let bytes = &self.buf[offset..n];
                let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                if len < 16 || len > bytes.len() {
                    break;
                }
                let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                if seq == self.seq {
                    match NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len]) {
                        Ok(msg) => match msg.payload {
                            NetlinkPayload::Done(_) => return Ok(()),
                            NetlinkPayload::Error(e) => {
                                return match e.code {
                                    None => Ok(()),
                                    Some(code) => Err(ConntrackError::Kernel {
                                        op,
                                        source: io::Error::from_raw_os_error(-code.get()),
                                    }),
                                }
                            }
                            NetlinkPayload::InnerMessage(m) => on_message(&m),
                            _ => {}
                        },
                        Err(e) => {
                            tracing::debug!(error = %e, "skipped an unreadable conntrack message")
                        }
                    }
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

fn libc_enoent() -> i32 {
    io::Error::from(io::ErrorKind::NotFound)
        .raw_os_error()
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_plugin_api::{
        abi_stable::std_types::RVec, Endpoint, LoadBalancerIngress, ServicePort, ServicePortKey,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn endpoint(addr: &str, serving: bool) -> Endpoint {
        Endpoint {
            ip: ip(addr).into(),
            port: 53,
            ready: serving,
            serving,
            terminating: false,
            node_name: "n".into(),
            zone: "".into(),
            is_local: true,
            for_cluster: serving,
            for_local: serving,
        }
    }

    fn udp_port(name: &str, cluster: &str, port: u16, eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            key: ServicePortKey::new("ns", name, "", Protocol::Udp),
            cluster_ips: vec![ip(cluster).into()].into(),
            port,
            node_port: 30053,
            external_ips: RVec::new(),
            load_balancer_ingress: vec![
                LoadBalancerIngress {
                    ip: ip("192.0.2.10").into(),
                    ip_mode: IpMode::Vip,
                },
                LoadBalancerIngress {
                    ip: ip("192.0.2.11").into(),
                    ip_mode: IpMode::Proxy,
                },
            ]
            .into(),
            load_balancer_source_ranges: RVec::new(),
            session_affinity: Default::default(),
            internal_traffic_policy: Default::default(),
            external_traffic_policy: Default::default(),
            health_check_node_port: 0,
            ipvs_scheduler: "".into(),
            endpoints: eps.into(),
        }
    }

    fn flow(dst: &str, dport: u16, reply_src: &str) -> Flow {
        Flow::new(17, (ip("10.1.0.9"), 40000), (ip(dst), dport), ip(reply_src))
    }

    #[test]
    fn flows_to_gone_endpoints_are_stale_and_live_ones_are_not() {
        let mut state = ProxyState::default();
        state.services.push(udp_port(
            "dns",
            "10.96.0.10",
            53,
            vec![endpoint("10.1.0.2", true), endpoint("10.1.0.3", false)],
        ));
        let index = StaleFlowIndex::from_state(&state, &[IpFamily::V4], &[Protocol::Udp]);
        assert!(!index.is_stale(&flow("10.96.0.10", 53, "10.1.0.2")));
        // Removed / not serving endpoint.
        assert!(index.is_stale(&flow("10.96.0.10", 53, "10.1.0.7")));
        assert!(index.is_stale(&flow("10.96.0.10", 53, "10.1.0.3")));
        // A flow that was never DNATed (it hit the service while it had no endpoints).
        assert!(index.is_stale(&flow("10.96.0.10", 53, "10.96.0.10")));
        // Another port of the cluster IP, and unrelated traffic, are left alone.
        assert!(!index.is_stale(&flow("10.96.0.10", 54, "10.9.9.9")));
        assert!(!index.is_stale(&flow("8.8.8.8", 53, "8.8.8.8")));
        // LB VIPs count; ipMode Proxy addresses do not.
        assert!(index.is_stale(&flow("192.0.2.10", 53, "10.1.0.7")));
        assert!(!index.is_stale(&flow("192.0.2.11", 53, "10.1.0.7")));
        // Node port: any destination address, by port.
        assert!(index.is_stale(&flow("172.18.0.2", 30053, "10.1.0.7")));
        assert!(!index.is_stale(&flow("172.18.0.2", 30053, "10.1.0.2")));
    }

    #[test]
    fn other_protocols_and_families_are_not_indexed() {
        let mut state = ProxyState::default();
        let mut tcp = udp_port("web", "10.96.0.20", 80, vec![]);
        tcp.key.protocol = Protocol::Tcp;
        state.services.push(tcp);
        state.services.push(udp_port(
            "v6",
            "fd00::10",
            53,
            vec![endpoint("fd00:1::2", true)],
        ));
        let index = StaleFlowIndex::from_state(&state, &[IpFamily::V4], &[Protocol::Udp]);
        assert!(!index.is_stale(&flow("10.96.0.20", 80, "10.1.0.7")));
        assert!(!index.is_stale(&Flow::new(
            17,
            (ip("fd00:1::9"), 1),
            (ip("fd00::10"), 53),
            ip("fd00:1::7")
        )));
    }
}
