//! The thin layer that talks to the kernel: `iptables-restore --noflush -w` with its input on a
//! pipe (one transaction per family), and `iptables-save` for the little the plugin reads.
//!
//! Binaries are the back end's own (`iptables-nft-restore`, `ip6tables-legacy-save`, …), never
//! the `iptables` alternative, so the back end kproxy chose is the one it talks to whatever the
//! system's default is.

use crate::backend::Backend;
use kproxy_plugin_api::{IpFamily, PluginError};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The longest stretch of an input line quoted in an error message.
const QUOTE_MAX: usize = 300;

/// Why running an iptables tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The binary could not be started.
    #[error("`{command}` could not start: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{}", describe_failure(command, *status, *line, quoted.as_deref(), stderr))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status (`None` when killed by a signal).
        status: Option<i32>,
        /// The input line iptables-restore named (`Error occurred at line: N`).
        line: Option<usize>,
        /// That line of the input.
        quoted: Option<String>,
        /// What the tool wrote to stderr.
        stderr: String,
    },
}

impl From<ToolError> for PluginError {
    fn from(e: ToolError) -> Self {
        PluginError::kernel(e.to_string())
    }
}

fn describe_failure(
    command: &str,
    status: Option<i32>,
    line: Option<usize>,
    quoted: Option<&str>,
    stderr: &str,
) -> String {
    let mut m = format!(
        "`{command}` failed (exit status {})",
        status.map_or("killed".into(), |c| c.to_string())
    );
    if let (Some(n), Some(q)) = (line, quoted) {
        m.push_str(&format!(" at input line {n}: `{q}`"));
    }
    // The most telling line: legacy names the failure on the first line and the line number
    // on its own; nft puts both on one line (`line 16: CHAIN_DEL failed (…)`) after a bare
    // version prefix.
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines
        .iter()
        .find(|l| l.starts_with("line ") || l.contains(": line "))
        .or_else(|| {
            lines
                .iter()
                .find(|l| !l.starts_with("Error occurred at line") && !l.ends_with("):"))
        })
        .or(lines.first());
    if let Some(first) = first {
        m.push_str(&format!(": {first}"));
    }
    m.push_str(&format!("; stderr: {}", stderr.trim()));
    m
}

/// Finds the input line iptables-restore names: `Error occurred at line: N` (parse errors),
/// `line N: …` (nft, errors the kernel reports at commit) or `iptables-restore: line N failed`
/// (legacy, the same).
pub fn failing_line(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        l.match_indices("line").find_map(|(at, word)| {
            let rest = l[at + word.len()..].trim_start_matches([':', ' ']);
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    })
}

/// Runs one back end's restore and save binaries.
#[derive(Debug, Clone)]
pub struct Tool {
    backend: Backend,
}

impl Tool {
    /// The tools of `backend`.
    pub fn new(backend: Backend) -> Self {
        Tool { backend }
    }

    /// The back end.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `iptables-<backend>-<what>` or `ip6tables-…` for `family`.
    pub fn binary(&self, family: IpFamily, what: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        format!("{base}-{}-{what}", self.backend.as_str())
    }

    /// Whether this back end's restore binary for `family` is installed.
    pub fn available(&self, family: IpFamily) -> bool {
        locate(&self.binary(family, "restore")).is_some()
    }

