//! How much xtask says, and whether in colour. `--quiet` keeps results, warnings and errors;
//! `--verbose` adds the harness's own account (each boot, restore and snapshot, with times).
//! Colour only on a terminal, and never with `NO_COLOR` set (https://no-color.org).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Progress lines are left out.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The log filter the flags ask for, unless `RUST_LOG` says otherwise.
pub fn log_filter(verbose: bool) -> &'static str {
    match (quiet(), verbose) {
        (true, _) => "error",
        (false, true) => "warn,lab_harness=info",
        (false, false) => "warn",
    }
}

/// Whether a stream may be coloured: a terminal, and `NO_COLOR` unset or empty.
pub fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in green (good) or red (bad) when `on`.
pub fn paint(text: &str, good: bool, on: bool) -> String {
    match (on, good) {
        (false, _) => text.to_string(),
        (true, true) => format!("\x1b[32m{text}\x1b[0m"),
        (true, false) => format!("\x1b[1;31m{text}\x1b[0m"),
    }
}

/// A progress line on stderr, unless `--quiet`; above the progress bars, when they are shown.
macro_rules! status {
    ($($arg:tt)*) => {
        if !$crate::ui::quiet() {
            $crate::progress::suspend(|| eprintln!($($arg)*));
        }
    };
}
pub(crate) use status;

/// stderr for the log, written with the progress bars out of the way.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Adds `markdown` to the GitHub Actions step summary, when running in one: what a run ran on
/// is seen on the run's page, not only in its log.
pub fn step_summary(markdown: &str) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return;
    };
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{markdown}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_only_when_asked() {
        assert_eq!(paint("NO", false, false), "NO");
        assert_eq!(paint("yes", true, true), "\x1b[32myes\x1b[0m");
    }
}
