//! What each scenario observes, what each observation must be, and which claim of the seed
//! tutorial (`shared/seed/000_fcb7d82b524309f6.txt`) the check answers. This file is the only
//! place expectations live: scenarios report what they saw, the report compares.
//!
//! A scenario's checks are an enum ([`checks!`]): its experiment records observations under
//! those variants, so a check's name cannot be mistyped. Its table is a function from variant
//! to [`Expectation`], a `match` that the compiler holds to every variant: a check without an
//! expectation does not build. An experiment several scenarios share (`mode/*`, `ipvlan/*`)
//! has one enum, and each scenario's table says `None` for what it does not look at.

/// One check of a scenario as the report shows it: its name, the predicate its observation
/// must meet, and the seed's claim it answers.
///
/// In a scenario's table `K` is its checks' enum, so that [`Expect::SameAs`] and
/// [`Expect::Times`] name another check by its variant; [`list`] resolves those to the checks'
/// names, the form (`K = &'static str`) the report and the judging use.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<K = &'static str> {
    pub check: &'static str,
    pub expected: Expect<K>,
    pub claim: &'static str,
    /// For a reachability check: who tries to reach whom, and under what. The report's
    /// who-reaches-whom matrix and drawing are made from this, never from the check's name.
    pub reach: Option<Reach>,
}

/// A reachability check's edge: `from` tries to reach `to`, with the switch's hairpin as
/// `hairpin` says (`None`: not part of the experiment) and under `condition` besides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Reach {
    pub from: &'static str,
    pub to: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hairpin: Option<bool>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub condition: &'static str,
}

impl Reach {
    /// `to` and what it was tried under: a column of the matrix.
    pub fn column(&self) -> String {
        let mut under: Vec<&str> = Vec::new();
        match self.hairpin {
            Some(true) => under.push("hairpin on"),
            Some(false) => under.push("hairpin off"),
            None => {}
        }
        if !self.condition.is_empty() {
            under.push(self.condition);
        }
        if under.is_empty() {
            self.to.to_string()
        } else {
            format!("{} ({})", self.to, under.join(", "))
        }
    }
}

impl<K: Copy> Expectation<K> {
    /// Marks a reachability check: `from` tries to reach `to`.
    pub const fn reach(mut self, from: &'static str, to: &'static str) -> Self {
        self.reach = Some(Reach {
            from,
            to,
            hairpin: None,
            condition: "",
        });
        self
    }

    /// The switch's hairpin was on (or off) for this reachability check.
    pub const fn hairpin(mut self, on: bool) -> Self {
        if let Some(reach) = &mut self.reach {
            reach.hairpin = Some(on);
        }
        self
    }

    /// What else this reachability check was tried under.
    pub const fn when(mut self, condition: &'static str) -> Self {
        if let Some(reach) = &mut self.reach {
            reach.condition = condition;
        }
        self
    }
}

/// The checks of a scenario, or of an experiment several share: an enum made by [`checks!`].
pub trait Checks: Copy + Ord + std::fmt::Debug + Send + 'static {
    /// Every variant, in the order the report shows them.
    const ALL: &'static [Self];
}

/// A scenario's table: what each of its checks must be (`None`: not looked at in it).
pub type Table<K> = fn(K) -> Option<Expectation<K>>;

/// The expectations `table` holds, in report order, each check another refers to named as
/// the table names it.
pub fn list<K: Checks>(table: Table<K>) -> Vec<Expectation> {
    K::ALL
        .iter()
        .filter_map(|k| table(*k))
        .map(|e| Expectation {
            check: e.check,
            expected: e.expected.named_by(table),
            claim: e.claim,
            reach: e.reach,
        })
        .collect()
}

/// What [`list`] names a check that its own table does not judge: the judging finds no such
/// observation, and a test says which table refers to it.
pub const NOT_JUDGED: &str = "(a check this scenario does not judge)";

/// The names of the checks `table` judges, as the enum spells them (for the test that finds
/// each one recorded by some experiment).
pub fn judged_names<K: Checks>(table: Table<K>) -> Vec<String> {
    K::ALL
        .iter()
        .filter(|k| table(**k).is_some())
        .map(|k| format!("{k:?}"))
        .collect()
}

/// An enum of checks, and its [`Checks::ALL`].
macro_rules! checks {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl Checks for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)*];
        }
    };
}

/// What a check's observation must be: a predicate over it, shown in the report's "expected"
/// column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect<K = &'static str> {
    /// A probe answered (`true`) or not: an [`Observation::Reach`] of that.
    Reaches(bool),
    /// This text, word for word.
    Is(&'static str),
    /// Anything the scenario saw: a fact worth reporting (which accelerator ran, how long a
    /// failover took), not a verdict.
    Reported,
    /// A ratio or count of at least this.
    AtLeast(f64),
    /// A number of at most this.
    AtMost(f64),
    /// What the scenario's other check `K` observed, word for word (two views of one thing:
    /// the MAC a listing shows and the one the guest has).
    SameAs(K),
    /// A count this many times the (non-zero) count the scenario's other check `K` observed:
    /// frames that cross a cable twice each.
    Times(u32, K),
}

impl<K: Copy> Expect<K> {
    /// This predicate with the check it refers to named as `table` names it.
    fn named_by(self, table: fn(K) -> Option<Expectation<K>>) -> Expect {
        let name = |k| table(k).map_or(NOT_JUDGED, |e| e.check);
        match self {
            Expect::Reaches(answered) => Expect::Reaches(answered),
            Expect::Is(text) => Expect::Is(text),
            Expect::Reported => Expect::Reported,
            Expect::AtLeast(n) => Expect::AtLeast(n),
            Expect::AtMost(n) => Expect::AtMost(n),
            Expect::SameAs(k) => Expect::SameAs(name(k)),
            Expect::Times(times, k) => Expect::Times(times, name(k)),
        }
    }
}

