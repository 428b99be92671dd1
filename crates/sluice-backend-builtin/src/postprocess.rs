//! `backend: "sluice_postprocess"`: turning a network's outputs into answers, chosen
//! by the `kind` parameter. All kinds work along the last axis of an FP32 input.
//!
//! - `softmax`: one FP32 input `[..., N]` → one FP32 output of the same dims.
//! - `argmax`: one FP32 input `[..., N]` → one INT64/INT32 output `[..., 1]`.
//! - `topk`: one FP32 input `[..., N]` → up to three outputs `[..., k]`, told apart by
//!   their type: FP32 the values, INT64/INT32 the indices, BYTES the labels (lines of
//!   the BYTES output's `label_filename` or of the `labels_file` parameter, in the
//!   version folder). Ties keep the lower index first. `softmax: true` ranks and
//!   returns probabilities instead of the raw scores.
//! - `mean_pool`: an FP32 input `[S, D]` (token embeddings) and optionally an
//!   INT64/INT32 input `[S]` (the attention mask) → an FP32 output `[D]`: the mean of
//!   the rows whose mask is non-zero, L2-normalized unless `normalize: false` (the
//!   sentence-transformers recipe).

use std::sync::Arc;

use sluice_core::{
    Backend, DataType, Error, InlineRun, Instance, InstanceOptions, LoadSpec, LoadedModel, Result,
    Tensor, TensorConfig,
};

use crate::params::{self, Params};

const STEP: &str = "sluice_postprocess";
const KNOWN: &[&str] = &["kind", "k", "labels_file", "softmax", "normalize", "inline"];

/// The post-processing backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostprocessBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindName {
    Softmax,
    Argmax,
    TopK,
    MeanPool,
}

#[derive(Debug, Clone)]
enum Kind {
    Softmax {
        output: String,
    },
    Argmax {
        output: (String, DataType),
    },
    TopK {
        k: usize,
        softmax: bool,
        /// In the config's order.
        outputs: Vec<TopkOutput>,
    },
    MeanPool {
        output: String,
        normalize: bool,
        /// Index of the mask among the inputs (the embeddings are the other one).
        mask: Option<usize>,
    },
}

/// One output of `topk`, told apart by its type.
#[derive(Debug, Clone)]
enum TopkOutput {
    Values(String),
    Indices(String, DataType),
    Labels(String, Arc<Vec<String>>),
}

impl Backend for PostprocessBackend {
    fn name(&self) -> &'static str {
        STEP
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let p = Params::new(STEP, spec.config, KNOWN);
        let kind = load_kind(spec, &p)?;
        let inline = p.boolean("inline", true)?;
        Ok(Arc::new(PostprocessModel {
            kind: Arc::new(kind),
            inline,
        }))
    }
}

/// The fixed last dimension of `t`, if it has one.
fn last_dim(t: &TensorConfig) -> Option<usize> {
    t.dims
        .last()
        .and_then(|&d| usize::try_from(d).ok())
        .filter(|&d| d > 0)
}

fn need_dims(t: &TensorConfig, kind: &str, what: &str) -> Result<()> {
    if t.dims.is_empty() {
        return Err(Error::invalid(format!(
            "{STEP} kind {kind}: input '{}' needs at least one dimension ({what})",
            t.name
        )));
    }
    Ok(())
}

/// `out` must have `input`'s dims with the last one replaced by `last` (`None`: any).
fn expect_dims_like(
    input: &TensorConfig,
    out: &TensorConfig,
    last: Option<i64>,
    kind: &str,
) -> Result<()> {
    let n = input.dims.len();
    let lead_ok = out.dims.len() == n && out.dims[..n - 1] == input.dims[..n - 1];
    let last_ok = match last {
        Some(l) => out.dims.last() == Some(&l) || out.dims.last() == Some(&-1),
        None => true,
    };
    if lead_ok && last_ok {
        return Ok(());
    }
    let mut want: Vec<String> = input.dims[..n - 1].iter().map(i64::to_string).collect();
    want.push(last.map_or_else(|| "K".to_owned(), |l| l.to_string()));
    Err(Error::invalid(format!(
        "{STEP} kind {kind}: output '{}' must have dims [ {} ] (the input's with the last one \
         replaced), the config says {:?}",
        out.name,
        want.join(", "),
        out.dims
    )))
}

