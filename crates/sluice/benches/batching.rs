//! What dynamic batching is worth, and how the scheduler behaves under load, on two
//! models: a memory-bound wide MLP (1024-4096-4096-16) and the small example CNN,
//! served by an in-process Sluice over loopback HTTP (binary tensors, batch-1 requests).
//!
//! - Ceiling: the raw tract engine's offline throughput at its best batch size (1/8/32).
//! - Closed loop at 1/8/32/64 clients over HTTP (binary tensors) and gRPC
//!   (`raw_input_contents`), each client on its own connection: throughput as a
//!   fraction of the ceiling, mean batch, p50/p99, batching off vs the adaptive batcher.
//!   `BENCH_PROTOCOLS=http` (or `grpc`) runs one protocol only.
//! - Open loop (Poisson, fixed seed) at 50/80/95 % of the ceiling: p99 and goodput
//!   (answers within the objective) for static delays 0/1/5 ms and the adaptive delay.
//! - Overload at twice the ceiling: every request answered (200 or 429), memory, recovery.
//!
//! Needs `models-extra/batching` (`.venv/bin/python scripts/make_batching_models.py`).
//! Run: `cargo bench -p sluice --bench batching` (env `BENCH_SECONDS`, default 3;
//! `BENCH_OVERLOAD_SECONDS`, default 3 × that).
//! `BENCH_PARTS=closed,open,overload` picks the measurements after the ceiling;
//! `BENCH_OPEN_ROUNDS=N` repeats each open-loop load N times (variants rotated; medians).
//! The ResNet-50-shaped model: `make_batching_models.py --resnet50`, then
//! `BENCH_REPO=models-extra/batching-resnet50 BENCH_MODELS=resnet50` (its cells last
//! 10 × `BENCH_SECONDS`: one batch of 8 takes about a second on one core).
//! With `BENCH_SERVER_CPUS=0` the server is a separate `sluice serve` pinned to CPU 0
//! (`taskset`); run the benchmark itself pinned elsewhere, e.g.
//! `BENCH_SERVER_CPUS=0 taskset -c 1 cargo bench -p sluice --bench batching`.

mod common;

use std::time::Duration;

use common::{
    closed_loop, engine_counts, ms, open_loop, raw_engine, rss_mib, seconds_from_env, start_server,
    target, Load,
};
use sluice_client::Protocol;

struct Model {
    base: &'static str,
    input: &'static str,
    dims: &'static [usize],
    /// Batch sizes the raw-engine ceiling is measured at.
    ceiling_batches: &'static [usize],
    /// Each measurement lasts this many times `BENCH_SECONDS`.
    slowness: u32,
}

const MODELS: [Model; 3] = [
    Model {
        base: "wide",
        input: "input",
        dims: &[1024],
        ceiling_batches: &[1, 8, 32],
        slowness: 1,
    },
    Model {
        base: "cnn",
        input: "image",
        dims: &[3, 32, 32],
        ceiling_batches: &[1, 8, 32],
        slowness: 1,
    },
    Model {
        base: "resnet50",
        input: "image",
        dims: &[3, 224, 224],
        ceiling_batches: &[1, 8],
        slowness: 10,
    },
];

