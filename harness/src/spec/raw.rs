//! A lab as it was written ([`RawLan`]), and the one place it is checked ([`RawLan::resolve`]).
//! Numbers stay as wide as any input can give (`i64`) until here, so that a file's, a flag's
//! and a builder's value meet the same range and the same words.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::{
    lan_addresses, Change, Extras, HostSpec, Image, Kernel, Nic, Port, RemoteEnd, Route, Segment,
    Size, Source, Spec, SpecError, Timed,
};
use crate::config::{VmConfig, MAX_CPUS, MAX_MEMORY_MIB, MAX_NICS, MIN_MEMORY_MIB};
use crate::lan::impair::Impairment;
use crate::lan::switch::{BadPolicy, PortPolicy, PortVlans, VlanSet, FDB_MAX};

/// The switch every NIC is plugged into when nothing says otherwise.
pub const DEFAULT_SWITCH: &str = "lan";

/// The most guests one lab takes: each is a QEMU with its own memory, and the flat LAN's
/// addresses (`192.168.88.N`) are counted for a few dozen.
pub const MAX_HOSTS: usize = 64;

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    pub fn new(value: T, source: Source) -> Self {
        Self { value, source }
    }
}

/// A lab as written, unchecked.
#[derive(Debug, Clone)]
pub struct RawLan {
    /// Where the whole of it comes from (named when it has no host).
    pub source: Source,
    /// Names its run directory.
    pub name: String,
    pub hosts: Vec<RawHost>,
    /// Its switches; none declared is one, [`DEFAULT_SWITCH`].
    pub switches: Vec<RawSwitch>,
    pub cables: Vec<RawCable>,
    /// A flat LAN: each host's `eth0` on the first switch that is given no address gets the
    /// LAN's ([`super::lan_addresses`]: `192.168.88.N/24`, `fd00:88::N/64`).
    pub numbered: bool,
    /// Every host reaches every other as root over ssh ([`crate::ssh`]).
    pub ssh: Option<Sourced<bool>>,
    /// The host the first one's drivers/net tests take as their remote end (implies `ssh`).
    pub remote: Option<Sourced<String>>,
    /// What happens to cables while the lab runs, in time.
    pub timeline: Vec<RawAt>,
}

/// A change to a cable at a time after setup, as written.
#[derive(Debug, Clone)]
pub struct RawAt {
    pub source: Source,
    /// Milliseconds after setup.
    pub after_ms: Sourced<i64>,
    pub host: Sourced<String>,
    pub nic: Sourced<i64>,
    /// `"down"` or `"up"`.
    pub link: Option<Sourced<String>>,
    pub impair: Option<Sourced<Impairment>>,
}

/// One guest as written.
#[derive(Debug, Clone)]
pub struct RawHost {
    pub name: Sourced<String>,
    /// A kernel of `kernels/kernels.toml` by id.
    pub kernel: Option<Sourced<String>>,
    /// Or the kernel built in a Linux tree.
    pub kernel_tree: Option<Sourced<PathBuf>>,
    /// MiB.
    pub memory: Option<Sourced<i64>>,
    pub cpus: Option<Sourced<i64>>,
    pub nics: Option<Sourced<i64>>,
    pub nest: bool,
    /// A configuration made in code instead of the base or nest image.
    pub config: Option<Box<VmConfig>>,
    pub packages: Vec<String>,
    pub modules: Vec<String>,
    pub module_sources: Vec<Sourced<PathBuf>>,
    pub dir: Option<Sourced<PathBuf>>,
    /// `(NIC, address/prefix)`, e.g. `("eth0", "10.0.1.1/24")`.
    pub addresses: Vec<Sourced<(String, String)>>,
    pub routes: Vec<Sourced<RawRoute>>,
    pub forwarding: bool,
    pub setup: Vec<String>,
    pub allow_splats: bool,
    pub kmemleak: bool,
}

impl RawHost {
    /// A host of the base image with nothing else said.
    pub fn new(name: Sourced<String>) -> Self {
        Self {
            name,
            kernel: None,
            kernel_tree: None,
            memory: None,
            cpus: None,
            nics: None,
            nest: false,
            config: None,
            packages: Vec::new(),
            modules: Vec::new(),
            module_sources: Vec::new(),
            dir: None,
            addresses: Vec::new(),
            routes: Vec::new(),
            forwarding: false,
            setup: Vec::new(),
            allow_splats: false,
            kmemleak: false,
        }
    }
}

