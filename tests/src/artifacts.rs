//! Finds built artifacts (the `kproxy` binary, plugin `.so` files) for tests, and installs
//! plugins into a folder the plugin host will accept.
//!
//! Integration tests do not build anything themselves: run `cargo build --workspace` first, so
//! the daemon and every fixture plugin (`tests/fixtures/*`) are in the target folder.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// The workspace root (the folder above this crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` (relative to the workspace root when relative) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The folder holding the artifacts of the profile this test binary was built with.
///
/// A test binary runs from `<target>/<profile>/deps/`, so the profile folder is found from
/// [`std::env::current_exe`] (that also covers `--release` and `--target <triple>` builds);
/// anything else falls back to `<target>/debug`.
pub fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| target_dir().join("debug"))
}

fn built(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} not found at {}: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The built `kproxy` binary.
pub fn kproxy_bin() -> PathBuf {
    built(profile_dir().join("kproxy"), "the kproxy binary")
}

/// The built plugin file `libkproxy_plugin_<name>.so` (a plugin under `plugins/` or a fixture
/// under `tests/fixtures/`).
pub fn plugin_file(name: &str) -> PathBuf {
    built(
        profile_dir().join(format!("libkproxy_plugin_{name}.so")),
        &format!("plugin `{name}`"),
    )
}

/// A temporary plugin folder (mode 0755, owned by the user running the tests — root, for the
/// host to accept it) holding copies of built plugins; removed on drop.
///
/// Copies, not symlinks: the target folder is writable by whoever builds, and the host rightly
/// refuses plugins there.
#[derive(Debug)]
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// An empty plugin folder.
    ///
    /// Panics when the tests do not run as root: the host refuses plugins not owned by root, so
    /// every load from such a folder would fail with a less obvious message.
    pub fn empty() -> PluginDir {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "plugin tests must run as root: the plugin host only loads root-owned plugins"
        );
        let dir = tempfile::Builder::new()
            .prefix("kproxy-plugins-")
            .tempdir()
            .expect("creating a temporary plugin folder");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("setting the plugin folder's mode");
        PluginDir { dir }
    }

    /// A plugin folder holding copies of the named built plugins.
    pub fn with(names: &[&str]) -> PluginDir {
        let dir = PluginDir::empty();
        for name in names {
            dir.install(name);
        }
        dir
    }

    /// Copies the built plugin `name` into the folder (mode 0755) and returns its path.
    pub fn install(&self, name: &str) -> PathBuf {
        let from = plugin_file(name);
        let to = self.plugin_path(name);
        fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("setting the mode of {}: {e}", to.display()));
        to
    }

    /// Where plugin `name` is (or would be) in this folder.
    pub fn plugin_path(&self, name: &str) -> PathBuf {
        self.path().join(format!("libkproxy_plugin_{name}.so"))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
