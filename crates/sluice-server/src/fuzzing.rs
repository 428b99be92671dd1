//! Entry points for the fuzz targets in `fuzz/` and for the corpus tests that run
//! them over their seeds in every `cargo test`; not part of the API.
//!
//! Key decision: each function takes the raw bytes a client controls and drives the
//! decoder the server runs on them — the same private functions, in the same order
//! (limits scan, decode, validation against a model signature) — so a finding here
//! is a finding in the server. A function returns normally for any input; a panic,
//! an abort, an allocation past the fuzzer's `-malloc_limit_mb` or a broken
//! invariant (checked with `assert!`) is a defect. The engines are not involved:
//! the load target runs the runtime with a backend that refuses to build, after
//! every decoder of the load request has run.
//!
//! Input layouts (the seed corpora under `fuzz/corpus/<target>/` follow them):
//! - `http_json`: an infer request body, JSON only.
//! - `http_binary`: a 4-byte little-endian `Inference-Header-Content-Length`, then
//!   the body (JSON header and binary tensors).
//! - `http_raw`: a model signature (byte 0: datatype index, byte 1: batching flag,
//!   byte 2: rank 0–3, then that many signed dims), then the raw body.
//! - `http_compressed`: byte 0 selects `gzip` / `deflate`, then the compressed body.
//! - `bytes_elements`: byte 0 the row count, then Triton's `BYTES` serialization.
//! - `grpc_infer`: an encoded `ModelInferRequest`.
//! - `grpc_frames`: byte 0 a chunk size, then a gRPC request stream (5-byte frame
//!   headers and messages) as the guard receives it.
//! - `model_config`: byte 0 selects `config.pbtxt` or `config.json`, then the text.
//! - `onnx_model`: the bytes of a model file.
//! - `repository_load`: a model name, a newline, then a load request body.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message as _;
use sluice_core::{
    Backend, BytesContent, DataType, InferRequest, InferResponse, LoadSpec, LoadedModel,
    ModelConfig, ModelSignature, Result, Tensor, TensorConfig,
};
use sluice_proto::inference::ModelInferRequest;

use crate::body::{inflate, Coding};
use crate::codec::{decode_request, encode_response, OutputPlan};
use crate::grpc::convert;
use crate::raw::decode_raw_request;

/// The largest inflated body the compressed-body target allows (the server's
/// `--max-body-bytes` in small).
pub const INFLATE_LIMIT: usize = 1 << 20;

/// The signature requests are validated against: one input of each kind the
/// decoders treat differently (fixed, variable, half precision, text `BYTES`).
pub fn signature() -> &'static ModelSignature {
    static SIGNATURE: OnceLock<ModelSignature> = OnceLock::new();
    SIGNATURE.get_or_init(|| {
        let config = ModelConfig {
            name: "fuzz".into(),
            max_batch_size: 8,
            input: vec![
                TensorConfig::new("a", DataType::I32, vec![4]),
                TensorConfig::new("b", DataType::F64, vec![4]),
                TensorConfig::new("h", DataType::F16, vec![4]),
                TensorConfig::new("s", DataType::Bytes, vec![-1]),
                TensorConfig::new("x", DataType::F32, vec![-1, 2]),
            ],
            output: vec![
                TensorConfig::new("y", DataType::F32, vec![1]),
                TensorConfig::new("z", DataType::F32, vec![1]),
            ],
            ..ModelConfig::default()
        };
        ModelSignature::from_config(&config).with_bytes_content(BytesContent::Text)
    })
}

/// What the server does with a decoded request: validate it against the model, and
/// encode an answer with the same tensors both as JSON and as binary.
fn serve_decoded(request: InferRequest) {
    let echo = request.inputs.clone();
    let _ = signature().validate(request);
    let response = InferResponse {
        model_name: "fuzz".into(),
        model_version: 1,
        id: None,
        outputs: echo,
        answered_by: None,
    };
    if let Ok(encoded) = encode_response(&response, &OutputPlan::default()) {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&encoded.json).is_ok(),
            "a JSON response that does not parse"
        );
    }
    let binary = encode_response(&response, &OutputPlan::all_binary())
        .expect("binary encoding accepts every tensor");
    for (part, tensor) in binary.binary.iter().zip(&response.outputs) {
        assert_eq!(
            part, &tensor.data,
            "binary output bytes differ from the tensor"
        );
    }
    let grpc = convert::infer_response(response);
    assert_eq!(grpc.outputs.len(), grpc.raw_output_contents.len());
}

