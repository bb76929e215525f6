//! Counting who answered and printing it as a small table.
//!
//! Pure: the demo feeds in what each request got back, and the table says per backend how many
//! answers it gave, its share, and which source address it saw — the client's own (kept) or the
//! node's (masqueraded) — so a reader sees both the load balancing and the NAT at a glance.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

/// What the answers to a batch of requests were, per backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests sent.
    pub sent: usize,
    /// Per backend: answers and the source addresses it saw.
    pub backends: BTreeMap<String, (usize, BTreeSet<IpAddr>)>,
    /// Requests nobody answered, by what happened instead.
    pub failed: BTreeMap<String, usize>,
}

impl Counts {
    /// Records an answer from `backend`, which saw the request come from `source`.
    pub fn answered(&mut self, backend: &str, source: IpAddr) {
        self.sent += 1;
        let entry = self.backends.entry(backend.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(source);
    }

    /// Records a request that got no answer, and why.
    pub fn failed(&mut self, what: &str) {
        self.sent += 1;
        *self.failed.entry(what.to_string()).or_default() += 1;
    }

    /// Answers `backend` gave.
    pub fn count(&self, backend: &str) -> usize {
        self.backends.get(backend).map_or(0, |(n, _)| *n)
    }

    /// Requests without an answer.
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }
}

/// How a source address the backends saw is described: `kept` when it is the client's own,
/// `masqueraded` when it is one of the node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The client's address.
    pub client: IpAddr,
    /// The node's addresses.
    pub node: Vec<IpAddr>,
}

impl Sources {
    fn describe(&self, ip: IpAddr) -> String {
        if ip == self.client {
            format!("{ip} (the client's own)")
        } else if self.node.contains(&ip) {
            format!("{ip} (the node's: masqueraded)")
        } else {
            ip.to_string()
        }
    }
}

/// The table for `counts`: one row per backend in `backends` (in that order, zero rows
/// included, so a backend scaled away shows as 0), then any backend not listed, then failures.
/// Every line starts with `indent`.
pub fn table(counts: &Counts, backends: &[String], sources: &Sources, indent: &str) -> String {
    let mut names: Vec<&str> = backends.iter().map(String::as_str).collect();
    for extra in counts.backends.keys() {
        if !names.contains(&extra.as_str()) {
            names.push(extra);
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{indent}{:<width$}  {:>5}  {:>6}  {:<20}  source the backend saw",
        "backend", "count", "share", ""
    );
    for name in names {
        let (n, seen) = counts
            .backends
            .get(name)
            .map_or((0, None), |(n, s)| (*n, Some(s)));
        let share = if counts.sent == 0 {
            0.0
        } else {
            100.0 * n as f64 / counts.sent as f64
        };
        let bar = "#".repeat((share / 5.0).round() as usize);
        let seen = seen
            .map(|s| {
                s.iter()
                    .map(|ip| sources.describe(*ip))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{indent}{name:<width$}  {n:>5}  {share:>5.1}%  {bar:<20}  {seen}"
        );
    }
    for (what, n) in &counts.failed {
        let _ = writeln!(out, "{indent}{:<width$}  {n:>5}  ({what})", "no answer");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_add_up_and_remember_sources() {
        let mut c = Counts::default();
        c.answered("web-a", ip("10.0.0.1"));
        c.answered("web-a", ip("10.0.0.2"));
        c.answered("web-b", ip("10.0.0.1"));
        c.failed("timed out");
        assert_eq!(c.sent, 4);
        assert_eq!(
            (c.count("web-a"), c.count("web-b"), c.count("web-c")),
            (2, 1, 0)
        );
        assert_eq!(c.failures(), 1);
        assert_eq!(c.backends["web-a"].1.len(), 2);
    }

    #[test]
    fn the_table_shows_every_backend_its_share_and_what_it_saw() {
        let mut c = Counts::default();
        for _ in 0..3 {
            c.answered("web-a", ip("10.10.0.1"));
        }
        c.answered("web-b", ip("172.30.0.10"));
        let sources = Sources {
            client: ip("172.30.0.10"),
            node: vec![ip("10.10.0.1")],
        };
        let names = vec!["web-a".to_string(), "web-b".into(), "web-c".into()];
        let t = table(&c, &names, &sources, "  ");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("  backend"));
        assert!(
            lines[1].contains("web-a") && lines[1].contains(" 3 "),
            "{t}"
        );
        assert!(
            lines[1].contains("75.0%") && lines[1].contains("masqueraded"),
            "{t}"
        );
        assert!(
            lines[2].contains("25.0%") && lines[2].contains("client's own"),
            "{t}"
        );
        assert!(
            lines[3].contains("web-c") && lines[3].contains("0.0%"),
            "{t}"
        );
        assert!(lines[3].trim_end().ends_with('-'), "{t}");
    }

    #[test]
    fn failures_and_unexpected_backends_get_their_own_rows() {
        let mut c = Counts::default();
        c.answered("other", ip("10.0.0.9"));
        c.failed("refused");
        let sources = Sources {
            client: ip("10.0.0.1"),
            node: vec![],
        };
        let t = table(&c, &["web-a".to_string()], &sources, "");
        assert!(t.contains("other"), "{t}");
        assert!(t.contains("no answer") && t.contains("(refused)"), "{t}");
        assert!(
            t.contains("10.0.0.9\n"),
            "an address nobody owns is shown plainly: {t}"
        );
    }
}
