//! The Prometheus text exposition format (version 0.0.4), written from prometheus-client's
//! OpenMetrics text.
//!
//! prometheus-client only writes OpenMetrics. The two formats differ in three ways that matter
//! for what kproxy exports: OpenMetrics names a counter family without its `_total` suffix
//! (the samples carry it), has `# UNIT` lines, and ends with `# EOF`. Prometheus servers read
//! either (kproxy answers OpenMetrics when the scraper asks for it), but other scrapers and
//! strict parsers expect 0.0.4, which is what kube-proxy serves by default.

/// The content type of [`openmetrics_to_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Rewrites OpenMetrics text as Prometheus 0.0.4 text: counter families are named with their
/// `_total` suffix in `# HELP` / `# TYPE`, `# UNIT` and `# EOF` lines are dropped; samples are
/// unchanged.
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // prometheus-client writes HELP before TYPE; hold HELP until TYPE tells the family's type.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let pending = help
                .take()
                .filter(|(n, _)| *n == rest.split(' ').next().unwrap_or(""));
            flush_help(&mut out, pending, Some(&name));
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        flush_help(&mut out, help.take(), None);
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help.take(), None);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, renamed: Option<&str>) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(renamed.unwrap_or(name));
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_and_eof_goes() {
        let om = "# HELP a_changes Changes.\n# TYPE a_changes counter\na_changes_total 3\n\
                  # HELP b_total A gauge.\n# TYPE b_total gauge\nb_total{x=\"1\"} 2\n\
                  # HELP h Hist.\n# TYPE h histogram\n# UNIT h seconds\nh_bucket{le=\"+Inf\"} 1\n\
                  h_sum 0.5\nh_count 1\n# EOF\n";
        let prom = openmetrics_to_prometheus(om);
        assert_eq!(
            prom,
            "# HELP a_changes_total Changes.\n# TYPE a_changes_total counter\na_changes_total 3\n\
             # HELP b_total A gauge.\n# TYPE b_total gauge\nb_total{x=\"1\"} 2\n\
             # HELP h Hist.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n"
        );
    }
}
