//! Clients: one request from a namespace and what came back, told apart the way a test needs
//! (answered by whom, refused = REJECT, timed out = DROP).
//!
//! These functions do not enter a namespace themselves: the lab calls them on a thread that has
//! entered the sender's namespace.

use super::server::parse_answer;
use kproxy_plugin_api::Protocol;
use socket2::{Domain, Protocol as SockProto, Socket, Type};
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

/// What one request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A lab server answered.
    Answered {
        /// The name of the server (pod) that answered.
        pod: String,
        /// The source address and port the server saw: the client's, or the node's when the
        /// dataplane masqueraded.
        source: SocketAddr,
        /// The port the server answered on (the target port the dataplane chose).
        port: u16,
    },
    /// `ECONNREFUSED`: a TCP reset or an ICMP port unreachable, i.e. a closed port or a REJECT.
    Refused,
    /// No answer within the timeout: the packet (or its answer) was dropped.
    TimedOut,
    /// `EPERM` on send: the sender's own firewall dropped the packet on its way out (a DROP in
    /// the output path of the namespace the request was sent from). A UDP request rejected
    /// there counts as [`Outcome::Refused`]: its ICMP error is waiting on the socket.
    DroppedLocally,
    /// Anything else (unreachable, reset after connecting, a reply that is not an answer line,
    /// a socket the kernel cannot make).
    Other(String),
}

impl Outcome {
    /// The answering pod, if a server answered.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Outcome::Answered { pod, .. } => Some(pod),
            _ => None,
        }
    }
    /// Whether the packet was dropped: by the network (timed out) or by the sender's own
    /// output path.
    pub fn is_dropped(&self) -> bool {
        matches!(self, Outcome::TimedOut | Outcome::DroppedLocally)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered { pod, source, port } => {
                write!(f, "answered by {pod} on port {port}, source seen {source}")
            }
            Outcome::Refused => write!(f, "refused"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::DroppedLocally => write!(f, "dropped locally (EPERM)"),
            Outcome::Other(e) => write!(f, "other: {e}"),
        }
    }
}

/// How a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// Source address to bind (else the kernel picks by route).
    pub src: Option<IpAddr>,
    /// Source port to bind (else ephemeral). A fixed port makes UDP requests reuse one
    /// conntrack entry, which the stale-conntrack cases rely on.
    pub src_port: Option<u16>,
    /// How long to wait for the connection and for the answer.
    pub timeout: Duration,
}

fn classify(e: std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Refused,
        Some(libc::EPERM) => Outcome::DroppedLocally,
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => Outcome::TimedOut,
        _ if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Outcome::TimedOut,
        _ => Outcome::Other(e.to_string()),
    }
}

fn answer_from(bytes: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(bytes);
    match parse_answer(text.trim()) {
        Some(a) => Outcome::Answered {
            pod: a.name,
            source: a.source,
            port: a.port,
        },
        None => Outcome::Other(format!("not an answer line: {:?}", text.trim())),
    }
}

fn new_socket(
    dst: SocketAddr,
    ty: Type,
    proto: SockProto,
    opts: &RequestOptions,
) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(dst), ty, Some(proto))?;
    if opts.src.is_some() || opts.src_port.is_some() {
        s.set_reuse_address(true)?;
        let ip = opts.src.unwrap_or(match dst {
            SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        });
        s.bind(&SocketAddr::new(ip, opts.src_port.unwrap_or(0)).into())?;
    }
    Ok(s)
}

/// Sends one request from the calling thread's namespace.
pub fn request(dst: SocketAddr, proto: Protocol, opts: &RequestOptions) -> Outcome {
    match proto {
        Protocol::Tcp => stream_request(dst, SockProto::TCP, opts),
        Protocol::Sctp => stream_request(dst, SockProto::from(132), opts),
        Protocol::Udp => udp_request(dst, opts),
    }
}

fn stream_request(dst: SocketAddr, proto: SockProto, opts: &RequestOptions) -> Outcome {
    let sock = match new_socket(dst, Type::STREAM, proto, opts) {
        Ok(s) => s,
        Err(e) => return Outcome::Other(format!("socket: {e}")),
    };
    if let Err(e) = sock.connect_timeout(&dst.into(), opts.timeout) {
        return classify(e);
    }
    let mut stream: TcpStream = sock.into();
    if let Err(e) = stream.set_read_timeout(Some(opts.timeout)) {
        return Outcome::Other(e.to_string());
    }
    let deadline = Instant::now() + opts.timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.contains(&b'\n') && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return match classify(e) {
                    Outcome::TimedOut => Outcome::Other("connected, but no answer".into()),
                    other => Outcome::Other(format!("connected, then {other}")),
                }
            }
        }
    }
    if got.is_empty() {
        return Outcome::Other("connected, but no answer".into());
    }
    answer_from(&got)
}

