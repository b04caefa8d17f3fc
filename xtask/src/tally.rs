//! Runs the test runners, passing their output through, and adds up what they report so that
//! `cargo xtask test` can end with one line saying how many tests passed and failed in all:
//! cargo test's `test result:` lines (the doctests) and cargo nextest's `Summary` line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: usize,
    pub failed: usize,
}

pub fn run(mut cmd: Command) -> anyhow::Result<(ExitStatus, TestCounts)> {
    // nextest reports on stderr, cargo test on stdout: read both, each passed through as is.
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let stderr_tally = std::thread::spawn(move || pass_through(err, std::io::stderr()));
    let (mut tally, _) = pass_through(out, std::io::stdout())?;
    let (from_stderr, nextest_summary) = stderr_tally
        .join()
        .map_err(|_| anyhow::anyhow!("the stderr reader panicked"))??;
    if nextest_summary {
        // nextest's summary counts the whole run; what reached stdout were tests' own lines
        // (`--no-capture` passes a test's `test result:` through).
        tally = from_stderr;
    } else {
        tally.passed += from_stderr.passed;
        tally.failed += from_stderr.failed;
    }
    Ok((child.wait()?, tally))
}

/// Copies `from` to `to` line by line; the counts it reported, and whether one of its lines
/// was nextest's summary.
fn pass_through(
    from: Option<impl std::io::Read>,
    mut to: impl Write,
) -> anyhow::Result<(TestCounts, bool)> {
    let mut tally = TestCounts::default();
    let mut summary = false;
    if let Some(from) = from {
        for line in BufReader::new(from).lines() {
            let line = line?;
            writeln!(to, "{line}")?;
            summary |= line.trim_start().starts_with("Summary [");
            tally.add(&line);
        }
    }
    Ok((tally, summary))
}

/// Test cases and the failed or erroring ones among them, in a JUnit XML file.
pub fn junit_counts(path: &std::path::Path) -> anyhow::Result<(usize, usize)> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid XML: {e}", path.display()))?;
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let failed = cases
        .iter()
        .filter(|c| {
            c.children()
                .any(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
        })
        .count();
    Ok((cases.len(), failed))
}

impl TestCounts {
    /// `test result: ok. 12 passed; 0 failed; 0 ignored; ...` (cargo test) or
    /// `Summary [ 12.3s] 14 tests run: 12 passed, 2 failed, 0 skipped` (nextest).
    fn add(&mut self, line: &str) {
        let rest = if let Some(rest) = line.strip_prefix("test result: ") {
            rest
        } else if line.trim_start().starts_with("Summary [") {
            // nextest's summary is its last word on the whole run: it replaces whatever came
            // before, such as the `test result:` or `Summary` lines of a failed test's own output
            // (a test that runs `cargo xtask test` inside prints them).
            *self = TestCounts::default();
            line.split_once("tests run:")
                .or_else(|| line.split_once("test run:"))
                .map_or("", |(_, counts)| counts)
        } else {
            return;
        };
        for part in rest.split([';', ',']) {
            // `ok. 12 passed`, ` 2 failed`, ` 1 timed out`: a count, then what it counts.
            let mut words = part
                .split_whitespace()
                .skip_while(|w| w.parse::<usize>().is_err());
            let Some(n) = words.next().and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            // nextest may add a remark: `127 passed (3 slow)`.
            let kind = words.collect::<Vec<_>>().join(" ");
            if kind.starts_with("passed") {
                self.passed += n;
            } else if kind.starts_with("failed") || kind.starts_with("timed out") {
                self.failed += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_says_whether_it_held_nextests_summary() {
        let text = "test result: ok. 1 passed; 0 failed\n";
        let (counts, summary) =
            pass_through(Some(text.as_bytes()), std::io::sink()).expect("reads");
        assert_eq!(
            (counts.passed, summary),
            (1, false),
            "a test's own line, on stdout"
        );
        let text = "     Summary [   1.0s] 1 test run: 1 passed, 3 skipped\n";
        let (counts, summary) =
            pass_through(Some(text.as_bytes()), std::io::sink()).expect("reads");
        assert_eq!((counts.passed, summary), (1, true));
    }

    #[test]
    fn adds_result_lines_and_ignores_others() {
        let mut t = TestCounts::default();
        t.add("test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 24.19s");
        t.add("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s");
        t.add("running 3 tests");
        t.add("        PASS [   0.1s] xtask::bin/xtask tally::tests::adds");
        assert_eq!(
            t,
            TestCounts {
                passed: 13,
                failed: 2
            }
        );
    }

    #[test]
    fn the_last_nextest_summary_is_the_count() {
        let mut t = TestCounts::default();
        // A failed test's own output, shown before the end: it ran `cargo xtask test` inside.
        t.add("    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("     Summary [   0.037s] 6 tests run: 6 passed, 7 skipped");
        t.add("     Summary [ 600.0s] 3 tests run: 2 passed, 1 timed out, 0 skipped");
        assert_eq!(
            t,
            TestCounts {
                passed: 2,
                failed: 1
            }
        );
        t.add("     Summary [ 387.7s] 127 tests run: 126 passed (3 slow), 1 failed, 0 skipped");
        assert_eq!(
            t,
            TestCounts {
                passed: 126,
                failed: 1
            }
        );
    }

    #[test]
    fn junit_counts_cases_and_the_failed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junit.xml");
        std::fs::write(&path, r#"<?xml version="1.0"?><testsuites><testsuite name="a"><testcase name="x"/><testcase name="y"><failure message="m"/></testcase></testsuite><testsuite name="b"><testcase name="z"><error/></testcase></testsuite></testsuites>"#).expect("write");
        assert_eq!(junit_counts(&path).expect("counts"), (3, 2));
        std::fs::write(&path, "<testsuites>").expect("write");
        assert!(junit_counts(&path)
            .expect_err("broken")
            .to_string()
            .contains("not valid XML"));
    }
}
