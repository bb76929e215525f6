//! A qemu guest for the parts of the suite this machine's kernel cannot run: SCTP sockets and
//! IPVS exist only as modules of Debian's packaged kernel, so those cases boot that kernel under
//! software emulation (`-accel tcg -cpu max`; the host's `/dev/kvm` cannot boot it) with a small
//! busybox initramfs, run one command inside, and read its exit code from the serial console.
//!
//! - [`Kernel`] is the kernel package, fetched by `scripts/guest-kernel` into `target/vm/` and
//!   never installed on the host.
//! - [`Guest`] collects what the guest holds — busybox, the host's `ip`, `nft` and `conntrack`
//!   with their shared libraries, the netfilter/SCTP/veth modules, and whatever programs the
//!   caller adds ([`Guest::add_program`], [`Guest::add_iptables`] for both iptables back
//!   ends) — and [`Guest::run`] boots it with a generated `/init` that mounts the usual
//!   file systems, loads the asked-for modules, brings up `lo`, runs the command and powers off.
//! - [`Guest::run_test`] runs one test of a test binary inside (typically an `#[ignore]`d test
//!   of the calling binary itself, found with [`std::env::current_exe`]), so a host-side test
//!   can prove something with real packets through the guest's kernel.
//!
//! Programs keep their host paths in the guest, so a test binary finds the `kproxy` binary and
//! plugins next to it exactly as on the host. Programs are copied without debug information
//! (`strip --strip-debug`) to keep the archive small. Everything a guest writes on the host is
//! in one temporary folder, removed on drop.
//!
//! ```no_run
//! use kproxy_lab::vm::Guest;
//! let Some(mut guest) = Guest::prepare_or_skip() else { return };
//! guest.load_module("sctp");
//! let run = guest.run(&["nft", "list", "ruleset"]).unwrap();
//! assert!(run.success(), "{run}");
//! ```

mod initramfs;
mod kernel;

pub use initramfs::{shared_libraries, shared_libraries_of, Initramfs};
pub use kernel::{Kernel, DEFAULT_MODULE_DIRS, KERNEL_DIR_ENV};

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The emulator.
const QEMU: &str = "qemu-system-x86_64";
/// The host programs every guest carries (the lab needs `ip`; the nftables plugin `nft`).
const TOOLS: &[&str] = &["ip", "nft", "conntrack"];
/// Small host files some tools read by name.
const ETC_FILES: &[&str] = &["/etc/protocols", "/etc/services", "/etc/ethertypes"];
/// Where programs are looked up, on the host and in the guest.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What went wrong preparing or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// qemu is not installed (`scripts/install-deps` installs it).
    #[error("{QEMU} cannot run: {0} (scripts/install-deps installs qemu-system-x86)")]
    NoQemu(String),
    /// The kernel could not be fetched or is incomplete.
    #[error("no guest kernel: {0}")]
    NoKernel(String),
    /// A host tool the guest needs is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A guest path that is not absolute or contains `..`.
    #[error("guest paths must be absolute without `..`: {0}")]
    BadPath(PathBuf),
    /// The guest did not power off in time (it was killed).
    #[error("the guest did not finish within {timeout:?}; its console:\n{console}")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The serial console so far.
        console: String,
    },
    /// qemu exited without the command's exit line on the console (a kernel panic, a missing
    /// init, or qemu's own error).
    #[error("the guest stopped without reporting an exit code (qemu: {status}); {qemu_stderr}\nits console:\n{console}")]
    NoExitLine {
        /// qemu's exit status.
        status: String,
        /// What qemu itself printed.
        qemu_stderr: String,
        /// The serial console.
        console: String,
    },
}

impl VmError {
    fn io(path: &Path, source: io::Error) -> VmError {
        VmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether qemu can be started; `Err` says why not.
pub fn qemu_available() -> Result<(), VmError> {
    match Command::new(QEMU).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(VmError::NoQemu(format!(
            "`{QEMU} --version` exited {}",
            o.status
        ))),
        Err(e) => Err(VmError::NoQemu(e.to_string())),
    }
}

/// A temporary folder removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir, VmError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kproxy-vm-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(|e| VmError::io(&path, e))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A guest being put together, then booted by [`Guest::run`]; see the module docs.
#[derive(Debug)]
pub struct Guest {
    kernel: Kernel,
    fs: Initramfs,
    modules: Vec<String>,
    env: Vec<(String, String)>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    stripped: u32,
    work: WorkDir,
}

impl Guest {
    /// A guest with busybox, `ip`, `nft`, `conntrack` and the [`DEFAULT_MODULE_DIRS`] modules,
    /// booting [`Kernel::fetch`]'s kernel. Fails when qemu, the kernel or a host tool is missing.
    pub fn prepare() -> Result<Guest, VmError> {
        qemu_available()?;
        Guest::with_kernel(Kernel::fetch()?)
    }

