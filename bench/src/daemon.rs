//! Runs the real `kproxy` daemon (the release build next to this program) in the lab's node
//! namespace, watching the test API server, and reads what the benchmark needs from it: the
//! duration of its full syncs (its own JSON log) and its peak memory (`/proc/<pid>/status`).

use anyhow::{bail, Context as _};
use kproxy_lab::{
    plan::{CLUSTER_CIDR_V4, NODE_NAME, SERVICE_CIDR_V4},
    Lab, Place,
};
use serde_json::Value;
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tempfile::TempDir;

/// The folder holding this program, `kproxy` and the plugins (`target/release`).
pub fn build_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    Ok(exe
        .parent()
        .context("this program has no folder")?
        .to_path_buf())
}

/// Checks that `kproxy` and the named plugins were built next to this program.
pub fn check_built(plugins: &[&str]) -> anyhow::Result<()> {
    let dir = build_dir()?;
    let mut missing = Vec::new();
    if !dir.join("kproxy").is_file() {
        missing.push("kproxy".to_string());
    }
    for p in plugins {
        if !dir.join(plugin_file(p)).is_file() {
            missing.push(plugin_file(p));
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: build them first, e.g. `cargo build --release -p kproxy -p \
             kproxy-bench {}` (scripts/bench does it)",
            missing.join(", "),
            dir.display(),
            plugins
                .iter()
                .map(|p| format!("-p kproxy-plugin-{p}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

fn plugin_file(name: &str) -> String {
    format!("libkproxy_plugin_{name}.so")
}

/// One full sync as the daemon logged it.
#[derive(Debug, Clone, Copy)]
pub struct FullSync {
    /// How long the plugin call took: from the resolved state being handed over to the
    /// kernel having it.
    pub duration: Duration,
}

/// A running daemon; stopped (SIGTERM, rules left in place) on drop.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
}

impl Daemon {
    /// Starts `kproxy run` in the lab's node namespace with `dataplane` and its config section,
    /// watching the API server described by `kubeconfig`.
    pub fn start(
        lab: &Lab,
        dataplane: &str,
        plugin_section: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("kproxy-bench-daemon-")
            .tempdir()?;
        let plugins = dir.path().join("plugins");
        fs::create_dir(&plugins)?;
        fs::set_permissions(&plugins, fs::Permissions::from_mode(0o755))?;
        let from = build_dir()?.join(plugin_file(dataplane));
        let to = plugins.join(plugin_file(dataplane));
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        // The host refuses plugin folders writable by anyone but root; the temporary folder
        // itself is private to root.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let config = format!(
            r#"hostname_override = "{NODE_NAME}"
cluster_cidrs = ["{CLUSTER_CIDR_V4}"]
service_cidrs = ["{SERVICE_CIDR_V4}"]
ip_families = ["ipv4"]
min_sync_period = "0s"
sync_period = "1h"
healthz_bind_address = ""
metrics_bind_address = ""
plugin_dir = "{}"
dataplane = "{dataplane}"
[source]
kind = "kubernetes"
kubeconfig = "{}"
[logging]
format = "json"
level = "info,kproxy::actors::sync=debug"
[dataplanes.{dataplane}]
{plugin_section}
"#,
            plugins.display(),
            kubeconfig.display()
        );
        let config_path = dir.path().join("kproxy.toml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("kproxy.log"))?;
        let mut cmd = Command::new(build_dir()?.join("kproxy"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = lab.spawn_in(&Place::Node, cmd)?;
        Ok(Daemon {
            child: Some(child),
            dir,
        })
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kproxy.log")).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the daemon was stopped");
        };
        if let Some(status) = child.try_wait()? {
            bail!("kproxy exited ({status}); its log:\n{}", tail(&self.log()));
        }
        Ok(())
    }

    /// The full syncs the daemon has logged so far.
    pub fn full_syncs(&self) -> Vec<FullSync> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "synced" && v["full"] == true)
            .filter_map(|v| v["duration_ms"].as_f64())
            .map(|ms| FullSync {
                duration: Duration::from_secs_f64(ms / 1e3),
            })
            .collect()
    }

    /// Waits until the daemon has logged its `n`-th full sync and returns it.
    pub fn wait_full_sync(&mut self, n: usize, timeout: Duration) -> anyhow::Result<FullSync> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.full_syncs().get(n - 1) {
                return Ok(*s);
            }
            self.ensure_running()?;
            if let Some(line) = self.log().lines().find(|l| l.contains("sync failed")) {
                bail!("the daemon's sync failed: {line}");
            }
            if Instant::now() > deadline {
                bail!(
                    "no full sync #{n} within {timeout:?}; log:\n{}",
                    tail(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `(VmHWM, VmRSS)` of the daemon in KiB: its peak and current resident memory.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.pid().context("the daemon was stopped")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// Stops the daemon (SIGTERM; the rules stay in the kernel, as on a restart).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last 40 lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
