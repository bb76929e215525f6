//! The guest's kernel: Debian's packaged kernel, fetched and unpacked by `scripts/guest-kernel`
//! into a cache under the target folder (never installed on the host), and the modules it
//! needs, found through its `modules.dep`.

use super::VmError;
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The script that fetches the kernel (relative to this crate, which sits in `tests/lab/`).
const FETCH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/guest-kernel");

/// Set to a folder laid out as `scripts/guest-kernel` prints one to boot that kernel instead.
pub const KERNEL_DIR_ENV: &str = "KPROXY_GUEST_KERNEL";

/// Module folders (relative to `lib/modules/<version>/`) whose modules every guest carries: all
/// of netfilter (nftables, conntrack, NAT, IPVS, the iptables back ends), SCTP, and the virtual
/// links the lab builds, and the crc32c implementations SCTP and conntrack's `libcrc32c` ask the
/// crypto API for (a soft dependency `modules.dep` does not list). About 8 MB with their
/// dependencies; the guest loads them on demand.
pub const DEFAULT_MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
    "kernel/net/sctp/",
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/dummy.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/arch/x86/crypto/crc32c-intel.ko",
];

/// An unpacked kernel package: the image and its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel image to boot.
    pub vmlinuz: PathBuf,
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `lib/modules/<release>/`, with `modules.dep` (made by `depmod` when unpacked).
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel in [`KERNEL_DIR_ENV`] if set, else the one `scripts/guest-kernel` fetches
    /// (quick when cached; the first run downloads about 70 MB from Debian's archive).
    pub fn fetch() -> Result<Kernel, VmError> {
        let dir = match std::env::var_os(KERNEL_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let out = Command::new(FETCH_SCRIPT)
                    .output()
                    .map_err(|e| VmError::NoKernel(format!("cannot run {FETCH_SCRIPT}: {e}")))?;
                if !out.status.success() {
                    return Err(VmError::NoKernel(format!(
                        "{FETCH_SCRIPT} failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        Kernel::open(&dir)
    }

    /// A kernel unpacked by `scripts/guest-kernel` in `dir`.
    pub fn open(dir: &Path) -> Result<Kernel, VmError> {
        let bad = |why: String| VmError::NoKernel(format!("{}: {why}", dir.display()));
        let release = fs::read_to_string(dir.join("version"))
            .map_err(|e| bad(format!("reading `version`: {e}")))?
            .trim()
            .to_string();
        let vmlinuz = dir.join("vmlinuz");
        let modules = dir.join("lib/modules").join(&release);
        if !vmlinuz.is_file() {
            return Err(bad("no `vmlinuz`".into()));
        }
        if !modules.join("modules.dep").is_file() {
            return Err(bad(format!("no lib/modules/{release}/modules.dep")));
        }
        Ok(Kernel {
            vmlinuz,
            release,
            modules,
        })
    }

    /// The module files (relative to [`Kernel::modules`]) under the given folders or files
    /// (see [`DEFAULT_MODULE_DIRS`]) together with everything they depend on.
    pub fn module_closure(&self, roots: &[String]) -> Result<BTreeSet<String>, VmError> {
        let deps = self.modules_dep()?;
        let mut wanted: Vec<&str> = deps
            .keys()
            .map(String::as_str)
            .filter(|m| roots.iter().any(|r| m.starts_with(r.as_str())))
            .collect();
        let mut closure = BTreeSet::new();
        while let Some(m) = wanted.pop() {
            if closure.insert(m.to_string()) {
                wanted.extend(deps.get(m).into_iter().flatten().map(String::as_str));
            }
        }
        Ok(closure)
    }

    /// `modules.dep` as module → the modules it needs.
    fn modules_dep(&self) -> Result<BTreeMap<String, Vec<String>>, VmError> {
        let path = self.modules.join("modules.dep");
        let text = fs::read_to_string(&path).map_err(|e| VmError::io(&path, e))?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(module, deps)| {
                (
                    module.to_string(),
                    deps.split_whitespace().map(String::from).collect(),
                )
            })
            .collect())
    }
}
