//! The one list of scenarios: each one's name, the experiment it runs and its table of
//! expectations ([`crate::expectations`]). `cargo xtask lab`, `--list`, the report and the test
//! suite (one test per entry) all iterate [`SCENARIOS`]. Each experiment returns what it
//! observed, under its checks' enum; none decides whether that is right.

use std::future::Future;
use std::pin::Pin;

use lab_harness::{Assets, IpvlanMode, MacvlanMode, Result};

use crate::expectations::{self, Expectation};
use crate::{claims, modes, nested, seed, throughput, wifi, Seen};

/// An experiment: boots its guests, observes, tears them down; what it saw comes back named
/// by its scenario's table.
pub type Experiment =
    for<'a> fn(&'a Assets) -> Pin<Box<dyn Future<Output = Result<Seen>> + Send + 'a>>;

/// One scenario of the lab.
pub struct Scenario {
    /// `group/what`, as `--only` matches it.
    pub name: &'static str,
    pub run: Experiment,
    /// Its checks and what each must be, in report order.
    pub checks: fn() -> Vec<Expectation>,
    /// Those checks' names in its enum (`ChildToPeer`).
    pub check_names: fn() -> Vec<String>,
    /// The kernel it boots whatever the run's is (an id of `kernels/kernels.toml`), for what
    /// the cloud kernels leave out. The lab and the tests provision it beside the run's.
    pub kernel: Option<&'static str>,
    /// A measurement judged by ratios within its run: the lab runs it first, with no other
    /// scenario beside it. Beside three others, `claim/throughput` failed in three of six full
    /// labs (its namespace-to-namespace margins are a few percent on a slow machine); alone it
    /// passed in six of six. (The test suite runs it alone and first too, in
    /// `.config/nextest.toml`.)
    pub alone: bool,
    /// What the report draws of the LAN it builds.
    pub drawing: Drawing,
}

