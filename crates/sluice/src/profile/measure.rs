//! The measurements: latency per batch size at one request at a time, throughput
//! per batch size with enough requests in flight to keep every instance busy, and
//! throughput per instance count (the model reloaded with each count).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_autoscale::profile::{
    BatchProfile, InstanceProfile, LatencyMs, Profile, ServiceModel, PROFILE_FORMAT,
};
use sluice_core::{InferRequest, ModelConfig, Tensor};
use sluice_runtime::{LoadOptions, Runtime};

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Empty: 1, 2, 4, … up to max_batch_size, and max_batch_size.
    pub batch_sizes: Vec<usize>,
    /// Empty: only the configured count.
    pub instances: Vec<u32>,
    pub max_requests: usize,
    pub seconds_per_point: f64,
    /// Dims (without the batch dimension) for inputs with variable dimensions.
    pub shapes: HashMap<String, Vec<usize>>,
    /// Inputs whose values come from `.npy` files instead of random data.
    pub files: HashMap<String, PathBuf>,
    pub hardware_class: String,
}

/// Fewest requests per measured point, whatever the time.
const MIN_REQUESTS: usize = 5;

/// Parses `NAME=D1,D2` flags.
pub fn parse_shapes(flags: &[String]) -> anyhow::Result<HashMap<String, Vec<usize>>> {
    flags
        .iter()
        .map(|f| {
            let (name, dims) = f
                .split_once('=')
                .with_context(|| format!("--shape {f}: expected NAME=D1,D2,..."))?;
            let dims = dims
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--shape {f}: dimensions must be integers"))?;
            Ok((name.to_owned(), dims))
        })
        .collect()
}

/// The batch sizes to measure for a model of `max` rows per batch (0: does not batch).
pub fn batch_sizes(asked: &[usize], max: usize) -> anyhow::Result<Vec<usize>> {
    if max == 0 {
        if asked.iter().any(|&b| b != 1) {
            bail!("the model does not batch (max_batch_size 0): only batch size 1 can be measured");
        }
        return Ok(vec![1]);
    }
    let mut sizes: Vec<usize> = if asked.is_empty() {
        std::iter::successors(Some(1usize), |b| b.checked_mul(2))
            .take_while(|&b| b < max)
            .chain(std::iter::once(max))
            .collect()
    } else {
        asked.to_vec()
    };
    sizes.sort_unstable();
    sizes.dedup();
    if let Some(&b) = sizes.iter().find(|&&b| b == 0 || b > max) {
        bail!("batch size {b} is outside 1..={max} (the model's max_batch_size)");
    }
    Ok(sizes)
}

