//! Runs cases: hands each step's objects to a [`ServiceDriver`], sends the probes from the lab
//! and compares what came back with what must happen.

use super::case::{Case, ConfigOverrides, Expect, Probe, Sender, Source, Step};
use super::service::Addresses;
use crate::lab::{client::Tally, Lab};
use kproxy_plugin_api::Capabilities;
use serde_json::Value;
use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

/// How long a health-check node port may take to reflect a step after the dataplane has it.
const HEALTH_CHECK_SETTLE: Duration = Duration::from_secs(3);

/// Gets a case's objects into the dataplane under test. Implemented by whoever runs a dataplane
/// in the lab's node namespace (e.g. the kproxy daemon on a manifest folder).
pub trait ServiceDriver {
    /// The dataplane's name, to pick a probe's documented exceptions (e.g. `"iptables"`).
    fn dataplane(&self) -> &str;

    /// The features the dataplane claims; cases needing others are skipped.
    fn capabilities(&self) -> Capabilities;

    /// Whether health-check node ports are served (the daemon does; a bare plugin does not).
    fn serves_health_checks(&self) -> bool {
        false
    }

    /// Switches the daemon settings the case needs; called before each case's first step, also
    /// with the defaults, so the previous case's overrides are undone. The default accepts only
    /// the defaults.
    fn configure(&mut self, config: &ConfigOverrides) -> anyhow::Result<()> {
        anyhow::ensure!(
            config.is_default(),
            "this driver cannot change daemon settings ({config:?})"
        );
        Ok(())
    }

    /// Makes `objects` the complete set of objects the dataplane serves — everything not in it
    /// is deleted — and returns once the dataplane has programmed that state. The objects are
    /// the two Node objects of the lab followed by the step's Service and EndpointSlices.
    fn apply(&mut self, objects: &[Value]) -> anyhow::Result<()>;
}

/// How a case ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// Every probe did what it must.
    Passed,
    /// The case does not apply here; says why.
    Skipped(String),
}

/// A failed case: which case, which step and probe, what was sent, what was expected and what
/// came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFailure {
    /// The case's name.
    pub case: String,
    /// The step (1-based) and what it set up.
    pub step: String,
    /// The service set-up, in one line.
    pub setup: String,
    /// What was sent: sender, target, address, protocol, count.
    pub sent: String,
    /// What had to happen.
    pub expected: String,
    /// What happened.
    pub got: String,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case {} failed at {}", self.case, self.step)?;
        writeln!(f, "  set-up:   {}", self.setup)?;
        writeln!(f, "  sent:     {}", self.sent)?;
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  got:      {}", self.got)
    }
}

impl std::error::Error for CaseFailure {}

/// Runs one case. Skips it (with the reason) when the driver lacks a capability, health-check
/// servers, or the kernel lacks SCTP.
// A failure happens once per failed case and is read by people; plain string fields are worth
// more here than a boxed error.
#[allow(clippy::result_large_err)]
pub fn run_case(
    lab: &Lab,
    case: &Case,
    driver: &mut dyn ServiceDriver,
) -> Result<Ran, CaseFailure> {
    let missing = Capabilities(case.required().0 & !driver.capabilities().0);
    if missing.0 != 0 {
        return Ok(Ran::Skipped(format!(
            "dataplane lacks {}",
            missing.names().join(", ")
        )));
    }
    if case.needs_health_server && !driver.serves_health_checks() {
        return Ok(Ran::Skipped(
            "needs the daemon's health-check servers".into(),
        ));
    }
    if case.needs_sctp() && !lab.has_sctp() {
        return Ok(Ran::Skipped(
            "needs SCTP sockets, which this kernel lacks: run in the qemu guest".into(),
        ));
    }
    let fail = |step: &str, setup: &str, sent: String, expected: String, got: String| CaseFailure {
        case: case.name.clone(),
        step: step.into(),
        setup: setup.into(),
        sent,
        expected,
        got,
    };
    driver.configure(&case.config).map_err(|e| {
        fail(
            "configure",
            "",
            format!("settings {:?}", case.config),
            "accepted".into(),
            format!("{e:#}"),
        )
    })?;
    for (i, step) in case.steps.iter().enumerate() {
        let step_name = format!("step {} ({})", i + 1, step.what);
        let setup = describe(step);
        let mut objects = lab.plan().node_objects();
        objects.extend(step.service.objects(lab.plan(), case.slot));
        driver.apply(&objects).map_err(|e| {
            fail(
                &step_name,
                &setup,
                format!("{} objects", objects.len()),
                "applied".into(),
                format!("{e:#}"),
            )
        })?;
        for probe in &step.probes {
            let (expect, why) = probe.expectation_for(driver.dataplane());
            if let Err((sent, got)) = run_probe(lab, case, step, probe, expect) {
                let expected = match why {
                    Some(why) => format!("{expect} ({} exception: {why})", driver.dataplane()),
                    None => expect.to_string(),
                };
                return Err(fail(&step_name, &setup, sent, expected, got));
            }
        }
    }
    Ok(Ran::Passed)
}