impl Expect {
    /// Whether `observed` is what this expects; `others` are the scenario's other observations
    /// (for [`Expect::SameAs`]).
    pub fn admits(&self, observed: &Observation, others: &crate::Labelled) -> bool {
        match *self {
            Expect::Reaches(answered) => *observed == Observation::Reach(answered),
            Expect::Is(text) => observed.to_string() == text,
            Expect::Reported => true,
            // Paired rounds fail a bound only when every round is on its wrong side: rounds
            // on both sides are no verdict ([`Expect::inconclusive`]), and the report says so.
            Expect::AtLeast(least) => match observed {
                Observation::Paired { ratios, .. } => ratios.iter().any(|&r| r >= least),
                _ => observed.number().is_some_and(|n| n >= least),
            },
            Expect::AtMost(most) => match observed {
                Observation::Paired { ratios, .. } => ratios.iter().any(|&r| r <= most),
                _ => observed.number().is_some_and(|n| n <= most),
            },
            // Two views of one thing may come as different kinds (a MAC the guest printed, a
            // MAC parsed): what they show must agree.
            Expect::SameAs(check) => others
                .get(check)
                .is_some_and(|o| o.to_string() == observed.to_string()),
            Expect::Times(times, check) => match (observed, others.get(check)) {
                (Observation::Count(n), Some(Observation::Count(of))) => {
                    *of > 0 && *n == u64::from(times) * of
                }
                _ => false,
            },
        }
    }
}

impl Expect {
    /// Whether `observed` leaves this bound undecided: paired rounds on both sides of it, so
    /// that the spread of the measurement is wider than its distance from the bound (a busy
    /// host's noise). Reported as inconclusive, neither a pass nor a failure.
    pub fn inconclusive(&self, observed: &Observation) -> bool {
        let Observation::Paired { ratios, .. } = observed else {
            return false;
        };
        let bound = match *self {
            Expect::AtLeast(bound) | Expect::AtMost(bound) => bound,
            _ => return false,
        };
        ratios.iter().any(|&r| r >= bound) && ratios.iter().any(|&r| r < bound)
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that `{:<12}` in `--list` lines up.
        match self {
            Expect::Reaches(answered) => f.pad(&Observation::Reach(*answered).to_string()),
            Expect::Is(text) => f.pad(text),
            Expect::Reported => f.pad("(reported)"),
            Expect::AtLeast(n) => f.pad(&format!(">= {n:.2}x")),
            Expect::AtMost(n) => f.pad(&format!("<= {n:.2}x")),
            Expect::SameAs(check) => f.pad(&format!("= {check}")),
            Expect::Times(times, check) => f.pad(&format!("{times} × {check}")),
        }
    }
}

/// An expectation that the observation is `expected`, word for word.
const fn e<K>(check: &'static str, expected: &'static str, claim: &'static str) -> Expectation<K> {
    judged(check, Expect::Is(expected), claim)
}

const fn judged<K>(
    check: &'static str,
    expected: Expect<K>,
    claim: &'static str,
) -> Expectation<K> {
    Expectation {
        check,
        expected,
        claim,
        reach: None,
    }
}

/// A fact to report: any observation passes, as long as the scenario ran to its end.
const fn reported<K>(check: &'static str, claim: &'static str) -> Expectation<K> {
    judged(check, Expect::Reported, claim)
}

use crate::Observation;

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

checks! {
    /// What `seed/containers` observes.
    pub enum SeedContainers {
        Ns2ToNs1,
        Ns2ToNs1V6,
    }
}

pub fn seed_containers(check: SeedContainers) -> Option<Expectation<SeedContainers>> {
    use SeedContainers::*;
    Some(match check {
        Ns2ToNs1 => judged("ns2 -> ns1", Expect::Reaches(true), CONTAINERS).reach("ns2", "ns1"),
        Ns2ToNs1V6 => judged("ns2 -> ns1, IPv6", Expect::Reaches(true), CONTAINERS)
            .reach("ns2", "ns1")
            .when("IPv6"),
    })
}

checks! {
    /// What `seed/host-isolation` observes.
    pub enum SeedHostIsolation {
        HostToChild,
        ChildToHost,
        PeerToChild,
        HostToChildV6,
        ChildToHostV6,
        PeerToChildV6,
        HostToChildSwitchHairpinOn,
    }
}

pub fn seed_host_isolation(check: SeedHostIsolation) -> Option<Expectation<SeedHostIsolation>> {
    use SeedHostIsolation::*;
    Some(match check {
        HostToChild => {
            judged("host -> child", Expect::Reaches(false), ISOLATION).reach("host", "child")
        }
        ChildToHost => {
            judged("child -> host", Expect::Reaches(false), ISOLATION).reach("child", "host")
        }
        PeerToChild => judged(
            "peer -> child",
            Expect::Reaches(true),
            "children reach the physical network: other hosts reach them",
        )
        .reach("peer", "child"),
        // The isolation is macvlan's, below IP: it holds for IPv6 as for IPv4.
        HostToChildV6 => judged("host -> child, IPv6", Expect::Reaches(false), ISOLATION)
            .reach("host", "child")
            .when("IPv6"),
        ChildToHostV6 => judged("child -> host, IPv6", Expect::Reaches(false), ISOLATION)
            .reach("child", "host")
            .when("IPv6"),
        PeerToChildV6 => judged(
            "peer -> child, IPv6",
            Expect::Reaches(true),
            "children reach the physical network: other hosts reach them",
        )
        .reach("peer", "child")
        .when("IPv6"),
        HostToChildSwitchHairpinOn => judged(
            "host -> child, switch hairpin on",
            Expect::Reaches(true),
            HAIRPIN_HOST,
        )
        .reach("host", "child")
        .hairpin(true),
    })
}

