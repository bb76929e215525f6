//! The daemon the demo shows: this very binary's `kproxy run`, started inside the sandbox's node
//! namespace with a config that reads the demo's manifest folder and uses the nftables plugin.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The plugin file the demo needs.
pub const PLUGIN_FILE: &str = "libkproxy_plugin_nftables.so";
/// Where an installed kproxy keeps its plugins.
pub const INSTALLED_PLUGIN_DIR: &str = "/usr/lib/kproxy";

/// Why the daemon could not be started or kept running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No usable nftables plugin.
    #[error("no usable nftables plugin: {0}")]
    Plugin(String),
    /// Starting the process failed.
    #[error("cannot start `{command}`: {reason}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },
    /// A file of the demo's could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The plugin folder the demo uses: `flag` when given; else the folder this binary is in when
/// it holds the nftables plugin (a `cargo build` puts both in `target/<profile>/`); else the
/// installed layout's [`INSTALLED_PLUGIN_DIR`].
pub fn plugin_dir(flag: Option<&Path>, exe: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(dir) = exe.and_then(Path::parent) {
        if dir.join(PLUGIN_FILE).is_file() {
            return dir.to_path_buf();
        }
    }
    PathBuf::from(INSTALLED_PLUGIN_DIR)
}

/// Checks that `dir` holds a nftables plugin the host will load (owned by root, writable by no
/// one else), so a bad folder is reported before anything is built.
pub fn check_plugin(dir: &Path) -> Result<PathBuf, DaemonError> {
    let file = dir.join(PLUGIN_FILE);
    if !file.is_file() {
        return Err(DaemonError::Plugin(format!(
            "{} does not exist; build it with `cargo build --workspace` (or `make build`) or \
             name the folder holding it with --plugin-dir",
            file.display()
        )));
    }
    crate::plugin_host::safety::check_plugin_path(&file)
        .map_err(|cause| DaemonError::Plugin(format!("{}: {cause}", file.display())))?;
    Ok(file)
}

/// The daemon's config: this node's name and the sandbox's ranges, the manifest source, and
/// the nftables dataplane from `plugin_dir`. Syncs are not rate-limited, so a change shows at
/// once.
pub fn config(
    node_name: &str,
    cluster_cidr: &str,
    service_cidr: &str,
    manifest_dir: &Path,
    plugin_dir: &Path,
) -> String {
    format!(
        r#"# Written by `kproxy demo`; removed when the demo ends.
hostname_override = "{node_name}"
cluster_cidrs = ["{cluster_cidr}"]
service_cidrs = ["{service_cidr}"]
ip_families = ["ipv4"]
min_sync_period = "0s"
sync_period = "30s"
healthz_bind_address = "127.0.0.1:10256"
metrics_bind_address = "127.0.0.1:10249"
plugin_dir = "{}"
dataplane = "nftables"

[source]
kind = "manifests"
manifest_dir = "{}"

[logging]
format = "text"
level = "info"
"#,
        plugin_dir.display(),
        manifest_dir.display(),
    )
}

/// A running `kproxy run` inside a namespace. Stopped (and reaped) on drop.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `exe run --config <config>` inside network namespace `netns` (`ip netns exec`, so
    /// `/sys` shows the namespace too), with stderr to `log`. The daemon gets its own process
    /// group, so a Ctrl-C in the terminal reaches only the demo, which then stops the daemon
    /// itself, in order. `KPROXY_*` variables of the caller are not passed on: the config file
    /// says everything.
    pub fn start(
        exe: &Path,
        netns: &str,
        config: &Path,
        log: &Path,
    ) -> Result<DaemonProcess, DaemonError> {
        use std::os::unix::process::CommandExt as _;
        let log_file = fs::File::create(log).map_err(|e| DaemonError::Write {
            path: log.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KPROXY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().map_err(|e| DaemonError::Spawn {
            command: format!("{cmd:?}"),
            reason: e.to_string(),
        })?;
        Ok(DaemonProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The daemon's process id (`ip netns exec` execs it, so this is kproxy itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `None` while it runs, else how it ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the daemon: SIGTERM, up to `grace` to exit, then SIGKILL; always reaped. (kproxy
    /// leaves its rules in place when it stops; they go with the namespace.)
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_binarys_folder_then_the_installed_one() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("kproxy");
        let flag = Path::new("/opt/plugins");
        assert_eq!(plugin_dir(Some(flag), Some(&exe)), flag);
        assert_eq!(
            plugin_dir(None, Some(&exe)),
            PathBuf::from(INSTALLED_PLUGIN_DIR)
        );
        fs::write(dir.path().join(PLUGIN_FILE), b"").unwrap();
        assert_eq!(plugin_dir(None, Some(&exe)), dir.path());
        assert_eq!(plugin_dir(None, None), PathBuf::from(INSTALLED_PLUGIN_DIR));
    }

    #[test]
    fn a_missing_plugin_is_named_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_plugin(dir.path()).unwrap_err().to_string();
        assert!(e.contains(PLUGIN_FILE) && e.contains("--plugin-dir"), "{e}");
    }

    #[test]
    fn the_config_is_one_the_daemon_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kproxy.toml");
        let text = config(
            "n1",
            "10.244.0.0/16",
            "10.96.0.0/16",
            dir.path(),
            Path::new("/usr/lib/kproxy"),
        );
        fs::write(&file, text).unwrap();
        let c = crate::config::Config::load(&crate::config::LoadOptions {
            file: file.clone(),
            file_required: true,
            env: Vec::new(),
            overrides: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.dataplane, "nftables");
        assert_eq!(c.node_name(), "n1");
    }
}
