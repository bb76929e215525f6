//! Finds, checks and loads dataplane plugins.
//!
//! A plugin is a shared object `<dir>/libkproxy_plugin_<name>.so` (the file cargo builds for a
//! `cdylib` crate `kproxy-plugin-<name>`). Loading one runs its code as root, so, in order:
//!
//! 1. the file and its folder must be writable only by root ([`safety`]) — checked before the
//!    file is opened;
//! 2. abi_stable checks the layout of every type reachable from the root module, so a plugin
//!    built against a changed interface is refused before any of its code runs;
//! 3. the host's logger is installed in the plugin, so its `tracing` events reach our subscriber;
//! 4. the plugin's [`kproxy_plugin_api::InterfaceVersion`] must be one this host can load.
//!
//! Each refusal is a [`LoadError`]: one short line naming the file and the cause.
//!
//! Libraries are opened with `lib_header_from_path` + `init_root_module` rather than
//! `RootModule::load_from_file`, which caches a single module per type per process: kproxy may
//! load several plugins (`kproxy plugins`, a `SIGHUP` swap, tests).

mod error;
mod loaded;
pub mod safety;

pub use error::{summarize_abi_report, LoadError};
pub use loaded::{Dataplane, LoadedPlugin};

use kproxy_plugin_api::{
    abi_stable::library::{lib_header_from_path, LibraryError},
    logging::{host_logger, LogLevel},
    PluginModRef, INTERFACE_VERSION,
};
use std::path::{Path, PathBuf};
use tracing::level_filters::LevelFilter;

/// The file-name prefix of every plugin.
const PREFIX: &str = "libkproxy_plugin_";
/// The file-name suffix of every plugin.
const SUFFIX: &str = ".so";

/// One file found by [`PluginHost::discover`], with the result of loading it.
pub type Discovered = (PathBuf, Result<LoadedPlugin, LoadError>);

/// Loads plugins from one folder (default `/usr/lib/kproxy`).
#[derive(Debug, Clone)]
pub struct PluginHost {
    dir: PathBuf,
}

impl PluginHost {
    /// A host for the plugins in `dir`; nothing is read until a plugin is loaded.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PluginHost { dir: dir.into() }
    }

    /// The plugin folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/libkproxy_plugin_<name>.so`: cargo's file name for crate `kproxy-plugin-<name>`.
    pub fn path_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{PREFIX}{name}{SUFFIX}"))
    }

    /// Loads the plugin called `name`, refusing it with a one-line reason when it is missing,
    /// unsafe, incompatible, or calls itself something else.
    pub fn load(&self, name: &str) -> Result<LoadedPlugin, LoadError> {
        let path = self.path_for(name);
        if !path.exists() {
            let available = self
                .plugin_files()
                .map(|files| files.iter().filter_map(|p| plugin_name(p)).collect())
                .unwrap_or_default();
            return Err(LoadError::Missing {
                name: name.to_string(),
                dir: self.dir.clone(),
                path,
                available,
            });
        }
        let plugin = load_path(&path)?;
        if plugin.name() != name {
            return Err(LoadError::NameMismatch {
                path,
                expected: name.to_string(),
                reported: plugin.name().to_string(),
            });
        }
        Ok(plugin)
    }

    /// Every `*.so` in the folder, sorted by path, each with its load result, for
    /// `kproxy plugins`. Fails only when the folder itself cannot be read.
    pub fn discover(&self) -> Result<Vec<Discovered>, LoadError> {
        Ok(self
            .plugin_files()?
            .into_iter()
            .map(|path| {
                let result = load_path(&path);
                (path, result)
            })
            .collect())
    }

    /// The `*.so` files in the folder, sorted.
    fn plugin_files(&self) -> Result<Vec<PathBuf>, LoadError> {
        let folder_error = |source| LoadError::Folder {
            dir: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(folder_error)? {
            let path = entry.map_err(folder_error)?.path();
            if path.extension().is_some_and(|e| e == "so") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

/// The plugin name in a file name `libkproxy_plugin_<name>.so`, if it is one.
fn plugin_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The most verbose level our subscriber currently wants, in the ABI's terms; plugins drop
/// finer events before formatting them.
fn host_log_level() -> LogLevel {
    match LevelFilter::current().into_level() {
        Some(level) => level.into(),
        // Logging is off: the plugin still forwards errors, which our subscriber then ignores.
        None => LogLevel::Error,
    }
}

/// Checks and loads one file.
fn load_path(path: &Path) -> Result<LoadedPlugin, LoadError> {
    safety::check_plugin_path(path).map_err(|cause| LoadError::Unsafe {
        path: path.to_path_buf(),
        cause,
    })?;
    let module = open_module(path)?;
    (module.set_logger())(host_logger(host_log_level()));
    let info = (module.info())();
    if !INTERFACE_VERSION.can_load(info.interface) {
        return Err(LoadError::InterfaceVersion {
            path: path.to_path_buf(),
            name: info.name.to_string(),
            plugin: info.interface,
            host: INTERFACE_VERSION,
        });
    }
    tracing::debug!(
        path = %path.display(),
        plugin = %info.name,
        version = %info.version,
        interface = %info.interface,
        "loaded plugin"
    );
    Ok(LoadedPlugin::new(path.to_path_buf(), info, module))
}

/// Opens the shared object and checks its root module's version strings and layout.
fn open_module(path: &Path) -> Result<PluginModRef, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| library_error(path, e))?;
    header
        .init_root_module::<PluginModRef>()
        .map_err(|e| library_error(path, e))
}

/// Turns abi_stable's (multi-line, sometimes enormous) error into a one-line [`LoadError`].
fn library_error(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path,
            cause: error::one_line(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::Open {
            path,
            cause: "not a kproxy plugin (it exports no abi_stable root module)".to_string(),
        },
        LibraryError::AbiInstability(report) => LoadError::Incompatible {
            path,
            cause: summarize_abi_report(&report.to_string()),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible {
            path,
            cause: format!(
                "plugin-api package {actual_version}, this kproxy uses {expected_version}"
            ),
        },
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            LoadError::Incompatible {
                path,
                cause: "built with an incompatible abi_stable".to_string(),
            }
        }
        other => LoadError::Open {
            path,
            cause: error::summarize_abi_report(&other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_come_from_cargo_file_names() {
        assert_eq!(
            plugin_name(Path::new("/x/libkproxy_plugin_nftables.so")).as_deref(),
            Some("nftables")
        );
        assert_eq!(plugin_name(Path::new("/x/libfoo.so")), None);
        assert_eq!(plugin_name(Path::new("/x/libkproxy_plugin_.so")), None);
        let host = PluginHost::new("/usr/lib/kproxy");
        assert_eq!(
            host.path_for("ipvs"),
            Path::new("/usr/lib/kproxy/libkproxy_plugin_ipvs.so")
        );
    }

    #[test]
    fn missing_plugin_names_folder_and_lists_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libkproxy_plugin_a.so"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let err = PluginHost::new(dir.path()).load("b").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Missing { .. }), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.ends_with("(plugins there: a)"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_shared_object_is_refused_in_one_line() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root so the temp file is root-owned");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("libkproxy_plugin_junk.so");
        std::fs::write(&path, b"not an ELF file").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = PluginHost::new(dir.path()).load("junk").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Open { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("cannot load {}: ", path.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}
