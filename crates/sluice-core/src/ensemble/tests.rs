use serde_json::{json, Value};

use super::*;

/// A composing model: `name` with FP32 inputs and outputs of dims [4], batching 8.
fn model(name: &str, inputs: &[&str], outputs: &[&str]) -> ModelConfig {
    let tensors = |names: &[&str]| {
        names
            .iter()
            .map(|n| json!({"name": n, "data_type": "TYPE_FP32", "dims": [4]}))
            .collect::<Vec<_>>()
    };
    ModelConfig::from_json_value(json!({
        "name": name, "max_batch_size": 8,
        "input": tensors(inputs), "output": tensors(outputs)
    }))
    .unwrap()
}

fn step(model: &str, inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> Value {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<String, Value>>()
    };
    json!({"model_name": model, "input_map": map(inputs), "output_map": map(outputs)})
}

/// An ensemble `e` with FP32 [4] inputs and outputs, and `extra` fields merged in.
fn ensemble(
    inputs: &[&str],
    outputs: &[&str],
    steps: Vec<Value>,
    extra: Value,
) -> Result<ModelConfig> {
    let tensors = |names: &[&str]| {
        names
            .iter()
            .map(|n| json!({"name": n, "data_type": "TYPE_FP32", "dims": [4]}))
            .collect::<Vec<_>>()
    };
    let mut v = json!({
        "name": "e", "platform": "ensemble", "max_batch_size": 8,
        "input": tensors(inputs), "output": tensors(outputs),
        "ensemble_scheduling": {"step": steps}
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    let config = ModelConfig::from_json_value(v)?;
    config.validate()?;
    Ok(config)
}

/// The composing models of the tests: a, b, c, d (x → y), join (p, q → r).
fn composing(s: &EnsembleStep) -> Result<ModelConfig> {
    match s.model_name.as_str() {
        "join" => Ok(model("join", &["p", "q"], &["r"])),
        "two" => Ok(model("two", &["x"], &["y", "z"])),
        "int" => {
            let mut m = model("int", &["x"], &["y"]);
            m.input[0].data_type = DataType::I64;
            Ok(m)
        }
        "wide" => {
            let mut m = model("wide", &["x"], &["y"]);
            m.input[0].dims = vec![5];
            Ok(m)
        }
        "small" => {
            let mut m = model("small", &["x"], &["y"]);
            m.max_batch_size = 2;
            Ok(m)
        }
        "opt" => {
            let mut m = model("opt", &["x", "o"], &["y"]);
            m.input[1].optional = true;
            Ok(m)
        }
        "missing" => Err(Error::not_found("no model 'missing' in the repository")),
        other => Ok(model(other, &["x"], &["y"])),
    }
}

fn local_err(inputs: &[&str], outputs: &[&str], steps: Vec<Value>, extra: Value) -> String {
    match ensemble(inputs, outputs, steps, extra) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => {
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
            e.message().to_owned()
        }
    }
}

fn graph_err(config: &ModelConfig) -> String {
    match EnsembleGraph::build(config, composing) {
        Ok(g) => panic!("accepted: {g:?}"),
        Err(e) => e.message().to_owned(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "'{p}' missing from: {msg}");
    }
}

#[test]
fn a_chain_parses_from_pbtxt_json_and_orders_its_steps() {
    let c = ensemble(
        &["in"],
        &["out"],
        vec![
            step("b", &[("x", "mid")], &[("y", "out")]),
            step("a", &[("x", "in")], &[("y", "mid")]),
        ],
        json!({}),
    )
    .unwrap();
    let s = EnsembleScheduling::from_config(&c).unwrap().unwrap();
    assert_eq!(s.step[0].model_version, -1);
    let g = EnsembleGraph::build(&c, composing).unwrap();
    assert_eq!(g.order, vec![1, 0]);
    assert_eq!(g.depends_on, vec![vec![1], vec![]]);
    assert_eq!(
        g.sources["mid"],
        Source::Step {
            step: 1,
            output: "y".into()
        }
    );
    assert_eq!(g.sources["in"], Source::EnsembleInput);
    // model_version as the proto JSON's string form, and max_inflight_requests.
    let c = ensemble(
        &["in"],
        &["out"],
        vec![json!({"model_name": "a", "model_version": "3", "input_map": {"x": "in"}, "output_map": {"y": "out"}})],
        json!({}),
    )
    .unwrap();
    assert_eq!(
        EnsembleScheduling::from_config(&c).unwrap().unwrap().step[0].model_version,
        3
    );
    assert!(EnsembleScheduling::from_config(&model("a", &["x"], &["y"]))
        .unwrap()
        .is_none());
}

#[test]
fn a_branching_graph_runs_its_branches_in_parallel() {
    // in → a → p ─┐
    //             join → r (out)
    // in → b → q ─┘      and in → c → side (out2)
    let c = ensemble(
        &["in"],
        &["out", "out2"],
        vec![
            step("join", &[("p", "p"), ("q", "q")], &[("r", "out")]),
            step("a", &[("x", "in")], &[("y", "p")]),
            step("b", &[("x", "in")], &[("y", "q")]),
            step("c", &[("x", "in")], &[("y", "out2")]),
        ],
        json!({}),
    )
    .unwrap();
    let g = EnsembleGraph::build(&c, composing).unwrap();
    assert_eq!(g.depends_on[0], vec![1, 2]);
    assert_eq!(g.dependents[1], vec![0]);
    let position = |s: usize| g.order.iter().position(|&x| x == s).unwrap();
    assert!(position(0) > position(1) && position(0) > position(2));
    let mut t = g.tracker();
    assert_eq!(
        t.initial(),
        vec![1, 2, 3],
        "the three branches start together"
    );
    assert_eq!(t.complete(1), Vec::<usize>::new(), "join still waits for b");
    assert_eq!(
        t.complete(1),
        Vec::<usize>::new(),
        "a repeated completion counts once"
    );
    assert_eq!(t.complete(3), Vec::<usize>::new());
    assert!(!t.finished());
    assert_eq!(t.complete(2), vec![0]);
    assert_eq!(t.complete(0), Vec::<usize>::new());
    assert!(t.finished());
    assert_eq!(t.complete(99), Vec::<usize>::new());
}

/// Ensemble inputs, outputs, steps, extra config fields, and the parts of the error.
type LocalCase<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<Value>, Value, Vec<&'a str>);

#[test]
fn local_refusals_name_the_step_and_tensor() {
    let a_in_out = || vec![step("a", &[("x", "in")], &[("y", "out")])];
    let cases: Vec<LocalCase<'_>> = vec![
        (vec!["in"], vec!["out"], vec![], json!({}), vec!["no step"]),
        (
            vec!["in"],
            vec!["out"],
            a_in_out(),
            json!({"instance_group": [{"count": 1}]}),
            vec!["instance_group must not be set"],
        ),
        (
            vec!["in"],
            vec!["out"],
            a_in_out(),
            json!({"model_warmup": [{"name": "w"}]}),
            vec!["model_warmup must not be set"],
        ),
        (
            vec!["in"],
            vec!["out"],
            a_in_out(),
            json!({"dynamic_batching": {}}),
            vec!["dynamic_batching must not be set"],
        ),
        (
            vec!["in"],
            vec!["out"],
            a_in_out(),
            json!({"backend": "tract"}),
            vec!["no backend"],
        ),
        (
            vec!["in"],
            vec!["out"],
            vec![step("a", &[], &[("y", "out")])],
            json!({}),
            vec!["step 0 (model 'a') has no input_map"],
        ),
        (
            vec!["in"],
            vec!["out"],
            vec![step("a", &[("x", "in")], &[])],
            json!({}),
            vec!["step 0 (model 'a') has no output_map"],
        ),
        (
            vec!["in"],
            vec!["out"],
            vec![step("", &[("x", "in")], &[("y", "out")])],
            json!({}),
            vec!["step 0 has no model_name"],
        ),
        (
            vec!["in"],
            vec!["out"],
            vec![step("e", &[("x", "in")], &[("y", "out")])],
            json!({}),
            vec!["the ensemble itself"],
        ),
        // A tensor written twice.
        (
            vec!["in"],
            vec!["out"],
            vec![
                step("a", &[("x", "in")], &[("y", "out")]),
                step("b", &[("x", "in")], &[("y", "out")]),
            ],
            json!({}),
            vec![
                "tensor 'out' is written twice",
                "step 0 (model 'a')",
                "step 1 (model 'b')",
            ],
        ),
        // Writing an ensemble input.
        (
            vec!["in"],
            vec!["out"],
            vec![
                step("a", &[("x", "in")], &[("y", "out")]),
                step("b", &[("x", "out")], &[("y", "in")]),
            ],
            json!({}),
            vec!["step 1 (model 'b') writes tensor 'in', which is an ensemble input"],
        ),
        // A dangling step input.
        (
            vec!["in"],
            vec!["out"],
            vec![step("a", &[("x", "nowhere")], &[("y", "out")])],
            json!({}),
            vec!["step 0 (model 'a') reads tensor 'nowhere'", "input 'x'"],
        ),
        // An unused ensemble input.
        (
            vec!["in", "spare"],
            vec!["out"],
            a_in_out(),
            json!({}),
            vec!["ensemble input 'spare' is not read by any step"],
        ),
        // An ensemble output nobody writes.
        (
            vec!["in"],
            vec!["out", "ghost"],
            a_in_out(),
            json!({}),
            vec!["ensemble output 'ghost' is not written by any step"],
        ),
        // A written tensor nobody reads.
        (
            vec!["in"],
            vec!["out"],
            vec![
                step("a", &[("x", "in")], &[("y", "out")]),
                step("b", &[("x", "in")], &[("y", "lost")]),
            ],
            json!({}),
            vec!["tensor 'lost' written by step 1 (model 'b') is neither read"],
        ),
        // A cycle: b and c feed each other.
        (
            vec!["in"],
            vec!["out"],
            vec![
                step("join", &[("p", "in"), ("q", "t2")], &[("r", "t1")]),
                step("c", &[("x", "t1")], &[("y", "t2")]),
                step("d", &[("x", "t1")], &[("y", "out")]),
            ],
            json!({}),
            vec!["cycle", "step 0 (model 'join')", "step 1 (model 'c')"],
        ),
        // A step reading its own output.
        (
            vec!["in"],
            vec!["out"],
            vec![
                step("join", &[("p", "in"), ("q", "self")], &[("r", "self")]),
                step("d", &[("x", "self")], &[("y", "out")]),
            ],
            json!({}),
            vec!["cycle", "step 0 (model 'join')"],
        ),
    ];
    for (inputs, outputs, steps, extra, expect) in cases {
        let msg = local_err(&inputs, &outputs, steps, extra);
        assert_has(&msg, &expect);
        assert!(msg.starts_with("ensemble 'e': "), "{msg}");
    }
    // Without the ensemble platform, or without the block.
    let mut c = model("m", &["x"], &["y"]);
    c.ensemble_scheduling = Some(json!({"step": []}));
    assert_has(&c.validate().unwrap_err().to_string(), &["not 'ensemble'"]);
    let mut c = model("m", &["x"], &["y"]);
    c.platform = "ensemble".into();
    assert_has(
        &c.validate().unwrap_err().to_string(),
        &["needs ensemble_scheduling"],
    );
    let mut c = model("m", &["x"], &["y"]);
    c.platform = "ensemble".into();
    c.ensemble_scheduling = Some(json!({"step": [], "bogus": 1}));
    assert_has(
        &c.validate().unwrap_err().to_string(),
        &["invalid ensemble_scheduling", "bogus"],
    );
}

