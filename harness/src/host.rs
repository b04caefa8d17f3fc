//! What of this host a run could leave behind or change, read in one place: QEMU processes
//! (from /proc) and the network (interfaces and routes). The leak check of `cargo xtask` and the
//! kill tests all look through this; none of it needs root. The process table with each
//! process's CPU ([`processes`]) is read here too, for `cargo xtask test`'s CPU by test.

use std::collections::BTreeSet;

/// A QEMU process found in /proc.
#[derive(Debug, Clone)]
pub struct FoundQemu {
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl FoundQemu {
    /// Whether its environment holds `entry` (`NAME=value`) exactly. False once it is gone.
    pub fn env_has(&self, entry: &str) -> bool {
        std::fs::read(format!("/proc/{}/environ", self.pid))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .any(|var| var == entry.as_bytes())
    }
}

/// Every `qemu-system-*` process this user can see, ours or not.
pub fn qemu_processes() -> Vec<FoundQemu> {
    processes()
        .into_iter()
        .filter_map(|p| {
            let cmdline = p.argv.join(" ");
            cmdline.contains("qemu-system").then_some(FoundQemu {
                pid: p.pid,
                cmdline,
            })
        })
        .collect()
}

/// The command lines of the QEMUs whose command line names `dir` (their state directory is in
/// it): what a run that keeps its guests under `dir` left running.
pub fn qemus_in(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    qemu_processes()
        .into_iter()
        .filter(|q| q.cmdline.contains(&needle))
        .map(|q| q.cmdline)
        .collect()
}

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// When it started, in clock ticks since boot: with the pid, what tells a process from a
    /// later one that reused its pid.
    pub start: u64,
    /// The CPU it has used so far, user and system, in clock ticks (`ticks_per_second`).
    pub cpu_ticks: u64,
    pub argv: Vec<String>,
}

/// Every process this user can see, read from /proc; one that exits while being read is left
/// out.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (ppid, start, cpu_ticks) = parse_stat(&stat)?;
            let argv = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv = argv
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Process {
                pid,
                ppid,
                start,
                cpu_ticks,
                argv,
            })
        })
        .collect()
}

/// When process `pid` started, in clock ticks since boot (`None` when there is no such
/// process): with the pid, what tells a process from a later one that reused its number.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start, _)| start)
}

/// The CPU time process `pid` has used so far, user and system, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, _, ticks) = parse_stat(&stat)?;
    Some(ticks as f64 / ticks_per_second() as f64)
}

/// A memory figure of process `pid` in KiB: `field` (`VmRSS:`, `RssAnon:`, `VmHWM:`, `Pss:`)
/// of its `/proc/PID/file` (`status`, `smaps_rollup`); 0 once the process is gone.
pub fn memory_kib(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The clock ticks in a second, the unit of [`Process::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// `(ppid, starttime, utime + stime)` from a `/proc/PID/stat` line. The command name, in
/// parentheses, may hold spaces and parentheses itself: the fields start after the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Numbered as in proc(5): field 3 (state) is fields[0].
    let field = |n: usize| fields.get(n - 3);
    let ppid = field(4)?.parse().ok()?;
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    let start = field(22)?.parse().ok()?;
    Some((ppid, start, utime + stime))
}

/// The host's interfaces as `ip link` lists them: `name mac operstate`.
pub fn links() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            format!(
                "{} {} {}",
                e.file_name().to_string_lossy(),
                read("address").trim(),
                read("operstate").trim()
            )
        })
        .collect()
}

/// The host's network: [`links`] and the IPv4 routing table. Equal before and after a run
/// when the run changed nothing on the host.
pub fn network() -> String {
    let links: Vec<String> = links().into_iter().collect();
    links.join("\n") + "\n" + &std::fs::read_to_string("/proc/net/route").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_has_a_loopback_and_this_process_is_no_qemu() {
        assert!(
            links()
                .iter()
                .any(|l| l.starts_with("lo 00:00:00:00:00:00")),
            "{:?}",
            links()
        );
        assert!(network().contains("Iface"), "the route table's header");
        assert!(qemu_processes().iter().all(|q| q.pid != std::process::id()));
    }

    #[test]
    fn this_process_is_in_the_table_with_its_parent_arguments_and_cpu() {
        // 50 ms of CPU of its own first (five of /proc's 10 ms ticks), however busy the host.
        let cpu_ms = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec to a pointer that outlives the call.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0, "the process's CPU clock");
            ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
        };
        let start = cpu_ms();
        while cpu_ms() - start < 50 {}
        let me = processes()
            .into_iter()
            .find(|p| p.pid == std::process::id())
            .expect("this process in /proc");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(me.argv, std::env::args().collect::<Vec<_>>());
        assert!(me.cpu_ticks > 0 && me.start > 0, "{me:?}");
        assert!(ticks_per_second() >= 100);
    }

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 10 0 0 0 30 12 5 6 20 0 1 0 987654 1 2";
        assert_eq!(parse_stat(line), Some((7, 987654, 42)));
        assert_eq!(parse_stat("42 (cut short) S 7"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }
}
