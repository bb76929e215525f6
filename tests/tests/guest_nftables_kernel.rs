//! The nftables plugin's own kernel tests (`plugins/nftables/tests/kernel.rs`) on the qemu
//! guest's kernel (Debian 12's 6.1, [`kproxy_tests::lab::vm`]): the plugin's default netlink
//! writer encodes nf_tables messages itself, and an older kernel may check attributes the host's
//! newer one lets through, so the same tests that pass here must pass there.
//!
//! Needs the plugin's test binary built first (`cargo test -p kproxy-plugin-nftables --test
//! kernel --no-run`, or any `cargo test --workspace`), qemu and the guest kernel
//! (`scripts/install-deps`, `scripts/guest-kernel`); skips without them, except under `CI=true`,
//! where it fails.

use std::path::PathBuf;

use kproxy_tests::{artifacts, lab::vm::Guest};

/// A test of the plugin's kernel suite, used to recognise its binary among `deps/kernel-*`.
const MARKER: &str = "a_full_sync_puts_a_hand_edited_table_right";

/// The newest `deps/kernel-<hash>` test binary that holds the plugin's kernel tests.
fn plugin_kernel_tests() -> Option<PathBuf> {
    let deps = artifacts::profile_dir().join("deps");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("kernel-") && p.extension().is_none()
        })
        .filter(|p| {
            std::fs::read(p)
                .map(|bytes| bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
                .unwrap_or(false)
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

#[test]
fn nftables_plugin_kernel_tests_pass_on_the_guest_kernel() {
    let Some(exe) = plugin_kernel_tests() else {
        let msg = "the nftables plugin's kernel test binary is not built \
                   (cargo test -p kproxy-plugin-nftables --test kernel --no-run)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        println!("skipped: {msg}");
        return;
    };
    let Some(mut guest) = Guest::prepare_or_skip() else {
        return;
    };
    guest
        .add_program(&exe)
        .unwrap_or_else(|e| panic!("adding {} to the guest: {e}", exe.display()));
    guest.env("CI", "true");
    // The tests open namespaces at `/var/run/netns/<name>`, where the host's `/var/run` leads
    // to `/run`; Debian's `ip netns add` makes them under `/run/netns`.
    let script = format!(
        "[ -e /var/run ] || {{ mkdir -p /run /var && ln -s /run /var/run; }}; \
         exec '{}' --test-threads=1 --nocapture",
        exe.display()
    );
    let run = guest.run(&["sh", "-c", &script]).expect("the guest runs");
    print!("{}", run.output);
    assert!(run.success(), "{run}");
    assert!(
        run.output.contains("test result: ok.") && !run.output.contains(" 0 passed;"),
        "no passing test run in the guest: {run}"
    );
}
