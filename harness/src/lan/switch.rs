//! The switch's forwarding logic, free of I/O: learn, age, flood, forward, and the per-port
//! policies a real access switch has (reflective relay, port security, link state, 802.1Q
//! VLANs).
//!
//! VLANs: a port is VLAN-unaware (the default: frames pass as they came, tagged or not, as
//! through a Linux bridge without `vlan_filtering`), an access port of one VLAN (untagged on
//! its cable), or a trunk (the VLANs it allows tagged, and a native one untagged if it has
//! one). Every frame is classified into a VLAN as it enters, learned per VLAN (the same MAC
//! on two VLANs is two entries), sent only to ports of that VLAN, tagged or untagged as each
//! port wants; a frame of a VLAN its port is not in is dropped and counted (`drop_vlan`).
//!
//! Its address table is bounded as a real switch's is: past [`FDB_MAX`] addresses it learns no
//! new ones (their frames are still forwarded, unknown destinations flooded) and counts them.
//! Every frame costs O(1) whatever the table holds: a guest sending from random source MACs
//! (pktgen, a MAC flood) cannot make the LAN quadratic. Entries age lazily, a stale one being
//! unknown, and the table is swept at most once per [`SWEEP_EVERY`].
//!
//! Architecture invariant: every forwarding decision of the lab's LAN is made here, so it can be
//! tested frame by frame without a guest.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mac::MacAddr;

/// Smallest frame we accept: destination, source, ethertype.
pub const MIN_FRAME: usize = 14;
/// Largest: a 9000-byte jumbo payload plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 9018;
/// Addresses the table holds at most (a small access switch holds 8K).
pub const FDB_MAX: usize = 8192;
/// How often stale entries are swept out of the whole table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The 802.1Q tag's ethertype (TPID).
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// The VLAN an untagged frame on a VLAN-unaware port belongs to (802.1Q's default PVID).
pub const DEFAULT_VLAN: u16 = 1;

/// Behaviour of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Reflective relay (802.1Qbg "hairpin"): frames may leave through the port they came in on.
    /// What VEPA needs for siblings to reach each other. Off on ordinary switches.
    pub hairpin: bool,
    /// Port security: at most this many source MACs are learned; frames from others are dropped.
    pub max_macs: Option<usize>,
    /// Which VLANs the port is in, and which it tags.
    pub vlans: PortVlans,
}

impl PortPolicy {
    /// Reflective relay on, no MAC cap: the policy VEPA needs of the switch.
    pub const HAIRPIN: PortPolicy = PortPolicy {
        hairpin: true,
        max_macs: None,
        vlans: PortVlans::Unaware,
    };

    /// Checks what its types allow and a port cannot be: a MAC cap of 0 or past the address
    /// table, a VLAN outside 1..=4094, a trunk that carries no VLAN.
    pub fn validate(&self) -> Result<(), BadPolicy> {
        if let Some(cap) = self.max_macs.filter(|c| !(1..=FDB_MAX).contains(c)) {
            return Err(BadPolicy::MaxMacs(cap));
        }
        match self.vlans {
            PortVlans::Unaware => {}
            PortVlans::Access(id) => {
                check_vlan(id)?;
            }
            PortVlans::Trunk { native, allowed } => {
                if allowed.ids().next().is_none() {
                    return Err(BadPolicy::EmptyTrunk);
                }
                if let Some(id) = native {
                    check_vlan(id)?;
                }
            }
        }
        Ok(())
    }
}

/// A port policy that cannot be, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPolicy {
    #[error("max_macs = {0} is out of range: give 1 to {FDB_MAX} addresses")]
    MaxMacs(usize),
    #[error("a trunk carrying no VLAN: name at least one, or make the port VLAN-unaware")]
    EmptyTrunk,
    #[error(transparent)]
    Vlan(#[from] BadVlan),
}

/// A port's 802.1Q membership.
// A trunk's set is a 512-byte bitmap, so that a frame's VLAN is one bit test; a policy is
// copied only when a port's is set, never per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PortVlans {
    /// In every VLAN; frames leave as they came in (untagged ones are in [`DEFAULT_VLAN`]).
    #[default]
    Unaware,
    /// An access port: its frames are untagged on its cable and in this VLAN on the switch; a
    /// tagged frame arriving is dropped unless tagged with this VLAN.
    Access(u16),
    /// A trunk: the `allowed` VLANs tagged on its cable, and untagged frames in `native`
    /// (dropped without one).
    Trunk {
        native: Option<u16>,
        allowed: VlanSet,
    },
}

