//! `lab run`'s results: a KTAP job's subtests are each a JUnit case and a `summary.json` entry;
//! `--repeat` tells a flaky subtest (with the seeds it fails with) from a failing one; the same
//! kernel problem in two runs is one fingerprint.

use std::path::{Path, PathBuf};
use std::process::Output;

use lab_harness::ktap::{self, Outcome};

mod support;
use support::{text, xtask};

/// Runs `lab run ARGS`, returns its output and the run's directory.
fn lab_run(args: &[&str]) -> (Output, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir_file = dir.path().join("run-dir");
    let out = xtask()
        .args(["lab", "run", "--run-dir-to"])
        .arg(&run_dir_file)
        .args(args)
        .output()
        .expect("run xtask");
    let run_dir = std::fs::read_to_string(&run_dir_file)
        .unwrap_or_else(|e| panic!("no run directory ({e}):\n{}", text(&out)));
    (out, PathBuf::from(run_dir.trim()))
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    path
}

fn summary_of(run_dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run_dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("JSON")
}

/// Each `<testcase>` of the run's junit.xml: its name and `passed`, `failure`, `skipped` or
/// `flaky` (passed, with `flakyFailure` runs).
fn junit_cases(run_dir: &Path) -> Vec<(String, String)> {
    let xml = std::fs::read_to_string(run_dir.join("junit.xml")).expect("junit.xml");
    let doc = roxmltree::Document::parse(&xml).expect("XML");
    doc.descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            let child = |tag: &str| case.children().any(|c| c.has_tag_name(tag));
            let status = if child("failure") || child("error") {
                "failure"
            } else if child("skipped") {
                "skipped"
            } else if child("flakyFailure") {
                "flaky"
            } else {
                "passed"
            };
            (
                case.attribute("name").unwrap_or_default().to_string(),
                status.to_string(),
            )
        })
        .collect()
}

const KTAP: &str = "KTAP version 1
1..5
  KTAP version 1
  1..2
  ok 1 first_child
  # the second child's reason
  not ok 2 second_child
not ok 1 parent
ok 2 plain
ok 3 not_here # SKIP no such device
not ok 4 broken
ok 5 cannot # XFAIL not supported by the device
";

/// A KTAP job's subtests, nested ones too, are one JUnit case each, as the KTAP text says; a
/// skip and an expected failure (what the device cannot do) are skips, not failures.
#[test]
fn a_ktap_jobs_subtests_are_one_junit_case_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = script(
        dir.path(),
        "ktap.sh",
        &format!("cat <<'EOF'\n{KTAP}EOF\nexit 1\n"),
    );
    let (out, run_dir) = lab_run(&[job.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let expected: Vec<(String, String)> = ktap::parse(KTAP)
        .expect("KTAP")
        .into_iter()
        .map(|s| {
            let status = match s.outcome {
                Outcome::Pass => "passed",
                Outcome::Skip | Outcome::Xfail => "skipped",
                Outcome::Fail | Outcome::Error => "failure",
            };
            (s.name, status.to_string())
        })
        .collect();
    assert_eq!(
        expected,
        [
            ("parent/first_child", "passed"),
            ("parent/second_child", "failure"),
            ("plain", "passed"),
            ("not_here", "skipped"),
            ("broken", "failure"),
            ("cannot", "skipped"),
        ]
        .map(|(n, s)| (n.to_string(), s.to_string()))
    );
    assert_eq!(junit_cases(&run_dir), expected, "{}", text(&out));
    let summary = summary_of(&run_dir);
    let verdicts: Vec<(&str, &str)> = summary["subtests"]
        .as_array()
        .expect("subtests")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["verdict"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("parent/first_child", "passed"),
            ("parent/second_child", "failed"),
            ("plain", "passed"),
            ("not_here", "skipped"),
            ("broken", "failed"),
            ("cannot", "skipped"),
        ]
    );
    assert_eq!(summary["passed"], false);
    // The lab's events, in its directory of the run: the guest, the job, its end.
    let events: String = std::fs::read_dir(&run_dir)
        .expect("the run's directory")
        .flatten()
        .map(|lab| lab.path().join("events.ndjson"))
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    let kinds: Vec<String> = events
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).expect("an NDJSON line");
            assert_eq!(e["version"], 1, "{l}");
            e["event"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    for kind in ["guest_up", "job_started", "job_ended", "guest_down"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {events}");
    }
    assert!(
        events.contains("\"exit_code\":1,\"passed\":false"),
        "the job's end says how: {events}"
    );
    let xml = std::fs::read_to_string(run_dir.join("junit.xml")).expect("junit.xml");
    assert!(
        xml.contains("the second child&apos;s reason") || xml.contains("the second child's reason"),
        "a failure carries the lines before it: {xml}"
    );
}

