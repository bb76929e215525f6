//! Named network namespaces: create, enter from a thread, run commands in, delete.
//!
//! A namespace is entered per *thread* (`setns(CLONE_NEWNET)`), never by the test process as a
//! whole, so the host's own namespace is never the one we change. Sockets remember the namespace
//! they were made in, and children forked from an entered thread start in it.

use super::LabError;
use nix::sched::{setns, CloneFlags};
use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Output},
};

/// Where `ip netns` keeps its bind mounts.
const NETNS_DIR: &str = "/run/netns";

/// The path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Moves the calling thread into the named namespace. Only for threads the lab spawned.
pub fn enter(name: &str) -> Result<(), LabError> {
    let file = File::open(path(name)).map_err(|e| LabError::Enter {
        ns: name.into(),
        reason: e.to_string(),
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Enter {
        ns: name.into(),
        reason: e.to_string(),
    })
}

/// Runs `f` on a new thread that has entered `ns`, and returns its result; a panic in `f` is
/// re-raised on the caller's thread.
pub fn run_in<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R, LabError> {
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            enter(ns)?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs a command (in the caller's namespace, e.g. `ip -n <ns> …`) and fails with its stderr
/// when it exits non-zero.
pub fn run(args: &[&str]) -> Result<Output, LabError> {
    let (prog, rest) = args.split_first().expect("a command has a program");
    let out = Command::new(prog)
        .args(rest)
        .output()
        .map_err(|e| LabError::Command {
            command: args.join(" "),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: args.join(" "),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// Creates a namespace with loopback up, DAD off (so IPv6 addresses are usable at once) and
/// reverse-path filtering off (the lab routes asymmetrically on purpose in some cases).
pub fn create(name: &str) -> Result<(), LabError> {
    run(&["ip", "netns", "add", name])?;
    run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    set_sysctls(
        name,
        &[
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ],
    )?;
    // No ICMP rate limits: a REJECT answers with ICMP, and a spread of 1,000 rejected requests
    // must see 1,000 refusals, not six and then silence. Best effort: not every kernel has every
    // key.
    let _ = set_sysctls(
        name,
        &[
            ("net/ipv4/icmp_ratelimit", "0"),
            ("net/ipv4/icmp_ratemask", "0"),
            ("net/ipv4/icmp_msgs_per_sec", "1000000"),
            ("net/ipv4/icmp_msgs_burst", "1000000"),
            ("net/ipv6/icmp/ratelimit", "0"),
        ],
    );
    let _ = set_sysctls(name, &[("net/ipv6/icmp/ratemask", "255")]);
    Ok(())
}

/// Writes `/proc/sys/<key>` values from inside the namespace (`/proc/sys/net` shows the
/// namespace of the thread that opens it).
pub fn set_sysctls(ns: &str, values: &[(&str, &str)]) -> Result<(), LabError> {
    run_in(ns, || {
        for (key, value) in values {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value).map_err(|e| LabError::Command {
                command: format!("write {value} to {path} in {ns}"),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    })?
}

/// The process ids living in the namespace (`ip netns pids`): the processes the lab started
/// there.
pub fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the namespace (its veths go with it). Errors are returned for the caller to report;
/// deleting one that is already gone is not an error.
pub fn delete(name: &str) -> Result<(), LabError> {
    if !path(name).exists() {
        return Ok(());
    }
    run(&["ip", "netns", "del", name]).map(|_| ())
}

/// Names under `/run/netns`.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
