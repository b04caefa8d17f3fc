//! CPU by test: nextest reports each test's wall time, but on a machine with fewer cores than
//! test threads the suite's length is decided by the CPU its tests use (a test waiting on a
//! ping costs nothing; one running TCG inside TCG keeps a core busy for minutes). While nextest
//! runs, a thread reads the process table twice a second and counts every process's CPU to the
//! test that started it: its nearest ancestor run as `BINARY --exact NAME`, as nextest runs
//! each test, so a test's QEMUs count to it. What no test started (nextest, cargo) is counted
//! apart.
//!
//! A process that lives less than a sample's interval may go unseen, and one that exits loses
//! the CPU it used after its last sample: the figures are a little low, never high.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lab_harness::host::{self, Process};

const INTERVAL: Duration = Duration::from_millis(500);
/// Where CPU goes that no test process started.
const NO_TEST: &str = "(nextest, cargo and what no test started)";

/// Samples the process tree under one process until [`Sampler::finish`].
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<CpuByTest>,
}

impl Sampler {
    /// Starts sampling every descendant of `root` (this process, for the nextest it starts).
    pub fn start(root: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut baseline = true;
            loop {
                seen.sample(&host::processes(), root, baseline);
                baseline = false;
                if flag.load(Ordering::Relaxed) {
                    return seen.by_test(host::ticks_per_second());
                }
                std::thread::sleep(INTERVAL);
            }
        });
        Self { stop, thread }
    }

    /// Takes a last sample and returns what each test used.
    pub fn finish(self) -> CpuByTest {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Every process seen, by `(pid, start)`: the CPU it had when first seen, its last CPU, and
/// the test it counts to.
#[derive(Default)]
struct Seen {
    processes: HashMap<(u32, u64), (u64, u64, String)>,
}

impl Seen {
    /// Records one reading of the process table. In the first (`baseline`), processes count
    /// from the CPU they already had (nextest's own start is not a test's); later, a process
    /// first seen counts from zero, since it started after the last reading.
    fn sample(&mut self, table: &[Process], root: u32, baseline: bool) {
        let by_pid: HashMap<u32, &Process> = table.iter().map(|p| (p.pid, p)).collect();
        for p in table {
            let Some(owner) = owner(p, root, &by_pid) else {
                continue;
            };
            self.processes
                .entry((p.pid, p.start))
                .and_modify(|e| e.1 = p.cpu_ticks)
                .or_insert_with(|| {
                    let first = if baseline { p.cpu_ticks } else { 0 };
                    (first, p.cpu_ticks, owner)
                });
        }
    }

    fn by_test(&self, ticks_per_second: u64) -> CpuByTest {
        let mut seconds: BTreeMap<String, f64> = BTreeMap::new();
        for (first, last, owner) in self.processes.values() {
            *seconds.entry(owner.clone()).or_default() +=
                last.saturating_sub(*first) as f64 / ticks_per_second as f64;
        }
        CpuByTest { seconds }
    }
}

/// The test `p` counts to: its own or its nearest ancestor's `BINARY NAME`, or [`NO_TEST`]
/// when `root` comes first; `None` when `p` is not under `root` at all.
fn owner(p: &Process, root: u32, by_pid: &HashMap<u32, &Process>) -> Option<String> {
    let mut at = p;
    // A bound against a table read while pids were reused, which could hold a cycle.
    for _ in 0..64 {
        if let Some(test) = test_of(&at.argv) {
            return Some(test);
        }
        if at.pid == root {
            return Some(NO_TEST.to_string());
        }
        at = by_pid.get(&at.ppid)?;
    }
    None
}

/// `BINARY NAME` when `argv` runs a test as nextest does (`target/debug/deps/nest-0a1b2c
/// --exact NAME ...`), the binary without cargo's hash.
fn test_of(argv: &[String]) -> Option<String> {
    let name = argv.iter().skip_while(|a| *a != "--exact").nth(1)?;
    let file = Path::new(argv.first()?).file_name()?.to_string_lossy();
    let binary = file.rsplit_once('-').map_or(&*file, |(b, _)| b);
    Some(format!("{binary} {name}"))
}

/// CPU-seconds by test.
#[derive(Debug, Default)]
pub struct CpuByTest {
    seconds: BTreeMap<String, f64>,
}

impl CpuByTest {
    pub fn total(&self) -> f64 {
        self.seconds.values().sum()
    }

    /// Tests by CPU, the most first; [`NO_TEST`] among them.
    pub fn ranked(&self) -> Vec<(&str, f64)> {
        let mut rows: Vec<(&str, f64)> = self.seconds.iter().map(|(t, s)| (&**t, *s)).collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        rows
    }

    /// One `SECONDS<TAB>TEST` line per test, the most first.
    pub fn tsv(&self) -> String {
        self.ranked()
            .iter()
            .map(|(test, s)| format!("{s:.1}\t{test}\n"))
            .collect()
    }

    /// The run's total and its `n` costliest tests, for one line of the run's output.
    pub fn summary(&self, n: usize) -> String {
        let top: Vec<String> = self
            .ranked()
            .iter()
            .filter(|(t, _)| *t != NO_TEST)
            .take(n)
            .map(|(t, s)| format!("{s:.0} s {t}"))
            .collect();
        let no_test = self.seconds.get(NO_TEST).copied().unwrap_or_default();
        format!(
            "{:.0} CPU-seconds, {no_test:.0} of them in no test (nextest, builds); the most: {}",
            self.total(),
            top.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, cpu_ticks: u64, argv: &[&str]) -> Process {
        Process {
            pid,
            ppid,
            start: u64::from(pid) * 10,
            cpu_ticks,
            argv: argv.iter().map(ToString::to_string).collect(),
        }
    }

    /// xtask (1) runs nextest (2), which runs two tests (3, 4); test 3 started a QEMU (5), and
    /// nextest a build (6). Process 9 is not under xtask.
    fn table(t: u64) -> Vec<Process> {
        let test = |pid, name| {
            proc(
                pid,
                2,
                t,
                &[
                    "/w/target/debug/deps/nest-0a1b2c3d",
                    "--exact",
                    name,
                    "--nocapture",
                ],
            )
        };
        vec![
            proc(1, 0, 100 + t, &["xtask", "test"]),
            proc(2, 1, 50 + t, &["cargo-nextest", "nextest", "run"]),
            test(3, "an_inner_vm_boots"),
            test(4, "mode/bridge"),
            proc(5, 3, 10 * t, &["qemu-system-x86_64", "-M", "microvm"]),
            proc(6, 2, 2 * t, &["rustc"]),
            proc(9, 0, 1000 * t, &["someone-elses"]),
        ]
    }

    #[test]
    fn each_process_counts_to_the_test_that_started_it_from_when_sampling_began() {
        let mut seen = Seen::default();
        seen.sample(&table(1), 1, true);
        seen.sample(&table(3), 1, false);
        let cpu = seen.by_test(1);
        let rows = cpu.ranked();
        assert_eq!(
            rows,
            vec![
                // The QEMU's 30 ticks less the 10 it had at the baseline, and the test's own 2.
                ("nest an_inner_vm_boots", 22.0),
                (NO_TEST, 8.0),
                ("nest mode/bridge", 2.0),
            ],
            "someone else's process counts nowhere"
        );
        assert_eq!(cpu.total(), 32.0);
        assert_eq!(
            cpu.summary(1),
            "32 CPU-seconds, 8 of them in no test (nextest, builds); the most: 22 s nest an_inner_vm_boots"
        );
        assert_eq!(
            cpu.tsv().lines().next(),
            Some("22.0\tnest an_inner_vm_boots")
        );
    }

    #[test]
    fn a_process_first_seen_after_the_baseline_counts_from_zero_and_a_reused_pid_apart() {
        let mut seen = Seen::default();
        seen.sample(&table(1)[..4], 1, true);
        // The QEMU started after the first reading, with 7 ticks by the second.
        let mut later = table(1)[..4].to_vec();
        later.push(proc(5, 3, 7, &["qemu-system-x86_64"]));
        seen.sample(&later, 1, false);
        // Its pid reused by another test's process: a process of its own.
        let mut reused = proc(5, 4, 4, &["ip", "link"]);
        reused.start += 1;
        later[4] = reused;
        seen.sample(&later, 1, false);
        assert_eq!(
            seen.by_test(1).ranked(),
            vec![
                ("nest an_inner_vm_boots", 7.0),
                ("nest mode/bridge", 4.0),
                (NO_TEST, 0.0)
            ]
        );
    }

    #[test]
    fn a_test_is_named_by_its_binary_without_the_hash_and_the_name_after_exact() {
        let argv = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            test_of(&argv(&[
                "/t/deps/side_by_side-4559cd14ae34fc09",
                "--exact",
                "a::b",
                "--nocapture"
            ])),
            Some("side_by_side a::b".into())
        );
        assert_eq!(test_of(&argv(&["/t/deps/nest-57d1", "--list"])), None);
        assert_eq!(test_of(&argv(&["x", "--exact"])), None);
    }
}
