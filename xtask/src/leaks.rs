//! What a run must not leave behind: QEMU processes, guest state directories, host interfaces.
//!
//! A run judges only what it started: QEMUs whose environment carries its `LAB_RUN`, and
//! directories whose `.owner` names it (see `lab_harness::rundirs`). Another run going on beside
//! it, or the leftovers of a killed one, are not its leaks; the latter are swept at start.

use std::collections::BTreeSet;

use lab_harness::qemu::PROCESS_MARKER;
use lab_harness::rundirs;

/// Names this process's run (`LAB_RUN`) for everything it starts, and removes what dead runs
/// left in the temp dir. Every xtask is a run of its own, also one that a test of another run
/// started: that run's other tests, going on beside it, are not its doing. Call first thing,
/// while the process has a single thread.
pub fn start_run() {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // SAFETY (edition 2021 `set_var`): no other thread exists yet to read the environment.
    std::env::set_var(
        rundirs::ENV_RUN,
        format!("xtask{}-{stamp}", std::process::id()),
    );
    let swept = rundirs::sweep_stale();
    if !swept.is_empty() {
        eprintln!(
            "xtask: removed {} director{} that killed runs left in {}",
            swept.len(),
            if swept.len() == 1 { "y" } else { "ies" },
            std::env::temp_dir().display()
        );
    }
}

/// What a run could leave on the host, at one moment: its QEMUs, its state directories, host
/// network interfaces. A run takes one before and after, and names what is new.
#[derive(Debug, Default)]
pub struct HostFootprint {
    qemus: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    host_links: BTreeSet<String>,
}

impl HostFootprint {
    pub fn take() -> Self {
        Self {
            qemus: lab_qemus(),
            state_dirs: state_dirs(),
            host_links: lab_harness::host::links(),
        }
    }

    /// Everything present now that was not in `before`, and host interfaces that vanished.
    pub fn leaked_since(&self, before: &HostFootprint) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.qemus
                .difference(&before.qemus)
                .map(|q| format!("QEMU still running: {q}")),
        );
        out.extend(
            self.state_dirs
                .difference(&before.state_dirs)
                .map(|d| format!("state directory left: {d}")),
        );
        out.extend(
            self.host_links
                .difference(&before.host_links)
                .map(|l| format!("host interface added: {l}")),
        );
        out.extend(
            before
                .host_links
                .difference(&self.host_links)
                .map(|l| format!("host interface removed: {l}")),
        );
        out
    }
}

/// `pid: cmdline` of every QEMU of this run: its `-name` carries our marker and its environment
/// this run's `LAB_RUN`.
fn lab_qemus() -> BTreeSet<String> {
    let ours = format!("{}={}", rundirs::ENV_RUN, rundirs::run_id());
    lab_harness::host::qemu_processes()
        .into_iter()
        .filter(|q| q.cmdline.contains(PROCESS_MARKER) && q.env_has(&ours))
        .map(|q| {
            format!(
                "{}: {}",
                q.pid,
                q.cmdline.chars().take(120).collect::<String>()
            )
        })
        .collect()
}

fn state_dirs() -> BTreeSet<String> {
    let run = rundirs::run_id();
    rundirs::ours()
        .into_iter()
        .filter(|dir| rundirs::owner(dir).is_some_and(|o| o.run == run))
        .map(|dir| dir.display().to_string())
        .collect()
}