checks! {
    /// What `shim` observes.
    pub enum Shim {
        HostToChildViaShim,
    }
}

pub fn shim(check: Shim) -> Option<Expectation<Shim>> {
    use Shim::*;
    Some(match check {
        HostToChildViaShim => judged(
            "host -> child via shim",
            Expect::Reaches(true),
            "the usual fix: a bridge-mode macvlan of the host's own, routed to the children",
        )
        .reach("host", "child via shim"),
    })
}

checks! {
    /// What `mode/bridge`, `mode/private` and `mode/vepa` observe (one experiment, `modes::mode`):
    /// reach by unicast and by broadcast, with the switch's hairpin off, then (not for bridge)
    /// on, and what only one of the modes tries.
    pub enum Mode {
        ChildToPeer,
        ArpToPeer,
        ChildToHost,
        Sibling,
        ArpToSibling,
        ChildToHostHairpinOn,
        SiblingHairpinOn,
        ArpToSiblingHairpinOn,
        ChildToPeerV6,
        ChildToHostV6,
        SiblingV6,
        SiblingHairpinOnV6,
        /// private: unicast with static neighbour entries, the switch hairpinning.
        SiblingStaticNeighbours,
        /// vepa: each echo request to the sibling, as the switch took it in.
        SiblingEchoRequestsAtTheSwitch,
        /// vepa: and as host1's cable carried it, both ways.
        SiblingEchoRequestsOnTheCable,
        /// vepa: the mode of a macvlan made without `mode`.
        DefaultMode,
    }
}

pub fn mode_bridge(check: Mode) -> Option<Expectation<Mode>> {
    use Mode::*;
    Some(match check {
        Sibling => judged("sibling", Expect::Reaches(true), BRIDGE).reach("child", "sibling"),
        ArpToSibling => judged("ARP broadcast -> sibling", Expect::Reaches(true), BRIDGE)
            .reach("ARP broadcast", "sibling"),
        ChildToPeer => {
            judged("child -> peer", Expect::Reaches(true), BRIDGE).reach("child", "peer")
        }
        ArpToPeer => judged("ARP broadcast -> peer", Expect::Reaches(true), BRIDGE)
            .reach("ARP broadcast", "peer"),
        ChildToHost => {
            judged("child -> host", Expect::Reaches(false), ISOLATION).reach("child", "host")
        }
        SiblingV6 => judged("sibling, IPv6", Expect::Reaches(true), BRIDGE)
            .reach("child", "sibling")
            .when("IPv6"),
        ChildToPeerV6 => judged("child -> peer, IPv6", Expect::Reaches(true), BRIDGE)
            .reach("child", "peer")
            .when("IPv6"),
        ChildToHostV6 => judged("child -> host, IPv6", Expect::Reaches(false), ISOLATION)
            .reach("child", "host")
            .when("IPv6"),
        // A bridge's siblings meet inside the kernel: the switch's hairpin changes nothing.
        ChildToHostHairpinOn
        | SiblingHairpinOn
        | SiblingHairpinOnV6
        | ArpToSiblingHairpinOn
        | SiblingStaticNeighbours
        | SiblingEchoRequestsAtTheSwitch
        | SiblingEchoRequestsOnTheCable
        | DefaultMode => return None,
    })
}

pub fn mode_private(check: Mode) -> Option<Expectation<Mode>> {
    use Mode::*;
    Some(match check {
        Sibling => judged("sibling, hairpin off", Expect::Reaches(false), PRIVATE)
            .reach("child", "sibling")
            .hairpin(false),
        ArpToSibling => judged(
            "ARP broadcast -> sibling, hairpin off",
            Expect::Reaches(false),
            PRIVATE,
        )
        .reach("ARP broadcast", "sibling")
        .hairpin(false),
        SiblingHairpinOn => judged("sibling, hairpin on", Expect::Reaches(false), PRIVATE)
            .reach("child", "sibling")
            .hairpin(true),
        ArpToSiblingHairpinOn => judged(
            "ARP broadcast -> sibling, hairpin on",
            Expect::Reaches(false),
            PRIVATE_UNICAST,
        )
        .reach("ARP broadcast", "sibling")
        .hairpin(true),
        SiblingStaticNeighbours => judged(
            "sibling, hairpin on, static neighbours",
            Expect::Reaches(true),
            PRIVATE_UNICAST,
        )
        .reach("child", "sibling")
        .hairpin(true)
        .when("static neighbours"),
        ChildToPeer => {
            judged("child -> peer", Expect::Reaches(true), PRIVATE).reach("child", "peer")
        }
        ArpToPeer => judged("ARP broadcast -> peer", Expect::Reaches(true), PRIVATE)
            .reach("ARP broadcast", "peer"),
        ChildToHost => judged(
            "child -> host, hairpin off",
            Expect::Reaches(false),
            ISOLATION,
        )
        .reach("child", "host")
        .hairpin(false),
        ChildToHostHairpinOn => judged(
            "child -> host, hairpin on",
            Expect::Reaches(false),
            PRIVATE_UNICAST,
        )
        .reach("child", "host")
        .hairpin(true),
        SiblingV6 => judged(
            "sibling, hairpin off, IPv6",
            Expect::Reaches(false),
            PRIVATE,
        )
        .reach("child", "sibling")
        .hairpin(false)
        .when("IPv6"),
        // Neighbour solicitations are multicast: dropped like ARP's broadcasts.
        SiblingHairpinOnV6 => judged(
            "sibling, hairpin on, IPv6",
            Expect::Reaches(false),
            PRIVATE_UNICAST,
        )
        .reach("child", "sibling")
        .hairpin(true)
        .when("IPv6"),
        ChildToPeerV6 => judged("child -> peer, IPv6", Expect::Reaches(true), PRIVATE)
            .reach("child", "peer")
            .when("IPv6"),
        ChildToHostV6 => judged(
            "child -> host, hairpin off, IPv6",
            Expect::Reaches(false),
            ISOLATION,
        )
        .reach("child", "host")
        .hairpin(false)
        .when("IPv6"),
        SiblingEchoRequestsAtTheSwitch | SiblingEchoRequestsOnTheCable | DefaultMode => {
            return None
        }
    })
}

