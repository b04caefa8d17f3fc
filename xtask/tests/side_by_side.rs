//! Two `cargo xtask lab` runs at once in one checkout both pass: each judges only the guests
//! and directories it started, and the files they share (report.json, assets.json, the runs,
//! the snapshots) are written whole.

use std::process::Command;

#[test]
fn two_lab_runs_at_once_both_pass_and_leave_nothing() {
    let lab = |only: &str| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["lab", "--only", only])
            .env("RUST_BACKTRACE", "0")
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

fn lab_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("lab")
}
