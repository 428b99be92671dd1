//! `sluice simulate` and `sluice plan`: the command-line side of `sluice-autoscale`
//! (reading profiles, traces, configs and Triton ensembles from files; writing the
//! JSON report and the plot). The decisions themselves live in the crate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use sluice_autoscale::plan::{self, PlanInput, PlanStage};
use sluice_autoscale::policy::Bounds;
use sluice_autoscale::profile::Profile;
use sluice_autoscale::report::{self, SimConfig};
use sluice_autoscale::trace::{self, TraceSpec};

/// Where the arrivals come from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct TraceArgs {
    /// A generated trace: `poisson:rate=R,seconds=S`, `mmpp:low=R,high=R,dwell_low=S,
    /// dwell_high=S,seconds=S` (bursts), `diurnal:mean=R,amplitude=A,period=S,seconds=S`,
    /// `step:rates=R/R/..,every=S`.
    #[arg(long, env = "SLUICE_SIM_TRACE")]
    trace: Option<String>,
    /// A recorded trace: a CSV whose first column is each request's time in seconds.
    #[arg(long, env = "SLUICE_SIM_TRACE_CSV")]
    trace_csv: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The model's profile (`sluice-profile/1` JSON: service time per batch size,
    /// load time, price per hour of its hardware class).
    #[arg(long, env = "SLUICE_SIM_PROFILE")]
    profile: PathBuf,
    #[command(flatten)]
    trace: TraceArgs,
    /// Simulation config (JSON: `slo_ms`, batching, prices, `policies`); without it
    /// every policy is compared with settings sized from the profile.
    #[arg(long, env = "SLUICE_SIM_CONFIG")]
    config: Option<PathBuf>,
    /// Latency objective per request in ms (overrides the config's).
    #[arg(long, env = "SLUICE_SIM_SLO_MS")]
    slo_ms: Option<f64>,
    /// Seed of the generated trace and of the simulated run times.
    #[arg(long, env = "SLUICE_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Replica bounds of the default policies.
    #[arg(long, default_value_t = 1)]
    min_replicas: u32,
    #[arg(long, default_value_t = 64)]
    max_replicas: u32,
    /// Write the full comparison (with timelines) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the plot (load, replicas and p99 over time per policy) as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The pipeline as JSON: `{"stages": [{"name": "pre", "profiles": ["pre-cpu.json", ...]}, ...]}`
    /// (paths relative to the file).
    #[arg(long, conflicts_with = "ensemble")]
    stages: Option<PathBuf>,
    /// A Triton ensemble's model folder (its `config.pbtxt` steps, in order, are the
    /// stages); the profiles of each step's model are read from `--profiles`.
    #[arg(long, requires = "profiles")]
    ensemble: Option<PathBuf>,
    /// A folder of profile JSON files (matched to stages by their `model`).
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// Profiles of a single model to plan (one stage), instead of a pipeline.
    #[arg(long = "profile")]
    profile: Vec<PathBuf>,
    #[command(flatten)]
    trace: TraceArgs,
    /// End-to-end latency objective (ms) that the simulated p99 must meet.
    #[arg(long, env = "SLUICE_PLAN_SLO_MS")]
    slo_ms: f64,
    /// Most replicas of one hardware class in one stage.
    #[arg(long, default_value_t = 8)]
    max_replicas: u32,
    /// Only one hardware class per stage (no heterogeneous mixes).
    #[arg(long)]
    no_mix: bool,
    /// Price per replica-hour of a class, `CLASS=DOLLARS` (overrides the profiles').
    #[arg(long = "cost-per-hour", value_parser = parse_price)]
    cost_per_hour: Vec<(String, f64)>,
    /// Also plan each hardware class alone and print the comparison.
    #[arg(long)]
    compare_homogeneous: bool,
    /// Most simulations of the exact pass.
    #[arg(long, default_value_t = 20_000)]
    exact_budget: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the plan (and the homogeneous baselines) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_price(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s.split_once('=').ok_or("expected CLASS=DOLLARS")?;
    let v: f64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err("a price must be >= 0".into());
    }
    Ok((k.to_string(), v))
}

fn read_profile(path: &Path) -> anyhow::Result<Profile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Profile::from_json(&text).with_context(|| path.display().to_string())
}

