//! The local cache: verified downloads (blobs), per-model snapshots built from them,
//! and the view folder the runtime reads as its repository.
//!
//! ```text
//! <cache>/blobs/<hash>                  one object version (key, size, ETag), complete
//! <cache>/tmp/                          downloads in progress (never read)
//! <cache>/snapshots/<repo>/<model>-<fp> a model folder: hard links to blobs
//! <cache>/view-XXXX/<model>             symlink → a snapshot or a local model folder
//! ```
//!
//! Every step that makes something visible is a rename: a blob appears only once
//! its bytes are all on disk and checked, a snapshot only once all its files are
//! in it, and a view entry is swapped from one snapshot to the next in one
//! `rename` of a symlink, so a reader sees the old model or the new one, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::store::ObjectInfo;
use crate::Error;

fn io(what: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Cache(format!("cannot {what} '{}': {e}", path.display()))
}

/// The cache folder.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    /// A temporary cache (no `--model-cache-dir`), removed on exit.
    _temp: Option<tempfile::TempDir>,
}

impl Cache {
    /// Opens (creating) `dir`, or a fresh temporary folder when `None`.
    pub fn open(dir: Option<&Path>) -> Result<Cache, Error> {
        let (root, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| io("create", d, &e))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("sluice-model-cache-")
                    .tempdir()
                    .map_err(|e| Error::Cache(format!("cannot create a cache folder: {e}")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        for sub in ["blobs", "tmp", "snapshots"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| io("create", &p, &e))?;
        }
        Ok(Cache { root, _temp: temp })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A temporary cache (no `--model-cache-dir` given).
    pub fn is_temporary(&self) -> bool {
        self._temp.is_some()
    }

    /// Where the verified copy of one object version lives.
    pub fn blob_path(&self, repo_id: &str, object: &ObjectInfo) -> PathBuf {
        let identity = format!(
            "{repo_id}\0{}\0{}\0{}",
            object.key,
            object.size,
            object
                .etag
                .clone()
                .unwrap_or_else(|| format!("mtime:{}", object.modified_ms))
        );
        let hash = xxhash_rust::xxh3::xxh3_128(identity.as_bytes());
        self.root.join("blobs").join(format!("{hash:032x}"))
    }

    /// A new file for a download in progress, deleted unless persisted.
    pub fn temp_file(&self) -> Result<tempfile::TempPath, Error> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("dl-")
            .tempfile_in(&tmp)
            .map(tempfile::NamedTempFile::into_temp_path)
            .map_err(|e| io("create a file in", &tmp, &e))
    }

    /// The snapshot folder of a model with fingerprint `fp`, built from `files`
    /// (relative path → blob) unless it already exists. Returns its path.
    pub fn snapshot(
        &self,
        repo_id: &str,
        model: &str,
        fp: u64,
        files: &BTreeMap<String, PathBuf>,
    ) -> Result<PathBuf, Error> {
        let parent = self.root.join("snapshots").join(repo_id);
        std::fs::create_dir_all(&parent).map_err(|e| io("create", &parent, &e))?;
        let done = parent.join(format!("{model}-{fp:016x}"));
        if done.is_dir() {
            return Ok(done);
        }
        let building = tempfile::Builder::new()
            .prefix(&format!(".{model}-"))
            .tempdir_in(&parent)
            .map_err(|e| io("create a folder in", &parent, &e))?;
        for (rel, blob) in files {
            let target = building.path().join(rel);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("create", dir, &e))?;
            }
            if std::fs::hard_link(blob, &target).is_err() {
                std::fs::copy(blob, &target).map_err(|e| io("copy to", &target, &e))?;
            }
        }
        let built = building.keep();
        match std::fs::rename(&built, &done) {
            Ok(()) => Ok(done),
            Err(_) if done.is_dir() => {
                // Another server sharing this cache built it first.
                let _ = std::fs::remove_dir_all(&built);
                Ok(done)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&built);
                Err(io("move a snapshot to", &done, &e))
            }
        }
    }
}

/// The blob is there and has the listed size (a warm cache).
pub fn has_blob(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Moves a complete download into place (atomic).
pub fn persist(temp: tempfile::TempPath, blob: &Path) -> Result<(), Error> {
    temp.persist(blob)
        .map_err(|e| io("move a download to", blob, &e.error))
}

/// The folder the runtime reads: one symlink per model.
#[derive(Debug)]
pub struct View {
    dir: tempfile::TempDir,
}

impl View {
    pub fn new(cache: &Cache) -> Result<View, Error> {
        let dir = tempfile::Builder::new()
            .prefix("view-")
            .tempdir_in(cache.root())
            .map_err(|e| io("create a folder in", cache.root(), &e))?;
        Ok(View { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Points `model` at `target`, replacing what it pointed at in one rename.
    pub fn link(&self, model: &str, target: &Path) -> Result<(), Error> {
        let path = self.dir.path().join(model);
        if std::fs::read_link(&path).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let staged = self.dir.path().join(format!(".{model}.next"));
        let _ = std::fs::remove_file(&staged);
        symlink(target, &staged).map_err(|e| io("create a link at", &staged, &e))?;
        std::fs::rename(&staged, &path).map_err(|e| io("replace", &path, &e))
    }

    /// Removes `model` from the view.
    pub fn unlink(&self, model: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(model));
    }

    /// Where `model` points now.
    #[cfg(test)]
    pub fn target(&self, model: &str) -> Option<PathBuf> {
        std::fs::read_link(self.dir.path().join(model)).ok()
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "remote repositories need symlinks (unix)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_links_swap_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path())).unwrap();
        let obj = ObjectInfo {
            key: "r/m/1/model.onnx".into(),
            size: 3,
            etag: Some("\"e1\"".into()),
            modified_ms: 1,
        };
        let blob = cache.blob_path("repo", &obj);
        assert!(!has_blob(&blob, 3));
        let t = cache.temp_file().unwrap();
        std::fs::write(&t, b"abc").unwrap();
        persist(t, &blob).unwrap();
        assert!(has_blob(&blob, 3));
        assert!(!has_blob(&blob, 4), "a blob of another size is not a hit");
        let files = BTreeMap::from([("1/model.onnx".to_owned(), blob)]);
        let snap = cache.snapshot("repo", "m", 7, &files).unwrap();
        assert_eq!(std::fs::read(snap.join("1/model.onnx")).unwrap(), b"abc");
        assert_eq!(cache.snapshot("repo", "m", 7, &files).unwrap(), snap);

        let view = View::new(&cache).unwrap();
        view.link("m", &snap).unwrap();
        assert_eq!(
            std::fs::read(view.path().join("m/1/model.onnx")).unwrap(),
            b"abc"
        );
        let other = cache.snapshot("repo", "m", 8, &BTreeMap::new()).unwrap();
        view.link("m", &other).unwrap();
        assert_eq!(view.target("m").unwrap(), other);
        assert!(!view.path().join("m/1").exists());
        view.unlink("m");
        assert!(view.target("m").is_none());
        // Nothing half-made is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn blob_identity_follows_etag() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path())).unwrap();
        let mut obj = ObjectInfo {
            key: "k".into(),
            size: 3,
            etag: Some("a".into()),
            modified_ms: 1,
        };
        let first = cache.blob_path("r", &obj);
        obj.modified_ms = 2;
        assert_eq!(cache.blob_path("r", &obj), first, "same ETag, same blob");
        obj.etag = Some("b".into());
        assert_ne!(cache.blob_path("r", &obj), first);
        assert_ne!(cache.blob_path("other", &obj), cache.blob_path("r", &obj));
    }
}
