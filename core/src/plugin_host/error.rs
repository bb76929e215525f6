//! Why a plugin could not be loaded: one short line that names the file and the cause.
//!
//! Every refusal is read by an operator in a log line or in `kproxy plugins`, so each variant
//! renders as a single line. abi_stable's layout report (tens of kilobytes) is cut down to its
//! `Error:` lines by [`summarize_abi_report`].

use kproxy_plugin_api::InterfaceVersion;
use std::{fmt, io, path::PathBuf};

/// A plugin that was refused or could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file for the named plugin in the plugin folder.
    #[error("no plugin `{name}` in {}: {} does not exist ({})", dir.display(), path.display(), Available(available))]
    Missing {
        /// The plugin's name as asked for.
        name: String,
        /// The plugin folder searched.
        dir: PathBuf,
        /// The file that was expected.
        path: PathBuf,
        /// The names of the plugins that are in the folder.
        available: Vec<String>,
    },
    /// The plugin folder cannot be read.
    #[error("cannot read plugin folder {}: {source}", dir.display())]
    Folder {
        /// The plugin folder.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file or its folder could be changed by someone other than root, so loading it would
    /// run code that anyone could have put there.
    #[error("refusing {}: {cause}; plugins must be writable only by root", path.display())]
    Unsafe {
        /// The plugin file.
        path: PathBuf,
        /// Which file or folder is unsafe and why (owner or mode).
        cause: String,
    },
    /// The file could not be opened as a shared object, or exports no kproxy root module.
    #[error("cannot load {}: {cause}", path.display())]
    Open {
        /// The plugin file.
        path: PathBuf,
        /// The dynamic loader's or abi_stable's reason, shortened to one line.
        cause: String,
    },
    /// abi_stable's layout check failed: the plugin was built against different plugin types.
    #[error("cannot load {}: built against an incompatible kproxy plugin interface ({cause})", path.display())]
    Incompatible {
        /// The plugin file.
        path: PathBuf,
        /// The first `Error:` lines of abi_stable's report.
        cause: String,
    },
    /// The plugin's interface version cannot be loaded by this host.
    #[error("cannot load {}: plugin `{name}` was built for kproxy plugin interface {plugin}, this kproxy speaks {host} (same major version and a minor version no newer than the host's are needed)", path.display())]
    InterfaceVersion {
        /// The plugin file.
        path: PathBuf,
        /// The name the plugin reports.
        name: String,
        /// The plugin's interface version.
        plugin: InterfaceVersion,
        /// The host's interface version.
        host: InterfaceVersion,
    },
    /// The file for plugin `expected` says it is another plugin.
    #[error("cannot load {}: the file is named for plugin `{expected}` but reports itself as `{reported}`", path.display())]
    NameMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The name that was asked for.
        expected: String,
        /// The name the plugin reports.
        reported: String,
    },
}

struct Available<'a>(&'a [String]);

impl fmt::Display for Available<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("the folder holds no plugins")
        } else {
            write!(f, "plugins there: {}", self.0.join(", "))
        }
    }
}

/// The longest cause taken from abi_stable's report, in characters.
const MAX_CAUSE: usize = 300;

/// Shortens abi_stable's layout report to one line: the type where the layouts part, then its
/// first one or two `Error:` lines with their expected and found values, e.g.
/// `in type Endpoint: incompatible type size (expected 96, found 104); too many fields
/// (expected 10, found 11)`.
///
/// The report prints the chain of types it compared (the last one is where they differ), then
/// each error followed by `Expected:` and `Found:` blocks; only the first line of each block is
/// kept. Without any `Error:` line, the first non-empty line is used.
pub fn summarize_abi_report(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let Some(first_error) = lines.iter().position(|l| l.starts_with("Error:")) else {
        return one_line(
            lines
                .iter()
                .find(|l| !l.is_empty())
                .copied()
                .unwrap_or("no detail given"),
        );
    };
    // The innermost type compared: the `type:` line of the last layout printed before the errors.
    let type_name = lines[..first_error]
        .iter()
        .rposition(|l| *l == "--- Type Layout ---")
        .and_then(|i| lines.get(i + 1))
        .and_then(|l| l.strip_prefix("type:"));
    let value_after = |i: usize, label: &str| -> Option<&str> {
        let at = (i..lines.len().min(i + 4)).find(|&j| lines[j] == label)?;
        lines.get(at + 1).copied().filter(|v| !v.is_empty())
    };
    let errors: Vec<String> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, l.strip_prefix("Error:")?.trim())))
        .filter(|(_, l)| !l.is_empty())
        .take(2)
        .map(|(i, what)| {
            let expected = value_after(i + 1, "Expected:");
            let found = expected.and_then(|_| {
                let after_expected = (i + 1..lines.len()).find(|&j| lines[j] == "Found:")?;
                value_after(after_expected, "Found:")
            });
            match (expected, found) {
                (Some(e), Some(f)) => format!("{what} (expected {e}, found {f})"),
                _ => what.to_string(),
            }
        })
        .collect();
    let text = match type_name {
        Some(t) => format!("in type {}: {}", t.trim(), errors.join("; ")),
        None => errors.join("; "),
    };
    one_line(&text)
}

/// Collapses whitespace (including newlines) and truncates to [`MAX_CAUSE`] characters.
pub(crate) fn one_line(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MAX_CAUSE {
        collapsed
    } else {
        let cut: String = collapsed.chars().take(MAX_CAUSE).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_report_keeps_only_error_lines() {
        // The shape of a real report, much shortened.
        let report =
            "\nCompared <this>:\n    --- Type Layout ---\n    type:PrefixRef<'a, PluginMod>\n\
                      Layout of found type:\n    --- Type Layout ---\n    type:Endpoint\n\
                      \x20   size:104 align:8\n\n\
                      Error:incompatible type size\nExpected:\n    96\nFound:\n    104\n\n\
                      Error:unexpected field\nExpected:\n    field_name:ip\n    type:IpAddr\n\
                      Found:\n    field_name:weight\n    type:u32\n\n\
                      Error:a third one\n";
        assert_eq!(
            summarize_abi_report(report),
            "in type Endpoint: incompatible type size (expected 96, found 104); \
             unexpected field (expected field_name:ip, found field_name:weight)"
        );
        assert_eq!(summarize_abi_report("Error:bare\n"), "bare");
    }

    #[test]
    fn abi_report_without_error_lines_uses_first_line() {
        assert_eq!(summarize_abi_report("\n  odd report\nmore"), "odd report");
        assert_eq!(summarize_abi_report(""), "no detail given");
    }

    #[test]
    fn causes_are_one_short_line() {
        let long = "x ".repeat(1000);
        let s = one_line(&long);
        assert!(!s.contains('\n'));
        assert!(s.chars().count() <= MAX_CAUSE + 1);
    }

    #[test]
    fn missing_lists_what_is_there() {
        let e = LoadError::Missing {
            name: "x".into(),
            dir: "/p".into(),
            path: "/p/libkproxy_plugin_x.so".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "no plugin `x` in /p: /p/libkproxy_plugin_x.so does not exist (plugins there: a, b)"
        );
    }
}