pub fn mode_vepa(check: Mode) -> Option<Expectation<Mode>> {
    use Mode::*;
    const THROUGH_THE_SWITCH: &str = "sibling echo requests through the switch";
    Some(match check {
        Sibling => judged("sibling, hairpin off", Expect::Reaches(false), VEPA).reach("child", "sibling").hairpin(false),
        ArpToSibling => judged("ARP broadcast -> sibling, hairpin off", Expect::Reaches(false), VEPA).reach("ARP broadcast", "sibling").hairpin(false),
        SiblingHairpinOn => judged("sibling, hairpin on", Expect::Reaches(true), VEPA).reach("child", "sibling").hairpin(true),
        ArpToSiblingHairpinOn => judged("ARP broadcast -> sibling, hairpin on", Expect::Reaches(true), VEPA).reach("ARP broadcast", "sibling").hairpin(true),
        ChildToPeer => judged("child -> peer", Expect::Reaches(true), VEPA).reach("child", "peer"),
        ArpToPeer => judged("ARP broadcast -> peer", Expect::Reaches(true), VEPA).reach("ARP broadcast", "peer"),
        ChildToHost => judged("child -> host, hairpin off", Expect::Reaches(false), ISOLATION).reach("child", "host").hairpin(false),
        ChildToHostHairpinOn => judged("child -> host, hairpin on", Expect::Reaches(true), HAIRPIN_HOST).reach("child", "host").hairpin(true),
        SiblingV6 => judged("sibling, hairpin off, IPv6", Expect::Reaches(false), VEPA).reach("child", "sibling").hairpin(false).when("IPv6"),
        SiblingHairpinOnV6 => judged("sibling, hairpin on, IPv6", Expect::Reaches(true), VEPA).reach("child", "sibling").hairpin(true).when("IPv6"),
        ChildToPeerV6 => judged("child -> peer, IPv6", Expect::Reaches(true), VEPA).reach("child", "peer").when("IPv6"),
        ChildToHostV6 => judged("child -> host, hairpin off, IPv6", Expect::Reaches(false), ISOLATION).reach("child", "host").hairpin(false).when("IPv6"),
        SiblingEchoRequestsAtTheSwitch => reported(THROUGH_THE_SWITCH, VEPA),
        // Out to the switch and back in: each request crosses the cable twice.
        SiblingEchoRequestsOnTheCable => judged(
            "sibling echo requests on host1's cable",
            Expect::Times(2, SiblingEchoRequestsAtTheSwitch),
            VEPA,
        ),
        DefaultMode => e(
            "default mode",
            "vepa",
            "ip link add ... type macvlan without `mode` makes a VEPA macvlan (the kernel's default)",
        ),
        SiblingStaticNeighbours => return None,
    })
}

checks! {
    /// What `ipvlan/l2` and `ipvlan/l3` observe (one experiment, `modes::ipvlan`).
    pub enum Ipvlan {
        ChildToPeer,
        Sibling,
        ChildToHost,
        ChildrensMac,
        Eth0sMac,
        ChildsLinkFlags,
        /// l3: with the peer routing to the child through host1.
        ChildToPeerRoutedViaHost1,
        ChildToPeerV6,
        SiblingV6,
        ChildToHostV6,
    }
}

pub fn ipvlan_l2(check: Ipvlan) -> Option<Expectation<Ipvlan>> {
    use Ipvlan::*;
    Some(match check {
        ChildrensMac => judged("children's MAC", Expect::SameAs(Eth0sMac), IPVLAN),
        Eth0sMac => reported("eth0's MAC", IPVLAN),
        Sibling => judged("sibling", Expect::Reaches(true), IPVLAN).reach("child", "sibling"),
        ChildToPeer => {
            judged("child -> peer", Expect::Reaches(true), IPVLAN).reach("child", "peer")
        }
        ChildToHost => judged(
            "child -> host",
            Expect::Reaches(false),
            "like macvlan, the parent's own stack does not see its children's traffic",
        )
        .reach("child", "host"),
        ChildsLinkFlags => e(
            "child's link flags",
            "ARP",
            "ipvlan l2: children answer ARP themselves, all with the parent's MAC",
        ),
        SiblingV6 => judged("sibling, IPv6", Expect::Reaches(true), IPVLAN)
            .reach("child", "sibling")
            .when("IPv6"),
        ChildToPeerV6 => judged("child -> peer, IPv6", Expect::Reaches(true), IPVLAN)
            .reach("child", "peer")
            .when("IPv6"),
        ChildToHostV6 => judged(
            "child -> host, IPv6",
            Expect::Reaches(false),
            "like macvlan, the parent's own stack does not see its children's traffic",
        )
        .reach("child", "host")
        .when("IPv6"),
        // An l2 child is on the LAN itself: nothing to route.
        ChildToPeerRoutedViaHost1 => return None,
    })
}

