//! kproxy's benchmark program (issue 7): per dataplane, in the namespace lab, with the real
//! daemon watching the test API server —
//!
//! 1. full sync at 1,000 × 10, 5,000 × 50 and 44,000 × 1 (services × endpoints), beside the
//!    reference tool loading the same rules saved from the kernel (`nft -f`, `iptables-restore`);
//! 2. one endpoint change at each of those sizes, from the API server to the kernel's commit;
//! 3. the daemon's peak memory at each size;
//! 4. the data path: TCP connect + one round trip through a cluster IP with 10, 1,000, 10,000
//!    and 30,000 services present, beside the same exchange straight to the pod.
//!
//! It prints tables, writes CSV files and PNG plots into `--out`. `--small` runs scaled-down
//! sizes in a couple of minutes. Needs root (network namespaces) and release builds of
//! `kproxy` and the plugins next to it: `scripts/bench [--small]` builds and runs.
//!
//! Where to start: [`scale`] (scenarios 1–3) and [`datapath`] (scenario 4); [`dataplane`] says
//! what a dataplane must tell the benchmark.

mod cluster;
mod daemon;
mod datapath;
mod dataplane;
mod nfmon;
mod report;
mod scale;
mod stats;

use clap::Parser;
use cluster::Shape;
use kproxy_lab::{Lab, LabConfig};
use report::DataplaneResults;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "kproxy-bench", about = "kproxy's benchmarks (issue 7)")]
struct Args {
    /// Scaled-down sizes that finish in a couple of minutes (CI, quick checks).
    #[arg(long)]
    small: bool,
    /// Dataplanes to measure (plugin names), e.g. `--dataplane nftables`; by default both.
    #[arg(long = "dataplane", default_values_t = vec!["nftables".to_string(), "iptables".to_string()])]
    dataplanes: Vec<String>,
    /// Which scenarios: `scale` (1–3: full sync, change latency, memory), `datapath` (4).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["scale".to_string(), "datapath".to_string()])]
    scenarios: Vec<String>,
    /// The body of every measured dataplane's config section, e.g. `writer = "nft"` to
    /// measure the nftables plugin's `nft -f` writer (with one `--dataplane`: each plugin
    /// refuses the other's keys).
    #[arg(long, default_value = "")]
    plugin_config: String,
    /// Only these sizes, as `SERVICESxENDPOINTS` (e.g. `--shape 5000x50`), for a quick look at
    /// one size; by default the mode's three.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<Shape>,
    /// Changes per kind in scenario 2 (by default the mode's: 200 full, 10 small).
    #[arg(long)]
    rounds: Option<usize>,
    /// Folder for the CSV files and plots.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// The sizes and repetitions of one mode.
struct Profile {
    shapes: Vec<Shape>,
    rounds: usize,
    datapath_sizes: Vec<usize>,
    datapath_samples: usize,
}

impl Profile {
    fn new(small: bool) -> Profile {
        let shape = |services, endpoints| Shape {
            services,
            endpoints,
        };
        if small {
            Profile {
                shapes: vec![shape(1_000, 10), shape(500, 50), shape(4_400, 1)],
                rounds: 10,
                datapath_sizes: vec![10, 1_000, 3_000],
                datapath_samples: 300,
            }
        } else {
            Profile {
                shapes: vec![shape(1_000, 10), shape(5_000, 50), shape(44_000, 1)],
                rounds: 200,
                datapath_sizes: vec![10, 1_000, 10_000, 30_000],
                datapath_samples: 2_000,
            }
        }
    }
}

/// Reads `5000x50` as 5,000 services of 50 endpoints.
fn parse_shape(text: &str) -> Result<Shape, String> {
    let (services, endpoints) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not SERVICESxENDPOINTS"))?;
    let number = |t: &str| t.parse::<usize>().map_err(|e| format!("{t:?}: {e}"));
    Ok(Shape {
        services: number(services)?,
        endpoints: number(endpoints)?,
    })
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("kproxy-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut profile = Profile::new(args.small);
    if !args.shapes.is_empty() {
        profile.shapes = args.shapes.clone();
    }
    if let Some(rounds) = args.rounds {
        profile.rounds = rounds;
    }
    let dataplanes = args
        .dataplanes
        .iter()
        .map(|n| dataplane::by_name(n, &args.plugin_config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<&str> = dataplanes.iter().map(|d| d.name()).collect();
    daemon::check_built(&names)?;
    for s in &args.scenarios {
        anyhow::ensure!(
            s == "scale" || s == "datapath",
            "unknown scenario {s:?} (known: scale, datapath)"
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let scratch = tempfile::Builder::new().prefix("kproxy-bench-").tempdir()?;
    let lab = Lab::with_prefix(
        "kpb-",
        LabConfig {
            local_pods: vec![datapath::SERVER_POD.into(), datapath::CLIENT_POD.into()],
            remote_pods: vec![],
            ports: vec![cluster::TARGET_PORT],
            timeout: Duration::from_secs(2),
        },
    )?;

    let mut all = Vec::new();
    let started = Instant::now();
    let mut took = Vec::new();
    for dp in &dataplanes {
        let dp_started = Instant::now();
        let mut results = DataplaneResults {
            name: dp.name().to_string(),
            reference: dp.reference_name().to_string(),
            scale: Vec::new(),
            datapath: Vec::new(),
        };
        if args.scenarios.iter().any(|s| s == "scale") {
            for &shape in &profile.shapes {
                eprintln!("[{}] scale {} …", dp.name(), shape.label());
                results.scale.push(scale::run(
                    &lab,
                    dp.as_ref(),
                    shape,
                    profile.rounds,
                    scratch.path(),
                )?);
            }
        }
        if args.scenarios.iter().any(|s| s == "datapath") {
            for &n in &profile.datapath_sizes {
                eprintln!("[{}] data path with {} services …", dp.name(), n);
                results.datapath.push(datapath::run(
                    &lab,
                    dp.as_ref(),
                    n,
                    profile.datapath_samples,
                    scratch.path(),
                )?);
            }
        }
        print!("{}", report::tables(&results));
        report::plot(&args.out, &results)?;
        all.push(results);
        took.push(format!(
            "{} {:.0} s",
            dp.name(),
            dp_started.elapsed().as_secs_f64()
        ));
    }
    report::write_csv(&args.out, &all)?;
    println!(
        "\nmode: {}; took {:.0} s ({}); CSV files and plots in {}",
        if args.small { "small" } else { "full" },
        started.elapsed().as_secs_f64(),
        took.join(", "),
        args.out.display()
    );
    Ok(())
}
