//! A process's figures from Linux's `/proc`: the one procfs reader of the workspace.
//! The memory budget reads this process's resident memory around a load, `/metrics`
//! exports the standard `process_*` metrics, and the system benchmarks read a server
//! child's resident memory.
//!
//! Key decision: the `procfs` crate does the parsing (`stat`'s fields after a command
//! name that may hold spaces and parentheses) and asks the kernel for the page size and
//! the clock tick (64 KiB pages exist on arm64; hand-written readers assumed 4 KiB and
//! 100 Hz). On other systems every figure is unknown (`None`), and callers fall back.

/// What `/proc/<pid>/stat` (and `/proc/stat`, `/proc/<pid>/fd`) say of a process.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Start time since the Unix epoch, seconds.
    pub start_time_seconds: f64,
    pub threads: u64,
    /// Open file descriptors (`None` when `/proc/<pid>/fd` cannot be read).
    pub open_fds: Option<u64>,
}

/// The figures of process `pid` (this process when `None`).
#[cfg(target_os = "linux")]
pub fn figures(pid: Option<u32>) -> Option<Figures> {
    let process = open(pid)?;
    let stat = process.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    Some(Figures {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        start_time_seconds: boot + stat.starttime as f64 / ticks,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: process.fd_count().ok().map(|n| n as u64),
    })
}

/// The figures of process `pid` (this process when `None`): unknown off Linux.
#[cfg(not(target_os = "linux"))]
pub fn figures(_pid: Option<u32>) -> Option<Figures> {
    None
}

/// Resident memory of process `pid` (this process when `None`), in bytes.
#[cfg(target_os = "linux")]
pub fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    // `status` gives kB: no page size to ask for. Asking (`procfs::page_size`) makes
    // rustix read the auxiliary vector and the vDSO's ELF header, which crashes the
    // server under valgrind (`bench/request_cost.py`) at the first model load.
    let kib = open(pid)?.status().ok()?.vmrss?;
    Some(kib * 1024)
}

/// Resident memory of process `pid` (this process when `None`): unknown off Linux.
#[cfg(not(target_os = "linux"))]
pub fn resident_bytes(_pid: Option<u32>) -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn open(pid: Option<u32>) -> Option<procfs::process::Process> {
    match pid {
        None => procfs::process::Process::myself().ok(),
        Some(pid) => procfs::process::Process::new(i32::try_from(pid).ok()?).ok(),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The kernel's own account (`VmRSS` in `/proc/self/status`, kB) agrees with the
    /// pages `stat` counts, to within what a few allocations between the reads move.
    #[test]
    fn resident_memory_matches_the_status_file() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        let rss = resident_bytes(None).unwrap();
        let diff = rss.abs_diff(kib * 1024);
        assert!(diff < 8 << 20, "stat {rss} B vs status {kib} kB");
        assert!(rss > 1 << 20);
    }

    #[test]
    fn figures_of_this_process_and_of_another() {
        let me = figures(None).unwrap();
        assert!(me.threads >= 1);
        assert!(me.open_fds.unwrap() >= 3, "{me:?}");
        assert!(me.virtual_bytes >= me.resident_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (0.0..3600.0).contains(&(now - me.start_time_seconds)),
            "started {} s ago?",
            now - me.start_time_seconds
        );
        // The same process by its id.
        let by_pid = figures(Some(std::process::id())).unwrap();
        assert_eq!(by_pid.start_time_seconds, me.start_time_seconds);
        // A process id that cannot exist (above the kernel's pid_max limit).
        assert_eq!(figures(Some(u32::MAX)), None);
        assert_eq!(resident_bytes(Some(u32::MAX)), None);
    }
}