fn load_kind(spec: &LoadSpec<'_>, p: &Params<'_>) -> Result<Kind> {
    let config = spec.config;
    let Some(_) = p.str("kind") else {
        return Err(Error::invalid(format!(
            "{STEP}: parameter kind is required (softmax, argmax, topk or mean_pool)"
        )));
    };
    let kind = p.choice(
        "kind",
        &[
            ("softmax", KindName::Softmax),
            ("argmax", KindName::Argmax),
            ("topk", KindName::TopK),
            ("mean_pool", KindName::MeanPool),
        ],
        KindName::Softmax,
    )?;
    let float = [DataType::F32];
    let ints = [DataType::I64, DataType::I32];
    match kind {
        KindName::Softmax | KindName::Argmax | KindName::TopK => {
            params::expect_count(STEP, "input", &config.input, 1..=1)?;
            let input = &config.input[0];
            params::expect_type(STEP, "input", input, &float)?;
            need_dims(input, "softmax/argmax/topk", "the scores are the last one")?;
            match kind {
                KindName::Softmax => {
                    params::expect_count(STEP, "output", &config.output, 1..=1)?;
                    let out = &config.output[0];
                    params::expect_type(STEP, "output", out, &float)?;
                    expect_dims_like(input, out, input.dims.last().copied(), "softmax")?;
                    Ok(Kind::Softmax {
                        output: out.name.clone(),
                    })
                }
                KindName::Argmax => {
                    params::expect_count(STEP, "output", &config.output, 1..=1)?;
                    let out = &config.output[0];
                    params::expect_type(STEP, "output", out, &ints)?;
                    expect_dims_like(input, out, Some(1), "argmax")?;
                    Ok(Kind::Argmax {
                        output: (out.name.clone(), out.data_type),
                    })
                }
                _ => load_topk(spec, p, input),
            }
        }
        KindName::MeanPool => {
            params::expect_count(STEP, "input", &config.input, 1..=2)?;
            params::expect_count(STEP, "output", &config.output, 1..=1)?;
            let emb = config
                .input
                .iter()
                .position(|t| t.data_type == DataType::F32)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{STEP} kind mean_pool: one input must be the TYPE_FP32 token embeddings [ S, D ]"
                    ))
                })?;
            let mask = (config.input.len() == 2).then_some(1 - emb);
            let emb_t = &config.input[emb];
            if emb_t.dims.len() != 2 {
                return Err(Error::invalid(format!(
                    "{STEP} kind mean_pool: input '{}' must have dims [ S, D ], the config says {:?}",
                    emb_t.name, emb_t.dims
                )));
            }
            if let Some(m) = mask {
                let mask_t = &config.input[m];
                params::expect_type(STEP, "input", mask_t, &ints)?;
                if mask_t.dims.len() != 1 {
                    return Err(Error::invalid(format!(
                        "{STEP} kind mean_pool: the mask '{}' must have dims [ S ], the config says {:?}",
                        mask_t.name, mask_t.dims
                    )));
                }
            }
            let out = &config.output[0];
            params::expect_type(STEP, "output", out, &float)?;
            if out.dims.len() != 1 || (out.dims[0] != -1 && out.dims[0] != emb_t.dims[1]) {
                return Err(Error::invalid(format!(
                    "{STEP} kind mean_pool: output '{}' must have dims [ {} ], the config says {:?}",
                    out.name, emb_t.dims[1], out.dims
                )));
            }
            Ok(Kind::MeanPool {
                output: out.name.clone(),
                normalize: p.boolean("normalize", true)?,
                mask,
            })
        }
    }
}

