//! `kproxy demo` end to end: the built binary runs the whole demo (namespaces, the daemon with
//! the nftables plugin, real traffic) and removes everything it made — at the end, on Ctrl-C,
//! and on SIGTERM.
//!
//! Needs root and a `cargo build --workspace` (the binary and the nftables plugin side by side
//! in the target folder, where the demo finds the plugin by default).

use kproxy_tests::{artifacts::kproxy_bin, lab::netns};
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The demo's whole run must fit in this (it takes a few seconds; the bound only keeps a hang
/// from blocking the suite).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether this test may run: root is needed for namespaces. Outside CI a test without root
/// skips with a printed reason; under `CI=true` it fails.
fn privileged() -> bool {
    match kproxy_tests::lab::privileges() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the demo cannot run: needs root ({why})")
        }
        Err(why) => {
            println!("skipped: needs root ({why})");
            false
        }
    }
}

/// A running `kproxy demo` whose output lines arrive as they are printed.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(kproxy_bin())
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kproxy demo");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line containing `text`.
    fn wait_for_line(&mut self, text: &str) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(text);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "kproxy demo never printed {text:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal kproxy demo");
    }

    /// Waits for the demo to end and returns its exit status and whole output.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "kproxy demo did not end within {RUN_TIMEOUT:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end when the pipes close.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

/// Checks that nothing the demo process `pid` made is left: no namespace of its prefix, not its
/// temporary folder, not its daemon.
fn assert_removed(pid: u32, output: &str) {
    let prefix = format!("kproxy-demo-{pid}-");
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}\n{output}");
    assert!(
        output.contains("removed the sandbox"),
        "the demo must say it removed the sandbox:\n{output}"
    );
    if let Some(files) = after(output, "  files ").and_then(|rest| rest.split_whitespace().next()) {
        assert!(!Path::new(files).exists(), "{files} is left\n{output}");
    }
    if let Some(daemon) = after(output, "(pid ").and_then(|rest| rest.split(')').next()) {
        assert!(
            !Path::new(&format!("/proc/{daemon}")).exists(),
            "the daemon (pid {daemon}) still runs\n{output}"
        );
    }
}

/// The text after the first occurrence of `marker` on its line.
fn after<'a>(output: &'a str, marker: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim_start()))
}

/// Per table row (`backend count share …`): the backend and its count, in output order.
fn rows(section: &str) -> Vec<(String, usize)> {
    section
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let count = words.next()?.parse().ok()?;
            name.starts_with("web-").then(|| (name.to_string(), count))
        })
        .collect()
}

#[test]
fn the_demo_balances_scales_down_and_removes_everything() {
    if !privileged() {
        return;
    }
    let demo = Demo::start(&["--requests", "60"]);
    let pid = demo.pid();
    let (status, output) = demo.finish();
    assert_eq!(status.code(), Some(0), "{output}");

    let first = output
        .split_once("\n1. ")
        .and_then(|(_, rest)| rest.split_once("\n2. "))
        .map(|(first, _)| first)
        .unwrap_or_else(|| panic!("no first round in:\n{output}"));
    let second = output
        .split_once("\n2. ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no second round in:\n{output}"));

    let first_rows = rows(first);
    assert_eq!(
        first_rows.len(),
        6,
        "two tables of three backends:\n{output}"
    );
    for backend in ["web-a", "web-b", "web-c"] {
        let answered: Vec<usize> = first_rows
            .iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(answered.len(), 2, "{backend} in both tables:\n{output}");
        assert!(
            answered.iter().all(|n| *n > 0),
            "{backend} answered:\n{output}"
        );
    }
    assert_eq!(
        first_rows.iter().map(|(_, n)| n).sum::<usize>(),
        120,
        "every request answered:\n{output}"
    );
    assert!(
        first.contains("masqueraded"),
        "the NodePort table shows NAT:\n{output}"
    );

    let second_rows = rows(second);
    assert!(!second_rows.is_empty(), "{output}");
    for (backend, n) in &second_rows {
        if backend == "web-c" {
            assert_eq!(*n, 0, "web-c was scaled away:\n{output}");
        }
    }
    assert_eq!(
        second_rows.iter().map(|(_, n)| n).sum::<usize>(),
        120,
        "web-a and web-b took all the traffic:\n{output}"
    );
    assert_removed(pid, &output);
}

#[test]
fn ctrl_c_while_traffic_flows_removes_everything_and_exits_130() {
    if !privileged() {
        return;
    }
    // Enough requests that the demo is still sending when the signal comes.
    let mut demo = Demo::start(&["--requests", "100000"]);
    let pid = demo.pid();
    demo.wait_for_line("1. all three backends ready");
    demo.signal(nix::sys::signal::Signal::SIGINT);
    let (status, output) = demo.finish();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("interrupted by SIGINT"), "{output}");
    assert_removed(pid, &output);
}

#[test]
fn sigterm_while_the_sandbox_is_built_removes_everything_and_exits_130() {
    if !privileged() {
        return;
    }
    let mut demo = Demo::start(&["--requests", "60"]);
    let pid = demo.pid();
    demo.wait_for_line("building the sandbox");
    demo.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, output) = demo.finish();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("interrupted by SIGTERM"), "{output}");
    assert!(
        !output.contains("\n1. "),
        "the demo went on after the signal:\n{output}"
    );
    assert_removed(pid, &output);
}

#[test]
fn a_missing_plugin_is_named_before_anything_is_built() {
    if !privileged() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let demo = Demo::start(&["--plugin-dir", empty.path().to_str().unwrap()]);
    let (status, output) = demo.finish();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("libkproxy_plugin_nftables.so") && output.contains("--plugin-dir"),
        "{output}"
    );
    assert!(!output.contains("building the sandbox"), "{output}");
}

#[test]
fn without_root_the_demo_says_so_and_exits_1() {
    if !privileged() {
        return;
    }
    // Drop to `nobody` for this one run.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(kproxy_bin())
        .arg("demo")
        .output();
    let out = match out {
        Ok(out) if !matches!(out.status.code(), Some(126) | Some(127)) => out,
        other => {
            println!("skipped: cannot run kproxy as nobody with setpriv ({other:?})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}
