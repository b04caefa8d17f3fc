//! Ctrl-C or SIGTERM in the middle of `lab run`: it stops within seconds, says so, exits 128+N,
//! and leaves no QEMU and no directory behind. SIGKILL leaves directories (nothing can run on
//! SIGKILL) but no QEMU, and the next run sweeps them.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod support;
use support::{leftovers, wait_for_leftovers_to_clear, xtask};

#[rstest::rstest]
#[case::sigint(nix::sys::signal::Signal::SIGINT)]
#[case::sigterm(nix::sys::signal::Signal::SIGTERM)]
#[case::sigkill(nix::sys::signal::Signal::SIGKILL)]
fn a_signal_mid_run_stops_it_and_leaves_nothing(#[case] signal: nix::sys::signal::Signal) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = tmp.path().join("long.sh");
    std::fs::write(&script, "echo started; sleep 60; echo never\n").expect("script");
    let mut run = xtask()
        .args(["lab", "run", "--hosts", "2"])
        .arg(&script)
        .env("TMPDIR", tmp.path())
        .env_remove("LAB_RUN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xtask runs");
    // Wait until the script runs in the guest: the guests are up, mid-command.
    let mut stdout = std::io::BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
    assert_eq!(line.trim(), "started", "the script runs");
    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.id() as i32), signal).expect("signal");
    let out = run.wait_with_output().expect("wait");
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (dirs, qemus) =
        wait_for_leftovers_to_clear(tmp.path(), signal != nix::sys::signal::Signal::SIGKILL);
    assert!(
        qemus.is_empty(),
        "QEMU still running after {signal}: {qemus:?}"
    );
    if signal == nix::sys::signal::Signal::SIGKILL {
        // Nothing runs on SIGKILL: the next run sweeps what it left, by its dead owner.
        let sweep = xtask()
            .args(["lab", "--only", "no-such-scenario"])
            .env("TMPDIR", tmp.path())
            .output()
            .expect("xtask runs");
        let said = String::from_utf8_lossy(&sweep.stderr);
        assert!(
            !dirs.is_empty(),
            "SIGKILL leaves the directories (nothing of the run runs after it)"
        );
        assert!(
            said.contains(&format!(
                "removed {} directories that killed runs left in",
                dirs.len()
            )),
            "the next run says it swept them: {said}"
        );
        let (dirs, _) = leftovers(tmp.path());
        assert!(dirs.is_empty(), "swept: {dirs:?}");
        return;
    }
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert_eq!(
        out.status.code(),
        Some(128 + signal as i32),
        "exit code for {signal}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("interrupted by"),
        "it says it was interrupted:\n{stderr}"
    );
    assert!(dirs.is_empty(), "directories left after {signal}: {dirs:?}");
}

/// Kills at random points, as users and CI do: SIGINT, SIGTERM or SIGKILL to the whole process
/// group (a terminal's Ctrl-C reaches every process of it) of `lab run` or of a lab scenario, at
/// any moment from provisioning through boot, command and shutdown. The seed is printed;
/// `LAB_SEED` replays a failure. After each kill no QEMU of the run lives on, and once the next
/// run has swept, no directory of it is left.
#[test]
fn kills_at_random_points_leave_nothing_once_swept() {
    use nix::sys::signal::Signal;
    let seed = std::env::var("LAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (LAB_SEED={seed} replays this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = tmp.path().join("job.sh");
    std::fs::write(&script, "ip -br link; sleep 2; echo done\n").expect("script");
    let mut killed = Vec::new();
    for round in 0..4 {
        let signal = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL][rng.usize(..3)];
        let lab_run = rng.bool();
        let after = Duration::from_millis(rng.u64(200..6000));
        let mut cmd = xtask();
        if lab_run {
            cmd.args(["lab", "run", "--hosts", "2"]).arg(&script);
        } else {
            cmd.args(["lab", "--only", "mode/bridge"]);
        }
        let mut child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
            .env("TMPDIR", tmp.path())
            .env_remove("LAB_RUN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xtask runs");
        std::thread::sleep(after);
        let what = format!(
            "round {round} (seed {seed}): {signal} after {after:?} to {}",
            if lab_run {
                "lab run"
            } else {
                "lab --only mode/bridge"
            }
        );
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        let _ = child.wait();
        let (_, qemus) = wait_for_leftovers_to_clear(tmp.path(), false);
        assert!(qemus.is_empty(), "{what}: QEMU still running: {qemus:?}");
        killed.push(what);
    }
    // The next run sweeps what the killed ones could not remove.
    let sweep = xtask()
        .args(["lab", "--only", "no-such-scenario"])
        .env("TMPDIR", tmp.path())
        .output()
        .expect("xtask runs");
    let (dirs, qemus) = leftovers(tmp.path());
    assert!(
        dirs.is_empty() && qemus.is_empty(),
        "after {killed:#?} and a sweep ({}): {dirs:?} {qemus:?}",
        String::from_utf8_lossy(&sweep.stderr)
    );
    eprintln!(
        "runs killed: {}, leftovers after the sweep: 0\n  {}",
        killed.len(),
        killed.join("\n  ")
    );
}

/// `lab run ... | sleep 600`, then SIGTERM (a cancelled CI job): the run is stuck writing its
/// stdout to a pipe nobody reads, and still stops within seconds, with 143, leaving nothing.
#[test]
fn a_signal_stops_a_run_whose_stdout_nobody_reads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut run = xtask()
        .args(["lab", "run", "--", "sh", "-c"])
        .arg("echo started >&2; head -c 100000000 /dev/zero; sleep 600")
        .env("TMPDIR", tmp.path())
        .env_remove("LAB_RUN")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("xtask runs");
    // Its stderr, read, says when the guest is writing; a pipe's 64 KiB fill at once after.
    let mut stderr = std::io::BufReader::new(run.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("started") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("read");
        assert!(n > 0, "the run ended before its job started");
    }
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = run.wait().expect("wait");
    let took = sent.elapsed();
    drop(reader);
    let (dirs, qemus) = wait_for_leftovers_to_clear(tmp.path(), true);
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert_eq!(status.code(), Some(143), "exit code for SIGTERM");
    assert!(
        dirs.is_empty() && qemus.is_empty(),
        "left: {dirs:?} {qemus:?}"
    );
}
