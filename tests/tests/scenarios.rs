//! The seed's experiments: every scenario of `cargo xtask lab`, each in fresh guests, must
//! observe what the expectation table says.

use lab_tests::assets;
use rstest::rstest;

#[rstest]
#[case::seed_containers("seed/containers")]
#[case::seed_host_isolation("seed/host-isolation")]
#[case::shim("shim")]
#[case::mode_bridge("mode/bridge")]
#[case::mode_private("mode/private")]
#[case::mode_vepa("mode/vepa")]
#[case::mode_passthru("mode/passthru")]
#[case::mode_source("mode/source")]
#[case::ipvlan_l2("ipvlan/l2")]
#[case::ipvlan_l3("ipvlan/l3")]
#[case::claim_nic_mac_limit("claim/nic-mac-limit")]
#[case::claim_switch_mac_limit("claim/switch-mac-limit")]
#[case::claim_promisc("claim/promisc")]
#[case::nested_macvtap_bridge("nested/macvtap-bridge")]
#[case::nested_macvtap_vepa("nested/macvtap-vepa")]
#[case::nested_cleanup("nested/cleanup")]
#[case::nested_macvtap_passthru("nested/macvtap-passthru")]
#[case::cleanup("cleanup")]
#[tokio::test]
async fn scenario_behaves_as_expected(#[case] name: &str) {
    let report = lab_scenarios::run(name, &assets()).await;
    let table = lab_scenarios::table(&lab_scenarios::Report {
        kernel: String::new(),
        qemu: String::new(),
        accel: String::new(),
        scenarios: vec![report.clone()],
        boots: Default::default(),
        image: String::new(),
        packages: Vec::new(),
    });
    assert!(
        report.passed,
        "{name} did not behave as expected:\n{table}{}",
        report.error.unwrap_or_default()
    );
}

#[test]
fn every_scenario_with_expectations_is_tested_here() {
    let listed = include_str!("scenarios.rs");
    for name in lab_scenarios::expectations::scenario_names() {
        assert!(
            listed.contains(&format!("(\"{name}\")")),
            "scenario {name} has no test case"
        );
    }
}
