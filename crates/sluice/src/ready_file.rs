//! `serve --ready-file PATH`: a machine-readable signal that the server is up.
//!
//! Once the models of the start-up set are loaded and every listener is bound, the
//! server writes `PATH` as one JSON object with its process id and the address and
//! port of each listener (`metrics` is `null` when metrics are off):
//!
//! ```json
//! {"pid":4242,"http":{"address":"127.0.0.1:8000","port":8000},
//!  "grpc":{"address":"127.0.0.1:8001","port":8001},"metrics":null}
//! ```
//!
//! The file is written beside its final name and renamed into place, so a reader
//! that sees it sees all of it; a stale file from an earlier run is removed at start
//! and the file is removed again on a clean exit. Test harnesses and supervisors
//! bind port 0 and read the ports from here instead of parsing the log (the
//! "listening on" lines stay, for humans).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The listeners a ready file describes.
pub(crate) struct Bound {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// The ready file of one server run; removes it when dropped.
pub(crate) struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// Claims `path`: removes what an earlier run left there.
    pub(crate) fn claim(path: &Path) -> anyhow::Result<ReadyFile> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot remove the old ready file {}", path.display())
                })
            }
        }
        Ok(ReadyFile {
            path: path.to_path_buf(),
        })
    }

    /// Writes the file (atomically: a temporary file renamed into place).
    pub(crate) fn write(&self, bound: &Bound) -> anyhow::Result<()> {
        let listener =
            |a: SocketAddr| serde_json::json!({"address": a.to_string(), "port": a.port()});
        let body = serde_json::json!({
            "pid": std::process::id(),
            "http": listener(bound.http),
            "grpc": listener(bound.grpc),
            "metrics": bound.metrics.map(listener),
        });
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{body}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .with_context(|| format!("cannot write the ready file {}", self.path.display()))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::{Bound, ReadyFile};

    #[test]
    fn the_file_names_every_listener_and_goes_away_with_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        std::fs::write(&path, "stale").unwrap();
        let file = ReadyFile::claim(&path).unwrap();
        assert!(!path.exists(), "a stale file is removed at start");
        file.write(&Bound {
            http: "127.0.0.1:8000".parse().unwrap(),
            grpc: "[::1]:8001".parse().unwrap(),
            metrics: None,
        })
        .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["http"]["address"], "127.0.0.1:8000");
        assert_eq!(json["http"]["port"], 8000);
        assert_eq!(json["grpc"]["address"], "[::1]:8001");
        assert_eq!(json["metrics"], serde_json::Value::Null);
        drop(file);
        assert!(!path.exists(), "removed on exit");
    }
}
