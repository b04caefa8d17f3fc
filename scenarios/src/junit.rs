//! The lab's results as JUnit XML (`target/lab/junit.xml`), which GitHub's test summary and other
//! CI systems show as they are: one test suite per scenario, one test case per check, and the
//! seed's claim in each case's message. A scenario that could not run to its end adds one
//! erroring case with what broke.

use quick_junit::{NonSuccessKind, Report as Junit, TestCase, TestCaseStatus, TestSuite};

use crate::{Check, Report, ScenarioReport};

/// The report as JUnit XML.
pub fn junit(report: &Report) -> String {
    let mut junit = Junit::new("macvlan-lab");
    junit.add_test_suites(report.scenarios.iter().map(suite));
    // Serializing values we made ourselves does not fail.
    junit.to_string().unwrap_or_default()
}

fn suite(scenario: &ScenarioReport) -> TestSuite {
    let mut suite = TestSuite::new(scenario.name.clone());
    suite.set_time(scenario.took);
    suite.add_test_cases(
        scenario
            .checks
            .iter()
            .map(|check| case(&scenario.name, check)),
    );
    if let Some(error) = &scenario.error {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status
            .set_message("the scenario could not run to its end")
            .set_description(error.clone());
        let mut case = TestCase::new("run", status);
        case.set_classname(scenario.name.clone());
        suite.add_test_case(case);
    }
    suite
}

fn case(scenario: &str, check: &Check) -> TestCase {
    let status = if check.inconclusive {
        // Neither a pass nor a failure: a skip, with why.
        let mut status = TestCaseStatus::skipped();
        status
            .set_message(format!(
                "inconclusive: expected {}, observed {}",
                check.expected, check.observed
            ))
            .set_description(format!("seed claim: {}", check.claim));
        status
    } else if check.pass {
        TestCaseStatus::success()
    } else {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status
            .set_message(format!(
                "expected {}, observed {}",
                check.expected, check.observed
            ))
            .set_description(format!(
                "seed claim: {}\nexpected: {}\nobserved: {}",
                check.claim, check.expected, check.observed
            ));
        status
    };
    let mut case = TestCase::new(check.name.clone(), status);
    case.set_classname(scenario.to_string());
    // The claim is worth seeing on passing checks too.
    case.extra
        .insert("claim".into(), check.claim.clone().into());
    case
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn check(name: &str, pass: bool) -> Check {
        Check {
            name: name.into(),
            expected: "reachable".into(),
            observed: if pass { "reachable" } else { "unreachable" }.into(),
            pass,
            inconclusive: false,
            claim: "子接口之间可以直接通信".into(),
            reach: None,
        }
    }

    #[test]
    fn one_case_per_check_with_the_claim_and_counts_that_add_up() {
        let scenario = |name: &str, checks: Vec<Check>, error: Option<&str>| ScenarioReport {
            name: name.into(),
            passed: error.is_none() && checks.iter().all(|c| c.pass),
            checks,
            notes: BTreeMap::new(),
            error: error.map(String::from),
            took: Duration::from_millis(2500),
            drawing: Default::default(),
        };
        let report = Report {
            kernel: "6.1".into(),
            qemu: "7.2".into(),
            accel: "tcg".into(),
            boots: Default::default(),
            image: String::new(),
            packages: Vec::new(),
            scenarios: vec![
                scenario(
                    "mode/bridge",
                    vec![check("sibling", true), check("peer", false)],
                    None,
                ),
                scenario(
                    "mode/vepa",
                    vec![check("sibling", true)],
                    Some("host1: boot failed <&>"),
                ),
            ],
        };
        let xml = junit(&report);
        let doc =
            roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("valid XML: {e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(
            (
                root.attribute("tests"),
                root.attribute("failures"),
                root.attribute("errors")
            ),
            (Some("4"), Some("1"), Some("1")),
            "{xml}"
        );
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 4, "three checks and one broken run");
        let failed = cases
            .iter()
            .find(|c| c.attribute("name") == Some("peer"))
            .expect("the failed check");
        assert_eq!(failed.attribute("classname"), Some("mode/bridge"));
        let failure = failed
            .children()
            .find(|n| n.has_tag_name("failure"))
            .expect("its failure");
        assert_eq!(
            failure.attribute("message"),
            Some("expected reachable, observed unreachable")
        );
        assert!(
            failure
                .text()
                .unwrap_or_default()
                .contains("seed claim: 子接口之间可以直接通信"),
            "{xml}"
        );
        let error = doc
            .descendants()
            .find(|n| n.has_tag_name("error"))
            .expect("the broken run");
        assert!(
            error.text().unwrap_or_default().contains("boot failed <&>"),
            "escaped and kept: {xml}"
        );
    }
}