impl RawHost {
    /// Gives it `size`, each number written at `at`.
    pub fn set_size(&mut self, size: &Size, at: &Source) {
        let number = |v: Option<u64>| {
            v.map(|v| Sourced::new(i64::try_from(v).unwrap_or(i64::MAX), at.clone()))
        };
        self.cpus = number(size.cpus.map(u64::from));
        self.memory = number(size.memory_mib.map(u64::from));
        self.nics = number(size.nics.map(u64::from));
    }

    /// Gives it `extras`, each written at `at`.
    pub fn set_extras(&mut self, extras: &Extras, at: &Source) {
        self.packages.clone_from(&extras.packages);
        self.modules.clone_from(&extras.modules);
        self.module_sources = extras
            .module_sources
            .iter()
            .map(|s| Sourced::new(s.clone(), at.clone()))
            .collect();
        self.dir = extras.dir.clone().map(|d| Sourced::new(d, at.clone()));
    }
}

/// A static route as written: `to` a prefix or `default`, `via` a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRoute {
    pub to: String,
    pub via: String,
}

/// A switch as written: its name and what each of its ports is unless its cable says otherwise.
#[derive(Debug, Clone)]
pub struct RawSwitch {
    pub name: Sourced<String>,
    pub port: RawPort,
}

/// A switch port's settings as written; each left out is the switch's, else the default.
#[derive(Debug, Clone, Default)]
pub struct RawPort {
    pub access: Option<Sourced<i64>>,
    pub trunk: Option<Sourced<Vec<i64>>>,
    pub native: Option<Sourced<i64>>,
    pub hairpin: Option<Sourced<bool>>,
    pub max_macs: Option<Sourced<i64>>,
}

/// One cable: a host's NIC to a switch, or to another host's NIC.
#[derive(Debug, Clone)]
pub struct RawCable {
    pub source: Source,
    pub host: Sourced<String>,
    pub nic: Sourced<i64>,
    pub to: RawEnd,
    /// Its switch port's settings (a cable to a switch only).
    pub port: RawPort,
    pub impair: Option<Sourced<Impairment>>,
}

/// The other end of a cable.
#[derive(Debug, Clone)]
pub enum RawEnd {
    /// A switch by name; `None` is the first.
    Switch(Option<Sourced<String>>),
    /// Another host's NIC, with no switch between.
    Host {
        host: Sourced<String>,
        nic: Sourced<i64>,
    },
}

impl RawPort {
    /// The settings of a port given as a policy (a builder's).
    pub fn of_policy(policy: &PortPolicy, source: &Source) -> Self {
        let at = |v| Some(Sourced::new(v, source.clone()));
        let (access, trunk, native) = match policy.vlans {
            PortVlans::Unaware => (None, None, None),
            PortVlans::Access(id) => (at(i64::from(id)), None, None),
            PortVlans::Trunk { native, allowed } => (
                None,
                Some(Sourced::new(
                    allowed.ids().map(i64::from).collect(),
                    source.clone(),
                )),
                native.and_then(|id| at(i64::from(id))),
            ),
        };
        Self {
            access,
            trunk,
            native,
            hairpin: Some(Sourced::new(policy.hairpin, source.clone())),
            max_macs: policy
                .max_macs
                .and_then(|m| at(i64::try_from(m).unwrap_or(i64::MAX))),
        }
    }

    fn is_empty(&self) -> bool {
        self.access.is_none()
            && self.trunk.is_none()
            && self.native.is_none()
            && self.hairpin.is_none()
            && self.max_macs.is_none()
    }

    /// These settings, each left out taken from `defaults`. VLAN membership goes as a whole:
    /// a port that says `access` or `trunk` says all of it.
    fn over(&self, defaults: &RawPort) -> RawPort {
        let vlans_given = self.access.is_some() || self.trunk.is_some() || self.native.is_some();
        let (access, trunk, native) = if vlans_given {
            (self.access.clone(), self.trunk.clone(), self.native.clone())
        } else {
            (
                defaults.access.clone(),
                defaults.trunk.clone(),
                defaults.native.clone(),
            )
        };
        RawPort {
            access,
            trunk,
            native,
            hairpin: self.hairpin.clone().or_else(|| defaults.hairpin.clone()),
            max_macs: self.max_macs.clone().or_else(|| defaults.max_macs.clone()),
        }
    }

