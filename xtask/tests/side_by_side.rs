//! Two `cargo xtask lab` runs at once in one checkout both pass, and so do a `cargo xtask test`
//! and a `cargo xtask lab`: each judges only the guests and directories it started, and the
//! files they share (report.json, assets.json, the runs, the snapshots) are written whole.

mod support;
use support::{lab_dir, xtask};

#[test]
fn two_lab_runs_at_once_both_pass_and_leave_nothing() {
    let lab = |only: &str| {
        xtask()
            .args(["lab", "--only", only])
            .env_remove("LAB_RUN")
            .spawn()
            .expect("xtask runs")
    };
    let (a, b) = (lab("seed/containers"), lab("claim/promisc"));
    for (name, child) in [("seed/containers", a), ("claim/promisc", b)] {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{name} beside another lab run: {:?}",
            out.status
        );
    }
    let report = std::fs::read(lab_dir().join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_slice(&report).expect("report.json is whole");
    assert!(
        report["scenarios"].as_array().is_some_and(|s| s.len() == 1),
        "one run's report: {report}"
    );
    // Each run keeps its own report beside its captures, whichever wrote report.json last.
    let kept: Vec<String> = std::fs::read_dir(lab_dir().join("runs"))
        .expect("runs")
        .filter_map(|run| std::fs::read(run.ok()?.path().join("report.json")).ok())
        .filter_map(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .filter_map(|r| Some(r["scenarios"].get(0)?["name"].as_str()?.to_string()))
        .collect();
    for name in ["seed/containers", "claim/promisc"] {
        assert!(
            kept.iter().any(|k| k == name),
            "a kept run's report.json of {name}, among {kept:?}"
        );
    }
    // What built the guests, to reproduce a result: the image and each package's exact version.
    let packages: Vec<&str> = report["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    let busybox = packages
        .iter()
        .find(|p| p.starts_with("busybox-static="))
        .unwrap_or_else(|| panic!("busybox in {packages:?}"));
    let (version, sha256) = busybox.split_once(' ').expect("name=version sha256");
    assert!(
        version.len() > "busybox-static=".len() && sha256.len() == 64,
        "{busybox}"
    );
    assert!(
        report["image"]
            .as_str()
            .is_some_and(|i| i.contains("sha256:")),
        "{}",
        report["image"]
    );
}

/// A test run (one guest test, with its leak check and JUnit file) while a lab runs beside it.
#[test]
fn a_test_run_beside_a_lab_run_both_pass_and_leave_nothing() {
    let _lock = support::test_run_lock();
    let lab = xtask()
        .args(["lab", "--only", "claim/promisc"])
        .env_remove("LAB_RUN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xtask runs");
    let test = xtask()
        .args([
            "test",
            "--",
            "-E",
            "test(=a_guest_runs_a_command_to_its_end)",
        ])
        .env_remove("LAB_RUN")
        .output()
        .expect("xtask runs");
    let lab = lab.wait_with_output().expect("wait");
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let (test_said, lab_said) = (said(&test), said(&lab));
    assert!(
        test.status.success(),
        "the test run beside a lab:\n{test_said}"
    );
    assert!(
        lab.status.success(),
        "the lab beside a test run:\n{lab_said}"
    );
    assert!(
        test_said.contains("xtask: 1 passed, 0 failed"),
        "one test ran:\n{test_said}"
    );
    for (what, text) in [("the test run", &test_said), ("the lab", &lab_said)] {
        assert!(
            text.contains(
                "no QEMU process, no state directory and no host network change left behind"
            ),
            "{what} judged itself clean:\n{text}"
        );
    }
}
