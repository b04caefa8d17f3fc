//! The virtual LAN: guests on one segment through the lab's own switch, with hairpin, port
//! security, cable pulls and packet capture.

use std::time::Duration;

use lab_harness::lan::capture::{ethertype, is_icmp, macs, read_frames};
use lab_harness::{Lab, PortPolicy};
use lab_tests::{assets, ping_stats, Check};
use rstest::rstest;

use lab_harness::lab::SETTLE;

/// Boots `names` on one switch, each `192.168.88.<1+i>/24` on `eth0`, the LAN settled.
async fn lan(run: &str, names: &[&str]) -> Lab {
    let lab = names
        .iter()
        .fold(Lab::builder(&assets(), run), |b, n| b.host(n))
        .boot()
        .await
        .check();
    lab.number_hosts().await.check();
    lab
}

fn frames(path: &std::path::Path) -> Vec<Vec<u8>> {
    read_frames(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[rstest]
#[tokio::test]
async fn two_guests_ping_each_other_and_the_capture_holds_arp_and_icmp() {
    let lab = lan("lan-ping", &["host1", "host2"]).await;
    lab.vm("host2")
        .wait_until_succeeds("ping -c1 -W1 192.168.88.1", SETTLE)
        .await
        .check();
    lab.vm("host1")
        .succeed("ping -c3 -i0.2 -W2 192.168.88.2")
        .await
        .check();

    let captured = frames(&lab.capture());
    assert!(
        captured.iter().any(|f| ethertype(f) == Some(0x0806)),
        "an ARP frame was captured"
    );
    assert!(
        captured.iter().filter(|f| is_icmp(f)).count() >= 8,
        "echo requests and replies were captured"
    );
    lab.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn broadcast_reaches_everyone_and_learned_unicast_only_its_port() {
    let lab = lan("lan-learning", &["host1", "host2", "peer"]).await;
    lab.vm("host1")
        .wait_until_succeeds("ping -c1 -W1 192.168.88.2", SETTLE)
        .await
        .check();
    lab.vm("host1")
        .succeed("ping -c10 -i0.1 -W2 192.168.88.2")
        .await
        .check();

    let at_peer = frames(&lab.port_capture("peer"));
    let arp_to_peer = at_peer
        .iter()
        .filter(|f| ethertype(f) == Some(0x0806) && f[..6] == [0xff; 6])
        .count();
    assert!(
        arp_to_peer >= 1,
        "host1's ARP broadcast was flooded to peer"
    );
    let (host1, host2) = (lab.vm("host1").mac(), lab.vm("host2").mac());
    let between = |f: &Vec<u8>| {
        is_icmp(f)
            && macs(f).is_some_and(|(src, dst)| {
                [src, dst] == [host1, host2] || [src, dst] == [host2, host1]
            })
    };
    assert_eq!(
        at_peer.iter().filter(|f| between(f)).count(),
        0,
        "unicast between host1 and host2 never reached peer"
    );
    let at_host2 = frames(&lab.port_capture("host2"));
    assert!(
        at_host2.iter().filter(|f| between(f)).count() >= 20,
        "but it did reach host2"
    );
    lab.shutdown().await.check();
}

/// Two VEPA macvlan children of host1's eth0, in ns1 and ns2: their frames to each other leave
/// through eth0, so only the switch can bring them back.
const VEPA_CHILDREN: &str = "
    for i in 1 2; do
      ip netns add ns$i
      ip link add link eth0 name mv$i type macvlan mode vepa
      ip link set mv$i netns ns$i
      ip -n ns$i addr add 192.168.88.1$i/24 dev mv$i
      ip -n ns$i link set mv$i up
    done";

#[rstest]
#[tokio::test]
async fn hairpin_decides_whether_a_frame_goes_back_out_of_its_port() {
    let lab = lan("lan-hairpin", &["host1", "peer"]).await;
    let host1 = lab.vm("host1");
    host1.succeed(VEPA_CHILDREN).await.check();
    // Both children speak once, so the switch learns their MACs on host1's port.
    for ns in ["ns1", "ns2"] {
        host1
            .wait_until_succeeds(
                lab_harness::Cmd::script("ping -c1 -W1 192.168.88.2").netns(ns),
                SETTLE,
            )
            .await
            .check();
    }
    let mv1_mac = host1
        .succeed("ip -n ns1 -br link show mv1 | awk '{print $3}'")
        .await
        .check();
    host1
        .succeed(format!(
            "ip -n ns2 neigh replace 192.168.88.11 lladdr {} dev mv2",
            mv1_mac.trim()
        ))
        .await
        .check();

    host1
        .fail(lab_harness::Cmd::script("ping -c2 -W1 192.168.88.11").netns("ns2"))
        .await
        .check();
    assert!(
        lab.counters("host1").drop_same_port >= 2,
        "{:?}",
        lab.counters("host1")
    );

    lab.set_policy("host1", PortPolicy::HAIRPIN).check();
    host1
        .succeed(lab_harness::Cmd::script("ping -c2 -W2 192.168.88.11").netns("ns2"))
        .await
        .check();
    lab.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn a_mac_cap_of_one_drops_the_second_mac_and_keeps_the_first() {
    let lab = lan("lan-maccap", &["host1", "peer"]).await;
    let host1 = lab.vm("host1");
    host1
        .wait_until_succeeds("ping -c1 -W1 192.168.88.2", SETTLE)
        .await
        .check();
    lab.set_policy(
        "host1",
        PortPolicy {
            hairpin: false,
            max_macs: Some(1),
            ..PortPolicy::default()
        },
    )
    .check();

    host1
        .succeed("ip netns add c1 && ip link add link eth0 name mv1 type macvlan mode bridge && ip link set mv1 netns c1 \
                  && ip -n c1 addr add 192.168.88.11/24 dev mv1 && ip -n c1 link set mv1 up")
        .await
        .check();
    host1
        .fail(lab_harness::Cmd::script("ping -c2 -W1 192.168.88.2").netns("c1"))
        .await
        .check();
    assert!(
        lab.counters("host1").drop_mac_limit >= 1,
        "{:?}",
        lab.counters("host1")
    );
    assert_eq!(
        lab.switch().learned(lab.port("host1")),
        [host1.mac()],
        "only eth0's MAC was learned"
    );
    host1.succeed("ping -c2 -W2 192.168.88.2").await.check();
    lab.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn pulling_a_cable_cuts_the_guest_off_until_it_is_plugged_back() {
    let lab = lan("lan-cable", &["host1", "peer"]).await;
    let host1 = lab.vm("host1");
    host1
        .wait_until_succeeds("ping -c1 -W1 192.168.88.2", SETTLE)
        .await
        .check();

    lab.cable("host1", false).await.check();
    host1
        .wait_until_succeeds(
            "ip link show eth0 | grep -q NO-CARRIER",
            Duration::from_secs(10),
        )
        .await
        .check();
    host1.fail("ping -c2 -W1 192.168.88.2").await.check();

    lab.cable("host1", true).await.check();
    host1
        .wait_until_succeeds("ping -c1 -W1 192.168.88.2", SETTLE)
        .await
        .check();
    lab.shutdown().await.check();
}

#[rstest]
// Several threads: the test's blocking sends must not starve the switch's tasks of the one
// thread that would drain its socket.
#[tokio::test(flavor = "multi_thread")]
async fn the_switch_survives_garbage_and_a_vanishing_guest() {
    let lab = lan("lan-garbage", &["host1", "host2", "peer"]).await;
    lab.vm("host1")
        .wait_until_succeeds("ping -c1 -W1 192.168.88.3", SETTLE)
        .await
        .check();

    let port = lab.switch().sockets(lab.port("host2")).switch.clone();
    let raw = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    raw.send_to(&[0xde, 0xad], &port).expect("runt");
    raw.send_to(&vec![0x42; 12000], &port).expect("oversize");
    raw.send_to(&[0xff; 64], &port).expect("broadcast source");
    // The switch handles datagrams on its own task: give it a moment to count them.
    let counted = |c: &lab_harness::PortCounters| {
        (c.drop_runt, c.drop_oversize, c.drop_bad_source) == (1, 1, 1)
    };
    lab_harness::wait::until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { Some(()).filter(|()| counted(&lab.counters("host2"))) },
    )
    .await;
    let c = lab.counters("host2");
    assert_eq!(
        (c.drop_runt, c.drop_oversize, c.drop_bad_source),
        (1, 1, 1),
        "{c:?}"
    );
    // Random datagrams, some frame-like: they are counted, some reach the guests as noise,
    // and the LAN carries on.
    let seed = lab_tests::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..500 {
        let frame: Vec<u8> = (0..rng.usize(0..1600)).map(|_| rng.u8(..)).collect();
        raw.send_to(&frame, &port).expect("random frame");
    }
    lab_harness::wait::until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (lab.counters("host2").rx_frames >= 503).then_some(()) },
    )
    .await;
    let received = lab.counters("host2").rx_frames;
    assert!(
        received >= 503,
        "every datagram counted (seed {seed}): {received}"
    );
    lab.vm("host1")
        .succeed("ping -c1 -W2 192.168.88.3")
        .await
        .check();

    // host2's QEMU dies while host1 is talking to it.
    lab.vm("host1")
        .run("ping -c50 -i0.05 -W1 192.168.88.2 >/dev/null &")
        .await
        .check();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lab.vm("host2").qemu_pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill host2");
    lab.vm("host1")
        .succeed("ping -c3 -i0.2 -W2 192.168.88.3")
        .await
        .check();
    lab.vm("peer")
        .succeed("ping -c3 -i0.2 -W2 192.168.88.1")
        .await
        .check();
    // Shutting down a guest whose QEMU is already gone is no error: it is off.
    lab.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn a_guest_with_two_nics_has_a_port_and_a_cable_per_nic_and_clones_their_own_macs() {
    let two_nics = |cfg: &mut lab_harness::VmConfig| cfg.machine.nics = 2;
    let lab = Lab::builder(&assets(), "lan-two-nics")
        .host_with("host1", two_nics)
        .host_with("host2", two_nics)
        .host("peer")
        .boot()
        .await
        .check();
    let ports: Vec<usize> = [
        ("host1", 0),
        ("host1", 1),
        ("host2", 0),
        ("host2", 1),
        ("peer", 0),
    ]
    .iter()
    .map(|&(name, nic)| lab.nic_port(name, nic))
    .collect();
    assert_eq!(
        ports,
        [0, 1, 2, 3, 4],
        "each NIC its own port, a guest's side by side"
    );
    assert_eq!(lab.switch().port_count(), 5);

    // Restored or not, each guest's NICs have the addresses the harness gave them, in the
    // guest and in QEMU's filter; the guests booted together, so one at least is a clone.
    for name in ["host1", "host2"] {
        let vm = lab.vm(name);
        let macs = vm.macs();
        assert_eq!(macs.len(), 2);
        let inside = vm
            .succeed("cat /sys/class/net/eth0/address /sys/class/net/eth1/address")
            .await
            .check();
        let inside: Vec<&str> = inside.lines().collect();
        let expected: Vec<String> = macs.iter().map(ToString::to_string).collect();
        assert_eq!(inside, expected, "{name}: eth0 and eth1 in the guest");
        for (nic, mac) in (0u8..).zip(&expected) {
            let filter = vm.qmp().rx_filter_of(nic).await.check();
            assert_eq!(&filter.main_mac, mac, "{name}: QEMU's eth{nic}");
        }
    }
    assert_ne!(lab.vm("host1").macs()[1], lab.vm("host2").macs()[1]);
    if lab.vm("host1").config().snapshots.is_some() {
        assert!(
            ["host1", "host2"]
                .iter()
                .any(|n| *lab.vm(n).boot_kind() == lab_harness::BootKind::Restored),
            "two guests of one shape booted together: one restores the other's snapshot; {:?}, {:?}",
            lab.vm("host1").boot_kind(),
            lab.vm("host2").boot_kind()
        );
    }

    // host1 talks on eth1 only: the peer reaches it through eth1's port, and eth1's cable
    // alone cuts it off.
    let host1 = lab.vm("host1");
    host1
        .succeed(
            "ip link set eth0 up && ip link set eth1 up && ip addr add 192.168.88.1/24 dev eth1 && \
             for i in $(seq 500); do [ \"$(cat /sys/class/net/eth1/operstate)\" = up ] && exit 0; sleep 0.02; done; exit 1",
        )
        .await
        .check();
    let peer = lab.vm("peer");
    peer.succeed("ip addr add 192.168.88.3/24 dev eth0 && ip link set eth0 up")
        .await
        .check();
    peer.wait_until_succeeds("ping -c1 -W1 192.168.88.1", SETTLE)
        .await
        .check();
    assert_eq!(
        lab.switch().learned(lab.nic_port("host1", 1)),
        [host1.macs()[1]],
        "the switch learned host1's eth1 on eth1's port"
    );
    assert!(!lab
        .switch()
        .learned(lab.nic_port("host1", 0))
        .contains(&host1.macs()[1]));

    lab.nic_cable("host1", 1, false).await.check();
    host1
        .wait_until_succeeds(
            "ip link show eth1 | grep -q NO-CARRIER",
            Duration::from_secs(10),
        )
        .await
        .check();
    host1
        .fail("ip link show eth0 | grep -q NO-CARRIER")
        .await
        .check();
    peer.fail("ping -c2 -W1 192.168.88.1").await.check();
    lab.nic_cable("host1", 1, true).await.check();
    peer.wait_until_succeeds("ping -c1 -W1 192.168.88.1", SETTLE)
        .await
        .check();
    lab.shutdown().await.check();
}

/// 802.1Q through the switch, the case the NixOS driver's switch failed (nixpkgs#182324):
/// VLAN subinterfaces on two trunks ping each other, an access port of the VLAN reaches them
/// untagged, and a VLAN a trunk does not carry is dropped at its port and counted.
#[rstest]
#[tokio::test]
async fn vlan_subinterfaces_ping_across_trunks_and_a_vlan_not_allowed_is_dropped() {
    use lab_harness::PortVlans;
    let lab = lan("lan-vlan", &["host1", "host2", "host3"]).await;
    let port = |vlans| PortPolicy {
        vlans,
        ..PortPolicy::default()
    };
    let trunk = |ids: &[u16]| port(PortVlans::trunk(ids).check());
    lab.set_policy("host1", trunk(&[10, 20])).check();
    lab.set_policy("host2", trunk(&[10])).check();
    lab.set_policy("host3", port(PortVlans::Access(10))).check();
    // What no port can be is refused, naming it, and changes nothing.
    for bad in [
        port(PortVlans::Access(4095)),
        trunk(&[]),
        PortPolicy {
            max_macs: Some(0),
            ..PortPolicy::default()
        },
    ] {
        let e = lab.set_policy("host3", bad).expect_err("no port is so");
        assert!(e.to_string().contains("the port of host3's eth0"), "{e}");
    }
    assert_eq!(
        lab.switch().policy(lab.port("host3")),
        port(PortVlans::Access(10))
    );
    let sub = |vid: u16, n: u8| {
        format!(
            "ip link add link eth0 name eth0.{vid} type vlan id {vid} \
             && ip addr add 10.0.{vid}.{n}/24 dev eth0.{vid} && ip link set eth0.{vid} up"
        )
    };
    let (host1, host2, host3) = (lab.vm("host1"), lab.vm("host2"), lab.vm("host3"));
    host1
        .succeed(format!("{} && {}", sub(10, 1), sub(20, 1)))
        .await
        .check();
    host2
        .succeed(format!("{} && {}", sub(10, 2), sub(20, 2)))
        .await
        .check();
    // The access port's guest knows nothing of VLANs: plain eth0 in 10.0.10.0/24.
    host3
        .succeed("ip addr flush dev eth0 && ip addr add 10.0.10.3/24 dev eth0")
        .await
        .check();
    host1
        .wait_until_succeeds("ping -c1 -W1 10.0.10.2", SETTLE)
        .await
        .check();
    host1.succeed("ping -c2 -W2 10.0.10.3").await.check();
    host3.succeed("ping -c2 -W2 10.0.10.2").await.check();
    // Untagged frames between the trunks have no VLAN to go in: no native VLAN.
    host1.fail("ping -c2 -W1 192.168.88.2").await.check();
    let before = lab.counters("host2").drop_vlan;
    host2.fail("ping -c2 -W1 10.0.20.1").await.check();
    assert!(
        lab.counters("host2").drop_vlan > before,
        "host2's frames of VLAN 20 are dropped at its port: {:?}",
        lab.counters("host2")
    );
    assert!(
        lab.switch()
            .learned_in_vlans(lab.port("host1"))
            .contains(&(10, host1.mac())),
        "learned per VLAN"
    );
    lab.shutdown().await.check();
}

/// A bad cable without root or `tc`: the switch delays and loses what was set on host2's
/// cable, both ways, measured by ping from host1; a good cable again is as before, and an
/// impossible setting is refused naming its field.
#[rstest]
#[tokio::test]
async fn a_bad_cable_delays_and_loses_what_was_set_then_recovers() {
    use lab_harness::{Impairment, Loss};
    let lab = lan("lan-impair", &["host1", "host2"]).await;
    let host1 = lab.vm("host1");
    host1
        .wait_until_succeeds("ping -c1 -W1 192.168.88.2", SETTLE)
        .await
        .check();
    let ping =
        |count: u32, interval: &str| format!("ping -c {count} -i {interval} -W 2 192.168.88.2");
    let (base, _) = ping_stats(&host1.succeed(ping(5, "0.2")).await.check());
    let base = base.expect("an RTT");
    let delayed = Impairment {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(5),
        seed: Some(1),
        ..Impairment::default()
    };
    lab.set_impairment("host2", delayed).check();
    let (rtt, loss) = ping_stats(&host1.succeed(ping(10, "0.2")).await.check());
    let added = rtt.expect("an RTT") - base;
    // 50 ms each way through host2's cable, ± the jitter and TCG's own noise.
    assert!(
        (90.0..=130.0).contains(&added),
        "50 ms of delay each way added {added:.1} ms to a {base:.1} ms RTT"
    );
    assert_eq!(loss, 0.0);
    let lossy = Impairment {
        loss: Loss::Random(0.3),
        seed: Some(42),
        ..Impairment::default()
    };
    lab.set_impairment("host2", lossy).check();
    let out = host1.run(ping(100, "0.02")).await.check();
    let (_, loss) = ping_stats(&String::from_utf8_lossy(&out.stdout));
    // A request and its reply each cross the cable: 1 - 0.7² = 51% of pings go unanswered.
    assert!(
        (35.0..=67.0).contains(&loss),
        "30% loss each way lost {loss}% of pings"
    );
    eprintln!("host2's bad cable: +{added:.1} ms RTT for 50 ms each way, {loss}% of pings lost for 30% each way");
    assert!(lab.counters("host2").impaired_lost > 0);
    lab.set_impairment("host2", Impairment::default()).check();
    let (_, loss) = ping_stats(&host1.succeed(ping(5, "0.2")).await.check());
    assert_eq!(loss, 0.0, "a good cable again");
    let impossible = Impairment {
        loss: Loss::Random(1.5),
        ..Impairment::default()
    };
    let err = lab
        .set_impairment("host2", impossible)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("loss = 150%"), "{err}");
    lab.shutdown().await.check();
}

/// A one-shot iperf3 server in the background, and the wait until port 5201 (1451 in hex)
/// listens, as /proc tells: the image has no `ss`.
const IPERF3_SERVER: &str = "iperf3 -s -1 -D && for i in $(seq 100); do \
     cat /proc/net/tcp /proc/net/tcp6 | awk '$2 ~ /:1451$/ && $4 == \"0A\" {f=1} END {exit !f}' && exit 0; \
     sleep 0.05; done; echo 'iperf3 never listened' >&2; exit 1";

/// What iperf3 -J says arrived, in bits per second.
fn received_bps(json: &str) -> f64 {
    let report: serde_json::Value = serde_json::from_str(json).expect("iperf3's JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no sum_received in {json}"))
}

/// A rate-limited cable without root or `tc`: TCP through host2's cable, limited to 5 Mbit/s,
/// carries about that much by iperf3's count, where the same cable unlimited carries well more.
#[tokio::test]
async fn a_rate_limited_cable_carries_the_rate_set_by_iperf3s_count() {
    use lab_harness::{Extras, Impairment, Size};
    let assets = assets();
    let extras = Extras {
        packages: vec!["iperf3".into()],
        ..Extras::default()
    };
    let size = Size {
        memory_mib: Some(512),
        ..Size::default()
    };
    let builder = ["host1", "host2"]
        .iter()
        .fold(Lab::builder(&assets, "lan-rate"), |b, name| {
            b.host_config(assets.vm_with(name, &extras, size).check())
        });
    let lab = builder.boot().await.check();
    lab.number_hosts().await.check();
    let (host1, host2) = (lab.vm("host1"), lab.vm("host2"));
    let measure = || async {
        host2.succeed(IPERF3_SERVER).await.check();
        let json = host1
            .succeed("iperf3 -c 192.168.88.2 -t 5 -J")
            .await
            .check();
        received_bps(&json)
    };
    let unlimited = measure().await;
    const RATE: f64 = 5e6;
    let limited = Impairment {
        rate_bps: Some(RATE as u64),
        ..Impairment::default()
    };
    lab.set_impairment("host2", limited).check();
    let measured = measure().await;
    eprintln!(
        "iperf3 over host2's cable: {:.1} Mbit/s unlimited, {:.2} Mbit/s limited to {:.0}",
        unlimited / 1e6,
        measured / 1e6,
        RATE / 1e6
    );
    assert!(
        unlimited > 2.0 * RATE,
        "the cable alone must carry more than the limit for the limit to be what is measured: {unlimited}"
    );
    // TCP fills most of a link; frames carry headers iperf3 does not count.
    assert!(
        (0.6 * RATE..=1.05 * RATE).contains(&measured),
        "{measured} bit/s through a cable limited to {RATE}"
    );
    lab.shutdown().await.check();
}
