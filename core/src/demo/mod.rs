//! `kproxy demo`: kproxy balancing real traffic in a sandbox of network namespaces, then
//! removing the sandbox.
//!
//! What it does, in order (each step prints what it did):
//!
//! 1. builds a [`kproxy_lab::Lab`] whose namespace names start with [`NAMESPACE_PREFIX`]: a node
//!    namespace, pods `web-a`, `web-b`, `web-c` and `client` on routed veths, and an external
//!    client outside the cluster;
//! 2. writes manifests to a temporary folder — the Service `demo/web` (a ClusterIP and a
//!    NodePort, see [`objects`]), its EndpointSlice with the three `web-*` pods, and the Node —
//!    and starts this binary's `kproxy run` inside the node namespace on that folder with the
//!    nftables plugin ([`daemon`]);
//! 3. waits until the rules are in the kernel (a sync marker answers with a reject), sends
//!    requests from the `client` pod to the ClusterIP and from the external client to the
//!    NodePort, and prints who answered how often and which source address each backend saw
//!    ([`report`]);
//! 4. rewrites the slice without `web-c`, waits for the sync, and sends again: `web-c` gets
//!    nothing;
//! 5. stops the daemon and removes every namespace and file it made, then prints
//!    `removed the sandbox`.
//!
//! Ctrl-C or SIGTERM at any moment leads to step 5 and exit code 130 ([`interrupt`]). Exit code
//! 1 means the demo could not run (not root, no plugin, the daemon failed) or the traffic did not
//! behave as shown (a request went unanswered, a backend never answered, or `web-c` still
//! answered after it was scaled away) — so the demo doubles as a smoke test.
//!
//! The lab is the one the test suites use ([`kproxy_lab`]); the demo adds nothing to the
//! daemon's own code paths: it only writes files and runs `kproxy run`.

pub mod daemon;
pub mod interrupt;
pub mod objects;
pub mod report;

use daemon::{DaemonError, DaemonProcess};
use interrupt::{Interrupt, Interrupted};
use kproxy_lab::{
    client::{self, Outcome, RequestOptions},
    plan::{CLUSTER_CIDR_V4, NODE_NAME, SERVICE_CIDR_V4},
    sync_marker, Lab, LabConfig, LabError, Place,
};
use kproxy_plugin_api::Protocol;
use objects::Backend;
use report::{Counts, Sources};
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Every namespace the demo makes is named `kproxy-demo-<pid>-<n>-<role>`.
pub const NAMESPACE_PREFIX: &str = "kproxy-demo-";
/// Requests sent per destination and round when `--requests` is not given.
pub const DEFAULT_REQUESTS: usize = 300;
/// Exit code after an interruption (128 + SIGINT, as shells report Ctrl-C).
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code when the demo cannot run or traffic misbehaves.
pub const EXIT_FAILED: i32 = 1;

/// The Service's backends.
const BACKENDS: [&str; 3] = ["web-a", "web-b", "web-c"];
/// The pod that sends to the ClusterIP (not a backend, so no request is hairpin traffic).
const CLIENT_POD: &str = "client";
/// The backend that is scaled away.
const SCALED_AWAY: &str = "web-c";
/// How long the daemon may take to program a change.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests sent between two checks for Ctrl-C.
const BATCH: usize = 25;
/// After this many unanswered requests a round stops (a broken dataplane costs seconds, not
/// one timeout per request).
const MAX_FAILURES: usize = 10;
/// With fewer requests than this per round, a backend may miss out by chance, so "every
/// backend answered" is not checked.
const MIN_REQUESTS_FOR_SPREAD_CHECK: usize = 30;

/// What `kproxy demo` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// Requests per destination and round.
    pub requests: usize,
    /// `--plugin-dir`, if given.
    pub plugin_dir: Option<PathBuf>,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("the sandbox: {0}")]
    Lab(#[from] LabError),
    #[error("{0}")]
    Failed(String),
}

