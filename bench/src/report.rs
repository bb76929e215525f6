//! Prints the tables, writes the CSV files and draws the plots. Every figure that has a
//! reference is printed beside it with their ratio, both from the same run; every figure that
//! has a target from issue 7 says whether it meets it.

use crate::{
    cluster::thousands,
    datapath::DatapathResult,
    scale::{ChangeKind, ScaleResult},
    stats::{summarize, Summary},
};
use plotters::prelude::*;
use std::{fmt::Write as _, fs, path::Path, time::Duration};

/// Issue 7's targets.
pub mod targets {
    use std::time::Duration;
    /// Full sync of 44,000 services.
    pub const FULL_SYNC_44K: Duration = Duration::from_secs(2);
    /// Full sync of 5,000 × 50.
    pub const FULL_SYNC_250K: Duration = Duration::from_secs(5);
    /// kproxy's full sync over the reference's.
    pub const FULL_SYNC_RATIO: f64 = 1.3;
    /// p99 of one change, ms.
    pub const CHANGE_P99_MS: f64 = 10.0;
    /// Peak RSS at 250,000 endpoints, KiB.
    pub const RSS_250K_KIB: u64 = 200 * 1024;
    /// Data path p50 at 30,000 services over p50 at 10 (nftables).
    pub const DATAPATH_RATIO: f64 = 1.1;
    /// The same for iptables.
    pub const DATAPATH_RATIO_IPTABLES: f64 = 2.0;
}

/// Whether issue 7's targets that it sets for nftables alone (absolute full-sync times, the
/// p99 of one change) apply to dataplane `name`.
fn nftables_only_targets_apply(name: &str) -> bool {
    name == "nftables"
}

/// The data path target (p50 at 30,000 services over p50 at 10) for dataplane `name`.
fn datapath_target(name: &str) -> f64 {
    if name == "iptables" {
        targets::DATAPATH_RATIO_IPTABLES
    } else {
        targets::DATAPATH_RATIO
    }
}

/// What the floor under one change is, for dataplane `name`.
fn change_floor_text(name: &str) -> &'static str {
    if name == "iptables" {
        "reference: the smallest `iptables-restore --noflush -w` of that kind (one chain with \
         one jump) on the same tables, process start included"
    } else {
        "reference: the kernel's own time for the smallest commit of that kind (one endpoint \
         element added to a slot map) on the same table"
    }
}

/// Everything one dataplane measured.
#[derive(Debug, Clone)]
pub struct DataplaneResults {
    /// Plugin name.
    pub name: String,
    /// The reference tool (`nft -f`).
    pub reference: String,
    /// Scenarios 1–3, per size.
    pub scale: Vec<ScaleResult>,
    /// Scenario 4, per size.
    pub datapath: Vec<DatapathResult>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets"
    } else {
        "MISSES"
    }
}

/// The full-sync target for a size, if issue 7 sets one for dataplane `name`.
fn sync_target(name: &str, r: &ScaleResult) -> Option<Duration> {
    if !nftables_only_targets_apply(name) {
        return None;
    }
    match (r.shape.services, r.shape.endpoints) {
        (44_000, 1) => Some(targets::FULL_SYNC_44K),
        (5_000, 50) => Some(targets::FULL_SYNC_250K),
        _ => None,
    }
}