    /// [`Guest::prepare`], or — when qemu, the kernel or a tool cannot be had — prints
    /// `skipped: …` and returns `None`, except under `CI=true`, where it panics so a CI run can
    /// never pass by skipping.
    pub fn prepare_or_skip() -> Option<Guest> {
        match Guest::prepare() {
            Ok(guest) => Some(guest),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and the qemu guest cannot run: {e}");
                }
                println!("skipped: the qemu guest cannot run ({e})");
                None
            }
        }
    }

    /// A guest booting `kernel` (see [`Guest::prepare`]).
    pub fn with_kernel(kernel: Kernel) -> Result<Guest, VmError> {
        let mut guest = Guest {
            fs: Initramfs::new(),
            modules: Vec::new(),
            env: vec![
                ("PATH".into(), PATH.into()),
                ("HOME".into(), "/root".into()),
                ("TMPDIR".into(), "/tmp".into()),
                ("RUST_BACKTRACE".into(), "1".into()),
            ],
            memory_mib: 1024,
            cpus: 2,
            timeout: Duration::from_secs(600),
            stripped: 0,
            work: WorkDir::new()?,
            kernel,
        };
        guest.base()?;
        Ok(guest)
    }

    /// Busybox with its applets, the tools, modules, and the folders `/init` mounts onto.
    fn base(&mut self) -> Result<(), VmError> {
        for dir in [
            "/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/sbin", "/usr/bin",
        ] {
            self.fs.dir(dir)?;
        }
        let busybox = find_program("busybox")?;
        self.fs
            .program(&busybox, &busybox, Path::new("/bin/busybox"))?;
        // The host's `sh` (dash) as /bin/sh: busybox's own shell prefers its applets to PATH,
        // so `sh -c 'ip …'` would run busybox's `ip` instead of the host's.
        let sh = find_program("sh")?;
        self.fs.program(&sh, &sh, Path::new("/bin/sh"))?;
        for tool in TOOLS {
            let path = find_program(tool)?;
            self.fs.program(&path, &path, &path)?;
        }
        // Busybox's applets, where the tools above do not already sit; the host tools come
        // first in PATH.
        let list = Command::new(&busybox)
            .arg("--list")
            .output()
            .map_err(|e| VmError::Tool(format!("{} --list: {e}", busybox.display())))?;
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let link = Path::new("/bin").join(applet);
            if applet != "busybox" && !self.fs.contains(&link) {
                self.fs.symlink(&link, "busybox")?;
            }
        }
        for file in ETC_FILES.iter().map(Path::new).filter(|p| p.is_file()) {
            self.fs.file(file, file)?;
        }
        self.fs.bytes(
            Path::new("/etc/passwd"),
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        )?;
        self.fs
            .bytes(Path::new("/etc/group"), b"root:x:0:\n".to_vec(), 0o644)?;
        let roots: Vec<String> = DEFAULT_MODULE_DIRS.iter().map(|s| s.to_string()).collect();
        self.modules_under(&roots)
    }

    /// Adds the modules under the given folders of `lib/modules/<release>/` (e.g.
    /// `kernel/net/sched/`) with their dependencies, so the guest can load them.
    pub fn modules_under(&mut self, roots: &[String]) -> Result<(), VmError> {
        let guest_dir = Path::new("/lib/modules").join(&self.kernel.release);
        for module in self.kernel.module_closure(roots)? {
            let from = self.kernel.modules.join(&module);
            self.fs.file(&from, &guest_dir.join(&module))?;
        }
        for index in [
            "modules.dep",
            "modules.alias",
            "modules.symbols",
            "modules.builtin",
            "modules.softdep",
            "modules.order",
        ] {
            let from = self.kernel.modules.join(index);
            if from.is_file() {
                self.fs.file(&from, &guest_dir.join(index))?;
            }
        }
        Ok(())
    }

    /// Loads `module` (by name, with its dependencies) before the command runs. Modules the
    /// kernel asks for itself (nftables expressions, `veth` links) load on demand anyway.
    pub fn load_module(&mut self, module: &str) -> &mut Self {
        self.modules.push(module.to_string());
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// How long a run may take before the guest is killed (default 10 minutes: software
    /// emulation on a busy two-core machine is slow, and a hung guest must still end).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The guest's virtual CPUs (default 2).
    pub fn cpus(&mut self, cpus: u32) -> &mut Self {
        self.cpus = cpus.max(1);
        self
    }

    /// The guest's memory in MiB (default 1024).
    pub fn memory_mib(&mut self, mib: u32) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    /// Adds the host program or shared library at `host` at the same path in the guest, with
    /// the shared libraries it needs; debug information is stripped from the copy. A symbolic
    /// link stays one (every link of a chain, then the program it ends at), because multi-call
    /// programs such as `xtables-nft-multi` choose what to do by the name they are run as.
    pub fn add_program(&mut self, host: &Path) -> Result<&mut Self, VmError> {
        let program = self.add_links(host)?;
        self.add_program_at(&program, &program)
    }

    /// Adds the chain of symbolic links starting at `host` (none when it is not a link) at
    /// their host paths, and returns the path the chain ends at.
    fn add_links(&mut self, host: &Path) -> Result<PathBuf, VmError> {
        let mut path = host.to_path_buf();
        // Enough for any real chain (`iptables` → `/etc/alternatives/iptables` →
        // `iptables-nft` → `xtables-nft-multi` is three); a loop ends with an error.
        for _ in 0..16 {
            let meta = fs::symlink_metadata(&path).map_err(|e| VmError::io(&path, e))?;
            if !meta.file_type().is_symlink() {
                return Ok(path);
            }
            let target = fs::read_link(&path).map_err(|e| VmError::io(&path, e))?;
            self.fs.symlink(&path, &target.to_string_lossy())?;
            path = match path.parent() {
                Some(dir) if target.is_relative() => dir.join(&target),
                _ => target,
            };
        }
        Err(VmError::io(
            host,
            io::Error::other("too many levels of symbolic links"),
        ))
    }

    /// Adds every shared library (`*.so`) in the host folder `dir` at its host path, with the
    /// libraries they need: for plugins a program `dlopen`s, which `ldd` cannot see (the
    /// iptables extensions, say). Copied as they are (they are small and many).
    pub fn add_library_dir(&mut self, dir: &Path) -> Result<&mut Self, VmError> {
        let entries = fs::read_dir(dir).map_err(|e| VmError::io(dir, e))?;
        let mut libs = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| VmError::io(dir, e))?.path();
            if path.extension().is_some_and(|e| e == "so") && path.is_file() {
                libs.push(path);
            }
        }
        libs.sort();
        self.fs.libraries(&libs)?;
        Ok(self)
    }

    /// Adds both iptables back ends as the iptables plugin runs them: `iptables-nft`,
    /// `iptables-nft-restore`, `iptables-nft-save`, the same for `-legacy` and `ip6tables`
    /// (links to `xtables-nft-multi` and `xtables-legacy-multi`), their libraries, and the
    /// extensions (`libxt_*.so`, `libipt_*.so`, …) they load for each match and target.
    /// Fails when the host lacks one (`scripts/install-deps` installs `iptables`).
    pub fn add_iptables(&mut self) -> Result<&mut Self, VmError> {
        for base in ["iptables", "ip6tables"] {
            for backend in ["nft", "legacy"] {
                for suffix in ["", "-restore", "-save"] {
                    let path = find_program(&format!("{base}-{backend}{suffix}"))?;
                    self.add_program(&path)?;
                }
            }
        }
        let dir = xtables_dir()?;
        self.add_library_dir(&dir)
    }

    /// [`Guest::add_program`] at another guest path.
    pub fn add_program_at(&mut self, host: &Path, guest: &Path) -> Result<&mut Self, VmError> {
        let content = self.strip(host)?;
        self.fs.program(host, &content, guest)?;
        Ok(self)
    }

    /// Adds a host file as it is (no libraries, no stripping) at `guest`.
    pub fn add_file(&mut self, host: &Path, guest: &Path) -> Result<&mut Self, VmError> {
        self.fs.file(host, guest)?;
        Ok(self)
    }

    /// A copy of `host` without debug information in the work folder, or `host` itself when
    /// `strip` cannot make one (not installed, or not an ELF file).
    fn strip(&mut self, host: &Path) -> Result<PathBuf, VmError> {
        self.stripped += 1;
        let out = self.work.0.join(format!("stripped-{}", self.stripped));
        let ok = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(host)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Ok(if ok { out } else { host.to_path_buf() })
    }

    /// Boots the guest, runs `argv` (as root, in `/`, with the environment set by
    /// [`Guest::env`]; stdout and stderr go to the console), and powers off. `Ok` whenever the
    /// command ran to an exit code, whatever it was.
    pub fn run(&mut self, argv: &[&str]) -> Result<GuestRun, VmError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let token = format!(
            "{:x}{n:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let init = self.init_script(argv, &token);
        self.fs
            .bytes(Path::new("/init"), init.into_bytes(), 0o755)?;
        let initrd = self.work.0.join(format!("initramfs-{n}.cpio"));
        self.fs.write(&initrd)?;
        let console_path = self.work.0.join(format!("console-{n}.log"));
        let qemu_err_path = self.work.0.join(format!("qemu-{n}.err"));
        let qemu_err =
            fs::File::create(&qemu_err_path).map_err(|e| VmError::io(&qemu_err_path, e))?;
        let started = Instant::now();
        let mut child = Command::new(QEMU)
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-m", &format!("{}M", self.memory_mib)])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", console_path.display()))
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qemu_err)
            .spawn()
            .map_err(|e| VmError::NoQemu(e.to_string()))?;
        let read_console = || {
            fs::read(&console_path)
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default()
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(VmError::Timeout {
                        timeout: self.timeout,
                        console: read_console(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(VmError::io(Path::new(QEMU), e)),
            }
        };
        let elapsed = started.elapsed();
        let _ = fs::remove_file(&initrd);
        let console = read_console();
        match parse_console(&console, &token) {
            Some((exit_code, output)) => Ok(GuestRun {
                exit_code,
                output,
                console,
                elapsed,
            }),
            None => Err(VmError::NoExitLine {
                status: status.to_string(),
                qemu_stderr: fs::read_to_string(&qemu_err_path).unwrap_or_default(),
                console,
            }),
        }
    }

    /// Runs the single test `name` of the test binary `exe` (added with
    /// [`Guest::add_program`] if it is not in the guest yet) including ignored tests, with
    /// output shown. Check the result with [`GuestRun::test_passed`].
    pub fn run_test(&mut self, exe: &Path, name: &str) -> Result<GuestRun, VmError> {
        self.run_tests(exe, &[name])
    }

    /// [`Guest::run_test`] for several tests in one boot, one after another in the order
    /// libtest sorts them (by name). Check the result with [`GuestRun::tests_passed`].
    pub fn run_tests(&mut self, exe: &Path, names: &[&str]) -> Result<GuestRun, VmError> {
        if !self.fs.contains(exe) {
            self.add_program(exe)?;
        }
        let exe = exe.to_string_lossy();
        let mut argv = vec![&*exe, "--include-ignored", "--exact"];
        argv.extend_from_slice(names);
        argv.extend(["--nocapture", "--test-threads=1"]);
        self.run(&argv)
    }

    fn init_script(&self, argv: &[&str], token: &str) -> String {
        // The program by its full path: busybox's shell, which runs /init, would run its own
        // applet of the same name (`sh`, `ip`, …) ahead of anything in PATH.
        let mut quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        if let Some(program) = argv.first().and_then(|p| self.resolve(p)) {
            quoted[0] = shell_quote(&program.to_string_lossy());
        }
        let exports: String = self
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect();
        let modules: String = self
            .modules
            .iter()
            .map(|m| {
                format!(
                    "modprobe {0} || echo \"kproxy-guest: modprobe {0} failed\"\n",
                    shell_quote(m)
                )
            })
            .collect();
        format!(
            r#"#!/bin/busybox sh
# Written by kproxy_lab::vm: mount, load modules, run one command, report, power off.
export PATH={PATH}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
# No tmpfs over /tmp or /run: the initramfs is already in memory, and programs copied in at
# their host paths (a checkout under /tmp, say) must stay visible.
chmod 1777 /tmp
echo /bin/modprobe > /proc/sys/kernel/modprobe
{modules}ip link set lo up
hostname kproxy-guest
{exports}cd /
echo "KPROXY-GUEST-BEGIN-{token}"
{command} </dev/null 2>&1
echo "KPROXY-GUEST-EXIT-{token} $?"
poweroff -f
reboot -f
"#,
            command = quoted.join(" ")
        )
    }
}

