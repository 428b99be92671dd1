//! The example pipelines' ensemble configs (`examples/pipelines/ensembles/`) read with
//! the repository's own pbtxt reader and checked against their composing models'
//! configs (`examples/pipelines/*/config.pbtxt`) with Triton's ensemble rules.

use std::path::{Path, PathBuf};

use sluice_core::ensemble::{EnsembleGraph, Source};
use sluice_core::{Error, ModelConfig};
use sluice_repository::{Repository, RepositoryOptions};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipelines")
}

/// A repository of every example config (steps and ensembles), each with an empty `1/`.
fn repository() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    for folder in [examples(), examples().join("ensembles")] {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let model = entry.unwrap().path();
            let config = model.join("config.pbtxt");
            if config.is_file() {
                let dest = dir.path().join(model.file_name().unwrap());
                std::fs::create_dir_all(dest.join("1")).unwrap();
                std::fs::copy(&config, dest.join("config.pbtxt")).unwrap();
            }
        }
    }
    let repo = Repository::open(dir.path(), RepositoryOptions::default()).unwrap();
    (dir, repo)
}

fn graph(repo: &Repository, name: &str) -> EnsembleGraph {
    let config: ModelConfig = repo.read_model(name).unwrap().config;
    EnsembleGraph::build(&config, |step| {
        repo.read_model(&step.model_name)
            .map(|m| m.config)
            .map_err(|e| Error::invalid(e.message().to_owned()))
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_image_classifier_is_a_valid_three_step_chain() {
    let (_dir, repo) = repository();
    let g = graph(&repo, "image_classifier");
    let steps: Vec<&str> = g
        .order
        .iter()
        .map(|&i| g.scheduling.step[i].model_name.as_str())
        .collect();
    assert_eq!(
        steps,
        ["image_preprocess", "efficientnet_lite0", "imagenet_top5"]
    );
    assert_eq!(g.tracker().initial(), vec![0]);
    assert_eq!(
        g.sources["LABELS"],
        Source::Step {
            step: 2,
            output: "labels".into()
        }
    );
}

#[test]
fn the_text_embedder_fans_the_mask_out_to_two_steps() {
    let (_dir, repo) = repository();
    let g = graph(&repo, "text_embedder");
    assert_eq!(g.depends_on, vec![vec![], vec![0], vec![0, 1]]);
    assert_eq!(g.dependents[0], vec![1, 2]);
    let mut t = g.tracker();
    assert_eq!(t.initial(), vec![0]);
    assert_eq!(t.complete(0), vec![1]);
    assert_eq!(t.complete(1), vec![2]);
}

#[test]
fn a_broken_edit_of_an_example_is_refused_naming_step_and_tensor() {
    let (dir, repo) = repository();
    let path = dir.path().join("text_embedder/config.pbtxt");
    let text = std::fs::read_to_string(&path).unwrap();
    // The encoder now writes its output to "mask", which the tokenizer writes already.
    std::fs::write(
        &path,
        text.replace(
            "output_map { key: \"last_hidden_state\" value: \"hidden\" }",
            "output_map { key: \"last_hidden_state\" value: \"mask\" }",
        ),
    )
    .unwrap();
    let err = repo.read_model("text_embedder").unwrap_err();
    let msg = err.message();
    assert!(msg.contains("tensor 'mask' is written twice"), "{msg}");
    assert!(msg.contains("step 0 (model 'minilm_tokenizer')"), "{msg}");
    assert!(msg.contains("step 1 (model 'minilm')"), "{msg}");
}
