//! The configuration files and the command line, end to end through the built `kproxy` binary:
//! every example under `configs/` loads, `configs/kproxy.toml` documents every key with its
//! default, each kind of bad configuration exits with code 2 and a message naming the file, the
//! key (or plugin) and what is allowed, and environment variables and flags win over the file.
//!
//! Needs `cargo build --workspace` first (for the binary and the fixture plugins) and root (the
//! plugin host only loads root-owned plugins).

use kproxy::config::{raw::RawConfig, Config};
use kproxy_tests::artifacts::{kproxy_bin, PluginDir};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_file_under_configs_loads() {
    let mut files = Vec::new();
    toml_files(&repo().join("configs"), &mut files);
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str())
        .collect();
    assert!(names.contains(&"kproxy.toml"), "{names:?}");
    assert!(names.contains(&"standalone.toml"), "{names:?}");
    let mut errors = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if let Err(e) = Config::parse(&text, file) {
            errors.push(e.to_string());
        }
    }
    assert!(
        errors.is_empty(),
        "config examples refused:\n{}",
        errors.join("\n")
    );
}

/// `configs/kproxy.toml` shows every key commented out with its default: uncommenting each
/// `# key = value` line must give exactly the built-in defaults — no key missing, none extra, no
/// default misquoted.
#[test]
fn kproxy_toml_documents_every_key_with_its_default() {
    let text = std::fs::read_to_string(repo().join("configs/kproxy.toml")).unwrap();
    let mut uncommented = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            uncommented.push_str(trimmed);
            uncommented.push('\n');
        } else if let Some(rest) = trimmed.strip_prefix("# ") {
            let is_setting = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            if is_setting {
                uncommented.push_str(rest);
                uncommented.push('\n');
            }
        }
    }
    let documented: toml::Table = uncommented
        .parse()
        .unwrap_or_else(|e| panic!("the documented defaults are not TOML: {e}\n{uncommented}"));
    let defaults: toml::Table = match toml::Value::try_from(RawConfig::default()).unwrap() {
        toml::Value::Table(t) => t,
        other => panic!("defaults are not a table: {other:?}"),
    };
    assert_eq!(
        documented, defaults,
        "configs/kproxy.toml's commented defaults differ from the built-in ones"
    );
}

/// Runs the binary with only the given environment (a stray `KPROXY_*` variable in the test
/// runner's environment must not change the outcome).
fn kproxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(kproxy_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run kproxy")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config file in a fresh folder.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kproxy.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile { _dir: dir, path }
    }
    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Asserts exit code 2 and that stderr contains every piece.
fn assert_refused(out: &Output, pieces: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for piece in pieces {
        assert!(err.contains(piece), "stderr lacks {piece:?}:\n{err}");
    }
}

#[test]
fn toml_syntax_error_exits_2_with_file_line_and_column() {
    let file = ConfigFile::new("dataplane = \"nftables\"\n[masquerade\nbit = 14\n");
    for command in ["run", "check-config"] {
        let out = kproxy(&["--config", file.arg(), command], &[]);
        assert_refused(
            &out,
            &[&format!("{}:2:", file.path.display()), "TOML syntax error"],
        );
    }
}

#[test]
fn unknown_key_exits_2_naming_key_and_allowed_keys() {
    let file = ConfigFile::new("[masquerade]\nbitt = 3\n");
    let out = kproxy(&["--config", file.arg(), "check-config"], &[]);
    assert_refused(
        &out,
        &[
            file.arg(),
            "unknown key `masquerade.bitt`",
            "(allowed keys in [masquerade]: all, bit)",
        ],
    );
}

#[test]
fn out_of_range_value_exits_2_naming_key_and_range() {
    let file = ConfigFile::new("[masquerade]\nbit = 40\n");
    let out = kproxy(&["--config", file.arg(), "run"], &[]);
    assert_refused(
        &out,
        &[&format!(
            "{}: masquerade.bit = 40 is out of range (allowed: 0–31)",
            file.arg()
        )],
    );
}

#[test]
fn missing_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let out = kproxy(&["--config", missing.to_str().unwrap(), "run"], &[]);
    assert_refused(
        &out,
        &[&format!(
            "{}: the config file does not exist",
            missing.display()
        )],
    );
}

#[test]
fn missing_plugin_exits_2_naming_it() {
    let plugins = PluginDir::with(&["recorder"]);
    let file = ConfigFile::new(&format!(
        "plugin_dir = {:?}\ndataplane = \"nosuch\"\n",
        plugins.path()
    ));
    for command in ["run", "check-config", "cleanup"] {
        let out = kproxy(&["--config", file.arg(), command], &[]);
        assert_refused(
            &out,
            &[
                file.arg(),
                "dataplane = \"nosuch\" cannot be used",
                "no plugin `nosuch`",
                "plugins there: recorder",
            ],
        );
    }
}

#[test]
fn a_plugin_section_the_plugin_rejects_exits_2() {
    let plugins = PluginDir::with(&["recorder"]);
    let file = ConfigFile::new(&format!(
        "plugin_dir = {:?}\ndataplane = \"recorder\"\n[dataplanes.recorder]\ndir = \"relative\"\n",
        plugins.path()
    ));
    let out = kproxy(&["--config", file.arg(), "check-config"], &[]);
    assert_refused(
        &out,
        &[
            "[dataplanes.recorder] is refused by plugin `recorder`",
            "must be an absolute path",
        ],
    );
}