    /// The policy these settings make, checked by the switch's own rules.
    fn policy(&self) -> Result<PortPolicy, SpecError> {
        // An id past u16 fits no `BadVlan`: refused here, in its words; the rest by the switch.
        let vlan = |v: &Sourced<i64>| {
            u16::try_from(v.value).map_err(|_| {
                SpecError::new(
                    &v.source,
                    format!("VLAN {} is not a VLAN id: give one from 1 to 4094", v.value),
                )
            })
        };
        if let (Some(native), None) = (&self.native, &self.trunk) {
            return Err(SpecError::new(
                &native.source,
                "native names a trunk's untagged VLAN, but this port is no trunk: give `trunk = [...]`, or use `access` for an untagged port",
            ));
        }
        let vlans = match (&self.access, &self.trunk) {
            (Some(_), Some(t)) => {
                return Err(SpecError::new(
                    &t.source,
                    "a port is an access port or a trunk, not both",
                ))
            }
            (Some(a), None) => PortVlans::Access(vlan(a)?),
            (None, Some(t)) => {
                let mut allowed = VlanSet::EMPTY;
                for &id in &t.value {
                    let id = vlan(&Sourced::new(id, t.source.clone()))?;
                    allowed
                        .insert(id)
                        .map_err(|e| SpecError::new(&t.source, format!("trunk: {e}")))?;
                }
                let native = self.native.as_ref().map(vlan).transpose()?;
                PortVlans::Trunk { native, allowed }
            }
            (None, None) => PortVlans::Unaware,
        };
        let max_macs = self
            .max_macs
            .as_ref()
            .map(|m| usize::try_from(m.value).unwrap_or(usize::MAX));
        let policy = PortPolicy {
            hairpin: self.hairpin.as_ref().is_some_and(|h| h.value),
            max_macs,
            vlans,
        };
        // The switch's rules, said once (`PortPolicy::validate`), each refusal at the field
        // it is about.
        policy.validate().map_err(|e| {
            let at = match &e {
                BadPolicy::MaxMacs(_) => self.max_macs.as_ref().map(|m| &m.source),
                BadPolicy::EmptyTrunk => self.trunk.as_ref().map(|t| &t.source),
                BadPolicy::Vlan(_) => self
                    .access
                    .as_ref()
                    .or(self.native.as_ref())
                    .map(|v| &v.source)
                    .or(self.trunk.as_ref().map(|t| &t.source)),
            };
            let message = match e {
                BadPolicy::MaxMacs(_) => format!(
                    "max_macs = {} is out of range: give 1 to {FDB_MAX} addresses",
                    self.max_macs.as_ref().map_or(0, |m| m.value)
                ),
                BadPolicy::EmptyTrunk => "trunk = [] carries no VLAN: name at least one, or leave `trunk` out for a plain port".into(),
                BadPolicy::Vlan(v) => v.to_string(),
            };
            SpecError::new(at.unwrap_or(&Source::Call("PortPolicy".into())), message)
        })?;
        Ok(policy)
    }
}

