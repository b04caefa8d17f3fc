//! The scripts in `examples/` do what their comments say, run the way `cargo xtask lab run` runs
//! them: the seed's commands, unchanged, in throwaway guests.

use lab_harness::lan::script::{Job, ScriptLan};
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
        &ScriptLan::default(),
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
    let job = Job::Script(example("seed-vm.sh"));
    let out = lab_tests::run_job(&assets(), &job, &on).await.check();
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

fn topology(name: &str) -> lab_harness::lan::topology::Topology {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    lab_harness::lan::topology::Topology::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The stats line of iputils ping: `(average RTT in ms, % lost)`.
fn ping_summary(stdout: &str) -> (f64, f64) {
    let (avg, loss) = lab_tests::ping_stats(stdout);
    (avg.unwrap_or_else(|| panic!("no RTT in {stdout}")), loss)
}

/// examples/vlan-trunk.toml: host1 reaches host2 over VLAN 10 through two trunks, host2's
/// cable 50 ms each way and 1% lossy; what ping measures is what the file says.
#[rstest]
#[tokio::test]
async fn the_vlan_trunk_topology_pings_across_with_its_delay_and_loss() {
    let on = ScriptLan {
        topology: Some(topology("vlan-trunk.toml")),
        ..ScriptLan::default()
    };
    // The first ping waits for ARP across the VLAN (seconds on a busy machine): measured after.
    let job =
        Job::Script("ping -c1 -W10 10.0.10.2 >/dev/null; ping -c 50 -i 0.1 -W 2 10.0.10.2".into());
    let out = lab_tests::run_job(&assets(), &job, &on).await.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (rtt, loss) = ping_summary(&stdout);
    // 50 ms each way on host2's cable; 1% each way loses ~2% of 50 pings: 0 to a few.
    assert!((95.0..=160.0).contains(&rtt), "RTT {rtt} ms:\n{stdout}");
    assert!(loss <= 12.0, "{loss}% lost:\n{stdout}");
    // Untagged frames have no VLAN on these trunks.
    let untagged = Job::Program(
        ["ping", "-c", "2", "-W", "1", "192.168.88.2"]
            .map(String::from)
            .to_vec(),
    );
    let out = lab_tests::run_job(&assets(), &untagged, &on).await.check();
    assert!(!out.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// examples/bond.toml: host1's two NICs bonded active-backup reach the peer.
#[rstest]
#[tokio::test]
async fn the_bond_topology_bonds_two_nics_that_reach_the_peer() {
    let on = ScriptLan {
        topology: Some(topology("bond.toml")),
        ..ScriptLan::default()
    };
    let job = Job::Script(
        "grep -E 'Bonding Mode|Slave Interface' /proc/net/bonding/bond0 && ping -c 2 -W 2 192.168.88.2"
            .into(),
    );
    let out = lab_tests::run_job(&assets(), &job, &on).await.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Bonding Mode: fault-tolerance (active-backup)",
        "Slave Interface: eth0",
        "Slave Interface: eth1",
        "2 received",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

/// examples/seed-vm.toml parses into the tutorial's two nest hosts, each starting its VM, on
/// plain ports: hairpin would let a host reach its own VM (see xtask/tests/up.rs).
#[test]
fn the_seed_vm_topology_is_two_nest_hosts_starting_vms_on_plain_ports() {
    let t = topology("seed-vm.toml");
    assert_eq!(t.names(), ["host1", "host2"]);
    assert!(t.hosts.iter().all(|h| h.nest));
    assert!(t.hosts.iter().all(|h| h
        .setup
        .iter()
        .any(|c| c.contains("type macvtap mode bridge"))));
    assert!(t.links.is_empty(), "{:?}", t.links);
}
