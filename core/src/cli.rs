//! The command line: `kproxy run | plugins | cleanup | check-config | demo | version`.
//!
//! Every command that needs the configuration loads and validates it first, so a bad file, value
//! or plugin stops the process before anything else happens. Exit codes:
//!
//! - `0`: success;
//! - `1`: a runtime failure (the daemon stopped with an error, a cleanup failed);
//! - `2` ([`EXIT_CONFIG`]): the configuration cannot be used — a missing or unreadable file, a
//!   TOML syntax error, an unknown key, a bad value, a missing or refused plugin, or a plugin
//!   section the plugin rejects — and for command-line usage errors. Restarting cannot fix these,
//!   which is why the systemd unit does not restart on 2.

use crate::{
    config::{self, Config, ConfigError, LoadOptions, Overrides},
    daemon, demo, logging,
    plugin_host::{LoadError, LoadedPlugin, PluginHost},
    source::SourceError,
};
use clap::{Parser, Subcommand};
use kproxy_plugin_api::{HostContext, NodeFacts, INTERFACE_VERSION};
use std::{ffi::OsString, path::PathBuf};

/// Success.
pub const EXIT_OK: i32 = 0;
/// A runtime failure.
pub const EXIT_FAILURE: i32 = 1;
/// The configuration (file, value, plugin) cannot be used, or the command line is wrong.
pub const EXIT_CONFIG: i32 = 2;

/// kproxy: a Kubernetes service proxy with dataplanes loaded as plugins.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about, long_about = None)]
struct Cli {
    /// The config file [default: /etc/kproxy/kproxy.toml].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The dataplane plugin to use (overrides `dataplane`).
    #[arg(long, global = true, value_name = "NAME")]
    dataplane: Option<String>,
    /// The plugin folder (overrides `plugin_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// This node's name (overrides `hostname_override`).
    #[arg(long, global = true, value_name = "NAME")]
    hostname_override: Option<String>,
    /// Log level or EnvFilter directives (overrides `logging.level`).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// `text` or `json` (overrides `logging.format`).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Read services from this folder of YAML manifests (sets `source.manifest_dir` and
    /// `source.kind = "manifests"`).
    #[arg(long, global = true, value_name = "DIR")]
    manifest_dir: Option<PathBuf>,
    /// Use this kubeconfig (sets `source.kubeconfig` and `source.kind = "kubernetes"`).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service proxy.
    Run,
    /// List the plugins in the plugin folder: name, version, interface, capabilities, or why
    /// one cannot be loaded.
    Plugins,
    /// Remove every kernel object the configured dataplane made (and nothing else).
    Cleanup {
        /// Clean up with every loadable plugin in the folder, not only the configured one.
        #[arg(long)]
        all: bool,
    },
    /// Check the config file and the active plugin's section, then exit.
    CheckConfig,
    /// Show kproxy balancing real traffic to a ClusterIP and a NodePort in a sandbox of network
    /// namespaces (needs root), then remove the sandbox. Plugins come from `--plugin-dir`, else
    /// this binary's folder when it holds the nftables plugin, else /usr/lib/kproxy.
    Demo {
        /// Requests sent to each address in each round.
        #[arg(long, default_value_t = demo::DEFAULT_REQUESTS as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        requests: u32,
    },
    /// Print kproxy's version and plugin interface version.
    Version,
}

/// Runs the command line with this process's arguments and environment and returns the exit
/// code.
pub fn main() -> i32 {
    main_with(std::env::args_os(), std::env::vars().collect())
}

