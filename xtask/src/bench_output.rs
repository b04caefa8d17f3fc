//! What a guest's output costs the host: `lab run` of a command writing 1 GiB, its stdout read
//! (to /dev/null) against never read (a pipe nobody drains, as `| sleep 600` is). The host's
//! buffers are bounded, so the second's peak memory stays near the first's instead of growing
//! with what the guest writes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the guest writes, then the line on its console that says it has.
const GUEST: &str = "head -c 1073741824 /dev/zero; echo lab-bench-wrote-it > /dev/ttyS0";
/// The longest the guest may take to write it.
const WITHIN: Duration = Duration::from_secs(600);

pub fn run(assets_path: &Path) -> anyhow::Result<()> {
    let read = peak(assets_path, false)?;
    let stalled = peak(assets_path, true)?;
    println!(
        "lab run writing 1 GiB: peak RSS of the host's process {:.0} MiB with its stdout never read, \
         {:.0} MiB with it read ({:.2}x); the guest wrote it in {:.1?} and {:.1?}",
        stalled.rss_kib as f64 / 1024.0,
        read.rss_kib as f64 / 1024.0,
        stalled.rss_kib as f64 / read.rss_kib.max(1) as f64,
        stalled.took,
        read.took,
    );
    Ok(())
}

struct Peak {
    rss_kib: u64,
    took: Duration,
}

/// Runs the guest's writer through `lab run` and samples the peak memory of that process until
/// the guest says it has written everything; then kills it (a run blocked writing to a pipe
/// nobody reads does not end by itself) and removes what it left.
fn peak(assets_path: &Path, stalled: bool) -> anyhow::Result<Peak> {
    let tmp = tempfile::tempdir()?;
    let (reader, writer) = std::io::pipe()?;
    let stdout = if stalled {
        Stdio::from(writer)
    } else {
        drop(writer);
        Stdio::null()
    };
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "-q",
            "lab",
            "run",
            "--timeout",
            "900",
            "--",
            "sh",
            "-c",
            GUEST,
        ])
        .env(lab_harness::assets::ENV_ASSETS, assets_path)
        .env("TMPDIR", tmp.path())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let mut rss_kib = 0;
    let wrote = loop {
        rss_kib = rss_kib.max(hwm_kib(child.id()));
        if said_on_a_console(tmp.path()) {
            break true;
        }
        if started.elapsed() > WITHIN || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    rss_kib = rss_kib.max(hwm_kib(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    drop(reader);
    // Its QEMUs die with it (PR_SET_PDEATHSIG); its directories are in `tmp`, removed here.
    lab_harness::rundirs::sweep_stale_in(tmp.path());
    anyhow::ensure!(
        wrote,
        "the guest did not write 1 GiB within {WITHIN:?} (or the run ended first)"
    );
    Ok(Peak { rss_kib, took })
}

/// The process's peak resident memory (`VmHWM`), 0 once it is gone.
fn hwm_kib(pid: u32) -> u64 {
    crate::bench::memory_kib(pid, "status", "VmHWM:")
}

/// Whether a guest's console log under `tmp` holds the line the writer ends with.
fn said_on_a_console(tmp: &Path) -> bool {
    std::fs::read_dir(tmp)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("console.log"))
        .any(|log| lab_harness::console::tail(&log, 5).contains("lab-bench-wrote-it"))
}