/// `value` if it lies in `range`, else a refusal at its source naming the range.
fn within(
    field: &str,
    value: &Sourced<i64>,
    range: std::ops::RangeInclusive<i64>,
    unit: &str,
) -> Result<i64, SpecError> {
    if range.contains(&value.value) {
        Ok(value.value)
    } else {
        Err(SpecError::new(
            &value.source,
            format!(
                "{field} = {} is out of range: give {} to {}{unit}",
                value.value,
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Refuses `name` when one of the `earlier` names of its `kind` (a host, a switch) is the same,
/// naming where that one was written.
fn named_once<'a>(
    kind: &str,
    name: &Sourced<String>,
    mut earlier: impl Iterator<Item = &'a Sourced<String>>,
) -> Result<(), SpecError> {
    match earlier.find(|e| e.value == name.value) {
        None => Ok(()),
        Some(first) => Err(SpecError::new(
            &name.source,
            format!(
                "{kind} {:?} twice (the first at {})",
                name.value, first.source
            ),
        )),
    }
}

/// `eth3` → 3, if the host has it.
fn nic_index(name: &Sourced<String>, host: &str, nics: u8) -> Result<u8, SpecError> {
    name.value
        .strip_prefix("eth")
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|&n| n < nics)
        .ok_or_else(|| {
            SpecError::new(
                &name.source,
                format!(
                    "{host} has no NIC {:?}: it has eth0 to eth{} (give it more `nics`)",
                    name.value,
                    nics - 1
                ),
            )
        })
}

/// Where a NIC is plugged: a switch by index, or a host-to-host cable by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plug {
    Switch(usize),
    Cable(usize),
}

/// Each NIC `(host, nic)`: where it is plugged, and the index of the cable that says so
/// (`usize::MAX`: none).
type Plugs = BTreeMap<(usize, u8), (Plug, usize)>;

impl RawLan {
    /// An empty lab described at `source`.
    pub fn new(source: Source) -> Self {
        Self {
            source,
            name: "lab".into(),
            hosts: Vec::new(),
            switches: Vec::new(),
            cables: Vec::new(),
            numbered: false,
            ssh: None,
            remote: None,
            timeline: Vec::new(),
        }
    }

    /// Checks everything and gives the lab to boot, or the first mistake with its source.
    pub fn resolve(&self) -> Result<Spec, SpecError> {
        if self.hosts.is_empty() {
            return Err(SpecError::new(
                &self.source,
                "no host: a lab needs at least one",
            ));
        }
        if let Some(extra) = self.hosts.get(MAX_HOSTS) {
            return Err(SpecError::new(
                &extra.name.source,
                format!(
                    "{} hosts: a lab takes at most {MAX_HOSTS}",
                    self.hosts.len()
                ),
            ));
        }
        let mut hosts = Vec::new();
        let mut nic_counts = Vec::new();
        for (i, raw) in self.hosts.iter().enumerate() {
            named_once("host", &raw.name, self.hosts[..i].iter().map(|h| &h.name))?;
            let host = raw.host()?;
            nic_counts.push(host.1);
            hosts.push(host.0);
        }
        // The lab keeps one tree's build (`assets-tree.json`) at a time.
        let mut trees = self.hosts.iter().filter_map(|h| h.kernel_tree.as_ref());
        if let Some(first) = trees.next() {
            let first_dir = first.value.canonicalize().ok();
            if let Some(other) = trees.find(|t| t.value.canonicalize().ok() != first_dir) {
                return Err(SpecError::new(
                    &other.source,
                    format!(
                        "a second kernel tree (the first, {}, at {}): a lab boots at most one tree's kernel",
                        first.value.display(),
                        first.source
                    ),
                ));
            }
        }
        let switches = self.switches()?;
        let plugs = self.plugs(&switches, &nic_counts)?;
        let segments = self.segments(&switches, &plugs, &mut hosts)?;
        self.addresses(&mut hosts)?;
        let remote = self.remote_end(&hosts)?;
        let ssh = remote.is_some() || self.ssh.as_ref().is_some_and(|s| s.value);
        if ssh {
            for host in &mut hosts {
                add_packages(&mut host.extras, SSH_PACKAGES);
            }
        }
        if let Some(remote) = &remote {
            for h in [0, remote.host] {
                add_packages(&mut hosts[h].extras, DRIVERS_NET_PACKAGES);
            }
        }
        let timeline = self.resolve_timeline(&nic_counts)?;
        Ok(Spec {
            name: self.name.clone(),
            hosts,
            segments,
            numbered: self.numbered,
            ssh,
            remote,
            seed: None,
            timeline,
        })
    }

    /// The switches by name, each with its ports' defaults; the default one if none is named.
    fn switches(&self) -> Result<Vec<(String, RawPort)>, SpecError> {
        if self.switches.is_empty() {
            return Ok(vec![(DEFAULT_SWITCH.to_string(), RawPort::default())]);
        }
        let mut out: Vec<(String, RawPort)> = Vec::new();
        for (i, s) in self.switches.iter().enumerate() {
            if !crate::config::is_guest_name(&s.name.value) {
                return Err(SpecError::new(
                    &s.name.source,
                    format!(
                        "{:?} is not a switch name: give up to 63 letters, digits and '-'",
                        s.name.value
                    ),
                ));
            }
            named_once(
                "switch",
                &s.name,
                self.switches[..i].iter().map(|o| &o.name),
            )?;
            s.port.policy()?;
            out.push((s.name.value.clone(), s.port.clone()));
        }
        Ok(out)
    }

    /// The host called `name` (its index), or a refusal at `at` naming the hosts there are.
    fn host_index(&self, name: &Sourced<String>) -> Result<usize, SpecError> {
        self.hosts
            .iter()
            .position(|h| h.name.value == name.value)
            .ok_or_else(|| {
                let names: Vec<&str> = self.hosts.iter().map(|h| h.name.value.as_str()).collect();
                SpecError::new(
                    &name.source,
                    format!(
                        "no host is called {:?} (hosts: {})",
                        name.value,
                        names.join(", ")
                    ),
                )
            })
    }

    /// A cable's end: its host (by index) and its NIC, which that host must have.
    fn end(
        &self,
        host: &Sourced<String>,
        nic: &Sourced<i64>,
        nic_counts: &[u8],
    ) -> Result<(usize, u8), SpecError> {
        let h = self.host_index(host)?;
        let nics = nic_counts[h];
        match u8::try_from(nic.value).ok().filter(|&n| n < nics) {
            Some(n) => Ok((h, n)),
            None => Err(SpecError::new(
                &nic.source,
                format!(
                    "a cable to {}'s eth{}, but it has {nics} NIC(s): give it `nics`",
                    host.value, nic.value
                ),
            )),
        }
    }

    /// Where every NIC is plugged, keyed by `(host, nic)`: what its cable says, else the
    /// first switch. A NIC has one cable.
    fn plugs(&self, switches: &[(String, RawPort)], nic_counts: &[u8]) -> Result<Plugs, SpecError> {
        let mut plugs = Plugs::new();
        let mut taken: BTreeMap<(usize, u8), Source> = BTreeMap::new();
        let mut take = |end: (usize, u8), cable: &RawCable, nic: &Sourced<i64>| {
            if let Some(first) = taken.insert(end, cable.source.clone()) {
                return Err(SpecError::new(
                    &nic.source,
                    format!(
                        "a second cable for {}'s eth{} (the first is at {first}): a NIC has one cable; put its settings in one",
                        self.hosts[end.0].name.value, end.1
                    ),
                ));
            }
            Ok(())
        };
        for (c, cable) in self.cables.iter().enumerate() {
            let a = self.end(&cable.host, &cable.nic, nic_counts)?;
            take(a, cable, &cable.nic)?;
            match &cable.to {
                RawEnd::Switch(name) => {
                    let s = match name {
                        None => 0,
                        Some(name) => switches
                            .iter()
                            .position(|(n, _)| *n == name.value)
                            .ok_or_else(|| {
                                let names: Vec<&str> =
                                    switches.iter().map(|(n, _)| n.as_str()).collect();
                                SpecError::new(
                                    &name.source,
                                    format!(
                                        "no switch is called {:?} (switches: {}): declare it with [[switch]]",
                                        name.value,
                                        names.join(", ")
                                    ),
                                )
                            })?,
                    };
                    plugs.insert(a, (Plug::Switch(s), c));
                }
                RawEnd::Host { host, nic } => {
                    let b = self.end(host, nic, nic_counts)?;
                    if a == b {
                        return Err(SpecError::new(
                            &nic.source,
                            "a cable from a NIC to itself: name another host's NIC",
                        ));
                    }
                    take(b, cable, nic)?;
                    if !cable.port.is_empty() {
                        return Err(SpecError::new(
                            &cable.source,
                            "a cable between two hosts has no switch port: access, trunk, native, hairpin and max_macs belong to a cable to a switch",
                        ));
                    }
                    plugs.insert(a, (Plug::Cable(c), c));
                    plugs.insert(b, (Plug::Cable(c), c));
                }
            }
        }
        for (h, &nics) in nic_counts.iter().enumerate() {
            for n in 0..nics {
                plugs.entry((h, n)).or_insert((Plug::Switch(0), usize::MAX));
            }
        }
        Ok(plugs)
    }

    /// The segments: each switch with its ports (hosts in order, each host's NICs in order),
    /// then each host-to-host cable; every host's NICs told their port.
    fn segments(
        &self,
        switches: &[(String, RawPort)],
        plugs: &Plugs,
        hosts: &mut [HostSpec],
    ) -> Result<Vec<Segment>, SpecError> {
        let mut segments: Vec<Segment> = switches
            .iter()
            .map(|(name, _)| Segment {
                name: name.clone(),
                ports: Vec::new(),
            })
            .collect();
        let mut cable_segment: BTreeMap<usize, usize> = BTreeMap::new();
        for (&(h, n), &(plug, c)) in plugs {
            let cable = self.cables.get(c);
            let impairment = match cable.and_then(|c| c.impair.as_ref()) {
                None => Impairment::default(),
                Some(imp) => {
                    imp.value
                        .validate()
                        .map_err(|e| SpecError::new(&imp.source, format!("impair: {e}")))?;
                    imp.value
                }
            };
            let (segment, policy, impairment) = match plug {
                Plug::Switch(s) => {
                    let own = cable.map(|c| c.port.clone()).unwrap_or_default();
                    (s, own.over(&switches[s].1).policy()?, impairment)
                }
                Plug::Cable(c) => {
                    let cable = &self.cables[c];
                    let segment = *cable_segment.entry(c).or_insert_with(|| {
                        let RawEnd::Host { host, nic } = &cable.to else {
                            unreachable!("a host-to-host plug comes from such a cable")
                        };
                        segments.push(Segment {
                            name: format!(
                                "{}.eth{}-{}.eth{}",
                                cable.host.value, cable.nic.value, host.value, nic.value
                            ),
                            ports: Vec::new(),
                        });
                        segments.len() - 1
                    });
                    // The cable's impairment on one of its two ports only: each frame crosses
                    // that port once whichever way it goes, and so meets it once.
                    let first_end = self.host_index(&cable.host)? == h
                        && u8::try_from(cable.nic.value).ok() == Some(n);
                    let impairment = if first_end {
                        impairment
                    } else {
                        Impairment::default()
                    };
                    (segment, PortPolicy::default(), impairment)
                }
            };
            let ports = &mut segments[segment].ports;
            hosts[h].nics[usize::from(n)].segment = segment;
            hosts[h].nics[usize::from(n)].port = ports.len();
            ports.push(Port {
                host: h,
                nic: n,
                policy,
                impairment,
            });
        }
        Ok(segments)
    }

    /// Each host's addresses and routes on their NICs; a numbered LAN's where none is given.
    fn addresses(&self, hosts: &mut [HostSpec]) -> Result<(), SpecError> {
        let mut owner: BTreeMap<IpAddr, (String, &Source)> = BTreeMap::new();
        for (h, raw) in self.hosts.iter().enumerate() {
            let nics = u8::try_from(hosts[h].nics.len()).unwrap_or(u8::MAX);
            for a in &raw.addresses {
                let (nic, text) = &a.value;
                let n = nic_index(
                    &Sourced::new(nic.clone(), a.source.clone()),
                    &raw.name.value,
                    nics,
                )?;
                let net: IpNet = text.parse().map_err(|_| {
                    SpecError::new(
                        &a.source,
                        format!("{text:?} is not an address with its prefix: give e.g. 10.0.1.1/24 or fd01::1/64"),
                    )
                })?;
                let who = format!("{}'s {nic}", raw.name.value);
                if let Some((first, at)) = owner.insert(net.addr(), (who, &a.source)) {
                    return Err(SpecError::new(
                        &a.source,
                        format!(
                            "{} is {first}'s already (at {at}): an address is one NIC's",
                            net.addr()
                        ),
                    ));
                }
                hosts[h].nics[usize::from(n)].addresses.push(net);
            }
        }
        if self.numbered {
            for (h, host) in hosts.iter_mut().enumerate() {
                let eth0 = &mut host.nics[0];
                if eth0.segment == 0 && eth0.addresses.is_empty() {
                    eth0.addresses.extend(lan_addresses(h));
                }
            }
        }
        for (h, raw) in self.hosts.iter().enumerate() {
            for r in &raw.routes {
                let (nic, route) = route(&r.value, &r.source, &hosts[h])?;
                hosts[h].nics[nic].routes.push(route);
            }
        }
        Ok(())
    }
}

/// The longest a timeline waits: a day.
const MAX_AFTER_MS: i64 = 24 * 3600 * 1000;

impl RawLan {
    /// The timeline, checked, in the order of its times (ties in the order written).
    fn resolve_timeline(&self, nic_counts: &[u8]) -> Result<Vec<Timed>, SpecError> {
        let mut out = Vec::new();
        for at in &self.timeline {
            if !(0..=MAX_AFTER_MS).contains(&at.after_ms.value) {
                return Err(SpecError::new(
                    &at.after_ms.source,
                    format!(
                        "after_ms = {} is out of range: give 0 to {MAX_AFTER_MS} (a day)",
                        at.after_ms.value
                    ),
                ));
            }
            let (host, nic) = self.end(&at.host, &at.nic, nic_counts)?;
            let change = match (&at.link, &at.impair) {
                (Some(link), None) => match link.value.as_str() {
                    "down" => Change::Link(false),
                    "up" => Change::Link(true),
                    other => {
                        return Err(SpecError::new(
                            &link.source,
                            format!("link = {other:?}: give \"down\" or \"up\""),
                        ))
                    }
                },
                (None, Some(impair)) => {
                    impair.value.validate().map_err(|e| {
                        SpecError::new(&impair.source, format!("{e}"))
                    })?;
                    Change::Impair(impair.value)
                }
                _ => {
                    return Err(SpecError::new(
                        &at.source,
                        "say one change: `link = \"down\"` (or \"up\") or `impair = { ... }` ({} for a good cable)",
                    ))
                }
            };
            out.push(Timed {
                after: std::time::Duration::from_millis(at.after_ms.value.unsigned_abs()),
                host,
                nic,
                change,
            });
        }
        out.sort_by_key(|t| t.after);
        Ok(out)
    }
}

/// What every host of a lab with ssh gets beyond the base image ([`crate::ssh`]).
pub const SSH_PACKAGES: &[&str] = &["openssh-server", "openssh-client"];

/// What the tests of `drivers/net` run on either end, beyond ssh: `python3` and the YAML parser
/// of its YNL library, and the tools they call (README.rst of the selftests).
pub const DRIVERS_NET_PACKAGES: &[&str] = &[
    "python3",
    "python3-yaml",
    "ethtool",
    "socat",
    "iperf3",
    "jq",
];

/// Adds each of `packages` that `extras` lacks.
fn add_packages(extras: &mut Extras, packages: &[&str]) {
    for p in packages {
        if !extras.packages.iter().any(|have| have == p) {
            extras.packages.push((*p).to_string());
        }
    }
}

impl RawLan {
    /// The remote end the first host's drivers/net tests use: a host on a segment the first
    /// host is on, with an address of a family the first host has there.
    fn remote_end(&self, hosts: &[HostSpec]) -> Result<Option<RemoteEnd>, SpecError> {
        let Some(name) = &self.remote else {
            return Ok(None);
        };
        let host = self.host_index(name)?;
        let first = &hosts[0];
        if host == 0 {
            return Err(SpecError::new(
                &name.source,
                format!(
                    "{:?} is the host the tests run on: the remote end is another host, e.g. {:?}",
                    name.value,
                    hosts.get(1).map_or("host2", |h| h.name.as_str())
                ),
            ));
        }
        let shared = first.nics.iter().enumerate().find_map(|(n, local)| {
            let peer = hosts[host]
                .nics
                .iter()
                .find(|p| p.segment == local.segment && !p.addresses.is_empty())?;
            (!local.addresses.is_empty()).then_some((n, local, peer))
        });
        let Some((n, local, peer)) = shared else {
            return Err(SpecError::new(
                &name.source,
                format!(
                    "{:?} and {:?} share no segment where both have an address: plug a NIC of each into one switch and give them addresses",
                    first.name, name.value
                ),
            ));
        };
        let of =
            |nets: &[IpNet], v6: bool| nets.iter().map(IpNet::addr).find(|a| a.is_ipv6() == v6);
        let end = RemoteEnd {
            host,
            netif: format!("eth{n}"),
            local_v4: of(&local.addresses, false),
            local_v6: of(&local.addresses, true),
            remote_v4: of(&peer.addresses, false),
            remote_v6: of(&peer.addresses, true),
        };
        if end.pairs().is_empty() {
            return Err(SpecError::new(
                &name.source,
                format!(
                    "{:?} and {:?} have no address family in common on their segment: give both v4 or both v6 addresses",
                    first.name, name.value
                ),
            ));
        }
        Ok(Some(end))
    }
}

/// A route checked against `host`'s addresses: its gateway must be on one of its subnets
/// (and not the host itself), which is the NIC it leaves by.
fn route(raw: &RawRoute, at: &Source, host: &HostSpec) -> Result<(usize, Route), SpecError> {
    let via: IpAddr = raw.via.parse().map_err(|_| {
        SpecError::new(
            at,
            format!(
                "via = {:?} is not an address: give the gateway's, e.g. 10.0.1.254",
                raw.via
            ),
        )
    })?;
    let to = if raw.to == "default" {
        None
    } else {
        let to: IpNet = raw.to.parse().map_err(|_| {
            SpecError::new(
                at,
                format!(
                    "to = {:?} is not a prefix: give e.g. 10.0.2.0/24, or \"default\"",
                    raw.to
                ),
            )
        })?;
        if to.addr().is_ipv4() != via.is_ipv4() {
            return Err(SpecError::new(
                at,
                format!("a route to {to} via {via}: give a gateway of the same family"),
            ));
        }
        Some(to.trunc())
    };
    for (n, nic) in host.nics.iter().enumerate() {
        for net in &nic.addresses {
            if net.addr() == via {
                return Err(SpecError::new(
                    at,
                    format!(
                        "via = {via} is {}'s own address on eth{n}: give another host's",
                        host.name
                    ),
                ));
            }
            if net.contains(&via) {
                return Ok((n, Route { to, via }));
            }
        }
    }
    let subnets: Vec<String> = host
        .nics
        .iter()
        .flat_map(|n| n.addresses.iter().map(|a| a.trunc().to_string()))
        .collect();
    Err(SpecError::new(
        at,
        format!(
            "via = {via} is on none of {}'s subnets ({}): a gateway must be reachable on one of its NICs",
            host.name,
            if subnets.is_empty() { "it has no address".to_string() } else { subnets.join(", ") }
        ),
    ))
}

impl RawHost {
    /// The host checked on its own, and how many NICs it has.
    fn host(&self) -> Result<(HostSpec, u8), SpecError> {
        let name = &self.name.value;
        if !crate::config::is_guest_name(name) {
            return Err(SpecError::new(
                &self.name.source,
                format!("{name:?} is not a host name: give up to 63 letters, digits and '-' (e.g. host1)"),
            ));
        }
        let memory = self
            .memory
            .as_ref()
            .map(|m| {
                within(
                    "memory",
                    m,
                    i64::from(MIN_MEMORY_MIB)..=i64::from(MAX_MEMORY_MIB),
                    " (MiB)",
                )
            })
            .transpose()?;
        let cpus = self
            .cpus
            .as_ref()
            .map(|c| within("cpus", c, 1..=i64::from(MAX_CPUS), ""))
            .transpose()?;
        let nics = self
            .nics
            .as_ref()
            .map(|n| within("nics", n, 1..=i64::from(MAX_NICS), ""))
            .transpose()?;
        let kernel = match (&self.kernel, &self.kernel_tree) {
            (Some(_), Some(tree)) => {
                return Err(SpecError::new(
                    &tree.source,
                    "a host boots one kernel: give kernel (an id) or kernel_tree (a built tree), not both",
                ))
            }
            (Some(id), None) => {
                check_kernel(id)?;
                Some(Kernel::Id(id.value.clone()))
            }
            (None, Some(tree)) => Some(Kernel::Tree(check_tree(tree)?)),
            (None, None) => None,
        };
        for source in &self.module_sources {
            if !source.value.is_dir() {
                return Err(SpecError::new(
                    &source.source,
                    format!(
                        "module source {} is not a directory",
                        source.value.display()
                    ),
                ));
            }
        }
        if let Some(dir) = &self.dir {
            if !dir.value.is_dir() {
                return Err(SpecError::new(
                    &dir.source,
                    format!("{}: no such directory on this machine", dir.value.display()),
                ));
            }
        }
        let image = match (&self.config, self.nest) {
            (Some(_), true) => {
                return Err(SpecError::new(
                    &self.name.source,
                    "a host given as a configuration cannot also ask for the nest image: make the configuration with Assets::nest_vm",
                ))
            }
            (Some(cfg), false) => Image::Given(cfg.clone()),
            (None, true) => Image::Nest { inner_vms: 2 },
            (None, false) => Image::Base,
        };
        // Narrowed: each was checked to lie in its range above.
        let narrow = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        let nic_count = nics
            .and_then(|n| u8::try_from(n).ok())
            .or(self.config.as_ref().map(|c| c.machine.nics))
            .unwrap_or(1);
        let spec = HostSpec {
            name: name.clone(),
            kernel,
            image,
            extras: Extras {
                packages: self.packages.clone(),
                modules: self.modules.clone(),
                module_sources: self
                    .module_sources
                    .iter()
                    .map(|s| s.value.clone())
                    .collect(),
                dir: self.dir.as_ref().map(|d| d.value.clone()),
            },
            size: Size {
                cpus: narrow(cpus),
                memory_mib: narrow(memory),
                nics: nics.and_then(|n| u8::try_from(n).ok()),
            },
            allow_splats: self.allow_splats,
            kmemleak: self.kmemleak,
            nics: (0..nic_count)
                .map(|_| Nic {
                    segment: 0,
                    port: 0,
                    addresses: Vec::new(),
                    routes: Vec::new(),
                })
                .collect(),
            forwarding: self.forwarding,
            setup: self.setup.clone(),
        };
        Ok((spec, nic_count))
    }
}

/// A built Linux tree (it has `arch/x86/boot/bzImage`), as an absolute path.
fn check_tree(tree: &Sourced<PathBuf>) -> Result<PathBuf, SpecError> {
    let dir = tree.value.canonicalize().map_err(|e| {
        SpecError::new(
            &tree.source,
            format!("kernel_tree {}: {e}", tree.value.display()),
        )
    })?;
    if !dir.join("arch/x86/boot/bzImage").is_file() {
        return Err(SpecError::new(
            &tree.source,
            format!(
                "kernel_tree {}: it is not a built kernel tree (no arch/x86/boot/bzImage): build it with `make`, its options from `cargo xtask kernel-config`",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// A kernel id `kernels/kernels.toml` knows.
fn check_kernel(kernel: &Sourced<String>) -> Result<(), SpecError> {
    let manifest =
        lab_kernels::Manifest::load(&lab_kernels::Manifest::bundled_path()).map_err(|e| {
            SpecError::new(
                &kernel.source,
                format!("cannot read the kernels' list: {e}"),
            )
        })?;
    if manifest.kernels.contains_key(&kernel.value) {
        return Ok(());
    }
    let ids: Vec<&str> = manifest.kernels.keys().map(String::as_str).collect();
    Err(SpecError::new(
        &kernel.source,
        format!(
            "kernel = {:?} is no kernel of kernels/kernels.toml: give one of {}",
            kernel.value,
            ids.join(", ")
        ),
    ))
}
