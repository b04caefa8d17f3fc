//! `cargo xtask lab test`: every topology file in `examples/` carries its checks and passes them
//! (so the examples cannot rot), each check a test case in the file's JUnit; a check that does
//! not hold fails the run; a kernel per host boots each host on its own, and restores serve
//! both.

use std::path::{Path, PathBuf};
use std::process::Output;

mod support;
use support::{text, xtask};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn lab_test(files: &[PathBuf]) -> Output {
    xtask()
        .args(["lab", "test"])
        .args(files)
        .output()
        .expect("run xtask")
}

/// The JUnit `lab test` wrote for `file`.
fn junit(file: &Path) -> String {
    let stem = file.file_stem().expect("stem").to_string_lossy();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let path = target.join(format!("lab/junit-{stem}.xml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_example_passes_its_own_checks_each_a_junit_case() {
    let files = examples();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for needed in ["routed.toml", "two-segments.toml", "two-kernels.toml"] {
        assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
    }
    let out = lab_test(&files);
    assert!(out.status.success(), "{}", text(&out));
    for file in &files {
        let checks = std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .filter(|l| l.trim() == "[[check]]")
            .count();
        assert!(checks > 0, "{} carries no check", file.display());
        let xml = junit(file);
        assert_eq!(
            xml.matches("<testcase ").count(),
            checks,
            "{}:\n{xml}",
            file.display()
        );
        assert!(
            !xml.contains("<failure") && !xml.contains("<error"),
            "{xml}"
        );
    }
}

/// host `new` on Debian's 6.12 and `old` on its 6.1 (their `uname -r` are two of the file's
/// checks); booted a second time, both come from their snapshots.
#[test]
fn a_kernel_per_host_boots_each_on_its_own_and_restores_serve_both() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-kernels.toml");
    let first = lab_test(std::slice::from_ref(&file));
    assert!(first.status.success(), "{}", text(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("saw exit 0, output \"6.12."), "{stdout}");
    assert!(stdout.contains("saw exit 0, output \"6.1.0-"), "{stdout}");
    let again = lab_test(&[file]);
    assert!(again.status.success(), "{}", text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("guests: 2 guests restored from snapshots, 0 booted cold"),
        "{stdout}"
    );
}

/// A check that does not hold fails the run, names itself, and is a failure in the JUnit;
/// a file without checks, or with a mistake, is refused before anything boots.
#[test]
fn a_failing_check_fails_the_run_and_its_junit_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lab-test-must-fail.toml");
    std::fs::write(
        &file,
        "[[host]]\nname = \"h\"\n\n[[check]]\nname = \"true is false\"\nhost = \"h\"\nrun = \"true\"\nexit = 1\n\n[[check]]\nhost = \"h\"\nrun = \"echo 7\"\nwithin = [1, 9]\n",
    )
    .expect("write");
    let out = lab_test(std::slice::from_ref(&file));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 check(s) failed"),
        "{}",
        text(&out)
    );
    let xml = junit(&file);
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");

    let none = dir.path().join("none.toml");
    std::fs::write(&none, "[[host]]\nname = \"h\"\n").expect("write");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[host]]\nname = \"h\"\n[[check]]\nhost = \"g\"\nrun = \"true\"\n",
    )
    .expect("write");
    for (file, says) in [
        (none, "no [[check]]"),
        (bad, "bad.toml:4: a check on host \"g\""),
    ] {
        let started = std::time::Instant::now();
        let out = lab_test(&[file]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("lab test: "),
            "refused before anything boots: {}",
            text(&out)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }
}
