//! Peak resident memory of the real `kproxy` daemon at scale, without any dataplane's own
//! memory: issue 7's memory target (≤ 200 MB at 250,000 endpoints) for the daemon's part.
//!
//! It loads a synthetic cluster (`SERVICES` ClusterIP services with `ENDPOINTS` ready endpoints
//! each, one EndpointSlice per service — the same shape as `kproxy-bench`) into the test API
//! server, starts `kproxy run` on it with the recorder fixture plugin, and reads the daemon's
//! `VmHWM` from `/proc/<pid>/status` once its first full sync has been handed the whole state.
//!
//! The recorder's `fail` switch is on for that sync: the plugin returns an error at once, before
//! writing its JSON record (which at 250,000 endpoints would hold several copies of the state in
//! the plugin and swamp the daemon's own figure). So what is measured is the daemon: the kube-rs
//! watchers and the initial LIST, conversion, topology, the resolved state handed to the
//! plugin, and the sync's bookkeeping. The figure is the same whatever dataplane runs; a real
//! dataplane adds its own memory on top.
//!
//! Run (as root: the plugin host loads only root-owned plugins):
//!
//! ```text
//! cargo build --release -p kproxy
//! cargo build --release -p kproxy-fixture-recorder
//! cargo run --release -p kproxy-tests --example daemon_memory            # 5,000 × 50
//! cargo run --release -p kproxy-tests --example daemon_memory -- 44000 1 # 44,000 × 1
//! ```
//!
//! The daemon and the recorder are taken from the same profile folder as this program
//! (`target/release` for `--release`). To see where the memory goes, set `DAEMON_WRAPPER` to a
//! command that runs the daemon under a profiler, e.g.
//! `DAEMON_WRAPPER="heaptrack -o /tmp/kproxy"`; the figures printed are then those of the
//! innermost process (the daemon), inflated by the profiler's own bookkeeping.

use anyhow::{bail, Context as _};
use kproxy_tests::{
    apiserver::{Options, TestApiServer},
    artifacts::PluginDir,
};
use serde_json::{json, Value};
use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long the first (failed) full sync may take to arrive.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// The node the daemon runs as; every endpoint is on another node.
const NODE: &str = "node-a";
/// The node every endpoint runs on.
const REMOTE_NODE: &str = "node-b";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (services, endpoints) = match args.as_slice() {
        [] => (5_000, 50),
        [s, e] => (
            s.parse().context("SERVICES must be a number")?,
            e.parse().context("ENDPOINTS must be a number")?,
        ),
        _ => bail!("usage: daemon_memory [SERVICES ENDPOINTS]   (default 5000 50)"),
    };
    let profile = profile_dir()?;
    let kproxy = profile.join("kproxy");
    let recorder = profile.join("libkproxy_plugin_recorder.so");
    for f in [&kproxy, &recorder] {
        if !f.is_file() {
            bail!(
                "{} not found: build the daemon and the recorder first: `cargo build {release}-p \
                 kproxy && cargo build {release}-p kproxy-fixture-recorder`",
                f.display(),
                release = if profile.ends_with("release") {
                    "--release "
                } else {
                    ""
                }
            );
        }
    }

    let api = TestApiServer::start_with(Options {
        bookmark_interval: None,
        history_limit: 1_000_000,
        ..Default::default()
    })?;
    let loading = Instant::now();
    for i in 0..services {
        api.create(&service(i))?;
        api.create(&slice(i, endpoints))?;
    }
    eprintln!(
        "{services} services × {endpoints} endpoints loaded into the test API server in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    let scratch = tempfile::Builder::new()
        .prefix("kproxy-memory-")
        .tempdir()?;
    let record_dir = scratch.path().join("recorder");
    fs::create_dir(&record_dir)?;
    // The recorder fails the sync before recording anything (see the module docs).
    fs::write(record_dir.join("fail"), "measuring the daemon's memory")?;
    let plugins = PluginDir::empty();
    let installed = plugins.plugin_path("recorder");
    fs::copy(&recorder, &installed)?;
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o755))?;
    let kubeconfig = scratch.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;
    let config = format!(
        r#"plugin_dir = "{}"
hostname_override = "{NODE}"
ip_families = ["ipv4"]
healthz_bind_address = ""
metrics_bind_address = ""
min_sync_period = "0s"
sync_period = "1h"
dataplane = "recorder"
[source]
kind = "kubernetes"
kubeconfig = "{}"
[dataplanes.recorder]
dir = "{}"
"#,
        plugins.path().display(),
        kubeconfig.display(),
        record_dir.display()
    );
    let config_path = scratch.path().join("kproxy.toml");
    fs::write(&config_path, config)?;
    let log_path = scratch.path().join("kproxy.log");

    let started = Instant::now();
    let wrapper = std::env::var("DAEMON_WRAPPER").unwrap_or_default();
    let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().as_slice() {
        [] => Command::new(&kproxy),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(&kproxy);
            c
        }
    };
    let mut daemon = Running(
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path)?)
            .spawn()
            .with_context(|| format!("starting {}", kproxy.display()))?,
    );
    let pid = daemon.0.id();
    loop {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("sync failed") {
            break;
        }
        if let Some(status) = daemon.0.try_wait()? {
            bail!("kproxy exited ({status}); its log:\n{log}");
        }
        if started.elapsed() > SYNC_TIMEOUT {
            bail!("no sync within {SYNC_TIMEOUT:?}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_sync = started.elapsed();
    let (hwm, rss) = memory_kib(innermost(pid))?;
    println!(
        "daemon at {services} services × {endpoints} endpoints ({} endpoints): \
         peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB; first full sync reached the plugin after \
         {:.1} s",
        services * endpoints,
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        first_sync.as_secs_f64()
    );
    Ok(())
}

/// Stops the daemon on drop: SIGTERM to the daemon itself (innermost, when it runs under a
/// wrapper, so a profiler can write its data), then SIGKILL to whatever is left after 10 s.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let daemon = innermost(self.0.id());
        // SAFETY: kill(2) with a pid this program started and a valid signal number.
        unsafe { libc::kill(daemon as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(daemon as libc::pid_t, libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The folder this program was built into (`target/<profile>`), where `kproxy` and the fixture
/// plugins are too: examples run from `target/<profile>/examples/`.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let examples = exe.parent().context("this program has no folder")?;
    let profile = if examples.ends_with("examples") {
        examples.parent().context("no profile folder")?
    } else {
        examples
    };
    Ok(profile.to_path_buf())
}

/// The last-born descendant of `pid` at the deepest level (the daemon itself when it runs under
/// a wrapper), or `pid` when it has no children.
fn innermost(pid: u32) -> u32 {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .next_back()
    {
        Some(child) => innermost(child),
        None => pid,
    }
}

/// `(VmHWM, VmRSS)` of process `pid`, KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{name} not in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Service `i`: ClusterIP, one TCP port, cluster IP from 10.96.1.0 upwards.
fn service(i: usize) -> Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32).to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("svc-{i:05}"), "namespace": "bench"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

/// The one EndpointSlice of service `i`, with `n` ready endpoints on the remote node.
fn slice(i: usize, n: usize) -> Value {
    let name = format!("svc-{i:05}");
    let first = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * n) as u32;
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-1"),
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": (0..n as u32).map(|j| json!({
            "addresses": [Ipv4Addr::from(first + j).to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": REMOTE_NODE,
        })).collect::<Vec<_>>(),
    })
}