/// Loads `model` and measures it.
pub fn measure(runtime: &Runtime, model: &str, settings: &Settings) -> anyhow::Result<Profile> {
    load(runtime, model, &LoadOptions::default())?;
    let config = runtime
        .model_config(model, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let entry = runtime
        .index()
        .into_iter()
        .rfind(|e| e.name == model && e.load_duration.is_some())
        .context("the model did not become ready")?;
    let version = entry.version.unwrap_or(1);
    let max = usize::try_from(config.max_batch_size).unwrap_or(0);
    let sizes = batch_sizes(&settings.batch_sizes, max)?;
    let configured = u32::try_from(config.instance_count()).unwrap_or(1);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let template = Template::new(&config, &settings.shapes, &settings.files)?;
    let mut batches = Vec::with_capacity(sizes.len());
    for &b in &sizes {
        let request = template.request(b)?;
        tokio.block_on(run_closed(runtime, model, &request, 1, 2))?;
        let one = tokio.block_on(run_point(runtime, model, &request, 1, settings))?;
        let busy = tokio.block_on(run_point(
            runtime,
            model,
            &request,
            2 * configured as usize,
            settings,
        ))?;
        batches.push(BatchProfile {
            batch_size: b as u32,
            latency_ms: one.latency(),
            throughput_per_s: Some(busy.rows_per_s),
        });
    }
    let mut instance_scaling = Vec::new();
    let largest = *sizes.last().unwrap_or(&1);
    let mut counts = settings.instances.clone();
    counts.sort_unstable();
    counts.dedup();
    for &k in &counts {
        if k == 0 {
            bail!("--instances counts must be at least 1");
        }
        if k != configured {
            load(runtime, model, &with_instances(&config, k)?)?;
        }
        let request = template.request(largest)?;
        tokio.block_on(run_closed(
            runtime,
            model,
            &request,
            k as usize,
            2 * k as usize,
        ))?;
        let busy = tokio.block_on(run_point(
            runtime,
            model,
            &request,
            2 * k as usize,
            settings,
        ))?;
        instance_scaling.push(InstanceProfile {
            instances: k,
            batch_size: largest as u32,
            throughput_per_s: busy.rows_per_s,
            latency_ms: busy.latency(),
        });
    }
    if counts.iter().any(|&k| k != configured) {
        // Leave the model as configured.
        load(runtime, model, &LoadOptions::default())?;
    }
    Ok(Profile {
        format: PROFILE_FORMAT.to_owned(),
        model: model.to_owned(),
        version: version.to_string(),
        hardware_class: settings.hardware_class.clone(),
        backend: config.backend.clone(),
        instances: configured,
        cost_per_hour: None,
        load_time_s: entry.load_duration.unwrap_or_default().as_secs_f64(),
        memory_bytes: entry.memory_bytes,
        batches,
        service: ServiceModel::Lognormal,
        accuracy: stated_accuracy(runtime, model, &config),
        instance_scaling,
    })
}

fn load(runtime: &Runtime, model: &str, options: &LoadOptions) -> anyhow::Result<()> {
    runtime
        .load(model, options)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A load of the same config with `count` instances.
fn with_instances(config: &ModelConfig, count: u32) -> anyhow::Result<LoadOptions> {
    let mut c = config.clone();
    let mut group = c
        .instance_group
        .first()
        .cloned()
        .unwrap_or_else(|| serde_json::from_str("{}").expect("an empty instance group parses"));
    group.count = count;
    c.instance_group = vec![group];
    Ok(LoadOptions {
        config: Some(serde_json::to_string(&c)?),
        files: Vec::new(),
    })
}

/// The accuracy the model's own config states (`parameters: accuracy`).
pub fn config_accuracy(config: &ModelConfig) -> Option<f64> {
    config
        .parameter("accuracy")
        .and_then(|a| a.trim().parse().ok())
}

/// The accuracy the model's config (`parameters: accuracy`) or a family of the
/// repository (`variant.<model>: "accuracy=..."`) states.
fn stated_accuracy(runtime: &Runtime, model: &str, config: &ModelConfig) -> Option<f64> {
    if let Some(a) = config_accuracy(config) {
        return Some(a);
    }
    let key = format!("variant.{model}");
    let repository = runtime.repository_root();
    let repository = sluice_repository::Repository::open(
        repository,
        sluice_repository::RepositoryOptions::default(),
    )
    .ok()?;
    repository.model_names().ok()?.iter().find_map(|name| {
        let c = repository.declared_config(name).ok()?;
        let text = c.parameters.get(&key)?.string_value.clone();
        text.split([' ', ',', ';'])
            .find_map(|f| f.strip_prefix("accuracy="))
            .and_then(|a| a.parse().ok())
    })
}

/// Inputs of the model, for any batch size: random data, or the rows of a file.
struct Template {
    batching: bool,
    inputs: Vec<TemplateInput>,
}

struct TemplateInput {
    name: String,
    datatype: sluice_core::DataType,
    /// Without the batch dimension when the model batches.
    dims: Vec<usize>,
    /// Given as a file: its rows (batching) or the whole tensor (not batching).
    rows: Option<Vec<bytes::Bytes>>,
}

impl Template {
    fn new(
        config: &ModelConfig,
        shapes: &HashMap<String, Vec<usize>>,
        files: &HashMap<String, PathBuf>,
    ) -> anyhow::Result<Template> {
        let batching = config.max_batch_size > 0;
        if let Some(name) = files
            .keys()
            .chain(shapes.keys())
            .find(|n| !config.input.iter().any(|t| &t.name == *n))
        {
            let names: Vec<&str> = config.input.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "the model has no input '{name}' (inputs: {})",
                names.join(", ")
            );
        }
        let inputs = config
            .input
            .iter()
            .map(|t| {
                let (dims, rows) = match (files.get(&t.name), shapes.get(&t.name)) {
                    (Some(path), _) => {
                        let (dims, rows) =
                            file_rows(&t.name, t.data_type, &t.dims, batching, path)?;
                        (dims, Some(rows))
                    }
                    (None, Some(d)) => (d.clone(), None),
                    (None, None) => {
                        let dims = t
                            .dims
                            .iter()
                            .map(|&d| {
                                usize::try_from(d).map_err(|_| {
                                    anyhow::anyhow!(
                                        "input {} has a variable dimension ({:?}): give --shape {}=D1,D2,... or --input {}=FILE.npy",
                                        t.name,
                                        t.dims,
                                        t.name,
                                        t.name
                                    )
                                })
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        (dims, None)
                    }
                };
                Ok(TemplateInput {
                    name: t.name.clone(),
                    datatype: t.data_type,
                    dims,
                    rows,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Template { batching, inputs })
    }

    fn request(&self, rows: usize) -> anyhow::Result<InferRequest> {
        let mut rng = sluice_core::rng::Rng::new(rows as u64);
        let inputs = self
            .inputs
            .iter()
            .map(|input| {
                let shape: Vec<usize> = if self.batching {
                    std::iter::once(rows)
                        .chain(input.dims.iter().copied())
                        .collect()
                } else {
                    input.dims.clone()
                };
                let data: bytes::Bytes = match &input.rows {
                    // A batch of `rows` takes the file's rows in turn.
                    Some(file) if self.batching => {
                        let mut out = Vec::with_capacity(rows * file[0].len());
                        for row in file.iter().cycle().take(rows) {
                            out.extend_from_slice(row);
                        }
                        out.into()
                    }
                    Some(file) => file[0].clone(),
                    None => random_data(input.datatype, shape.iter().product(), &mut rng)?.into(),
                };
                Tensor::new(input.name.clone(), input.datatype, shape, data)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(InferRequest {
            inputs,
            ..InferRequest::default()
        })
    }
}

/// The dims (without the batch dimension when `batching`) and the rows of the `.npy`
/// file given for the input `name` (one "row", the whole tensor, when not batching),
/// checked against the input's config: its datatype, and every fixed dimension.
fn file_rows(
    name: &str,
    datatype: sluice_core::DataType,
    config_dims: &[i64],
    batching: bool,
    path: &std::path::Path,
) -> anyhow::Result<(Vec<usize>, Vec<bytes::Bytes>)> {
    let (dt, shape, data) = sluice_client::read_npy(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if dt != datatype {
        bail!(
            "--input {name}: {} holds {} values, the input is {}",
            path.display(),
            dt.v2_name(),
            datatype.v2_name()
        );
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let (count, dims) = match (batching, shape.split_first()) {
        (true, Some((&n, rest))) => (n, rest.to_vec()),
        (true, None) => bail!(
            "--input {name}: {} is a scalar; the model batches, so its first dimension must be the rows",
            path.display()
        ),
        (false, _) => (1, shape),
    };
    let fits = dims.len() == config_dims.len()
        && dims
            .iter()
            .zip(config_dims)
            .all(|(&d, &c)| c < 0 || d as i64 == c);
    if !fits || count == 0 {
        bail!(
            "--input {name}: {} has shape {:?}; the input takes {}{:?} (-1: any)",
            path.display(),
            if batching {
                std::iter::once(count).chain(dims).collect()
            } else {
                dims
            },
            if batching { "rows of " } else { "" },
            config_dims
        );
    }
    let row = data.len() / count;
    let rows = (0..count)
        .map(|i| data.slice(i * row..(i + 1) * row))
        .collect();
    Ok((dims, rows))
}

/// `count` random elements: floats uniform in [0, 1) (half floats: zeros), integers
/// in 0..16, booleans.
fn random_data(
    dt: sluice_core::DataType,
    count: usize,
    rng: &mut sluice_core::rng::Rng,
) -> anyhow::Result<Vec<u8>> {
    use sluice_core::DataType;
    let size = dt
        .size()
        .with_context(|| format!("{} inputs cannot be generated", dt.v2_name()))?;
    let mut out = Vec::with_capacity(count * size);
    for _ in 0..count {
        let u = rng.uniform();
        match dt {
            DataType::Bool => out.push(u8::from(u < 0.5)),
            DataType::F16 | DataType::Bf16 => out.extend_from_slice(&[0, 0]),
            DataType::F32 => out.extend_from_slice(&(u as f32).to_le_bytes()),
            DataType::F64 => out.extend_from_slice(&u.to_le_bytes()),
            _ => out.extend_from_slice(&((u * 16.0) as u64).to_le_bytes()[..size]),
        }
    }
    Ok(out)
}

/// What one measured point saw.
struct Point {
    latencies: Vec<Duration>,
    rows_per_s: f64,
}

impl Point {
    fn latency(&self) -> LatencyMs {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let q = |f: f64| {
            let ix = ((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1;
            v[ix].as_secs_f64() * 1e3
        };
        let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e3;
        LatencyMs {
            p50: q(0.50),
            p90: Some(q(0.90)),
            p99: Some(q(0.99)),
            mean: Some(mean),
        }
    }
}

/// Runs `total` requests with `concurrency` in flight; returns each one's latency.
async fn run_closed(
    runtime: &Runtime,
    model: &str,
    request: &InferRequest,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<Vec<Duration>> {
    let point = run_until(runtime, model, request, concurrency, move |n, _| n >= total).await?;
    Ok(point.latencies)
}

/// Runs requests with `concurrency` in flight until the point's time is spent (at
/// least [`MIN_REQUESTS`], at most `max_requests`).
async fn run_point(
    runtime: &Runtime,
    model: &str,
    request: &InferRequest,
    concurrency: usize,
    settings: &Settings,
) -> anyhow::Result<Point> {
    let budget = Duration::from_secs_f64(settings.seconds_per_point);
    let max = settings.max_requests.max(MIN_REQUESTS);
    run_until(runtime, model, request, concurrency, move |n, elapsed| {
        n >= max || (n >= MIN_REQUESTS && elapsed >= budget)
    })
    .await
}

async fn run_until(
    runtime: &Runtime,
    model: &str,
    request: &InferRequest,
    concurrency: usize,
    done: impl Fn(usize, Duration) -> bool + Send + Sync + 'static,
) -> anyhow::Result<Point> {
    let rows = request
        .inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1);
    let rows = if runtime
        .model_config(model, None)
        .is_ok_and(|c| c.max_batch_size > 0)
    {
        rows
    } else {
        1
    };
    let started = Instant::now();
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(done);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (runtime, model, request) = (runtime.clone(), model.to_owned(), request.clone());
        let (issued, done) = (Arc::clone(&issued), Arc::clone(&done));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if done(n, started.elapsed()) {
                    return Ok::<_, sluice_core::Error>(latencies);
                }
                let t = Instant::now();
                runtime.infer(&model, None, request.clone()).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined?.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    if latencies.is_empty() {
        bail!("no request was measured");
    }
    Ok(Point {
        rows_per_s: (latencies.len() * rows) as f64 / elapsed,
        latencies,
    })
}
