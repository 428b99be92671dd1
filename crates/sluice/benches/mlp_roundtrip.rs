//! What the HTTP path costs on top of the engine: the example MLP (784-256-10) at
//! batch 1, run (a) as a raw tract call in this process and (b) as a Triton binary
//! infer request over loopback HTTP to an in-process Sluice server, with 1 client and
//! with 8 concurrent clients (keep-alive connections, one per client).
//!
//! Run: `cargo bench -p sluice --bench mlp_roundtrip` (env `BENCH_SECONDS`, default 5).
//! Client and server share this process and its cores, so read the figures as ratios.

mod common;

use std::time::Duration;

use common::{
    closed_loop, raw_engine, seconds_from_env, start_server, target, us, workspace_path, Load,
};
use sluice_client::Protocol;

fn main() {
    let seconds = Duration::from_secs_f64(seconds_from_env(5.0));
    let repo = workspace_path("examples/models");
    let raw = raw_engine(&repo, "mlp", 1, seconds);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (one, eight) = tokio.block_on(async {
        let (endpoints, _runtime) = start_server(&repo).await;
        let load = Load {
            model: "mlp".into(),
            input: "input",
            dims: &[784],
            timeout: None,
        };
        let request = target(&endpoints.http, Protocol::HttpBinary, &load).await;
        let _warmup = closed_loop(&request, 1, Duration::from_millis(300)).await;
        let one = closed_loop(&request, 1, seconds).await;
        let eight = closed_loop(&request, 8, seconds).await;
        (one, eight)
    });

    println!(
        "MLP 784-256-10, batch 1, {:.0}s per measurement",
        seconds.as_secs_f64()
    );
    println!("| path | clients | req/s | mean µs | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (name, clients, s) in [
        ("raw tract call", 1, &raw),
        ("HTTP binary infer", 1, &one),
        ("HTTP binary infer", 8, &eight),
    ] {
        let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
        println!(
            "| {name} | {clients} | {:.0} | {:.1} | {:.1} | {:.1} |",
            s.per_second(),
            us(s.mean()),
            us(p50),
            us(p99)
        );
    }
    println!(
        "HTTP round trip / raw call (p50, 1 client): {:.2}x; added latency {:.1} µs",
        us(one.percentile(0.5)) / us(raw.percentile(0.5)),
        us(one.percentile(0.5)) - us(raw.percentile(0.5))
    );
    println!(
        "8 clients / 1 client throughput: {:.2}x",
        eight.per_second() / one.per_second()
    );
}
