//! The seed tutorial's experiments as scenarios. Each runs in fresh guests on a fresh LAN
//! (`host1` is the seed's host, `peer` another machine on its segment), records what it observed
//! per check, and [`run`] compares that with [`expectations`].

pub mod expectations;
mod scenarios;

use std::collections::BTreeMap;

use lab_harness::Assets;
use serde::Serialize;

/// One check of a scenario, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
    pub claim: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Set when the scenario could not run to the end (a guest failed to boot, a command broke).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `target/lab/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub qemu: String,
    pub accel: String,
    pub scenarios: Vec<ScenarioReport>,
}

/// What a scenario saw: check name -> observation.
pub type Observed = BTreeMap<String, String>;

/// Runs scenario `name` in fresh guests and judges it against the expectation table.
pub async fn run(name: &str, assets: &Assets) -> ScenarioReport {
    let result = scenarios::run(name, assets).await;
    let (observed, error) = match result {
        Ok(o) => (o, None),
        Err(e) => (Observed::new(), Some(e.to_string())),
    };
    let checks: Vec<Check> = expectations::for_scenario(name)
        .map(|e| {
            let observed = observed.get(e.check).cloned().unwrap_or_else(|| "not observed".into());
            Check { name: e.check.into(), expected: e.expected.into(), pass: observed == e.expected, observed, claim: e.claim.into() }
        })
        .collect();
    let passed = error.is_none() && !checks.is_empty() && checks.iter().all(|c| c.pass);
    ScenarioReport { name: name.into(), passed, checks, error }
}

/// The table a person reads at a glance.
pub fn table(report: &Report) -> String {
    let mut out = format!("kernel {}, QEMU {}, {}\n", report.kernel, report.qemu, report.accel);
    out.push_str(&format!("{:<22} {:<46} {:<24} {:<24} {}\n", "scenario", "check", "expected", "observed", "pass"));
    for s in &report.scenarios {
        for c in &s.checks {
            let mark = if c.pass { "yes" } else { "NO" };
            out.push_str(&format!("{:<22} {:<46} {:<24} {:<24} {mark}\n", s.name, c.name, c.expected, c.observed));
        }
        if let Some(e) = &s.error {
            out.push_str(&format!("{:<22} error: {}\n", s.name, e.lines().next().unwrap_or_default()));
        }
    }
    let passed = report.scenarios.iter().filter(|s| s.passed).count();
    out.push_str(&format!("{passed} of {} scenarios behaved as expected\n", report.scenarios.len()));
    out
}
