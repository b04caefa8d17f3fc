//! The seed tutorial's experiments as scenarios. Each runs in fresh guests on a fresh LAN
//! (`host1` is the seed's host, `peer` another machine on its segment), records what it observed
//! per check, and [`run`] compares that with [`expectations`].

mod claims;
pub mod expectations;
pub mod html;
pub mod junit;
mod modes;
mod nested;
pub mod observation;
mod probe;
pub mod registry;
mod seed;
mod throughput;
mod wifi;

use std::collections::BTreeMap;

use lab_harness::Assets;
use serde::Serialize;

use expectations::{Checks, Expect, Table};
pub use observation::Observation;

/// One check of a scenario, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
    /// Passed only because the measurement could not decide: its paired rounds fell on both
    /// sides of the bound (a busy host). Shown as such, not as a pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
    pub claim: String,
    /// Who tried to reach whom, for a reachability check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<expectations::Reach>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Things worth showing beside the checks, e.g. `virsh domiflist`: title -> text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// Set when the scenario could not run to the end (a guest failed to boot, a command broke).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From its first guest's boot to its last check.
    #[serde(with = "seconds")]
    pub took: std::time::Duration,
    /// What the report draws of the LAN it built.
    pub drawing: registry::Drawing,
}

mod seconds {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 10.0).round() / 10.0)
    }
}

/// `target/lab/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub qemu: String,
    pub accel: String,
    pub scenarios: Vec<ScenarioReport>,
    /// How the run's guests came up: restored from snapshots, cold, or cold after a restore
    /// failed (and why).
    pub boots: lab_harness::BootTally,
    /// The guest image's sha256 and the Debian packages it was built from (`name=version
    /// sha256`), so that a result can be reproduced.
    pub image: String,
    pub packages: Vec<String>,
}

/// What a scenario's experiment saw: an observation per check it looked at (`K`, the enum of
/// its checks in [`expectations`]), and notes to show beside them (a listing, say).
#[derive(Debug)]
pub struct Observed<K> {
    checks: BTreeMap<K, Observation>,
    notes: BTreeMap<String, String>,
}

impl<K: Checks> Default for Observed<K> {
    fn default() -> Self {
        Self {
            checks: BTreeMap::new(),
            notes: BTreeMap::new(),
        }
    }
}

impl<K: Checks> Observed<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, check: K, observation: impl Into<Observation>) {
        self.checks.insert(check, observation.into());
    }

    /// Something to show with the report under `title`; no check.
    pub fn note(&mut self, title: impl Into<String>, text: impl Into<String>) {
        self.notes.insert(title.into(), text.into());
    }

    /// Names each observation as `table` names its check. An observation the table does not
    /// judge (`None`: possible only where scenarios share an enum) is kept aside, and fails
    /// the scenario: it is a check with nothing to compare against.
    fn labelled(self, table: Table<K>) -> Seen {
        let mut seen = Seen {
            notes: self.notes,
            ..Seen::default()
        };
        for (check, observation) in self.checks {
            match table(check) {
                Some(e) => {
                    seen.checks.insert(e.check, observation);
                }
                None => seen.unjudged.push(format!("{check:?} = {observation}")),
            }
        }
        seen
    }
}

impl<K: Checks, O: Into<Observation>> FromIterator<(K, O)> for Observed<K> {
    fn from_iter<I: IntoIterator<Item = (K, O)>>(pairs: I) -> Self {
        let mut o = Self::new();
        for (check, observation) in pairs {
            o.insert(check, observation);
        }
        o
    }
}

/// Observations under their checks' names, as the report and [`expectations::Expect`] see them.
pub type Labelled = BTreeMap<&'static str, Observation>;

/// What a scenario saw, named by its table: what [`registry::Scenario::run`] returns.
#[derive(Debug, Default)]
pub struct Seen {
    checks: Labelled,
    notes: BTreeMap<String, String>,
    /// Observations of checks the scenario's table does not judge.
    unjudged: Vec<String>,
}