/// Runs the demo and returns the exit code: 0, [`EXIT_FAILED`] or [`EXIT_INTERRUPTED`].
pub fn run(options: &DemoOptions) -> i32 {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "kproxy demo needs root: it creates network namespaces and programs nftables \
             inside them (the host's own network is not touched). Run it as root, e.g. \
             `sudo make demo`."
        );
        return EXIT_FAILED;
    }
    let interrupt = match Interrupt::install() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("kproxy demo: cannot handle Ctrl-C, so not starting: {e}");
            return EXIT_FAILED;
        }
    };
    let mut sandbox = Sandbox::default();
    let result = show(&mut sandbox, options, &interrupt).map_err(|e| match interrupt.check() {
        // A Ctrl-C in a terminal also hits the `ip` commands that build the lab, so a step
        // failing after a signal failed because of it.
        Err(i) => DemoError::Interrupted(i),
        Ok(()) => e,
    });
    let mut code = match &result {
        Ok(()) => 0,
        Err(DemoError::Interrupted(i)) => {
            println!("\n{i}: removing the sandbox");
            EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("\nkproxy demo: {e}");
            EXIT_FAILED
        }
    };
    if !sandbox.is_empty() {
        if result.is_ok() {
            println!("\n3. stopping kproxy and removing the sandbox");
        }
        match sandbox.remove() {
            Ok(what) => println!("removed the sandbox ({what})"),
            Err(left) => {
                eprintln!("kproxy demo: could not remove everything: {left}");
                code = EXIT_FAILED;
            }
        }
    }
    // A signal during the clean-up changed nothing, but the run was still interrupted.
    if code == 0 {
        if let Err(i) = interrupt.check() {
            println!("{i}");
            code = EXIT_INTERRUPTED;
        }
    }
    code
}

/// The start of every namespace name this process's demo makes.
pub fn own_prefix() -> String {
    format!("{NAMESPACE_PREFIX}{}-", std::process::id())
}

/// Everything the demo made, removed in reverse order of making.
#[derive(Default)]
struct Sandbox {
    daemon: Option<DaemonProcess>,
    lab: Option<Lab>,
    files: Option<tempfile::TempDir>,
}

impl Sandbox {
    fn is_empty(&self) -> bool {
        self.daemon.is_none() && self.lab.is_none() && self.files.is_none()
    }

    /// Stops the daemon, deletes the namespaces (the rules inside go with them) and the
    /// temporary folder; says what was removed, or what is left.
    fn remove(&mut self) -> Result<String, String> {
        let mut removed = Vec::new();
        let mut left = Vec::new();
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(3));
            removed.push(format!("kproxy pid {}", d.pid()));
        }
        if let Some(lab) = self.lab.take() {
            removed.push(format!(
                "{} namespaces {}-*",
                lab.namespaces().len(),
                lab.prefix()
            ));
            drop(lab);
        }
        // Also covers a lab whose building was cut short (it removed itself while failing).
        let remaining: Vec<String> = kproxy_lab::netns::list()
            .into_iter()
            .filter(|ns| ns.starts_with(&own_prefix()))
            .collect();
        if !remaining.is_empty() {
            left.push(format!("namespaces {}", remaining.join(" ")));
        }
        if let Some(files) = self.files.take() {
            let path = files.path().display().to_string();
            match files.close() {
                Ok(()) => removed.push(path),
                Err(e) => left.push(format!("{path}: {e}")),
            }
        }
        if left.is_empty() {
            Ok(removed.join(", "))
        } else {
            Err(left.join("; "))
        }
    }
}

impl Drop for Sandbox {
    /// A panic in the demo still removes the sandbox.
    fn drop(&mut self) {
        if !self.is_empty() {
            let _ = self.remove();
        }
    }
}