fn load_topk(spec: &LoadSpec<'_>, p: &Params<'_>, input: &TensorConfig) -> Result<Kind> {
    let config = spec.config;
    params::expect_count(STEP, "output", &config.output, 1..=3)?;
    let mut values: Option<String> = None;
    let mut indices: Option<(String, DataType)> = None;
    let mut labels_out: Option<&TensorConfig> = None;
    for out in &config.output {
        let slot_taken = match out.data_type {
            DataType::F32 => values.replace(out.name.clone()).is_some(),
            DataType::I64 | DataType::I32 => {
                indices.replace((out.name.clone(), out.data_type)).is_some()
            }
            DataType::Bytes => labels_out.replace(out).is_some(),
            other => {
                return Err(Error::invalid(format!(
                    "{STEP} kind topk: output '{}' is {}; outputs are TYPE_FP32 (values), \
                     TYPE_INT64/TYPE_INT32 (indices) or TYPE_STRING (labels)",
                    out.name,
                    other.config_name()
                )))
            }
        };
        if slot_taken {
            return Err(Error::invalid(format!(
                "{STEP} kind topk: two outputs of type {} (one each for values, indices, labels)",
                out.data_type.config_name()
            )));
        }
    }
    let out_k = config.output.iter().find_map(last_dim);
    let k = match (p.positive("k")?, out_k) {
        (Some(k), Some(o)) if k != o => {
            return Err(Error::invalid(format!(
                "{STEP} kind topk: k {k} differs from the outputs' last dimension {o}"
            )))
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => {
            return Err(Error::invalid(format!(
                "{STEP} kind topk: set parameter k or a fixed last output dimension"
            )))
        }
    };
    for out in &config.output {
        expect_dims_like(input, out, Some(k as i64), "topk")?;
    }
    if let Some(n) = last_dim(input) {
        if k > n {
            return Err(Error::invalid(format!(
                "{STEP} kind topk: k {k} is more than the {n} scores of input '{}'",
                input.name
            )));
        }
    }
    let labels = match labels_out {
        None => None,
        Some(out) => {
            let (key, name) = if out.label_filename.is_empty() {
                ("labels_file", p.str("labels_file").unwrap_or("labels.txt"))
            } else {
                ("label_filename", out.label_filename.as_str())
            };
            let path = params::file_in_version(spec, key, name)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::invalid(format!("{key}: cannot read '{}/{name}': {e}", spec.version))
            })?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if let Some(n) = last_dim(input) {
                if lines.len() < n {
                    return Err(Error::invalid(format!(
                        "{key} '{}/{name}' has {} lines, fewer than the {n} scores of input '{}'",
                        spec.version,
                        lines.len(),
                        input.name
                    )));
                }
            }
            Some(Arc::new(lines))
        }
    };
    let outputs = config
        .output
        .iter()
        .map(|out| match out.data_type {
            DataType::F32 => TopkOutput::Values(out.name.clone()),
            DataType::Bytes => {
                TopkOutput::Labels(out.name.clone(), labels.clone().unwrap_or_default())
            }
            dt => TopkOutput::Indices(out.name.clone(), dt),
        })
        .collect();
    Ok(Kind::TopK {
        k,
        softmax: p.boolean("softmax", false)?,
        outputs,
    })
}

struct PostprocessModel {
    kind: Arc<Kind>,
    /// Runs on the caller's thread (the `inline` parameter, default true).
    inline: bool,
}

impl LoadedModel for PostprocessModel {
    fn instance(&self, _options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        Ok(Box::new(PostprocessInstance {
            kind: Arc::clone(&self.kind),
        }))
    }

    /// Every kind is one pass over its input with no state: cheaper than the two
    /// thread wake-ups a queued run costs.
    fn inline(&self) -> Option<Arc<dyn InlineRun>> {
        self.inline.then(|| {
            Arc::new(PostprocessInstance {
                kind: Arc::clone(&self.kind),
            }) as Arc<dyn InlineRun>
        })
    }
}

struct PostprocessInstance {
    kind: Arc<Kind>,
}

impl Instance for PostprocessInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        InlineRun::run(self, inputs)
    }
}

/// Softmax of `x` in place, computed stably (max subtracted): each exponential in
/// f32, their sum and the division in f64 (within 2 ulp of an all-f64 softmax, at
/// about half its cost and with no buffer of its own).
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v = (f64::from(*v) * inv) as f32;
    }
}

