//! The namespace lab: nodes, pods and clients as network namespaces on veth pairs, with tiny
//! servers in every pod, so dataplanes are proven with real packets through a real kernel.
//!
//! Start with [`Lab::start_or_skip`] in a test. The address plan is in [`plan`]: a `node`
//! namespace (where kproxy runs) with routed pods (no bridge) from `10.244.1.0/24` and
//! `fd00:10:244:1::/64`, a `remote` node namespace with pods from `10.244.2.0/24` and
//! `fd00:10:244:2::/64` over an underlay link, and an `external` namespace with a client
//! address and a "blocked" client address outside the cluster, whose default route is the node,
//! so load-balancer IPs, external IPs and the service CIDR all reach it.
//!
//! Nothing of the host is touched: every veth is created with both ends inside lab namespaces
//! (`ip -n <ns> link add … peer … netns <other>`), names are unique per process and lab
//! (`kpl-<pid>-<n>-<role>`), and dropping the [`Lab`] — also while a test panics — stops the
//! servers, ends the processes started inside and deletes the namespaces. Labs left behind by
//! a process that was killed are swept by the next lab.
//!
//! This is its own crate (`kproxy-lab`) because two users need it: the end-to-end suites (through
//! `kproxy_tests::lab`, a re-export) and `kproxy demo`, which builds a lab to show the daemon
//! balancing real traffic.

pub mod client;
pub mod netns;
pub mod plan;
pub mod server;
pub mod sync_marker;
pub mod vm;

pub use client::{Outcome, RequestOptions, Tally};
pub use plan::{DualStack, Plan, PodHost, PodPlan};

use kproxy_plugin_api::{IpFamily, Protocol};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Output},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::Duration,
};

/// What went wrong building or using a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The process may not create network namespaces (not root, or no CAP_SYS_ADMIN/NET_ADMIN).
    #[error("the lab needs root to create network namespaces: {0}")]
    NoPrivileges(String),
    /// A command that builds the lab failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it could not start.
        reason: String,
    },
    /// A thread could not enter a namespace.
    #[error("cannot enter network namespace {ns}: {reason}")]
    Enter {
        /// The namespace.
        ns: String,
        /// The kernel's answer.
        reason: String,
    },
    /// A lab server could not bind.
    #[error("cannot start servers in {ns}: {reason}")]
    Server {
        /// The namespace.
        ns: String,
        /// Why.
        reason: String,
    },
    /// A name the lab does not know.
    #[error("the lab has no {0}")]
    Unknown(String),
    /// A name that cannot be used.
    #[error("invalid name {0:?}: use 1–32 characters of a-z, 0-9 and '-'")]
    BadName(String),
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Pods on the node kproxy runs on.
    pub local_pods: Vec<String>,
    /// Pods on the remote node.
    pub remote_pods: Vec<String>,
    /// Ports every pod serves on TCP, UDP (and SCTP where the kernel has it), IPv4 and IPv6.
    pub ports: Vec<u16>,
    /// How long a request waits before it counts as dropped.
    pub timeout: Duration,
}

impl Default for LabConfig {
    /// Three local pods, one remote pod, ports 8080 and 9090, a one-second timeout.
    fn default() -> Self {
        LabConfig {
            local_pods: vec!["pod-a".into(), "pod-b".into(), "pod-c".into()],
            remote_pods: vec!["pod-r".into()],
            ports: vec![8080, 9090],
            timeout: Duration::from_secs(1),
        }
    }
}

/// A namespace of the lab, as a request's sender or a command's home.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    /// The node kproxy runs on.
    Node,
    /// The remote node.
    Remote,
    /// The external client namespace (holds both the client and the blocked address).
    External,
    /// A pod (local or remote) by name.
    Pod(String),
    /// A namespace made with [`Lab::add_scratch`].
    Scratch(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Node => write!(f, "node"),
            Place::Remote => write!(f, "remote node"),
            Place::External => write!(f, "external"),
            Place::Pod(p) => write!(f, "pod {p}"),
            Place::Scratch(s) => write!(f, "scratch {s}"),
        }
    }
}