/// Paths inside the demo's temporary folder.
struct Files {
    manifests: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Files {
    fn new(root: &Path) -> Files {
        Files {
            manifests: root.join("manifests"),
            config: root.join("kproxy.toml"),
            log: root.join("kproxy.log"),
        }
    }

    /// Writes the objects with the slice listing `backends` and marker `n`, atomically (the
    /// manifest source skips dot files, so the half-written one is never read).
    fn write_objects(
        &self,
        backends: &[Backend],
        node: &serde_json::Value,
        n: u32,
    ) -> Result<(), DaemonError> {
        let objects = [
            objects::service(),
            objects::endpoint_slice(backends, NODE_NAME),
            node.clone(),
            sync_marker::marker_service("kproxy-demo", n),
        ];
        let target = self.manifests.join("demo.yaml");
        let write_err = |e: String| DaemonError::Write {
            path: target.clone(),
            reason: e,
        };
        sync_marker::write_manifest(
            &self.manifests,
            "demo.yaml",
            "Written by `kproxy demo`; removed when the demo ends.",
            &objects,
        )
        .map_err(|e| write_err(e.to_string()))
    }
}

fn show(
    sandbox: &mut Sandbox,
    options: &DemoOptions,
    interrupt: &Interrupt,
) -> Result<(), DemoError> {
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Failed(format!("cannot find this program's path: {e}")))?;
    let plugin_dir = daemon::plugin_dir(options.plugin_dir.as_deref(), Some(&exe));
    let plugin = daemon::check_plugin(&plugin_dir)?;
    println!(
        "kproxy demo: a Service load-balanced by kproxy's nftables dataplane, in a sandbox of \
         network namespaces.\nThe host's own network is not touched; everything is removed at \
         the end, also on Ctrl-C.\n"
    );
    interrupt.check()?;

    let root = tempfile::Builder::new()
        .prefix("kproxy-demo-")
        .tempdir()
        .map_err(|e| DemoError::Failed(format!("cannot create a temporary folder: {e}")))?;
    let files = Files::new(root.path());
    sandbox.files = Some(root);
    fs::create_dir(&files.manifests).map_err(|e| DaemonError::Write {
        path: files.manifests.clone(),
        reason: e.to_string(),
    })?;
    println!("building the sandbox ...");
    let mut pods: Vec<String> = BACKENDS.iter().map(|s| s.to_string()).collect();
    pods.push(CLIENT_POD.into());
    let lab = sandbox.lab.insert(Lab::with_prefix(
        NAMESPACE_PREFIX,
        LabConfig {
            local_pods: pods,
            remote_pods: Vec::new(),
            ports: vec![objects::TARGET_PORT],
            timeout: Duration::from_secs(1),
        },
    )?);
    interrupt.check()?;
    let plan = lab.plan().clone();
    let node_ns = lab.ns(&Place::Node)?.to_string();
    println!(
        "  namespaces  {}-* (node, pods, external client)",
        lab.prefix()
    );
    println!(
        "  node        {NODE_NAME}: {} towards the pods, {} towards the outside",
        plan.node_underlay.v4, plan.node_external.v4
    );
    let backends: Vec<Backend> = BACKENDS
        .iter()
        .map(|name| Backend {
            name: name.to_string(),
            ip: plan
                .pod(name)
                .expect("the lab has every pod asked for")
                .ip
                .v4,
        })
        .collect();
    let client_ip = plan
        .pod(CLIENT_POD)
        .expect("the lab has the client pod")
        .ip
        .v4;
    let listed: Vec<String> = backends
        .iter()
        .map(|b| format!("{} {}", b.name, b.ip))
        .collect();
    println!(
        "  pods        {}, {CLIENT_POD} {client_ip}",
        listed.join(", ")
    );
    println!("              each answers a request with its name and the source address it saw");
    println!(
        "  external    {} (outside the cluster)",
        plan.external_client.v4
    );
    println!(
        "  files       {}",
        files
            .manifests
            .parent()
            .unwrap_or(&files.manifests)
            .display()
    );
    println!(
        "\nService {}/{}: ClusterIP {}:{}, NodePort {}, targetPort {}, endpoints {}",
        objects::NAMESPACE,
        objects::SERVICE,
        objects::CLUSTER_IP,
        objects::PORT,
        objects::NODE_PORT,
        objects::TARGET_PORT,
        BACKENDS.join(" ")
    );