pub fn ipvlan_l3(check: Ipvlan) -> Option<Expectation<Ipvlan>> {
    use Ipvlan::*;
    Some(match check {
        Sibling => judged("sibling", Expect::Reaches(true), IPVLAN).reach("child", "sibling"),
        ChildrensMac => judged("children's MAC", Expect::SameAs(Eth0sMac), IPVLAN),
        Eth0sMac => reported("eth0's MAC", IPVLAN),
        ChildToHost => judged(
            "child -> host",
            Expect::Reaches(false),
            "the host answers an l3 child through eth0, where nobody answers ARP for it",
        )
        .reach("child", "host"),
        ChildsLinkFlags => e("child's link flags", "NOARP", IPVLAN_L3),
        ChildToPeer => {
            judged("child -> peer", Expect::Reaches(false), IPVLAN_L3).reach("child", "peer")
        }
        ChildToPeerRoutedViaHost1 => judged(
            "child -> peer, peer routing via host1",
            Expect::Reaches(true),
            IPVLAN_L3,
        )
        .reach("child", "peer")
        .when("peer routing via host1"),
        SiblingV6 => judged("sibling, IPv6", Expect::Reaches(true), IPVLAN)
            .reach("child", "sibling")
            .when("IPv6"),
        // Reached across the LAN over IPv4 only with a route on the peer: not repeated for v6.
        ChildToPeerV6 | ChildToHostV6 => return None,
    })
}

checks! {
    /// What `mode/passthru` observes.
    pub enum ModePassthru {
        ChildsMac,
        Eth0sMac,
        Eth0PromiscuityOnceTheChildIsUp,
        ChildToPeer,
        ASecondMacvlanBesideIt,
        PassthruBesideAnExistingChild,
    }
}

pub fn mode_passthru(check: ModePassthru) -> Option<Expectation<ModePassthru>> {
    use ModePassthru::*;
    Some(match check {
        ChildsMac => judged("child's MAC", Expect::SameAs(Eth0sMac), PASSTHRU),
        Eth0sMac => reported("eth0's MAC", PASSTHRU),
        Eth0PromiscuityOnceTheChildIsUp => {
            e("eth0 promiscuity once the child is up", "1", PASSTHRU)
        }
        ChildToPeer => {
            judged("child -> peer", Expect::Reaches(true), PASSTHRU).reach("child", "peer")
        }
        ASecondMacvlanBesideIt => e(
            "a second macvlan beside it",
            "refused: Invalid argument",
            PASSTHRU,
        ),
        PassthruBesideAnExistingChild => e(
            "passthru beside an existing child",
            "refused: Invalid argument",
            PASSTHRU,
        ),
    })
}

checks! {
    /// What `mode/source` observes.
    pub enum ModeSource {
        ChildAndPeerMacListed,
        ChildAndOtherMacNotListed,
        ChildAndPeerAfterMacaddrDel,
        ChildAndPeerAfterMacaddrAddAgain,
        ChildAndPeerAfterMacaddrFlush,
    }
}

pub fn mode_source(check: ModeSource) -> Option<Expectation<ModeSource>> {
    use ModeSource::*;
    Some(match check {
        ChildAndPeerMacListed => {
            judged("child <-> peer (MAC listed)", Expect::Reaches(true), SOURCE)
                .reach("child", "peer (MAC listed)")
        }
        ChildAndOtherMacNotListed => judged(
            "child <-> other (MAC not listed)",
            Expect::Reaches(false),
            SOURCE,
        )
        .reach("child", "other (MAC not listed)"),
        ChildAndPeerAfterMacaddrDel => judged(
            "child <-> peer after `macaddr del`",
            Expect::Reaches(false),
            SOURCE,
        )
        .reach("child", "peer after `macaddr del`"),
        ChildAndPeerAfterMacaddrAddAgain => judged(
            "child <-> peer after `macaddr add` again",
            Expect::Reaches(true),
            SOURCE,
        )
        .reach("child", "peer after `macaddr add` again"),
        ChildAndPeerAfterMacaddrFlush => judged(
            "child <-> peer after `macaddr flush`",
            Expect::Reaches(false),
            SOURCE,
        )
        .reach("child", "peer after `macaddr flush`"),
    })
}

checks! {
    /// What `claim/nic-mac-limit` observes.
    pub enum ClaimNicMacLimit {
        ChildrenWhenTheUnicastTableOverflows,
        UnicastFilterAfterTheOverflow,
        TheChildThatOverflowedItToPeer,
    }
}

pub fn claim_nic_mac_limit(check: ClaimNicMacLimit) -> Option<Expectation<ClaimNicMacLimit>> {
    use ClaimNicMacLimit::*;
    Some(match check {
        ChildrenWhenTheUnicastTableOverflows => e(
            "children when the unicast table overflows",
            "65 (the table holds 64)",
            NIC_LIMIT,
        ),
        UnicastFilterAfterTheOverflow => e(
            "unicast filter after the overflow",
            "off: every unicast frame is taken",
            NIC_LIMIT,
        ),
        TheChildThatOverflowedItToPeer => judged(
            "the child that overflowed it -> peer",
            Expect::Reaches(true),
            NIC_LIMIT,
        )
        .reach("the child that overflowed it", "peer"),
    })
}

checks! {
    /// What `claim/switch-mac-limit` observes.
    pub enum ClaimSwitchMacLimit {
        MacvlanChildrenReachingPeerCapOf2Macs,
        IpvlanChildrenReachingPeerSameCap,
        IpvlanBesideMacvlanOnOneParent,
    }
}

pub fn claim_switch_mac_limit(
    check: ClaimSwitchMacLimit,
) -> Option<Expectation<ClaimSwitchMacLimit>> {
    use ClaimSwitchMacLimit::*;
    Some(match check {
        MacvlanChildrenReachingPeerCapOf2Macs => e(
            "macvlan children reaching peer, cap of 2 MACs",
            "1 of 3",
            SWITCH_LIMIT,
        ),
        IpvlanChildrenReachingPeerSameCap => e(
            "ipvlan children reaching peer, same cap",
            "3 of 3",
            SWITCH_LIMIT,
        ),
        IpvlanBesideMacvlanOnOneParent => e(
            "ipvlan beside macvlan on one parent",
            "refused: Device or resource busy",
            SWITCH_LIMIT,
        ),
    })
}