/// Runs the command line with the given arguments (the first is the program name) and
/// environment, and returns the exit code.
pub fn main_with(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: Vec<(String, String)>,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let needs_file =
        cli.config.is_some() || matches!(cli.command, Command::Run | Command::CheckConfig);
    let options = LoadOptions {
        file: cli
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_FILE)),
        file_required: needs_file,
        env,
        overrides: Overrides {
            dataplane: cli.dataplane.clone(),
            plugin_dir: cli.plugin_dir.clone(),
            hostname_override: cli.hostname_override.clone(),
            log_level: cli.log_level.clone(),
            log_format: cli.log_format.clone(),
            manifest_dir: cli.manifest_dir.clone(),
            kubeconfig: cli.kubeconfig.clone(),
        },
    };
    match cli.command {
        Command::Version => {
            println!("kproxy {}", env!("CARGO_PKG_VERSION"));
            println!("plugin interface {INTERFACE_VERSION}");
            EXIT_OK
        }
        Command::Run => with_config(&options, run),
        Command::CheckConfig => with_config(&options, check_config),
        Command::Plugins => with_config(&options, plugins),
        Command::Cleanup { all } => with_config(&options, |c| cleanup(c, all)),
        // The demo writes its own config; it reads no file and only takes `--plugin-dir`.
        Command::Demo { requests } => demo::run(&demo::DemoOptions {
            requests: requests as usize,
            plugin_dir: options.overrides.plugin_dir.clone(),
        }),
    }
}

/// Loads the configuration and installs logging, then runs `command`; a config error exits 2.
fn with_config(options: &LoadOptions, command: impl FnOnce(Config) -> i32) -> i32 {
    let config = match Config::load(options) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    // A second install (only possible when main_with runs twice in one process, as in tests)
    // keeps the first subscriber; that is harmless.
    if let Err(logging::LoggingError::BadLevel { level, reason }) =
        logging::init(config.logging.format, &config.logging.level)
    {
        eprintln!("kproxy: logging level {level:?} is not valid: {reason}");
        return EXIT_CONFIG;
    }
    command(config)
}

fn config_error(e: &ConfigError) -> i32 {
    eprintln!("kproxy: {e}");
    EXIT_CONFIG
}

/// Loads the configured plugin and has it check its section; the message names the plugin and
/// the file, and the exit code is 2.
fn load_checked(config: &Config) -> Result<LoadedPlugin, i32> {
    let host = PluginHost::new(&config.plugin_dir);
    let plugin = host.load(&config.dataplane).map_err(|e| {
        eprintln!(
            "kproxy: {}: dataplane = {:?} cannot be used: {e}",
            config.file.display(),
            config.dataplane
        );
        EXIT_CONFIG
    })?;
    plugin
        .validate_config(&config.plugin_section_toml())
        .map_err(|e| {
            eprintln!(
                "kproxy: {}: [dataplanes.{}] is refused by plugin `{}` ({}): {e}",
                config.file.display(),
                config.dataplane,
                plugin.name(),
                plugin.path.display()
            );
            EXIT_CONFIG
        })?;
    Ok(plugin)
}

fn run(config: Config) -> i32 {
    let plugin = match load_checked(&config) {
        Ok(plugin) => plugin,
        Err(code) => return code,
    };
    match daemon::run(config, plugin) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("kproxy: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<LoadError>().is_some()
                || e.downcast_ref::<SourceError>().is_some()
            {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            }
        }
    }
}

fn check_config(config: Config) -> i32 {
    match load_checked(&config) {
        Ok(plugin) => {
            println!(
                "OK: {} (dataplane `{}` {} from {})",
                config.file.display(),
                plugin.name(),
                plugin.info.version,
                plugin.path.display()
            );
            EXIT_OK
        }
        Err(code) => code,
    }
}

fn plugins(config: Config) -> i32 {
    let host = PluginHost::new(&config.plugin_dir);
    let found = match host.discover() {
        Ok(found) => found,
        Err(e) => {
            eprintln!("kproxy: {e}");
            return EXIT_CONFIG;
        }
    };
    if found.is_empty() {
        println!("no plugins in {}", config.plugin_dir.display());
        return EXIT_OK;
    }
    for (path, result) in found {
        match result {
            Ok(p) => {
                let active = if p.name() == config.dataplane {
                    "  (active)"
                } else {
                    ""
                };
                println!(
                    "{}  {}  interface {}  {}{active}",
                    p.name(),
                    p.info.version,
                    p.info.interface,
                    path.display()
                );
                println!(
                    "    capabilities: {}",
                    p.info.capabilities.names().join(", ")
                );
                if !p.info.description.is_empty() {
                    println!("    {}", p.info.description);
                }
            }
            Err(e) => println!("{}  (cannot be loaded)\n    {e}", path.display()),
        }
    }
    EXIT_OK
}