/// `http_json`: a JSON infer request.
pub fn http_json(data: &[u8]) {
    if let Ok((request, _)) = decode_request(&Bytes::copy_from_slice(data), None) {
        serve_decoded(request);
    }
}

/// `http_binary`: header length, then a binary-tensor request.
pub fn http_binary(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let header_len = u32::from_le_bytes(*len) as usize;
    if header_len == 0 {
        return; // a raw request: see `http_raw`
    }
    if let Ok((request, _)) = decode_request(&Bytes::copy_from_slice(body), Some(header_len)) {
        serve_decoded(request);
    }
}

/// `http_raw`: a model signature, then a raw binary request for it.
pub fn http_raw(data: &[u8]) {
    let Some((&[kind, batching, rank], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let rank = usize::from(rank % 4);
    if rest.len() < rank {
        return;
    }
    let (dims, body) = rest.split_at(rank);
    let datatype = DataType::all()[usize::from(kind) % DataType::all().len()];
    let config = ModelConfig {
        name: "raw".into(),
        max_batch_size: if batching % 2 == 1 { 4 } else { 0 },
        input: vec![TensorConfig::new(
            "in",
            datatype,
            dims.iter().map(|&d| i64::from(d as i8)).collect(),
        )],
        output: vec![TensorConfig::new("out", DataType::F32, vec![1])],
        ..ModelConfig::default()
    };
    let signature = ModelSignature::from_config(&config);
    if let Ok((request, _)) = decode_raw_request(Bytes::copy_from_slice(body), &signature) {
        assert_eq!(request.inputs.len(), 1);
        let _ = signature.validate(request);
    }
}

/// `http_compressed`: a gzip or deflate body, inflated under [`INFLATE_LIMIT`] and
/// decoded as a JSON request.
pub fn http_compressed(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let coding = if kind % 2 == 0 {
        Coding::Gzip
    } else {
        Coding::Deflate
    };
    if let Ok(inflated) = inflate(coding, body, INFLATE_LIMIT) {
        assert!(
            inflated.len() <= INFLATE_LIMIT,
            "inflated {} bytes past the limit",
            inflated.len()
        );
        http_json(&inflated);
    }
}

/// `bytes_elements`: Triton's `BYTES` serialization as a tensor, iterated, split
/// into rows and joined again.
pub fn bytes_elements(data: &[u8]) {
    let Some((&rows, body)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(body);
    // A well-formed serialization of `n` elements builds a tensor of shape [n] and
    // re-serializes to itself; a malformed one is refused by `Tensor::new`.
    let mut n = 0;
    let mut well_formed = true;
    let mut values = Vec::new();
    // The iterator reads the prefixes only; the shape is not consulted.
    let scratch = Tensor {
        name: "s".into(),
        datatype: DataType::Bytes,
        shape: vec![0],
        data: body.clone(),
    };
    for element in scratch.bytes_elements() {
        match element {
            Ok(e) => {
                n += 1;
                values.push(e.to_vec());
            }
            Err(_) => well_formed = false,
        }
    }
    match Tensor::new("s", DataType::Bytes, vec![n], body.clone()) {
        Ok(tensor) => {
            assert!(well_formed, "Tensor::new accepted malformed BYTES");
            let again = sluice_core::serialize_bytes(&values).expect("elements under 4 GiB");
            assert_eq!(again, body, "BYTES do not re-serialize to themselves");
            let rows = usize::from(rows).clamp(1, 8);
            if n % rows == 0 && n > 0 {
                let shaped = Tensor::new("s", DataType::Bytes, vec![rows, n / rows], body)
                    .expect("the same elements in another shape");
                let parts = shaped
                    .split_rows(&vec![1; rows])
                    .expect("rows of well-formed BYTES split");
                let refs: Vec<&Tensor> = parts.iter().collect();
                let joined = Tensor::concat_rows(&refs).expect("split rows concatenate");
                assert_eq!(joined, shaped, "split then concat changed the tensor");
            }
            let _ = signature().validate(InferRequest {
                inputs: vec![tensor],
                ..InferRequest::default()
            });
        }
        Err(_) => assert!(
            !well_formed || n == 0,
            "Tensor::new refused {n} well-formed BYTES elements"
        ),
    }
}

/// `grpc_infer`: an encoded `ModelInferRequest`, scanned by the limits, decoded by
/// prost and converted as the service does.
pub fn grpc_infer(data: &[u8]) {
    if crate::limits::check_infer_request(data, &crate::limits::current()).is_err() {
        return;
    }
    let Ok(message) = ModelInferRequest::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = convert::parse_version(&message.model_version);
    if let Ok(request) = convert::infer_request(message) {
        serve_decoded(request);
    }
}

/// `grpc_frames`: a request stream through the limits guard in chunks of the size
/// byte 0 gives. The guard passes every byte on unchanged until it refuses a
/// message.
pub fn grpc_frames(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let chunks: Vec<Bytes> = stream.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let request = tonic::codegen::http::Request::builder()
        .uri("/inference.GRPCInferenceService/ModelStreamInfer")
        .body(tonic::body::Body::new(Chunks(chunks)))
        .expect("a valid request");
    let guarded = crate::grpc::guard::guard_request(request, 1 << 16);
    let mut body = guarded.into_body();
    let mut out = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let refused = loop {
        match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(bytes) = frame.into_data() {
                    out.extend_from_slice(&bytes);
                }
            }
            Poll::Ready(Some(Err(_))) => break true,
            Poll::Ready(None) => break false,
            Poll::Pending => unreachable!("the chunks are all there"),
        }
    };
    if refused {
        assert!(
            stream.starts_with(&out),
            "the guard changed the bytes it passed"
        );
    } else {
        assert_eq!(out, stream, "the guard changed the stream");
    }
}

/// A body of the chunks it was given, all ready.
struct Chunks(Vec<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let next = self.0.remove(0);
        Poll::Ready(Some(Ok(http_body::Frame::data(next))))
    }
}

