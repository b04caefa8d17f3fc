//! Flakes told from failures: a job run several times from the same snapshot state, each
//! attempt with a seed ([`crate::Spec::with_seed`]), judged subtest by subtest. I/O-free.
//!
//! A subtest that fails in every attempt has `failed`; one that fails in some and passes in
//! others is `flaky`, with the seeds it failed with, and whether the seed decides (every
//! attempt with a failing seed failed again: the failure follows from the lab's randomness)
//! or not (the same seed passed once and failed once: timing). Kernel problems are counted by
//! fingerprint ([`crate::console::Splat::fingerprint`]), so the same crash twice is one
//! finding.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ktap::Outcome;

/// Why an attempt ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// One of `--repeat N` (or the only run).
    Run,
    /// A rerun of a failure with the failure's seed.
    SameSeed,
    /// A rerun of a failure with a new seed.
    NewSeed,
}

/// One run of the job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub seed: u64,
    pub why: Why,
    /// Each subtest's outcome (the job's own, under its name, when its output is not KTAP).
    pub results: Vec<Reported>,
    /// The fingerprints of the kernel problems its guests printed, in order.
    pub splats: Vec<String>,
}

/// One subtest's outcome in one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reported {
    pub name: String,
    pub outcome: Outcome,
}

impl Reported {
    pub fn new(name: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            name: name.into(),
            outcome,
        }
    }
}

/// A subtest's judgement over every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Judgement {
    Passed,
    /// Skipped or failed as expected (XFAIL) in every attempt.
    Skipped,
    Failed,
    Flaky {
        /// Seeds of the attempts it failed in.
        failing_seeds: Vec<u64>,
        /// Whether every attempt with one of those seeds failed (and some with another
        /// passed): the lab's randomness decides it. False: the same seed passed and failed.
        seed_decides: bool,
    },
}

/// One subtest's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub name: String,
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Attempts it reported in, and in how many it failed.
    pub runs: u32,
    pub failures: u32,
}

/// One kernel problem, however many times it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplatFinding {
    pub fingerprint: String,
    /// Times seen, over all attempts.
    pub count: u32,
    /// Seeds of the attempts it happened in, each once.
    pub seeds: Vec<u64>,
}

/// Every subtest's judgement, in the order they first reported.
pub fn judge(attempts: &[Attempt]) -> Vec<Finding> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<(u64, Outcome)>> = BTreeMap::new();
    for attempt in attempts {
        for r in &attempt.results {
            let runs = by_name.entry(&r.name).or_default();
            if runs.is_empty() {
                order.push(&r.name);
            }
            runs.push((attempt.seed, r.outcome));
        }
    }
    order
        .into_iter()
        .map(|name| finding(name, &by_name[name]))
        .collect()
}

fn finding(name: &str, runs: &[(u64, Outcome)]) -> Finding {
    let failed = |o: &Outcome| o.failed();
    // An expected failure (XFAIL: the device cannot do it) tested nothing: a skip, as pytest
    // reports it, not a pass.
    let passed = |o: &Outcome| *o == Outcome::Pass;
    let failures = runs.iter().filter(|(_, o)| failed(o)).count();
    let passes = runs.iter().filter(|(_, o)| passed(o)).count();
    let judgement = match (failures, passes) {
        (0, 0) => Judgement::Skipped,
        (0, _) => Judgement::Passed,
        (_, 0) => Judgement::Failed,
        _ => {
            let mut failing_seeds: Vec<u64> = Vec::new();
            for (seed, _) in runs.iter().filter(|(_, o)| failed(o)) {
                if !failing_seeds.contains(seed) {
                    failing_seeds.push(*seed);
                }
            }
            let seed_decides = runs
                .iter()
                .filter(|(s, _)| failing_seeds.contains(s))
                .all(|(_, o)| failed(o));
            Judgement::Flaky {
                failing_seeds,
                seed_decides,
            }
        }
    };
    Finding {
        name: name.to_string(),
        judgement,
        runs: u32::try_from(runs.len()).unwrap_or(u32::MAX),
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
    }
}

