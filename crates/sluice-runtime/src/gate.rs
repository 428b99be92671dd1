//! Execution gates for tests: a run of a gated model waits until the test lets it go.
//!
//! Tests that need a request to be running, queued or in flight at a known moment
//! (drain on SIGTERM, queue timeouts, metrics of each outcome) must not hope that a
//! model is slow enough: on a fast machine it is not. With `--test-execution-gates DIR`
//! the server looks for a named pipe `DIR/<model name>` when it loads a model; if
//! there is one, every batch that model runs first reads one byte from it. A test
//! writes one byte per run it releases (or many to open the gate for good).
//!
//! Key decision: the pipe is opened read-write, which on Linux never blocks and keeps
//! the pipe open with a writer of its own, so a run blocks exactly until a byte
//! arrives, whenever the test opens or closes its end. Warmup runs are gated too.
//! The gates are off unless the operator names the folder, and only a named pipe
//! counts, so an ordinary file can never stall a model.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sluice_core::{Error, Instance, Result, Tensor};

/// Whether `dir` holds a named pipe named `model`: the model's runs are gated.
pub(crate) fn exists(dir: &Path, model: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(dir.join(model)).is_ok_and(|m| m.file_type().is_fifo())
}

/// Opens the gate of `model` in `dir`, if the folder holds a named pipe of that name.
pub(crate) fn open(dir: &Path, model: &str) -> Result<Option<File>> {
    if !exists(dir, model) {
        return Ok(None);
    }
    let path = dir.join(model);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::internal(format!("cannot open the execution gate of {model}: {e}")))?;
    tracing::warn!(model, "runs of this model wait for its test execution gate");
    Ok(Some(file))
}

/// An instance whose runs each wait for one byte from the gate.
pub(crate) struct GatedInstance {
    pub inner: Box<dyn Instance>,
    pub gate: File,
}

impl Instance for GatedInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mut byte = [0u8; 1];
        self.gate
            .read_exact(&mut byte)
            .map_err(|e| Error::internal(format!("the execution gate failed: {e}")))?;
        self.inner.run(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Echo;
    impl Instance for Echo {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
            Ok(inputs)
        }
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
    }

    #[test]
    fn a_run_waits_for_one_byte_per_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        assert!(
            open(dir.path(), "plain").unwrap().is_none(),
            "a plain file is no gate"
        );
        assert!(open(dir.path(), "absent").unwrap().is_none());
        mkfifo(&dir.path().join("m"));
        let gate = open(dir.path(), "m")
            .unwrap()
            .expect("a named pipe is a gate");
        let mut instance = GatedInstance {
            inner: Box::new(Echo),
            gate,
        };
        let (done, ran) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            for _ in 0..2 {
                instance.run(Vec::new()).unwrap();
                done.send(()).unwrap();
            }
        });
        // Nothing runs before the test writes: the run is still waiting after a
        // generous pause (this only checks that it did not run; no timing is assumed
        // for the release below).
        assert!(ran.recv_timeout(Duration::from_millis(200)).is_err());
        let pipe = dir.path().join("m");
        let open_writer = || std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
        let mut writer = open_writer();
        writer.write_all(b"1").unwrap();
        ran.recv().unwrap();
        assert!(
            ran.recv_timeout(Duration::from_millis(200)).is_err(),
            "one byte, one run"
        );
        drop(writer); // closing the test's end does not open the gate
        assert!(ran.recv_timeout(Duration::from_millis(100)).is_err());
        let mut writer = open_writer();
        writer.write_all(b"2").unwrap();
        ran.recv().unwrap();
        worker.join().unwrap();
    }
}
