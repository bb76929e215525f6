//! The thin layer that talks to the kernel: runs `nft` with a script on stdin (one atomic
//! transaction) and reads back the little the plugin ever needs to read.

use crate::plan::{AffinityEntry, AffinitySnapshot};
use kproxy_plugin_api::{IpFamily, PluginError};
use std::{
    io::Write,
    process::{Command, Stdio},
};

/// The longest stretch of a script line quoted in an error message.
const QUOTE_MAX: usize = 300;

/// Runs the `nft` binary.
#[derive(Debug, Clone)]
pub struct Nft {
    path: String,
}

impl Nft {
    /// Uses the binary at `path` (a bare name is looked up in `PATH`).
    pub fn new(path: &str) -> Self {
        Nft { path: path.into() }
    }

    /// Applies `script` as one transaction with `nft -f -`. On failure nothing changed (nft
    /// transactions are atomic) and the error names the command, the failing line of the script
    /// and nft's own message.
    pub fn apply(&self, script: &str) -> Result<(), PluginError> {
        let command = format!("{} -f -", self.path);
        let mut child = Command::new(&self.path)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PluginError::kernel(format!("`{command}` could not start: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // nft reads the whole script before it answers; a write error (nft died early) shows
        // up in its exit status and stderr below.
        let write_result = stdin.write_all(script.as_bytes());
        drop(stdin);
        let output = child
            .wait_with_output()
            .map_err(|e| PluginError::kernel(format!("`{command}`: waiting failed: {e}")))?;
        if output.status.success() {
            if let Err(e) = write_result {
                return Err(PluginError::kernel(format!(
                    "`{command}`: writing the script failed: {e}"
                )));
            }
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(PluginError::kernel(describe_failure(
            &command,
            script,
            &stderr,
            output.status.code(),
        )))
    }

    /// Runs `nft <args>` and returns its standard output.
    fn run(&self, args: &[&str]) -> Result<String, PluginError> {
        let output = Command::new(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                PluginError::kernel(format!(
                    "`{} {}` could not start: {e}",
                    self.path,
                    args.join(" ")
                ))
            })?;
        if !output.status.success() {
            return Err(PluginError::kernel(format!(
                "`{} {}` failed: {}",
                self.path,
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Reads the ClientIP affinity entries of kproxy's `table` in `family`.
    pub fn affinity_snapshot(
        &self,
        families: &[IpFamily],
        table: &str,
    ) -> Result<AffinitySnapshot, PluginError> {
        let mut snapshot = AffinitySnapshot::default();
        for &family in families {
            let ip = if family == IpFamily::V4 { "ip" } else { "ip6" };
            let json = self.run(&["-j", "list", "sets", ip])?;
            parse_affinity_sets(&json, family, table, &mut snapshot).map_err(|e| {
                PluginError::kernel(format!("`{} -j list sets {ip}`: {e}", self.path))
            })?;
        }
        Ok(snapshot)
    }

    /// Deletes kproxy's table in both families (no error when absent), in one transaction.
    pub fn delete_tables(&self, table: &str) -> Result<(), PluginError> {
        self.apply(&format!(
            "add table ip {table}\ndelete table ip {table}\n\
             add table ip6 {table}\ndelete table ip6 {table}\n"
        ))
    }
}

/// Builds the message for a failed `nft -f`: the command, the script line nft names
/// (`/dev/stdin:LINE:COL: Error: …`) and nft's message.
pub fn describe_failure(command: &str, script: &str, stderr: &str, code: Option<i32>) -> String {
    let line_no = stderr.lines().find_map(|l| {
        let rest = l.split_once("/dev/stdin:")?.1;
        rest.split(':').next()?.parse::<usize>().ok()
    });
    let mut message = format!(
        "`{command}` failed (exit status {})",
        code.map_or("killed".into(), |c| c.to_string())
    );
    if let Some(n) = line_no {
        if let Some(line) = script.lines().nth(n.saturating_sub(1)) {
            let line = line.trim();
            let quoted: String = line.chars().take(QUOTE_MAX).collect();
            let more = if quoted.len() < line.len() { "…" } else { "" };
            message.push_str(&format!(" at script line {n}: `{quoted}{more}`"));
        }
    }
    let first_error = stderr.lines().find(|l| l.contains("Error:")).map(|l| {
        l.rsplit_once("Error:")
            .map_or(l, |(_, m)| m)
            .trim()
            .to_string()
    });
    if let Some(e) = first_error {
        message.push_str(&format!(": {e}"));
    }
    message.push_str(&format!("; nft said: {}", stderr.trim()));
    message
}

fn parse_affinity_sets(
    json: &str,
    family: IpFamily,
    table: &str,
    snapshot: &mut AffinitySnapshot,
) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable JSON: {e}"))?;
    let items = value
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or("no `nftables` array")?;
    for item in items {
        let Some(set) = item.get("set") else { continue };
        let name = set.get("name").and_then(|v| v.as_str()).unwrap_or("");
        if set.get("table").and_then(|v| v.as_str()) != Some(table)
            || !name.starts_with("affinity-")
        {
            continue;
        }
        let timeout = set.get("timeout").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let mut entries = Vec::new();
        for elem in set
            .get("elem")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let (client, expires) = match elem.get("elem") {
                Some(e) => (
                    e.get("val").and_then(|v| v.as_str()),
                    e.get("expires").and_then(|v| v.as_u64()).unwrap_or(0),
                ),
                None => (elem.as_str(), 0),
            };
            if let Some(client) = client.and_then(|c| c.parse::<std::net::IpAddr>().ok()) {
                entries.push(AffinityEntry {
                    client: client.into(),
                    expires,
                });
            }
        }
        snapshot
            .sets
            .insert((family, name.to_string()), (timeout, entries));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_line_and_the_message() {
        let script = "add table ip kproxy\nadd chain ip kproxy aaaa\nadd rule ip kproxy x y\n";
        let stderr = "/dev/stdin:2:21-24: Error: name too long, 256 characters maximum allowed\n\
                      add chain ip kproxy aaaa\n                    ^^^^\n";
        let m = describe_failure("nft -f -", script, stderr, Some(1));
        assert!(m.starts_with("`nft -f -` failed (exit status 1)"), "{m}");
        assert!(m.contains("line 2: `add chain ip kproxy aaaa`"), "{m}");
        assert!(
            m.contains(": name too long, 256 characters maximum allowed;"),
            "{m}"
        );
    }

    #[test]
    fn affinity_sets_of_our_table_are_read() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "ip", "name": "affinity-X", "table": "kproxy", "type": "ipv4_addr",
                     "timeout": 10800, "elem": [{"elem": {"val": "1.2.3.4", "expires": 98}}]}},
            {"set": {"family": "ip", "name": "affinity-Y", "table": "other", "timeout": 5,
                     "elem": [{"elem": {"val": "1.2.3.5", "expires": 3}}]}},
            {"set": {"family": "ip", "name": "cluster-ips", "table": "kproxy", "elem": ["10.0.0.1"]}}
        ]}"#;
        let mut snap = AffinitySnapshot::default();
        parse_affinity_sets(json, IpFamily::V4, "kproxy", &mut snap).unwrap();
        assert_eq!(snap.sets.len(), 1);
        let (timeout, entries) = &snap.sets[&(IpFamily::V4, "affinity-X".to_string())];
        assert_eq!(*timeout, 10800);
        assert_eq!(
            entries,
            &vec![AffinityEntry {
                client: "1.2.3.4".parse::<std::net::IpAddr>().unwrap().into(),
                expires: 98
            }]
        );
    }
}
