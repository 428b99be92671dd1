//! The repository reader against the example and broken-model repositories, and
//! version policies on folders made in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};

use sluice_core::{DataType, ErrorKind};
use sluice_repository::{ConfigOrigin, Repository, RepositoryOptions};

fn root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn open(rel: &str) -> Repository {
    Repository::open(root(rel), RepositoryOptions::default()).unwrap()
}

#[test]
fn reads_every_config_source_of_the_examples() {
    let repo = open("examples/models");
    assert_eq!(
        repo.model_names().unwrap(),
        vec!["cnn", "digits", "mixed", "mlp"]
    );

    let mlp = repo.read_model("mlp").unwrap();
    assert_eq!(mlp.origin, ConfigOrigin::Pbtxt);
    assert_eq!(mlp.config.max_batch_size, 32);
    assert_eq!(mlp.config.instance_count(), 2);
    assert_eq!(
        mlp.config
            .dynamic_batching
            .as_ref()
            .unwrap()
            .preferred_batch_size,
        vec![4, 8]
    );
    assert_eq!(mlp.config.parameter("intra_op_thread_count"), Some("1"));
    assert_eq!(mlp.versions.len(), 1);
    assert!(mlp.versions[0].model_file.ends_with("mlp/1/model.onnx"));

    let digits = repo.read_model("digits").unwrap();
    assert_eq!(digits.origin, ConfigOrigin::Json);
    assert_eq!(digits.config.output[0].data_type, DataType::I64);

    let cnn = repo.read_model("cnn").unwrap();
    assert_eq!(cnn.origin, ConfigOrigin::AutoComplete);
    assert_eq!(cnn.config.name, "cnn");
    assert_eq!(cnn.config.max_batch_size, 4);
    assert_eq!(cnn.config.input[0].name, "image");
    assert_eq!(cnn.config.input[0].dims, vec![3, 32, 32]);
    assert_eq!(cnn.config.output[0].dims, vec![10]);

    let mixed = repo.read_model("mixed").unwrap();
    assert_eq!(mixed.config.platform, "onnxruntime_onnx");
    assert_eq!(mixed.config.max_batch_size, 0);
    let types: Vec<DataType> = mixed.config.input.iter().map(|i| i.data_type).collect();
    assert_eq!(types, vec![DataType::I32, DataType::F64, DataType::F16]);
}

#[test]
fn auto_complete_without_batching_keeps_every_dim() {
    let opts = RepositoryOptions {
        default_max_batch_size: 0,
    };
    let repo = Repository::open(root("examples/models"), opts).unwrap();
    let cnn = repo.read_model("cnn").unwrap();
    assert_eq!(cnn.config.max_batch_size, 0);
    assert_eq!(cnn.config.input[0].dims, vec![-1, 3, 32, 32]);
}

