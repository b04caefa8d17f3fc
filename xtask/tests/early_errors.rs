//! Mistakes a user makes on the command line fail at once, before anything is provisioned or
//! booted, with the cause and the fix; none of these cases starts a guest.

use std::process::{Command, Output};

fn xtask(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("LAB_ACCEL")
        .env_remove("LAB_REQUIRE_ACCEL")
        .env_remove("GITHUB_STEP_SUMMARY");
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
fn a_required_accelerator_guests_would_not_get_fails_before_anything_boots() {
    // LAB_ACCEL=tcg puts guests on TCG on any host, so requiring KVM must refuse the run.
    for (args, env) in [
        (
            &["lab", "--require-accel", "kvm"][..],
            &[("LAB_ACCEL", "tcg")][..],
        ),
        (
            &["test"],
            &[("LAB_ACCEL", "tcg"), ("LAB_REQUIRE_ACCEL", "kvm")],
        ),
        (&["bench", "--require-accel=kvm"], &[("LAB_ACCEL", "tcg")]),
    ] {
        let started = std::time::Instant::now();
        let out = xtask(args, env);
        fails_saying(
            &out,
            &[
                "LAB_REQUIRE_ACCEL=kvm, but guests would run on tcg",
                "LAB_ACCEL=tcg asks for it",
            ],
        );
        assert!(started.elapsed().as_secs() < 10, "{args:?} failed late");
    }
    let out = xtask(&["lab", "--require-accel", "xen"], &[]);
    fails_saying(&out, &["invalid value 'xen'", "kvm, tcg"]);
}

#[test]
fn the_accelerator_is_in_the_step_summary_on_github_actions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.md");
    let path = summary.to_string_lossy().into_owned();
    let env = [("LAB_ACCEL", "tcg"), ("GITHUB_STEP_SUMMARY", path.as_str())];
    let out = xtask(&["lab", "--list", "--require-accel", "tcg"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&summary).expect("a step summary");
    assert!(text.contains("Guests run on **tcg**."), "{text}");
}

#[test]
fn a_topology_file_with_a_mistake_is_refused_naming_its_line_before_anything_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lan.toml");
    let cases = [
        (
            "[[host]]\nname = \"a\"\nmemroy = 512\n",
            ":3: unknown field `memroy`",
        ),
        (
            "[[host]]\nname = \"a\"\n[[link]]\nhost = \"b\"\n",
            ":4: no host is called \"b\" (hosts: a)",
        ),
        (
            "[[host]]\nname = \"a\"\n[[link]]\nhost = \"a\"\naccess = 5000\n",
            ":5: VLAN 5000",
        ),
        (
            "[[host]]\nname = \"a\"\n[[link]]\nhost = \"a\"\nimpair = { loss_percent = 150 }\n",
            ":5: impair: loss = 150% is not a share from 0% to 100%",
        ),
        (
            "[[host]]\nname = \"a\"\n[[link]]\nhost = \"a\"\nimpair = { delay_ms = -1 }\n",
            ":5: delay_ms = -1 is not a delay",
        ),
        (
            "[[host]]\nname = \"a\"\nmodule_sources = [\"no-such-module\"]\n",
            ":3: module source ",
        ),
    ];
    for (text, says) in cases {
        std::fs::write(&file, text).expect("write");
        let started = std::time::Instant::now();
        let path = file.to_string_lossy().into_owned();
        let out = xtask(&["lab", "run", "--topology", &path, "--", "true"], &[]);
        fails_saying(&out, &[&format!("lan.toml{says}")]);
        assert!(started.elapsed().as_secs() < 10, "refused late");
    }
    let out = xtask(
        &[
            "lab",
            "run",
            "--topology",
            "x.toml",
            "--hosts",
            "2",
            "--",
            "true",
        ],
        &[],
    );
    fails_saying(&out, &["cannot be used with"]);
}

