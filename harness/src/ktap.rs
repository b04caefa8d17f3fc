//! Reading a job's results from its KTAP (or kselftest TAP) output: one [`Subtest`] per
//! result line, nested ones named under their parent, so that a report shows which subtest of
//! a selftest failed, not only that the selftest did. I/O-free.
//!
//! The format (Documentation/dev-tools/ktap.rst): a `KTAP version 1` or `TAP version 13` line,
//! a plan `1..N`, result lines `ok N name` / `not ok N name`, each maybe with a directive
//! (`# SKIP reason`, `# XFAIL`, `# TODO`), and `#` diagnostics. A subtest's own lines come
//! before its result line, indented by two spaces per level, or (as kselftest's runner
//! prints a program's output) behind `# `.

use serde::Serialize;

/// What a subtest's result line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
    /// Failed as expected (`# XFAIL`, or `not ok ... # TODO`): not a failure.
    Xfail,
    /// What the output does not say: a result its plan promised and never came, or a bail-out.
    Error,
}

impl Outcome {
    /// Whether it counts against the run.
    pub fn failed(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Error)
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subtest {
    /// Its name, under its parents' (`net/bonding.mode_1`), unique in the run (a repeated name
    /// gets its number: `name#2`).
    pub name: String,
    pub outcome: Outcome,
    /// The directive's reason, or what went wrong for an [`Outcome::Error`].
    pub reason: Option<String>,
    /// The `#` lines just before its result (at its level), which usually say why.
    pub diagnostics: Vec<String>,
}

/// A result line, plan or version line at some depth.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Version,
    Plan(u32),
    Result {
        ok: bool,
        name: &'a str,
        directive: Option<&'a str>,
    },
    Bail(&'a str),
    Diagnostic(&'a str),
    Other,
}

fn classify(text: &str) -> Line<'_> {
    if text.starts_with("KTAP version ") || text.starts_with("TAP version ") {
        return Line::Version;
    }
    if let Some(n) = text
        .strip_prefix("1..")
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
    {
        return Line::Plan(n);
    }
    if let Some(reason) = text.strip_prefix("Bail out!") {
        return Line::Bail(reason.trim());
    }
    let (ok, rest) = if let Some(rest) = text.strip_prefix("not ok ") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("ok ") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix('#') {
        return Line::Diagnostic(rest.trim());
    } else {
        return Line::Other;
    };
    // `N name # DIRECTIVE reason`: the number, then everything up to ` # `.
    let rest = rest
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    let (name, directive) = match rest.split_once(" # ") {
        Some((name, directive)) => (name, Some(directive.trim())),
        None => match rest.strip_prefix("# ") {
            Some(directive) => ("", Some(directive.trim())),
            None => (rest, None),
        },
    };
    Line::Result {
        ok,
        name: name.trim(),
        directive,
    }
}

/// `line`'s indentation and what is left of it: its leading spaces, and four more for each
/// `# ` in front of a line that is KTAP in itself (kselftest's runner's way of nesting).
fn indent_of(line: &str) -> (usize, &str) {
    let mut width = 0;
    let mut rest = line.trim_end_matches('\r');
    loop {
        if let Some(r) = rest.strip_prefix(' ') {
            rest = r;
            width += 1;
        } else if let Some(r) = rest.strip_prefix("# ") {
            // Only a nested KTAP line: other `# ` lines are diagnostics of this level.
            match classify(r.trim_start()) {
                Line::Version | Line::Plan(_) | Line::Result { .. } | Line::Bail(_) => {
                    rest = r;
                    width += 4;
                }
                _ => return (width, rest),
            }
        } else {
            return (width, rest);
        }
    }
}

/// A level being read: its plan, the results so far, its children's.
#[derive(Default)]
struct Level {
    plan: Option<u32>,
    results: u32,
    /// Results of the deeper level since this level's last result: the next result's
    /// subtests.
    pending: Vec<Subtest>,
    diagnostics: Vec<String>,
}

/// The subtests of `output`, or `None` when it is not KTAP (neither a version line nor a
/// plan).
pub fn parse(output: &str) -> Option<Vec<Subtest>> {
    let mut levels: Vec<Level> = vec![Level::default()];
    // Each level's indentation: KUnit indents by four spaces, others by two.
    let mut widths: Vec<usize> = vec![0];
    let mut seen_ktap = false;
    let mut bailed: Option<String> = None;
    for line in output.lines() {
        let (width, text) = indent_of(line);
        let kind = classify(text);
        if kind == Line::Other {
            continue;
        }
        if width > *widths.last().unwrap_or(&0) {
            widths.push(width);
        } else {
            while widths.len() > 1 && widths[widths.len() - 1] > width {
                widths.pop();
            }
        }
        let depth = widths.len() - 1;
        while levels.len() <= depth {
            levels.push(Level::default());
        }
        match kind {
            Line::Version => seen_ktap = true,
            Line::Plan(n) => {
                seen_ktap = true;
                levels[depth].plan = Some(n);
            }
            Line::Bail(reason) => bailed = Some(reason.to_string()),
            Line::Diagnostic(d) => levels[depth].diagnostics.push(d.to_string()),
            Line::Other => {}
            Line::Result {
                ok,
                name,
                directive,
            } => {
                // Deeper levels end here: their results are this one's subtests.
                let mut children = Vec::new();
                while levels.len() > depth + 1 {
                    let mut level = levels.pop().expect("deeper level");
                    close(&mut level);
                    children.splice(0..0, level.pending);
                }
                let level = &mut levels[depth];
                level.results += 1;
                let name = if name.is_empty() {
                    format!("#{}", level.results)
                } else {
                    name.to_string()
                };
                let own = own_outcome(ok, directive);
                let diagnostics = std::mem::take(&mut level.diagnostics);
                let parent = Subtest {
                    name: name.clone(),
                    outcome: own,
                    reason: directive.map(reason_of).filter(|r| !r.is_empty()),
                    diagnostics,
                };
                level.pending.extend(with_children(parent, children));
            }
        }
    }
    if !seen_ktap {
        return None;
    }
    while levels.len() > 1 {
        let mut level = levels.pop().expect("deeper level");
        close(&mut level);
        let orphans = level.pending;
        levels[0].pending.extend(orphans);
    }
    let mut top = levels.pop().expect("the top level");
    close(&mut top);
    if let Some(reason) = bailed {
        top.pending.push(Subtest {
            name: "bail out".into(),
            outcome: Outcome::Error,
            reason: Some(format!("Bail out! {reason}")),
            diagnostics: Vec::new(),
        });
    }
    Some(unique(top.pending))
}

/// A level's end: a plan that promised more results than came is an error result of its own.
fn close(level: &mut Level) {
    if let Some(plan) = level.plan {
        if level.results < plan {
            level.pending.push(Subtest {
                name: format!("missing results {}..{plan}", level.results + 1),
                outcome: Outcome::Error,
                reason: Some(format!(
                    "the plan said 1..{plan} and {} result(s) came: the rest were never reported (a crash, a timeout, lost output)",
                    level.results
                )),
                diagnostics: Vec::new(),
            });
        }
    }
}

/// A parent's result and its children's: the children, named under it; the parent itself only
/// when it has none, or when its own result says more than theirs (it failed while they all
/// passed: a failure in its own setup or teardown must not be lost).
fn with_children(parent: Subtest, children: Vec<Subtest>) -> Vec<Subtest> {
    if children.is_empty() {
        return vec![parent];
    }
    let any_failed = children.iter().any(|c| c.outcome.failed());
    let mut out: Vec<Subtest> = children
        .into_iter()
        .map(|c| Subtest {
            name: format!("{}/{}", parent.name, c.name),
            ..c
        })
        .collect();
    if parent.outcome.failed() && !any_failed {
        out.push(parent);
    }
    out
}

fn own_outcome(ok: bool, directive: Option<&str>) -> Outcome {
    let word = directive
        .and_then(|d| d.split_whitespace().next())
        .map(str::to_ascii_uppercase);
    match (ok, word.as_deref()) {
        (_, Some("SKIP")) => Outcome::Skip,
        (true, Some("XFAIL")) | (false, Some("TODO" | "XFAIL")) => Outcome::Xfail,
        (true, _) => Outcome::Pass,
        (false, _) => Outcome::Fail,
    }
}

/// A directive's words after its keyword.
fn reason_of(directive: &str) -> String {
    directive
        .split_once(char::is_whitespace)
        .map(|(_, r)| r.trim().to_string())
        .unwrap_or_default()
}

/// Names made unique: a second `name` becomes `name#2`.
fn unique(subtests: Vec<Subtest>) -> Vec<Subtest> {
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    subtests
        .into_iter()
        .map(|mut s| {
            let n = seen.entry(s.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                s.name = format!("{}#{n}", s.name);
            }
            s
        })
        .collect()
}

/// The KTAP lines of a job's output as it streams, in bounded memory whatever the output's
/// size: every version, plan, result and bail-out line, and the last [`KEPT_DIAGNOSTICS`]
/// other lines before each result (its reasons). Results past [`MAX_KEPT`] bytes are not
/// dropped silently: [`Collector::finish`] reports them as an error.
#[derive(Debug)]
pub struct Collector {
    kept: String,
    lines: crate::text::LineCutter,
    recent: std::collections::VecDeque<String>,
    overflowed: u64,
}

/// Lines of context kept before each result.
pub const KEPT_DIAGNOSTICS: usize = 16;
/// Bytes of KTAP lines kept (a run of a million subtests' results fits).
pub const MAX_KEPT: usize = 64 << 20;
/// The longest line read whole; past it a line is cut (no KTAP line is that long).
const MAX_LINE: usize = 64 << 10;

impl Default for Collector {
    fn default() -> Self {
        Self {
            kept: String::new(),
            lines: crate::text::LineCutter::new(MAX_LINE),
            recent: std::collections::VecDeque::new(),
            overflowed: 0,
        }
    }
}

impl Collector {
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut complete = Vec::new();
        self.lines.feed(bytes, |line| {
            complete.push(String::from_utf8_lossy(line).into_owned())
        });
        for line in complete {
            self.line(line);
        }
    }