checks! {
    /// What `nested/macvtap-bridge` observes.
    pub enum NestedMacvtapBridge {
        Vm2OnHost2ToVm1OnHost1,
        Host1ToItsOwnVm1,
        PeerToVm1,
        PeerToVm2,
        DomiflistOfVm1,
        DomiflistMacOfVm1,
        Vm1sMacFromInside,
        InnerAccelerator,
    }
}

pub fn nested_macvtap_bridge(
    check: NestedMacvtapBridge,
) -> Option<Expectation<NestedMacvtapBridge>> {
    use NestedMacvtapBridge::*;
    Some(match check {
        Vm2OnHost2ToVm1OnHost1 => judged("vm2 (on host2) -> vm1 (on host1)", Expect::Reaches(true), VIRT_INSTALL).reach("vm2 (on host2)", "vm1 (on host1)"),
        Host1ToItsOwnVm1 => judged("host1 -> its own vm1", Expect::Reaches(false), ISOLATION).reach("host1", "its own vm1"),
        PeerToVm1 => judged("peer -> vm1", Expect::Reaches(true), VIRT_INSTALL).reach("peer", "vm1"),
        PeerToVm2 => judged("peer -> vm2", Expect::Reaches(true), VIRT_INSTALL).reach("peer", "vm2"),
        DomiflistOfVm1 => e("domiflist of vm1", "macvtap0 direct eth0 virtio", DOMIFLIST),
        DomiflistMacOfVm1 => judged("domiflist MAC of vm1", Expect::SameAs(Vm1sMacFromInside), DOMIFLIST),
        Vm1sMacFromInside => reported("vm1's MAC, from inside", DOMIFLIST),
        InnerAccelerator => reported("inner accelerator", "the VMs use KVM when their host has /dev/kvm (nested virtualization), else TCG; restored from the nest's saved VM when it has one"),
    })
}

checks! {
    /// What `nested/macvtap-vepa` observes.
    pub enum NestedMacvtapVepa {
        Vm2ToVm1OnOneHostHairpinOff,
        Vm2ToVm1OnOneHostHairpinOn,
        Vm1ToPeer,
    }
}

pub fn nested_macvtap_vepa(check: NestedMacvtapVepa) -> Option<Expectation<NestedMacvtapVepa>> {
    use NestedMacvtapVepa::*;
    Some(match check {
        Vm2ToVm1OnOneHostHairpinOff => judged(
            "vm2 -> vm1 on one host, hairpin off",
            Expect::Reaches(false),
            VEPA,
        )
        .reach("vm2", "vm1 on one host")
        .hairpin(false),
        Vm2ToVm1OnOneHostHairpinOn => judged(
            "vm2 -> vm1 on one host, hairpin on",
            Expect::Reaches(true),
            VEPA,
        )
        .reach("vm2", "vm1 on one host")
        .hairpin(true),
        Vm1ToPeer => {
            judged("vm1 -> peer", Expect::Reaches(true), VIRT_INSTALL).reach("vm1", "peer")
        }
    })
}

checks! {
    /// What `claim/throughput` observes.
    pub enum ClaimThroughput {
        MacvlanThroughputNsToNs,
        MacvlanCpuPerGbNsToNs,
        MacvlanThroughputChildToPeer,
        MacvlanCpuPerGbChildToPeer,
        IpvlanThroughputNsToNs,
        IpvlanCpuPerGbNsToNs,
        IpvlanThroughputChildToPeer,
        IpvlanCpuPerGbChildToPeer,
    }
}

pub fn claim_throughput(check: ClaimThroughput) -> Option<Expectation<ClaimThroughput>> {
    use ClaimThroughput::*;
    Some(match check {
        MacvlanThroughputNsToNs => judged(
            "macvlan throughput, ns to ns",
            Expect::AtLeast(1.0),
            THROUGHPUT,
        ),
        MacvlanCpuPerGbNsToNs => judged(
            "macvlan CPU per GB, ns to ns",
            Expect::AtMost(1.0),
            THROUGHPUT,
        ),
        MacvlanThroughputChildToPeer => {
            reported("macvlan throughput, child to peer", ACROSS_THE_SWITCH)
        }
        MacvlanCpuPerGbChildToPeer => {
            reported("macvlan CPU per GB, child to peer", ACROSS_THE_SWITCH)
        }
        IpvlanThroughputNsToNs => reported("ipvlan throughput, ns to ns", IPVLAN_THROUGHPUT),
        IpvlanCpuPerGbNsToNs => reported("ipvlan CPU per GB, ns to ns", IPVLAN_THROUGHPUT),
        IpvlanThroughputChildToPeer => {
            reported("ipvlan throughput, child to peer", IPVLAN_THROUGHPUT)
        }
        IpvlanCpuPerGbChildToPeer => {
            reported("ipvlan CPU per GB, child to peer", IPVLAN_THROUGHPUT)
        }
    })
}

checks! {
    /// What `claim/wifi` observes.
    pub enum ClaimWifi {
        StationToAccessPoint,
        StationsTheAccessPointKnows,
        AMacvlanChildOnTheStation,
        MacvlanChildToAccessPoint,
        AnIpvlanChildOnTheStation,
        IpvlanChildToAccessPoint,
    }
}

pub fn claim_wifi(check: ClaimWifi) -> Option<Expectation<ClaimWifi>> {
    use ClaimWifi::*;
    Some(match check {
        StationToAccessPoint => judged("station -> access point", Expect::Reaches(true), WIFI)
            .reach("station", "access point"),
        StationsTheAccessPointKnows => e(
            "stations the access point knows",
            "1",
            "an access point knows the MACs that joined it: the station's own, not its children's",
        ),
        AMacvlanChildOnTheStation => e(
            "a macvlan child on the station",
            "accepted",
            "the kernel makes the child: nothing refuses it until frames go out",
        ),
        MacvlanChildToAccessPoint => judged(
            "macvlan child -> access point",
            Expect::Reaches(false),
            WIFI,
        )
        .reach("macvlan child", "access point"),
        AnIpvlanChildOnTheStation => e("an ipvlan child on the station", "accepted", WIFI),
        IpvlanChildToAccessPoint => {
            judged("ipvlan child -> access point", Expect::Reaches(true), WIFI)
                .reach("ipvlan child", "access point")
        }
    })
}