fn describe(step: &Step) -> String {
    let s = &step.service;
    let mut parts = vec![format!("{:?} {}", s.kind, s.name)];
    parts.push(format!("families {:?}", s.families));
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| format!("{}/{}→{}", p.port, p.protocol.as_str(), p.target_port))
        .collect();
    parts.push(format!("ports {}", ports.join(",")));
    for (i, slice) in s.slices.iter().enumerate() {
        let eps: Vec<String> = slice
            .iter()
            .map(|e| {
                let mut t = e.pod.clone();
                if !e.ready {
                    t += if e.terminating {
                        "(terminating"
                    } else {
                        "(not-ready"
                    };
                    t += if e.serving { ",serving)" } else { ")" };
                }
                if let Some(z) = e.zone_hint {
                    t += &format!("[hint {z}]");
                }
                t
            })
            .collect();
        parts.push(format!("slice {i}: [{}]", eps.join(" ")));
    }
    for (on, what) in [
        (s.external_local, "externalTrafficPolicy=Local"),
        (s.internal_local, "internalTrafficPolicy=Local"),
        (s.external_ips, "externalIPs"),
        (
            s.source_range_client_only,
            "loadBalancerSourceRanges=client",
        ),
        (s.ip_mode_proxy, "ipMode=Proxy"),
        (s.topology_auto, "topology-mode=Auto"),
    ] {
        if on {
            parts.push(what.into());
        }
    }
    if let Some(t) = s.affinity_timeout {
        parts.push(format!("ClientIP affinity {t}s"));
    }
    parts.join(", ")
}

/// Sends a probe; `Err((what was sent, what came back))` when the expectation is not met.
fn run_probe(
    lab: &Lab,
    case: &Case,
    step: &Step,
    probe: &Probe,
    expect: &Expect,
) -> Result<(), (String, String)> {
    let plan = lab.plan();
    let (dst, proto) = probe.destination(plan, &step.service, case.slot);
    let bind = probe.sender.bind(plan, probe.family);
    let mut opts = lab.options(bind);
    if probe.fixed_source_port {
        opts.src_port = Some(Addresses::of(case.slot).fixed_source_port());
    }
    let place = probe.sender.place();
    let tries = match expect {
        // An exception may expect something slower or quicker than the table's default.
        e if *e != probe.expect => e.default_tries(),
        _ => probe.tries,
    };
    let sent = format!(
        "{tries} × {} from {}{} to {} {dst} ({})",
        proto.as_str(),
        probe.sender,
        bind.map(|b| format!(" [{b}]")).unwrap_or_default(),
        probe.target,
        if probe.fixed_source_port {
            "fixed source port"
        } else {
            "new source port each"
        },
    );
    let target_port = step.service.ports[probe.port].target_port;
    let fail = |got: String| Err((sent.clone(), got));
    match expect {
        Expect::HttpStatus(want) => {
            // The driver knows when the dataplane has the step; the health-check server is
            // updated after that sync (as upstream's), so ask until it answers as wanted.
            let deadline = Instant::now() + HEALTH_CHECK_SETTLE;
            loop {
                let got = lab.http_status(&place, dst, "/healthz", bind);
                match got {
                    Ok(code) if code == *want => return Ok(()),
                    _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    Ok(code) => return fail(format!("HTTP {code}")),
                    Err(o) => return fail(o.to_string()),
                }
            }
        }
        Expect::AffinityExpires {
            pods,
            rounds,
            timeout_seconds,
        } => {
            let mut chosen = BTreeSet::new();
            for round in 0..*rounds {
                let tally = lab.send_many(&place, dst, proto, 3, 1, &opts);
                if tally.failures() > 0 || tally.answered.len() != 1 {
                    return fail(format!("round {}: {tally}", round + 1));
                }
                let pod = tally.answered.keys().next().expect("one pod").clone();
                if !pods.contains(&pod) {
                    return fail(format!("round {}: {tally}", round + 1));
                }
                chosen.insert(pod);
                std::thread::sleep(Duration::from_secs(u64::from(*timeout_seconds) + 1));
            }
            if chosen.len() < 2 {
                return fail(format!("the same pod in all {rounds} rounds: {chosen:?}"));
            }
            Ok(())
        }
        _ => {
            let tally = lab.send_many(
                &place,
                dst,
                proto,
                tries,
                max_failures(expect, tries),
                &opts,
            );
            match check(
                expect,
                &tally,
                &probe.sender,
                plan,
                probe.family,
                target_port,
            ) {
                Ok(()) => Ok(()),
                Err(why) => fail(format!("{why}: {tally}")),
            }
        }
    }
}

