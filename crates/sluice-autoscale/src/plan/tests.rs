//! The planner against brute force on cases small enough to simulate every plan.

use super::*;
use crate::profile::{test_profile, ServiceModel};
use crate::trace::TraceSpec;

fn class(name: &str, price: f64, batches: &[(u32, f64)]) -> (Profile, f64) {
    (
        test_profile(name, price, batches, ServiceModel::Lognormal),
        price,
    )
}

/// Every plan with up to `max` replicas per class, simulated; the cheapest feasible.
fn brute_force(input: &PlanInput<'_>) -> Option<(f64, Vec<Choice>)> {
    let mut per_stage: Vec<Vec<Choice>> = vec![];
    for st in &input.stages {
        let k = st.classes.len() as u32;
        let mut v = vec![];
        for code in 0..(input.max_replicas + 1).pow(k) {
            let counts: Vec<u32> = (0..k)
                .map(|i| code / (input.max_replicas + 1).pow(i) % (input.max_replicas + 1))
                .collect();
            let used = counts.iter().filter(|&&n| n > 0).count();
            if used == 0 || (!input.heterogeneous && used > 1) {
                continue;
            }
            for b in batch_sizes(st) {
                v.push(Choice {
                    counts: counts.clone(),
                    max_batch: b,
                });
            }
        }
        per_stage.push(v);
    }
    let mut best: Option<(f64, Vec<Choice>)> = None;
    let mut idx = vec![0; per_stage.len()];
    loop {
        let cand: Vec<Choice> = idx
            .iter()
            .zip(&per_stage)
            .map(|(&i, v): (&usize, &Vec<Choice>)| v[i].clone())
            .collect();
        let c = cost(&input.stages, &cand);
        if best.as_ref().is_none_or(|(b, _)| c < *b) {
            let stages = input
                .stages
                .iter()
                .zip(&cand)
                .map(|(s, ch)| StageSetup {
                    name: s.name.clone(),
                    classes: s.classes.iter().map(|x| x.0.clone()).collect(),
                    cost_per_hour: s.classes.iter().map(|x| x.1).collect(),
                    initial: ch.counts.clone(),
                    max_batch: ch.max_batch,
                    max_queue_delay_s: input.max_queue_delay_s,
                    queue_capacity: None,
                    controller: None,
                })
                .collect();
            let r = sim::run(stages, input.arrivals, input.duration, input.seed);
            let mut lat: Vec<f64> = r.requests.iter().map(|x| x.1.unwrap()).collect();
            lat.sort_by(f64::total_cmp);
            if quantile(&lat, 0.99).unwrap() <= input.slo_s {
                best = Some((c, cand));
            }
        }
        let mut d = 0;
        loop {
            if d == idx.len() {
                return best;
            }
            idx[d] += 1;
            if idx[d] < per_stage[d].len() {
                break;
            }
            idx[d] = 0;
            d += 1;
        }
    }
}

fn input<'a>(
    stages: Vec<PlanStage>,
    arrivals: &'a [f64],
    seconds: f64,
    slo_s: f64,
    max: u32,
) -> PlanInput<'a> {
    PlanInput {
        stages,
        slo_s,
        arrivals,
        duration: seconds,
        seed: 1,
        max_replicas: max,
        heterogeneous: true,
        exact_budget: 100_000,
        max_queue_delay_s: 0.0,
    }
}