checks! {
    /// What `nested/bond0` observes.
    pub enum NestedBond0 {
        ActiveNic,
        PeerToChildOnBond0,
        Vm1MacvtapOnBond0ToPeer,
        DomiflistSourceOfVm1,
        ActiveNicAfterItsCableIsPulled,
        PeerToChild1AfterFailover,
        PeerToChild2AfterFailover,
        Vm1ToPeerAfterFailover,
        FailoverAsThePeersPingsSawIt,
        ChildrensGratuitousArpsOnEth1sCable,
    }
}

pub fn nested_bond0(check: NestedBond0) -> Option<Expectation<NestedBond0>> {
    use NestedBond0::*;
    Some(match check {
        ActiveNic => e("active NIC", "eth0", BOND0),
        PeerToChildOnBond0 => judged("peer -> child on bond0", Expect::Reaches(true), BOND0).reach("peer", "child on bond0"),
        Vm1MacvtapOnBond0ToPeer => judged("vm1 (macvtap on bond0) -> peer", Expect::Reaches(true), BOND0).reach("vm1 (macvtap on bond0)", "peer"),
        DomiflistSourceOfVm1 => e("domiflist Source of vm1", "bond0", BOND0),
        ActiveNicAfterItsCableIsPulled => e("active NIC after its cable is pulled", "eth1", FAILOVER),
        PeerToChild1AfterFailover => judged("peer -> child 1 after failover", Expect::Reaches(true), FAILOVER).reach("peer", "child 1 after failover"),
        PeerToChild2AfterFailover => judged("peer -> child 2 after failover", Expect::Reaches(true), FAILOVER).reach("peer", "child 2 after failover"),
        Vm1ToPeerAfterFailover => judged("vm1 -> peer after failover", Expect::Reaches(true), FAILOVER).reach("vm1", "peer after failover"),
        FailoverAsThePeersPingsSawIt => reported("failover, as the peer's pings saw it", FAILOVER),
        ChildrensGratuitousArpsOnEth1sCable => e("children's gratuitous ARPs on eth1's cable", "192.168.88.11, 192.168.88.12", "the children announce themselves on the new NIC: macvlan passes the bond's NETDEV_NOTIFY_PEERS on to them, so the switch relearns them at once"),
    })
}

checks! {
    /// What `nested/cleanup` observes.
    pub enum NestedCleanup {
        Vm1ToPeerBefore,
        QemuProcessesOnHost1WhileVm1Runs,
        MacvtapLinksWhileVm1Runs,
        TapDevicesWhileVm1Runs,
        QemuProcessesLeftOnHost1,
        MacvtapLinksLeft,
        TapDevicesLeft,
    }
}

pub fn nested_cleanup(check: NestedCleanup) -> Option<Expectation<NestedCleanup>> {
    use NestedCleanup::*;
    Some(match check {
        Vm1ToPeerBefore => judged("vm1 -> peer before", Expect::Reaches(true), VIRT_INSTALL)
            .reach("vm1", "peer before"),
        QemuProcessesOnHost1WhileVm1Runs => {
            e("QEMU processes on host1 while vm1 runs", "1", VIRT_INSTALL)
        }
        MacvtapLinksWhileVm1Runs => e("macvtap links while vm1 runs", "macvtap0", VIRT_INSTALL),
        TapDevicesWhileVm1Runs => e("tap devices while vm1 runs", "1", VIRT_INSTALL),
        QemuProcessesLeftOnHost1 => e("QEMU processes left on host1", "none", VIRSH_CLEANUP),
        MacvtapLinksLeft => e("macvtap links left", "none", VIRSH_CLEANUP),
        TapDevicesLeft => e("tap devices left", "none", VIRSH_CLEANUP),
    })
}

checks! {
    /// What `claim/promisc` observes.
    pub enum ClaimPromisc {
        BridgeChildrenReachPeerWithPromiscOff,
        ChildrensMacsInTheNicsUnicastFilter,
        Eth0sPromiscuityCounter,
        PromiscuousModeAsQemusNicSeesIt,
    }
}

pub fn claim_promisc(check: ClaimPromisc) -> Option<Expectation<ClaimPromisc>> {
    use ClaimPromisc::*;
    Some(match check {
        BridgeChildrenReachPeerWithPromiscOff => judged(
            "bridge children reach peer with promisc off",
            Expect::Reaches(true),
            PROMISC,
        ),
        ChildrensMacsInTheNicsUnicastFilter => e(
            "children's MACs in the NIC's unicast filter",
            "present",
            PROMISC,
        ),
        Eth0sPromiscuityCounter => e("eth0's promiscuity counter", "0", PROMISC_REFUTED),
        PromiscuousModeAsQemusNicSeesIt => e(
            "promiscuous mode as QEMU's NIC sees it",
            "off",
            PROMISC_REFUTED,
        ),
    })
}

checks! {
    /// What `cleanup` observes.
    pub enum Cleanup {
        NamespacesLeft,
        MacvlanLinksLeft,
        IpLinkDeleteMacvlan1AfterDeletingNs1,
        Eth0Before,
        Eth0After,
    }
}

