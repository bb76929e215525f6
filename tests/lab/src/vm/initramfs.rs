//! Builds the guest's initramfs: a `newc` cpio archive (the format the kernel unpacks into its
//! root file system) written by a small writer here, so files can be placed at any path
//! without staging a folder tree, owned by root whoever builds it.
//!
//! Host programs are copied together with the shared libraries `ldd` lists and the dynamic
//! loader, at the same paths, so they run unchanged in the guest.

use super::VmError;
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// What one path of the archive holds.
#[derive(Debug, Clone)]
enum Entry {
    Dir,
    /// A copy of a host file, with the given mode bits.
    File {
        from: PathBuf,
        mode: u32,
    },
    /// Generated contents.
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

/// The archive's contents, keyed by absolute guest path (sorted, so every folder comes before
/// what it holds, as the kernel's unpacker needs).
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    /// Whether the archive holds `path`.
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    fn insert(&mut self, path: &Path, entry: Entry) -> Result<(), VmError> {
        if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
            return Err(VmError::BadPath(path.to_path_buf()));
        }
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|d| *d != Path::new("/")) {
            self.entries.entry(dir.to_path_buf()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.to_path_buf(), entry);
        Ok(())
    }

    /// A folder.
    pub fn dir(&mut self, path: &str) -> Result<(), VmError> {
        self.insert(Path::new(path), Entry::Dir)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &Path, target: &str) -> Result<(), VmError> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.into(),
            },
        )
    }

    /// A file with the given contents and mode.
    pub fn bytes(&mut self, path: &Path, data: Vec<u8>, mode: u32) -> Result<(), VmError> {
        self.insert(path, Entry::Bytes { data, mode })
    }

    /// A copy of the host file `from` (symlinks followed) at `to`, keeping its mode bits.
    pub fn file(&mut self, from: &Path, to: &Path) -> Result<(), VmError> {
        let meta = fs::metadata(from).map_err(|e| VmError::io(from, e))?;
        if !meta.is_file() {
            return Err(VmError::io(
                from,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let mode = meta.permissions().mode() & 0o7777;
        self.insert(
            to,
            Entry::File {
                from: from.to_path_buf(),
                mode,
            },
        )
    }

    /// The host program or library `from` at `to`, plus every shared library `ldd` lists for
    /// it (and the dynamic loader) at their host paths. `content` is the file to copy (e.g. a
    /// copy without debug information); `from` is what `ldd` inspects.
    pub fn program(&mut self, from: &Path, content: &Path, to: &Path) -> Result<(), VmError> {
        self.file(content, to)?;
        for lib in shared_libraries(from)? {
            if !self.contains(&lib) {
                self.file(&lib, &lib)?;
            }
        }
        Ok(())
    }

    /// The host files `libs` (shared libraries a program `dlopen`s, say) at their host paths,
    /// copied as they are, plus every shared library they need, found with one `ldd` run for
    /// them all (one per file costs seconds for a folder of a hundred).
    pub fn libraries(&mut self, libs: &[PathBuf]) -> Result<(), VmError> {
        for lib in libs {
            self.file(lib, lib)?;
        }
        for lib in shared_libraries_of(libs)? {
            if !self.contains(&lib) {
                self.file(&lib, &lib)?;
            }
        }
        Ok(())
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<(), VmError> {
        let file = File::create(out).map_err(|e| VmError::io(out, e))?;
        let mut w = BufWriter::new(file);
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let name = path
                .strip_prefix("/")
                .expect("paths are absolute")
                .to_string_lossy();
            match entry {
                Entry::Dir => header(&mut w, ino, 0o040755, 2, 0, &name)?,
                Entry::Symlink { target } => {
                    header(&mut w, ino, 0o120777, 1, target.len(), &name)?;
                    data(&mut w, target.as_bytes())?;
                }
                Entry::Bytes { data: bytes, mode } => {
                    header(&mut w, ino, 0o100000 | mode, 1, bytes.len(), &name)?;
                    data(&mut w, bytes)?;
                }
                Entry::File { from, mode } => {
                    let mut src = File::open(from).map_err(|e| VmError::io(from, e))?;
                    let len = src.metadata().map_err(|e| VmError::io(from, e))?.len();
                    let len = usize::try_from(len).expect("a file fits in memory's address space");
                    header(&mut w, ino, 0o100000 | mode, 1, len, &name)?;
                    let copied = io::copy(&mut src, &mut w).map_err(|e| VmError::io(from, e))?;
                    if copied != len as u64 {
                        return Err(VmError::io(
                            from,
                            io::Error::other("the file changed size while being archived"),
                        ));
                    }
                    pad(&mut w, len)?;
                }
            }
        }
        header(&mut w, 0, 0, 1, 0, "TRAILER!!!")?;
        w.flush().map_err(|e| VmError::io(out, e))
    }
}

/// One `newc` header and the name (NUL-terminated, padded to four bytes).
fn header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    name: &str,
) -> Result<(), VmError> {
    let size = u32::try_from(size).map_err(|_| {
        VmError::io(
            Path::new(name),
            io::Error::other("larger than the cpio format's 4 GiB"),
        )
    })?;
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check.
    let text = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}{name}\0",
        0, 0, 0, 0, 0, 0, 0, 0
    );
    let len = text.len();
    w.write_all(text.as_bytes())
        .and_then(|()| w.write_all(&[0; 3][..(4 - len % 4) % 4]))
        .map_err(|e| VmError::io(Path::new("initramfs"), e))
}