impl Guest {
    /// Where the guest's PATH finds `program` (`None` for a path, or a name not in the guest).
    fn resolve(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            return None;
        }
        PATH.split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|p| self.fs.contains(p))
    }
}

/// `s` in single quotes for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The host path of a program, looked up in [`PATH`].
fn find_program(name: &str) -> Result<PathBuf, VmError> {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            VmError::Tool(format!(
                "`{name}` is not installed on the host (scripts/install-deps installs it)"
            ))
        })
}

/// Where the host's iptables loads its extensions from: `$XTABLES_LIBDIR` if set, else
/// `xtables/` next to the `libxtables` that `xtables-nft-multi` links (its built-in default, e.g.
/// Debian's `/usr/lib/x86_64-linux-gnu/xtables`).
fn xtables_dir() -> Result<PathBuf, VmError> {
    if let Some(dir) = std::env::var_os("XTABLES_LIBDIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let multi = find_program("xtables-nft-multi")?;
    let lib = shared_libraries(&multi)?
        .into_iter()
        .find(|l| {
            l.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libxtables.so"))
        })
        .ok_or_else(|| VmError::Tool(format!("{} does not link libxtables", multi.display())))?;
    // Through merged-/usr links (`/lib` → `usr/lib`) to the folder the library really sits in.
    let lib = fs::canonicalize(&lib).map_err(|e| VmError::io(&lib, e))?;
    let dir = lib
        .parent()
        .map(|d| d.join("xtables"))
        .filter(|d| d.is_dir())
        .ok_or_else(|| {
            VmError::Tool(format!(
                "no xtables/ extension folder next to {}",
                lib.display()
            ))
        })?;
    Ok(dir)
}

/// The command's exit code and the output between the begin and exit lines.
fn parse_console(console: &str, token: &str) -> Option<(i32, String)> {
    let begin = format!("KPROXY-GUEST-BEGIN-{token}\n");
    let exit = format!("KPROXY-GUEST-EXIT-{token} ");
    let start = console.find(&begin)? + begin.len();
    let end = start + console[start..].find(&exit)?;
    let code = console[end + exit.len()..]
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((code, console[start..end].to_string()))
}

/// What a guest run produced.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The command's exit code.
    pub exit_code: i32,
    /// What the command printed (stdout and stderr, with any kernel messages in between).
    pub output: String,
    /// The whole serial console: boot messages, module loading, the output, power-off.
    pub console: String,
    /// From starting qemu until it exited (for reports; never asserted on).
    pub elapsed: Duration,
}