/// Indices of the `k` largest values, largest first, lower index first among equals
/// (NaN ranks below every number).
fn top_indices(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    let key = |i: &usize| {
        let v = x[*i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    idx.truncate(k);
    idx
}

impl InlineRun for PostprocessInstance {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let first = inputs
            .first()
            .ok_or_else(|| Error::internal("sluice_postprocess got no input tensor"))?;
        match &*self.kind {
            Kind::Softmax { output } => {
                let n = scores_len(first)?;
                let mut v = params::f32_values(first);
                v.chunks_exact_mut(n).for_each(softmax);
                Ok(vec![params::f32_tensor(output, first.shape.clone(), &v)?])
            }
            Kind::Argmax { output } => {
                let n = scores_len(first)?;
                let v = params::f32_values(first);
                let best = v.chunks_exact(n).map(|row| top_indices(row, 1)[0] as i64);
                let mut shape = first.shape.clone();
                *shape.last_mut().expect("checked") = 1;
                Ok(vec![params::int_tensor(&output.0, output.1, shape, best)?])
            }
            Kind::TopK {
                k,
                softmax: probs,
                outputs,
            } => {
                let n = scores_len(first)?;
                if *k > n {
                    return Err(Error::invalid(format!(
                        "input '{}' holds {n} scores per row, fewer than k {k}",
                        first.name
                    )));
                }
                let mut v = params::f32_values(first);
                if *probs {
                    v.chunks_exact_mut(n).for_each(softmax);
                }
                let mut top_values = Vec::new();
                let mut top_idx = Vec::new();
                for row in v.chunks_exact(n) {
                    for i in top_indices(row, *k) {
                        top_values.push(row[i]);
                        top_idx.push(i);
                    }
                }
                let mut shape = first.shape.clone();
                *shape.last_mut().expect("checked") = *k;
                outputs
                    .iter()
                    .map(|out| match out {
                        TopkOutput::Values(name) => {
                            params::f32_tensor(name, shape.clone(), &top_values)
                        }
                        TopkOutput::Indices(name, dt) => params::int_tensor(
                            name,
                            *dt,
                            shape.clone(),
                            top_idx.iter().map(|&i| i as i64),
                        ),
                        TopkOutput::Labels(name, lines) => {
                            let names = top_idx
                                .iter()
                                .map(|&i| {
                                    lines.get(i).map(String::as_bytes).ok_or_else(|| {
                                        Error::invalid(format!(
                                            "class {i} has no line in the labels file ({} lines)",
                                            lines.len()
                                        ))
                                    })
                                })
                                .collect::<Result<Vec<_>>>()?;
                            let data = sluice_core::serialize_bytes(names)?;
                            Tensor::new(name, DataType::Bytes, shape.clone(), data)
                        }
                    })
                    .collect()
            }
            Kind::MeanPool {
                output,
                normalize,
                mask,
            } => {
                let (emb, mask_t) = match mask {
                    Some(m) => (&inputs[1 - m], Some(&inputs[*m])),
                    None => (first, None),
                };
                let rank = emb.shape.len();
                if rank < 2 {
                    return Err(Error::internal(
                        "mean_pool: the embeddings have no [S, D] dims",
                    ));
                }
                let (s, d) = (emb.shape[rank - 2], emb.shape[rank - 1]);
                let rows: usize = emb.shape[..rank - 2].iter().product();
                let mask_values = match mask_t {
                    Some(t) => {
                        let m = params::int_values(t)?;
                        if m.len() != rows * s {
                            return Err(Error::invalid(format!(
                                "mask '{}' of shape {:?} does not match embeddings '{}' of shape {:?}",
                                t.name, t.shape, emb.name, emb.shape
                            )));
                        }
                        Some(m)
                    }
                    None => None,
                };
                let v = params::f32_values(emb);
                let mut pooled = vec![0f32; rows * d];
                for r in 0..rows {
                    let mut acc = vec![0f64; d];
                    let mut count = 0f64;
                    for t in 0..s {
                        let w = mask_values.as_ref().map_or(1.0, |m| {
                            if m[r * s + t] != 0 {
                                1.0
                            } else {
                                0.0
                            }
                        });
                        if w == 0.0 {
                            continue;
                        }
                        count += w;
                        let tok = &v[(r * s + t) * d..][..d];
                        for (a, x) in acc.iter_mut().zip(tok) {
                            *a += f64::from(*x);
                        }
                    }
                    // sentence-transformers clamps the count at 1e-9 and the norm at 1e-12.
                    let count = count.max(1e-9);
                    acc.iter_mut().for_each(|a| *a /= count);
                    if *normalize {
                        let norm = acc.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
                        acc.iter_mut().for_each(|a| *a /= norm);
                    }
                    for (o, a) in pooled[r * d..][..d].iter_mut().zip(acc) {
                        *o = a as f32;
                    }
                }
                let mut shape = emb.shape[..rank - 2].to_vec();
                shape.push(d);
                Ok(vec![params::f32_tensor(output, shape, &pooled)?])
            }
        }
    }
}

/// The length of the last axis (the scores of one row), checked to be non-zero.
fn scores_len(t: &Tensor) -> Result<usize> {
    match t.shape.last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(Error::invalid(format!(
            "input '{}' of shape {:?} has no scores on its last axis",
            t.name, t.shape
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        config, f32_tensor, i64_tensor, load, load_err, load_err_in, load_in, read_f32, read_i64,
        read_strings,
    };

    #[test]
    fn softmax_and_argmax_along_the_last_axis() {
        let c = config(
            STEP,
            4,
            &[("x", DataType::F32, vec![3])],
            &[("p", DataType::F32, vec![3])],
            &[("kind", "softmax")],
        );
        let mut inst = load(&PostprocessBackend, &c);
        let out = inst
            .run(vec![f32_tensor(
                "x",
                vec![2, 3],
                &[1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0],
            )])
            .unwrap();
        let p = read_f32(&out[0]);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let sum: f64 = e.iter().sum();
        for (i, ei) in e.iter().enumerate() {
            assert!((f64::from(p[i]) - ei / sum).abs() < 1e-7);
            assert!(
                (p[3 + i] - 1.0 / 3.0).abs() < 1e-7,
                "stable for large logits"
            );
        }
        let c = config(
            STEP,
            4,
            &[("x", DataType::F32, vec![3])],
            &[("i", DataType::I64, vec![1])],
            &[("kind", "argmax")],
        );
        let mut inst = load(&PostprocessBackend, &c);
        let out = inst
            .run(vec![f32_tensor(
                "x",
                vec![2, 3],
                &[1.0, 5.0, 5.0, 9.0, f32::NAN, 2.0],
            )])
            .unwrap();
        assert_eq!(out[0].shape, vec![2, 1]);
        assert_eq!(
            read_i64(&out[0]),
            vec![1, 0],
            "ties take the lower index, NaN ranks last"
        );
    }

    #[test]
    fn topk_gives_values_indices_and_labels_in_config_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("labels.txt"), "zero\none\ntwo\nthree\n").unwrap();
        let c = config(
            STEP,
            4,
            &[("x", DataType::F32, vec![4])],
            &[
                ("labels", DataType::Bytes, vec![2]),
                ("scores", DataType::F32, vec![2]),
                ("classes", DataType::I32, vec![2]),
            ],
            &[("kind", "topk")],
        );
        let mut inst = load_in(&PostprocessBackend, &c, dir.path());
        let out = inst
            .run(vec![f32_tensor("x", vec![1, 4], &[0.1, 0.7, 0.2, 0.7])])
            .unwrap();
        assert_eq!(
            out.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["labels", "scores", "classes"]
        );
        assert_eq!(read_strings(&out[0]), ["one", "three"]);
        assert_eq!(read_f32(&out[1]), [0.7, 0.7]);
        assert_eq!(out[2].datatype, DataType::I32);
        assert_eq!(read_i64(&out[2]), [1, 3]);
    }

    #[test]
    fn topk_with_softmax_returns_probabilities() {
        let c = config(
            STEP,
            0,
            &[("x", DataType::F32, vec![3])],
            &[("p", DataType::F32, vec![1])],
            &[("kind", "topk"), ("softmax", "true")],
        );
        let mut inst = load(&PostprocessBackend, &c);
        let out = inst
            .run(vec![f32_tensor("x", vec![3], &[0.0, 0.0, f32::ln(2.0)])])
            .unwrap();
        assert_eq!(out[0].shape, vec![1]);
        assert!((read_f32(&out[0])[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn mean_pool_skips_masked_tokens_and_normalizes() {
        let c = config(
            STEP,
            4,
            &[
                ("h", DataType::F32, vec![-1, 2]),
                ("mask", DataType::I64, vec![-1]),
            ],
            &[("v", DataType::F32, vec![2])],
            &[("kind", "mean_pool")],
        );
        let mut inst = load(&PostprocessBackend, &c);
        // Row 0: tokens (3,0), (1,4), padding (100,100) masked out -> mean (2,2) -> (0.707, 0.707).
        // Row 1: one token (0,-5) -> (0,-1).
        let h = f32_tensor(
            "h",
            vec![2, 3, 2],
            &[
                3.0, 0.0, 1.0, 4.0, 100.0, 100.0, 0.0, -5.0, 9.0, 9.0, 9.0, 9.0,
            ],
        );
        let mask = i64_tensor("mask", vec![2, 3], &[1, 1, 0, 1, 0, 0]);
        let out = inst.run(vec![h.clone(), mask.clone()]).unwrap();
        assert_eq!(out[0].shape, vec![2, 2]);
        let v = read_f32(&out[0]);
        let r = std::f32::consts::FRAC_1_SQRT_2;
        for (got, want) in v.iter().zip([r, r, 0.0, -1.0]) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
        let c = config(
            STEP,
            4,
            &[
                ("h", DataType::F32, vec![-1, 2]),
                ("mask", DataType::I64, vec![-1]),
            ],
            &[("v", DataType::F32, vec![2])],
            &[("kind", "mean_pool"), ("normalize", "false")],
        );
        let v = read_f32(&load(&PostprocessBackend, &c).run(vec![h, mask]).unwrap()[0]);
        assert_eq!(v, [2.0, 2.0, 0.0, -5.0]);
    }

    #[test]
    fn every_kind_runs_inline_the_same_as_on_an_instance_unless_told_not_to() {
        let softmax = |extra: &[(&'static str, &'static str)]| {
            let mut params = vec![("kind", "softmax")];
            params.extend_from_slice(extra);
            config(
                STEP,
                4,
                &[("x", DataType::F32, vec![3])],
                &[("p", DataType::F32, vec![3])],
                &params,
            )
        };
        let file = std::path::Path::new("unused/model.onnx");
        let c = softmax(&[]);
        let model = PostprocessBackend
            .load(&crate::testing::spec(&c, file))
            .unwrap();
        let inline = model.inline().expect("inline by default");
        let x = || f32_tensor("x", vec![2, 3], &[1.0, 2.0, 3.0, -1.0, 0.5, 7.0]);
        let mut inst = load(&PostprocessBackend, &c);
        assert_eq!(inline.run(vec![x()]).unwrap(), inst.run(vec![x()]).unwrap());
        // A bad tensor is the same error either way.
        let short = f32_tensor("x", vec![1, 0], &[]);
        assert_eq!(
            inline.run(vec![short.clone()]).unwrap_err().to_string(),
            inst.run(vec![short]).unwrap_err().to_string()
        );
        let c = softmax(&[("inline", "false")]);
        let model = PostprocessBackend
            .load(&crate::testing::spec(&c, file))
            .unwrap();
        assert!(model.inline().is_none(), "inline: false queues every run");
        let c = softmax(&[("inline", "sometimes")]);
        let err = load_err(&PostprocessBackend, &c).to_string();
        assert!(err.contains("parameter inline"), "{err}");
    }

    #[test]
    fn bad_configs_are_refused_at_load() {
        let one = |kind: &str,
                   inputs: &[(&str, DataType, Vec<i64>)],
                   outputs: &[(&str, DataType, Vec<i64>)]| {
            config(STEP, 4, inputs, outputs, &[("kind", kind)])
        };
        let f = DataType::F32;
        let cases = [
            (
                config(STEP, 4, &[("x", f, vec![3])], &[("y", f, vec![3])], &[]),
                "kind is required",
            ),
            (
                one("sigmoid", &[("x", f, vec![3])], &[("y", f, vec![3])]),
                "one of softmax",
            ),
            (
                one(
                    "softmax",
                    &[("x", DataType::I64, vec![3])],
                    &[("y", f, vec![3])],
                ),
                "must be TYPE_FP32",
            ),
            (
                one("softmax", &[("x", f, vec![3])], &[("y", f, vec![4])]),
                "must have dims",
            ),
            (
                one("argmax", &[("x", f, vec![3])], &[("y", f, vec![1])]),
                "TYPE_INT64",
            ),
            (
                one("topk", &[("x", f, vec![3])], &[("y", f, vec![-1])]),
                "set parameter k",
            ),
            (
                one("topk", &[("x", f, vec![3])], &[("y", f, vec![5])]),
                "more than the 3 scores",
            ),
            (
                one(
                    "topk",
                    &[("x", f, vec![3])],
                    &[("y", f, vec![2]), ("z", f, vec![2])],
                ),
                "two outputs",
            ),
            (
                one(
                    "topk",
                    &[("x", f, vec![3])],
                    &[("y", DataType::Bytes, vec![2])],
                ),
                "does not exist",
            ),
            (
                one("mean_pool", &[("h", f, vec![4])], &[("v", f, vec![4])]),
                "[ S, D ]",
            ),
            (
                one("mean_pool", &[("h", f, vec![-1, 4])], &[("v", f, vec![3])]),
                "must have dims [ 4 ]",
            ),
        ];
        for (c, expect) in cases {
            let err = load_err(&PostprocessBackend, &c);
            assert!(err.message().contains(expect), "{expect}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("labels.txt"), "a\nb\n").unwrap();
        let short = one(
            "topk",
            &[("x", f, vec![3])],
            &[("y", DataType::Bytes, vec![2])],
        );
        let err = load_err_in(&PostprocessBackend, &short, dir.path());
        assert!(err.message().contains("2 lines, fewer than the 3"), "{err}");
    }
}
