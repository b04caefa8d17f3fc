//! A test binary killed while its guest boots or while it runs a command (by a CI job
//! cancelled, a Ctrl-C, an OOM killer): no QEMU of it outlives it, and the next run's sweep
//! removes the directories it could not. Test binaries handle no signal: whatever kills them,
//! their QEMUs go by `PR_SET_PDEATHSIG`, and their directories by their dead owner.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_harness::rundirs;
use lab_tests::{assets, boot, seed, Check};
use nix::sys::signal::Signal;
use rstest::rstest;

/// How long the command of [`a_guest_runs_a_command_to_its_end`] sleeps; the kill test below
/// sets it so there is a command to be killed in.
const ENV_HOLD: &str = "LAB_TEST_HOLD_SECS";

/// The victim of the test below, and a test of its own: a guest boots, runs a command to its
/// end and shuts down. It says on stdout when the guest is up.
#[rstest]
#[tokio::test]
async fn a_guest_runs_a_command_to_its_end() {
    let hold: u32 = std::env::var(ENV_HOLD)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let vm = boot(assets().vm("victim")).await;
    println!("booted");
    let out = vm
        .succeed(format!("echo running; sleep {hold}; echo done"))
        .await
        .check();
    assert_eq!(out, "running\ndone\n");
    vm.shutdown().await.check();
}

/// SIGINT, SIGTERM or SIGKILL to this test binary running the test above, mid-boot or
/// mid-command, at random moments (the seed is printed; `LAB_SEED` replays it).
#[test]
fn a_test_binary_killed_mid_boot_or_mid_command_leaves_nothing_once_swept() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let network = lab_harness::host::network();
    let mut killed = Vec::new();
    for round in 0..4 {
        let signal = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL][rng.usize(..3)];
        let mid_command = round % 2 == 1;
        let mut child = std::os::unix::process::CommandExt::process_group(
            Command::new(std::env::current_exe().expect("this test binary"))
                .args([
                    "--exact",
                    "a_guest_runs_a_command_to_its_end",
                    "--nocapture",
                ])
                .env(ENV_HOLD, "60")
                // Mid-boot kills meet a cold boot (~3 s), where a restore is over in 0.2 s.
                .env("LAB_SNAPSHOT", if mid_command { "on" } else { "off" })
                .env("TMPDIR", tmp.path()),
            0,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary runs");
        let after = if mid_command {
            let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            while !line.contains("booted") {
                line.clear();
                let n = stdout.read_line(&mut line).expect("read");
                assert!(
                    n > 0,
                    "round {round} (seed {seed}): the victim ended before booting"
                );
            }
            Duration::from_millis(rng.u64(0..1500))
        } else {
            Duration::from_millis(rng.u64(50..2500))
        };
        std::thread::sleep(after);
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal");
        let status = child.wait().expect("wait");
        let booted = child.stdout.take().is_some_and(|mut out| {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut said);
            said.contains("booted")
        });
        let what = format!(
            "round {round} (seed {seed}): {signal} {after:?} {}",
            match (mid_command, booted) {
                (true, _) => "into the command",
                (false, false) => "after the start, mid-boot",
                (false, true) => "after the start, once booted",
            }
        );
        assert!(!status.success(), "{what}: the victim was not killed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab_harness::host::qemus_in(tmp.path()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let qemus = lab_harness::host::qemus_in(tmp.path());
        assert!(
            qemus.is_empty(),
            "{what}: QEMU outlived its test: {qemus:?}"
        );
        killed.push(what);
    }
    let left = rundirs::ours_in(tmp.path()).len();
    let swept = rundirs::sweep_stale_in(tmp.path());
    assert_eq!(
        swept.len(),
        left,
        "the sweep removes what the killed ones left"
    );
    let still = rundirs::ours_in(tmp.path());
    assert!(still.is_empty(), "after {killed:#?} and a sweep: {still:?}");
    assert_eq!(
        lab_harness::host::network(),
        network,
        "the host's network changed"
    );
    eprintln!(
        "test binaries killed: {}, directories they left: {left}, left after the sweep: 0\n  {}",
        killed.len(),
        killed.join("\n  ")
    );
}