#[test]
fn a_module_source_that_is_no_module_is_refused_before_provisioning() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("warn.c"), "").expect("write");
    let source = dir.path().to_string_lossy().into_owned();
    for (given, says) in [
        (
            "/nonexistent/module",
            "--module-source: module source /nonexistent/module is not a directory",
        ),
        (source.as_str(), "obj-m := NAME.o"),
    ] {
        let started = std::time::Instant::now();
        let out = xtask(&["lab", "run", "--module-source", given, "--", "true"], &[]);
        fails_saying(&out, &[given, says]);
        assert!(started.elapsed().as_secs() < 10, "refused late");
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

#[test]
fn clean_cache_keeps_a_directory_the_lab_did_not_make() {
    // `LAB_CACHE=/mnt/big` ("put the cache there") must not lose the disk's contents.
    let big = tempfile::tempdir().expect("tempdir");
    let thesis = big.path().join("thesis.tex");
    std::fs::write(&thesis, b"years of work").expect("write");
    std::fs::create_dir(big.path().join("snapshots")).expect("mkdir");
    std::fs::write(big.path().join("snapshots/photo.jpg"), b"jpeg").expect("write");
    let dir = big.path().to_str().expect("utf-8");
    for args in [&["clean-cache"][..], &["clean-cache", "--snapshots"]] {
        let out = xtask(args, &[("LAB_CACHE", dir)]);
        fails_saying(
            &out,
            &["no CACHEDIR.TAG of macvlan-lab", "not a cache the lab made"],
        );
    }
    assert!(thesis.exists() && big.path().join("snapshots/photo.jpg").exists());
    // Nor is it used as a cache (and so never filled, nor pruned).
    let out = xtask(&["provision"], &[("LAB_CACHE", dir)]);
    fails_saying(
        &out,
        &[
            "LAB_CACHE",
            "holds files but no CACHEDIR.TAG",
            "LAB_CACHE=",
            "macvlan-lab",
        ],
    );
    let out = xtask(&["clean-cache"], &[("LAB_CACHE", "relative/cache")]);
    fails_saying(&out, &["relative path"]);
}

#[test]
fn clean_cache_empties_a_cache_the_lab_made() {
    let top = tempfile::tempdir().expect("tempdir");
    let cache = top.path().join("cache");
    std::fs::create_dir(&cache).expect("mkdir");
    std::fs::write(
        cache.join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by macvlan-lab.\n",
    )
    .expect("tag");
    std::fs::create_dir(cache.join("snapshots")).expect("mkdir");
    let dir = cache.to_str().expect("utf-8");
    let out = xtask(&["clean-cache", "--snapshots"], &[("LAB_CACHE", dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cache.join("snapshots").exists() && cache.exists());
    let out = xtask(&["clean-cache"], &[("LAB_CACHE", dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cache.exists());
}

#[test]
fn a_temp_dir_with_commas_in_its_name_is_no_option_to_qemu() {
    // `,` ends a QEMU option's value and `,key=value` adds an option: every path in an option
    // is escaped, so a run in such a temp dir works like any other.
    let top = tempfile::tempdir().expect("tempdir");
    let tmp = top.path().join("a,b,share=on");
    std::fs::create_dir(&tmp).expect("mkdir");
    let out = xtask(
        &[
            "lab",
            "run",
            "--hosts",
            "2",
            "--",
            "ping",
            "-c1",
            "-W5",
            "192.168.88.2",
        ],
        &[("TMPDIR", tmp.to_str().expect("utf-8"))],
    );
    assert!(
        out.status.success(),
        "a run in {} failed:\n{}",
        tmp.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"));
}

#[test]
fn a_package_name_that_is_an_apt_option_is_refused() {
    // `-v` made an empty layer; `-o...` passed options to apt.
    for bad in [
        "--package=-v",
        "--package=-oDir::Etc=/tmp",
        "--package=Tcpdump",
    ] {
        let out = xtask(&["lab", "run", bad, "--", "true"], &[]);
        fails_saying(&out, &["is not a Debian package name"]);
    }
}

#[test]
fn a_host_without_the_tests_tools_is_told_every_package_before_anything_is_built() {
    // A PATH without a browser (nor anything else): `cargo xtask test` names every missing
    // package and the one command that installs them, and builds nothing first.
    let empty = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let out = xtask(
        &["test"],
        &[
            ("PATH", empty.path().to_str().expect("utf-8")),
            ("LAB_INSTALL", "no"),
            ("LAB_CHROMIUM", ""),
        ],
    );
    fails_saying(
        &out,
        &[
            "this host lacks what the lab needs",
            "a headless browser",
            "package chromium",
            "package tmux",
            "package make",
            "sudo apt-get install --no-install-recommends",
        ],
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "refused at once, not after a build ({:?})",
        started.elapsed()
    );
}