/// A job that fails when its seed ends in 0, 1 or 2 (about one run in three): `--repeat`
/// reports it flaky with exactly those seeds, and the seed deciding (its reruns with the same
/// seed fail again); the run passes, as NIPA counts a flake. A job that always fails is
/// `failed`, and fails the run.
#[test]
fn repeat_tells_a_seeded_flake_from_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = script(
        dir.path(),
        "flaky.sh",
        "echo 'KTAP version 1'\necho 1..2\necho 'ok 1 steady'\n\
         case \"$LAB_SEED\" in *[012]) echo 'not ok 2 seeded'; exit 1 ;; esac\n\
         echo 'ok 2 seeded'\n",
    );
    // Seed 1 fails first; the seeds drawn after it include ones that pass (the draw is
    // fastrand's from seed 1: fixed, so the test is too).
    let (out, run_dir) = lab_run(&["--repeat", "4", "--seed", "1", job.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "a flake does not fail the run: {}",
        text(&out)
    );
    let summary = summary_of(&run_dir);
    let attempts = summary["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.len(),
        4 + 2 + 2,
        "four runs, two reruns with seed 1, two with new seeds"
    );
    let ends_low = |seed: u64| seed % 10 <= 2;
    let mut failing: Vec<u64> = Vec::new();
    let mut passes = 0;
    for a in attempts {
        let seed = a["seed"].as_u64().expect("seed");
        let seeded = a["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["name"] == "seeded")
            .expect("the seeded subtest reported");
        assert_eq!(
            seeded["outcome"] == "fail",
            ends_low(seed),
            "seed {seed}: {seeded}"
        );
        if ends_low(seed) {
            if !failing.contains(&seed) {
                failing.push(seed);
            }
        } else {
            passes += 1;
        }
    }
    assert!(
        passes > 0 && !failing.is_empty(),
        "both kinds of run: {attempts:?}"
    );
    let seeded = summary["subtests"]
        .as_array()
        .expect("subtests")
        .iter()
        .find(|s| s["name"] == "seeded")
        .expect("judged");
    assert_eq!(seeded["verdict"], "flaky", "{seeded}");
    assert_eq!(seeded["seed_decides"], true, "{seeded}");
    let reported: Vec<u64> = seeded["failing_seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(reported, failing);
    assert!(
        junit_cases(&run_dir).contains(&("seeded".into(), "flaky".into())),
        "JUnit marks it flaky"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("flaky   seeded"),
        "{}",
        text(&out)
    );

    let always = script(dir.path(), "always.sh", "echo broken; exit 3\n");
    let (out, run_dir) = lab_run(&[
        "--repeat",
        "2",
        "--reruns",
        "1",
        always.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let summary = summary_of(&run_dir);
    assert_eq!(summary["attempts"].as_array().map(Vec::len), Some(4));
    assert_eq!(summary["subtests"][0]["verdict"], "failed", "{summary}");
    assert_eq!(summary["subtests"][0]["failures"], 4, "{summary}");
}

/// The same WARN in two runs (a module of ours that warns when loaded at boot) is one kernel
/// problem, counted twice, and fails the run.
#[test]
fn the_same_splat_in_two_runs_is_one_fingerprint() {
    let warn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/warn-module");
    let (out, run_dir) = lab_run(&[
        "--repeat",
        "2",
        "--reruns",
        "0",
        "--module-source",
        warn.to_str().expect("utf-8"),
        "--",
        "true",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let summary = summary_of(&run_dir);
    let problems = summary["kernel_problems"]
        .as_array()
        .expect("kernel_problems");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["count"], 2, "{problems:?}");
    let fingerprint = problems[0]["fingerprint"].as_str().unwrap_or_default();
    assert!(
        fingerprint.starts_with("Warning: WARNING: at ") && fingerprint.contains("lab_warn"),
        "{fingerprint}"
    );
    assert!(
        !fingerprint.contains("CPU:") && !fingerprint.contains("PID:"),
        "{fingerprint}"
    );
}