/// The LAN a scenario builds, as the report draws it: host1 holding two macvlan children in
/// namespaces (most), two ipvlan children, or a VM on a macvtap with host2 beside the peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drawing {
    #[default]
    Macvlan,
    Ipvlan,
    Nested,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A [`Scenario`] of an experiment (`|assets| future of Observed<K>`) and its table (a
/// `fn(K) -> Option<Expectation>`): the two must agree on `K`, or it does not build.
macro_rules! scenario {
    ($name:literal, $experiment:expr, $table:path) => {
        scenario!(@make $name, $experiment, $table, None, false)
    };
    ($name:literal, $experiment:expr, $table:path, kernel: $kernel:expr) => {
        scenario!(@make $name, $experiment, $table, Some($kernel), false)
    };
    ($name:literal, $experiment:expr, $table:path, drawing: $drawing:ident) => {
        Scenario {
            drawing: Drawing::$drawing,
            ..scenario!(@make $name, $experiment, $table, None, false)
        }
    };
    ($name:literal, $experiment:expr, $table:path, alone) => {
        scenario!(@make $name, $experiment, $table, None, true)
    };
    (@make $name:literal, $experiment:expr, $table:path, $kernel:expr, $alone:expr) => {
        Scenario {
            name: $name,
            run: |a| Box::pin(async move { Ok(($experiment)(a).await?.labelled($table)) }),
            checks: || expectations::list($table),
            check_names: || expectations::judged_names($table),
            kernel: $kernel,
            alone: $alone,
            drawing: Drawing::Macvlan,
        }
    };
}

/// Every scenario, in the order `--list` shows them.
pub static SCENARIOS: &[Scenario] = &[
    scenario!(
        "seed/containers",
        seed::containers,
        expectations::seed_containers
    ),
    scenario!(
        "seed/host-isolation",
        seed::host_isolation,
        expectations::seed_host_isolation
    ),
    scenario!("shim", seed::shim, expectations::shim),
    scenario!(
        "mode/bridge",
        |a| modes::mode(a, MacvlanMode::Bridge),
        expectations::mode_bridge
    ),
    scenario!(
        "mode/private",
        |a| modes::mode(a, MacvlanMode::Private),
        expectations::mode_private
    ),
    scenario!(
        "mode/vepa",
        |a| modes::mode(a, MacvlanMode::Vepa),
        expectations::mode_vepa
    ),
    scenario!(
        "mode/passthru",
        modes::passthru,
        expectations::mode_passthru
    ),
    scenario!("mode/source", modes::source, expectations::mode_source),
    scenario!(
        "ipvlan/l2",
        |a| modes::ipvlan(a, IpvlanMode::L2),
        expectations::ipvlan_l2,
        drawing: Ipvlan
    ),
    scenario!(
        "ipvlan/l3",
        |a| modes::ipvlan(a, IpvlanMode::L3),
        expectations::ipvlan_l3,
        drawing: Ipvlan
    ),
    scenario!(
        "claim/nic-mac-limit",
        claims::nic_mac_limit,
        expectations::claim_nic_mac_limit
    ),
    scenario!(
        "claim/switch-mac-limit",
        claims::switch_mac_limit,
        expectations::claim_switch_mac_limit
    ),
    scenario!(
        "claim/promisc",
        claims::promisc,
        expectations::claim_promisc
    ),
    scenario!(
        "claim/throughput",
        throughput::throughput,
        expectations::claim_throughput,
        alone
    ),
    scenario!("claim/wifi", wifi::wifi, expectations::claim_wifi, kernel: wifi::KERNEL),
    scenario!(
        "nested/macvtap-bridge",
        nested::bridge,
        expectations::nested_macvtap_bridge,
        drawing: Nested
    ),
    scenario!(
        "nested/macvtap-vepa",
        nested::vepa,
        expectations::nested_macvtap_vepa,
        drawing: Nested
    ),
    scenario!(
        "nested/macvtap-passthru",
        nested::passthru,
        expectations::nested_macvtap_passthru,
        drawing: Nested
    ),
    scenario!(
        "nested/bond0",
        nested::bond0,
        expectations::nested_bond0,
        drawing: Nested
    ),
    scenario!(
        "nested/cleanup",
        nested::cleanup,
        expectations::nested_cleanup,
        drawing: Nested
    ),
    scenario!("cleanup", seed::cleanup, expectations::cleanup),
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The names of [`SCENARIOS`], in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SCENARIOS.iter().map(|s| s.name)
}

pub(crate) async fn run(name: &str, assets: &Assets) -> Result<Seen> {
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
    use crate::expectations::Expect;

    #[test]
    fn every_scenario_checks_something_each_check_once() {
        for s in SCENARIOS {
            let checks = (s.checks)();
            assert!(!checks.is_empty(), "scenario {} checks nothing", s.name);
            let mut names: Vec<&str> = checks.iter().map(|e| e.check).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), checks.len(), "{}: a check twice", s.name);
        }
    }

    #[test]
    fn a_check_compared_with_another_names_one_of_its_scenario() {
        for s in SCENARIOS {
            let checks = (s.checks)();
            for e in &checks {
                if let Expect::SameAs(other) | Expect::Times(_, other) = e.expected {
                    assert!(
                        checks.iter().any(|c| c.check == other),
                        "{}: {:?} is compared with {other:?}, which it does not check",
                        s.name,
                        e.check
                    );
                }
            }
        }
    }

    /// What no experiment records is "not observed" in every run: found here, without a guest.
    #[test]
    fn every_check_a_table_judges_is_recorded_by_some_experiment() {
        let experiments = [
            include_str!("seed.rs"),
            include_str!("modes.rs"),
            include_str!("claims.rs"),
            include_str!("nested.rs"),
            include_str!("throughput.rs"),
            include_str!("wifi.rs"),
        ]
        .concat();
        let words: std::collections::BTreeSet<&str> = experiments
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .collect();
        for s in SCENARIOS {
            for name in (s.check_names)() {
                assert!(
                    words.contains(name.as_str()),
                    "{}: no experiment records {name}, so it would never be observed",
                    s.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len(), "a name twice");
    }
}