pub fn cleanup(check: Cleanup) -> Option<Expectation<Cleanup>> {
    use Cleanup::*;
    Some(match check {
        NamespacesLeft => e(
            "namespaces left",
            "none",
            "清理环境: ip netns delete ns1/ns2, ip link delete macvlan1/2",
        ),
        MacvlanLinksLeft => e("macvlan links left", "none", "清理环境"),
        IpLinkDeleteMacvlan1AfterDeletingNs1 => e(
            "`ip link delete macvlan1` after deleting ns1",
            "fails: device gone with its namespace",
            "清理环境",
        ),
        Eth0Before => reported("eth0 before", "清理环境"),
        Eth0After => judged(
            "eth0 after",
            Expect::SameAs(Eth0Before),
            "清理环境: eth0 as it was before (state, promiscuity, address)",
        ),
    })
}

checks! {
    /// What `nested/macvtap-passthru` observes.
    pub enum NestedMacvtapPassthru {
        ModeOfAMacvtapMadeWithoutMode,
        PassthruMacvtapsMac,
        Vm1sMac,
        Eth0sMac,
        Vm1ToPeer,
        ASecondMacvtapBesideIt,
    }
}

pub fn nested_macvtap_passthru(
    check: NestedMacvtapPassthru,
) -> Option<Expectation<NestedMacvtapPassthru>> {
    use NestedMacvtapPassthru::*;
    Some(match check {
        ModeOfAMacvtapMadeWithoutMode => e(
            "mode of a macvtap made without `mode`",
            "vepa",
            MACVTAP_DEFAULT,
        ),
        PassthruMacvtapsMac => judged(
            "passthru macvtap's MAC",
            Expect::SameAs(Eth0sMac),
            MACVTAP_PASSTHRU,
        ),
        Vm1sMac => judged("vm1's MAC", Expect::SameAs(Eth0sMac), MACVTAP_PASSTHRU),
        Eth0sMac => reported("eth0's MAC", MACVTAP_PASSTHRU),
        Vm1ToPeer => {
            judged("vm1 -> peer", Expect::Reaches(true), MACVTAP_PASSTHRU).reach("vm1", "peer")
        }
        ASecondMacvtapBesideIt => e(
            "a second macvtap beside it",
            "refused: Invalid argument",
            MACVTAP_PASSTHRU,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_judge_text_word_for_word_and_ratios_and_counts_by_their_number() {
        let none = crate::Labelled::new();
        let text = |t: &str| Observation::Text(t.into());
        let ratio = |r: f64| Observation::Ratio {
            ratio: r,
            of: "the bridge's".into(),
        };
        assert!(Expect::Reaches(true).admits(&Observation::Reach(true), &none));
        assert!(!Expect::Reaches(true).admits(&Observation::Reach(false), &none));
        assert!(
            !Expect::Reaches(true).admits(&text("reachable"), &none),
            "a probe's answer, not text that reads like one"
        );
        assert_eq!(Expect::<&str>::Reaches(false).to_string(), "unreachable");
        assert!(Expect::Is("vepa").admits(&text("vepa"), &none));
        assert!(!Expect::Is("vepa").admits(&text("vepa "), &none));
        assert!(Expect::AtLeast(1.0).admits(&ratio(1.19), &none));
        assert!(Expect::AtLeast(1.0).admits(&ratio(1.0), &none));
        assert!(!Expect::AtLeast(1.0).admits(&ratio(0.99), &none));
        let paired = |ratios: &[f64]| Observation::Paired {
            ratios: ratios.to_vec(),
            of: "the bridge's".into(),
        };
        let above = paired(&[1.3, 1.5]);
        let below = paired(&[0.8, 0.9, 0.95]);
        let straddling = paired(&[0.88, 1.2, 1.05]);
        assert!(Expect::AtLeast(1.0).admits(&above, &none));
        assert!(!Expect::AtLeast(1.0).inconclusive(&above));
        assert!(
            !Expect::AtLeast(1.0).admits(&below, &none),
            "every round below"
        );
        assert!(!Expect::AtLeast(1.0).inconclusive(&below));
        assert!(Expect::AtLeast(1.0).inconclusive(&straddling));
        assert!(Expect::AtMost(1.0).inconclusive(&straddling));
        assert!(Expect::AtMost(1.0).admits(&below, &none));
        assert!(!Expect::AtMost(1.0).admits(&above, &none));
        assert!(!Expect::Reported.inconclusive(&straddling));
        assert!(Expect::AtMost(1.0).admits(&ratio(0.79), &none));
        assert!(!Expect::AtMost(1.0).admits(&ratio(1.01), &none));
        assert!(
            !Expect::AtLeast(1.0).admits(&text("1.5x, but as text"), &none),
            "no number, no pass"
        );
        assert!(!Expect::AtMost(1.0).admits(&ratio(f64::NAN), &none));
        let mac: lab_harness::MacAddr = "52:54:00:00:00:01".parse().expect("a MAC");
        let mut seen = crate::Labelled::new();
        seen.insert("vm1's MAC", Observation::Mac(mac));
        seen.insert("requests through the switch", Observation::Count(4));
        seen.insert("none through the switch", Observation::Count(0));
        assert!(
            Expect::SameAs("vm1's MAC").admits(&text("52:54:00:00:00:01"), &seen),
            "a MAC printed and a MAC parsed agree when they show the same"
        );
        assert!(!Expect::SameAs("vm1's MAC").admits(&text("52:54:00:00:00:02"), &seen));
        assert!(!Expect::SameAs("no such check").admits(&text("52:54:00:00:00:01"), &seen));
        let twice = Expect::Times(2, "requests through the switch");
        assert!(twice.admits(&Observation::Count(8), &seen));
        assert!(!twice.admits(&Observation::Count(4), &seen));
        assert!(!twice.admits(&text("8"), &seen), "a count, not text");
        assert!(
            !Expect::Times(2, "none through the switch").admits(&Observation::Count(0), &seen),
            "twice nothing says nothing"
        );
        assert_eq!(format!("{:<10}|", Expect::AtLeast(1.0)), ">= 1.00x  |");
        assert_eq!(format!("{:<12}|", Expect::Reported), "(reported)  |");
    }
}
