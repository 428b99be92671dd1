//! `sluice profile --url`: the same profile measured against a running server over
//! the wire (Sluice, Triton or any KServe v2 server with Triton's config extension),
//! with `sluice bench`'s load generator: per batch size one request at a time
//! (latency) and two per configured instance (throughput). The model's config comes
//! from `GET v2/models/{m}/config`; its load time and memory from the server's
//! repository index where it gives them (Sluice does, Triton does not: then 0 and
//! none). The figures include the network and the server's HTTP path, which the
//! in-process profile leaves out, so they are what a client of that server sees.
//! `--instances` sets each count in place through Sluice's `POST
//! v2/models/{m}/instances` (no reload; Triton has no such endpoint) and puts the
//! count the model ran before back afterwards, whether the points succeeded or not.

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use sluice_autoscale::profile::{
    BatchProfile, InstanceProfile, LatencyMs, Profile, ServiceModel, PROFILE_FORMAT,
};
use sluice_bench::{BenchArgs, Report};
use sluice_client::{Client, ClientConfig, Protocol};
use sluice_core::ModelConfig;

use super::measure::{batch_sizes, config_accuracy, Settings};

/// `sluice bench`'s flags, parsed as its command line would be.
#[derive(Parser)]
struct Bench {
    #[command(flatten)]
    args: BenchArgs,
}