#[test]
fn broken_models_are_errors_with_reasons() {
    let repo = open("tests/data/broken_models");
    let err = repo.read_model("badconfig").unwrap_err();
    assert!(err.message().starts_with("config.pbtxt: line"), "{err}");
    // A corrupt ONNX file with a complete config is read fine here; the backend refuses it.
    assert!(repo.read_model("corrupt").is_ok());
    assert!(repo.read_model("good").is_ok());
    assert_eq!(
        repo.read_model("missing").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    for bad in ["../examples", "..", "/etc", ".hidden", "a/b", ""] {
        let err = repo.read_model(bad).unwrap_err();
        assert!(
            err.message().contains("not a valid model name"),
            "{bad}: {err}"
        );
    }
}

fn model_dir(root: &Path, name: &str, config: &str, versions: &[u64]) {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.pbtxt"), config).unwrap();
    for v in versions {
        fs::create_dir_all(dir.join(v.to_string())).unwrap();
        fs::write(dir.join(v.to_string()).join("model.onnx"), b"").unwrap();
    }
}

const IO: &str = r#"input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]
"#;

#[test]
fn version_policies_select_folders() {
    let tmp = tempfile::tempdir().unwrap();
    model_dir(tmp.path(), "latest", IO, &[1, 2, 3, 10]);
    model_dir(
        tmp.path(),
        "two",
        &format!("{IO}version_policy: {{ latest {{ num_versions: 2 }} }}"),
        &[1, 2, 3],
    );
    model_dir(
        tmp.path(),
        "all",
        &format!("{IO}version_policy: {{ all {{ }} }}"),
        &[1, 3],
    );
    model_dir(
        tmp.path(),
        "specific",
        &format!("{IO}version_policy {{ specific {{ versions: [1, 3] }} }}"),
        &[1, 2, 3],
    );
    model_dir(tmp.path(), "none", IO, &[]);
    model_dir(
        tmp.path(),
        "renamed",
        &format!("name: \"other\"\n{IO}"),
        &[1],
    );
    model_dir(tmp.path(), "typo", &format!("{IO}max_batch_sise: 4"), &[1]);
    fs::write(tmp.path().join("not-a-model.txt"), "x").unwrap();
    let repo = Repository::open(tmp.path(), RepositoryOptions::default()).unwrap();
    let versions = |name: &str| -> Vec<u64> {
        repo.read_model(name)
            .unwrap()
            .versions
            .iter()
            .map(|v| v.version)
            .collect()
    };
    assert_eq!(versions("latest"), vec![10]);
    assert_eq!(versions("two"), vec![2, 3]);
    assert_eq!(versions("all"), vec![1, 3]);
    assert_eq!(versions("specific"), vec![1, 3]);
    let err = repo.read_model("none").unwrap_err();
    assert!(
        err.message().contains("no numbered version folder"),
        "{err}"
    );
    let err = repo.read_model("renamed").unwrap_err();
    assert!(
        err.message().contains("does not match the model folder"),
        "{err}"
    );
    let err = repo.read_model("typo").unwrap_err();
    assert!(err.message().contains("max_batch_sise"), "{err}");
    assert!(!repo
        .model_names()
        .unwrap()
        .contains(&"not-a-model.txt".to_owned()));
}

#[test]
fn a_missing_repository_is_an_error() {
    let err = Repository::open("/definitely/not/here", RepositoryOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[cfg(unix)]
#[test]
fn symlinked_model_and_version_folders_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tempfile::tempdir().unwrap();
    model_dir(real.path(), "m", IO, &[1]);
    std::os::unix::fs::symlink(real.path().join("m"), tmp.path().join("linked")).unwrap();
    let repo = Repository::open(tmp.path(), RepositoryOptions::default()).unwrap();
    assert_eq!(repo.model_names().unwrap(), vec!["linked"]);
    // The config names no model, so the model takes the (link's) folder name.
    let model = repo.read_model("linked").unwrap();
    assert_eq!(model.config.name, "linked");
    assert_eq!(model.versions.len(), 1);
}

/// A config with no inputs or outputs, so the model file is read to auto-complete it.
fn auto_complete_model(root: &Path, name: &str, file_name: &str) {
    let dir = root.join(name);
    fs::create_dir_all(dir.join("1")).unwrap();
    fs::write(
        dir.join("config.pbtxt"),
        format!("default_model_filename: \"{file_name}\"\n"),
    )
    .unwrap();
}

#[test]
fn default_model_filename_stays_inside_the_version_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("secret.onnx");
    fs::write(&outside, b"").unwrap();
    let repo_root = tmp.path().join("repo");
    fs::create_dir(&repo_root).unwrap();
    let refused = [
        ("absolute", outside.display().to_string()),
        ("dev_zero", "/dev/zero".to_owned()),
        ("parent", "../../../secret.onnx".to_owned()),
        ("inner_parent", "sub/../../x.onnx".to_owned()),
        ("dot", "./model.onnx".to_owned()),
        ("trailing", "model.onnx/".to_owned()),
    ];
    for (name, file_name) in &refused {
        auto_complete_model(&repo_root, name, file_name);
    }
    let repo = Repository::open(&repo_root, RepositoryOptions::default()).unwrap();
    for (name, file_name) in &refused {
        let err = repo.read_model(name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
        assert!(
            err.message().contains("must be a relative path inside"),
            "{name} ({file_name}): {err}"
        );
    }
    // A plain name and a subfolder are fine (with a config that needs no file read).
    model_dir(
        &repo_root,
        "sub",
        &format!("{IO}default_model_filename: \"onnx/graph.onnx\""),
        &[1],
    );
    let model = repo.read_model("sub").unwrap();
    assert!(model.versions[0].model_file.ends_with("1/onnx/graph.onnx"));
}

#[cfg(unix)]
#[test]
fn model_files_are_never_read_from_devices_or_folders() {
    // Symlinks in the repository are the operator's (Kubernetes volumes are made of
    // them) and are followed, as Triton does; what they point at must still be a file.
    let tmp = tempfile::tempdir().unwrap();
    let repo_root = tmp.path().join("repo");
    fs::create_dir(&repo_root).unwrap();
    auto_complete_model(&repo_root, "zero", "model.onnx");
    std::os::unix::fs::symlink("/dev/zero", repo_root.join("zero/1/model.onnx")).unwrap();
    // The model file is a folder: not a regular file, refused before reading.
    auto_complete_model(&repo_root, "folder", "model.onnx");
    fs::create_dir(repo_root.join("folder/1/model.onnx")).unwrap();
    // A symlink to a model file is followed.
    model_dir(&repo_root, "inside", IO, &[1]);
    fs::rename(
        repo_root.join("inside/1/model.onnx"),
        repo_root.join("inside/1/real.onnx"),
    )
    .unwrap();
    std::os::unix::fs::symlink("real.onnx", repo_root.join("inside/1/model.onnx")).unwrap();
    let repo = Repository::open(&repo_root, RepositoryOptions::default()).unwrap();
    for (name, expect) in [
        ("zero", "not a regular file"),
        ("folder", "not a regular file"),
    ] {
        let err = repo.read_model(name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
        assert!(err.message().contains(expect), "{name}: {err}");
    }
    repo.read_model("inside").unwrap();
}

#[test]
fn versions_times_instances_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let group = "instance_group [{ count: 200 }]";
    model_dir(
        tmp.path(),
        "many",
        &format!("{IO}{group}\nversion_policy: {{ all {{ }} }}"),
        &[1, 2],
    );
    model_dir(tmp.path(), "one", &format!("{IO}{group}"), &[1, 2]);
    model_dir(
        tmp.path(),
        "bomb",
        &format!("{IO}instance_group [{{ count: 4294967295 }}]"),
        &[1],
    );
    let repo = Repository::open(tmp.path(), RepositoryOptions::default()).unwrap();
    let err = repo.read_model("many").unwrap_err();
    assert!(err.message().contains("400 instances"), "{err}");
    repo.read_model("one").unwrap();
    let err = repo.read_model("bomb").unwrap_err();
    assert!(err.message().contains("at most 256"), "{err}");
}