/// `model_config`: a `config.pbtxt` or `config.json` text, parsed and validated as
/// the repository reads it.
pub fn model_config(data: &[u8]) {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let config = if kind % 2 == 0 {
        sluice_repository::parse_config_pbtxt(text)
    } else {
        ModelConfig::from_json(text)
    };
    let Ok(config) = config else {
        return;
    };
    if config.validate().is_ok() {
        let signature = ModelSignature::from_config(&config);
        let _ = config.instance_count();
        let _ = config.engine_config();
        assert_eq!(signature.inputs.len(), config.input.len());
    }
}

/// `onnx_model`: a model file, read for its signature as auto-complete reads it.
pub fn onnx_model(data: &[u8]) {
    let _ = sluice_repository::onnx_signature(data);
}

/// `repository_load`: a model name and a load request body, decoded and loaded by
/// a runtime in explicit mode over an empty repository (every decoder of the load
/// runs; the backend then refuses to build an engine).
pub fn repository_load(data: &[u8]) {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (Ok(name), body) = (std::str::from_utf8(&data[..newline]), &data[newline + 1..]) else {
        return;
    };
    let Ok(options) = crate::repository::load_request(&Bytes::copy_from_slice(body)) else {
        return;
    };
    // One load at a time: the runtime is shared by the tests that call this target
    // at once, and another thread's load in progress of the same name shows in the index.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = load_runtime();
    if runtime.load(name, &options).is_ok() {
        // A model that needs no engine (an ensemble of nothing, say): forget it.
        let _ = runtime.unload(name);
        return;
    }
    // A failed load may be listed (UNAVAILABLE with its reason, as Triton lists
    // failed models), but nothing of it serves.
    assert!(
        !runtime
            .index()
            .iter()
            .any(|e| e.name == name && e.state == sluice_runtime::ModelState::Ready),
        "a failed load of a name the repository does not have left a ready model"
    );
}

/// The runtime of [`repository_load`], over an empty folder of its own (kept for
/// the life of the process).
fn load_runtime() -> &'static sluice_runtime::Runtime {
    static RUNTIME: OnceLock<sluice_runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let repository = std::env::temp_dir().join(format!("sluice-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&repository).expect("a temporary folder");
        let config = sluice_runtime::RuntimeConfig {
            repository,
            repository_options: sluice_runtime::RepositoryOptions::default(),
            default_backend: "tract".into(),
            intra_op_threads: 1,
            queue_capacity: 4,
            strict_readiness: true,
            lifecycle: sluice_runtime::LifecycleConfig {
                mode: sluice_runtime::ControlMode::Explicit,
                ..sluice_runtime::LifecycleConfig::default()
            },
            execution_gates: None,
            cache: sluice_runtime::CacheConfig::None,
        };
        let backends = sluice_runtime::Backends::new()
            .with(Arc::new(NoEngine("tract")))
            .with(Arc::new(NoEngine("onnxruntime")));
        sluice_runtime::Runtime::start(config, backends)
            .expect("a runtime over an empty repository starts")
    })
}

