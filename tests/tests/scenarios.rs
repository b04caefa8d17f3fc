//! The seed's experiments: every scenario of the registry
//! (`lab_scenarios::registry::SCENARIOS`) is a test of its own, named as `cargo xtask lab`
//! names it, which must observe what the expectation table says. Nothing here lists them: a
//! scenario added to the registry is tested.

use lab_scenarios::registry::{Scenario, SCENARIOS};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = SCENARIOS
        .iter()
        .map(|s| Trial::test(s.name, move || behaves_as_expected(s)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn behaves_as_expected(scenario: &'static Scenario) -> Result<(), Failed> {
    let name = scenario.name;
    // A scenario that asks for a kernel of its own (wireless, say) boots that one.
    let assets = match scenario.kernel {
        Some(id) => lab_tests::assets_of(id),
        None => lab_tests::assets(),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let report = runtime.block_on(lab_scenarios::run(name, &assets));
    if report.passed {
        return Ok(());
    }
    let table = lab_scenarios::table(&lab_scenarios::Report {
        kernel: String::new(),
        qemu: String::new(),
        accel: String::new(),
        scenarios: vec![report.clone()],
        boots: Default::default(),
        image: String::new(),
        packages: Vec::new(),
    });
    Err(format!(
        "{name} did not behave as expected:\n{table}{}",
        report.error.unwrap_or_default()
    )
    .into())
}