/// The tables, as text.
pub fn tables(d: &DataplaneResults) -> String {
    let mut out = String::new();
    let w = &mut out;
    if !d.scale.is_empty() {
        let _ = writeln!(
            w,
            "\n[{}] 1. Full sync (from the state known to the kernel having it), reference: {} of the \
             same rules saved from the kernel",
            d.name, d.reference
        );
        if d.name == "iptables" {
            let _ = writeln!(
                w,
                "(kproxy writes with `--noflush -w`, as upstream, cut into transactions on \
                 iptables-nft; the reference is a plain restore, which replaces each table whole \
                 in one transaction: into empty tables, and over the same rules)"
            );
        }
        let _ = writeln!(
            w,
            "{:<14} {:>9} | {:>11} {:>11} {:>6} | {:>13} {:>13} {:>6} | target",
            "size",
            "endpoints",
            "kproxy",
            d.reference,
            "ratio",
            "kproxy (repl)",
            "ref (repl)",
            "ratio"
        );
        for r in &d.scale {
            let f = ms(r.kproxy_fresh) / ms(r.reference_fresh);
            let p = ms(r.kproxy_replace) / ms(r.reference_replace);
            let mut target = format!(
                "ratio ≤ {}: {}",
                targets::FULL_SYNC_RATIO,
                verdict(f <= targets::FULL_SYNC_RATIO && p <= targets::FULL_SYNC_RATIO)
            );
            if let Some(t) = sync_target(&d.name, r) {
                let worst = r.kproxy_fresh.max(r.kproxy_replace);
                let _ = write!(
                    target,
                    "; ≤ {:.0} s: {}",
                    t.as_secs_f64(),
                    verdict(worst <= t)
                );
            }
            let _ = writeln!(
                w,
                "{:<14} {:>9} | {:>8.0} ms {:>8.0} ms {:>5.2}x | {:>10.0} ms {:>10.0} ms {:>5.2}x | {}",
                r.shape.label(),
                thousands(r.shape.total_endpoints()),
                ms(r.kproxy_fresh),
                ms(r.reference_fresh),
                f,
                ms(r.kproxy_replace),
                ms(r.reference_replace),
                p,
                target
            );
        }

        let _ = writeln!(
            w,
            "\n[{}] 2. One change at scale: API server write to the nf_tables commit carrying it (ms)",
            d.name
        );
        let _ = writeln!(w, "{}", change_floor_text(&d.name));
        let change_target = nftables_only_targets_apply(&d.name);
        let _ = writeln!(
            w,
            "{:<14} {:<12} {:>5} {:>8} {:>8} {:>8} | {:>10} {:>7} | {}",
            "size",
            "change",
            "n",
            "p50",
            "p99",
            "max",
            "floor p50",
            "ratio",
            if change_target {
                format!("target p99 ≤ {} ms", targets::CHANGE_P99_MS)
            } else {
                "no target (issue 7 sets one for nftables)".to_string()
            }
        );
        for r in &d.scale {
            for kind in ChangeKind::ALL {
                let samples: Vec<Duration> = r
                    .changes
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, d)| *d)
                    .collect();
                if let Some(s) = summarize(&samples) {
                    let (floor, ratio) = match summarize(&r.commit_floor) {
                        Some(f) => (format!("{:.2}", f.p50), format!("{:.2}x", s.p50 / f.p50)),
                        None => ("-".into(), "-".into()),
                    };
                    let _ = writeln!(
                        w,
                        "{:<14} {:<12} {:>5} {:>8.2} {:>8.2} {:>8.2} | {:>10} {:>7} | {}",
                        r.shape.label(),
                        kind.name(),
                        s.n,
                        s.p50,
                        s.p99,
                        s.max,
                        floor,
                        ratio,
                        if change_target {
                            verdict(s.p99 <= targets::CHANGE_P99_MS)
                        } else {
                            "-"
                        }
                    );
                }
            }
            if r.other_commits > 0 {
                let _ = writeln!(
                    w,
                    "{:<14} {} commit(s) by others while waiting (not counted)",
                    r.shape.label(),
                    r.other_commits
                );
            }
            if r.lost > 0 {
                let _ = writeln!(
                    w,
                    "{:<14} {} change(s) not seen in the kernel within the timeout",
                    r.shape.label(),
                    r.lost
                );
            }
        }

        let _ = writeln!(w, "\n[{}] 3. Memory of the daemon", d.name);
        let _ = writeln!(
            w,
            "{:<14} {:>9} | {:>12} {:>12} | target",
            "size", "endpoints", "peak (HWM)", "RSS at end"
        );
        for r in &d.scale {
            let target = if r.shape.total_endpoints() == 250_000 {
                format!(
                    "≤ {} MB: {}",
                    targets::RSS_250K_KIB / 1024,
                    verdict(r.vm_hwm_kib <= targets::RSS_250K_KIB)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                w,
                "{:<14} {:>9} | {:>9.1} MB {:>9.1} MB | {}",
                r.shape.label(),
                thousands(r.shape.total_endpoints()),
                r.vm_hwm_kib as f64 / 1024.0,
                r.vm_rss_kib as f64 / 1024.0,
                target
            );
        }
    }

    if !d.datapath.is_empty() {
        let _ = writeln!(
            w,
            "\n[{}] 4. Data path: TCP connect + one round trip, pod → cluster IP vs pod → pod (µs)",
            d.name
        );
        let _ = writeln!(
            w,
            "{:>9} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>12} | target",
            "services",
            "svc p50",
            "pod p50",
            "ratio",
            "svc p99",
            "pod p99",
            "ratio",
            "p50 / p50@10"
        );
        let base = d
            .datapath
            .first()
            .and_then(|r| summarize(&r.via_service))
            .map(|s| s.p50);
        for r in &d.datapath {
            let (Some(v), Some(p)) = (summarize(&r.via_service), summarize(&r.direct)) else {
                continue;
            };
            let growth = base.map_or(1.0, |b| v.p50 / b);
            let limit = datapath_target(&d.name);
            let target = if r.services >= 30_000 {
                format!("≤ {}: {}", limit, verdict(growth <= limit))
            } else {
                String::new()
            };
            let _ = writeln!(
                w,
                "{:>9} | {:>9.0} {:>9.0} {:>5.2}x | {:>9.0} {:>9.0} {:>5.2}x | {:>11.2}x | {}",
                thousands(r.services),
                v.p50 * 1e3,
                p.p50 * 1e3,
                v.p50 / p.p50,
                v.p99 * 1e3,
                p.p99 * 1e3,
                v.p99 / p.p99,
                growth,
                target
            );
        }
    }
    out
}