/// The context a dataplane is built with for cleanup: settings and this node's name; no state.
fn cleanup_context(config: &Config, plugin: &str) -> HostContext {
    HostContext {
        plugin_config: config.section_toml(plugin).into(),
        settings: config.proxy_settings(),
        node: NodeFacts {
            name: config.node_name().into(),
            ..NodeFacts::default()
        },
    }
}

/// Builds `plugin`'s dataplane and has it remove what it made.
fn cleanup_one(config: &Config, plugin: &LoadedPlugin) -> Result<(), String> {
    let mut dataplane = plugin
        .build(&cleanup_context(config, plugin.name()))
        .map_err(|e| format!("cannot build dataplane `{}`: {e}", plugin.name()))?;
    dataplane
        .cleanup()
        .map_err(|e| format!("cleanup by `{}` failed: {e}", plugin.name()))
}

fn cleanup(config: Config, all: bool) -> i32 {
    let host = PluginHost::new(&config.plugin_dir);
    let plugins: Vec<LoadedPlugin> = if all {
        match host.discover() {
            Ok(found) => found
                .into_iter()
                .filter_map(|(path, result)| match result {
                    Ok(p) => Some(p),
                    Err(e) => {
                        println!("skipped {}: {e}", path.display());
                        None
                    }
                })
                .collect(),
            Err(e) => {
                eprintln!("kproxy: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        match host.load(&config.dataplane) {
            Ok(p) => vec![p],
            Err(e) => {
                eprintln!(
                    "kproxy: {}: dataplane = {:?} cannot be used: {e}",
                    config.file.display(),
                    config.dataplane
                );
                return EXIT_CONFIG;
            }
        }
    };
    let mut code = EXIT_OK;
    for plugin in &plugins {
        match cleanup_one(&config, plugin) {
            Ok(()) => println!("cleaned up `{}` ({})", plugin.name(), plugin.path.display()),
            Err(e) => {
                eprintln!("kproxy: {e}");
                code = EXIT_FAILURE;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_cli(args: &[&str]) -> i32 {
        let mut all = vec!["kproxy"];
        all.extend_from_slice(args);
        main_with(all, Vec::new())
    }

    #[test]
    fn usage_errors_exit_2_and_version_exits_0() {
        assert_eq!(run_cli(&["no-such-command"]), EXIT_CONFIG);
        assert_eq!(run_cli(&["run", "--no-such-flag"]), EXIT_CONFIG);
        assert_eq!(run_cli(&["version"]), EXIT_OK);
    }

    #[test]
    fn config_errors_exit_2_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kproxy.toml");
        std::fs::write(&file, "[masquerade]\nbit = 40\n").unwrap();
        let path = file.to_str().unwrap();
        assert_eq!(run_cli(&["--config", path, "check-config"]), EXIT_CONFIG);
        assert_eq!(run_cli(&["run", "--config", path]), EXIT_CONFIG);
        let missing = dir.path().join("nope.toml");
        assert_eq!(
            run_cli(&["plugins", "--config", missing.to_str().unwrap()]),
            EXIT_CONFIG,
            "an explicitly named file must exist"
        );
    }

    #[test]
    fn flags_are_accepted_before_and_after_the_command() {
        let cli = Cli::try_parse_from([
            "kproxy",
            "--dataplane",
            "iptables",
            "check-config",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(cli.dataplane.as_deref(), Some("iptables"));
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        assert!(matches!(cli.command, Command::CheckConfig));
        let cli = Cli::try_parse_from(["kproxy", "cleanup", "--all"]).unwrap();
        assert!(matches!(cli.command, Command::Cleanup { all: true }));
    }
}
