//! The one notion of "the same file" in Sluice: [`FileIdentity`].
//!
//! Every cache keyed by a model file uses it: tract's shared plans and calibrations,
//! the runtime's memory memo and carried-over versions, and poll mode's fingerprint
//! of a model folder. A file is the same when its device, inode, size and
//! modification time (to the nanosecond) all are: an edit changes the size or the
//! time, and a file replaced by rename (how Kubernetes updates a mounted volume, how
//! editors save) gets a new inode even when its size and time were copied.

use std::path::Path;

/// A file as the file system names it now: device, inode, size, modification time.
///
/// Symlinks are followed (Triton repositories mounted from Kubernetes volumes are
/// symlinks): the identity is the one of the file they point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdentity {
    /// Device the file is on.
    pub dev: u64,
    /// Inode number on that device.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i128,
}

impl FileIdentity {
    /// The identity of the file at `path` now; `None` when it cannot be read (it
    /// does not exist, or permission is denied). This metadata read is the only file
    /// system access of this crate besides [`LoadSpec::check_file_exists`](crate::LoadSpec::check_file_exists).
    pub fn of(path: &Path) -> Option<FileIdentity> {
        std::fs::metadata(path)
            .ok()
            .map(|m| FileIdentity::from_metadata(&m))
    }

    /// The identity described by metadata already read.
    #[cfg(unix)]
    pub fn from_metadata(m: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// The identity described by metadata already read (no inode here: size and
    /// modification time only).
    #[cfg(not(unix))]
    pub fn from_metadata(m: &std::fs::Metadata) -> FileIdentity {
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        FileIdentity {
            dev: 0,
            ino: 0,
            len: m.len(),
            mtime_ns,
        }
    }

    /// Whether two identities, either of which may be unknown, name the same file: an
    /// unknown one (a file that could not be read) is never the same as anything.
    pub fn same(a: Option<FileIdentity>, b: Option<FileIdentity>) -> bool {
        matches!((a, b), (Some(a), Some(b)) if a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::FileIdentity;

    #[test]
    fn an_edit_a_replacement_and_a_missing_file_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"one").unwrap();
        let first = FileIdentity::of(&path);
        assert!(first.is_some());
        assert!(FileIdentity::same(first, FileIdentity::of(&path)));
        // Same size, replaced by rename: a new inode, so another file.
        let other = dir.path().join("next.onnx");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let replaced = FileIdentity::of(&path);
        assert_eq!(replaced.map(|f| f.len), Some(3));
        assert!(!FileIdentity::same(first, replaced));
        // A file that cannot be read is never the same, not even as itself.
        let missing = FileIdentity::of(&dir.path().join("absent"));
        assert_eq!(missing, None);
        assert!(!FileIdentity::same(missing, missing));
    }
}