/// A backend that checks the model file is there and builds nothing.
struct NoEngine(&'static str);

impl Backend for NoEngine {
    fn name(&self) -> &'static str {
        self.0
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        spec.check_file_exists()?;
        Err(sluice_core::Error::unsupported(
            "the fuzz runtime builds no engine",
        ))
    }
}

/// One fuzz target: its name and the function that takes one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, for the corpus tests and `scripts/fuzz.sh`'s list.
pub const TARGETS: &[Target] = &[
    ("http_json", http_json),
    ("http_binary", http_binary),
    ("http_raw", http_raw),
    ("http_compressed", http_compressed),
    ("bytes_elements", bytes_elements),
    ("grpc_infer", grpc_infer),
    ("grpc_frames", grpc_frames),
    ("model_config", model_config),
    ("onnx_model", onnx_model),
    ("repository_load", repository_load),
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    /// Every fuzz target runs over its whole seed corpus (real requests, the attacks of
    /// issue 21, and every input a fuzzer ever crashed on) in each `cargo test`.
    #[test]
    fn every_target_passes_its_corpus() {
        for (target, run) in TARGETS {
            let seeds = corpus(target);
            assert!(
                seeds.len() >= 4,
                "{target}: a corpus of {} seeds",
                seeds.len()
            );
            for (path, bytes) in seeds {
                let result = std::panic::catch_unwind(|| run(&bytes));
                assert!(result.is_ok(), "{target} failed on {}", path.display());
            }
        }
    }

    /// The corpus reaches past the first checks: real requests decode, and the
    /// attacks are refused for the reason they were written for.
    #[test]
    fn seeds_decode_as_the_server_decodes_them() {
        let body = |target: &str, name: &str| {
            corpus(target)
                .into_iter()
                .find(|(p, _)| p.ends_with(name))
                .unwrap_or_else(|| panic!("no seed {target}/{name}"))
                .1
        };
        let json = body("http_json", "tritonclient-plain");
        let (request, _) = decode_request(&Bytes::from(json), None).unwrap();
        assert_eq!(request.inputs.len(), 5);
        signature().validate(request).unwrap();

        let binary = body("http_binary", "tritonclient-outputs");
        let len = u32::from_le_bytes(binary[..4].try_into().unwrap()) as usize;
        let (request, _) =
            decode_request(&Bytes::copy_from_slice(&binary[4..]), Some(len)).unwrap();
        signature().validate(request).unwrap();

        let grpc = body("grpc_infer", "tritonclient-raw");
        crate::limits::check_infer_request(&grpc, &crate::limits::current()).unwrap();
        let request =
            convert::infer_request(ModelInferRequest::decode(&grpc[..]).unwrap()).unwrap();
        signature().validate(request).unwrap();

        let typed = body("grpc_infer", "typed-contents");
        let request =
            convert::infer_request(ModelInferRequest::decode(&typed[..]).unwrap()).unwrap();
        assert_eq!(request.inputs.len(), 5);

        let deep = body("http_json", "deep-120-levels");
        let err = decode_request(&Bytes::from(deep), None).unwrap_err();
        assert!(err.message().contains("nesting depth"), "{err}");

        let bomb = body("http_compressed", "0-gzip-bomb");
        let err = inflate(Coding::Gzip, &bomb[1..], INFLATE_LIMIT).unwrap_err();
        assert!(err.0.message().contains("--max-body-bytes"), "{}", err.0);

        let pbtxt = body("model_config", "0-mlp.pbtxt");
        let config =
            sluice_repository::parse_config_pbtxt(std::str::from_utf8(&pbtxt[1..]).unwrap())
                .unwrap();
        config.validate().unwrap();
        assert_eq!(config.max_batch_size, 32);
        let deep = body("model_config", "0-deep-nesting");
        let err = sluice_repository::parse_config_pbtxt(std::str::from_utf8(&deep[1..]).unwrap())
            .unwrap_err();
        assert!(err.message().contains("nest deeper"), "{err}");

        let onnx = body("onnx_model", "mixed");
        assert_eq!(
            sluice_repository::onnx_signature(&onnx)
                .unwrap()
                .inputs
                .len(),
            3
        );

        let load = body("repository_load", "files-and-config");
        let split = load.iter().position(|&b| b == b'\n').unwrap();
        let options =
            crate::repository::load_request(&Bytes::copy_from_slice(&load[split + 1..])).unwrap();
        assert_eq!(options.files.len(), 1);
        let err = load_runtime().load("up", &options).unwrap_err();
        assert!(
            err.message().contains("builds no engine"),
            "the load got past every decoder: {err}"
        );
        let dotdot = body("repository_load", "dotdot-file");
        let split = dotdot.iter().position(|&b| b == b'\n').unwrap();
        let options =
            crate::repository::load_request(&Bytes::copy_from_slice(&dotdot[split + 1..])).unwrap();
        let err = load_runtime().load("up", &options).unwrap_err();
        assert!(err.message().contains("must be a relative path"), "{err}");
    }
}