    let node_object = plan
        .node_objects()
        .into_iter()
        .next()
        .expect("the plan describes this node");
    files.write_objects(&backends, &node_object, 1)?;
    let config = daemon::config(
        NODE_NAME,
        CLUSTER_CIDR_V4,
        SERVICE_CIDR_V4,
        &files.manifests,
        &plugin_dir,
    );
    fs::write(&files.config, config).map_err(|e| DaemonError::Write {
        path: files.config.clone(),
        reason: e.to_string(),
    })?;
    let d = sandbox.daemon.insert(DaemonProcess::start(
        &exe,
        &node_ns,
        &files.config,
        &files.log,
    )?);
    println!(
        "\nstarted `kproxy run` (pid {}) in namespace {node_ns} with plugin {}",
        d.pid(),
        plugin.display()
    );
    let waited = wait_for_sync(lab, d, 1, interrupt)?;
    println!("rules programmed after {:.1} s", waited.as_secs_f64());

    let cluster_ip = SocketAddr::new(IpAddr::V4(objects::CLUSTER_IP), objects::PORT);
    let node_port = SocketAddr::new(IpAddr::V4(plan.node_external.v4), objects::NODE_PORT);
    let targets = [
        Target {
            title: format!("pod {CLIENT_POD} -> ClusterIP {cluster_ip}"),
            note: "a pod's request keeps its source address: it comes from inside the cluster",
            from: Place::Pod(CLIENT_POD.into()),
            dst: cluster_ip,
            sources: Sources {
                client: IpAddr::V4(client_ip),
                node: plan.node_addresses(),
            },
        },
        Target {
            title: format!("external client -> NodePort {node_port}"),
            note: "external traffic is masqueraded to the node's address under \
                   externalTrafficPolicy: Cluster, so replies return through the node",
            from: Place::External,
            dst: node_port,
            sources: Sources {
                client: IpAddr::V4(plan.external_client.v4),
                node: plan.node_addresses(),
            },
        },
    ];
    let n = options.requests;
    let mut problems = Vec::new();

    println!("\n1. all three backends ready");
    for t in &targets {
        let counts = send(lab, &t.from, t.dst, n, interrupt)?;
        print_round(t, n, &counts, true);
        problems.extend(check(&t.title, &counts, &BACKENDS, None, n));
    }

    println!("\n2. scaling {SCALED_AWAY} away: the EndpointSlice now lists only web-a and web-b");
    let kept: Vec<Backend> = backends
        .iter()
        .filter(|b| b.name != SCALED_AWAY)
        .cloned()
        .collect();
    files.write_objects(&kept, &node_object, 2)?;
    let d = sandbox.daemon.as_mut().expect("started above");
    let waited = wait_for_sync(lab, d, 2, interrupt)?;
    println!("change programmed after {:.1} s", waited.as_secs_f64());
    for t in &targets {
        let counts = send(lab, &t.from, t.dst, n, interrupt)?;
        print_round(t, n, &counts, false);
        problems.extend(check(
            &t.title,
            &counts,
            &BACKENDS[..2],
            Some(SCALED_AWAY),
            n,
        ));
    }
    if problems.is_empty() {
        println!("\n{SCALED_AWAY} got no more traffic; web-a and web-b share it.");
        Ok(())
    } else {
        Err(DemoError::Failed(format!(
            "traffic did not behave as expected:\n  {}\nkproxy's log:\n{}",
            problems.join("\n  "),
            sandbox
                .daemon
                .as_ref()
                .map(|d| d.log_tail(30))
                .unwrap_or_default()
        )))
    }
}

/// Where a round of requests goes, from where, and what to notice about it.
struct Target {
    title: String,
    note: &'static str,
    from: Place,
    dst: SocketAddr,
    sources: Sources,
}

fn print_round(target: &Target, n: usize, counts: &Counts, with_note: bool) {
    let names: Vec<String> = BACKENDS.iter().map(|s| s.to_string()).collect();
    println!("\n   {n} requests: {}", target.title);
    print!("{}", report::table(counts, &names, &target.sources, "   "));
    if with_note {
        println!("   ({})", target.note);
    }
}

