//! End-to-end smoke runs of `sluice bench`: every scenario, each protocol, against a
//! real `sluice serve` on the example models (a fraction of a second per run). They
//! check that the load generator talks to the server and reports what it saw, not
//! how fast anything is.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice_test_support::{Serve, ServerProcess};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A real `sluice serve`, its ports read from its ready file.
struct Server {
    _process: ServerProcess,
    http: String,
    grpc: String,
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

fn server() -> Server {
    let process = Serve::new(SLUICE, examples()).spawn();
    Server {
        http: process.ready().http.expect("HTTP listener").to_string(),
        grpc: process.grpc_addr(),
        _process: process,
    }
}

/// Runs `sluice bench` with short runs; returns the JSON report and stdout.
fn bench(url: &str, args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut command = Command::new(SLUICE);
    command.args(["bench", "--url", url, "--quiet", "--report"]);
    command.arg(&report).args(args);
    for (flag, default) in [("--duration", "0.3"), ("--warmup", "0.1")] {
        if !args.contains(&flag) {
            command.args([flag, default]);
        }
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (report, stdout)
}

fn runs(report: &Value) -> &Vec<Value> {
    report["runs"].as_array().unwrap()
}

/// Every run answered requests without errors, with ordered percentiles.
fn check_runs(report: &Value) {
    assert!(!runs(report).is_empty(), "{report}");
    for r in runs(report) {
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let l = &r["latency_ms"];
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(
            0.0 < p("min") && p("min") <= p("p50") && p("p50") <= p("p99"),
            "{l}"
        );
        assert!(p("p99") <= p("max"), "{l}");
    }
}

#[test]
fn every_scenario_runs_against_a_local_sluice() {
    let s = server();

    let (r, table) = bench(&s.http, &["--model", "mlp"]);
    check_runs(&r);
    assert_eq!(r["scenario"], "SingleStream");
    assert_eq!(r["protocol"], "http-binary");
    assert_eq!(r["result"]["metric"], "90th percentile latency");
    assert!(
        table.contains("single stream") && table.contains("result:"),
        "{table}"
    );

    // MultiStream over gRPC: the batching mlp gets one request of 4 rows per query.
    let (r, _) = bench(
        &s.grpc,
        &[
            "--protocol",
            "grpc",
            "--model",
            "mlp",
            "--scenario",
            "multi-stream",
            "--samples-per-query",
            "4",
        ],
    );
    check_runs(&r);
    let run = &runs(&r)[0];
    assert_eq!(
        run["samples"].as_u64().unwrap(),
        4 * run["requests"].as_u64().unwrap()
    );

    // MultiStream on a model without a batch dimension: 3 requests per query.
    let (r, _) = bench(
        &s.http,
        &[
            "--protocol",
            "http-json",
            "--model",
            "mixed",
            "--scenario",
            "multi-stream",
            "--samples-per-query",
            "3",
        ],
    );
    check_runs(&r);
    let run = &runs(&r)[0];
    assert_eq!(
        run["samples"].as_u64().unwrap(),
        3 * run["requests"].as_u64().unwrap()
    );

    // Server: Poisson at 200/s against a generous bound.
    let (r, _) = bench(
        &s.http,
        &[
            "--model",
            "cnn",
            "--scenario",
            "server",
            "--target-qps",
            "200",
            "--latency-bound-ms",
            "2000",
        ],
    );
    check_runs(&r);
    let run = &runs(&r)[0];
    assert_eq!(run["target_qps"], 200.0);
    assert_eq!(run["meets_bound"], true);
    assert_eq!(r["result"]["valid"], true);
    let scheduled = run["scheduled_qps"].as_f64().unwrap();
    assert!(scheduled > 0.0, "{run}");

    // Offline with batches of 8 rows.
    let (r, _) = bench(
        &s.http,
        &[
            "--model",
            "mlp",
            "--scenario",
            "offline",
            "--concurrency",
            "3",
            "--batch-size",
            "8",
        ],
    );
    check_runs(&r);
    let run = &runs(&r)[0];
    assert_eq!(run["concurrency"], 3);
    assert_eq!(
        run["samples"].as_u64().unwrap(),
        8 * run["requests"].as_u64().unwrap()
    );
    assert_eq!(r["result"]["unit"], "samples/s");
}

#[test]
fn think_time_paces_a_single_stream() {
    let s = server();
    // 20 ms pauses (mean) over 0.5 s measured: a few dozen requests at most, whatever
    // the machine's speed (200 exponential pauses summing under 0.6 s is beyond
    // chance); without pauses the same run sends a request as soon as one is answered.
    let (r, _) = bench(
        &s.http,
        &["--model", "mlp", "--think-ms", "20", "--duration", "0.5"],
    );
    check_runs(&r);
    let n = runs(&r)[0]["requests"].as_u64().unwrap();
    assert!((1..200).contains(&n), "{n} requests");
    let out = Command::new(SLUICE)
        .args(["bench", "--url", &s.http, "--model", "mlp", "--think-ms=-1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--think-ms"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sweeps_peak_search_npy_inputs_and_errors() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();

    // A concurrency sweep with a plot.
    let plot = dir.path().join("sweep.svg");
    let (r, _) = bench(
        &s.http,
        &[
            "--model",
            "digits",
            "--concurrency-range",
            "1:3:2",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    check_runs(&r);
    assert_eq!(r["scenario"], "concurrency sweep");
    let levels: Vec<u64> = runs(&r)
        .iter()
        .map(|x| x["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, vec![1, 3]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<circle").count() == 4,
        "{svg}"
    );

    // An open-loop rate sweep over gRPC.
    let (r, _) = bench(
        &s.grpc,
        &[
            "--protocol",
            "grpc",
            "--model",
            "mlp",
            "--rate-range",
            "50:100:50",
        ],
    );
    check_runs(&r);
    let rates: Vec<f64> = runs(&r)
        .iter()
        .map(|x| x["target_qps"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, vec![50.0, 100.0]);

    // find-peak with a bound no server meets: the search halves down to its floor and
    // reports no valid rate after halving four times (the runs themselves succeed).
    let (r, _) = bench(
        &s.http,
        &[
            "--model",
            "mlp",
            "--scenario",
            "server",
            "--find-peak",
            "--target-qps",
            "64",
            "--latency-bound-ms",
            "0.000001",
            "--duration",
            "0.1",
            "--warmup",
            "0",
            "--min-queries",
            "4",
        ],
    );
    check_runs(&r);
    assert_eq!(r["result"]["valid"], false);
    let tried: Vec<f64> = runs(&r)
        .iter()
        .map(|x| x["target_qps"].as_f64().unwrap())
        .collect();
    assert_eq!(tried, vec![64.0, 32.0, 16.0, 8.0, 4.0]);

    // Inputs from a .npy file: 2 rows per request, shape taken from the file.
    let npy = dir.path().join("x.npy");
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 784), }".to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..2 * 784).flat_map(|i| (i as f32 / 1568.0).to_le_bytes()));
    std::fs::write(&npy, bytes).unwrap();
    let input = format!("input={}", npy.display());
    let (r, _) = bench(&s.http, &["--model", "mlp", "--input", &input]);
    check_runs(&r);
    let run = &runs(&r)[0];
    assert_eq!(
        run["samples"].as_u64().unwrap(),
        2 * run["requests"].as_u64().unwrap()
    );

    // An unknown model: a clear error and a failed exit, before any load.
    let out = Command::new(SLUICE)
        .args(["bench", "--url", &s.http, "--model", "nope", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the metadata of model nope") && err.contains("404"),
        "{err}"
    );
}
