//! Sluice's built-in processing steps: the pre- and post-processing that image and
//! text services need around a network, written in Rust so a whole pipeline runs
//! without a Python interpreter, an IPC hop or a copy per step.
//!
//! | `backend:` | does | key parameters |
//! |---|---|---|
//! | `sluice_image` | BYTES of an encoded JPEG/PNG/WebP → decoded, resized, cropped, normalized FP32 NCHW/NHWC | `resize`, `shorter_side`, `filter`, `color`, `scale`, `mean`, `std`, `layout` |
//! | `sluice_tokenizer` | BYTES text → `input_ids`, `attention_mask`, `token_type_ids` from a Hugging Face `tokenizer.json` | `tokenizer_file`, `max_length`, `padding`, `add_special_tokens` |
//! | `sluice_postprocess` | `kind`: `softmax`, `argmax`, `topk` (values, indices, labels), `mean_pool` (+ L2 normalization) | `kind`, `k`, `labels_file`, `softmax`, `normalize` |
//!
//! Every parameter is documented in this crate's `README.md`.
//!
//! Key decision: each step is an ordinary [`Backend`], selected by `backend:` in
//! `config.pbtxt` and configured by `parameters`, so it is a normal model to clients
//! (metadata, config, statistics, batching, instances) and an ensemble step needs
//! nothing special. Everything a step can get wrong about its configuration
//! (parameters, the shapes and types of its inputs and outputs, its files) is refused
//! at load with a message naming the model's tensor or parameter; at run time only
//! the data can be wrong (an undecodable image, a label index past the labels file),
//! and that is an `InvalidArgument` error naming the batch row, never a panic.

mod image_step;
mod params;
mod postprocess;
mod tokenizer;

use std::sync::Arc;

use sluice_core::Backend;

pub use image_step::ImageBackend;
pub use postprocess::PostprocessBackend;
pub use tokenizer::TokenizerBackend;

/// All built-in backends, to register with the runtime.
pub fn backends() -> Vec<Arc<dyn Backend>> {
    vec![
        Arc::new(ImageBackend),
        Arc::new(TokenizerBackend),
        Arc::new(PostprocessBackend),
    ]
}

#[cfg(test)]
mod testing;
