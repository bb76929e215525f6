//! The thin layer that talks to the kernel: `iptables-restore --noflush -w` with its input
//! streamed into a pipe ([`RestoreRun`]), and `iptables-save`, read as it streams.
//!
//! Binaries are the back end's own (`iptables-nft-restore`, `ip6tables-legacy-save`, …), never
//! the `iptables` alternative, so the back end kproxy chose is the one it talks to whatever the
//! system's default is.

use crate::{backend::Backend, ruleset::Saved};
use kproxy_plugin_api::{IpFamily, PluginError};
use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdin, Command, Stdio},
    thread::JoinHandle,
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
    /// each transaction of the input is committed atomically, so a refused one keeps its rules.
    pub fn restore(&self, family: IpFamily, input: &str) -> Result<(), ToolError> {
        let mut run = self.restore_run(family);
        let _ = run.write_all(input.as_bytes());
        run.finish().map(|_| ())
    }

    /// A restore whose input is written as it is produced ([`RestoreRun`]).
    pub fn restore_run(&self, family: IpFamily) -> RestoreRun {
        let name = self.binary(family, "restore");
        RestoreRun {
            path: locate(&name).unwrap_or_else(|| PathBuf::from(&name)),
            command: format!("{name} --noflush -w"),
            child: None,
            failed: None,
            tail: Tail::default(),
        }
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

    /// `iptables-save` for `family`, read as it streams into a [`Saved`] (kproxy's chains as
    /// digests): a large table is never held as text.
    pub fn save_parsed(&self, family: IpFamily) -> Result<Saved, ToolError> {
        let name = self.binary(family, "save");
        let path = locate(&name).unwrap_or_else(|| PathBuf::from(&name));
        let spawn_error = |source| ToolError::Spawn {
            command: name.clone(),
            source,
        };
        let mut child = Command::new(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let read = Saved::read(std::io::BufReader::with_capacity(1 << 16, stdout));
        let status = child.wait().map_err(spawn_error)?;
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(ToolError::Failed {
                command: name,
                status: status.code(),
                line: None,
                quoted: None,
                stderr,
            });
        }
        read.map_err(spawn_error)
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

/// One `iptables-restore --noflush -w` whose input is written as it is produced, so a sync
/// never holds the whole input. The tool starts at the first byte written; a run nothing was
/// written to runs nothing.
///
/// Writes never fail: when the tool dies early (it refused a line), the rest of the input is
/// dropped and [`RestoreRun::finish`] reports the tool's own message. The tool's stderr is read
/// on a thread of its own, so a chatty tool cannot stall the writer.
pub struct RestoreRun {
    path: PathBuf,
    command: String,
    child: Option<Running>,
    /// Why the run cannot go on: a failed start or write.
    failed: Option<std::io::Error>,
    tail: Tail,
}

struct Running {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stderr: JoinHandle<String>,
}

impl Write for RestoreRun {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed.is_some() || buf.is_empty() {
            return Ok(buf.len());
        }
        if self.child.is_none() {
            match self.start() {
                Ok(running) => self.child = Some(running),
                Err(e) => {
                    self.failed = Some(e);
                    return Ok(buf.len());
                }
            }
        }
        self.tail.push(buf);
        if let Some(running) = &mut self.child {
            if let Err(e) = running.stdin.write_all(buf) {
                self.failed = Some(e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RestoreRun {
    fn start(&self) -> std::io::Result<Running> {
        let mut child = Command::new(&self.path)
            .args(["--noflush", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = BufWriter::with_capacity(1 << 16, child.stdin.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        Ok(Running {
            child,
            stdin,
            stderr,
        })
    }

    /// Ends the input and waits for the tool. `Ok(false)` when nothing was written (no tool
    /// ran), `Ok(true)` when it applied everything.
    pub fn finish(self) -> Result<bool, ToolError> {
        let RestoreRun {
            command,
            child,
            failed,
            tail,
            ..
        } = self;
        let Some(running) = child else {
            return match failed {
                Some(source) => Err(ToolError::Spawn { command, source }),
                None => Ok(false),
            };
        };
        let Running {
            mut child,
            stdin,
            stderr,
        } = running;
        // A write error (the tool died early) shows in its exit status and stderr below.
        let flushed = stdin.into_inner().map(drop).map_err(|e| e.into_error());
        let status = child.wait().map_err(|source| ToolError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stderr = stderr.join().unwrap_or_default();
        if status.success() {
            return match failed.map_or(flushed, Err) {
                Ok(()) => Ok(true),
                Err(source) => Err(ToolError::Spawn { command, source }),
            };
        }
        let line = failing_line(&stderr);
        let quoted = line.and_then(|n| tail.line(n)).map(|l| {
            let q: String = l.chars().take(QUOTE_MAX).collect();
            if q.len() < l.len() {
                format!("{q}…")
            } else {
                q
            }
        });
        Err(ToolError::Failed {
            command,
            status: status.code(),
            line,
            quoted,
            stderr,
        })
    }
}

/// The last stretch of a restore input (about [`Tail::KEEP`] bytes), to quote the line the tool
/// refused without holding the whole input.
#[derive(Default)]
struct Tail {
    text: Vec<u8>,
    /// The input line `text` starts with (0-based).
    first_line: usize,
}

impl Tail {
    const KEEP: usize = 1 << 20;

    fn push(&mut self, buf: &[u8]) {
        self.text.extend_from_slice(buf);
        if self.text.len() > 2 * Self::KEEP {
            let cut = self.text.len() - Self::KEEP;
            let cut = self.text[cut..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(self.text.len(), |p| cut + p + 1);
            self.first_line += self.text[..cut].iter().filter(|b| **b == b'\n').count();
            self.text.drain(..cut);
        }
    }

    /// Input line `n` (1-based), when still held.
    fn line(&self, n: usize) -> Option<String> {
        let index = n.checked_sub(1)?.checked_sub(self.first_line)?;
        let text = String::from_utf8_lossy(&self.text);
        text.lines().nth(index).map(str::to_string)
    }
}

/// Reads a child's stderr to its end on a thread of its own.
fn drain(mut stderr: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    })
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