/// Writes the CSV files into `dir`.
pub fn write_csv(dir: &Path, results: &[DataplaneResults]) -> anyhow::Result<()> {
    let mut full = String::from(
        "dataplane,services,endpoints_per_service,endpoints,kproxy_fresh_ms,reference_fresh_ms,\
         ratio_fresh,kproxy_replace_ms,reference_replace_ms,ratio_replace,rules_bytes\n",
    );
    let mut change = String::from("dataplane,services,endpoints_per_service,change,latency_ms\n");
    let mut change_sum = String::from(
        "dataplane,services,endpoints_per_service,change,n,p50_ms,p99_ms,max_ms,lost,\
         kernel_floor_p50_ms\n",
    );
    let mut memory =
        String::from("dataplane,services,endpoints_per_service,endpoints,vm_hwm_kib,vm_rss_kib\n");
    let mut datapath = String::from("dataplane,services,path,n,p50_us,p99_us,max_us\n");
    for d in results {
        for r in &d.scale {
            let s = r.shape;
            let _ = writeln!(
                full,
                "{},{},{},{},{:.1},{:.1},{:.3},{:.1},{:.1},{:.3},{}",
                d.name,
                s.services,
                s.endpoints,
                s.total_endpoints(),
                ms(r.kproxy_fresh),
                ms(r.reference_fresh),
                ms(r.kproxy_fresh) / ms(r.reference_fresh),
                ms(r.kproxy_replace),
                ms(r.reference_replace),
                ms(r.kproxy_replace) / ms(r.reference_replace),
                r.dump_bytes
            );
            for (k, lat) in &r.changes {
                let _ = writeln!(
                    change,
                    "{},{},{},{},{:.3}",
                    d.name,
                    s.services,
                    s.endpoints,
                    k.name(),
                    ms(*lat)
                );
            }
            for kind in ChangeKind::ALL {
                let samples: Vec<Duration> = r
                    .changes
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, d)| *d)
                    .collect();
                if let Some(Summary { n, p50, p99, max }) = summarize(&samples) {
                    let floor = summarize(&r.commit_floor)
                        .map_or(String::new(), |f| format!("{:.3}", f.p50));
                    let _ = writeln!(
                        change_sum,
                        "{},{},{},{},{n},{p50:.3},{p99:.3},{max:.3},{},{floor}",
                        d.name,
                        s.services,
                        s.endpoints,
                        kind.name(),
                        r.lost
                    );
                }
            }
            let _ = writeln!(
                memory,
                "{},{},{},{},{},{}",
                d.name,
                s.services,
                s.endpoints,
                s.total_endpoints(),
                r.vm_hwm_kib,
                r.vm_rss_kib
            );
        }
        for r in &d.datapath {
            for (path, samples) in [("cluster-ip", &r.via_service), ("direct", &r.direct)] {
                if let Some(Summary { n, p50, p99, max }) = summarize(samples) {
                    let _ = writeln!(
                        datapath,
                        "{},{},{path},{n},{:.1},{:.1},{:.1}",
                        d.name,
                        r.services,
                        p50 * 1e3,
                        p99 * 1e3,
                        max * 1e3
                    );
                }
            }
        }
    }
    fs::write(dir.join("full_sync.csv"), full)?;
    fs::write(dir.join("change_latency.csv"), change)?;
    fs::write(dir.join("change_latency_summary.csv"), change_sum)?;
    fs::write(dir.join("memory.csv"), memory)?;
    fs::write(dir.join("datapath.csv"), datapath)?;
    Ok(())
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Draws the plots of one dataplane into `dir` (`<name>-full-sync.png`,
/// `<name>-change-latency.png`, `<name>-datapath.png`).
pub fn plot(dir: &Path, d: &DataplaneResults) -> anyhow::Result<()> {
    let run = |what: &str, r: PlotResult| r.map_err(|e| anyhow::anyhow!("plotting {what}: {e}"));
    if !d.scale.is_empty() {
        run(
            "full sync",
            plot_full_sync(&dir.join(format!("{}-full-sync.png", d.name)), d),
        )?;
        run(
            "change latency",
            plot_changes(&dir.join(format!("{}-change-latency.png", d.name)), d),
        )?;
    }
    if !d.datapath.is_empty() {
        run(
            "data path",
            plot_datapath(&dir.join(format!("{}-datapath.png", d.name)), d),
        )?;
    }
    Ok(())
}

fn plot_full_sync(path: &Path, d: &DataplaneResults) -> PlotResult {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    type Pick = fn(&ScaleResult) -> Duration;
    let bars: [(&str, Pick); 4] = [
        ("kproxy, empty kernel", |r| r.kproxy_fresh),
        ("reference, empty kernel", |r| r.reference_fresh),
        ("kproxy, replacing", |r| r.kproxy_replace),
        ("reference, replacing", |r| r.reference_replace),
    ];
    let top = d
        .scale
        .iter()
        .flat_map(|r| bars.iter().map(move |(_, f)| f(r).as_secs_f64()))
        .fold(0.0, f64::max)
        * 1.15;
    let n = d.scale.len();
    let labels: Vec<String> = d.scale.iter().map(|r| r.shape.label()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: full sync vs {} of the same rules", d.name, d.reference),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top.max(0.01))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < labels.len() {
                format!("{} services × endpoints", labels[i])
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .draw()?;
    let width = 0.8 / bars.len() as f64;
    for (b, (label, f)) in bars.iter().enumerate() {
        let color = COLORS[b];
        chart
            .draw_series(d.scale.iter().enumerate().map(|(i, r)| {
                let x0 = i as f64 + 0.1 + b as f64 * width;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, f(r).as_secs_f64())],
                    color.filled(),
                )
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_changes(path: &Path, d: &DataplaneResults) -> PlotResult {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = d
        .scale
        .iter()
        .flat_map(|r| r.changes.iter().map(|(_, l)| ms(*l)))
        .fold(targets::CHANGE_P99_MS, f64::max)
        * 1.3;
    let min = d
        .scale
        .iter()
        .flat_map(|r| r.changes.iter().map(|(_, l)| ms(*l)))
        .fold(f64::MAX, f64::min)
        .min(1.0)
        * 0.8;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: one endpoint change, API server to kernel (CDF)",
                d.name
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min.max(0.01)..max).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of changes")
        .draw()?;
    for (i, r) in d.scale.iter().enumerate() {
        let mut lat: Vec<f64> = r.changes.iter().map(|(_, l)| ms(*l)).collect();
        lat.sort_by(f64::total_cmp);
        let n = lat.len() as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                lat.iter()
                    .enumerate()
                    .map(|(k, &x)| (x, (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))?
            .label(format!("{} services × endpoints", r.shape.label()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if nftables_only_targets_apply(&d.name) {
        chart
            .draw_series(LineSeries::new(
                [(targets::CHANGE_P99_MS, 0.0), (targets::CHANGE_P99_MS, 1.0)],
                BLACK.stroke_width(1),
            ))?
            .label("target: p99 ≤ 10 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_datapath(path: &Path, d: &DataplaneResults) -> PlotResult {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let rows: Vec<(f64, Summary, Summary)> = d
        .datapath
        .iter()
        .filter_map(|r| {
            Some((
                r.services as f64,
                summarize(&r.via_service)?,
                summarize(&r.direct)?,
            ))
        })
        .collect();
    let top = rows
        .iter()
        .map(|(_, v, p)| v.p99.max(p.p99) * 1e3)
        .fold(0.0, f64::max)
        * 1.2;
    let x_max = rows.iter().map(|r| r.0).fold(10.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: TCP connect + round trip vs services present", d.name),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((5f64..x_max).log_scale(), 0f64..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("services present (log scale)")
        .y_desc("µs")
        .draw()?;
    type Row = (f64, Summary, Summary);
    type Series = (&'static str, usize, fn(&Row) -> f64);
    let series: [Series; 4] = [
        ("cluster IP p50", 0, |r| r.1.p50 * 1e3),
        ("cluster IP p99", 1, |r| r.1.p99 * 1e3),
        ("pod direct p50 (floor)", 2, |r| r.2.p50 * 1e3),
        ("pod direct p99", 3, |r| r.2.p99 * 1e3),
    ];
    for (label, c, f) in series {
        let color = COLORS[c];
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.0, f(r))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            rows.iter()
                .map(|r| Circle::new((r.0, f(r)), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
