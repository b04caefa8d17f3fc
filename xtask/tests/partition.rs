//! `cargo xtask test --partition k/n`, as CI shards use it: the shards together run the whole
//! suite, each test in exactly one, and each shard's JUnit file says what it ran.

use std::collections::BTreeSet;

mod support;

/// The tests one `cargo xtask test` ran, from the JUnit file it names. A slice of the suite that
/// boots no guest: nextest partitions any filtered set the same way.
fn ran(partition: Option<&str>) -> BTreeSet<String> {
    let mut cmd = support::xtask();
    cmd.arg("test");
    if let Some(p) = partition {
        cmd.args(["--partition", p]);
    }
    cmd.args(["--", "-E", "package(lab-kernels)"]);
    let _lock = support::test_run_lock();
    let out = cmd.output().expect("xtask runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{partition:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let junit = stdout
        .lines()
        .find_map(|l| l.strip_prefix("xtask: JUnit report in "))
        .expect("the JUnit file is named");
    let text = std::fs::read_to_string(junit).expect("JUnit file");
    let doc = roxmltree::Document::parse(&text).expect("valid JUnit XML");
    let names: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            format!(
                "{} {}",
                c.attribute("classname").unwrap_or_default(),
                c.attribute("name").unwrap_or_default()
            )
        })
        .collect();
    let set: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "no test twice in one run");
    let passed = stdout
        .lines()
        .find(|l| l.starts_with("xtask: ") && l.ends_with(" failed"))
        .expect("the tally");
    assert_eq!(
        passed,
        format!("xtask: {} passed, 0 failed", names.len()),
        "the tally matches the JUnit file"
    );
    set
}

#[test]
fn two_shards_run_the_whole_suite_between_them_and_no_test_twice() {
    let whole = ran(None);
    let (one, two) = (ran(Some("1/2")), ran(Some("2/2")));
    assert!(whole.len() >= 10, "a slice worth splitting: {whole:?}");
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both shards have work: {one:?} / {two:?}"
    );
    assert!(
        one.is_disjoint(&two),
        "in both shards: {:?}",
        one.intersection(&two).collect::<Vec<_>>()
    );
    let union: BTreeSet<String> = one.union(&two).cloned().collect();
    assert_eq!(union, whole, "the shards together are the suite");
}