/// A built lab. Everything it made goes away when it is dropped.
pub struct Lab {
    prefix: String,
    plan: Plan,
    config: LabConfig,
    /// Namespace names in creation order (deleted in reverse).
    namespaces: Vec<String>,
    places: BTreeMap<Place, String>,
    servers: Mutex<Vec<server::Servers>>,
    sctp: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The name prefixes whose stale labs this process has swept already.
static SWEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Every test lab's namespace names start with this.
pub const PREFIX: &str = "kpl-";

fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(())
        .ok_or_else(|| LabError::BadName(name.into()))
}

/// Whether this process may build labs; `Err` says why not.
pub fn privileges() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("the `ip` command (iproute2) is not installed".into());
    }
    Ok(())
}

/// Deletes namespaces left by lab processes that no longer exist (killed before their labs
/// could drop). Only names of the lab's own pattern `<prefix><pid>-…` with a dead pid are
/// touched; each prefix is swept once per process.
fn sweep_stale(prefix: &str) {
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        if swept.iter().any(|p| p == prefix) {
            return;
        }
        swept.push(prefix.to_string());
    }
    for name in netns::list() {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(namespace = %name, "deleting a namespace left by a dead lab");
            let _ = netns::delete(&name);
        }
    }
}

impl Lab {
    /// Builds a lab, or — when this process lacks the privileges — skips: prints
    /// `skipped: needs root (…)` and returns `None`, except under `CI=true`, where it panics so
    /// a CI run can never pass by skipping. Any other failure panics with the failing command.
    pub fn start_or_skip(config: LabConfig) -> Option<Lab> {
        match Lab::new(config) {
            Ok(lab) => Some(lab),
            Err(LabError::NoPrivileges(why)) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and the lab cannot run: needs root ({why})");
                }
                println!("skipped: needs root ({why})");
                None
            }
            Err(e) => panic!("cannot build the lab: {e}"),
        }
    }

    /// Builds a lab: namespaces, links, addresses, routes, and servers in every pod. Its
    /// namespace names start with [`PREFIX`].
    pub fn new(config: LabConfig) -> Result<Lab, LabError> {
        Lab::with_prefix(PREFIX, config)
    }

    /// [`Lab::new`] with namespace names starting with `prefix` (e.g. `kproxy-demo-`) instead
    /// of [`PREFIX`], so a user of the lab other than the tests (the demo) can tell its own
    /// namespaces apart. Names are `<prefix><pid>-<n>-<role>`; namespaces of that pattern left
    /// by a dead process are deleted first.
    pub fn with_prefix(prefix: &str, config: LabConfig) -> Result<Lab, LabError> {
        privileges().map_err(LabError::NoPrivileges)?;
        for name in config.local_pods.iter().chain(&config.remote_pods) {
            check_name(name)?;
        }
        if !prefix.ends_with('-') || check_name(prefix.trim_end_matches('-')).is_err() {
            return Err(LabError::BadName(prefix.into()));
        }
        sweep_stale(prefix);
        let prefix = format!(
            "{prefix}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            plan: Plan::new(&config.local_pods, &config.remote_pods),
            prefix,
            config,
            namespaces: Vec::new(),
            places: BTreeMap::new(),
            servers: Mutex::new(Vec::new()),
            sctp: false,
        };
        // On error `lab` is dropped here, which removes whatever was made so far.
        lab.build().map_err(|e| match e {
            LabError::Command { reason, .. } if reason.contains("Operation not permitted") => {
                LabError::NoPrivileges(reason)
            }
            e => e,
        })?;
        Ok(lab)
    }

    fn add_ns(&mut self, place: Place, role: &str) -> Result<String, LabError> {
        let name = format!("{}-{role}", self.prefix);
        // Record first, so a half-made namespace is still deleted on drop.
        self.namespaces.push(name.clone());
        netns::create(&name)?;
        self.places.insert(place, name.clone());
        Ok(name)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let plan = self.plan.clone();
        let node = self.add_ns(Place::Node, "node")?;
        let remote = self.add_ns(Place::Remote, "remote")?;
        let ext = self.add_ns(Place::External, "ext")?;
        for ns in [&node, &remote] {
            netns::set_sysctls(
                ns,
                &[
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv6/conf/all/forwarding", "1"),
                ],
            )?;
        }
        // Underlay: node ul0 <-> remote ul0.
        link_pair(&node, "ul0", &remote, "ul0")?;
        addr(&node, "ul0", &format!("{}/24", plan.node_underlay.v4))?;
        addr(&node, "ul0", &format!("{}/64", plan.node_underlay.v6))?;
        addr(&remote, "ul0", &format!("{}/24", plan.remote_underlay.v4))?;
        addr(&remote, "ul0", &format!("{}/64", plan.remote_underlay.v6))?;
        // External side: node ext0 <-> ext eth0 (client and blocked addresses).
        link_pair(&node, "ext0", &ext, "eth0")?;
        addr(&node, "ext0", &format!("{}/24", plan.node_external.v4))?;
        addr(&node, "ext0", &format!("{}/64", plan.node_external.v6))?;
        // The client address is the default source; the blocked one is used only when a request
        // binds it (a secondary IPv4 address, a deprecated IPv6 one).
        addr(&ext, "eth0", &format!("{}/24", plan.external_client.v4))?;
        addr(&ext, "eth0", &format!("{}/64", plan.external_client.v6))?;
        addr(&ext, "eth0", &format!("{}/24", plan.blocked_client.v4))?;
        ip(
            &ext,
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/64", plan.blocked_client.v6),
                "dev",
                "eth0",
                "nodad",
                "preferred_lft",
                "0",
            ],
        )?;
        // Routes between the nodes' pod ranges, and defaults: the node's default gateway is the
        // external side (which does not forward, so unhandled traffic is dropped there); the
        // remote node and the external clients send everything else to the node.
        ip(
            &node,
            &[
                "route",
                "add",
                &plan.remote_pod_cidr.0.to_string(),
                "via",
                &plan.remote_underlay.v4.to_string(),
            ],
        )?;
        ip(
            &node,
            &[
                "-6",
                "route",
                "add",
                &plan.remote_pod_cidr.1.to_string(),
                "via",
                &plan.remote_underlay.v6.to_string(),
            ],
        )?;
        ip(
            &node,
            &[
                "route",
                "add",
                "default",
                "via",
                &plan.external_client.v4.to_string(),
            ],
        )?;
        ip(
            &node,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &plan.external_client.v6.to_string(),
            ],
        )?;
        ip(
            &remote,
            &[
                "route",
                "add",
                "default",
                "via",
                &plan.node_underlay.v4.to_string(),
            ],
        )?;
        ip(
            &remote,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &plan.node_underlay.v6.to_string(),
            ],
        )?;
        ip(
            &ext,
            &[
                "route",
                "add",
                "default",
                "via",
                &plan.node_external.v4.to_string(),
            ],
        )?;
        ip(
            &ext,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &plan.node_external.v6.to_string(),
            ],
        )?;

        for pod in &plan.pods {
            let (host, host_ip) = match pod.host {
                PodHost::Local => (node.clone(), plan.node_underlay),
                PodHost::Remote => (remote.clone(), plan.remote_underlay),
            };
            let ns = self.add_ns(Place::Pod(pod.name.clone()), &format!("pod-{}", pod.name))?;
            let veth = format!("vp{}", pod.index);
            link_pair(&host, &veth, &ns, "eth0")?;
            // Host side: the link-local gateway, and a host route to the pod whose preferred
            // source is the node's address (what a masqueraded packet shows).
            ip(
                &host,
                &[
                    "addr",
                    "add",
                    &format!("{}/32", plan::POD_GATEWAY_V4),
                    "dev",
                    &veth,
                    "scope",
                    "link",
                ],
            )?;
            ip(
                &host,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", plan::POD_GATEWAY_V6),
                    "dev",
                    &veth,
                    "nodad",
                ],
            )?;
            ip(
                &host,
                &[
                    "route",
                    "add",
                    &format!("{}/32", pod.ip.v4),
                    "dev",
                    &veth,
                    "src",
                    &host_ip.v4.to_string(),
                ],
            )?;
            ip(
                &host,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{}/128", pod.ip.v6),
                    "dev",
                    &veth,
                    "src",
                    &host_ip.v6.to_string(),
                ],
            )?;
            // Pod side: its /32 and /128, default routes via the link-local gateway.
            addr(&ns, "eth0", &format!("{}/32", pod.ip.v4))?;
            addr(&ns, "eth0", &format!("{}/128", pod.ip.v6))?;
            let gw4 = plan::POD_GATEWAY_V4.to_string();
            ip(&ns, &["route", "add", &gw4, "dev", "eth0", "scope", "link"])?;
            ip(
                &ns,
                &["route", "add", "default", "via", &gw4, "dev", "eth0"],
            )?;
            ip(
                &ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &plan::POD_GATEWAY_V6.to_string(),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        let pods: Vec<String> = plan.pods.iter().map(|p| p.name.clone()).collect();
        for pod in pods {
            let s = server::Servers::start(
                &self.places[&Place::Pod(pod.clone())],
                &pod,
                &self.config.ports,
            )?;
            self.sctp = s.sctp;
            self.servers.lock().expect("not poisoned").push(s);
        }
        Ok(())
    }

    /// The address plan (pods' and nodes' addresses).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The lab's settings.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The prefix every namespace name of this lab starts with (`kpl-<pid>-<n>` for a test lab).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace this lab made.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The namespace name behind a place (for `ip netns exec`, or a daemon's config).
    pub fn ns(&self, place: &Place) -> Result<&str, LabError> {
        self.places
            .get(place)
            .map(String::as_str)
            .ok_or_else(|| LabError::Unknown(place.to_string()))
    }

    /// Whether the kernel has SCTP sockets (the pods serve SCTP only then).
    pub fn has_sctp(&self) -> bool {
        self.sctp
    }

    /// Adds a namespace with only loopback, for experiments that must not disturb the topology.
    pub fn add_scratch(&mut self, name: &str) -> Result<Place, LabError> {
        check_name(name)?;
        let place = Place::Scratch(name.into());
        if self.places.contains_key(&place) {
            return Err(LabError::BadName(name.into()));
        }
        self.add_ns(place.clone(), &format!("s-{name}"))?;
        Ok(place)
    }

    /// Starts servers answering as `name` on `ports` in any place (e.g. the node or a scratch
    /// namespace); they stop when the lab drops.
    pub fn serve(&self, place: &Place, name: &str, ports: &[u16]) -> Result<(), LabError> {
        let s = server::Servers::start(self.ns(place)?, name, ports)?;
        self.servers.lock().expect("not poisoned").push(s);
        Ok(())
    }

    /// Runs `f` on a thread that has entered `place`'s namespace; sockets it opens and
    /// processes it spawns live there. A panic in `f` is re-raised here.
    pub fn run_in<R: Send>(
        &self,
        place: &Place,
        f: impl FnOnce() -> R + Send,
    ) -> Result<R, LabError> {
        netns::run_in(self.ns(place)?, f)
    }

    /// Spawns `cmd` inside `place` (forked from a thread in that namespace, so the command's own
    /// stdio settings are kept). The lab kills it on drop if it is still running.
    pub fn spawn_in(&self, place: &Place, mut cmd: Command) -> Result<Child, LabError> {
        let what = format!("{cmd:?}");
        self.run_in(place, move || cmd.spawn())?
            .map_err(|e| LabError::Command {
                command: what,
                reason: e.to_string(),
            })
    }

    /// Runs a command inside `place` and returns its output, whatever its exit status.
    pub fn exec(&self, place: &Place, args: &[&str]) -> Result<Output, LabError> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Unknown("command (empty argument list)".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(rest);
        self.run_in(place, move || cmd.output())?
            .map_err(|e| LabError::Command {
                command: args.join(" "),
                reason: e.to_string(),
            })
    }

    /// Runs a command inside `place`, failing with its stderr when it exits non-zero; returns
    /// its stdout.
    pub fn exec_ok(&self, place: &Place, args: &[&str]) -> Result<String, LabError> {
        let out = self.exec(place, args)?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("{} (in {place})", args.join(" ")),
                reason: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The default request options: ephemeral source, the lab's timeout.
    pub fn options(&self, src: Option<IpAddr>) -> RequestOptions {
        RequestOptions {
            src,
            src_port: None,
            timeout: self.config.timeout,
        }
    }

    /// Sends one request from `from` to `dst` and says what came back. `src` picks the source
    /// address (e.g. the blocked client's address in [`Place::External`]).
    pub fn request(
        &self,
        from: &Place,
        dst: SocketAddr,
        proto: Protocol,
        src: Option<IpAddr>,
    ) -> Outcome {
        self.request_with(from, dst, proto, &self.options(src))
    }

    /// [`Lab::request`] with every option (fixed source port, own timeout).
    pub fn request_with(
        &self,
        from: &Place,
        dst: SocketAddr,
        proto: Protocol,
        opts: &RequestOptions,
    ) -> Outcome {
        match self.run_in(from, || client::request(dst, proto, opts)) {
            Ok(o) => o,
            Err(e) => Outcome::Other(e.to_string()),
        }
    }

    /// Sends `n` requests (each from a new source port) and counts who answered. Gives up after
    /// 20 unanswered requests, so a broken dataplane costs seconds, not `n` timeouts.
    pub fn spread(&self, from: &Place, dst: SocketAddr, proto: Protocol, n: usize) -> Tally {
        self.spread_with(from, dst, proto, n, &self.options(None))
    }

    /// [`Lab::spread`] with every option.
    pub fn spread_with(
        &self,
        from: &Place,
        dst: SocketAddr,
        proto: Protocol,
        n: usize,
        opts: &RequestOptions,
    ) -> Tally {
        self.send_many(from, dst, proto, n, 20, opts)
    }

    /// Sends up to `n` requests one after the other and counts; stops once `max_failures`
    /// requests went unanswered (so expected drops cost only the timeouts asked for).
    pub fn send_many(
        &self,
        from: &Place,
        dst: SocketAddr,
        proto: Protocol,
        n: usize,
        max_failures: usize,
        opts: &RequestOptions,
    ) -> Tally {
        match self.run_in(from, || client::spread(dst, proto, n, max_failures, opts)) {
            Ok(t) => t,
            Err(e) => {
                let mut t = Tally::default();
                t.add(Outcome::Other(e.to_string()));
                t
            }
        }
    }

    /// `GET path` over HTTP from `from`; the status code, or what happened instead.
    pub fn http_status(
        &self,
        from: &Place,
        dst: SocketAddr,
        path: &str,
        src: Option<IpAddr>,
    ) -> Result<u16, Outcome> {
        let opts = self.options(src);
        self.run_in(from, || client::http_status(dst, path, &opts))
            .map_err(|e| Outcome::Other(e.to_string()))?
    }

    /// The address of `place` in `family` that a request from there carries by default (for a
    /// pod, its own IP; for the external namespace, the client address; for the nodes, their
    /// underlay address); `None` for scratch namespaces.
    pub fn address(&self, place: &Place, family: IpFamily) -> Option<IpAddr> {
        match place {
            Place::Node => Some(self.plan.node_underlay.get(family)),
            Place::Remote => Some(self.plan.remote_underlay.get(family)),
            Place::External => Some(self.plan.external_client.get(family)),
            Place::Pod(p) => self.plan.pod(p).map(|p| p.ip.get(family)),
            Place::Scratch(_) => None,
        }
    }

    fn teardown(&mut self) {
        let mut servers =
            std::mem::take(&mut *self.servers.lock().unwrap_or_else(|p| p.into_inner()));
        for s in &mut servers {
            s.stop();
        }
        drop(servers);
        // End what was started inside (daemons, spawned commands): the only processes whose
        // network namespace is one of ours.
        let me = std::process::id() as i32;
        let pids: Vec<i32> = self
            .namespaces
            .iter()
            .flat_map(|ns| netns::pids(ns))
            .filter(|p| *p != me)
            .collect();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while pids
            .iter()
            .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for ns in &self.namespaces {
            for pid in netns::pids(ns).into_iter().filter(|p| *p != me) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::delete(&ns) {
                eprintln!("lab: could not delete namespace {ns}: {e}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    netns::run(&full).map(|_| ())
}

fn addr(ns: &str, dev: &str, cidr: &str) -> Result<(), LabError> {
    if cidr.contains(':') {
        ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])
    } else {
        ip(ns, &["addr", "add", cidr, "dev", dev])
    }
}

/// A veth pair with one end in each namespace, both up; nothing appears in the host namespace.
fn link_pair(a: &str, a_dev: &str, b: &str, b_dev: &str) -> Result<(), LabError> {
    ip(
        a,
        &[
            "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b,
        ],
    )?;
    ip(a, &["link", "set", a_dev, "up"])?;
    ip(b, &["link", "set", b_dev, "up"])
}
