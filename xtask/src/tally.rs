//! Runs `cargo test`, passing its output through, and adds up its `test result:` lines so that
//! `cargo xtask test` can end with one line saying how many tests passed and failed in all.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

pub fn run(mut cmd: Command) -> anyhow::Result<(ExitStatus, Tally)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut tally = Tally::default();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).lines() {
            let line = line?;
            writeln!(stdout, "{line}")?;
            tally.add(&line);
        }
    }
    Ok((child.wait()?, tally))
}

impl Tally {
    /// `test result: ok. 12 passed; 0 failed; 0 ignored; ...`
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
            let n: usize = n.parse().unwrap_or(0);
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_result_lines_and_ignores_others() {
        let mut t = Tally::default();
        t.add("test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 24.19s");
        t.add("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s");
        t.add("running 3 tests");
        assert_eq!(t, Tally { passed: 13, failed: 2 });
    }
}
