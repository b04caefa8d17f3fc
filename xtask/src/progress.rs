//! The terminal's view of long work (downloads, image builds, the agent's build): a line per
//! running [`lab_kernels::progress::Task`], with what it is on, bytes or steps done, the rate
//! and an estimate of the time left. Shown only on a terminal: not under `--quiet`, not in
//! CI (`CI` set, as every CI service sets it), not to a file or a pipe, not on a `dumb`
//! terminal. There, the step lines of [`crate::ui::status`] are all that is said, as before.
//!
//! Architecture Invariant: while a bar is drawn, everything xtask writes to stderr goes
//! through [`suspend`], so a status line is never torn by a redraw.

use std::io::IsTerminal;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lab_kernels::progress::{Meter, Observer, Task, Unit};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The spinner's frames (the last is shown when done): braille, which nothing else xtask
/// writes holds, so a test can tell a drawn progress line from the rest.
const SPINNER: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ";

/// Whether progress is shown: `quiet`, CI and anything but a real terminal on stderr say no.
pub fn wanted(quiet: bool) -> bool {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let dumb = std::env::var_os("TERM").is_none_or(|t| t == "dumb" || t.is_empty());
    !quiet && !ci && !dumb && std::io::stderr().is_terminal()
}

/// Shows the tasks of the libraries from now on, when [`wanted`].
pub fn install(quiet: bool) {
    if !wanted(quiet) {
        return;
    }
    let bars = BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    lab_kernels::progress::observe(Box::new(Bars(bars.clone())));
}

/// Runs `write` with the bars taken off the screen, then draws them again below what it wrote.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(bars) => bars.suspend(write),
        None => write(),
    }
}

/// Runs a quiet `cargo build` or `cargo test --no-run` with its artifacts as JSON on stdout,
/// and shows each crate it compiled as a step of `what` (a first build takes minutes; a warm
/// one, whose artifacts are all fresh, ends before the line is seen). Errors are rendered on
/// stderr by cargo.
pub fn cargo(cargo: &mut Command, what: &str) -> std::io::Result<std::process::ExitStatus> {
    use std::io::BufRead;
    let mut child = cargo
        .arg("--message-format=json-render-diagnostics")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let task = Task::start(&format!("{what} (crates compiled)"), None, Unit::Steps);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(name) = compiled(&line) {
            task.add(1);
            task.note(&name);
        }
    }
    child.wait()
}

/// The package a cargo JSON message says was compiled just now (not found fresh).
fn compiled(line: &str) -> Option<String> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    let fresh = msg.get("fresh").and_then(serde_json::Value::as_bool);
    if msg.get("reason")?.as_str()? != "compiler-artifact" || fresh != Some(false) {
        return None;
    }
    // `registry+https://...#libc@0.2.170`, `path+file:///.../agent#lab-agent@0.1.0`, or
    // before cargo 1.77 `libc 0.2.150 (registry+...)`; a build script's target is only
    // `build-script-build`, so the package names what is being built.
    let id = msg.get("package_id")?.as_str()?;
    let name = match id.rsplit_once('#') {
        Some((_, name)) => name.split('@').next()?,
        None => id.split(' ').next()?,
    };
    Some(name.to_string())
}

struct Bars(MultiProgress);

impl Observer for Bars {
    fn start(&self, what: &str, total: Option<u64>, unit: Unit) -> Box<dyn Meter> {
        let bar = self.0.add(ProgressBar::new(total.unwrap_or(0)));
        bar.set_style(style(total.is_some(), unit));
        bar.set_message(what.to_string());
        // The spinner turns while the work runs: a count that stands still beside a turning
        // spinner is a slow step, not a hung program.
        bar.enable_steady_tick(Duration::from_millis(120));
        Box::new(Bar {
            bar,
            what: what.to_string(),
        })
    }
}

/// The line for a task: bytes with a binary rate, and an estimate of the time left when their
/// total is known; steps with a count, and a bar when their number is known.
fn style(known: bool, unit: Unit) -> ProgressStyle {
    ProgressStyle::with_template(template(known, unit))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .tick_chars(SPINNER)
        .progress_chars("=> ")
}

fn template(known: bool, unit: Unit) -> &'static str {
    // Numbers first, at fixed places; what the task is on last, cut to the terminal's width.
    match (known, unit) {
        (true, Unit::Bytes) => "{spinner} [{bar:20}] {bytes:>10} of {total_bytes:<10} {binary_bytes_per_sec:>12}, ETA {eta:<4} {wide_msg}",
        (false, Unit::Bytes) => "{spinner} {bytes:>10} {binary_bytes_per_sec:>12}, {elapsed:<4} {wide_msg}",
        // Steps differ too much in length for an estimate to mean anything: the time so far.
        (true, Unit::Steps) => "{spinner} [{bar:20}] {pos:>3}/{len:<3} in {elapsed:<4} {wide_msg}",
        (false, Unit::Steps) => "{spinner} {pos:>5} in {elapsed:<4} {wide_msg}",
    }
}

struct Bar {
    bar: ProgressBar,
    what: String,
}

impl Meter for Bar {
    fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn note(&self, text: &str) {
        self.bar.set_message(format!("{}: {text}", self.what));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crates_compiled_now_count() {
        let now = r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#tokio@1.48.0","fresh":false}"#;
        let old = r#"{"reason":"compiler-artifact","package_id":"nix 0.29.0 (registry+https://github.com/rust-lang/crates.io-index)","fresh":false}"#;
        let fresh = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/agent#lab-agent@0.1.0","fresh":true}"#;
        let other = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(compiled(now).as_deref(), Some("tokio"));
        assert_eq!(compiled(old).as_deref(), Some("nix"));
        assert_eq!(compiled(fresh), None);
        assert_eq!(compiled(other), None);
        assert_eq!(compiled("not json"), None);
    }

    #[test]
    fn every_template_parses() {
        for known in [true, false] {
            for unit in [Unit::Bytes, Unit::Steps] {
                let parsed = ProgressStyle::with_template(template(known, unit));
                assert!(parsed.is_ok(), "known total {known}, {unit:?}");
            }
        }
    }
}