#[test]
fn one_stage_two_classes_matches_brute_force_and_mixes_when_cheaper() {
    let arrivals = TraceSpec::Poisson {
        rate: 420.0,
        seconds: 60.0,
    }
    .generate(7);
    let stages = vec![PlanStage {
        name: "m".into(),
        classes: vec![
            class("slow", 1.0, &[(1, 10.0), (4, 30.0)]),
            class("fast", 2.0, &[(1, 4.0), (4, 12.0)]),
        ],
    }];
    for max in [3, 4] {
        let inp = input(stages.clone(), &arrivals, 60.0, 0.2, max);
        let p = plan(&inp).unwrap();
        let (bf, _) = brute_force(&inp).expect("a feasible plan exists");
        assert_eq!(p.search, "exact");
        assert!(
            (p.cost_per_hour - bf).abs() < 1e-9,
            "planner {} vs brute force {bf}: {}",
            p.cost_per_hour,
            describe(&p)
        );
        assert!(p.greedy_cost_per_hour >= p.cost_per_hour);
        assert!(p.p99_ms.unwrap() <= 200.0);
    }
    // here the optimum mixes classes and beats both homogeneous fleets
    let inp = input(stages, &arrivals, 60.0, 0.2, 4);
    let p = plan(&inp).unwrap();
    assert_eq!(p.stages[0].replicas.len(), 2, "{}", describe(&p));
    for c in ["slow", "fast"] {
        let h = homogeneous(&inp, c).unwrap();
        assert!(h.cost_per_hour > p.cost_per_hour, "{c}: {}", describe(&h));
    }
}

#[test]
fn two_stage_pipeline_matches_brute_force() {
    let arrivals = TraceSpec::parse("step:rates=100/250/100,every=20")
        .unwrap()
        .generate(3);
    let stages = vec![
        PlanStage {
            name: "pre".into(),
            classes: vec![
                class("cpu", 1.0, &[(1, 3.0), (8, 10.0)]),
                class("gpu", 4.0, &[(1, 1.0), (8, 2.0)]),
            ],
        },
        PlanStage {
            name: "model".into(),
            classes: vec![
                class("cpu", 1.0, &[(1, 12.0), (8, 40.0)]),
                class("gpu", 4.0, &[(1, 2.0), (8, 6.0)]),
            ],
        },
    ];
    let inp = input(stages, &arrivals, 60.0, 0.1, 3);
    let p = plan(&inp).unwrap();
    let (bf, choice) = brute_force(&inp).expect("feasible");
    assert!(
        (p.cost_per_hour - bf).abs() < 1e-9,
        "planner {} vs brute force {bf} {choice:?}: {}",
        p.cost_per_hour,
        describe(&p)
    );
}

#[test]
fn impossible_objectives_are_reported() {
    let arrivals = TraceSpec::Poisson {
        rate: 50.0,
        seconds: 10.0,
    }
    .generate(1);
    let stages = vec![PlanStage {
        name: "m".into(),
        classes: vec![class("c", 1.0, &[(1, 50.0)])],
    }];
    let e = plan(&input(stages.clone(), &arrivals, 10.0, 0.02, 4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no plan"), "{e}");
    let e = plan(&input(
        vec![PlanStage {
            name: "m".into(),
            classes: vec![],
        }],
        &arrivals,
        10.0,
        0.1,
        4,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least one hardware class"), "{e}");
    assert!(homogeneous(&input(stages, &arrivals, 10.0, 1.0, 4), "gpu").is_err());
}

#[test]
fn initial_plan_uses_batches_that_fit_the_whole_objective() {
    // stage a needs batch 8 to carry 400/s on 3 replicas (batch 1: 3 × 100/s); 2 × its
    // batch-8 run (40 ms) exceeds half of the 60-ms objective but fits the whole of it
    let arrivals = TraceSpec::Poisson {
        rate: 400.0,
        seconds: 30.0,
    }
    .generate(2);
    let stages = vec![
        PlanStage {
            name: "a".into(),
            classes: vec![class("c", 1.0, &[(1, 10.0), (8, 20.0)])],
        },
        PlanStage {
            name: "b".into(),
            classes: vec![class("c", 1.0, &[(1, 0.5), (8, 1.0)])],
        },
    ];
    let inp = input(stages, &arrivals, 30.0, 0.06, 3);
    let p = homogeneous(&inp, "c").unwrap();
    assert_eq!(p.stages[0].max_batch, 8, "{}", describe(&p));
    assert!(p.p99_ms.unwrap() <= 60.0);
}
