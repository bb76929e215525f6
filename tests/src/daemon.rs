//! Runs the real `kproxy` binary for end-to-end tests, and reads what the recorder fixture
//! plugin saw.
//!
//! [`Daemon`] writes a config file, starts `kproxy run` with stderr captured to a file (printed
//! when a test fails, so the daemon's own logs explain the failure), and stops it on drop.
//! [`Recording`] reads the recorder plugin's `latest.json` and waits for a state that satisfies
//! a predicate.

use crate::artifacts::{kproxy_bin, PluginDir};
use kproxy_plugin_api::{ProxyState, ServicePort};
use serde::Deserialize;
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tempfile::TempDir;

/// A running `kproxy run` process with its own config and scratch folder.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    /// Keeps the plugin folder alive as long as the daemon runs.
    _plugins: PluginDir,
}

/// What a test supplies to start a daemon.
pub struct DaemonSpec<'a> {
    /// The plugins to install into the daemon's plugin folder.
    pub plugins: &'a [&'a str],
    /// The config file's text without `plugin_dir` (which the harness sets).
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Run the daemon inside this network namespace (`ip netns exec`), if any.
    pub netns: Option<String>,
}

impl Daemon {
    /// Writes the config (with `plugin_dir` pointing at a folder holding `spec.plugins`) and
    /// starts the daemon.
    pub fn start(spec: DaemonSpec<'_>) -> Daemon {
        let plugins = PluginDir::with(spec.plugins);
        let dir = tempfile::Builder::new()
            .prefix("kproxy-daemon-")
            .tempdir()
            .unwrap();
        let config = format!(
            "plugin_dir = \"{}\"\n{}",
            plugins.path().display(),
            spec.config
        );
        let config_path = dir.path().join("kproxy.toml");
        fs::write(&config_path, config).unwrap();
        let log = fs::File::create(dir.path().join("kproxy.log")).unwrap();
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(kproxy_bin());
                c
            }
            None => Command::new(kproxy_bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_BACKTRACE", "1")
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start kproxy");
        Daemon {
            child: Some(child),
            dir,
            _plugins: plugins,
        }
    }

    /// The daemon's scratch folder (config file and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kproxy.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok().and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- kproxy log -----\n{}\n----- end of kproxy log -----",
                self.log()
            );
        }
    }
}

/// One sync as the recorder fixture wrote it.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedSync {
    /// 1 for the first sync the recorder saw.
    pub seq: u64,
    /// The state's generation.
    pub generation: u64,
    /// Whether it was a full sync.
    pub full: bool,
    /// The changed keys, as `ns/name:port/proto`.
    pub changed: Vec<String>,
    /// The whole state.
    pub state: ProxyState,
}

impl RecordedSync {
    /// Finds a service port by `namespace/name` and port name.
    pub fn port(&self, ns_name: &str, port_name: &str) -> Option<&ServicePort> {
        self.state.services.iter().find(|s| {
            format!("{}/{}", s.key.namespace, s.key.name) == ns_name
                && s.key.port_name.as_str() == port_name
        })
    }
    /// The `ns/name` of every service port, in state order (with duplicates for multi-port).
    pub fn service_names(&self) -> Vec<String> {
        self.state
            .services
            .iter()
            .map(|s| format!("{}/{}", s.key.namespace, s.key.name))
            .collect()
    }
}

/// The recorder fixture's output folder.
pub struct Recording {
    dir: TempDir,
}

impl Default for Recording {
    fn default() -> Self {
        Self::new()
    }
}

impl Recording {
    /// A fresh, empty folder for the recorder.
    pub fn new() -> Recording {
        Recording {
            dir: tempfile::Builder::new()
                .prefix("kproxy-rec-")
                .tempdir()
                .unwrap(),
        }
    }

    /// The folder, for the recorder's `dir` setting.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The `[dataplanes.recorder]` section pointing at this folder.
    pub fn config_section(&self) -> String {
        format!(
            "[dataplanes.recorder]\ndir = \"{}\"\n",
            self.dir.path().display()
        )
    }

    /// The newest recorded sync, if any.
    pub fn latest(&self) -> Option<RecordedSync> {
        let text = fs::read_to_string(self.dir.path().join("latest.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every recorded sync so far, in order.
    pub fn all(&self) -> Vec<RecordedSync> {
        let mut out: Vec<RecordedSync> = fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("sync-") && n.ends_with(".json")
            })
            .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
            .collect();
        out.sort_by_key(|s: &RecordedSync| s.seq);
        out
    }

    /// Creates or removes one of the recorder's switch files (`fail`, `stall`, `panic`).
    pub fn switch(&self, name: &str, on: bool) {
        let path = self.dir.path().join(name);
        if on {
            fs::write(path, format!("{name} switched on by the test")).unwrap();
        } else {
            let _ = fs::remove_file(path);
        }
    }

    /// Waits until the newest recorded sync satisfies `ok`, and returns it; panics with
    /// `what` and the last state seen after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&RecordedSync) -> bool,
    ) -> RecordedSync {
        let deadline = Instant::now() + timeout;
        loop {
            let latest = self.latest();
            if let Some(l) = &latest {
                if ok(l) {
                    return l.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last recorded sync: {}",
                    latest.map_or("none".into(), |l| format!(
                        "seq {} generation {} services {:?}",
                        l.seq,
                        l.generation,
                        l.service_names()
                    ))
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