/// How many failures a probe tolerates before it stops sending (failures are what some
/// expectations want; for the others, one is enough to fail).
fn max_failures(expect: &Expect, tries: usize) -> usize {
    match expect {
        Expect::Refused | Expect::Dropped | Expect::NotServed => tries,
        Expect::Spread { .. } => 20,
        _ => 1,
    }
}

fn check(
    expect: &Expect,
    t: &Tally,
    sender: &Sender,
    plan: &crate::lab::Plan,
    family: kproxy_plugin_api::IpFamily,
    target_port: u16,
) -> Result<(), String> {
    let answered: usize = t.answered.values().sum();
    let allowed = |pods: &[String]| -> Result<(), String> {
        match t.answered.keys().find(|p| !pods.contains(p)) {
            Some(p) => Err(format!("{p} answered, which must not")),
            None => Ok(()),
        }
    };
    let all_answered = || -> Result<(), String> {
        if t.failures() > 0 || t.sent == 0 {
            return Err("not every request was answered".into());
        }
        if t.ports.iter().any(|p| *p != target_port) {
            return Err(format!(
                "answered on a port other than the target port {target_port}"
            ));
        }
        Ok(())
    };
    match expect {
        Expect::Answer { pods, all, source } => {
            all_answered()?;
            allowed(pods)?;
            if *all {
                if let Some(p) = pods.iter().find(|p| !t.answered.contains_key(*p)) {
                    return Err(format!("{p} never answered"));
                }
            }
            let ok: Vec<IpAddr> = match source {
                Source::Any => return Ok(()),
                Source::Client => sender.own_addresses(plan, family),
                Source::Node => plan.node_addresses(),
            };
            match t.sources.iter().find(|s| !ok.contains(s)) {
                Some(s) => Err(format!("source {s} seen, expected one of {ok:?}")),
                None => Ok(()),
            }
        }
        Expect::Sticky { pods } => {
            all_answered()?;
            allowed(pods)?;
            if t.answered.len() != 1 {
                return Err("answers came from more than one pod".into());
            }
            Ok(())
        }
        Expect::Spread {
            pods,
            min_percent,
            max_percent,
        } => {
            all_answered()?;
            allowed(pods)?;
            for p in pods {
                let pct = t.percent(p);
                if pct < *min_percent || pct > *max_percent {
                    return Err(format!("{p} got {pct:.1} %"));
                }
            }
            Ok(())
        }
        Expect::Refused => (t.refused == t.sent && t.sent > 0)
            .then_some(())
            .ok_or_else(|| "not every request was refused".into()),
        Expect::Dropped => (t.dropped == t.sent && t.sent > 0)
            .then_some(())
            .ok_or_else(|| "not every request was dropped".into()),
        Expect::NotServed => (answered == 0)
            .then_some(())
            .ok_or_else(|| "a server answered".into()),
        Expect::HttpStatus(_) | Expect::AffinityExpires { .. } => Ok(()),
    }
}

/// What a whole table run did.
#[derive(Debug, Default)]
pub struct TableReport {
    /// Cases that passed.
    pub passed: Vec<String>,
    /// Cases skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Cases that failed.
    pub failed: Vec<CaseFailure>,
}

impl TableReport {
    /// Panics with every failure when any case failed; prints the summary either way.
    pub fn assert_passed(&self) {
        println!("{self}");
        assert!(
            self.failed.is_empty(),
            "{} packet-flow case(s) failed",
            self.failed.len()
        );
    }
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "packet-flow table: {} passed, {} skipped, {} failed",
            self.passed.len(),
            self.skipped.len(),
            self.failed.len()
        )?;
        for (case, why) in &self.skipped {
            writeln!(f, "  skipped {case}: {why}")?;
        }
        for failure in &self.failed {
            writeln!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// Runs every case (skipping those that do not apply) and collects the results, so one report
/// shows every failure at once.
pub fn run_table(lab: &Lab, cases: &[Case], driver: &mut dyn ServiceDriver) -> TableReport {
    let mut report = TableReport::default();
    for case in cases {
        match run_case(lab, case, driver) {
            Ok(Ran::Passed) => report.passed.push(case.name.clone()),
            Ok(Ran::Skipped(why)) => report.skipped.push((case.name.clone(), why)),
            Err(f) => {
                eprintln!("{f}");
                report.failed.push(f)
            }
        }
    }
    report
}