#[test]
fn refusals_against_the_composing_models() {
    let one = |s: Value| ensemble(&["in"], &["out"], vec![s], json!({})).unwrap();
    let cases: Vec<(ModelConfig, Vec<&str>)> = vec![
        (
            one(step("join", &[("p", "in")], &[("r", "out")])),
            vec!["step 0 (model 'join'): input 'q' of 'join' is not mapped"],
        ),
        (
            one(step("a", &[("x", "in"), ("nope", "in")], &[("y", "out")])),
            vec!["step 0 (model 'a'): input_map names 'nope', which is not an input of 'a'"],
        ),
        (
            one(step("a", &[("x", "in")], &[("nope", "out")])),
            vec!["output_map names 'nope', which is not an output of 'a'"],
        ),
        (
            one(step("int", &[("x", "in")], &[("y", "out")])),
            vec![
                "tensor 'in'",
                "TYPE_FP32",
                "TYPE_INT64",
                "input 'x' of step 0 (model 'int')",
            ],
        ),
        (
            one(step("wide", &[("x", "in")], &[("y", "out")])),
            vec!["tensor 'in'", "[-1, 4]", "[-1, 5]"],
        ),
        (
            one(step("small", &[("x", "in")], &[("y", "out")])),
            vec!["max_batch_size 8 is more than the model's 2"],
        ),
        (
            one(step("missing", &[("x", "in")], &[("y", "out")])),
            vec!["step 0 (model 'missing'): no model 'missing' in the repository"],
        ),
    ];
    for (config, expect) in cases {
        assert_has(&graph_err(&config), &expect);
    }
    // A producer whose output type does not match its consumer, through a chain.
    let c = ensemble(
        &["in"],
        &["out"],
        vec![
            step("a", &[("x", "in")], &[("y", "mid")]),
            step("int", &[("x", "mid")], &[("y", "out")]),
        ],
        json!({}),
    )
    .unwrap();
    assert_has(
        &graph_err(&c),
        &["tensor 'mid': output 'y' of step 0 (model 'a') is TYPE_FP32"],
    );
    // An optional input may stay unmapped; an unmapped composing output is fine.
    let ok = ensemble(
        &["in"],
        &["out"],
        vec![step("opt", &[("x", "in")], &[("y", "out")])],
        json!({}),
    )
    .unwrap();
    EnsembleGraph::build(&ok, composing).unwrap();
    let ok = ensemble(
        &["in"],
        &["out"],
        vec![step("two", &[("x", "in")], &[("y", "out")])],
        json!({}),
    )
    .unwrap();
    EnsembleGraph::build(&ok, composing).unwrap();
}
