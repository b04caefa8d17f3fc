//! `cargo xtask lab up FILE.toml` on a real terminal: each example's LAN comes up inside tmux with
//! a shell per host in panes of its own, and what a person types there shows what the file set.

use std::path::Path;
use std::time::Duration;

mod support;
use support::terminal::{Pane, Terminal};

const BOOT: Duration = Duration::from_secs(180);

/// `lab up examples/NAME.toml` in a fresh tmux session whose hosts' shells are all at their
/// prompts; the session's first pane says `UP-EXIT=N` when `lab up` ends.
fn up(name: &str, hosts: &[&str]) -> Terminal {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}.toml"));
    let term = Terminal::start(
        &format!("up-{name}"),
        &format!(
            "RUST_BACKTRACE=0 {xtask} lab up {}; echo UP-EXIT=$?; sleep 120",
            file.display()
        ),
    );
    term.wait_for_panes(hosts.len(), BOOT);
    for (i, host) in hosts.iter().enumerate() {
        term.pane_at(i)
            .wait_for(&format!("root@{host}:"), 1, Duration::from_secs(60));
    }
    term
}

/// Types `ping ARGS` (after `marker`, so that an earlier ping's summary is not read) and returns
/// ping's summary: the least RTT in ms (if any reply came; what the cable adds, whatever a busy
/// machine adds on top) and the loss in %.
fn ping(pane: &Pane, marker: &str, args: &str, within: Duration) -> (Option<f64>, f64) {
    // Marks before and after, as the shell prints them (the typed line shows `$((1+1))`):
    // ping's summary is two lines, and a screen taken between them has the loss but not the
    // RTT, so only the mark after it says the summary is whole.
    pane.type_line(&format!(
        "echo {marker}-$((1+1)); ping {args}; echo {marker}-done-$((2+2))"
    ));
    let (shown, done) = (format!("{marker}-2"), format!("{marker}-done-4"));
    let summary = |screen: &str| {
        let from = screen.rfind(&shown)?;
        let to = from + screen[from..].find(&done)?;
        Some(screen[from..to].to_string())
    };
    let screen = pane.wait_until(&format!("ping's end after {shown}"), within, |s| {
        summary(s).is_some()
    });
    let between = summary(&screen).expect("waited for");
    assert!(
        between.contains("% packet loss"),
        "ping's summary after {shown}:\n{between}"
    );
    let (_, loss) = lab_tests::ping_stats(&between);
    (lab_tests::ping_min_rtt(&between), loss)
}

/// `exit` in the first host's shell ends `lab up`, its panes and its guests, leaving nothing.
fn exit(term: &Terminal) {
    term.type_line("exit");
    let end = term.wait_for("UP-EXIT=", 1, Duration::from_secs(60));
    assert!(end.contains("UP-EXIT=0"), "lab up's exit:\n{end}");
    assert!(end.contains("nothing was left behind"), "{end}");
    // The other hosts' panes close with the lab.
    term.wait_for_panes(1, Duration::from_secs(20));
}

/// examples/vlan-trunk.toml: VLAN 10 across two trunks, host2's cable 50 ms each way and 1% of
/// frames lost. Both shells ping across; what ping measures is what the file set.
#[test]
fn lab_up_the_vlan_trunk_gives_a_shell_per_host_and_its_bad_cable_measures_as_set() {
    let term = up("vlan-trunk", &["host1", "host2"]);
    let (host1, host2) = (term.pane(), term.pane_at(1));
    assert!(
        host1
            .screen()
            .contains("other hosts' shells are in the panes"),
        "the banner says where host2 is:\n{}",
        host1.screen()
    );
    // The first ping resolves host2 over the VLAN (seconds on a busy machine): not measured.
    host1.type_line("ping -c1 -W10 10.0.10.2 >/dev/null");
    // 400 pings: 1% lost each way on the bad cable is ~8 lost, none lost is 1 in 3000.
    let (rtt, loss) = ping(
        &host1,
        "across",
        "-q -c 400 -i 0.02 -W 2 10.0.10.2",
        Duration::from_secs(90),
    );
    let rtt = rtt.expect("host2 answers");
    assert!(
        (95.0..=160.0).contains(&rtt),
        "least RTT {rtt} ms, 50 ms each way set"
    );
    assert!(
        (0.2..=6.0).contains(&loss),
        "{loss}% of pings lost, 1% each way set"
    );
    let (rtt, _) = ping(
        &host2,
        "back",
        "-c 5 -i 0.2 -W 2 10.0.10.1",
        Duration::from_secs(60),
    );
    let rtt = rtt.expect("host1 answers");
    assert!(
        (95.0..=160.0).contains(&rtt),
        "host2 -> host1: least RTT {rtt} ms"
    );
    exit(&term);
}

/// examples/bond.toml: host1's two NICs in an active-backup bond; the peer reaches it before and
/// after its active NIC goes down.
#[test]
fn lab_up_the_bond_fails_over_while_the_peer_pings_it() {
    let term = up("bond", &["host1", "peer"]);
    let (host1, peer) = (term.pane(), term.pane_at(1));
    let (_, loss) = ping(
        &peer,
        "bonded",
        "-c 3 -W 2 192.168.88.1",
        Duration::from_secs(60),
    );
    assert_eq!(loss, 0.0, "the peer reaches the bond");
    host1.type_line(
        "ip link set eth0 down; sleep 1; grep 'Currently Active' /proc/net/bonding/bond0",
    );
    host1.wait_for("Currently Active Slave: eth1", 1, Duration::from_secs(30));
    let (_, loss) = ping(
        &peer,
        "failed-over",
        "-c 3 -W 2 192.168.88.1",
        Duration::from_secs(60),
    );
    assert!(loss < 100.0, "the peer reaches host1 through eth1");
    exit(&term);
}

/// examples/seed-vm.toml: the tutorial's two hosts, each with a VM on a macvtap (bridge mode).
/// A host reaches the other host's VM but not its own, and the VMs ping each other. (With
/// hairpin on host1's port the switch would hand host1's frames back to its VM, and the
/// tutorial's rule would not hold: the file leaves it off.)
#[test]
fn lab_up_the_seed_vm_lab_has_vms_that_ping_across_hosts_but_not_their_own_host() {
    let term = up("seed-vm", &["host1", "host2"]);
    let (host1, host2) = (term.pane(), term.pane_at(1));
    // Each VM answers once booted: wait for host2's from host1, and host1's from host2.
    for (pane, other) in [(&host1, "192.168.88.22"), (&host2, "192.168.88.21")] {
        pane.type_line(&format!(
            "until ping -c1 -W1 {other} >/dev/null; do sleep 1; done; echo UP-$((40+2))"
        ));
        pane.wait_for("UP-42", 1, Duration::from_secs(240));
    }
    let (_, own) = ping(
        &host1,
        "own",
        "-c 2 -W 1 192.168.88.21",
        Duration::from_secs(30),
    );
    assert_eq!(
        own, 100.0,
        "host1 cannot reach its own VM (宿主机无法和VM直接进行通讯)"
    );
    host1.type_line(
        r#"echo '{"id":1,"op":"run","program":{"script":"ping -c3 -W2 192.168.88.22"},"timeout":20000}' | /init call /tmp/vm.sock 30 | grep -o '"code":[0-9]*' | sed 's/^/VM1-VM2 /'"#,
    );
    let screen = host1.wait_for("VM1-VM2 ", 2, Duration::from_secs(60));
    assert!(
        screen.contains("VM1-VM2 \"code\":0"),
        "vm1 pings vm2 across the switch:\n{screen}"
    );
    exit(&term);
}