/// A set of VLAN ids, 1 to 4094.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl VlanSet {
    pub const EMPTY: VlanSet = VlanSet([0; 64]);

    /// The set of `ids`; an id outside 1..=4094 is an error naming it.
    pub fn of(ids: &[u16]) -> Result<Self, BadVlan> {
        let mut set = Self::EMPTY;
        for &id in ids {
            set.insert(id)?;
        }
        Ok(set)
    }

    pub fn insert(&mut self, id: u16) -> Result<(), BadVlan> {
        check_vlan(id)?;
        self.0[usize::from(id / 64)] |= 1 << (id % 64);
        Ok(())
    }

    pub fn contains(&self, id: u16) -> bool {
        id < 4096 && self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        (1..4095).filter(|id| self.contains(*id))
    }
}

impl std::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}

/// A VLAN id outside 1..=4094 (0 means "no VLAN" in a tag, 4095 is reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VLAN {0} is not a VLAN id: give one from 1 to 4094")]
pub struct BadVlan(pub u16);

/// `id`, if it is a VLAN id a port can be in.
pub fn check_vlan(id: u16) -> Result<u16, BadVlan> {
    if (1..=4094).contains(&id) {
        Ok(id)
    } else {
        Err(BadVlan(id))
    }
}

impl PortVlans {
    /// A trunk carrying `allowed` tagged, with no native VLAN.
    pub fn trunk(allowed: &[u16]) -> Result<Self, BadVlan> {
        Ok(PortVlans::Trunk {
            native: None,
            allowed: VlanSet::of(allowed)?,
        })
    }

    /// The VLAN a frame arriving with `tag` (its VLAN id, if tagged) is in, or `None` if this
    /// port does not take it.
    fn classify(&self, tag: Option<u16>) -> Option<u16> {
        match (*self, tag) {
            (PortVlans::Unaware, Some(vid)) => Some(vid),
            (PortVlans::Unaware, None) => Some(DEFAULT_VLAN),
            (PortVlans::Access(vid), None) => Some(vid),
            (PortVlans::Access(vid), Some(tag)) => (tag == vid).then_some(vid),
            (PortVlans::Trunk { native, .. }, None) => native,
            (PortVlans::Trunk { native, allowed }, Some(tag)) => {
                (allowed.contains(tag) || native == Some(tag)).then_some(tag)
            }
        }
    }

    /// Whether frames of `vid` may leave through this port.
    fn carries(&self, vid: u16) -> bool {
        match *self {
            PortVlans::Unaware => true,
            PortVlans::Access(own) => own == vid,
            PortVlans::Trunk { native, allowed } => allowed.contains(vid) || native == Some(vid),
        }
    }

    /// Whether a frame of `vid` leaves this port tagged (`None`: as it came in).
    fn tags(&self, vid: u16) -> Option<bool> {
        match *self {
            PortVlans::Unaware => None,
            PortVlans::Access(_) => Some(false),
            PortVlans::Trunk { native, .. } => Some(native != Some(vid)),
        }
    }
}

/// Frame and drop counts of one port, readable by tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Shorter than an Ethernet header.
    pub drop_runt: u64,
    pub drop_oversize: u64,
    /// Arrived while the port was down.
    pub drop_link_down: u64,
    /// From a source MAC beyond the port's cap.
    pub drop_mac_limit: u64,
    /// Destination learned on the ingress port and hairpin off: not sent back.
    pub drop_same_port: u64,
    /// Multicast source address: no valid frame has one.
    pub drop_bad_source: u64,
    /// Could not be delivered to the guest (gone, or its socket full).
    pub drop_tx_error: u64,
    /// Of a VLAN the port is not in (or untagged on a trunk without a native VLAN).
    pub drop_vlan: u64,
    /// Lost on the port's cable by its impairment ([`super::impair::Loss`]).
    pub impaired_lost: u64,
    /// Dropped by the cable's impairment: queued past its rate limit, or past the bytes a
    /// cable may hold delayed.
    pub impaired_overflow: u64,
    /// Sent twice by the cable's impairment.
    pub impaired_duplicated: u64,
    /// Forwarded, but its source not learned: the address table was full.
    pub unlearned_table_full: u64,
}

