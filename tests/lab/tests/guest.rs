//! The qemu guest itself: it boots Debian's kernel, runs host programs (`nft`, this test
//! binary) with their libraries, has SCTP sockets, and reports the command's exit code.
//!
//! Needs qemu and the guest kernel (`scripts/install-deps`, `scripts/guest-kernel`); skips
//! without them, except under `CI=true`, where it fails.

use kproxy_lab::vm::Guest;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// The guest-side half of [`guest_boots_runs_nft_and_has_sctp`].
const IN_GUEST: &str = "sctp_round_trip_on_loopback_in_guest";

#[test]
fn guest_boots_runs_nft_and_has_sctp() {
    let Some(mut guest) = Guest::prepare_or_skip() else {
        return;
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    guest.add_program(&exe).expect("add this test binary");
    // The command's own exit code (7) must come back, not the shell's or the kernel's.
    let script = format!(
        "nft add table inet kproxy-smoke && nft list ruleset && uname -r && \
         '{}' --include-ignored --exact {IN_GUEST} --nocapture; echo test-exit=$?; exit 7",
        exe.display()
    );
    let run = guest.run(&["sh", "-c", &script]).expect("the guest runs");
    println!(
        "guest boot, run and power-off: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert_eq!(run.exit_code, 7, "{run}");
    assert!(run.output.contains("table inet kproxy-smoke"), "{run}");
    assert!(
        run.output.contains(&format!("test {IN_GUEST} ... ok"))
            && run.output.contains("test-exit=0"),
        "{run}"
    );
    // The guest runs its own kernel, not the host's.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(!run.output.contains(host_release.trim()), "{run}");
}

fn sctp_round_trip(listen: SocketAddr) {
    let domain = Domain::for_address(listen);
    let sctp = Some(Protocol::from(libc::IPPROTO_SCTP));
    let server = Socket::new(domain, Type::STREAM, sctp).expect("an SCTP socket");
    server.bind(&SockAddr::from(listen)).expect("bind");
    server.listen(1).expect("listen");
    let addr = server.local_addr().unwrap();
    let client = Socket::new(domain, Type::STREAM, sctp).unwrap();
    client.connect(&addr).expect("an SCTP association");
    (&client).write_all(b"ping").unwrap();
    let (conn, _) = server.accept().expect("accept");
    let mut got = [0u8; 4];
    (&conn).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}

#[test]
#[ignore = "runs inside the qemu guest, started by guest_boots_runs_nft_and_has_sctp"]
fn sctp_round_trip_on_loopback_in_guest() {
    sctp_round_trip(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    sctp_round_trip(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)));
}
