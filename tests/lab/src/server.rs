//! Tiny servers that answer every TCP connection, UDP datagram or SCTP association with one line:
//! `<name> <source-ip:source-port> <local-port>`.
//!
//! The name says which endpoint answered, the source says whether the packet was masqueraded,
//! and the local port says which target port the dataplane chose. Sockets are made on a thread
//! that entered the namespace, so they live there; every socket then has its own thread that
//! wakes every [`TICK`] to notice the stop flag.

use super::{netns, LabError};
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How often a blocked server thread looks at the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// How long a server waits for a client to close after the answer (the client closes first, so
/// TIME_WAIT stays on the client side and a later connection from the same port is not held up).
const LINGER: Duration = Duration::from_secs(3);
/// The IP protocol number of SCTP.
const IPPROTO_SCTP: i32 = 132;

/// The answer line a server sends.
pub fn answer_line(name: &str, peer: SocketAddr, local_port: u16) -> String {
    format!("{name} {peer} {local_port}\n")
}

/// A parsed answer line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name of the server that answered.
    pub name: String,
    /// The source address and port the server saw.
    pub source: SocketAddr,
    /// The port the server answered on.
    pub port: u16,
}

/// Parses an answer line; `None` when it is not one.
pub fn parse_answer(line: &str) -> Option<Answer> {
    let mut parts = line.split_whitespace();
    let name = parts.next()?.to_string();
    let source = parts.next()?.parse().ok()?;
    let port = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some(Answer { name, source, port })
}

/// A running set of servers in one namespace; stops when dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Whether SCTP sockets could be opened (this kernel may lack SCTP).
    pub sctp: bool,
}