    fn line(&mut self, line: String) {
        let (_, text) = indent_of(&line);
        match classify(text) {
            Line::Other | Line::Diagnostic(_) => {
                if self.recent.len() == KEPT_DIAGNOSTICS {
                    self.recent.pop_front();
                }
                self.recent.push_back(line);
            }
            _ => {
                let recent: Vec<String> = self.recent.drain(..).collect();
                for l in recent.into_iter().chain([line]) {
                    if self.kept.len() + l.len() < MAX_KEPT {
                        self.kept.push_str(&l);
                        self.kept.push('\n');
                    } else {
                        self.overflowed += 1;
                    }
                }
            }
        }
    }

    /// The subtests, as [`parse`] reads them from the kept lines; `None` when the output was
    /// not KTAP.
    pub fn finish(mut self) -> Option<Vec<Subtest>> {
        let rest = self.lines.rest();
        if !rest.is_empty() {
            self.line(String::from_utf8_lossy(&rest).into_owned());
        }
        let mut subtests = parse(&self.kept)?;
        if self.overflowed > 0 {
            subtests.push(Subtest {
                name: "results past the limit".into(),
                outcome: Outcome::Error,
                reason: Some(format!(
                    "{} KTAP line(s) came after {MAX_KEPT} bytes of them and were not read",
                    self.overflowed
                )),
                diagnostics: Vec::new(),
            });
        }
        Some(subtests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(subtests: &[Subtest]) -> Vec<(&str, Outcome)> {
        subtests
            .iter()
            .map(|s| (s.name.as_str(), s.outcome))
            .collect()
    }

    /// Passing, failing, skipped and nested subtests, as a kernel's KUnit and a selftest print
    /// them: one result each, nested ones under their parent's name.
    #[test]
    fn each_subtest_is_one_result_named_under_its_parent() {
        let text = "\
KTAP version 1
1..4
    KTAP version 1
    # Subtest: bonding
    1..3
    ok 1 mode_0
    # the peer did not answer
    not ok 2 mode_1
    ok 3 mode_2 # SKIP needs two NICs
not ok 1 bonding
ok 2 ping.test_v4
not ok 3 ping.test_v6 # SKIP Test requires IPv6 connectivity
ok 4 xfail_case # XFAIL known bug
# Totals: pass:2 fail:1 xfail:1 xpass:0 skip:1 error:0
";
        let subtests = parse(text).expect("KTAP");
        assert_eq!(
            outcomes(&subtests),
            [
                ("bonding/mode_0", Outcome::Pass),
                ("bonding/mode_1", Outcome::Fail),
                ("bonding/mode_2", Outcome::Skip),
                ("ping.test_v4", Outcome::Pass),
                ("ping.test_v6", Outcome::Skip),
                ("xfail_case", Outcome::Xfail),
            ]
        );
        assert_eq!(
            subtests[1].diagnostics,
            ["the peer did not answer"],
            "the lines before a failure say why"
        );
        assert_eq!(subtests[2].reason.as_deref(), Some("needs two NICs"));
        assert_eq!(
            subtests[4].reason.as_deref(),
            Some("Test requires IPv6 connectivity")
        );
    }

    /// kselftest's runner prints each program's own KTAP behind `# `.
    #[test]
    fn a_runners_hash_prefixed_output_is_a_nested_level() {
        let text = "\
TAP version 13
1..2
# selftests: drivers/net: ping.py
# KTAP version 1
# 1..2
# ok 1 ping.test_v4
# not ok 2 ping.test_tcp
# # Totals: pass:1 fail:1
not ok 1 selftests: drivers/net: ping.py # exit=1
# selftests: drivers/net: stats.py
ok 2 selftests: drivers/net: stats.py # SKIP
";
        let subtests = parse(text).expect("KTAP");
        assert_eq!(
            outcomes(&subtests),
            [
                (
                    "selftests: drivers/net: ping.py/ping.test_v4",
                    Outcome::Pass
                ),
                (
                    "selftests: drivers/net: ping.py/ping.test_tcp",
                    Outcome::Fail
                ),
                ("selftests: drivers/net: stats.py", Outcome::Skip),
            ]
        );
    }

    /// Nothing is lost: a parent that failed while its subtests passed, results its plan
    /// promised that never came, and a bail-out are results of their own.
    #[test]
    fn what_did_not_report_is_an_error_not_a_pass() {
        let text = "\
KTAP version 1
1..3
  1..1
  ok 1 inner
not ok 1 outer
ok 2 second
";
        let subtests = parse(text).expect("KTAP");
        assert_eq!(
            outcomes(&subtests),
            [
                ("outer/inner", Outcome::Pass),
                ("outer", Outcome::Fail),
                ("second", Outcome::Pass),
                ("missing results 3..3", Outcome::Error),
            ]
        );
        let bailed = parse("TAP version 13\n1..1\nBail out! no network\n").expect("KTAP");
        assert!(bailed
            .iter()
            .any(|s| s.outcome == Outcome::Error
                && s.reason.as_deref() == Some("Bail out! no network")));
    }

    #[test]
    fn output_that_is_not_ktap_has_no_subtests() {
        assert_eq!(parse("hello\n# a comment\nok then\n"), None);
        assert_eq!(parse(""), None);
    }

    /// However the output is cut into pieces and however much else it holds, the collector
    /// reads what [`parse`] reads from the whole.
    #[test]
    fn the_collector_reads_streamed_output_as_parse_reads_it_whole() {
        let mut text = String::from("KTAP version 1\n1..2\n");
        for i in 0..10_000 {
            text.push_str(&format!("noise line {i}\n"));
        }
        text.push_str("# why it failed\nnot ok 1 first\n  1..1\n  ok 1 inner\nok 2 second");
        let mut collector = Collector::default();
        for piece in text.as_bytes().chunks(7) {
            collector.feed(piece);
        }
        let streamed = collector.finish().expect("KTAP");
        let whole = parse(&text).expect("KTAP");
        assert_eq!(streamed, whole);
        assert_eq!(streamed[0].diagnostics, ["why it failed"]);
        assert_eq!(streamed.len(), 2);
    }

    #[test]
    fn a_name_given_twice_is_told_apart() {
        let subtests = parse("1..2\nok 1 same\nnot ok 2 same\n").expect("KTAP");
        assert_eq!(
            outcomes(&subtests),
            [("same", Outcome::Pass), ("same#2", Outcome::Fail)]
        );
    }
}
