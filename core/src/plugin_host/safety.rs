//! Refuses plugin files and folders that anyone but root could have changed.
//!
//! Loading a shared object runs its code as root, so a plugin that an unprivileged user could
//! replace is a privilege escalation. The file (after following symlinks) and the folder it is
//! in must be owned by uid 0 and carry no group or other write bit. Ancestors of the folder are
//! not checked: that is the operator's business, and tests use folders under `/tmp`.

use std::{
    fs::Metadata,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

/// Why a file or folder is unsafe to load code from, or `None` when only root can write it.
pub fn unsafe_because(meta: &Metadata) -> Option<String> {
    let mode = meta.permissions().mode() & 0o7777;
    let writable = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group- and world-writable"),
        (true, false) => Some("group-writable"),
        (false, true) => Some("world-writable"),
        (false, false) => None,
    };
    match (meta.uid(), writable) {
        (0, None) => None,
        (0, Some(w)) => Some(format!("{w} (mode {mode:04o})")),
        (uid, None) => Some(format!("owned by uid {uid}, not root")),
        (uid, Some(w)) => Some(format!(
            "owned by uid {uid}, not root, and {w} (mode {mode:04o})"
        )),
    }
}

/// Checks the plugin file and its folder; `Err` holds the cause, naming the folder when it is
/// the folder that is unsafe.
pub fn check_plugin_path(path: &Path) -> Result<(), String> {
    let file_meta = std::fs::metadata(path).map_err(|e| format!("cannot inspect the file: {e}"))?;
    if !file_meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if let Some(cause) = unsafe_because(&file_meta) {
        return Err(cause);
    }
    // The folder that holds the name we were given, and (for a symlink) the folder that holds
    // the real file: whoever can write either can swap the code.
    let mut folders = vec![parent_of(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let real_parent = parent_of(&real);
        if !folders.contains(&real_parent) {
            folders.push(real_parent);
        }
    }
    for folder in folders {
        let meta = std::fs::metadata(&folder)
            .map_err(|e| format!("cannot inspect its folder {}: {e}", folder.display()))?;
        if let Some(cause) = unsafe_because(&meta) {
            return Err(format!("its folder {} is {cause}", folder.display()));
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::PermissionsExt};

    fn am_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn set_mode(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn modes_and_owners_are_judged() {
        if !am_root() {
            eprintln!("skipping: needs root to own files as uid 0");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let file = dir.path().join("libkproxy_plugin_x.so");
        fs::write(&file, b"").unwrap();

        set_mode(&file, 0o755);
        assert_eq!(check_plugin_path(&file), Ok(()));

        set_mode(&file, 0o664);
        assert_eq!(
            check_plugin_path(&file),
            Err("group-writable (mode 0664)".into())
        );
        set_mode(&file, 0o646);
        assert_eq!(
            check_plugin_path(&file),
            Err("world-writable (mode 0646)".into())
        );
        set_mode(&file, 0o755);

        set_mode(dir.path(), 0o777);
        let cause = check_plugin_path(&file).unwrap_err();
        assert_eq!(
            cause,
            format!(
                "its folder {} is group- and world-writable (mode 0777)",
                dir.path().display()
            )
        );
        set_mode(dir.path(), 0o755);

        std::os::unix::fs::chown(&file, Some(1000), None).unwrap();
        assert_eq!(
            check_plugin_path(&file),
            Err("owned by uid 1000, not root".into())
        );
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_points() {
        if !am_root() {
            eprintln!("skipping: needs root to own files as uid 0");
            return;
        }
        let safe = tempfile::tempdir().unwrap();
        let open = tempfile::tempdir().unwrap();
        set_mode(safe.path(), 0o755);
        set_mode(open.path(), 0o777);
        let real = open.path().join("real.so");
        fs::write(&real, b"").unwrap();
        set_mode(&real, 0o755);
        let link = safe.path().join("libkproxy_plugin_x.so");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cause = check_plugin_path(&link).unwrap_err();
        assert!(
            cause.contains(&open.path().display().to_string()),
            "{cause}"
        );
    }

    #[test]
    fn folders_and_missing_files_are_not_plugins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_plugin_path(dir.path()),
            Err("not a regular file".into())
        );
        assert!(check_plugin_path(&dir.path().join("nope.so"))
            .unwrap_err()
            .starts_with("cannot inspect the file"));
    }
}
