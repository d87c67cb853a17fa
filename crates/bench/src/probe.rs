//! Measurements of the machine itself: the disk's fdatasync rate, the Mangrove log writer's
//! write count (one write per group commit), a server's resident memory, and a description of
//! the hardware.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// fdatasyncs per second of 4 KiB appends to a file in `dir`: the ceiling for one durable
/// commit at a time, and the unit group commit is measured in.
pub fn fdatasync_rate(dir: &Path, duration: Duration) -> Result<f64, String> {
    let path = dir.join(format!("fdatasync-probe-{}", std::process::id()));
    let what = |e: std::io::Error| {
        format!(
            "fdatasync probe on {}: {e}; pass --probe-dir on the disk the databases use",
            path.display()
        )
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(what)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < duration {
        file.write_all(&block).map_err(what)?;
        file.sync_data().map_err(what)?;
        syncs += 1;
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// Write syscalls made so far by the thread named `mangrove-log-writer` of process `pid`
/// (`/proc/<pid>/task/<tid>/io`, `syscw`). The log writer makes one write and one fdatasync
/// per group commit, so the difference over a cell counts its fdatasyncs (segment rollovers
/// add a few).
pub fn log_writer_writes(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // Thread names are cut to 15 bytes: "mangrove-log-wr".
        if comm.trim_end().starts_with("mangrove-log-wr") {
            let io = std::fs::read_to_string(task.path().join("io")).ok()?;
            return io
                .lines()
                .find_map(|l| l.strip_prefix("syscw:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

/// CPU model and count, memory, kernel, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {:.0} GiB, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// Today's date (UTC) as YYYY-MM-DD, without a date crate.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

/// CPU time used so far by process `pid` (all its threads) and its children, living or
/// reaped: PostgreSQL's backends are children of the postmaster, whose `cutime`/`cstime`
/// collect them when they exit. Assumes the usual 100 clock ticks per second.
pub fn tree_cpu(pid: u32) -> Option<Duration> {
    let fields = |p: &str| -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
    };
    // Indexes after the name: 1 ppid, 11 utime, 12 stime, 13 cutime, 14 cstime.
    let own = fields(&pid.to_string())?;
    let mut ticks = own.get(11)? + own.get(12)? + own.get(13)? + own.get(14)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = fields(name).filter(|f| f.get(1) == Some(&(pid as u64))) {
            ticks += f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
        }
    }
    Some(Duration::from_millis(ticks * 10))
}

/// Resident and peak resident memory of process `pid` in KiB (`VmRSS`, `VmHWM` from
/// `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
