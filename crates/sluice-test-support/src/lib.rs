//! Scaffolding shared by Sluice's Rust tests and benchmarks, so each piece exists
//! once: [`Serve`] starts a real `sluice serve` on port 0 and waits for its ready file
//! (`--ready-file`, JSON with the bound ports; never the log), and
//! [`RuntimeConfigBuilder`] makes a [`RuntimeConfig`] without spelling out every field.
//!
//! Key decision: readiness is the server's machine-readable signal, not a log line
//! (log lines are for humans and change); a server process is stopped by its own
//! handle (its PID) when the [`ServerProcess`] is dropped, pass or fail.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_runtime::{CacheConfig, ControlMode, LifecycleConfig, RepositoryOptions, RuntimeConfig};

/// A `sluice serve` command to start: the binary, the repository, extra flags.
#[derive(Debug, Clone)]
pub struct Serve {
    binary: PathBuf,
    repository: PathBuf,
    args: Vec<String>,
    cpus: Option<String>,
    timeout: Duration,
}

impl Serve {
    /// `binary serve --model-repository repository` on 127.0.0.1, every port 0, ONNX
    /// Runtime off (pass `--ort-library` in [`Serve::args`] to change that).
    pub fn new(binary: impl Into<PathBuf>, repository: impl Into<PathBuf>) -> Serve {
        Serve {
            binary: binary.into(),
            repository: repository.into(),
            args: Vec::new(),
            cpus: None,
            timeout: Duration::from_secs(120),
        }
    }

    /// More flags for `serve`, after the defaults (a later flag wins in clap).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the server under `taskset -c cpus` (benchmarks keep it off the load
    /// generator's cores).
    #[must_use]
    pub fn pinned(mut self, cpus: &str) -> Serve {
        self.cpus = Some(cpus.to_owned());
        self
    }

    /// How long to wait for the ready file (default 120 s: start-up loads models).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Serve {
        self.timeout = timeout;
        self
    }

    /// Starts the server and returns once its ready file exists.
    ///
    /// # Panics
    /// When the process cannot start, exits first, or the timeout passes; the
    /// message carries the server's log.
    pub fn spawn(self) -> ServerProcess {
        let dir = tempfile::tempdir().expect("a folder for the ready file");
        let ready_file = dir.path().join("ready.json");
        let mut command = match &self.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("serve")
            .arg("--model-repository")
            .arg(&self.repository)
            .args(["--http-address", "127.0.0.1", "--http-port", "0"])
            .args([
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
                "--ort-library",
                "off",
            ])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        // Drained for the life of the process, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        let mut process = ServerProcess {
            child,
            ready: Ready::default(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(ready) = Ready::read(&ready_file) {
                process.ready = ready;
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("sluice serve exited with {status}:\n{}", process.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "sluice serve wrote no ready file in {:?}:\n{}",
                    self.timeout,
                    process.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What a ready file says.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    pub pid: u32,
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl Ready {
    /// Parses the ready file at `path`; `None` while it does not exist (the server
    /// renames it into place whole, so one that exists is complete).
    ///
    /// # Panics
    /// When the file exists but is not a ready file.
    pub fn read(path: &Path) -> Option<Ready> {
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("ready file {}: {e}: {text}", path.display()));
        let addr = |key: &str| {
            json[key]["address"].as_str().map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("ready file {key}: {e}"))
            })
        };
        Some(Ready {
            pid: json["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .expect("ready file pid"),
            http: addr("http"),
            grpc: addr("grpc"),
            metrics: addr("metrics"),
        })
    }
}

/// A running `sluice serve`; killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    ready: Ready,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// What the server's ready file said.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.ready.http.expect("an HTTP listener"))
    }

    /// `127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_addr(&self) -> String {
        self.ready.grpc.expect("a gRPC listener").to_string()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }

    /// The process id (of `taskset`'s exec, which is the server itself).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a [`RuntimeConfig`] for tests and benchmarks: tract, one intra-op thread, a
/// queue of 1024, strict readiness, control mode none, no cache; change what a test
/// is about.
#[derive(Debug, Clone)]
pub struct RuntimeConfigBuilder {
    config: RuntimeConfig,
}

/// The builder over `repository` with the defaults of [`RuntimeConfigBuilder`].
pub fn runtime_config(repository: impl Into<PathBuf>) -> RuntimeConfigBuilder {
    RuntimeConfigBuilder {
        config: RuntimeConfig {
            repository: repository.into(),
            repository_options: RepositoryOptions::default(),
            default_backend: "tract".to_owned(),
            intra_op_threads: 1,
            queue_capacity: 1024,
            strict_readiness: true,
            lifecycle: LifecycleConfig::default(),
            execution_gates: None,
            cache: CacheConfig::None,
        },
    }
}

impl RuntimeConfigBuilder {
    #[must_use]
    pub fn default_backend(mut self, name: &str) -> Self {
        name.clone_into(&mut self.config.default_backend);
        self
    }
    #[must_use]
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.config.queue_capacity = n;
        self
    }
    #[must_use]
    pub fn intra_op_threads(mut self, n: usize) -> Self {
        self.config.intra_op_threads = n;
        self
    }
    #[must_use]
    pub fn strict_readiness(mut self, strict: bool) -> Self {
        self.config.strict_readiness = strict;
        self
    }
    #[must_use]
    pub fn repository_options(mut self, options: RepositoryOptions) -> Self {
        self.config.repository_options = options;
        self
    }
    #[must_use]
    pub fn lifecycle(mut self, lifecycle: LifecycleConfig) -> Self {
        self.config.lifecycle = lifecycle;
        self
    }
    /// The control mode, with the lifecycle's other settings kept.
    #[must_use]
    pub fn control_mode(mut self, mode: ControlMode) -> Self {
        self.config.lifecycle.mode = mode;
        self
    }
    #[must_use]
    pub fn execution_gates(mut self, folder: impl Into<PathBuf>) -> Self {
        self.config.execution_gates = Some(folder.into());
        self
    }
    #[must_use]
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.config.cache = cache;
        self
    }
    pub fn build(self) -> RuntimeConfig {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_changes_only_what_it_is_told() {
        let config = runtime_config("models")
            .queue_capacity(8)
            .control_mode(ControlMode::Explicit)
            .build();
        assert_eq!(config.repository, PathBuf::from("models"));
        assert_eq!(config.queue_capacity, 8);
        assert_eq!(config.lifecycle.mode, ControlMode::Explicit);
        assert_eq!(
            config.lifecycle.poll_interval,
            LifecycleConfig::default().poll_interval
        );
        assert_eq!(config.default_backend, "tract");
        assert_eq!(config.cache, CacheConfig::None);
    }

    #[test]
    fn a_ready_file_is_read_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert!(Ready::read(&path).is_none());
        std::fs::write(
            &path,
            r#"{"pid":7,"http":{"address":"127.0.0.1:8000","port":8000},"grpc":{"address":"127.0.0.1:8001","port":8001},"metrics":null}"#,
        )
        .unwrap();
        let ready = Ready::read(&path).unwrap();
        assert_eq!(ready.pid, 7);
        assert_eq!(ready.http, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(ready.grpc.map(|a| a.port()), Some(8001));
        assert_eq!(ready.metrics, None);
    }
}