/// Measures `model` on the server at `url` over `protocol` (HTTP JSON or binary).
pub fn measure(
    url: &str,
    protocol: Protocol,
    model: &str,
    settings: &Settings,
) -> anyhow::Result<Profile> {
    anyhow::ensure!(
        protocol != Protocol::Grpc,
        "--url profiles over HTTP (the config and index endpoints are HTTP): use http-binary or http-json"
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(measure_async(url, protocol, model, settings))
}

async fn measure_async(
    url: &str,
    protocol: Protocol,
    model: &str,
    settings: &Settings,
) -> anyhow::Result<Profile> {
    let client = Client::connect(&ClientConfig {
        url: url.to_owned(),
        protocol,
        timeout: std::time::Duration::from_secs(30),
    })
    .await
    .with_context(|| format!("connecting to {url}"))?;
    let config = client
        .json(&format!("v2/models/{model}/config"), None)
        .await
        .with_context(|| format!("reading the config of '{model}' from {url}"))?;
    let config = ModelConfig::from_json(&config.to_string())
        .map_err(|e| anyhow::anyhow!("the config {url} gives for '{model}': {e}"))?;
    let index = client
        .json("v2/repository/index", Some(&json!({})))
        .await
        .with_context(|| format!("reading the repository index of {url}"))?;
    let row = ready_row(&index, model);
    let max = usize::try_from(config.max_batch_size).unwrap_or(0);
    let sizes = batch_sizes(&settings.batch_sizes, max)?;
    let instances = u32::try_from(config.instance_count()).unwrap_or(1).max(1);
    let protocol_name = protocol.name();
    let seconds = settings.seconds_per_point.to_string();
    let run = |rows: usize, extra: &[&str]| -> anyhow::Result<Bench> {
        let rows = rows.to_string();
        let mut argv = vec![
            "profile",
            "--url",
            url,
            "--model",
            model,
            "--protocol",
            protocol_name,
            "--batch-size",
            &rows,
            "--duration",
            &seconds,
            "--warmup",
            "0.5",
            "--quiet",
        ];
        argv.extend_from_slice(extra);
        Bench::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let busy_point = |rows: usize, instances: u32| {
        let clients = (2 * instances).to_string();
        run(
            rows,
            &["--scenario", "offline", "--concurrency", clients.as_str()],
        )
    };
    let mut batches = Vec::with_capacity(sizes.len());
    for &b in &sizes {
        let one = point(run(b, &["--scenario", "single-stream"])?).await?;
        let busy = point(busy_point(b, instances)?).await?;
        batches.push(BatchProfile {
            batch_size: b as u32,
            latency_ms: latency(&one),
            throughput_per_s: Some(busy.summary.samples_per_s),
        });
    }
    let mut instance_scaling = Vec::new();
    if !settings.instances.is_empty() {
        let largest = *sizes.last().unwrap_or(&1);
        let mut counts = settings.instances.clone();
        counts.sort_unstable();
        counts.dedup();
        if counts.contains(&0) {
            bail!("--instances counts must be at least 1");
        }
        let running = live_count(&client, url, model).await?;
        let measured = async {
            for &k in &counts {
                set_count(&client, url, model, k).await?;
                let busy = point(busy_point(largest, k)?).await?;
                instance_scaling.push(InstanceProfile {
                    instances: k,
                    batch_size: largest as u32,
                    throughput_per_s: busy.summary.samples_per_s,
                    latency_ms: latency(&busy),
                });
            }
            anyhow::Ok(())
        }
        .await;
        let restored = set_count(&client, url, model, running).await;
        measured?;
        restored.context("putting the model's instance count back")?;
    }
    Ok(Profile {
        format: PROFILE_FORMAT.to_owned(),
        model: model.to_owned(),
        version: row
            .and_then(|r| r.get("version"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        hardware_class: settings.hardware_class.clone(),
        backend: config.backend.clone(),
        instances,
        cost_per_hour: None,
        load_time_s: row
            .and_then(|r| r.get("load_duration_ms"))
            .and_then(Value::as_f64)
            .map_or(0.0, |ms| ms / 1e3),
        memory_bytes: row
            .and_then(|r| r.get("memory_bytes"))
            .and_then(Value::as_u64),
        batches,
        service: ServiceModel::Lognormal,
        accuracy: config_accuracy(&config),
        instance_scaling,
    })
}

/// A run's request latency as a profile's quantiles.
fn latency(run: &sluice_bench::RunResult) -> LatencyMs {
    let l = &run.summary.latency_ms;
    LatencyMs {
        p50: l.p50,
        p90: Some(l.p90),
        p99: Some(l.p99),
        mean: Some(l.mean),
    }
}

/// The path of Sluice's instances endpoint for `model`.
fn instances_path(model: &str) -> String {
    format!("v2/models/{model}/instances")
}

/// The instance count `model` runs now (of the last version the answer lists), from
/// `GET v2/models/{m}/instances`.
async fn live_count(client: &Client, url: &str, model: &str) -> anyhow::Result<u32> {
    let path = instances_path(model);
    let answer = client.json(&path, None).await.with_context(|| {
        format!("--instances needs a Sluice server (GET {path} on {url}, to read the count)")
    })?;
    counts(&answer)
        .last()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("GET {path} on {url} lists no version: {answer}"))
}

/// Sets `model`'s instance count to `count` in place and checks that every ready
/// version runs it.
async fn set_count(client: &Client, url: &str, model: &str, count: u32) -> anyhow::Result<()> {
    let path = instances_path(model);
    let answer = client
        .json(&path, Some(&json!({ "count": count })))
        .await
        .with_context(|| format!("setting {count} instances (POST {path} on {url})"))?;
    let now = counts(&answer);
    anyhow::ensure!(
        !now.is_empty() && now.iter().all(|&c| c == count),
        "POST {path} on {url} asked for {count} instances, the model runs {now:?}"
    );
    Ok(())
}

/// The `count` of each version in an instances answer, in its order.
fn counts(answer: &Value) -> Vec<u32> {
    answer
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("count").and_then(Value::as_u64))
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
        .collect()
}

/// The repository index's row of the newest ready version of `model`, if the server
/// lists one.
fn ready_row<'a>(index: &'a Value, model: &str) -> Option<&'a Value> {
    index
        .as_array()?
        .iter()
        .filter(|r| r.get("name").and_then(Value::as_str) == Some(model))
        .filter(|r| r.get("state").and_then(Value::as_str) == Some("READY"))
        .max_by_key(|r| {
            r.get("version")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
}

/// Runs one `sluice bench` run and returns it, or the reason none of its requests
/// succeeded.
async fn point(bench: Bench) -> anyhow::Result<sluice_bench::RunResult> {
    let scenario = bench.args.scenario()?;
    let report: Report = sluice_bench::bench(&bench.args, &scenario).await?;
    let Some(run) = report.runs.into_iter().next() else {
        bail!("the load generator measured nothing");
    };
    if run.summary.requests == 0 {
        bail!(
            "no request succeeded{}",
            run.summary
                .first_error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}"))
        );
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_ready_version_row_is_read() {
        let index = json!([
            {"name": "m", "version": "1", "state": "READY", "load_duration_ms": 12.0},
            {"name": "m", "version": "3", "state": "UNAVAILABLE"},
            {"name": "m", "version": "2", "state": "READY", "memory_bytes": 4096},
            {"name": "other", "version": "9", "state": "READY"},
        ]);
        let row = ready_row(&index, "m").unwrap();
        assert_eq!(row["version"], "2");
        assert!(ready_row(&index, "none").is_none());
        assert!(ready_row(&json!({"not": "a list"}), "m").is_none());
    }

    #[test]
    fn the_counts_of_an_instances_answer_are_read_per_version() {
        let answer = json!({"name": "m", "versions": [
            {"version": "1", "count": 2, "intra_op_thread_count": 1},
            {"version": "2", "count": 3},
        ]});
        assert_eq!(counts(&answer), vec![2, 3]);
        assert!(counts(&json!({"error": "no"})).is_empty());
    }
}