fn udp_request(dst: SocketAddr, opts: &RequestOptions) -> Outcome {
    let sock = match new_socket(dst, Type::DGRAM, SockProto::UDP, opts) {
        Ok(s) => s,
        Err(e) => return Outcome::Other(format!("socket: {e}")),
    };
    if let Err(e) = sock.connect(&dst.into()) {
        return classify(e);
    }
    let sock: UdpSocket = sock.into();
    if let Err(e) = sock.set_read_timeout(Some(opts.timeout)) {
        return Outcome::Other(e.to_string());
    }
    if let Err(e) = sock.send(b"hello\n") {
        return match classify(e) {
            // A REJECT in the sender's own output path fails the send with EPERM, as a DROP
            // does; but the REJECT's ICMP port unreachable has already reached this (connected)
            // socket by the time `send` returns, as its pending error.
            Outcome::DroppedLocally => match sock.take_error() {
                Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Outcome::Refused,
                _ => Outcome::DroppedLocally,
            },
            other => other,
        };
    }
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => answer_from(&buf[..n]),
        Err(e) => classify(e),
    }
}

/// Sends a minimal HTTP/1.0 `GET path` and returns the status code (for health-check node
/// ports, whose servers speak HTTP rather than the lab's answer line).
pub fn http_status(dst: SocketAddr, path: &str, opts: &RequestOptions) -> Result<u16, Outcome> {
    let sock = new_socket(dst, Type::STREAM, SockProto::TCP, opts)
        .map_err(|e| Outcome::Other(format!("socket: {e}")))?;
    sock.connect_timeout(&dst.into(), opts.timeout)
        .map_err(classify)?;
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(|e| Outcome::Other(e.to_string()))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {dst}\r\n\r\n")
        .map_err(|e| Outcome::Other(e.to_string()))?;
    let mut text = String::new();
    let _ = stream.take(4096).read_to_string(&mut text);
    let status = text.lines().next().unwrap_or_default();
    status
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Outcome::Other(format!("not an HTTP answer: {status:?}")))
}

/// The result of many requests to one destination: who answered how often, and what else
/// happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests sent.
    pub sent: usize,
    /// Answers per pod.
    pub answered: BTreeMap<String, usize>,
    /// Every source address the servers saw.
    pub sources: BTreeSet<IpAddr>,
    /// Every port the servers answered on.
    pub ports: BTreeSet<u16>,
    /// Requests refused.
    pub refused: usize,
    /// Requests that timed out or were dropped locally.
    pub dropped: usize,
    /// Other outcomes, by description.
    pub other: BTreeMap<String, usize>,
    /// Whether sending stopped early because too many requests failed (so a broken dataplane
    /// does not cost `n` timeouts).
    pub stopped_early: bool,
}

impl Tally {
    /// Adds one outcome.
    pub fn add(&mut self, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Answered { pod, source, port } => {
                *self.answered.entry(pod).or_default() += 1;
                self.sources.insert(source.ip());
                self.ports.insert(port);
            }
            Outcome::Refused => self.refused += 1,
            Outcome::TimedOut | Outcome::DroppedLocally => self.dropped += 1,
            Outcome::Other(e) => *self.other.entry(e).or_default() += 1,
        }
    }
    /// Requests that were not answered.
    pub fn failures(&self) -> usize {
        self.sent - self.answered.values().sum::<usize>()
    }
    /// The share of answers (0–100) that `pod` gave, out of all requests sent.
    pub fn percent(&self, pod: &str) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * *self.answered.get(pod).unwrap_or(&0) as f64 / self.sent as f64
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sent", self.sent)?;
        for (pod, n) in &self.answered {
            write!(f, ", {pod}: {n}")?;
        }
        if self.refused > 0 {
            write!(f, ", refused: {}", self.refused)?;
        }
        if self.dropped > 0 {
            write!(f, ", dropped/timed out: {}", self.dropped)?;
        }
        for (e, n) in &self.other {
            write!(f, ", {e}: {n}")?;
        }
        if !self.sources.is_empty() {
            let s: Vec<String> = self.sources.iter().map(|s| s.to_string()).collect();
            write!(f, "; sources seen {}", s.join(" "))?;
        }
        if !self.ports.is_empty() {
            let p: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
            write!(f, "; ports {}", p.join(" "))?;
        }
        if self.stopped_early {
            write!(f, " (stopped early after too many failures)")?;
        }
        Ok(())
    }
}

/// Sends `n` requests one after the other, each from a new source port, and counts. Stops after
/// `max_failures` unanswered requests.
pub fn spread(
    dst: SocketAddr,
    proto: Protocol,
    n: usize,
    max_failures: usize,
    opts: &RequestOptions,
) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        tally.add(request(dst, proto, opts));
        if tally.failures() >= max_failures && tally.sent < n {
            tally.stopped_early = true;
            break;
        }
    }
    tally
}
