//! Which engines the server runs, and where ONNX Runtime comes from.
//!
//! tract and the built-in processing steps (`sluice_image`, `sluice_tokenizer`,
//! `sluice_postprocess`) are always built in. ONNX Runtime (cargo feature `ort`, on by default) is a
//! shared library opened at run time, found in this order:
//! 1. `--ort-library PATH` or `ORT_DYLIB_PATH` (a file or a folder holding one;
//!    `off` disables ONNX Runtime);
//! 2. the Python package in `./.venv` (`.venv/lib/python3*/site-packages/onnxruntime/capi/`);
//! 3. the Python package in the active virtualenv (`$VIRTUAL_ENV`);
//! 4. the Python package `python3` can import (asked with `importlib.util.find_spec`,
//!    which does not import it; given 5 seconds).
//!
//! When none is found, or the library cannot be opened, the server starts with tract
//! alone and logs why, unless `--default-backend onnxruntime` asked for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_backend_tract::TractBackend;
use sluice_runtime::Backends;

/// Engine flags of `sluice serve`.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// ONNX Runtime shared library (`libonnxruntime.so*`) or a folder holding one,
    /// such as `<site-packages>/onnxruntime/capi`; `off` runs tract only. Default:
    /// discovered from a Python onnxruntime install (./.venv, $VIRTUAL_ENV, python3).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<String>,
}

/// The backends to register, and a check that `default_backend` is among them.
pub fn backends(args: &EngineArgs, default_backend: &str) -> anyhow::Result<Backends> {
    let backends = sluice_backend_builtin::backends()
        .into_iter()
        .fold(Backends::new(), Backends::with)
        .with(Arc::new(TractBackend::new()));
    match onnxruntime(args) {
        Ok(Some(ort)) => return Ok(backends.with(ort)),
        Ok(None) => tracing::info!("ONNX Runtime is off (--ort-library off); models run on tract"),
        Err(reason) => {
            anyhow::ensure!(
                default_backend != "onnxruntime",
                "--default-backend onnxruntime, but ONNX Runtime is unavailable: {reason}"
            );
            tracing::warn!("ONNX Runtime is unavailable, models run on tract: {reason}");
        }
    }
    Ok(backends)
}

#[cfg(feature = "ort")]
fn onnxruntime(args: &EngineArgs) -> Result<Option<Arc<dyn sluice_core::Backend>>, String> {
    let Some((library, source)) = locate(args)? else {
        return Ok(None);
    };
    let options = sluice_backend_ort::OrtOptions { library };
    let backend = sluice_backend_ort::OrtBackend::new(&options)
        .map_err(|e| format!("{e} (found through {source})"))?;
    tracing::info!(
        library = %backend.library().display(),
        found_through = source,
        build = %backend.build_info(),
        "ONNX Runtime loaded"
    );
    Ok(Some(Arc::new(backend)))
}

#[cfg(not(feature = "ort"))]
fn onnxruntime(args: &EngineArgs) -> Result<Option<Arc<dyn sluice_core::Backend>>, String> {
    match args.ort_library.as_deref() {
        Some("off") => Ok(None),
        _ => Err("this sluice was built without the `ort` cargo feature".to_owned()),
    }
}

/// The library to open and how it was found; `Ok(None)` when switched off.
#[cfg_attr(
    not(feature = "ort"),
    allow(dead_code, reason = "only the ort engine opens a library")
)]
fn locate(args: &EngineArgs) -> Result<Option<(PathBuf, &'static str)>, String> {
    match args.ort_library.as_deref().map(str::trim) {
        Some("off") => return Ok(None),
        Some(p) if !p.is_empty() => {
            return Ok(Some((PathBuf::from(p), "--ort-library/ORT_DYLIB_PATH")))
        }
        _ => {}
    }
    if let Some(capi) = capi_in_venv(Path::new(".venv")) {
        return Ok(Some((capi, "./.venv")));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        if let Some(capi) = capi_in_venv(Path::new(&venv)) {
            return Ok(Some((capi, "$VIRTUAL_ENV")));
        }
    }
    if let Some(capi) = capi_from_python() {
        return Ok(Some((capi, "python3")));
    }
    Err(
        "no ONNX Runtime library found: set --ort-library or ORT_DYLIB_PATH to \
         libonnxruntime.so*, or `pip install onnxruntime` into ./.venv"
            .to_owned(),
    )
}

/// `<venv>/lib/python3*/site-packages/onnxruntime/capi`, when it exists.
fn capi_in_venv(venv: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found.pop()
}

/// Asks `python3` where its onnxruntime package is, without importing it.
fn capi_from_python() -> Option<PathBuf> {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    const SCRIPT: &str = "import importlib.util as u, os\n\
        s = u.find_spec('onnxruntime')\n\
        print(os.path.join(os.path.dirname(s.origin), 'capi') if s and s.origin else '')";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_dir().then_some(path)
}