fn main() {
    let repo = common::workspace_path(
        &std::env::var("BENCH_REPO").unwrap_or_else(|_| "models-extra/batching".into()),
    );
    assert!(
        repo.is_dir(),
        "run `.venv/bin/python scripts/make_batching_models.py` first"
    );
    let wanted = std::env::var("BENCH_MODELS").unwrap_or_else(|_| "wide,cnn".into());
    let models: Vec<&Model> = wanted
        .split(',')
        .map(|name| {
            MODELS
                .iter()
                .find(|m| m.base == name.trim())
                .unwrap_or_else(|| panic!("unknown model '{name}' in BENCH_MODELS"))
        })
        .collect();
    let secs = seconds_from_env(3.0);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server_cpus = std::env::var("BENCH_SERVER_CPUS").ok();
    let (endpoints, _server, _runtime) = match &server_cpus {
        Some(cpus) => {
            let (endpoints, process) = common::spawn_server(&repo, cpus);
            println!("Each measurement {secs} s; `sluice serve` pinned to CPU {cpus}, the load generator elsewhere.\n");
            (endpoints, Some(process), None)
        }
        None => {
            let (endpoints, runtime) = tokio.block_on(start_server(&repo));
            println!(
                "Each measurement {secs} s; server and client share this process and its cores.\n"
            );
            (endpoints, None, Some(runtime))
        }
    };
    let base = endpoints.http.clone();
    let protocols = std::env::var("BENCH_PROTOCOLS").unwrap_or_else(|_| "http,grpc".into());
    for model in models {
        let name = |variant: &str| format!("{}_{variant}", model.base);
        let window = Duration::from_secs_f64(secs * f64::from(model.slowness));
        let overload = std::env::var("BENCH_OVERLOAD_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(window * 3, Duration::from_secs_f64);
        // Ceiling.
        let mut best = 0.0f64;
        let mut batch1 = Duration::ZERO;
        println!(
            "## {}\n\n| raw engine batch | items/s | p50 ms |\n|---|---|---|",
            model.base
        );
        for &rows in model.ceiling_batches {
            let s = raw_engine(&repo, &name("off"), rows, window);
            let p50 = s.percentile(0.5);
            if rows == 1 {
                batch1 = p50;
            }
            best = best.max(s.per_second());
            println!("| {rows} | {} | {:.2} |", per_s(s.per_second()), ms(p50));
        }
        println!("\nceiling = {} items/s\n", per_s(best));

        // Closed loop.
        let part = |p: &str| {
            std::env::var("BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|x| x == p))
        };
        if part("closed") {
            println!("| protocol | clients | batching | req/s | of ceiling | mean batch | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|");
            for (protocol, clients, variant) in protocols
                .split(',')
                .flat_map(|p| [1, 8, 32, 64].map(|c| (p.trim(), c)))
                .flat_map(|(p, c)| ["off", "adaptive"].map(|v| (p, c, v)))
            {
                let load = model.load(name(variant), None);
                let target = match protocol {
                    "http" => tokio.block_on(target(&base, Protocol::HttpBinary, &load)),
                    "grpc" => tokio.block_on(target(&endpoints.grpc, Protocol::Grpc, &load)),
                    other => panic!("unknown protocol '{other}' in BENCH_PROTOCOLS (http, grpc)"),
                };
                let (runs0, items0) = tokio.block_on(engine_counts(&base, &name(variant)));
                let s = tokio.block_on(closed_loop(&target, clients, window));
                let (runs1, items1) = tokio.block_on(engine_counts(&base, &name(variant)));
                let mean_batch = (items1 - items0) as f64 / (runs1 - runs0).max(1) as f64;
                let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
                println!(
                    "| {protocol} | {clients} | {variant} | {} | {:.2} | {mean_batch:.1} | {:.2} | {:.2} |",
                    per_s(s.per_second()),
                    s.per_second() / best,
                    ms(p50),
                    ms(p99)
                );
            }
        }

        // Open loop: each load `BENCH_OPEN_ROUNDS` times (default 1), the variants in a
        // rotated order each round so none always follows the same neighbour; medians.
        let rounds: usize = std::env::var("BENCH_OPEN_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1)
            .max(1);
        let objective = (batch1 * 20).max(Duration::from_millis(20));
        println!(
            "\nOpen loop, objective (and request timeout) {:.1} ms, median of {rounds} round(s) (goodput range in brackets)\n\n| load | delay | offered/s | goodput/s | p50 ms | p99 ms | 429 | timeouts |\n|---|---|---|---|---|---|---|---|",
            ms(objective)
        );
        const DELAYS: [&str; 4] = ["d0", "d1ms", "d5ms", "adaptive"];
        for load in [0.5, 0.8, 0.95].into_iter().filter(|_| part("open")) {
            let rate = best * load;
            let mut cells: Vec<Vec<OpenCell>> = vec![Vec::new(); DELAYS.len()];
            for round in 0..rounds {
                for k in 0..DELAYS.len() {
                    let ix = (k + round) % DELAYS.len();
                    let load = model.load(name(DELAYS[ix]), Some(objective));
                    let request = tokio.block_on(target(&base, Protocol::HttpBinary, &load));
                    let s = tokio.block_on(open_loop(&request, rate, window));
                    let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
                    cells[ix].push((s.goodput(objective), p50, p99, s.rejected(), s.other()));
                }
            }
            for (variant, runs) in DELAYS.iter().zip(&cells) {
                let median = |mut v: Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let goodput: Vec<f64> = runs.iter().map(|r| r.0).collect();
                let range = if rounds > 1 {
                    let lo = goodput.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = goodput.iter().copied().fold(0.0, f64::max);
                    format!(" ({}–{})", per_s(lo), per_s(hi))
                } else {
                    String::new()
                };
                println!(
                    "| {:.0} % | {variant} | {} | {}{range} | {:.2} | {:.2} | {} | {} |",
                    load * 100.0,
                    per_s(rate),
                    per_s(median(goodput.clone())),
                    median(runs.iter().map(|r| ms(r.1)).collect()),
                    median(runs.iter().map(|r| ms(r.2)).collect()),
                    runs.iter().map(|r| r.3).sum::<u64>(),
                    runs.iter().map(|r| r.4).sum::<u64>(),
                );
            }
        }

        // Overload, then recovery.
        if !part("overload") {
            continue;
        }
        let load = model.load(name("adaptive"), Some(objective));
        let request = tokio.block_on(target(&base, Protocol::HttpBinary, &load));
        let server_pid = _server.as_ref().map(common::ServerProcess::id);
        let before = rss_mib(server_pid);
        let s = tokio.block_on(open_loop(&request, best * 2.0, overload));
        let after = rss_mib(server_pid);
        let total = s.total();
        println!(
            "\nOverload at 2x ceiling for {:.0} s: {total} sent, {} ok, {} rejected (429), {} other ({} of them timeouts: 504), {} without an answer; RSS {before:.0} -> {after:.0} MiB.",
            overload.as_secs_f64(),
            s.ok(),
            s.rejected(),
            s.other(),
            s.timeouts(),
            s.unanswered(),
        );
        // Recovery: 30 % load at once, twice in a row.
        for round in ["right after", "then"] {
            let calm = tokio.block_on(open_loop(&request, best * 0.3, window));
            let (p50, p99) = (calm.percentile(0.5), calm.percentile(0.99));
            println!(
                "{round}, at 30 % for {:.0} s: {} of {} ok, {} rejected, {} timed out, p50 {:.2} ms, p99 {:.2} ms",
                window.as_secs_f64(),
                calm.ok(),
                calm.total(),
                calm.rejected(),
                calm.timeouts(),
                ms(p50),
                ms(p99),
            );
        }
        println!();
    }
}

/// One open-loop run of one variant: (goodput/s, p50, p99, 429s, other errors).
type OpenCell = (f64, Duration, Duration, u64, u64);

impl Model {
    /// A batch-1 request for the variant `model` of this model.
    fn load(&self, model: String, timeout: Option<Duration>) -> Load {
        Load {
            model,
            input: self.input,
            dims: self.dims,
            timeout,
        }
    }
}

/// A rate with the precision it deserves: one decimal below 100/s.
fn per_s(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}