#[test]
fn environment_and_flags_win_over_the_file() {
    let plugins = PluginDir::with(&["recorder"]);
    let records = tempfile::tempdir().unwrap();
    let records_dir = records.path().to_str().unwrap();
    // The file names a plugin that does not exist and gives the recorder no section.
    let file = ConfigFile::new(&format!(
        "plugin_dir = {:?}\ndataplane = \"nosuch\"\n[logging]\nlevel = \"warn\"\n",
        plugins.path()
    ));
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--config", file.arg()];
        args.extend_from_slice(flags);
        args.push("check-config");
        kproxy(&args, env)
    };
    let section = ("KPROXY_DATAPLANES__RECORDER__DIR", records_dir);

    // The environment overrides the file: the dataplane and the plugin's own section.
    let out = check(&[("KPROXY_DATAPLANE", "recorder"), section], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("OK: "), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("dataplane `recorder`"),
        "{}",
        stdout(&out)
    );

    // A flag overrides the environment.
    let out = check(
        &[("KPROXY_DATAPLANE", "elsewhere"), section],
        &["--dataplane", "recorder"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("dataplane `recorder`"));

    // Without the overrides, the file's value is used (and refused).
    let out = check(&[section], &[]);
    assert_refused(&out, &["no plugin `nosuch`"]);

    // An override that is itself bad is blamed on the variable or flag that set it.
    let out = check(
        &[("KPROXY_MASQUERADE__BIT", "99")],
        &["--dataplane", "recorder"],
    );
    assert_refused(
        &out,
        &["environment variable KPROXY_MASQUERADE__BIT: masquerade.bit = 99 is out of range"],
    );
    let out = check(
        &[("KPROXY_LOGGING__LEVEL", "info")],
        &["--log-level", "loud"],
    );
    assert_refused(
        &out,
        &["flag --log-level: logging.level = \"loud\" is not a level"],
    );
    let out = check(&[("KPROXY_NO_SUCH_KEY", "1")], &[]);
    assert_refused(
        &out,
        &["environment variable KPROXY_NO_SUCH_KEY: unknown key `no_such_key`"],
    );
}

#[test]
fn plugins_lists_each_plugin_or_why_it_cannot_load() {
    let plugins = PluginDir::with(&["recorder", "changed", "future"]);
    let out = kproxy(
        &[
            "--plugin-dir",
            plugins.path().to_str().unwrap(),
            "--dataplane",
            "recorder",
            "plugins",
        ],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recorder = text
        .lines()
        .find(|l| l.starts_with("recorder "))
        .unwrap_or_else(|| panic!("recorder not listed:\n{text}"));
    assert!(recorder.contains(env!("CARGO_PKG_VERSION")), "{recorder}");
    assert!(recorder.contains("interface 1."), "{recorder}");
    assert!(recorder.contains("(active)"), "{recorder}");
    assert!(text.contains("capabilities: cluster-ip"), "{text}");
    assert!(
        text.contains("libkproxy_plugin_changed.so  (cannot be loaded)")
            && text.contains("incompatible kproxy plugin interface"),
        "{text}"
    );
    assert!(
        text.contains("libkproxy_plugin_future.so  (cannot be loaded)")
            && text.contains("interface 99.0"),
        "{text}"
    );
}

#[test]
fn cleanup_runs_the_configured_plugin_or_all_loadable_ones() {
    let plugins = PluginDir::with(&["recorder", "changed"]);
    let records = tempfile::tempdir().unwrap();
    let file = ConfigFile::new(&format!(
        "plugin_dir = {:?}\ndataplane = \"recorder\"\n[dataplanes.recorder]\ndir = {:?}\n",
        plugins.path(),
        records.path()
    ));
    let out = kproxy(&["--config", file.arg(), "cleanup"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("cleaned up `recorder`"),
        "{}",
        stdout(&out)
    );

    let out = kproxy(&["--config", file.arg(), "cleanup", "--all"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("cleaned up `recorder`"), "{text}");
    assert!(
        text.contains("skipped ") && text.contains("libkproxy_plugin_changed.so"),
        "{text}"
    );
}

#[test]
fn version_and_usage() {
    let out = kproxy(&["version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains(&format!("kproxy {}", env!("CARGO_PKG_VERSION"))));
    assert!(stdout(&out).contains("plugin interface 1."));
    let out = kproxy(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2");
}

/// Every dataplane example under `configs/dataplanes/` names a plugin that exists in the build,
/// and that plugin accepts the example's section as written (so the documented keys and values
/// never drift from what the plugin takes).
#[test]
fn every_dataplane_example_is_accepted_by_its_plugin() {
    let dir = repo().join("configs").join("dataplanes");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            config.dataplane,
            "{} should be named after the dataplane it configures",
            path.display()
        );
        let plugins = PluginDir::with(&[config.dataplane.as_str()]);
        let plugin = kproxy::plugin_host::PluginHost::new(plugins.path())
            .load(&config.dataplane)
            .unwrap_or_else(|e| panic!("{e}"));
        let section = config.plugin_section_toml();
        assert!(
            !section.is_empty(),
            "{} has no [dataplanes.{}] section",
            path.display(),
            config.dataplane
        );
        plugin
            .validate_config(&section)
            .unwrap_or_else(|e| panic!("{}: the plugin refuses its section: {e}", path.display()));
        // The check can fail: a misspelt key in the same section is refused.
        assert!(plugin
            .validate_config(&format!("{section}\nno_such_key = 1\n"))
            .is_err());
        checked.push(config.dataplane);
    }
    checked.sort();
    assert_eq!(checked, ["iptables", "nftables"]);
}
