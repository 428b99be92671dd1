//! `backend: "sluice_tokenizer"`: text (BYTES, one UTF-8 string per batch row) →
//! the integer tensors a transformer encoder takes, from a Hugging Face
//! `tokenizer.json` in the version folder (the `tokenizers` crate, the same Rust
//! code the Python `tokenizers` package runs).
//!
//! Outputs are picked by name: any of `input_ids`, `attention_mask`,
//! `token_type_ids` (INT64 or INT32, dims `[ -1 ]` or a fixed `[ N ]`). Every text is
//! truncated to `max_length` tokens (special tokens included); rows are right-padded
//! to the longest row of the batch (`padding: longest`) or to `max_length`
//! (`padding: max_length`), with the tokenizer's pad id and mask 0.

use std::sync::Arc;

use sluice_core::{
    Backend, BytesContent, DataType, Error, Instance, InstanceOptions, LoadSpec, LoadedModel,
    Result, Tensor,
};
use tokenizers::{Tokenizer, TruncationParams};

use crate::params::{self, Params};

const STEP: &str = "sluice_tokenizer";
const KNOWN: &[&str] = &[
    "tokenizer_file",
    "max_length",
    "padding",
    "add_special_tokens",
];
/// `max_length` when neither the parameter nor the file's truncation gives one.
const DEFAULT_MAX_LENGTH: usize = 512;

/// The tokenizer backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenizerBackend;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Padding {
    Longest,
    MaxLength,
}

struct Settings {
    tokenizer: Tokenizer,
    outputs: Vec<(Field, String, DataType)>,
    max_length: usize,
    padding: Padding,
    add_special_tokens: bool,
    pad_id: u32,
    pad_type_id: u32,
    batching: bool,
}

impl Backend for TokenizerBackend {
    fn name(&self) -> &'static str {
        STEP
    }

    /// Texts are checked to be UTF-8 before they are queued, so a bad one fails alone.
    fn bytes_content(&self) -> BytesContent {
        BytesContent::Text
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let settings =
            sluice_core::catch_panics(STEP, "loading the tokenizer", || Settings::from_spec(spec))?;
        Ok(Arc::new(TokenizerModel {
            settings: Arc::new(settings),
        }))
    }
}

impl Settings {
    fn from_spec(spec: &LoadSpec<'_>) -> Result<Settings> {
        let config = spec.config;
        params::expect_count(STEP, "input", &config.input, 1..=1)?;
        params::expect_count(STEP, "output", &config.output, 1..=3)?;
        let input = &config.input[0];
        params::expect_type(STEP, "input", input, &[DataType::Bytes])?;
        params::expect_one_element(STEP, input)?;
        let p = Params::new(STEP, config, KNOWN);
        let mut fixed_len = None;
        let mut outputs = Vec::new();
        for output in &config.output {
            let field = match output.name.as_str() {
                "input_ids" => Field::InputIds,
                "attention_mask" => Field::AttentionMask,
                "token_type_ids" => Field::TokenTypeIds,
                other => {
                    return Err(Error::invalid(format!(
                        "{STEP}: output '{other}' is not one of input_ids, attention_mask, token_type_ids"
                    )))
                }
            };
            params::expect_type(STEP, "output", output, &[DataType::I64, DataType::I32])?;
            match output.dims.as_slice() {
                [-1] => {}
                &[n] if n > 0 => {
                    if fixed_len.is_some_and(|f| f != n) {
                        return Err(Error::invalid(format!(
                            "{STEP}: the outputs have different fixed lengths ({} and {n})",
                            fixed_len.unwrap_or_default()
                        )));
                    }
                    fixed_len = Some(n);
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "{STEP}: output '{}' must have dims [ -1 ] or [ N ], the config says {:?}",
                        output.name, output.dims
                    )))
                }
            }
            outputs.push((field, output.name.clone(), output.data_type));
        }
        let name = p.str("tokenizer_file").unwrap_or("tokenizer.json");
        let path = params::file_in_version(spec, "tokenizer_file", name)?;
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| {
            Error::invalid(format!(
                "{STEP}: cannot read the tokenizer '{}/{name}': {e}",
                spec.version
            ))
        })?;
        let fixed_len = fixed_len.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let max_length = match (p.positive("max_length")?, fixed_len) {
            (Some(m), Some(f)) if m != f => {
                return Err(Error::invalid(format!(
                    "{STEP}: max_length {m} differs from the outputs' fixed length {f}"
                )))
            }
            (Some(m), _) => m,
            (None, Some(f)) => f,
            (None, None) => tokenizer
                .get_truncation()
                .map_or(DEFAULT_MAX_LENGTH, |t| t.max_length),
        };
        let padding = p.choice(
            "padding",
            &[
                ("longest", Padding::Longest),
                ("max_length", Padding::MaxLength),
            ],
            if fixed_len.is_some() {
                Padding::MaxLength
            } else {
                Padding::Longest
            },
        )?;
        if fixed_len.is_some() && padding == Padding::Longest {
            return Err(Error::invalid(format!(
                "{STEP}: padding longest gives rows of varying length, but the outputs have a fixed \
                 length {max_length}: use dims [ -1 ] or padding max_length"
            )));
        }
        let add_special_tokens = p.boolean("add_special_tokens", true)?;
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(pad) => (pad.pad_id, pad.pad_type_id),
            None => (tokenizer.token_to_id("[PAD]").unwrap_or(0), 0),
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::invalid(format!("{STEP}: max_length {max_length}: {e}")))?;
        tokenizer.with_padding(None);
        Ok(Settings {
            tokenizer,
            outputs,
            max_length,
            padding,
            add_special_tokens,
            pad_id,
            pad_type_id,
            batching: config.max_batch_size > 0,
        })
    }
}