/// Data padded to four bytes.
fn data(w: &mut impl Write, bytes: &[u8]) -> Result<(), VmError> {
    w.write_all(bytes)
        .map_err(|e| VmError::io(Path::new("initramfs"), e))?;
    pad(w, bytes.len())
}

fn pad(w: &mut impl Write, len: usize) -> Result<(), VmError> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])
        .map_err(|e| VmError::io(Path::new("initramfs"), e))
}

/// The shared libraries and loader `ldd` lists for a program or library (none for a static
/// one). A library `ldd` cannot find is an error: the program would not start in the guest.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, VmError> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| VmError::Tool(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" (a static binary) is the one failure that is fine.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(VmError::Tool(format!(
            "ldd {}: {}",
            program.display(),
            err.trim()
        )));
    }
    parse_ldd(&program.display().to_string(), &text)
}

/// [`shared_libraries`] of several files with one `ldd` run, without repeats. Files that are
/// not dynamic need nothing; a library `ldd` cannot find is an error.
pub fn shared_libraries_of(files: &[PathBuf]) -> Result<BTreeSet<PathBuf>, VmError> {
    if files.is_empty() {
        return Ok(BTreeSet::new());
    }
    let out = Command::new("ldd")
        .args(files)
        .output()
        .map_err(|e| VmError::Tool(format!("cannot run ldd: {e}")))?;
    // With several files `ldd` exits non-zero when one is not dynamic, and says so in its
    // output; a missing library is still caught below.
    let what = format!("{} and {} more", files[0].display(), files.len() - 1);
    Ok(parse_ldd(&what, &String::from_utf8_lossy(&out.stdout))?
        .into_iter()
        .collect())
}

/// The library paths in `ldd` output about `what`. With several files, `ldd` heads each
/// file's list with its path and a colon; those lines are not libraries.
fn parse_ldd(what: &str, text: &str) -> Result<Vec<PathBuf>, VmError> {
    let mut libs = Vec::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) && line.ends_with(':') {
            continue;
        }
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        if let Some((name, rest)) = line.split_once("=>") {
            let path = rest.split_whitespace().next().unwrap_or("");
            if path == "not" || !path.starts_with('/') {
                return Err(VmError::Tool(format!(
                    "ldd {what}: {} not found",
                    name.trim()
                )));
            }
            libs.push(PathBuf::from(path));
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_parents_first_and_aligns_every_header() {
        let mut fs = Initramfs::new();
        fs.bytes(Path::new("/a/b/c"), b"hello".to_vec(), 0o644)
            .unwrap();
        fs.symlink(Path::new("/bin/sh"), "busybox").unwrap();
        let dir = std::env::temp_dir().join(format!("kproxy-cpio-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("x.cpio");
        fs.write(&out).unwrap();
        let bytes = fs::read(&out).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        // Walk the archive the way the kernel does.
        let mut names = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "header at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + namesize - 1]).unwrap();
            names.push(name.to_string());
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            if name == "a/b/c" {
                assert_eq!(&bytes[data_at..data_at + size], b"hello");
            }
            at = (data_at + size).next_multiple_of(4);
        }
        assert_eq!(names, ["a", "a/b", "a/b/c", "bin", "bin/sh", "TRAILER!!!"]);
    }

    #[test]
    fn ldd_finds_the_loader_and_libc_of_a_dynamic_program() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }

    #[test]
    fn ldd_of_several_files_skips_their_headings_and_repeats() {
        let files = [PathBuf::from("/bin/sh"), PathBuf::from("/bin/busybox")];
        let libs = shared_libraries_of(&files).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(!libs.iter().any(|l| files.contains(l)), "{libs:?}");
        let text = "/a/libx.so:\n\tlinux-vdso.so.1 (0x1)\n\tlibc.so.6 => /lib/libc.so.6 (0x2)\n\t/lib64/ld.so (0x3)\n/a/liby.so:\n\tnot a dynamic executable\n";
        assert_eq!(
            parse_ldd("x", text).unwrap(),
            [
                PathBuf::from("/lib/libc.so.6"),
                PathBuf::from("/lib64/ld.so")
            ]
        );
        assert!(parse_ldd("x", "\tlibgone.so.1 => not found\n").is_err());
    }

    #[test]
    fn paths_must_be_absolute_and_plain() {
        let mut fs = Initramfs::new();
        assert!(fs.dir("relative").is_err());
        assert!(fs.dir("/a/../b").is_err());
    }
}