/// Runs scenario `name` in fresh guests and judges it against its table of expectations.
pub async fn run(name: &str, assets: &Assets) -> ScenarioReport {
    let started = std::time::Instant::now();
    let result = registry::run(name, assets).await;
    let took = started.elapsed();
    let (seen, error) = match result {
        Ok(seen) => (seen, None),
        Err(e) => (Seen::default(), Some(e.to_string())),
    };
    let scenario = registry::find(name);
    let drawing = scenario.map(|s| s.drawing).unwrap_or_default();
    let checks: Vec<Check> = scenario
        .map(|s| (s.checks)())
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let observation = seen.checks.get(e.check);
            let pass = match (observation, e.expected) {
                (None, _) => false,
                // A fact reported by a scenario that broke off is not a fact.
                (Some(_), Expect::Reported) => error.is_none(),
                (Some(o), expected) => expected.admits(o, &seen.checks),
            };
            let inconclusive = pass && observation.is_some_and(|o| e.expected.inconclusive(o));
            Check {
                name: e.check.into(),
                expected: e.expected.to_string(),
                pass,
                inconclusive,
                observed: observation.map_or_else(|| "not observed".into(), |o| o.to_string()),
                claim: e.claim.into(),
                reach: e.reach,
            }
        })
        .collect();
    let error = match (error, seen.unjudged.is_empty()) {
        (None, false) => Some(format!(
            "observed {}, which {name} does not judge: give it an expectation in scenarios/src/expectations.rs",
            seen.unjudged.join(", ")
        )),
        (error, _) => error,
    };
    let passed = error.is_none() && !checks.is_empty() && checks.iter().all(|c| c.pass);
    ScenarioReport {
        name: name.into(),
        passed,
        checks,
        notes: seen.notes,
        error,
        took,
        drawing,
    }
}

/// The table a person reads at a glance; columns as wide as their widest cell.
pub fn table(report: &Report) -> String {
    table_marked(report, &|pass| if pass { "yes" } else { "NO" }.to_string())
}

/// [`table`] with each row's pass mark as `mark` makes it (coloured, say): the mark is last
/// on its line, so what it adds to its width misaligns nothing.
pub fn table_marked(report: &Report, mark: &dyn Fn(bool) -> String) -> String {
    let header = ["scenario", "check", "expected", "observed", "pass"];
    let mut rows: Vec<[String; 5]> = Vec::new();
    for s in &report.scenarios {
        for c in &s.checks {
            rows.push([
                s.name.clone(),
                c.name.clone(),
                c.expected.clone(),
                c.observed.clone(),
                if c.inconclusive {
                    "inconclusive".into()
                } else {
                    mark(c.pass)
                },
            ]);
        }
        if let Some(e) = &s.error {
            rows.push([
                s.name.clone(),
                "(scenario error)".into(),
                String::new(),
                e.lines().next().unwrap_or_default().into(),
                mark(false),
            ]);
        }
    }
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..4).map(width).collect();
    let line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate().take(4) {
            l.push_str(&format!("{cell:<w$}  ", w = widths[i]));
        }
        l.push_str(cells[4]);
        l.push('\n');
        l
    };
    let mut out = format!(
        "kernel {}, QEMU {}, {}\n",
        report.kernel, report.qemu, report.accel
    );
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    for s in &report.scenarios {
        for (title, text) in &s.notes {
            out.push_str(&format!("\n{} — {title}:\n{text}", s.name));
        }
    }
    let passed = report.scenarios.iter().filter(|s| s.passed).count();
    out.push_str(&format!(
        "{passed} of {} scenarios behaved as expected\n",
        report.scenarios.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_and_marks_mismatches_and_errors() {
        let check = |name: &str, observed: &str| Check {
            name: name.into(),
            expected: "reachable".into(),
            observed: observed.into(),
            pass: observed == "reachable",
            inconclusive: false,
            claim: String::new(),
            reach: None,
        };
        let report = Report {
            kernel: "6.1".into(),
            qemu: "7.2".into(),
            accel: "tcg".into(),
            boots: Default::default(),
            image: String::new(),
            packages: Vec::new(),
            scenarios: vec![
                ScenarioReport {
                    name: "mode/bridge".into(),
                    passed: true,
                    checks: vec![check("sibling", "reachable")],
                    notes: BTreeMap::new(),
                    error: None,
                    took: std::time::Duration::from_secs(3),
                    drawing: Default::default(),
                },
                ScenarioReport {
                    name: "mode/x".into(),
                    passed: false,
                    checks: vec![check("a much longer check name", "unreachable")],
                    notes: BTreeMap::new(),
                    error: Some("host1: boot timed out\nconsole...".into()),
                    took: std::time::Duration::from_secs(60),
                    drawing: Default::default(),
                },
            ],
        };
        let t = table(&report);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        let col = |l: &str| l.find("reachable").or_else(|| l.find("expected"));
        assert_eq!(col(lines[1]), col(lines[2]), "{t}");
        assert!(
            lines[3].ends_with("NO")
                && lines[4].contains("boot timed out")
                && lines[4].ends_with("NO"),
            "{t}"
        );
        assert_eq!(lines[5], "1 of 2 scenarios behaved as expected");
    }
}