/// Round trips of every datatype over both protocols: a tensor encoded the way the
/// server answers (JSON, binary, gRPC raw) or a client sends (gRPC typed contents)
/// decodes to the same tensor.
#[cfg(test)]
mod roundtrip {
    use half::{bf16, f16};
    use proptest::prelude::*;
    use sluice_proto::inference::model_infer_request::InferInputTensor;
    use sluice_proto::inference::InferTensorContents;

    use super::*;

    /// A tensor of `datatype` with arbitrary elements (finite floats: JSON has no
    /// NaN or infinity; `BYTES` as UTF-8 text when `text`).
    fn tensor(datatype: DataType, text: bool) -> impl Strategy<Value = Tensor> {
        prop::collection::vec(0usize..4, 0..4).prop_flat_map(move |shape| {
            let count: usize = shape.iter().product();
            let elements: BoxedStrategy<Vec<Vec<u8>>> = match datatype {
                DataType::Bytes if text => prop::collection::vec(".{0,6}", count)
                    .prop_map(|v| v.into_iter().map(String::into_bytes).collect())
                    .boxed(),
                DataType::Bytes => {
                    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), count).boxed()
                }
                DataType::Bool => prop::collection::vec(any::<bool>(), count)
                    .prop_map(|v| v.into_iter().map(|b| vec![u8::from(b)]).collect())
                    .boxed(),
                DataType::F16 => prop::collection::vec(any::<u16>(), count)
                    .prop_map(|v| {
                        v.into_iter()
                            .map(f16::from_bits)
                            .filter(|x| x.is_finite())
                            .map(|x| x.to_le_bytes().to_vec())
                            .collect()
                    })
                    .boxed(),
                DataType::Bf16 => prop::collection::vec(any::<u16>(), count)
                    .prop_map(|v| {
                        v.into_iter()
                            .map(bf16::from_bits)
                            .filter(|x| x.is_finite())
                            .map(|x| x.to_le_bytes().to_vec())
                            .collect()
                    })
                    .boxed(),
                DataType::F32 => prop::collection::vec(any::<f32>(), count)
                    .prop_map(|v| {
                        v.into_iter()
                            .filter(|x| x.is_finite())
                            .map(|x| x.to_le_bytes().to_vec())
                            .collect()
                    })
                    .boxed(),
                DataType::F64 => prop::collection::vec(any::<f64>(), count)
                    .prop_map(|v| {
                        v.into_iter()
                            .filter(|x| x.is_finite())
                            .map(|x| x.to_le_bytes().to_vec())
                            .collect()
                    })
                    .boxed(),
                other => {
                    let size = other.size().expect("a fixed-size type");
                    prop::collection::vec(prop::collection::vec(any::<u8>(), size), count).boxed()
                }
            };
            elements.prop_map(move |elements| {
                // Non-finite floats were dropped: the shape follows what is left.
                let shape = if elements.len() == count {
                    shape.clone()
                } else {
                    vec![elements.len()]
                };
                let data = if datatype == DataType::Bytes {
                    sluice_core::serialize_bytes(&elements).unwrap()
                } else {
                    Bytes::from(elements.concat())
                };
                Tensor::new("t", datatype, shape, data).unwrap()
            })
        })
    }

    fn any_tensor(text: bool) -> impl Strategy<Value = Tensor> {
        prop::sample::select(DataType::all().to_vec()).prop_flat_map(move |d| tensor(d, text))
    }

    fn answer(t: &Tensor) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: 1,
            id: None,
            outputs: vec![t.clone()],
            answered_by: None,
        }
    }

    /// The JSON of a response turned into a request with the same tensors.
    fn as_request(json: &[u8]) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let outputs = v["outputs"].take();
        serde_json::to_vec(&serde_json::json!({ "inputs": outputs })).unwrap()
    }

    fn decoded_input(body: Vec<u8>, header_len: Option<usize>) -> Tensor {
        let (mut request, _) = decode_request(&Bytes::from(body), header_len).unwrap();
        assert_eq!(request.inputs.len(), 1);
        request.inputs.remove(0)
    }

    fn grpc_input(t: &Tensor) -> InferInputTensor {
        InferInputTensor {
            name: t.name.clone(),
            datatype: t.datatype.v2_name().into(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        }
    }

    /// The tensor's elements in the typed `contents` field of its datatype.
    fn typed_contents(t: &Tensor) -> Option<InferTensorContents> {
        let mut c = InferTensorContents::default();
        let d = &t.data;
        macro_rules! each {
            ($n:expr, $f:expr) => {
                d.chunks_exact($n)
                    .map(|b| $f(b.try_into().unwrap()))
                    .collect()
            };
        }
        match t.datatype {
            DataType::Bool => c.bool_contents = d.iter().map(|&b| b != 0).collect(),
            DataType::I8 => c.int_contents = each!(1, |b| i32::from(i8::from_le_bytes(b))),
            DataType::I16 => c.int_contents = each!(2, |b| i32::from(i16::from_le_bytes(b))),
            DataType::I32 => c.int_contents = each!(4, i32::from_le_bytes),
            DataType::I64 => c.int64_contents = each!(8, i64::from_le_bytes),
            DataType::U8 => c.uint_contents = each!(1, |b| u32::from(u8::from_le_bytes(b))),
            DataType::U16 => c.uint_contents = each!(2, |b| u32::from(u16::from_le_bytes(b))),
            DataType::U32 => c.uint_contents = each!(4, u32::from_le_bytes),
            DataType::U64 => c.uint64_contents = each!(8, u64::from_le_bytes),
            DataType::F32 => c.fp32_contents = each!(4, f32::from_le_bytes),
            DataType::F64 => c.fp64_contents = each!(8, f64::from_le_bytes),
            DataType::Bytes => {
                c.bytes_contents = t
                    .bytes_elements()
                    .map(|e| Bytes::copy_from_slice(e.unwrap()))
                    .collect();
            }
            DataType::F16 | DataType::Bf16 => return None,
        }
        Some(c)
    }

    fn through_grpc(message: ModelInferRequest) -> Tensor {
        let wire = message.encode_to_vec();
        crate::limits::check_infer_request(&wire, &crate::limits::current()).unwrap();
        let mut request =
            convert::infer_request(ModelInferRequest::decode(&wire[..]).unwrap()).unwrap();
        request.inputs.remove(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn http_json_round_trips(t in any_tensor(true)) {
            let encoded = encode_response(&answer(&t), &OutputPlan::default()).unwrap();
            prop_assert!(encoded.binary.is_empty());
            let back = decoded_input(as_request(&encoded.json), None);
            // Bit-exact, FP64 too: serde_json parses with `float_roundtrip`.
            prop_assert_eq!(back, t);
        }

        #[test]
        fn http_binary_round_trips(t in any_tensor(false)) {
            let encoded = encode_response(&answer(&t), &OutputPlan::all_binary()).unwrap();
            let mut body = as_request(&encoded.json);
            let header_len = body.len();
            for part in &encoded.binary {
                body.extend_from_slice(part);
            }
            prop_assert_eq!(decoded_input(body, Some(header_len)), t);
        }

        #[test]
        fn grpc_raw_round_trips(t in any_tensor(false)) {
            let response = convert::infer_response(answer(&t));
            let message = ModelInferRequest {
                inputs: vec![grpc_input(&t)],
                raw_input_contents: response.raw_output_contents,
                ..Default::default()
            };
            prop_assert_eq!(&response.outputs[0].datatype, t.datatype.v2_name());
            prop_assert_eq!(through_grpc(message), t);
        }

        #[test]
        fn grpc_typed_contents_round_trip(t in any_tensor(false)) {
            let Some(contents) = typed_contents(&t) else {
                // FP16 and BF16 have no typed field: raw only, as in Triton.
                return Ok(());
            };
            let message = ModelInferRequest {
                inputs: vec![InferInputTensor { contents: Some(contents), ..grpc_input(&t) }],
                ..Default::default()
            };
            prop_assert_eq!(through_grpc(message), t);
        }
    }
}