#[derive(Debug)]
struct Port {
    policy: PortPolicy,
    up: bool,
    counters: PortCounters,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    port: usize,
    seen: Instant,
}

/// What learning a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learn {
    Learned,
    /// Over the port's MAC cap: the frame is dropped.
    OverPortCap,
    /// The table is full: forwarded, not learned.
    TableFull,
}

/// The forwarding database: where each address was last seen, by address and by port, so that
/// a lookup, a refresh and a port's cap each cost O(1) (or O(the cap)).
/// An address on a VLAN: what the table learns (802.1Q's independent learning).
type Key = (u16, MacAddr);

#[derive(Debug)]
struct Fdb {
    by_mac: HashMap<Key, Learned>,
    by_port: Vec<HashSet<Key>>,
    ageing: Duration,
    max: usize,
    swept: Option<Instant>,
}

impl Fdb {
    fn new(ports: usize, ageing: Duration, max: usize) -> Self {
        Self {
            by_mac: HashMap::new(),
            by_port: vec![HashSet::new(); ports],
            ageing,
            max,
            swept: None,
        }
    }

    fn fresh(&self, l: &Learned, now: Instant) -> bool {
        now.saturating_duration_since(l.seen) < self.ageing
    }

    /// The port `mac` was last seen on, unless that is older than the ageing time.
    fn port_of(&self, mac: &Key, now: Instant) -> Option<usize> {
        self.by_mac
            .get(mac)
            .filter(|l| self.fresh(l, now))
            .map(|l| l.port)
    }

    fn insert(&mut self, mac: Key, port: usize, now: Instant) {
        if let Some(old) = self.by_mac.insert(mac, Learned { port, seen: now }) {
            if old.port != port {
                self.by_port[old.port].remove(&mac);
            }
        }
        self.by_port[port].insert(mac);
    }

    fn remove(&mut self, mac: &Key) {
        if let Some(old) = self.by_mac.remove(mac) {
            self.by_port[old.port].remove(mac);
        }
    }

    /// Drops the stale entries of one port: O(what the port holds).
    fn expire_port(&mut self, port: usize, now: Instant) {
        let stale: Vec<Key> = self.by_port[port]
            .iter()
            .filter(|m| self.by_mac.get(m).is_none_or(|l| !self.fresh(l, now)))
            .copied()
            .collect();
        stale.iter().for_each(|m| self.remove(m));
    }

    /// Drops every stale entry, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        let ageing = self.ageing;
        let by_port = &mut self.by_port;
        self.by_mac.retain(|mac, l| {
            let keep = now.saturating_duration_since(l.seen) < ageing;
            if !keep {
                by_port[l.port].remove(mac);
            }
            keep
        });
    }

    fn forget_port(&mut self, port: usize) {
        for mac in std::mem::take(&mut self.by_port[port]) {
            self.by_mac.remove(&mac);
        }
    }
}

#[derive(Debug)]
pub struct Switch {
    ports: Vec<Port>,
    fdb: Fdb,
}

impl Switch {
    pub fn new(policies: &[PortPolicy], ageing: Duration) -> Self {
        Self::with_table(policies, ageing, FDB_MAX)
    }

