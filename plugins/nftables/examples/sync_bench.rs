//! Times a full sync (render + apply with the default writer) and a one-endpoint incremental sync at a given size,
//! inside a scratch network namespace (needs root). Not a test: it prints figures.
//!
//! `cargo run --release -p kproxy-plugin-nftables --example sync_bench -- [services] [endpoints]`

use kproxy_plugin_api::{ChangeSet, Plugin};
use kproxy_plugin_nftables::{plan, render::FamilyCtx, sample, NftablesDataplane};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

/// Counts live heap bytes and their peak, so the figures say what the plugin itself holds
/// (its program) and needs at most during a sync, apart from the state it is given.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Live heap in MB, and the peak since the last call.
fn heap_mb() -> (f64, f64) {
    let live = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.swap(live, Ordering::Relaxed);
    (live as f64 / 1e6, peak as f64 / 1e6)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(10_000, |a| a.parse().expect("services"));
    let endpoints: usize = args.next().map_or(1, |a| a.parse().expect("endpoints"));
    let ns = format!("kpnft-bench-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(ok.success(), "ip netns add failed (root needed)");
    let result = std::panic::catch_unwind(|| run(&ns, services, endpoints));
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(ns: &str, services: usize, endpoints: usize) {
    let file = File::open(format!("/var/run/netns/{ns}")).expect("netns");
    // SAFETY: plain syscall on a valid descriptor; this process is single-threaded here.
    assert_eq!(
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );

    let mut settings = sample::settings();
    settings.ipv6 = false;
    let (empty, _) = heap_mb();
    let state = sample::many_services(services, endpoints);
    println!("the state: {:.1} MB of heap", heap_mb().0 - empty);
    let node = sample::node();
    let ctx = FamilyCtx {
        family: kproxy_plugin_api::IpFamily::V4,
        table: "kproxy",
        settings: &settings,
        node: &node,
    };
    let t = Instant::now();
    let plan = plan::plan_full_script(&[ctx], &[], &state, &Default::default());
    let render = t.elapsed();
    println!(
        "{services} services x {endpoints} endpoints: script {} KiB, {} objects; render {:.1} ms",
        plan.script.len() / 1024,
        plan.objects,
        render.as_secs_f64() * 1e3
    );

    {
        use kproxy_plugin_nftables::{netlink::Batch, script::Sink as _};
        let mut names = 0;
        let (before, _) = heap_mb();
        let mut batch = Batch::new(&mut names, false);
        let t = Instant::now();
        let programs = plan::plan_full(&[ctx], &[], &state, &Default::default(), &mut batch);
        let took = t.elapsed();
        let (with_batch, peak) = heap_mb();
        drop(programs);
        let (batch_only, _) = heap_mb();
        println!(
            "netlink batch: {} KiB, {} objects; planned and encoded in {:.1} ms; heap: batch \
             {:.1} MB, program {:.1} MB, planning peak {:.1} MB",
            batch.len() / 1024,
            batch.objects(),
            took.as_secs_f64() * 1e3,
            batch_only - before,
            with_batch - batch_only,
            peak - before
        );
    }

    if let Ok(path) = std::env::var("KPNFT_DUMP") {
        std::fs::write(&path, &plan.script).expect("write script");
        println!("script written to {path}");
        return;
    }
    let ctx = kproxy_plugin_api::HostContext {
        plugin_config: "".into(),
        settings: settings.clone(),
        node: node.clone(),
    };
    let mut dp = NftablesDataplane::new(&ctx).unwrap();
    let full = ChangeSet {
        full: true,
        changed: Default::default(),
    };
    // KPNFT_ONLY_INCREMENTAL=<n>: one full sync, then n incremental ones (for profiling).
    let only_incremental: Option<usize> = std::env::var("KPNFT_ONLY_INCREMENTAL")
        .ok()
        .and_then(|v| v.parse().ok());
    let rounds = if only_incremental.is_some() { 1 } else { 3 };
    for round in 0..rounds {
        let (before, _) = heap_mb();
        let t = Instant::now();
        dp.sync(&state, &full).unwrap();
        let took = t.elapsed();
        let (after, peak) = heap_mb();
        println!(
            "full sync (render + kernel) #{round}: {:.1} ms; heap: the plugin keeps {:.1} MB, \
             needs {:.1} MB more at most",
            took.as_secs_f64() * 1e3,
            after - before,
            peak - before
        );
    }
    if let Some(n) = only_incremental {
        incremental(&mut dp, &state, n);
        print_peak_memory();
        return;
    }
    let t = Instant::now();
    let (ok, _) = (
        Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(plan.script.as_bytes())
                    .unwrap();
                c.wait().unwrap().success()
            })
            .unwrap(),
        (),
    );
    assert!(ok);
    println!(
        "reference: nft -f of the pre-rendered script: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    incremental(&mut dp, &state, 20);
}

/// One endpoint added to one service, `n` times.
fn incremental(dp: &mut NftablesDataplane, state: &kproxy_plugin_api::ProxyState, n: usize) {
    let mut times = Vec::new();
    let mut current = state.clone();
    for i in 0..n {
        let mut next = current.clone();
        let idx = (i * 37) % next.services.len();
        let sp = &mut next.services[idx];
        let mut e = sp.endpoints[0].clone();
        e.ip = sample::ip(&format!("10.250.{}.{}", i / 200, i % 200 + 1));
        sp.endpoints.push(e);
        let changed = ChangeSet {
            full: false,
            changed: vec![sp.key.clone()].into(),
        };
        let t = Instant::now();
        dp.sync(&next, &changed).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        current = next;
    }
    times.sort_by(f64::total_cmp);
    if times.is_empty() {
        return;
    }
    println!(
        "incremental one-endpoint sync: p50 {:.1} ms, max {:.1} ms ({n} runs)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// Prints this process's peak resident memory (plugin, state and batch together).
fn print_peak_memory() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("peak memory: {}", line.trim_start_matches("VmHWM:").trim());
    }
}
