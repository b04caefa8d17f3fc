//! What each scenario must observe, and which claim of the seed tutorial
//! (`shared/seed/000_fcb7d82b524309f6.txt`) the check answers. This table is the only place
//! expectations live: scenarios report what they saw, the report compares.

#[derive(Debug)]
pub struct Expectation {
    pub scenario: &'static str,
    pub check: &'static str,
    pub expected: &'static str,
    pub claim: &'static str,
}

const fn e(scenario: &'static str, check: &'static str, expected: &'static str, claim: &'static str) -> Expectation {
    Expectation { scenario, check, expected, claim }
}

pub const REACHABLE: &str = "reachable";
pub const UNREACHABLE: &str = "unreachable";

const CONTAINERS: &str = "模拟容器: macvlan1/2 in bridge mode in ns1/ns2; `ip netns exec ns2 ping 192.168.88.11` works";
const ISOLATION: &str = "当使用macvlan时，宿主机无法和VM或容器直接进行通讯 (the host cannot talk to its own macvlan children)";
const BRIDGE: &str = "Bridge: all endpoints are connected to each other directly through a simple bridge";
const PRIVATE: &str = "Private: instances on one parent may not talk to each other, even if the switch does hairpin";
const VEPA: &str = "VEPA: sibling traffic goes out of the parent; the switch must hairpin it back";
const PROMISC: &str = "macvlan必须要开启混杂模式 (macvlan must turn promiscuous mode on)";

pub const EXPECTATIONS: &[Expectation] = &[
    e("seed/containers", "ns2 -> ns1", REACHABLE, CONTAINERS),
    e("seed/host-isolation", "host -> child", UNREACHABLE, ISOLATION),
    e("seed/host-isolation", "child -> host", UNREACHABLE, ISOLATION),
    e("seed/host-isolation", "peer -> child", REACHABLE, "children reach the physical network: other hosts reach them"),
    e("shim", "host -> child via shim", REACHABLE, "the usual fix: a bridge-mode macvlan of the host's own, routed to the children"),
    e("mode/bridge", "sibling", REACHABLE, BRIDGE),
    e("mode/bridge", "child -> peer", REACHABLE, BRIDGE),
    e("mode/bridge", "child -> host", UNREACHABLE, ISOLATION),
    e("mode/private", "sibling", UNREACHABLE, PRIVATE),
    e("mode/private", "sibling, hairpin on", UNREACHABLE, PRIVATE),
    e("mode/private", "child -> peer", REACHABLE, PRIVATE),
    e("mode/private", "child -> host", UNREACHABLE, ISOLATION),
    e("mode/vepa", "sibling, hairpin off", UNREACHABLE, VEPA),
    e("mode/vepa", "sibling, hairpin on", REACHABLE, VEPA),
    e("mode/vepa", "child -> peer", REACHABLE, VEPA),
    e("mode/vepa", "default mode", "vepa", "ip link add ... type macvlan without `mode` makes a VEPA macvlan (the kernel's default)"),
    e("claim/promisc", "bridge children reach peer with promisc off", REACHABLE, PROMISC),
    e("claim/promisc", "children's MACs in the NIC's unicast filter", "present", PROMISC),
    e("claim/promisc", "verdict for virtio-net", "refuted", PROMISC),
    e("cleanup", "namespaces left", "none", "清理环境: ip netns delete ns1/ns2, ip link delete macvlan1/2"),
    e("cleanup", "macvlan links left", "none", "清理环境"),
    e("cleanup", "`ip link delete macvlan1` after deleting ns1", "fails: device gone with its namespace", "清理环境"),
    e("cleanup", "eth0 as before", "yes", "清理环境"),
];

/// The scenarios, in report order.
pub fn scenario_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for e in EXPECTATIONS {
        if !names.contains(&e.scenario) {
            names.push(e.scenario);
        }
    }
    names
}

pub fn for_scenario(name: &str) -> impl Iterator<Item = &'static Expectation> + '_ {
    EXPECTATIONS.iter().filter(move |e| e.scenario == name)
}