    /// A switch whose address table holds at most `max` addresses.
    pub fn with_table(policies: &[PortPolicy], ageing: Duration, max: usize) -> Self {
        let ports = policies
            .iter()
            .map(|&policy| Port {
                policy,
                up: true,
                counters: PortCounters::default(),
            })
            .collect();
        Self {
            ports,
            fdb: Fdb::new(policies.len(), ageing, max),
        }
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Takes a frame received on `port` and returns the ports it leaves through (tx counted).
    pub fn ingress(&mut self, port: usize, frame: &[u8], now: Instant) -> Vec<usize> {
        self.forward(port, frame, now)
            .map_or_else(Vec::new, |f| f.ports)
    }

    /// Takes a frame received on `port`: where it goes, and in which VLAN ([`Switch::frame_for`]
    /// gives the bytes each port sends). `None` when it is dropped (counted).
    pub fn forward(&mut self, port: usize, frame: &[u8], now: Instant) -> Option<Forward> {
        let p = self.ports.get_mut(port)?;
        p.counters.rx_frames += 1;
        p.counters.rx_bytes += frame.len() as u64;
        if frame.len() < MIN_FRAME {
            p.counters.drop_runt += 1;
            return None;
        }
        if frame.len() > MAX_FRAME {
            p.counters.drop_oversize += 1;
            return None;
        }
        if !p.up {
            p.counters.drop_link_down += 1;
            return None;
        }
        let dst = mac_at(frame, 0);
        let src = mac_at(frame, 6);
        if src.0[0] & 1 == 1 {
            p.counters.drop_bad_source += 1;
            return None;
        }
        let tag = vlan_tag(frame);
        let Some(vid) = p.policy.vlans.classify(tag) else {
            p.counters.drop_vlan += 1;
            return None;
        };
        self.fdb.sweep(now);
        match self.learn(port, (vid, src), now) {
            Learn::Learned => {}
            Learn::OverPortCap => {
                self.ports[port].counters.drop_mac_limit += 1;
                return None;
            }
            Learn::TableFull => self.ports[port].counters.unlearned_table_full += 1,
        }
        let out = self.egress_ports(port, (vid, dst), now);
        for &o in &out {
            let len = self.frame_len_on(o, frame, tag, vid);
            self.ports[o].counters.tx_frames += 1;
            self.ports[o].counters.tx_bytes += len as u64;
        }
        Some(Forward {
            vid,
            tagged: tag.is_some(),
            ports: out,
        })
    }

    /// The bytes port `port` sends for `frame` as [`Switch::forward`] sent it on: tagged with
    /// its VLAN on a trunk, untagged on an access port, as it came on a VLAN-unaware one.
    pub fn frame_for<'f>(&self, port: usize, frame: &'f [u8], fwd: &Forward) -> Cow<'f, [u8]> {
        match self.retag(port, fwd.vid, fwd.tagged) {
            Retag::Add => Cow::Owned(with_tag(frame, fwd.vid)),
            Retag::Strip => Cow::Owned(without_tag(frame)),
            Retag::Keep => Cow::Borrowed(frame),
        }
    }

    /// The length of what [`Switch::frame_for`] sends, without making it.
    fn frame_len_on(&self, port: usize, frame: &[u8], tag: Option<u16>, vid: u16) -> usize {
        match self.retag(port, vid, tag.is_some()) {
            Retag::Add => frame.len() + 4,
            Retag::Strip => frame.len() - 4,
            Retag::Keep => frame.len(),
        }
    }

    /// What port `port` does to the tag of a frame of `vid` that came `tagged` or not.
    fn retag(&self, port: usize, vid: u16, tagged: bool) -> Retag {
        let wants = self.ports.get(port).and_then(|p| p.policy.vlans.tags(vid));
        match (wants, tagged) {
            (Some(true), false) => Retag::Add,
            (Some(false), true) => Retag::Strip,
            _ => Retag::Keep,
        }
    }

    fn egress_ports(&mut self, ingress: usize, dst: Key, now: Instant) -> Vec<usize> {
        let hairpin = self.ports[ingress].policy.hairpin;
        let vid = dst.0;
        let known = (dst.1 .0[0] & 1 == 0)
            .then(|| self.fdb.port_of(&dst, now))
            .flatten();
        let Some(to) = known else {
            // A reflective-relay port gets its own floods back too, as a Linux bridge port in
            // hairpin mode does: that is how ARP between VEPA siblings works.
            return (0..self.ports.len())
                .filter(|&o| {
                    let p = &self.ports[o];
                    p.up && p.policy.vlans.carries(vid) && (o != ingress || hairpin)
                })
                .collect();
        };
        if to == ingress && !hairpin {
            self.ports[ingress].counters.drop_same_port += 1;
            return Vec::new();
        }
        if self.ports[to].up && self.ports[to].policy.vlans.carries(vid) {
            vec![to]
        } else {
            Vec::new()
        }
    }

    /// Learns (or refreshes) `src` on `port`, within the port's MAC cap and the table's size.
    fn learn(&mut self, port: usize, src: Key, now: Instant) -> Learn {
        if self.fdb.port_of(&src, now) == Some(port) {
            self.fdb.insert(src, port, now);
            return Learn::Learned;
        }
        if let Some(cap) = self.ports[port].policy.max_macs {
            self.fdb.expire_port(port, now);
            if self.fdb.by_port[port].len() >= cap {
                return Learn::OverPortCap;
            }
        }
        if self.fdb.by_mac.len() >= self.fdb.max && !self.fdb.by_mac.contains_key(&src) {
            return Learn::TableFull;
        }
        self.fdb.insert(src, port, now);
        Learn::Learned
    }

    /// MACs currently learned on `port`, in any VLAN (an entry past its ageing time, not
    /// swept yet, is not).
    pub fn learned_on(&self, port: usize) -> Vec<MacAddr> {
        let mut macs: Vec<MacAddr> = self
            .learned_in_vlans(port)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        macs.sort_by_key(|m| m.0);
        macs.dedup();
        macs
    }

    /// What is learned on `port`, each address with its VLAN.
    pub fn learned_in_vlans(&self, port: usize) -> Vec<(u16, MacAddr)> {
        let now = Instant::now();
        let mut keys: Vec<Key> = self
            .fdb
            .by_port
            .get(port)
            .into_iter()
            .flatten()
            .filter(|k| self.fdb.port_of(k, now) == Some(port))
            .copied()
            .collect();
        keys.sort_by_key(|(vid, m)| (*vid, m.0));
        keys
    }

    /// Addresses in the table, stale ones not yet swept included.
    pub fn table_len(&self) -> usize {
        self.fdb.by_mac.len()
    }

    pub fn counters(&self, port: usize) -> PortCounters {
        self.ports
            .get(port)
            .map(|p| p.counters.clone())
            .unwrap_or_default()
    }

    /// Counts what the cable of `port` did to a frame.
    pub fn count_impairment(&mut self, port: usize, fate: &super::impair::Fate) {
        use super::impair::Fate;
        let Some(p) = self.ports.get_mut(port) else {
            return;
        };
        match fate {
            Fate::Lost => p.counters.impaired_lost += 1,
            Fate::Overflow => p.counters.impaired_overflow += 1,
            Fate::SendAt(times) if times.len() > 1 => p.counters.impaired_duplicated += 1,
            Fate::SendAt(_) | Fate::Now => {}
        }
    }

    pub fn count_tx_errors(&mut self, port: usize, frames: u64) {
        if let Some(p) = self.ports.get_mut(port) {
            p.counters.drop_tx_error += frames;
            p.counters.tx_frames = p.counters.tx_frames.saturating_sub(frames);
        }
    }

    pub fn set_up(&mut self, port: usize, up: bool) {
        if let Some(p) = self.ports.get_mut(port) {
            p.up = up;
        }
        if !up && port < self.ports.len() {
            // A link going down flushes what was learned behind it, as real switches do.
            self.fdb.forget_port(port);
        }
    }

    pub fn set_policy(&mut self, port: usize, policy: PortPolicy) {
        if let Some(p) = self.ports.get_mut(port) {
            p.policy = policy;
        }
    }

    pub fn policy(&self, port: usize) -> PortPolicy {
        self.ports.get(port).map(|p| p.policy).unwrap_or_default()
    }

    /// Whether `port`'s cable is plugged in ([`Switch::set_up`]).
    pub fn is_up(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(|p| p.up)
    }
}