impl Servers {
    /// Binds TCP, UDP and (when the kernel has it) SCTP on every port, on `0.0.0.0` and `[::]`
    /// (IPv6-only, so IPv4 peers are not shown as mapped addresses), inside namespace `ns`.
    pub fn start(ns: &str, name: &str, ports: &[u16]) -> Result<Servers, LabError> {
        let sockets = netns::run_in(ns, || bind_all(ports))?.map_err(|e| LabError::Server {
            ns: ns.into(),
            reason: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Servers {
            stop: stop.clone(),
            threads: Vec::new(),
            sctp: sockets.sctp,
        };
        for listener in sockets.stream {
            let (stop, name) = (stop.clone(), name.to_string());
            servers.threads.push(std::thread::spawn(move || {
                serve_stream(listener, &name, &stop)
            }));
        }
        for socket in sockets.udp {
            let (stop, name) = (stop.clone(), name.to_string());
            servers
                .threads
                .push(std::thread::spawn(move || serve_udp(socket, &name, &stop)));
        }
        Ok(servers)
    }

    /// Stops every thread and closes the sockets.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Bound {
    stream: Vec<Socket>,
    udp: Vec<UdpSocket>,
    sctp: bool,
}

fn bind_all(ports: &[u16]) -> std::io::Result<Bound> {
    let mut bound = Bound {
        stream: Vec::new(),
        udp: Vec::new(),
        sctp: true,
    };
    for &port in ports {
        for any in [
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ] {
            bound.stream.push(listen(any, SockProto::TCP)?);
            let udp = socket(any, Type::DGRAM, SockProto::UDP)?;
            udp.bind(&any.into())?;
            udp.set_read_timeout(Some(TICK))?;
            bound.udp.push(udp.into());
            if bound.sctp {
                match listen(any, SockProto::from(IPPROTO_SCTP)) {
                    Ok(s) => bound.stream.push(s),
                    // No SCTP in this kernel: serve the rest.
                    Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => bound.sctp = false,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(bound)
}

fn socket(addr: SocketAddr, ty: Type, proto: SockProto) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    Ok(s)
}

fn listen(addr: SocketAddr, proto: SockProto) -> std::io::Result<Socket> {
    let s = socket(addr, Type::STREAM, proto)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    // accept() honours the receive timeout, so the thread can look at the stop flag.
    s.set_read_timeout(Some(TICK))?;
    Ok(s)
}

fn sockaddr(addr: &SockAddr) -> Option<SocketAddr> {
    addr.as_socket()
}

fn serve_stream(listener: Socket, name: &str, stop: &AtomicBool) {
    let local_port = listener
        .local_addr()
        .ok()
        .and_then(|a| sockaddr(&a))
        .map_or(0, |a| a.port());
    let listener: TcpListener = listener.into();
    // A second thread waits for each client to close, so a slow client never holds up accept.
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let closer = std::thread::spawn(move || {
        for mut conn in rx {
            let _ = conn.set_read_timeout(Some(LINGER));
            let deadline = Instant::now() + LINGER;
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    });
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                let _ = conn.set_write_timeout(Some(TICK));
                let _ = conn.write_all(answer_line(name, peer, local_port).as_bytes());
                let _ = tx.send(conn);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(server = name, port = local_port, error = %e, "accept failed");
                std::thread::sleep(TICK);
            }
        }
    }
    drop(tx);
    let _ = closer.join();
}

fn serve_udp(socket: UdpSocket, name: &str, stop: &AtomicBool) {
    use nix::sys::socket::{
        recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrStorage,
    };
    use std::{
        io::{IoSlice, IoSliceMut},
        os::fd::AsRawFd,
    };
    let local_port = socket.local_addr().map_or(0, |a| a.port());
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    // Ask for each datagram's destination address and answer from it: a namespace with several
    // addresses (the node) would otherwise answer from the address of its route back, which a
    // connected client ignores.
    let pktinfo = if v6 {
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
    } else {
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
    };
    if let Err(e) = pktinfo {
        tracing::warn!(server = name, port = local_port, error = %e, "no packet info; answers come from the routed address");
    }
    let fd = socket.as_raw_fd();
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    while !stop.load(Ordering::Relaxed) {
        let (peer, dst) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(m) => m,
                // Timeout (the stop-flag tick), or an ICMP error for an earlier answer.
                Err(_) => continue,
            };
            let peer = msg.address.and_then(|a: SockaddrStorage| {
                a.as_sockaddr_in()
                    .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                    })
            });
            let mut dst = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::Ipv4PacketInfo(i) => dst = Some(DstInfo::V4(i)),
                        ControlMessageOwned::Ipv6PacketInfo(i) => dst = Some(DstInfo::V6(i)),
                        _ => {}
                    }
                }
            }
            (peer, dst)
        };
        let Some(peer) = peer else { continue };
        let line = answer_line(name, peer, local_port);
        let iov = [IoSlice::new(line.as_bytes())];
        let to = SockaddrStorage::from(peer);
        let sent = match dst {
            Some(DstInfo::V4(mut i)) => {
                // Answer from the address the datagram was sent to, out of whatever interface
                // the route picks.
                i.ipi_spec_dst = i.ipi_addr;
                i.ipi_ifindex = 0;
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&i)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
            Some(DstInfo::V6(mut i)) => {
                i.ipi6_ifindex = 0;
                sendmsg(
                    fd,
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&i)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
            None => sendmsg(fd, &iov, &[], MsgFlags::empty(), Some(&to)),
        };
        if let Err(e) = sent {
            tracing::debug!(server = name, error = %e, "answer not sent");
        }
    }
}

enum DstInfo {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_lines_round_trip() {
        for peer in ["10.244.1.10:4000", "[fd00:10:244:1::a]:4000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let line = answer_line("pod-a", peer, 8080);
            assert_eq!(
                parse_answer(line.trim()),
                Some(Answer {
                    name: "pod-a".into(),
                    source: peer,
                    port: 8080
                })
            );
        }
        assert_eq!(parse_answer("HTTP/1.1 200 OK"), None);
        assert_eq!(parse_answer("pod-a 10.0.0.1:1 80 extra"), None);
    }
}