impl GuestRun {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Whether a [`Guest::run_test`] run exited 0 having started the test `name` and counted
    /// exactly one passed test (libtest's `test <name> ... ` and `test result: ok. 1 passed;`),
    /// so a filter that matched nothing does not count as a pass. (With `--nocapture` the test's
    /// own output may stand between `test <name> ...` and its `ok`.)
    pub fn test_passed(&self, name: &str) -> bool {
        self.tests_passed(&[name])
    }

    /// [`GuestRun::test_passed`] for a [`Guest::run_tests`] run: exited 0, started every one
    /// of `names`, and counted exactly that many passed tests.
    pub fn tests_passed(&self, names: &[&str]) -> bool {
        let summary = format!("test result: ok. {} passed;", names.len());
        self.success()
            && names
                .iter()
                .all(|name| self.output.contains(&format!("test {name} ... ")))
            && self.output.lines().any(|l| l.starts_with(&summary))
    }
}

impl fmt::Display for GuestRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "guest command exited {} after {:.1} s; console:",
            self.exit_code,
            self.elapsed.as_secs_f64()
        )?;
        f.write_str(&self.console)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_parsing_finds_the_exit_code_and_output() {
        let console = "boot\nKPROXY-GUEST-BEGIN-t1\nhello\nworld\nKPROXY-GUEST-EXIT-t1 3\nbye\n";
        assert_eq!(
            parse_console(console, "t1"),
            Some((3, "hello\nworld\n".to_string()))
        );
        assert_eq!(parse_console(console, "t2"), None);
        assert_eq!(parse_console("KPROXY-GUEST-BEGIN-t1\nhung", "t1"), None);
    }

    #[test]
    fn several_tests_pass_only_when_each_started_and_all_were_counted() {
        let run = |exit_code: i32, output: &str| GuestRun {
            exit_code,
            output: output.to_string(),
            console: String::new(),
            elapsed: Duration::ZERO,
        };
        let both =
            "test a ... ok\ntest b ... log line\nok\n\ntest result: ok. 2 passed; 0 failed;\n";
        assert!(run(0, both).tests_passed(&["a", "b"]));
        assert!(!run(1, both).tests_passed(&["a", "b"]));
        assert!(!run(0, both).tests_passed(&["a", "b", "c"]));
        assert!(!run(0, both).test_passed("a"), "two passed is not one");
        let one = "test a ... ok\n\ntest result: ok. 1 passed; 0 failed;\n";
        assert!(run(0, one).test_passed("a"));
        assert!(!run(0, one).tests_passed(&["a", "b"]));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
