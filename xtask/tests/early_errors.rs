//! Mistakes a user makes on the command line fail at once, before anything is provisioned or
//! booted, with the cause and the fix; none of these cases starts a guest.

use std::process::{Command, Output};

fn xtask(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("LAB_ACCEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("xtask runs")
}

/// Asserts a failure whose stderr holds every one of `says`.
fn fails_saying(out: &Output, says: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr:\n{stderr}"
    );
    for s in says {
        assert!(stderr.contains(s), "stderr lacks {s:?}:\n{stderr}");
    }
}

#[test]
fn a_misspelt_accelerator_is_refused_by_every_command() {
    for args in [
        &["lab", "run", "--", "true"][..],
        &["lab", "shell"],
        &["lab"],
        &["bench"],
        &["provision"],
    ] {
        let started = std::time::Instant::now();
        let out = xtask(args, &[("LAB_ACCEL", "kvmm")]);
        fails_saying(
            &out,
            &[
                "LAB_ACCEL=kvmm is not an accelerator the lab knows (kvm, tcg)",
                "set LAB_ACCEL=kvm or LAB_ACCEL=tcg",
            ],
        );
        // Refused before provisioning, which takes tens of seconds.
        assert!(
            started.elapsed().as_secs() < 5,
            "{args:?} took {:?} to refuse",
            started.elapsed()
        );
    }
}

#[test]
fn a_scenario_filter_matching_nothing_is_refused_before_provisioning() {
    let out = xtask(&["lab", "--only", "mode/vepaa"], &[]);
    fails_saying(
        &out,
        &[
            "no scenario name contains 'mode/vepaa'",
            "`cargo xtask lab --list` shows them",
        ],
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("xtask: kernel"),
        "nothing was provisioned"
    );
}

#[test]
fn a_misspelt_subcommand_gets_the_one_meant() {
    let out = xtask(&["lab", "atach", "host2"], &[]);
    fails_saying(
        &out,
        &[
            "unrecognized subcommand 'atach'",
            "a similar subcommand exists: 'attach'",
        ],
    );
}

#[test]
fn attach_without_a_running_shell_says_how_to_start_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = xtask(
        &["lab", "attach", "host2"],
        &[("TMPDIR", tmp.path().to_str().expect("utf-8 path"))],
    );
    fails_saying(&out, &["no lab shell is running: start one in another terminal with `cargo xtask lab shell --hosts 2`"]);
}

#[test]
fn nothing_to_run_says_what_to_give() {
    let out = xtask(&["lab", "run"], &[]);
    fails_saying(
        &out,
        &["nothing to run: give a script file, or a program after `--`"],
    );
}

#[test]
fn quiet_keeps_errors_and_refuses_verbose_beside_it() {
    let out = xtask(&["-q", "lab", "--only", "no-such-scenario"], &[]);
    fails_saying(&out, &["no scenario name contains 'no-such-scenario'"]);
    let out = xtask(&["--quiet", "--verbose", "lab", "--list"], &[]);
    fails_saying(&out, &["--quiet", "cannot be used with", "--verbose"]);
}

#[test]
fn bash_completes_cargo_xtask_from_its_completion_script() {
    let out = xtask(&["completions", "bash"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("xtask.bash");
    std::fs::write(&script, &out.stdout).expect("script");
    // What bash does on `cargo xtask la<TAB>` and `cargo xtask lab --on<TAB>`.
    let complete = |words: &str, cword: usize| {
        let line = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; _cargo_xtask cargo \"${{COMP_WORDS[COMP_CWORD]}}\" x; echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        let out = Command::new("bash")
            .args(["-c", &line])
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("cargo xtask la", 2), "lab");
    assert_eq!(complete("cargo xtask lab --on", 3), "--only");
}

#[test]
fn every_command_says_what_it_does_in_help() {
    let out = xtask(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(commands.len() >= 7, "{help}");
    for line in commands {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        assert!(
            words.next().is_some(),
            "`{name}` has no description in --help:\n{help}"
        );
    }
}
