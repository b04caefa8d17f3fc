//! The scripts in `examples/` do what their comments say, run the way `cargo xtask lab run` runs
//! them: the seed's commands, unchanged, in throwaway guests.

use lab_harness::lan::script::{self, Job, ScriptLan};
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
    let out = script::run(
        &assets(),
        &Job::Script(example("seed-containers.sh")),
        &ScriptLan::default(),
        |_, _| {},
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
    let on = ScriptLan {
        hosts: 2,
        nest: true,
        ..ScriptLan::default()
    };
    let mut streamed = Vec::new();
    let job = Job::Script(example("seed-vm.sh"));
    let out = script::run(&assets(), &job, &on, |stream, b| {
        if stream == lab_harness::Stream::Stdout {
            streamed.extend_from_slice(b)
        }
    })
    .await
    .check();
    assert_eq!(
        streamed, out.stdout,
        "what was shown while it ran is all it printed"
    );
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