    /// Applies `input` with `iptables-restore --noflush -w`, fed through a pipe. On failure
    /// the error names the command, the input line iptables-restore reported and its stderr;
    /// each table of the input is committed atomically, so a refused table keeps its rules.
    pub fn restore(&self, family: IpFamily, input: &str) -> Result<(), ToolError> {
        let name = self.binary(family, "restore");
        let path = locate(&name).unwrap_or_else(|| PathBuf::from(&name));
        let command = format!("{name} --noflush -w");
        let mut child = Command::new(&path)
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                command: command.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error (the tool died early) shows in its exit status and stderr below.
        let written = stdin.write_all(input.as_bytes());
        drop(stdin);
        let output = child
            .wait_with_output()
            .map_err(|source| ToolError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            return written.map_err(|source| ToolError::Spawn { command, source });
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let line = failing_line(&stderr);
        let quoted = line
            .and_then(|n| input.lines().nth(n.saturating_sub(1)))
            .map(|l| {
                let q: String = l.chars().take(QUOTE_MAX).collect();
                if q.len() < l.len() {
                    format!("{q}…")
                } else {
                    q
                }
            });
        Err(ToolError::Failed {
            command,
            status: output.status.code(),
            line,
            quoted,
            stderr,
        })
    }

    /// The rules of one chain (`iptables -t <table> -S <chain>`), as the text after
    /// `-A <chain> `. Cheap even on a large table: only that chain is read.
    pub fn list_chain(
        &self,
        family: IpFamily,
        table: &str,
        chain: &str,
    ) -> Result<Vec<String>, ToolError> {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let name = format!("{base}-{}", self.backend.as_str());
        let path = locate(&name).unwrap_or_else(|| PathBuf::from(&name));
        let command = format!("{name} -w -t {table} -S {chain}");
        let output = Command::new(&path)
            .args(["-w", "-t", table, "-S", chain])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ToolError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(ToolError::Failed {
                command,
                status: output.status.code(),
                line: None,
                quoted: None,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let prefix = format!("-A {chain} ");
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(String::from))
            .collect())
    }

    /// `iptables-save` (every table the back end holds) for `family`.
    pub fn save(&self, family: IpFamily) -> Result<String, ToolError> {
        self.run_save(family, &[])
    }

    /// `iptables-save -t <table>` for `family`.
    pub fn save_table(&self, family: IpFamily, table: &str) -> Result<String, ToolError> {
        self.run_save(family, &["-t", table])
    }

    fn run_save(&self, family: IpFamily, args: &[&str]) -> Result<String, ToolError> {
        let name = self.binary(family, "save");
        let path = locate(&name).unwrap_or_else(|| PathBuf::from(&name));
        let output = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ToolError::Spawn {
                command: name.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return Err(ToolError::Failed {
                command: name,
                status: output.status.code(),
                line: None,
                quoted: None,
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Finds a binary in `PATH`, then in `/usr/sbin` and `/sbin` (where Debian installs iptables,
/// and which a service's `PATH` may lack).
pub fn locate(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_the_line_and_the_message() {
        let stderr = "iptables-restore v1.8.9 (legacy): Couldn't load target `NOPE':No such file or directory\n\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n";
        assert_eq!(failing_line(stderr), Some(3));
        let e = ToolError::Failed {
            command: "iptables-legacy-restore --noflush -w".into(),
            status: Some(2),
            line: Some(3),
            quoted: Some("-A KPROXY-X -j NOPE".into()),
            stderr: stderr.into(),
        };
        let m = e.to_string();
        assert!(
            m.starts_with("`iptables-legacy-restore --noflush -w` failed (exit status 2) at input line 3: `-A KPROXY-X -j NOPE`: iptables-restore v1.8.9 (legacy): Couldn't load target"),
            "{m}"
        );
        assert!(m.contains("stderr:"), "{m}");
        let nft = "iptables-nft-restore v1.8.9 (nf_tables): \nline 16: CHAIN_DEL failed (Device or resource busy): chain KPROXY-SVC-X\n";
        assert_eq!(failing_line(nft), Some(16));
        assert_eq!(failing_line("iptables-restore: line 7 failed\n"), Some(7));
        let m = describe_failure("x", Some(4), Some(16), Some("-X KPROXY-SVC-X"), nft);
        assert!(
            m.contains(": line 16: CHAIN_DEL failed (Device or resource busy)"),
            "{m}"
        );
        let p: PluginError = e.into();
        assert_eq!(p.code, kproxy_plugin_api::ErrorCode::Kernel);
        assert!(p.retryable);
    }

    #[test]
    fn binaries_are_the_back_ends_own() {
        let t = Tool::new(Backend::Legacy);
        assert_eq!(
            t.binary(IpFamily::V6, "restore"),
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            Tool::new(Backend::Nft).binary(IpFamily::V4, "save"),
            "iptables-nft-save"
        );
    }
}
