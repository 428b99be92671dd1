//! The simulator against closed forms of queueing theory, and its accounting rules.

use super::*;
use crate::policy::{hpa, Bounds, PolicyConfig};
use crate::profile::{test_profile, ServiceModel};
use crate::trace::TraceSpec;

fn one_stage(
    profile: Profile,
    replicas: u32,
    max_batch: u32,
    controller: Option<Controller>,
) -> StageSetup {
    StageSetup {
        name: "m".into(),
        cost_per_hour: vec![profile.cost_per_hour.unwrap_or(1.0)],
        classes: vec![profile],
        initial: vec![replicas],
        max_batch,
        max_queue_delay_s: 0.0,
        queue_capacity: None,
        controller,
    }
}

fn mean_latency(r: &RunResult) -> f64 {
    let v: Vec<f64> = r.requests.iter().map(|x| x.1.expect("answered")).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean wait in M/M/1 and M/D/1 (10 ms mean service, μ = 100/s) within 3 % of the
/// closed forms at four loads; ~400k requests per point, fixed seeds.
#[test]
fn mm1_and_md1_waiting_times_match_the_closed_forms() {
    let mu = 100.0;
    for rho in [0.3, 0.5, 0.7, 0.8] {
        let lambda = rho * mu;
        let seconds = 400_000.0 / lambda;
        let arrivals = TraceSpec::Poisson {
            rate: lambda,
            seconds,
        }
        .generate(11);
        // M/M/1: exponential service with mean 10 ms (p50 = 10 ln 2 ms)
        let exp = test_profile(
            "c",
            1.0,
            &[(1, 10.0 * std::f64::consts::LN_2)],
            ServiceModel::Exponential,
        );
        let r = run(vec![one_stage(exp, 1, 1, None)], &arrivals, seconds, 1);
        let wq = mean_latency(&r) - 1.0 / mu;
        let expect = rho / (mu - lambda);
        assert!(
            (wq / expect - 1.0).abs() < 0.03,
            "M/M/1 rho {rho}: Wq {wq} vs {expect}"
        );
        // the sojourn time of M/M/1 is exponential with rate μ − λ: p99 = ln 100 / (μ − λ)
        let mut lat: Vec<f64> = r.requests.iter().map(|x| x.1.unwrap()).collect();
        lat.sort_by(f64::total_cmp);
        let p99 = crate::report::quantile(&lat, 0.99).unwrap();
        let expect99 = 100f64.ln() / (mu - lambda);
        // (a tail quantile converges slower than the mean: 5 %)
        assert!(
            (p99 / expect99 - 1.0).abs() < 0.05,
            "M/M/1 rho {rho}: p99 {p99} vs {expect99}"
        );
        // M/D/1: Pollaczek–Khinchine, Wq = ρ / (2 μ (1 − ρ))
        let det = test_profile("c", 1.0, &[(1, 10.0)], ServiceModel::Deterministic);
        let r = run(vec![one_stage(det, 1, 1, None)], &arrivals, seconds, 1);
        let wq = mean_latency(&r) - 1.0 / mu;
        let expect = rho / (2.0 * mu * (1.0 - rho));
        assert!(
            (wq / expect - 1.0).abs() < 0.03,
            "M/D/1 rho {rho}: Wq {wq} vs {expect}"
        );
    }
}

/// M/M/3 at ρ = 0.7: Wq = C(3, a) / (3μ − λ) (Erlang C).
#[test]
fn mmc_waiting_time_matches_erlang_c() {
    let mu = 100.0;
    let lambda = 0.7 * 3.0 * mu;
    let seconds = 400_000.0 / lambda;
    let arrivals = TraceSpec::Poisson {
        rate: lambda,
        seconds,
    }
    .generate(5);
    let exp = test_profile(
        "c",
        1.0,
        &[(1, 10.0 * std::f64::consts::LN_2)],
        ServiceModel::Exponential,
    );
    let r = run(vec![one_stage(exp, 3, 1, None)], &arrivals, seconds, 2);
    let wq = mean_latency(&r) - 1.0 / mu;
    let expect = crate::policy::slo::erlang_c(3, lambda / mu) / (3.0 * mu - lambda);
    assert!((wq / expect - 1.0).abs() < 0.04, "Wq {wq} vs {expect}");
}

#[test]
fn an_idle_trace_costs_the_minimum_and_nothing_else() {
    let mut prof = test_profile("c", 0.36, &[(1, 5.0)], ServiceModel::Deterministic);
    prof.load_time_s = 5.0;
    let policy = PolicyConfig::Hpa(hpa::HpaConfig::with_metric(
        hpa::HpaMetric::Utilization { target: 0.5 },
        Bounds {
            min_replicas: 2,
            max_replicas: 10,
        },
    ));
    let c = Controller::new(&policy, &prof, 0.1).unwrap();
    let r = run(vec![one_stage(prof, 2, 1, Some(c))], &[], 600.0, 0);
    assert_eq!(r.scaling_actions, 0);
    assert!((r.replica_seconds[0][0] - 1200.0).abs() < 1e-9);
    // 2 replicas × 600 s at $0.36/h = $0.12
    assert!((r.cost - 0.12).abs() < 1e-12, "{}", r.cost);
    assert!(r.requests.is_empty());
}

#[test]
fn simultaneous_requests_run_as_one_batch() {
    let prof = test_profile(
        "c",
        1.0,
        &[(1, 5.0), (8, 20.0)],
        ServiceModel::Deterministic,
    );
    let arrivals = vec![1.0; 8];
    // without a queue delay the first request runs alone at once (as Triton's batcher
    // does with max_queue_delay 0), the other 7 together after it
    let r = run(vec![one_stage(prof.clone(), 1, 8, None)], &arrivals, 2.0, 0);
    let mut l: Vec<f64> = r.requests.iter().map(|x| x.1.unwrap()).collect();
    l.sort_by(f64::total_cmp);
    assert!(
        (l[0] - 0.005).abs() < 1e-9 && (l[1] - 0.025).abs() < 1e-9 && (l[7] - 0.025).abs() < 1e-9,
        "{l:?}"
    );
    // with a 1 µs delay all 8 run as one batch (a full batch leaves at once)
    let mut st = one_stage(prof.clone(), 1, 8, None);
    st.max_queue_delay_s = 1e-6;
    let r = run(vec![st], &arrivals, 2.0, 0);
    assert!(r
        .requests
        .iter()
        .all(|x| (x.1.unwrap() - 0.020).abs() < 1e-9));
    // with max_batch 4: two runs of the batch-8 entry (4 rows round up to 8) back to back
    let mut st = one_stage(prof, 1, 4, None);
    st.max_queue_delay_s = 1e-6;
    let r = run(vec![st], &arrivals, 2.0, 0);
    let mut l: Vec<f64> = r.requests.iter().map(|x| x.1.unwrap()).collect();
    l.sort_by(f64::total_cmp);
    assert!(
        (l[0] - 0.020).abs() < 1e-5 && (l[7] - 0.040).abs() < 1e-5,
        "{l:?}"
    );
}

#[test]
fn queue_delay_waits_for_a_fuller_batch_until_the_oldest_is_due() {
    let prof = test_profile("c", 1.0, &[(1, 5.0), (4, 8.0)], ServiceModel::Deterministic);
    let mut st = one_stage(prof, 1, 4, None);
    st.max_queue_delay_s = 0.010;
    // 3 requests at 0, 0.002, 0.004: nothing runs before 0.010, then one batch of 3
    let r = run(vec![st], &[0.0, 0.002, 0.004], 1.0, 0);
    let l: Vec<f64> = r.requests.iter().map(|x| x.1.unwrap()).collect();
    for (lat, arr) in l.iter().zip([0.0, 0.002, 0.004]) {
        assert!((lat - (0.018 - arr)).abs() < 1e-9, "{l:?}");
    }
}

#[test]
fn cold_starts_delay_new_replicas_and_draining_loses_nothing() {
    let mut prof = test_profile("c", 1.0, &[(1, 10.0)], ServiceModel::Deterministic);
    prof.load_time_s = 20.0;
    // 1 replica at 100/s capacity; load steps from 50/s to 300/s at 100 s, back at 200 s
    let arrivals = TraceSpec::parse("step:rates=50/300/50/50/50/50/50/50,every=100")
        .unwrap()
        .generate(3);
    let policy = PolicyConfig::Hpa(hpa::HpaConfig::with_metric(
        hpa::HpaMetric::Utilization { target: 0.6 },
        Bounds {
            min_replicas: 1,
            max_replicas: 10,
        },
    ));
    let c = Controller::new(&policy, &prof, 1.0).unwrap();
    let r = run(vec![one_stage(prof, 1, 1, Some(c))], &arrivals, 800.0, 0);
    // every request answered, including those on replicas removed while busy
    assert!(r.requests.iter().all(|x| x.1.is_some()));
    let first_up = r.decisions.iter().find(|d| d.2 > 1).expect("scaled up").0;
    assert!((100.0..=120.0).contains(&first_up), "{first_up}");
    // the new replica serves nothing before its 20-s load time: in the 20 s after the
    // decision only the one ready replica answers (100/s, deterministic 10 ms runs);
    // in the 20 s after that, two do
    let done_in = |from: f64, to: f64| {
        r.requests
            .iter()
            .filter(|x| (from..to).contains(&(x.0 + x.1.unwrap())))
            .count()
    };
    assert!(
        done_in(first_up, first_up + 20.0) <= 2001,
        "{}",
        done_in(first_up, first_up + 20.0)
    );
    assert!(
        done_in(first_up + 20.0, first_up + 30.0) >= 1990,
        "{}",
        done_in(first_up + 20.0, first_up + 30.0)
    );
    // scaled back down after the step and the 300-s window
    let peak = r.decisions.iter().map(|d| d.2).max().unwrap();
    assert!(
        r.decisions
            .iter()
            .any(|d| d.2 < peak && d.2 <= 2 && d.0 > 500.0),
        "{:?}",
        r.decisions
    );
    // replica-seconds include the starting time: more than ready-time alone
    assert!(r.replica_seconds[0][0] > 400.0);
}

#[test]
fn two_stage_pipeline_adds_the_stage_times() {
    let a = test_profile("a", 1.0, &[(1, 4.0)], ServiceModel::Deterministic);
    let b = test_profile("b", 1.0, &[(1, 6.0)], ServiceModel::Deterministic);
    let arrivals: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.1).collect();
    let r = run(
        vec![one_stage(a, 1, 1, None), one_stage(b, 1, 1, None)],
        &arrivals,
        10.0,
        0,
    );
    assert!(r
        .requests
        .iter()
        .all(|x| (x.1.unwrap() - 0.010).abs() < 1e-9));
    assert!((r.replica_seconds.iter().flatten().sum::<f64>() - 20.0).abs() < 1e-6);
}
