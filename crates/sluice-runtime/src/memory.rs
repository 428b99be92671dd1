//! The process's resident memory, read from `/proc/self/status` (Linux). Elsewhere
//! it is unknown and loads fall back to the model file size.

/// Resident set size of this process in bytes, when the platform tells it.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_resident_memory() {
        let rss = super::resident_bytes().expect("VmRSS on Linux");
        assert!(rss > 0);
    }
}