struct TokenizerModel {
    settings: Arc<Settings>,
}

impl LoadedModel for TokenizerModel {
    fn instance(&self, _options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        Ok(Box::new(TokenizerInstance {
            settings: Arc::clone(&self.settings),
        }))
    }
}

struct TokenizerInstance {
    settings: Arc<Settings>,
}

impl Instance for TokenizerInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let s = &*self.settings;
        let input = inputs
            .first()
            .ok_or_else(|| Error::internal("sluice_tokenizer got no input tensor"))?;
        let rows = params::bytes_rows(input)?;
        if !s.batching && rows.len() != 1 {
            return Err(Error::invalid(format!(
                "input '{}' holds {} texts; this model takes one (max_batch_size 0)",
                input.name,
                rows.len()
            )));
        }
        let encodings = rows
            .iter()
            .enumerate()
            .map(|(row, bytes)| {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    Error::invalid(format!(
                        "input '{}', row {row}: the text is not UTF-8 (at byte {})",
                        input.name,
                        e.valid_up_to()
                    ))
                })?;
                sluice_core::catch_panics(STEP, "tokenizing", || {
                    s.tokenizer.encode(text, s.add_special_tokens).map_err(|e| {
                        Error::invalid(format!(
                            "input '{}', row {row}: cannot tokenize: {e}",
                            input.name
                        ))
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let len = match s.padding {
            Padding::MaxLength => s.max_length,
            Padding::Longest => encodings.iter().map(|e| e.len()).max().unwrap_or(0),
        };
        let shape = if s.batching {
            vec![rows.len(), len]
        } else {
            vec![len]
        };
        s.outputs
            .iter()
            .map(|(field, name, datatype)| {
                let (pad, values): (u32, fn(&tokenizers::Encoding) -> &[u32]) = match field {
                    Field::InputIds => (s.pad_id, tokenizers::Encoding::get_ids),
                    Field::AttentionMask => (0, tokenizers::Encoding::get_attention_mask),
                    Field::TokenTypeIds => (s.pad_type_id, tokenizers::Encoding::get_type_ids),
                };
                let flat = encodings.iter().flat_map(|e| {
                    let v = values(e);
                    let v = &v[..v.len().min(len)];
                    v.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad, len - v.len()))
                        .map(i64::from)
                });
                params::int_tensor(name, *datatype, shape.clone(), flat)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bytes_tensor, config, load_err_in, load_in, read_i64};

    /// A small BERT-style WordPiece tokenizer written as `tokenizer.json` in a temp folder
    /// (the file format Hugging Face saves).
    fn tokenizer_dir() -> tempfile::TempDir {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "##s", "a",
        ];
        let vocab: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| format!("\"{w}\": {i}"))
            .collect();
        let json = format!(
            r###"{{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                  "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": {{"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}},
  "decoder": null,
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
             "max_input_chars_per_word": 100, "vocab": {{{}}}}}
}}"###,
            vocab.join(", ")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        dir
    }

    fn tok_config(params: &[(&str, &str)], dims: Vec<i64>) -> sluice_core::ModelConfig {
        config(
            STEP,
            8,
            &[("text", DataType::Bytes, vec![1])],
            &[
                ("input_ids", DataType::I64, dims.clone()),
                ("attention_mask", DataType::I64, dims.clone()),
                ("token_type_ids", DataType::I32, dims),
            ],
            params,
        )
    }

    #[test]
    fn pads_to_the_longest_row_and_truncates() {
        let dir = tokenizer_dir();
        let mut inst = load_in(
            &TokenizerBackend,
            &tok_config(&[("max_length", "5")], vec![-1]),
            dir.path(),
        );
        let out = inst
            .run(vec![bytes_tensor(
                "text",
                &[
                    b"The cat",
                    b"",
                    b"the cats sat on the mat",
                    "caf\u{e9}".as_bytes(),
                ],
            )])
            .unwrap();
        assert_eq!(out[0].shape, vec![4, 5]);
        assert_eq!(
            read_i64(&out[0]),
            vec![
                2, 4, 5, 3, 0, // [CLS] the cat [SEP] pad
                2, 3, 0, 0, 0, // [CLS] [SEP]
                2, 4, 5, 9, 3, // truncated to 5, special tokens kept
                2, 1, 3, 0, 0, // unknown word
            ]
        );
        assert_eq!(&read_i64(&out[1])[..10], &[1, 1, 1, 1, 0, 1, 1, 0, 0, 0]);
        assert_eq!(out[2].datatype, DataType::I32);
        assert!(read_i64(&out[2]).iter().all(|&t| t == 0));
    }

    #[test]
    fn fixed_dims_pad_to_max_length() {
        let dir = tokenizer_dir();
        let mut inst = load_in(&TokenizerBackend, &tok_config(&[], vec![6]), dir.path());
        let out = inst.run(vec![bytes_tensor("text", &[b"a mat"])]).unwrap();
        assert_eq!(out[0].shape, vec![1, 6]);
        assert_eq!(read_i64(&out[0]), vec![2, 10, 8, 3, 0, 0]);
        let no_special = config(
            STEP,
            0,
            &[("text", DataType::Bytes, vec![1])],
            &[("input_ids", DataType::I64, vec![-1])],
            &[("add_special_tokens", "false")],
        );
        let mut inst = load_in(&TokenizerBackend, &no_special, dir.path());
        let out = inst.run(vec![bytes_tensor("text", &[b"a mat"])]).unwrap();
        assert_eq!(out[0].shape, vec![2]);
        assert_eq!(read_i64(&out[0]), vec![10, 8]);
    }

    #[test]
    fn bad_configs_and_files_are_refused_at_load() {
        let dir = tokenizer_dir();
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("broken.json"), b"{ not json").unwrap();
        let cases = [
            (tok_config(&[], vec![-1]), empty.path(), "does not exist"),
            (
                tok_config(&[("tokenizer_file", "broken.json")], vec![-1]),
                empty.path(),
                "cannot read the tokenizer",
            ),
            (
                tok_config(&[("tokenizer_file", "../tokenizer.json")], vec![-1]),
                dir.path(),
                "relative path inside",
            ),
            (
                tok_config(&[("max_length", "7")], vec![6]),
                dir.path(),
                "differs",
            ),
            (
                tok_config(&[("padding", "longest")], vec![6]),
                dir.path(),
                "fixed length",
            ),
            (
                tok_config(&[("padding", "left")], vec![-1]),
                dir.path(),
                "one of longest",
            ),
            (
                config(
                    STEP,
                    8,
                    &[("text", DataType::Bytes, vec![1])],
                    &[("ids", DataType::I64, vec![-1])],
                    &[],
                ),
                dir.path(),
                "not one of input_ids",
            ),
        ];
        for (config, dir, expect) in cases {
            let err = load_err_in(&TokenizerBackend, &config, dir);
            assert!(err.message().contains(expect), "{expect}: {err}");
        }
    }
}