fn read_trace(t: &TraceArgs, seed: u64) -> anyhow::Result<(Vec<f64>, f64)> {
    if let Some(spec) = &t.trace {
        let spec = TraceSpec::parse(spec)?;
        Ok((spec.generate(seed), spec.seconds()))
    } else if let Some(path) = &t.trace_csv {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let arrivals = trace::from_csv(&text).with_context(|| path.display().to_string())?;
        let seconds = arrivals.last().copied().unwrap_or(0.0).max(1.0);
        Ok((arrivals, seconds))
    } else {
        bail!("give --trace or --trace-csv")
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let profile = read_profile(&args.profile)?;
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<SimConfig>(&text)
                .with_context(|| format!("{}: invalid config", path.display()))?
        }
        None => {
            let Some(slo) = args.slo_ms else {
                bail!("give --slo-ms (or a --config with slo_ms)");
            };
            let mut c = SimConfig::new(slo);
            c.bounds = Bounds {
                min_replicas: args.min_replicas,
                max_replicas: args.max_replicas,
            };
            c
        }
    };
    if let Some(slo) = args.slo_ms {
        cfg.slo_ms = slo;
    }
    cfg.seed = args.seed;
    let (arrivals, seconds) = read_trace(&args.trace, args.seed)?;
    let comparison = report::compare(&cfg, &profile, &arrivals, seconds)?;
    print!("{}", report::table(&comparison));
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&comparison)?)?;
    }
    if let Some(path) = &args.plot {
        write(path, &sluice_autoscale::plot::svg(&comparison)?)?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    stages: Vec<StageEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StageEntry {
    name: String,
    profiles: Vec<PathBuf>,
}

/// The ordered model names of a Triton ensemble's steps.
fn ensemble_steps(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("config.pbtxt");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let schema = sluice_repository::pbtxt::Schema {
        repeated: &["input", "output", "dims", "step", "instance_group"],
        maps: &["input_map", "output_map", "parameters"],
    };
    let value = sluice_repository::pbtxt::parse(&text, schema)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let steps = value
        .get("ensemble_scheduling")
        .and_then(|e| e.get("step"))
        .and_then(|s| s.as_array())
        .with_context(|| {
            format!(
                "{}: no ensemble_scheduling steps (is it an ensemble?)",
                path.display()
            )
        })?;
    let names = steps
        .iter()
        .map(|s| {
            s.get("model_name")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .collect::<Option<Vec<String>>>()
        .with_context(|| format!("{}: a step without model_name", path.display()))?;
    if names.is_empty() {
        bail!("{}: the ensemble has no steps", path.display());
    }
    Ok(names)
}

fn priced(profile: Profile, overrides: &[(String, f64)]) -> anyhow::Result<(Profile, f64)> {
    let price = overrides
        .iter()
        .find(|(c, _)| *c == profile.hardware_class)
        .map(|x| x.1)
        .or(profile.cost_per_hour)
        .with_context(|| {
            format!(
                "no price for class {:?}: set cost_per_hour or --cost-per-hour",
                profile.hardware_class
            )
        })?;
    Ok((profile, price))
}

fn plan_stages(args: &PlanArgs) -> anyhow::Result<Vec<PlanStage>> {
    let price = |p| priced(p, &args.cost_per_hour);
    if let Some(file) = &args.stages {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let sf: StageFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid stage list", file.display()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        return sf
            .stages
            .into_iter()
            .map(|s| {
                let classes = s
                    .profiles
                    .iter()
                    .map(|p| price(read_profile(&base.join(p))?))
                    .collect::<anyhow::Result<_>>()?;
                Ok(PlanStage {
                    name: s.name,
                    classes,
                })
            })
            .collect();
    }
    if let Some(dir) = &args.ensemble {
        let folder = args
            .profiles
            .as_ref()
            .context("--ensemble needs --profiles")?;
        let mut all = vec![];
        for entry in std::fs::read_dir(folder)
            .with_context(|| format!("cannot read {}", folder.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                all.push(read_profile(&path)?);
            }
        }
        return ensemble_steps(dir)?
            .into_iter()
            .map(|model| {
                let classes: Vec<_> = all
                    .iter()
                    .filter(|p| p.model == model)
                    .cloned()
                    .map(price)
                    .collect::<anyhow::Result<_>>()?;
                if classes.is_empty() {
                    bail!(
                        "no profile in {} for the ensemble step {model:?}",
                        folder.display()
                    );
                }
                Ok(PlanStage {
                    name: model,
                    classes,
                })
            })
            .collect();
    }
    if args.profile.is_empty() {
        bail!("give --stages, --ensemble with --profiles, or --profile (one or more)");
    }
    let classes = args
        .profile
        .iter()
        .map(|p| price(read_profile(p)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = classes[0].0.model.clone();
    Ok(vec![PlanStage { name, classes }])
}

pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    if !(args.slo_ms.is_finite() && args.slo_ms > 0.0) {
        bail!("--slo-ms must be > 0");
    }
    let stages = plan_stages(&args)?;
    let (arrivals, seconds) = read_trace(&args.trace, args.seed)?;
    let input = PlanInput {
        stages,
        slo_s: args.slo_ms / 1e3,
        arrivals: &arrivals,
        duration: seconds,
        seed: args.seed,
        max_replicas: args.max_replicas,
        heterogeneous: !args.no_mix,
        exact_budget: args.exact_budget,
        max_queue_delay_s: 0.0,
    };
    let best = plan::plan(&input)?;
    println!("plan: {}", plan::describe(&best));
    let mut baselines = serde_json::Map::new();
    if args.compare_homogeneous {
        let mut classes: Vec<String> = input
            .stages
            .iter()
            .flat_map(|s| s.classes.iter().map(|c| c.0.hardware_class.clone()))
            .collect();
        classes.sort();
        classes.dedup();
        for c in classes {
            match plan::homogeneous(&input, &c) {
                Ok(h) => {
                    println!(
                        "only {c}: {} (plan costs {:.2}× of it)",
                        plan::describe(&h),
                        best.cost_per_hour / h.cost_per_hour
                    );
                    baselines.insert(c, serde_json::to_value(&h)?);
                }
                Err(e) => println!("only {c}: {e}"),
            }
        }
    }
    if let Some(path) = &args.json {
        let out = serde_json::json!({ "plan": best, "homogeneous": baselines });
        write(path, &serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
