//! The first run on an empty cache: on a terminal it draws its progress (apt's downloads in
//! bytes with a rate and the time left, the image builds in steps) and clears it when done;
//! with `-q` or in CI it draws none. Each run provisions into an empty cache of its own, with
//! a state directory of its own (`LAB_DIR`), so the suite's assets are not touched.

mod support;

use std::path::Path;
use std::time::Duration;

use support::terminal::Terminal;

/// The spinner's frames, which a drawn progress line always holds and nothing else xtask
/// writes does (`SPINNER` in xtask's `progress.rs`).
const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Starts `xtask ARGS provision` on a terminal, with `env` set, into a new cache under `dir`;
/// returns the terminal and where what it drew is recorded.
fn provision(dir: &Path, label: &str, env: &str, args: &str) -> (Terminal, std::path::PathBuf) {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let root = dir.join(label);
    std::fs::create_dir_all(&root).expect("mkdir");
    let record = root.join("terminal.log");
    let command = format!(
        "env {env} LAB_CACHE='{cache}' LAB_DIR='{state}' {xtask} {args} provision; echo EXIT=$?; sleep 600",
        cache = root.join("cache").display(),
        state = root.join("lab").display(),
    );
    (Terminal::start_recorded(label, &command, &record), record)
}

fn drew_progress(recorded: &str) -> bool {
    recorded.contains(SPINNER)
}

#[test]
fn the_first_run_on_an_empty_cache_shows_progress_on_a_terminal_and_none_quiet_or_in_ci() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Side by side: each is mostly waiting on Debian's archive.
    let (shown, shown_log) = provision(dir.path(), "progress-tty", "-u CI", "");
    let (quiet, quiet_log) = provision(dir.path(), "progress-quiet", "-u CI", "-q");
    let (ci, ci_log) = provision(dir.path(), "progress-ci", "CI=true", "");
    let within = Duration::from_secs(900);
    for term in [&shown, &quiet, &ci] {
        let screen = term.wait_for("EXIT=", 1, within);
        assert!(screen.contains("EXIT=0"), "provisioning failed:\n{screen}");
    }
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).expect("recording")).into_owned();

    let drawn = read(&shown_log);
    assert!(
        drew_progress(&drawn),
        "no progress drawn on a terminal:\n{drawn}"
    );
    // apt's lists and downloads are counted in bytes, with a rate and the time left.
    for expected in [
        "updating the package lists",
        "downloading",
        " of ",
        "iB/s",
        "ETA",
    ] {
        assert!(
            drawn.contains(expected),
            "{expected:?} never drawn:\n{drawn}"
        );
    }
    for build in [
        "building the guest image for",
        "building the module disk for",
    ] {
        assert!(drawn.contains(build), "{build:?} never drawn:\n{drawn}");
    }
    // Cleared when done: the screen keeps the result, not a bar.
    let screen = shown.screen();
    assert!(screen.contains("assets in"), "{screen}");
    assert!(
        !drew_progress(&screen),
        "a progress line was left on the screen:\n{screen}"
    );

    let quiet_drawn = read(&quiet_log);
    assert!(
        !drew_progress(&quiet_drawn),
        "progress drawn under -q:\n{quiet_drawn}"
    );
    assert!(
        !quiet_drawn.contains("assets in"),
        "-q said more than results:\n{quiet_drawn}"
    );

    let ci_drawn = read(&ci_log);
    assert!(
        !drew_progress(&ci_drawn),
        "progress drawn in CI:\n{ci_drawn}"
    );
    assert!(
        !ci_drawn.contains("ETA"),
        "progress drawn in CI:\n{ci_drawn}"
    );
    assert!(
        ci_drawn.contains("assets in"),
        "CI's plain lines are gone:\n{ci_drawn}"
    );
}
