//! The scripts in `examples/` do what their comments say, run the way `cargo xtask lab run` runs
//! them: the seed's commands, unchanged, in throwaway guests. (The topology files carry their
//! own checks, run by `cargo xtask lab test`: `xtask/tests/lab_test.rs`.)

use lab_harness::{Job, Lab};
use lab_tests::{assets, Check};
use rstest::rstest;

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[rstest]
#[tokio::test]
async fn seed_containers_ping_each_other_and_clean_up() {
    let out = lab_tests::run_job(
        &assets(),
        &Job::Script(example("seed-containers.sh")),
        lab_tests::lan(&assets(), 1, &Default::default()),
    )
    .await
    .check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.success(),
        "exit {:?}\n{stdout}\n{}",
        out.code,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 packets transmitted, 3 received"),
        "{stdout}"
    );
}

#[rstest]
#[tokio::test]
async fn seed_vm_reaches_the_lan_but_not_its_host_until_the_shim() {
    let assets = assets();
    let on = Lab::builder(&assets, "lab-run")
        .host("host1")
        .with(|h| h.nest = true)
        .host("host2")
        .numbered()
        .spec()
        .check();
    let job = Job::Script(example("seed-vm.sh"));
    let out = lab_tests::run_job(&assets, &job, on).await.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.success(),
        "exit {:?}\n{stdout}\n{}",
        out.code,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "vm1 -> host2: reachable",
        "host1 -> vm1: unreachable",
        "host1 -> vm1 via shim: reachable",
        " macvtap0    direct   eth0",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("macvtap0@"),
        "the macvtap is gone after cleanup:\n{stdout}"
    );
}