/// What is wrong with a round: unanswered requests, an expected backend that never answered
/// (only checked with enough requests), or `gone` answering.
fn check(
    title: &str,
    counts: &Counts,
    expected: &[&str],
    gone: Option<&str>,
    n: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if counts.failures() > 0 {
        problems.push(format!(
            "{title}: {} requests got no answer",
            counts.failures()
        ));
    }
    if n >= MIN_REQUESTS_FOR_SPREAD_CHECK {
        for b in expected {
            if counts.count(b) == 0 {
                problems.push(format!("{title}: {b} never answered"));
            }
        }
    }
    if let Some(gone) = gone {
        if counts.count(gone) > 0 {
            problems.push(format!(
                "{title}: {gone} answered {} times after it was scaled away",
                counts.count(gone)
            ));
        }
    }
    problems
}

/// Sends `n` TCP requests from `from` to `dst` in small batches (checking for Ctrl-C between
/// them) and counts who answered.
fn send(
    lab: &Lab,
    from: &Place,
    dst: SocketAddr,
    n: usize,
    interrupt: &Interrupt,
) -> Result<Counts, DemoError> {
    let opts = RequestOptions {
        src: None,
        src_port: None,
        timeout: Duration::from_secs(1),
    };
    let mut counts = Counts::default();
    while counts.sent < n && counts.failures() < MAX_FAILURES {
        interrupt.check()?;
        let batch = (n - counts.sent).min(BATCH);
        let outcomes = lab.run_in(from, || {
            (0..batch)
                .map(|_| client::request(dst, Protocol::Tcp, &opts))
                .collect::<Vec<_>>()
        })?;
        for outcome in outcomes {
            match outcome {
                Outcome::Answered { pod, source, .. } => counts.answered(&pod, source.ip()),
                other => counts.failed(&other.to_string()),
            }
        }
    }
    Ok(counts)
}

/// Waits until write number `n` is in the kernel: a connection from the node to its marker is
/// refused (see [`objects`]). Fails when the daemon exits or the time is up, with its log.
fn wait_for_sync(
    lab: &Lab,
    daemon: &mut DaemonProcess,
    n: u32,
    interrupt: &Interrupt,
) -> Result<Duration, DemoError> {
    let start = Instant::now();
    loop {
        interrupt.check()?;
        if let Some(status) = daemon.exited() {
            return Err(DemoError::Failed(format!(
                "kproxy run exited ({status}); its log:\n{}",
                daemon.log_tail(30)
            )));
        }
        if sync_marker::is_programmed(lab, n) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > SYNC_TIMEOUT {
            return Err(DemoError::Failed(format!(
                "kproxy did not program the services within {SYNC_TIMEOUT:?}; its log:\n{}",
                daemon.log_tail(30)
            )));
        }
        interrupt.sleep(Duration::from_millis(50))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, usize)], failed: usize) -> Counts {
        let mut c = Counts::default();
        for (name, n) in pairs {
            for _ in 0..*n {
                c.answered(name, "10.244.1.13".parse().unwrap());
            }
        }
        for _ in 0..failed {
            c.failed("timed out");
        }
        c
    }

    #[test]
    fn a_round_is_judged_by_what_answered() {
        let all = counts(&[("web-a", 20), ("web-b", 20), ("web-c", 20)], 0);
        assert!(check("t", &all, &BACKENDS, None, 60).is_empty());
        let c_still_answers = check("t", &all, &BACKENDS[..2], Some("web-c"), 60);
        assert_eq!(c_still_answers.len(), 1, "{c_still_answers:?}");
        assert!(c_still_answers[0].contains("web-c answered 20 times"));

        let lost = counts(&[("web-a", 30), ("web-b", 29)], 1);
        let problems = check("t", &lost, &BACKENDS, None, 60);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("1 requests got no answer"));
        assert!(problems[1].contains("web-c never answered"));
        // With few requests a backend may miss out by chance: not a problem.
        let few = counts(&[("web-a", 2)], 0);
        assert!(check("t", &few, &BACKENDS, None, 2).is_empty());
    }
}
