//! Watches nf_tables commits in a network namespace: the kernel's own word that a change is in
//! place, with no polling.
//!
//! A netlink socket (`NETLINK_NETFILTER`) subscribed to the `NFNLGRP_NFTABLES` group receives a
//! notification for every object a transaction adds or deletes, then `NFT_MSG_NEWGEN` when the
//! transaction commits: from that moment packets see the new rules. A thread reads the socket
//! and timestamps each generation as it arrives, with the names of the chains it touched, so
//! the change scenario can tell its own commit from any other.
//!
//! Only open a monitor after a large full sync: while anyone listens, the kernel builds a
//! notification for every object, which would slow a 250,000-object transaction down.

use anyhow::Context as _;
use kproxy_lab::{Lab, Place};
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: libc::c_int = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_DESTROYCHAIN: u16 = 27;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_NAME: u16 = 3;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;

/// One committed nf_tables transaction.
#[derive(Debug, Clone)]
// Allowed: `id`, `process` and `objects` are read through `Debug` when a change is lost.
#[allow(dead_code)]
pub struct Generation {
    /// When its `NEWGEN` notification arrived.
    pub at: Instant,
    /// The generation id the commit produced.
    pub id: u32,
    /// The committing process's name (`nft`, `kproxy`, `iptables-nft-re…`).
    pub process: String,
    /// Chains the transaction added or deleted.
    pub chains: Vec<String>,
    /// Set elements the transaction added or deleted: the set's name and the raw element list
    /// (keys and data as the kernel holds them), to look for an endpoint's address in.
    pub elements: Vec<(String, Vec<u8>)>,
    /// Notifications of the transaction (objects added or deleted).
    pub objects: usize,
}

/// See the module docs.
pub struct CommitMonitor {
    rx: mpsc::Receiver<Generation>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CommitMonitor {
    /// Starts watching the namespace of `place`.
    pub fn open(lab: &Lab, place: &Place) -> anyhow::Result<CommitMonitor> {
        let fd = lab
            .run_in(place, open_socket)?
            .context("nf_tables monitor socket")?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nft-monitor".into())
            .spawn(move || read_loop(fd, tx, &stop2))?;
        Ok(CommitMonitor {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// Forgets every generation received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits until a generation satisfying `wanted` arrives, or `deadline` passes. Returns it
    /// and how many other generations arrived before it.
    pub fn wait_for(
        &self,
        deadline: Instant,
        wanted: impl Fn(&Generation) -> bool,
    ) -> Option<(Generation, usize)> {
        let mut others = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(g) if wanted(&g) => return Some((g, others)),
                Ok(_) => others += 1,
                Err(_) => return None,
            }
        }
    }
}

impl Drop for CommitMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the descriptor is owned by the OwnedFd right away.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        if libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let group = NFNLGRP_NFTABLES;
        let set = |level, name, value: &libc::c_int| {
            libc::setsockopt(
                fd,
                level,
                name,
                value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if set(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Room for the notifications of a mid-sized transaction; an overflow is survivable
        // (the generation after it is still seen).
        let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(32 << 20));
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(owned)
    }
}

fn read_loop(fd: OwnedFd, tx: mpsc::Sender<Generation>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 20];
    let mut chains = Vec::new();
    let mut elements = Vec::new();
    let mut objects = 0;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into a buffer we own, with its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        let at = Instant::now();
        if n < 0 {
            // Timeouts (to look at the stop flag) and ENOBUFS after an overflow.
            continue;
        }
        for (ty, payload) in messages(&buf[..n as usize]) {
            if ty >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < 4 {
                continue;
            }
            let attrs = &payload[4..];
            match ty & 0xff {
                NFT_MSG_NEWGEN => {
                    let id = attr(attrs, NFTA_GEN_ID)
                        .and_then(|a| a.get(..4))
                        .map_or(0, |a| u32::from_be_bytes([a[0], a[1], a[2], a[3]]));
                    let process = attr(attrs, NFTA_GEN_PROC_NAME)
                        .map(cstr)
                        .unwrap_or_default();
                    let g = Generation {
                        at,
                        id,
                        process,
                        chains: std::mem::take(&mut chains),
                        elements: std::mem::take(&mut elements),
                        objects: std::mem::take(&mut objects),
                    };
                    if tx.send(g).is_err() {
                        return;
                    }
                }
                t => {
                    objects += 1;
                    if matches!(
                        t,
                        NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN | NFT_MSG_DESTROYCHAIN
                    ) {
                        if let Some(name) = attr(attrs, NFTA_CHAIN_NAME) {
                            chains.push(cstr(name));
                        }
                    }
                    if matches!(
                        t,
                        NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM | NFT_MSG_DESTROYSETELEM
                    ) {
                        let set = attr(attrs, NFTA_SET_ELEM_LIST_SET).map(cstr);
                        let list = attr(attrs, NFTA_SET_ELEM_LIST_ELEMENTS);
                        if let (Some(set), Some(list)) = (set, list) {
                            elements.push((set, list.to_vec()));
                        }
                    }
                }
            }
        }
    }
}

/// `(type, payload)` of every netlink message in a datagram.
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        out.push((ty, &buf[16..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// The payload of the first top-level attribute of type `want`.
fn attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == want {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// How long to wait for one change to reach the kernel before counting it as lost.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn nlattr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(align4(v.len()), 0);
        v
    }

    fn nlmsg(ty: u16, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut v = (len as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(&[2, 0, 0, 0]);
        v.extend_from_slice(attrs);
        v
    }

    #[test]
    fn chain_names_and_generation_ids_are_read() {
        let mut dgram = nlmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
            &[
                nlattr(1, b"kproxy\0"),
                nlattr(NFTA_CHAIN_NAME, b"endpoint-X\0"),
            ]
            .concat(),
        );
        dgram.extend(nlmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN,
            &[
                nlattr(NFTA_GEN_ID, &7u32.to_be_bytes()),
                nlattr(3, b"nft\0"),
            ]
            .concat(),
        ));
        let msgs = messages(&dgram);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].0 & 0xff, NFT_MSG_NEWCHAIN);
        let name = attr(&msgs[0].1[4..], NFTA_CHAIN_NAME).map(cstr);
        assert_eq!(name.as_deref(), Some("endpoint-X"));
        let id = attr(&msgs[1].1[4..], NFTA_GEN_ID).unwrap();
        assert_eq!(u32::from_be_bytes(id.try_into().unwrap()), 7);
        assert_eq!(attr(&msgs[1].1[4..], 3).map(cstr).as_deref(), Some("nft"));
    }
}
