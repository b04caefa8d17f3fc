//! The one list of scenarios: each one's name and the experiment it runs. `cargo xtask lab`,
//! `--list`, the report and the test suite (one test per entry) all iterate [`SCENARIOS`]; the
//! expectations ([`crate::expectations`]) are tied to it by a test that boots nothing. Each
//! experiment returns what it observed; none decides whether that is right.

use std::future::Future;
use std::pin::Pin;

use lab_harness::{Assets, Result};

use crate::{claims, modes, nested, seed, throughput, wifi, Observed};

/// An experiment: boots its guests, observes, tears them down.
pub type Experiment =
    for<'a> fn(&'a Assets) -> Pin<Box<dyn Future<Output = Result<Observed>> + Send + 'a>>;

/// One scenario of the lab.
pub struct Scenario {
    /// `group/what`, as `--only` matches it.
    pub name: &'static str,
    pub run: Experiment,
    /// The kernel it boots whatever the run's is (an id of `kernels/kernels.toml`), for what
    /// the cloud kernels leave out. The lab and the tests provision it beside the run's.
    pub kernel: Option<&'static str>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every scenario, in the order `--list` shows them.
pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "seed/containers",
        run: |a| Box::pin(seed::containers(a)),
        kernel: None,
    },
    Scenario {
        name: "seed/host-isolation",
        run: |a| Box::pin(seed::host_isolation(a, false)),
        kernel: None,
    },
    Scenario {
        name: "shim",
        run: |a| Box::pin(seed::host_isolation(a, true)),
        kernel: None,
    },
    Scenario {
        name: "mode/bridge",
        run: |a| Box::pin(modes::mode(a, "bridge")),
        kernel: None,
    },
    Scenario {
        name: "mode/private",
        run: |a| Box::pin(modes::mode(a, "private")),
        kernel: None,
    },
    Scenario {
        name: "mode/vepa",
        run: |a| Box::pin(modes::mode(a, "vepa")),
        kernel: None,
    },
    Scenario {
        name: "mode/passthru",
        run: |a| Box::pin(modes::passthru(a)),
        kernel: None,
    },
    Scenario {
        name: "mode/source",
        run: |a| Box::pin(modes::source(a)),
        kernel: None,
    },
    Scenario {
        name: "ipvlan/l2",
        run: |a| Box::pin(modes::ipvlan(a, "l2")),
        kernel: None,
    },
    Scenario {
        name: "ipvlan/l3",
        run: |a| Box::pin(modes::ipvlan(a, "l3")),
        kernel: None,
    },
    Scenario {
        name: "claim/nic-mac-limit",
        run: |a| Box::pin(claims::nic_mac_limit(a)),
        kernel: None,
    },
    Scenario {
        name: "claim/switch-mac-limit",
        run: |a| Box::pin(claims::switch_mac_limit(a)),
        kernel: None,
    },
    Scenario {
        name: "claim/promisc",
        run: |a| Box::pin(claims::promisc(a)),
        kernel: None,
    },
    Scenario {
        name: "claim/throughput",
        run: |a| Box::pin(throughput::throughput(a)),
        kernel: None,
    },
    Scenario {
        name: "claim/wifi",
        run: |a| Box::pin(wifi::wifi(a)),
        kernel: Some(wifi::KERNEL),
    },
    Scenario {
        name: "nested/macvtap-bridge",
        run: |a| Box::pin(nested::bridge(a)),
        kernel: None,
    },
    Scenario {
        name: "nested/macvtap-vepa",
        run: |a| Box::pin(nested::vepa(a)),
        kernel: None,
    },
    Scenario {
        name: "nested/macvtap-passthru",
        run: |a| Box::pin(nested::passthru(a)),
        kernel: None,
    },
    Scenario {
        name: "nested/bond0",
        run: |a| Box::pin(nested::bond0(a)),
        kernel: None,
    },
    Scenario {
        name: "nested/cleanup",
        run: |a| Box::pin(nested::cleanup(a)),
        kernel: None,
    },
    Scenario {
        name: "cleanup",
        run: |a| Box::pin(seed::cleanup(a)),
        kernel: None,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The names of [`SCENARIOS`], in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SCENARIOS.iter().map(|s| s.name)
}

pub(crate) async fn run(name: &str, assets: &Assets) -> Result<Observed> {
    match find(name) {
        Some(scenario) => (scenario.run)(assets).await,
        None => Err(lab_harness::Error::Missing {
            what: format!("scenario {name}"),
            fix: "see `cargo xtask lab --list`".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expectations::EXPECTATIONS;

    #[test]
    fn every_scenario_has_expectations_and_every_expectation_a_scenario() {
        for s in SCENARIOS {
            assert!(
                EXPECTATIONS.iter().any(|e| e.scenario == s.name),
                "scenario {} checks nothing: give it expectations",
                s.name
            );
        }
        for e in EXPECTATIONS {
            assert!(
                find(e.scenario).is_some(),
                "expectation {:?} of {:?}: no such scenario",
                e.check,
                e.scenario
            );
        }
    }

    #[test]
    fn names_are_unique_and_checks_unique_within_a_scenario() {
        let mut names: Vec<&str> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len(), "a name twice");
        for s in SCENARIOS {
            let mut checks: Vec<&str> = crate::expectations::for_scenario(s.name)
                .map(|e| e.check)
                .collect();
            let n = checks.len();
            checks.sort_unstable();
            checks.dedup();
            assert_eq!(checks.len(), n, "{}: a check twice", s.name);
        }
    }
}