/// The kernel problems of every attempt, one finding per fingerprint, in the order first seen.
pub fn splats(attempts: &[Attempt]) -> Vec<SplatFinding> {
    let mut found: Vec<SplatFinding> = Vec::new();
    for attempt in attempts {
        for fingerprint in &attempt.splats {
            let at = match found.iter().position(|f| f.fingerprint == *fingerprint) {
                Some(at) => at,
                None => {
                    found.push(SplatFinding {
                        fingerprint: fingerprint.clone(),
                        count: 0,
                        seeds: Vec::new(),
                    });
                    found.len() - 1
                }
            };
            let f = &mut found[at];
            f.count += 1;
            if !f.seeds.contains(&attempt.seed) {
                f.seeds.push(attempt.seed);
            }
        }
    }
    found
}

/// The attempts that decide whether a failure is flaky: for each failed attempt's seed, `k`
/// reruns with it and `k` with new seeds (`new_seed` makes them), in that order.
pub fn reruns(failed_seed: u64, k: u32, mut new_seed: impl FnMut() -> u64) -> Vec<(u64, Why)> {
    let same = (0..k).map(|_| (failed_seed, Why::SameSeed));
    let new: Vec<(u64, Why)> = (0..k).map(|_| (new_seed(), Why::NewSeed)).collect();
    same.chain(new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(seed: u64, results: &[(&str, Outcome)], splats: &[&str]) -> Attempt {
        Attempt {
            seed,
            why: Why::Run,
            results: results.iter().map(|(n, o)| Reported::new(*n, *o)).collect(),
            splats: splats.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn each_subtest_is_judged_over_every_attempt() {
        use Outcome::*;
        let attempts = [
            attempt(
                1,
                &[
                    ("always", Fail),
                    ("sometimes", Fail),
                    ("fine", Pass),
                    ("off", Skip),
                ],
                &[],
            ),
            attempt(
                1,
                &[
                    ("always", Fail),
                    ("sometimes", Fail),
                    ("fine", Pass),
                    ("off", Skip),
                ],
                &[],
            ),
            attempt(
                2,
                &[
                    ("always", Error),
                    ("sometimes", Pass),
                    ("fine", Xfail),
                    ("off", Skip),
                ],
                &[],
            ),
        ];
        let findings = judge(&attempts);
        let verdicts: Vec<(&str, &Judgement, u32)> = findings
            .iter()
            .map(|f| (f.name.as_str(), &f.judgement, f.failures))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("always", &Judgement::Failed, 3),
                (
                    "sometimes",
                    &Judgement::Flaky {
                        failing_seeds: vec![1],
                        seed_decides: true
                    },
                    2
                ),
                ("fine", &Judgement::Passed, 0),
                ("off", &Judgement::Skipped, 0),
            ]
        );
        // The same seed once failing, once passing: timing, not the seed.
        let timing = judge(&[
            attempt(5, &[("t", Outcome::Fail)], &[]),
            attempt(5, &[("t", Outcome::Pass)], &[]),
        ]);
        assert_eq!(
            timing[0].judgement,
            Judgement::Flaky {
                failing_seeds: vec![5],
                seed_decides: false
            }
        );
    }

    #[test]
    fn the_same_splat_in_two_attempts_is_one_finding() {
        let attempts = [
            attempt(1, &[], &["Warning: WARNING: at a.c:1 f+0x1/0x2"]),
            attempt(
                2,
                &[],
                &["Warning: WARNING: at a.c:1 f+0x1/0x2", "Bug: BUG: other"],
            ),
        ];
        let found = splats(&attempts);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].count, found[0].seeds.clone()), (2, vec![1, 2]));
        assert_eq!((found[1].count, found[1].seeds.clone()), (1, vec![2]));
    }

    #[test]
    fn a_failure_is_rerun_k_times_with_its_seed_and_k_with_new_ones() {
        let mut next = 100;
        let planned = reruns(7, 2, || {
            next += 1;
            next
        });
        assert_eq!(
            planned,
            [
                (7, Why::SameSeed),
                (7, Why::SameSeed),
                (101, Why::NewSeed),
                (102, Why::NewSeed)
            ]
        );
    }
}
