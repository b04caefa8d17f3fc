//! The switch's forwarding logic, free of I/O: learn, age, flood, forward, and the per-port
//! policies a real access switch has (reflective relay, port security, link state).
//!
//! Its address table is bounded as a real switch's is: past [`FDB_MAX`] addresses it learns no
//! new ones (their frames are still forwarded, unknown destinations flooded) and counts them.
//! Every frame costs O(1) whatever the table holds: a guest sending from random source MACs
//! (pktgen, a MAC flood) cannot make the LAN quadratic. Entries age lazily, a stale one being
//! unknown, and the table is swept at most once per [`SWEEP_EVERY`].
//!
//! Architecture invariant: every forwarding decision of the lab's LAN is made here, so it can be
//! tested frame by frame without a guest.

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

/// Behaviour of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Reflective relay (802.1Qbg "hairpin"): frames may leave through the port they came in on.
    /// What VEPA needs for siblings to reach each other. Off on ordinary switches.
    pub hairpin: bool,
    /// Port security: at most this many source MACs are learned; frames from others are dropped.
    pub max_macs: Option<usize>,
}

impl PortPolicy {
    /// Reflective relay on, no MAC cap: the policy VEPA needs of the switch.
    pub const HAIRPIN: PortPolicy = PortPolicy {
        hairpin: true,
        max_macs: None,
    };
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
#[derive(Debug)]
struct Fdb {
    by_mac: HashMap<MacAddr, Learned>,
    by_port: Vec<HashSet<MacAddr>>,
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
    fn port_of(&self, mac: &MacAddr, now: Instant) -> Option<usize> {
        self.by_mac
            .get(mac)
            .filter(|l| self.fresh(l, now))
            .map(|l| l.port)
    }

    fn insert(&mut self, mac: MacAddr, port: usize, now: Instant) {
        if let Some(old) = self.by_mac.insert(mac, Learned { port, seen: now }) {
            if old.port != port {
                self.by_port[old.port].remove(&mac);
            }
        }
        self.by_port[port].insert(mac);
    }

    fn remove(&mut self, mac: &MacAddr) {
        if let Some(old) = self.by_mac.remove(mac) {
            self.by_port[old.port].remove(mac);
        }
    }

    /// Drops the stale entries of one port: O(what the port holds).
    fn expire_port(&mut self, port: usize, now: Instant) {
        let stale: Vec<MacAddr> = self.by_port[port]
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
        let Some(p) = self.ports.get_mut(port) else {
            return Vec::new();
        };
        p.counters.rx_frames += 1;
        p.counters.rx_bytes += frame.len() as u64;
        if frame.len() < MIN_FRAME {
            p.counters.drop_runt += 1;
            return Vec::new();
        }
        if frame.len() > MAX_FRAME {
            p.counters.drop_oversize += 1;
            return Vec::new();
        }
        if !p.up {
            p.counters.drop_link_down += 1;
            return Vec::new();
        }
        let dst = mac_at(frame, 0);
        let src = mac_at(frame, 6);
        if src.0[0] & 1 == 1 {
            p.counters.drop_bad_source += 1;
            return Vec::new();
        }
        self.fdb.sweep(now);
        match self.learn(port, src, now) {
            Learn::Learned => {}
            Learn::OverPortCap => {
                self.ports[port].counters.drop_mac_limit += 1;
                return Vec::new();
            }
            Learn::TableFull => self.ports[port].counters.unlearned_table_full += 1,
        }
        let out = self.egress_ports(port, dst, now);
        for &o in &out {
            self.ports[o].counters.tx_frames += 1;
            self.ports[o].counters.tx_bytes += frame.len() as u64;
        }
        out
    }

    fn egress_ports(&mut self, ingress: usize, dst: MacAddr, now: Instant) -> Vec<usize> {
        let hairpin = self.ports[ingress].policy.hairpin;
        let known = (dst.0[0] & 1 == 0)
            .then(|| self.fdb.port_of(&dst, now))
            .flatten();
        let Some(to) = known else {
            // A reflective-relay port gets its own floods back too, as a Linux bridge port in
            // hairpin mode does: that is how ARP between VEPA siblings works.
            return (0..self.ports.len())
                .filter(|&o| self.ports[o].up && (o != ingress || hairpin))
                .collect();
        };
        if to == ingress && !hairpin {
            self.ports[ingress].counters.drop_same_port += 1;
            return Vec::new();
        }
        if self.ports[to].up {
            vec![to]
        } else {
            Vec::new()
        }
    }

    /// Learns (or refreshes) `src` on `port`, within the port's MAC cap and the table's size.
    fn learn(&mut self, port: usize, src: MacAddr, now: Instant) -> Learn {
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

    /// MACs currently learned on `port` (an entry past its ageing time, not swept yet, is not).
    pub fn learned_on(&self, port: usize) -> Vec<MacAddr> {
        let now = Instant::now();
        let mut macs: Vec<MacAddr> = self
            .fdb
            .by_port
            .get(port)
            .into_iter()
            .flatten()
            .filter(|m| self.fdb.port_of(m, now) == Some(port))
            .copied()
            .collect();
        macs.sort_by_key(|m| m.0);
        macs
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

    pub fn count_tx_error(&mut self, port: usize) {
        if let Some(p) = self.ports.get_mut(port) {
            p.counters.drop_tx_error += 1;
            p.counters.tx_frames = p.counters.tx_frames.saturating_sub(1);
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
                let mut s = switch(4, PortPolicy { hairpin, max_macs: cap });
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
