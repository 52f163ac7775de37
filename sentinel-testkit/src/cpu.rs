//! CPU time, for benchmarks that share a machine with the server they measure.
//!
//! On a small machine the benchmark's client and the server compete for the same cores, so the
//! throughput of each side follows the CPU it spends per operation, client and server together.
//! These readings let a benchmark report both. They read Linux's `/proc` (the scheduler's
//! nanosecond counters in `schedstat`) and return `None` where it is not there.
//!
//! ```
//! let before = sentinel_testkit::cpu::this_process_micros();
//! let _work: u64 = (0..100_000u64).sum();
//! if let (Some(before), Some(after)) = (before, sentinel_testkit::cpu::this_process_micros()) {
//!     assert!(after >= before);
//! }
//! ```

use std::fs;
use std::path::Path;

/// The CPU time this process has used so far, summed over all its threads, in microseconds.
/// `None` where `/proc/self/task` cannot be read (not Linux).
pub fn this_process_micros() -> Option<f64> {
    process_nanos(Path::new("/proc/self")).map(|nanos| nanos / 1e3)
}

/// The CPU time used so far by every process of this machine whose name (`/proc/<pid>/comm`) is
/// `name`, all their threads, in microseconds: for a server of several processes, such as
/// PostgreSQL's backends and its WAL writer (`"postgres"`). Processes that already exited are not
/// counted. `None` where `/proc` cannot be read.
pub fn processes_named_micros(name: &str) -> Option<f64> {
    let entries = fs::read_dir("/proc").ok()?;
    Some(
        entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let comm = fs::read_to_string(path.join("comm")).ok()?;
                (comm.trim_end() == name)
                    .then(|| process_nanos(&path))
                    .flatten()
            })
            .sum::<f64>()
            / 1e3,
    )
}

/// The nanoseconds every thread of the process at `/proc/<pid>` has spent on a CPU. (The
/// process's own `schedstat` counts its first thread only.)
fn process_nanos(dir: &Path) -> Option<f64> {
    let tasks = fs::read_dir(dir.join("task")).ok()?;
    Some(
        tasks
            .filter_map(|task| on_cpu_nanos(&task.ok()?.path()))
            .sum(),
    )
}

/// The first field of `<dir>/schedstat`: nanoseconds spent on a CPU.
fn on_cpu_nanos(dir: &Path) -> Option<f64> {
    fs::read_to_string(dir.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU time in clock ticks (utime + stime of `/proc/thread-self/stat`): a
    /// counter of the kernel's other than the one under test.
    fn thread_ticks() -> Option<u64> {
        let stat = fs::read_to_string("/proc/thread-self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// Keeps a CPU busy until `done`, failing after 20 s (a reading that never grows).
    fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while !done() {
            for _ in 0..10_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            assert!(
                start.elapsed().as_secs() < 20,
                "never scheduled for {what} in 20 s"
            );
        }
        std::hint::black_box(x);
    }

    /// The most CPU time anything on this machine can have used: every core since boot, in µs.
    fn machine_micros_since_boot() -> f64 {
        let uptime: f64 = fs::read_to_string("/proc/uptime")
            .expect("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("seconds since boot");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        uptime * 1e6 * cores as f64
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_counts_its_own_work() {
        let ticks = thread_ticks().expect("/proc/thread-self/stat is readable on Linux");
        // Spin until the kernel's tick counter says this thread ran at least 5 ticks (50 ms at
        // the usual 100 Hz; at least 40 ms whatever the phase of the tick): CPU time, however
        // busy the machine is.
        spin_until("5 ticks", || thread_ticks().expect("readable") >= ticks + 5);
        // The sum covers the live threads, this one among them. (Not a difference of two
        // readings: a thread of the test harness that exits in between takes its time away.)
        let total = this_process_micros().expect("/proc/self/task is readable on Linux");
        assert!(
            total >= 30_000.0,
            "5 ticks of spinning, and the process counts {total} µs"
        );
        // Microseconds, not nanoseconds or worse: no more than the machine has had.
        assert!(
            total <= machine_micros_since_boot(),
            "{total} µs is more than every core since boot"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn processes_are_found_by_name() {
        let own = fs::read_to_string("/proc/self/comm").expect("/proc/self/comm on Linux");
        let ticks = thread_ticks().expect("/proc/thread-self/stat is readable on Linux");
        // At least 20 ms on this thread, so that a reading off by a factor shows.
        spin_until("3 ticks", || thread_ticks().expect("readable") >= ticks + 3);
        let ours = processes_named_micros(own.trim_end()).expect("/proc is readable");
        // This process is one of those so named, and this thread one of its threads.
        assert!(
            ours >= 20_000.0,
            "3 ticks of spinning, and the processes named {} count {ours} µs",
            own.trim_end()
        );
        assert!(
            ours <= machine_micros_since_boot(),
            "{ours} µs is more than every core since boot"
        );
        assert_eq!(
            processes_named_micros("no process has this name"),
            Some(0.0)
        );
    }
}
