//! What each scenario must observe, and which claim of the seed tutorial
//! (`shared/seed/000_fcb7d82b524309f6.txt`) the check answers. This table is the only place
//! expectations live: scenarios report what they saw, the report compares.

#[derive(Debug)]
pub struct Expectation {
    pub scenario: &'static str,
    pub check: &'static str,
    pub expected: Expect,
    pub claim: &'static str,
}

/// What a check's observation must be: a predicate over it, shown in the report's "expected"
/// column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// This text, word for word.
    Is(&'static str),
    /// Anything the scenario saw: a fact worth reporting (which accelerator ran, how long a
    /// failover took), not a verdict.
    Reported,
    /// A number (the observation's first word: `1.31x the bridge's`) of at least this.
    AtLeast(f64),
    /// A number of at most this.
    AtMost(f64),
    /// What the scenario's check of this name observed, word for word (two views of one thing:
    /// the MAC a listing shows and the one the guest has).
    SameAs(&'static str),
}

impl Expect {
    /// Whether `observed` is what this expects; `others` are the scenario's other observations
    /// (for [`Expect::SameAs`]).
    pub fn admits(&self, observed: &str, others: &crate::Observed) -> bool {
        let number = || {
            observed
                .split_whitespace()
                .next()
                .and_then(|w| w.trim_end_matches('x').parse::<f64>().ok())
        };
        match *self {
            Expect::Is(text) => observed == text,
            Expect::Reported => true,
            Expect::AtLeast(least) => number().is_some_and(|n| n >= least),
            Expect::AtMost(most) => number().is_some_and(|n| n <= most),
            Expect::SameAs(check) => others.get(check).is_some_and(|o| o == observed),
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that `{:<12}` in `--list` lines up.
        match self {
            Expect::Is(text) => f.pad(text),
            Expect::Reported => f.pad("(reported)"),
            Expect::AtLeast(n) => f.pad(&format!(">= {n:.2}x")),
            Expect::AtMost(n) => f.pad(&format!("<= {n:.2}x")),
            Expect::SameAs(check) => f.pad(&format!("= {check}")),
        }
    }
}

/// An expectation that the observation is `expected`, word for word.
const fn e(
    scenario: &'static str,
    check: &'static str,
    expected: &'static str,
    claim: &'static str,
) -> Expectation {
    judged(scenario, check, Expect::Is(expected), claim)
}

const fn judged(
    scenario: &'static str,
    check: &'static str,
    expected: Expect,
    claim: &'static str,
) -> Expectation {
    Expectation {
        scenario,
        check,
        expected,
        claim,
    }
}

/// A fact to report: any observation passes, as long as the scenario ran to its end.
const fn reported(scenario: &'static str, check: &'static str, claim: &'static str) -> Expectation {
    judged(scenario, check, Expect::Reported, claim)
}

pub const REACHABLE: &str = "reachable";
pub const UNREACHABLE: &str = "unreachable";

const CONTAINERS: &str =
    "模拟容器: macvlan1/2 in bridge mode in ns1/ns2; `ip netns exec ns2 ping 192.168.88.11` works";
const ISOLATION: &str = "当使用macvlan时，宿主机无法和VM或容器直接进行通讯 (the host cannot talk to its own macvlan children)";
const BRIDGE: &str =
    "Bridge: all endpoints are connected to each other directly through a simple bridge";
const PRIVATE: &str =
    "Private: instances on one parent may not talk to each other, even if the switch does hairpin";
const VEPA: &str = "VEPA: sibling traffic goes out of the parent; the switch must hairpin it back";
const HAIRPIN_HOST: &str = "the isolation is the kernel's (eth0's own frames never enter its macvlans); a switch that reflects them back (hairpin) joins host and children";
const PRIVATE_UNICAST: &str = "Private is enforced on broadcasts the switch reflects (the kernel drops those from a private sibling); \
     unicast with static neighbour entries crosses a hairpinning switch, which qualifies the seed's \"even if the switch does hairpin\"";
const PASSTHRU: &str = "Passthru: allows a single VM to connect to the physical interface directly";
const SOURCE: &str =
    "Source: filters traffic by a list of allowed source MAC addresses (MAC-based VLAN)";
const NIC_LIMIT: &str = "许多 NIC 也会对该物理网卡上的 MAC地址数量有限制。超过这个限制就会影响到系统的性能 (NICs limit the MACs of a port; beyond it performance suffers)";
const SWITCH_LIMIT: &str = "交换机可能会限制同一个物理端口上的 MAC 地址数量 ... 使用 Ipvlan (switches may cap MACs per port; ipvlan is the way out)";
const IPVLAN: &str = "Ipvlan: children share the parent's MAC, the seed's suggested alternative";
const IPVLAN_L3: &str = "ipvlan l3: the parent routes for its children, which do no ARP, so the LAN reaches them only through a route via the host";
const VIRT_INSTALL: &str = "虚机使用macvlan: virt-install --network model=virtio,type=direct,source=eth0,source.mode=bridge; the VMs on two hosts ping each other";
const DOMIFLIST: &str =
    "virsh domiflist: Interface macvtap0, Type direct, Source eth0, Model virtio, MAC";
const VIRSH_CLEANUP: &str = "清理环境: virsh destroy / undefine the VMs";
const MACVTAP_DEFAULT: &str = "使用macvtap的bridge模式，默认是vepa模式 (a macvtap is VEPA unless told otherwise: virt-install asks for bridge)";
const MACVTAP_PASSTHRU: &str = "Passthru: allows a single VM to connect to the physical interface directly (the VM has the NIC's MAC; nothing else may share it)";
const BOND0: &str = "virsh attach-interface testlu-vm --type direct --source bond0 --model virtio (a VM's macvtap, and macvlan children, on a bond)";
const FAILOVER: &str = "bond0 as the parent: an active-backup bond keeps its macvlan children and VMs on the LAN when its active NIC's cable goes (the children announce themselves after the failover)";
const THROUGHPUT: &str = "Macvlan 占用较少的 CPU，同时提供较高的吞吐量 (macvlan uses less CPU and carries more than a bridge): the same small UDP datagrams between two namespaces over macvlan children and over veth pairs on a bridge, as ratios within one run";
const ACROSS_THE_SWITCH: &str = "the same, child to peer: reported, not judged, since under TCG the emulated NICs and the lab's switch bound every setup alike and 1 s runs there vary by ±15% between runs";
const IPVLAN_THROUGHPUT: &str =
    "Ipvlan, the seed's alternative, over the same traffic (ratios to the bridge within one run)";
const WIFI: &str = "IEEE 802.11 不喜欢同一个客户端上有多个 MAC 地址 … 使用 Ipvlan (802.11 dislikes several MACs on one client: an access point talks to the MACs that joined it, so use ipvlan); mac80211_hwsim radios, an open hostapd network";
const PROMISC_REFUTED: &str = "refuted for virtio-net: the kernel never raised eth0's promiscuity (the counter, not just the flag) and QEMU's NIC was never asked to be promiscuous, yet the children worked (their MACs are in its unicast filter)";
const PROMISC: &str = "macvlan必须要开启混杂模式 (macvlan must turn promiscuous mode on)";

pub const EXPECTATIONS: &[Expectation] = &[
    e("seed/containers", "ns2 -> ns1", REACHABLE, CONTAINERS),
    e(
        "seed/host-isolation",
        "host -> child",
        UNREACHABLE,
        ISOLATION,
    ),
    e(
        "seed/host-isolation",
        "child -> host",
        UNREACHABLE,
        ISOLATION,
    ),
    e(
        "seed/host-isolation",
        "peer -> child",
        REACHABLE,
        "children reach the physical network: other hosts reach them",
    ),
    e(
        "seed/host-isolation",
        "host -> child, switch hairpin on",
        REACHABLE,
        HAIRPIN_HOST,
    ),
    e(
        "shim",
        "host -> child via shim",
        REACHABLE,
        "the usual fix: a bridge-mode macvlan of the host's own, routed to the children",
    ),
    e("mode/bridge", "sibling", REACHABLE, BRIDGE),
    e("mode/bridge", "ARP broadcast -> sibling", REACHABLE, BRIDGE),
    e("mode/bridge", "child -> peer", REACHABLE, BRIDGE),
    e("mode/bridge", "ARP broadcast -> peer", REACHABLE, BRIDGE),
    e("mode/bridge", "child -> host", UNREACHABLE, ISOLATION),
    e("mode/private", "sibling, hairpin off", UNREACHABLE, PRIVATE),
    e(
        "mode/private",
        "ARP broadcast -> sibling, hairpin off",
        UNREACHABLE,
        PRIVATE,
    ),
    e("mode/private", "sibling, hairpin on", UNREACHABLE, PRIVATE),
    e(
        "mode/private",
        "ARP broadcast -> sibling, hairpin on",
        UNREACHABLE,
        PRIVATE_UNICAST,
    ),
    e(
        "mode/private",
        "sibling, hairpin on, static neighbours",
        REACHABLE,
        PRIVATE_UNICAST,
    ),
    e("mode/private", "child -> peer", REACHABLE, PRIVATE),
    e("mode/private", "ARP broadcast -> peer", REACHABLE, PRIVATE),
    e(
        "mode/private",
        "child -> host, hairpin off",
        UNREACHABLE,
        ISOLATION,
    ),
    e(
        "mode/private",
        "child -> host, hairpin on",
        UNREACHABLE,
        PRIVATE_UNICAST,
    ),
    e("mode/vepa", "sibling, hairpin off", UNREACHABLE, VEPA),
    e(
        "mode/vepa",
        "ARP broadcast -> sibling, hairpin off",
        UNREACHABLE,
        VEPA,
    ),
    e("mode/vepa", "sibling, hairpin on", REACHABLE, VEPA),
    e(
        "mode/vepa",
        "ARP broadcast -> sibling, hairpin on",
        REACHABLE,
        VEPA,
    ),
    e("mode/vepa", "child -> peer", REACHABLE, VEPA),
    e("mode/vepa", "ARP broadcast -> peer", REACHABLE, VEPA),
    e(
        "mode/vepa",
        "child -> host, hairpin off",
        UNREACHABLE,
        ISOLATION,
    ),
    e(
        "mode/vepa",
        "child -> host, hairpin on",
        REACHABLE,
        HAIRPIN_HOST,
    ),
    e(
        "mode/vepa",
        "sibling echo requests on host1's cable",
        "twice each (out and back)",
        VEPA,
    ),
    e(
        "mode/vepa",
        "default mode",
        "vepa",
        "ip link add ... type macvlan without `mode` makes a VEPA macvlan (the kernel's default)",
    ),
    judged(
        "mode/passthru",
        "child's MAC",
        Expect::SameAs("eth0's MAC"),
        PASSTHRU,
    ),
    reported("mode/passthru", "eth0's MAC", PASSTHRU),
    e(
        "mode/passthru",
        "eth0 promiscuity once the child is up",
        "1",
        PASSTHRU,
    ),
    e("mode/passthru", "child -> peer", REACHABLE, PASSTHRU),
    e(
        "mode/passthru",
        "a second macvlan beside it",
        "refused: Invalid argument",
        PASSTHRU,
    ),
    e(
        "mode/passthru",
        "passthru beside an existing child",
        "refused: Invalid argument",
        PASSTHRU,
    ),
    e(
        "mode/source",
        "child <-> peer (MAC listed)",
        REACHABLE,
        SOURCE,
    ),
    e(
        "mode/source",
        "child <-> other (MAC not listed)",
        UNREACHABLE,
        SOURCE,
    ),
    e(
        "mode/source",
        "child <-> peer after `macaddr del`",
        UNREACHABLE,
        SOURCE,
    ),
    e(
        "mode/source",
        "child <-> peer after `macaddr add` again",
        REACHABLE,
        SOURCE,
    ),
    e(
        "mode/source",
        "child <-> peer after `macaddr flush`",
        UNREACHABLE,
        SOURCE,
    ),
    judged(
        "ipvlan/l2",
        "children's MAC",
        Expect::SameAs("eth0's MAC"),
        IPVLAN,
    ),
    reported("ipvlan/l2", "eth0's MAC", IPVLAN),
    e("ipvlan/l2", "sibling", REACHABLE, IPVLAN),
    e("ipvlan/l2", "child -> peer", REACHABLE, IPVLAN),
    e(
        "ipvlan/l2",
        "child -> host",
        UNREACHABLE,
        "like macvlan, the parent's own stack does not see its children's traffic",
    ),
    e(
        "ipvlan/l2",
        "child's link flags",
        "ARP",
        "ipvlan l2: children answer ARP themselves, all with the parent's MAC",
    ),
    e("ipvlan/l3", "sibling", REACHABLE, IPVLAN),
    judged(
        "ipvlan/l3",
        "children's MAC",
        Expect::SameAs("eth0's MAC"),
        IPVLAN,
    ),
    reported("ipvlan/l3", "eth0's MAC", IPVLAN),
    e(
        "ipvlan/l3",
        "child -> host",
        UNREACHABLE,
        "the host answers an l3 child through eth0, where nobody answers ARP for it",
    ),
    e("ipvlan/l3", "child's link flags", "NOARP", IPVLAN_L3),
    e("ipvlan/l3", "child -> peer", UNREACHABLE, IPVLAN_L3),
    e(
        "ipvlan/l3",
        "child -> peer, peer routing via host1",
        REACHABLE,
        IPVLAN_L3,
    ),
    e(
        "claim/nic-mac-limit",
        "children when the unicast table overflows",
        "65 (the table holds 64)",
        NIC_LIMIT,
    ),
    e(
        "claim/nic-mac-limit",
        "unicast filter after the overflow",
        "off: every unicast frame is taken",
        NIC_LIMIT,
    ),
    e(
        "claim/nic-mac-limit",
        "the child that overflowed it -> peer",
        REACHABLE,
        NIC_LIMIT,
    ),
    e(
        "claim/switch-mac-limit",
        "macvlan children reaching peer, cap of 2 MACs",
        "1 of 3",
        SWITCH_LIMIT,
    ),
    e(
        "claim/switch-mac-limit",
        "ipvlan children reaching peer, same cap",
        "3 of 3",
        SWITCH_LIMIT,
    ),
    e(
        "claim/switch-mac-limit",
        "ipvlan beside macvlan on one parent",
        "refused: Device or resource busy",
        SWITCH_LIMIT,
    ),
    e(
        "nested/macvtap-bridge",
        "vm2 (on host2) -> vm1 (on host1)",
        REACHABLE,
        VIRT_INSTALL,
    ),
    e(
        "nested/macvtap-bridge",
        "host1 -> its own vm1",
        UNREACHABLE,
        ISOLATION,
    ),
    e(
        "nested/macvtap-bridge",
        "peer -> vm1",
        REACHABLE,
        VIRT_INSTALL,
    ),
    e(
        "nested/macvtap-bridge",
        "peer -> vm2",
        REACHABLE,
        VIRT_INSTALL,
    ),
    e(
        "nested/macvtap-bridge",
        "domiflist of vm1",
        "macvtap0 direct eth0 virtio",
        DOMIFLIST,
    ),
    judged(
        "nested/macvtap-bridge",
        "domiflist MAC of vm1",
        Expect::SameAs("vm1's MAC, from inside"),
        DOMIFLIST,
    ),
    reported(
        "nested/macvtap-bridge",
        "vm1's MAC, from inside",
        DOMIFLIST,
    ),
    reported(
        "nested/macvtap-bridge",
        "inner accelerator",
        "the VMs use KVM when their host has /dev/kvm (nested virtualization), else TCG; restored from the nest's saved VM when it has one",
    ),
    e(
        "nested/macvtap-vepa",
        "vm2 -> vm1 on one host, hairpin off",
        UNREACHABLE,
        VEPA,
    ),
    e(
        "nested/macvtap-vepa",
        "vm2 -> vm1 on one host, hairpin on",
        REACHABLE,
        VEPA,
    ),
    e(
        "nested/macvtap-vepa",
        "vm1 -> peer",
        REACHABLE,
        VIRT_INSTALL,
    ),
    judged(
        "claim/throughput",
        "macvlan throughput, ns to ns",
        Expect::AtLeast(1.0),
        THROUGHPUT,
    ),
    judged(
        "claim/throughput",
        "macvlan CPU per GB, ns to ns",
        Expect::AtMost(1.0),
        THROUGHPUT,
    ),
    reported(
        "claim/throughput",
        "macvlan throughput, child to peer",
        ACROSS_THE_SWITCH,
    ),
    reported(
        "claim/throughput",
        "macvlan CPU per GB, child to peer",
        ACROSS_THE_SWITCH,
    ),
    reported(
        "claim/throughput",
        "ipvlan throughput, ns to ns",
        IPVLAN_THROUGHPUT,
    ),
    reported(
        "claim/throughput",
        "ipvlan CPU per GB, ns to ns",
        IPVLAN_THROUGHPUT,
    ),
    reported(
        "claim/throughput",
        "ipvlan throughput, child to peer",
        IPVLAN_THROUGHPUT,
    ),
    reported(
        "claim/throughput",
        "ipvlan CPU per GB, child to peer",
        IPVLAN_THROUGHPUT,
    ),
    e("claim/wifi", "station -> access point", REACHABLE, WIFI),
    e(
        "claim/wifi",
        "stations the access point knows",
        "1",
        "an access point knows the MACs that joined it: the station's own, not its children's",
    ),
    e(
        "claim/wifi",
        "a macvlan child on the station",
        "accepted",
        "the kernel makes the child: nothing refuses it until frames go out",
    ),
    e(
        "claim/wifi",
        "macvlan child -> access point",
        UNREACHABLE,
        WIFI,
    ),
    e(
        "claim/wifi",
        "an ipvlan child on the station",
        "accepted",
        WIFI,
    ),
    e("claim/wifi", "ipvlan child -> access point", REACHABLE, WIFI),
    e("nested/bond0", "active NIC", "eth0", BOND0),
    e("nested/bond0", "peer -> child on bond0", REACHABLE, BOND0),
    e(
        "nested/bond0",
        "vm1 (macvtap on bond0) -> peer",
        REACHABLE,
        BOND0,
    ),
    e("nested/bond0", "domiflist Source of vm1", "bond0", BOND0),
    e(
        "nested/bond0",
        "active NIC after its cable is pulled",
        "eth1",
        FAILOVER,
    ),
    e(
        "nested/bond0",
        "peer -> child 1 after failover",
        REACHABLE,
        FAILOVER,
    ),
    e(
        "nested/bond0",
        "peer -> child 2 after failover",
        REACHABLE,
        FAILOVER,
    ),
    e(
        "nested/bond0",
        "vm1 -> peer after failover",
        REACHABLE,
        FAILOVER,
    ),
    reported("nested/bond0", "failover, as the peer's pings saw it", FAILOVER),
    e(
        "nested/bond0",
        "children's gratuitous ARPs on eth1's cable",
        "192.168.88.11, 192.168.88.12",
        "the children announce themselves on the new NIC: macvlan passes the bond's NETDEV_NOTIFY_PEERS on to them, so the switch relearns them at once",
    ),
    e(
        "nested/cleanup",
        "vm1 -> peer before",
        REACHABLE,
        VIRT_INSTALL,
    ),
    e(
        "nested/cleanup",
        "QEMU processes on host1 while vm1 runs",
        "1",
        VIRT_INSTALL,
    ),
    e(
        "nested/cleanup",
        "macvtap links while vm1 runs",
        "macvtap0",
        VIRT_INSTALL,
    ),
    e(
        "nested/cleanup",
        "tap devices while vm1 runs",
        "1",
        VIRT_INSTALL,
    ),
    e(
        "nested/cleanup",
        "QEMU processes left on host1",
        "none",
        VIRSH_CLEANUP,
    ),
    e(
        "nested/cleanup",
        "macvtap links left",
        "none",
        VIRSH_CLEANUP,
    ),
    e("nested/cleanup", "tap devices left", "none", VIRSH_CLEANUP),
    e(
        "claim/promisc",
        "bridge children reach peer with promisc off",
        REACHABLE,
        PROMISC,
    ),
    e(
        "claim/promisc",
        "children's MACs in the NIC's unicast filter",
        "present",
        PROMISC,
    ),
    e(
        "claim/promisc",
        "eth0's promiscuity counter",
        "0",
        PROMISC_REFUTED,
    ),
    e(
        "claim/promisc",
        "promiscuous mode as QEMU's NIC sees it",
        "off",
        PROMISC_REFUTED,
    ),
    e(
        "cleanup",
        "namespaces left",
        "none",
        "清理环境: ip netns delete ns1/ns2, ip link delete macvlan1/2",
    ),
    e("cleanup", "macvlan links left", "none", "清理环境"),
    e(
        "cleanup",
        "`ip link delete macvlan1` after deleting ns1",
        "fails: device gone with its namespace",
        "清理环境",
    ),
    reported("cleanup", "eth0 before", "清理环境"),
    judged(
        "cleanup",
        "eth0 after",
        Expect::SameAs("eth0 before"),
        "清理环境: eth0 as it was before (state, promiscuity, address)",
    ),
    e(
        "nested/macvtap-passthru",
        "mode of a macvtap made without `mode`",
        "vepa",
        MACVTAP_DEFAULT,
    ),
    judged(
        "nested/macvtap-passthru",
        "passthru macvtap's MAC",
        Expect::SameAs("eth0's MAC"),
        MACVTAP_PASSTHRU,
    ),
    judged(
        "nested/macvtap-passthru",
        "vm1's MAC",
        Expect::SameAs("eth0's MAC"),
        MACVTAP_PASSTHRU,
    ),
    reported("nested/macvtap-passthru", "eth0's MAC", MACVTAP_PASSTHRU),
    e(
        "nested/macvtap-passthru",
        "vm1 -> peer",
        REACHABLE,
        MACVTAP_PASSTHRU,
    ),
    e(
        "nested/macvtap-passthru",
        "a second macvtap beside it",
        "refused: Invalid argument",
        MACVTAP_PASSTHRU,
    ),
];

/// The scenarios, in report order.
pub fn for_scenario(name: &str) -> impl Iterator<Item = &'static Expectation> + '_ {
    EXPECTATIONS.iter().filter(move |e| e.scenario == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_judge_text_word_for_word_and_ratios_by_their_number() {
        let none = crate::Observed::new();
        assert!(Expect::Is(REACHABLE).admits("reachable", &none));
        assert!(!Expect::Is(REACHABLE).admits("reachable ", &none));
        assert!(Expect::AtLeast(1.0).admits("1.19x the bridge's (4.0 against 3.3 Mbit/s)", &none));
        assert!(Expect::AtLeast(1.0).admits("1.00x the bridge's", &none));
        assert!(!Expect::AtLeast(1.0).admits("0.99x the bridge's", &none));
        assert!(Expect::AtMost(1.0).admits("0.79x the bridge's", &none));
        assert!(!Expect::AtMost(1.0).admits("1.01x", &none));
        assert!(
            !Expect::AtLeast(1.0).admits("not observed", &none),
            "no number, no pass"
        );
        assert!(!Expect::AtMost(1.0).admits("NaNx", &none));
        let mut seen = crate::Observed::new();
        seen.insert("vm1's MAC".into(), "52:54:00:00:00:01".into());
        assert!(Expect::SameAs("vm1's MAC").admits("52:54:00:00:00:01", &seen));
        assert!(!Expect::SameAs("vm1's MAC").admits("52:54:00:00:00:02", &seen));
        assert!(!Expect::SameAs("no such check").admits("52:54:00:00:00:01", &seen));
        assert_eq!(format!("{:<10}|", Expect::AtLeast(1.0)), ">= 1.00x  |");
        assert_eq!(format!("{:<12}|", Expect::Reported), "(reported)  |");
    }
}