/// What an egress port does to a frame's 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retag {
    Add,
    Strip,
    Keep,
}

/// Where a frame went: its VLAN, whether it came tagged, the ports it leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub vid: u16,
    pub tagged: bool,
    pub ports: Vec<usize>,
}

/// The VLAN id of a frame's 802.1Q tag; `None` for an untagged frame or a priority tag (id 0).
fn vlan_tag(frame: &[u8]) -> Option<u16> {
    if frame.len() < 18 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_VLAN {
        return None;
    }
    let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
    (vid != 0).then_some(vid)
}

fn with_tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

fn without_tag(frame: &[u8]) -> Vec<u8> {
    [&frame[..12], &frame[16..]].concat()
}

fn mac_at(frame: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[at..at + 6]);
    MacAddr(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn switch(ports: usize, policy: PortPolicy) -> Switch {
        Switch::new(&vec![policy; ports], Duration::from_secs(300))
    }

    fn vlan_ports(vlans: &[PortVlans]) -> Switch {
        let policies: Vec<PortPolicy> = vlans
            .iter()
            .map(|&vlans| PortPolicy {
                vlans,
                ..PortPolicy::default()
            })
            .collect();
        Switch::new(&policies, Duration::from_secs(300))
    }

    fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16) -> Vec<u8> {
        with_tag(&frame(dst, src), vid)
    }

    #[test]
    fn access_ports_of_one_vlan_meet_and_of_two_do_not() {
        let mut s = vlan_ports(&[
            PortVlans::Access(10),
            PortVlans::Access(10),
            PortVlans::Access(20),
        ]);
        let now = Instant::now();
        assert_eq!(s.ingress(0, &frame(BCAST, A), now), vec![1]);
        assert_eq!(s.ingress(2, &frame(BCAST, C), now), Vec::<usize>::new());
        assert_eq!(
            s.ingress(2, &frame(A, C), now),
            Vec::<usize>::new(),
            "A is in 10"
        );
        assert_eq!(s.ingress(1, &frame(A, B), now), vec![0]);
    }

    #[test]
    fn a_trunk_tags_what_an_access_port_sends_and_the_access_port_gets_it_untagged() {
        let trunk = PortVlans::trunk(&[10, 20]).expect("valid");
        let mut s = vlan_ports(&[trunk, PortVlans::Access(10), PortVlans::Access(20)]);
        let now = Instant::now();
        let untagged = frame(BCAST, B);
        let fwd = s.forward(1, &untagged, now).expect("forwarded");
        assert_eq!((fwd.vid, fwd.ports.clone()), (10, vec![0]));
        let on_trunk = s.frame_for(0, &untagged, &fwd);
        assert_eq!(vlan_tag(&on_trunk), Some(10));
        assert_eq!(on_trunk.len(), untagged.len() + 4);
        assert_eq!(s.counters(0).tx_bytes, on_trunk.len() as u64);
        let from_trunk = tagged(B, A, 10);
        let fwd = s.forward(0, &from_trunk, now).expect("forwarded");
        assert_eq!(
            (fwd.vid, fwd.ports.clone()),
            (10, vec![1]),
            "B was learned in 10"
        );
        let on_access = s.frame_for(1, &from_trunk, &fwd);
        assert_eq!(
            on_access.as_ref(),
            frame(B, A).as_slice(),
            "the tag comes off"
        );
        let in_20 = s.forward(0, &tagged(BCAST, A, 20), now).expect("forwarded");
        assert_eq!(in_20.ports, vec![2]);
    }

    #[test]
    fn a_frame_of_a_vlan_its_port_is_not_in_is_dropped_and_counted() {
        let trunk = PortVlans::trunk(&[10]).expect("valid");
        let mut s = vlan_ports(&[trunk, PortVlans::Access(10), PortVlans::Unaware]);
        let now = Instant::now();
        assert_eq!(
            s.forward(0, &tagged(BCAST, A, 20), now),
            None,
            "20 not allowed"
        );
        assert_eq!(s.forward(0, &frame(BCAST, A), now), None, "no native VLAN");
        assert_eq!(
            s.forward(1, &tagged(BCAST, B, 30), now),
            None,
            "tagged on access"
        );
        assert_eq!(s.counters(0).drop_vlan, 2);
        assert_eq!(s.counters(1).drop_vlan, 1);
        // A VLAN-unaware port passes tagged frames as they are, to the ports of their VLAN.
        let fwd = s.forward(2, &tagged(BCAST, C, 10), now).expect("forwarded");
        assert_eq!(fwd.ports, vec![0, 1]);
    }

    #[test]
    fn one_mac_on_two_vlans_is_learned_twice() {
        let trunk = PortVlans::trunk(&[10, 20]).expect("valid");
        let mut s = vlan_ports(&[trunk, PortVlans::Access(10), PortVlans::Access(20)]);
        let now = Instant::now();
        s.ingress(1, &frame(BCAST, A), now);
        s.ingress(2, &frame(BCAST, A), now);
        assert_eq!(s.learned_in_vlans(1), vec![(10, MacAddr(A))]);
        assert_eq!(s.learned_in_vlans(2), vec![(20, MacAddr(A))]);
        assert_eq!(s.ingress(0, &tagged(A, B, 20), now), vec![2]);
        assert_eq!(s.ingress(0, &tagged(A, B, 10), now), vec![1]);
    }

    #[test]
    fn only_ids_from_1_to_4094_are_vlans() {
        assert_eq!(VlanSet::of(&[0]), Err(BadVlan(0)));
        assert_eq!(PortVlans::trunk(&[4095]), Err(BadVlan(4095)));
        let set = VlanSet::of(&[1, 64, 4094]).expect("valid");
        assert_eq!(set.ids().collect::<Vec<_>>(), vec![1, 64, 4094]);
        assert!(BadVlan(4095).to_string().contains("from 1 to 4094"));
    }

    #[test]
    fn floods_unknown_and_broadcast_then_forwards_learned_unicast() {
        let mut s = switch(3, PortPolicy::default());
        let t = Instant::now();
        assert_eq!(s.ingress(0, &frame(BCAST, A), t), [1, 2]);
        assert_eq!(
            s.ingress(1, &frame(C, B), t),
            [0, 2],
            "unknown unicast floods"
        );
        assert_eq!(
            s.ingress(1, &frame(A, B), t),
            [0],
            "learned unicast goes to one port"
        );
        assert_eq!(s.ingress(0, &frame(B, A), t), [1]);
        assert_eq!(s.counters(2).tx_frames, 2);
    }

    #[test]
    fn hairpin_off_drops_same_port_frames_and_on_reflects_them() {
        let t = Instant::now();
        let mut off = switch(2, PortPolicy::default());
        off.ingress(0, &frame(BCAST, A), t);
        assert_eq!(off.ingress(0, &frame(A, B), t), Vec::<usize>::new());
        assert_eq!(off.counters(0).drop_same_port, 1);

        let mut on = switch(2, PortPolicy::HAIRPIN);
        assert_eq!(
            on.ingress(0, &frame(BCAST, A), t),
            [0, 1],
            "floods come back to a hairpin port"
        );
        assert_eq!(on.ingress(0, &frame(A, B), t), [0], "reflective relay");
        assert_eq!(on.counters(0).drop_same_port, 0);
    }

    #[test]
    fn mac_cap_drops_extra_sources_but_keeps_the_first() {
        let mut s = switch(
            2,
            PortPolicy {
                hairpin: false,
                max_macs: Some(1),
                ..PortPolicy::default()
            },
        );
        let t = Instant::now();
        assert_eq!(s.ingress(0, &frame(BCAST, A), t), [1]);
        assert!(s.ingress(0, &frame(BCAST, B), t).is_empty());
        assert_eq!(
            s.ingress(0, &frame(BCAST, A), t),
            [1],
            "the first MAC keeps working"
        );
        assert_eq!(s.counters(0).drop_mac_limit, 1);
        assert_eq!(s.learned_on(0), [MacAddr(A)]);
    }

    /// A frame from source `i` of many (locally administered, unicast).
    fn from_source(i: u32) -> Vec<u8> {
        let b = i.to_be_bytes();
        frame(BCAST, [2, 0xee, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn a_full_table_learns_no_more_but_forwards_and_counts() {
        let mut s = Switch::with_table(&[PortPolicy::default(); 3], Duration::from_secs(300), 100);
        let t = Instant::now();
        s.ingress(1, &frame(BCAST, B), t);
        for i in 0..1000 {
            assert_eq!(s.ingress(0, &from_source(i), t), [1, 2], "still flooded");
        }
        assert_eq!(s.table_len(), 100, "bounded");
        assert_eq!(s.counters(0).unlearned_table_full, 1000 - 99);
        assert_eq!(
            s.ingress(0, &frame(B, A), t),
            [1],
            "what it knew, it still knows"
        );
        // Once entries age out, there is room again.
        let later = t + Duration::from_secs(301);
        s.ingress(2, &frame(BCAST, C), later);
        assert_eq!(s.learned_on(2), [MacAddr(C)]);
        assert_eq!(s.table_len(), 1);
    }

    #[test]
    fn a_mac_flood_fills_the_table_to_its_bound_and_no_further() {
        // Each frame scanned the whole table, which grew without bound: 200k sources made the
        // switch quadratic. (`cargo xtask bench` measures frames per second against one source.)
        let mut s = switch(2, PortPolicy::default());
        let t = Instant::now();
        for i in 0..200_000 {
            s.ingress(0, &from_source(i), t + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(s.table_len(), FDB_MAX);
        assert_eq!(s.counters(0).unlearned_table_full, 200_000 - FDB_MAX as u64);
    }

    #[test]
    fn a_capped_port_makes_room_as_its_addresses_age() {
        let policy = PortPolicy {
            hairpin: false,
            max_macs: Some(1),
            ..PortPolicy::default()
        };
        let mut s = Switch::new(&[policy; 2], Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(s.ingress(0, &frame(BCAST, A), t), [1]);
        assert!(s.ingress(0, &frame(BCAST, B), t).is_empty(), "over its cap");
        let later = t + Duration::from_secs(2);
        assert_eq!(s.ingress(0, &frame(BCAST, B), later), [1], "A aged out");
        assert_eq!(s.learned_on(0), [MacAddr(B)]);
    }

    #[test]
    fn learned_entries_age_out() {
        let mut s = Switch::new(&[PortPolicy::default(); 3], Duration::from_secs(1));
        let t = Instant::now();
        s.ingress(0, &frame(BCAST, A), t);
        assert_eq!(s.ingress(1, &frame(A, B), t), [0]);
        assert_eq!(
            s.ingress(1, &frame(A, B), t + Duration::from_secs(2)),
            [0, 2],
            "aged out: flood again"
        );
    }

    #[test]
    fn down_ports_neither_send_nor_receive_and_forget_their_macs() {
        let mut s = switch(3, PortPolicy::default());
        let t = Instant::now();
        s.ingress(0, &frame(BCAST, A), t);
        s.set_up(0, false);
        assert!(s.learned_on(0).is_empty());
        assert_eq!(s.ingress(1, &frame(BCAST, B), t), [2]);
        assert!(s.ingress(0, &frame(BCAST, A), t).is_empty());
        assert_eq!(s.counters(0).drop_link_down, 1);
    }

    #[test]
    fn garbage_is_counted_not_forwarded() {
        let mut s = switch(2, PortPolicy::default());
        let t = Instant::now();
        assert!(s.ingress(0, &[1, 2, 3], t).is_empty());
        assert!(s.ingress(0, &vec![0u8; MAX_FRAME + 1], t).is_empty());
        assert!(
            s.ingress(0, &frame(A, BCAST), t).is_empty(),
            "broadcast source"
        );
        assert!(s.ingress(9, &frame(A, B), t).is_empty(), "no such port");
        let c = s.counters(0);
        assert_eq!(
            (c.drop_runt, c.drop_oversize, c.drop_bad_source, c.rx_frames),
            (1, 1, 1, 3)
        );
        assert_eq!(s.ingress(1, &frame(BCAST, B), t), [0], "still forwarding");
    }

    /// Fuzzing the forwarding logic: any frames, on any ports (real or not), under any
    /// policies, never panic, and every decision keeps the switch's rules.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn frames() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> {
            // Mostly frame-sized, some runts and oversized; MACs from a small set so that
            // learning and ageing happen; ports 0..5 of a 4-port switch.
            let mac = prop::sample::select(vec![
                A,
                B,
                C,
                BCAST,
                [0x33, 0x33, 0, 0, 0, 1],
                [0, 0, 0, 0, 0, 0],
            ]);
            let frame = prop_oneof![
                8 => (mac.clone(), mac, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(d, s, rest)| {
                    let mut f = frame(d, s);
                    f.extend(rest);
                    f
                }),
                1 => prop::collection::vec(any::<u8>(), 0..MIN_FRAME),
                // Oversized ones need no random contents: their length alone decides.
                1 => (MAX_FRAME + 1..MAX_FRAME + 64).prop_map(|n| vec![0xab; n]),
            ];
            prop::collection::vec((0usize..5, frame), 1..200)
        }

        proptest! {
            #[test]
            fn any_frames_keep_the_rules(hairpin in any::<bool>(), cap in prop::option::of(1usize..3), frames in frames(), downs in prop::collection::vec(0usize..5, 0..3)) {
                let mut s = switch(4, PortPolicy { hairpin, max_macs: cap, ..PortPolicy::default() });
                for port in downs {
                    s.set_up(port, false);
                }
                let t = Instant::now();
                for (i, (port, frame)) in frames.iter().enumerate() {
                    let out = s.ingress(*port, frame, t + Duration::from_millis(i as u64));
                    prop_assert!(out.iter().all(|&p| p < 4), "only real ports: {out:?}");
                    prop_assert!(hairpin || !out.contains(port), "back out of its own port only with hairpin: {out:?}");
                    let bad = frame.len() < MIN_FRAME || frame.len() > MAX_FRAME || frame[6] & 1 == 1;
                    prop_assert!(!bad || out.is_empty(), "a bad frame goes nowhere");
                    let mut sorted = out.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), out.len(), "each port at most once");
                }
                let rx: u64 = (0..4).map(|p| s.counters(p).rx_frames).sum();
                prop_assert_eq!(rx as usize, frames.iter().filter(|(p, _)| *p < 4).count(), "every frame on a real port counted");
            }
        }
    }
}
