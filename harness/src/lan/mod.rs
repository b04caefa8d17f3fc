//! The lab's LAN: a switch of our own that guests join through QEMU's `-netdev dgram` (unix
//! datagram sockets, QEMU >= 7.2). No root, no host interface, no bridge on the host: frames
//! travel between QEMU processes through this process only.
//!
//! A leaf: it knows ports, frames and cables, not hosts, guests or labs (`crate::lab` plugs
//! guests into it), and imports nothing from above it.

pub mod batch;
pub mod capture;
pub mod delay_queue;
pub mod egress;
pub mod impair;
pub mod switch;
pub mod tap;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use capture::Capture;
use delay_queue::{DelayQueue, Then};
use impair::{Fate, Impairment, Link};

/// The most bytes one cable holds while its impairment delays frames, each frame's bookkeeping
/// counted in; more is dropped and counted (`impaired_overflow`), so a delayed flood costs
/// bounded memory.
pub const MAX_DELAYED_BYTES: usize = 16 << 20;
pub use switch::{
    BadPolicy, BadVlan, Forward, PortCounters, PortPolicy, PortVlans, Switch, VlanSet,
};

/// How a guest joins a port: QEMU binds `guest`, sends to `switch`; the switch does the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSockets {
    pub switch: PathBuf,
    pub guest: PathBuf,
}

/// A running switch: per port, a task moving frames between its socket and the [`Switch`]
/// logic and a task releasing what its cable holds delayed; all of them end with the handle.
#[derive(Debug)]
pub struct SwitchHandle {
    state: Arc<Mutex<State>>,
    delayed: Arc<Vec<Cable>>,
    ports: Vec<PortSockets>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    switch: Switch,
    all: Capture,
    per_port: Vec<Capture>,
    /// Each port's cable, and what its impairment does.
    links: Vec<Link>,
    /// Live readers of its frames (`lab capture`).
    taps: tap::Taps,
}

/// Frames a port takes from its socket per system call, and sends to one per call.
const BATCH: usize = 32;

/// The largest datagram a port takes whole: QEMU's `dgram` netdev sends one frame per datagram.
const MAX_DATAGRAM: usize = 65536;

/// What a port task needs to switch and send frames, shared by every task.
#[derive(Debug, Clone)]
struct Net {
    /// Each port's way out to its guest.
    egress: Arc<Vec<egress::Egress>>,
    state: Arc<Mutex<State>>,
    /// What each cable holds delayed.
    delayed: Arc<Vec<Cable>>,
}

/// Frames a batch sends, in the order they are to go: (port, bytes).
type Sends<'f> = Vec<(usize, Cow<'f, [u8]>)>;

/// Frames a batch holds for later: (port, when, what then, bytes).
type Holds = Vec<(usize, Instant, Then, Vec<u8>)>;

/// One cable's delayed frames and the wake-up of the task that releases them.
#[derive(Debug)]
struct Cable {
    queue: Mutex<DelayQueue>,
    sooner: tokio::sync::Notify,
}

impl SwitchHandle {
    /// Starts a switch with one port per `(policy, impairment of its cable)`; sockets live in
    /// `sockets`, captures in `captures`.
    pub fn start(
        ports_setup: &[(PortPolicy, Impairment)],
        sockets: &Path,
        captures: &Path,
    ) -> std::io::Result<Self> {
        let policies: Vec<PortPolicy> = ports_setup.iter().map(|(p, _)| *p).collect();
        crate::private::dir_all(captures)?;
        let mut per_port = Vec::new();
        let mut ports = Vec::new();
        let mut bound = Vec::new();
        for i in 0..policies.len() {
            let sock = PortSockets {
                switch: sockets.join(format!("port{i}.sock")),
                guest: sockets.join(format!("port{i}.guest.sock")),
            };
            bound.push(Arc::new(UnixDatagram::bind(&sock.switch)?));
            ports.push(sock);
            per_port.push(Capture::create(&captures.join(format!("port{i}.pcap")))?);
        }
        let state = State {
            switch: Switch::new(&policies, Duration::from_secs(300)),
            all: Capture::create(&captures.join("switch.pcap"))?,
            per_port,
            links: ports_setup.iter().map(|(_, i)| Link::new(*i)).collect(),
            taps: tap::Taps::default(),
        };
        let state = Arc::new(Mutex::new(state));
        let net = Net {
            egress: Arc::new(
                ports
                    .iter()
                    .map(|p| egress::Egress::new(p.guest.clone()))
                    .collect::<std::io::Result<Vec<_>>>()?,
            ),
            state: Arc::clone(&state),
            delayed: Arc::new(
                (0..ports.len())
                    .map(|_| Cable {
                        queue: Mutex::new(DelayQueue::new(MAX_DELAYED_BYTES)),
                        sooner: tokio::sync::Notify::new(),
                    })
                    .collect(),
            ),
        };
        let tasks = (0..ports.len())
            .flat_map(|i| {
                [
                    tokio::spawn(port_loop(i, Arc::clone(&bound[i]), net.clone())),
                    tokio::spawn(release_loop(i, net.clone())),
                    tokio::spawn(egress_loop(i, net.clone())),
                ]
            })
            .collect();
        Ok(Self {
            state,
            delayed: Arc::clone(&net.delayed),
            ports,
            tasks,
        })
    }

    pub fn sockets(&self, port: usize) -> &PortSockets {
        &self.ports[port]
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    pub fn counters(&self, port: usize) -> PortCounters {
        self.lock().switch.counters(port)
    }

    pub fn learned(&self, port: usize) -> Vec<crate::mac::MacAddr> {
        self.lock().switch.learned_on(port)
    }

    /// What is learned on `port`, each address with its VLAN.
    pub fn learned_in_vlans(&self, port: usize) -> Vec<(u16, crate::mac::MacAddr)> {
        self.lock().switch.learned_in_vlans(port)
    }

    pub fn set_policy(&self, port: usize, policy: PortPolicy) {
        self.lock().switch.set_policy(port, policy);
    }

    pub fn policy(&self, port: usize) -> PortPolicy {
        self.lock().switch.policy(port)
    }

    pub fn set_up(&self, port: usize, up: bool) {
        self.lock().switch.set_up(port, up);
    }

    pub fn is_up(&self, port: usize) -> bool {
        self.lock().switch.is_up(port)
    }

    /// A handle that reads the switch's tables and counters, for a watcher that outlives no
    /// switch: reading a switch that is gone gives what it last had.
    pub fn view(&self) -> SwitchView {
        SwitchView(Arc::clone(&self.state))
    }

    /// A live copy of port `port`'s frames both ways, as its capture has them (`None`: every
    /// frame entering the switch, as `switch.pcap` has them), from now on.
    pub fn tap(&self, port: Option<usize>) -> tap::TapReceiver {
        self.lock().taps.add(port)
    }

    /// Makes port `port`'s cable bad (or good again, with the default): frames crossing it
    /// either way meet `impairment` from now on.
    pub fn set_impairment(&self, port: usize, impairment: Impairment) {
        if let Some(link) = self.lock().links.get_mut(port) {
            *link = Link::new(impairment);
        }
    }

    pub fn impairment(&self, port: usize) -> Impairment {
        self.lock()
            .links
            .get(port)
            .map(|l| l.impairment)
            .unwrap_or_default()
    }

    /// What port `port`'s cable holds delayed now, in bytes with each frame's bookkeeping
    /// (at most [`MAX_DELAYED_BYTES`]).
    pub fn delayed_bytes(&self, port: usize) -> usize {
        self.delayed
            .get(port)
            .map_or(0, |cable| lock(&cable.queue).bytes())
    }

    /// Flushes the captures and returns the path of `switch.pcap` (every frame received).
    pub fn flush_captures(&self) -> PathBuf {
        let mut s = self.lock();
        s.all.flush();
        s.per_port.iter_mut().for_each(Capture::flush);
        s.all.path().to_path_buf()
    }

    /// Flushes and returns the path of the capture of port `port`'s cable.
    pub fn port_capture(&self, port: usize) -> PathBuf {
        self.flush_captures();
        self.lock().per_port[port].path().to_path_buf()
    }

    /// Frames left out of port `port`'s capture (and of `switch.pcap`'s, for `None`) because it
    /// reached [`capture::MAX_BYTES`].
    pub fn capture_cut(&self, port: Option<usize>) -> u64 {
        let s = self.lock();
        port.map_or(&s.all, |p| &s.per_port[p]).cut()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SwitchHandle {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
        self.flush_captures();
    }
}

/// What a watcher reads of a switch ([`SwitchHandle::view`]).
#[derive(Debug, Clone)]
pub struct SwitchView(Arc<Mutex<State>>);

impl SwitchView {
    pub fn counters(&self, port: usize) -> PortCounters {
        lock(&self.0).switch.counters(port)
    }

    pub fn learned_in_vlans(&self, port: usize) -> Vec<(u16, crate::mac::MacAddr)> {
        lock(&self.0).switch.learned_in_vlans(port)
    }
}

async fn port_loop(port: usize, sock: Arc<UnixDatagram>, net: Net) {
    use std::os::fd::AsFd;
    let mut inbox = batch::Inbox::new(BATCH, MAX_DATAGRAM);
    loop {
        if sock.readable().await.is_err() {
            continue;
        }
        // Every frame queued, in one call; `WouldBlock` clears the readiness and waits again.
        let taken = sock.try_io(tokio::io::Interest::READABLE, || {
            inbox.receive(sock.as_fd())
        });
        if taken.is_ok() {
            net.receive(port, inbox.frames());
        }
    }
}

/// Sends what port `port` holds for its guest as the guest makes room.
async fn egress_loop(port: usize, net: Net) {
    net.egress[port]
        .drain(|lost| net.count_tx_errors(port, lost))
        .await;
}

/// Releases what port `port`'s cable holds, each frame when it is due: one timer per cable,
/// however many frames it holds.
async fn release_loop(port: usize, net: Net) {
    let cable = &net.delayed[port];
    loop {
        let next = lock(&cable.queue).next_due();
        match next {
            None => cable.sooner.notified().await,
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = cable.sooner.notified() => {}
                }
            }
            Some(_) => {
                let due = lock(&cable.queue).due(Instant::now());
                for held in due {
                    net.release(port, held.then, &held.bytes);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the frames that came in on `port` together: each meets its cable's impairment on
    /// the way in, then is forwarded; what goes out is sent a port at a time, in one call.
    fn receive<'f>(&self, port: usize, frames: impl Iterator<Item = &'f [u8]>) {
        let now = Instant::now();
        let (mut sends, mut holds) = (Sends::new(), Holds::new());
        {
            let mut s = self.lock();
            for frame in frames {
                let fate = s.links[port].admit(frame.len(), now);
                s.switch.count_impairment(port, &fate);
                match fate {
                    Fate::Now => forward(&mut s, port, frame, now, &mut sends, &mut holds),
                    Fate::Lost | Fate::Overflow => {}
                    Fate::SendAt(times) => holds.extend(
                        times
                            .into_iter()
                            .map(|at| (port, at, Then::Switch, frame.to_vec())),
                    ),
                }
            }
        }
        self.dispatch(sends, holds);
    }

    /// Forwards a frame that came in on `port` (its cable already passed), and sends it out of
    /// each port it goes to, through that port's cable.
    fn switch_frame(&self, port: usize, frame: &[u8]) {
        let (mut sends, mut holds) = (Sends::new(), Holds::new());
        forward(
            &mut self.lock(),
            port,
            frame,
            Instant::now(),
            &mut sends,
            &mut holds,
        );
        self.dispatch(sends, holds);
    }

    /// Sends what a batch sends now, and holds what it holds for later: outside the lock.
    fn dispatch(&self, mut sends: Sends<'_>, holds: Holds) {
        for (port, at, then, bytes) in holds {
            self.later(port, at, then, bytes);
        }
        // Each port's frames in the order they came, a port at a time.
        sends.sort_by_key(|(port, _)| *port);
        for group in sends.chunk_by(|a, b| a.0 == b.0) {
            let frames: Vec<&[u8]> = group.iter().map(|(_, f)| f.as_ref()).collect();
            self.send(group[0].0, &frames);
        }
    }

    /// Does `then` with `bytes` at `at` (at once if that has passed), within the cable's
    /// budget of delayed bytes; past it the frame is dropped and counted.
    fn later(&self, port: usize, at: Instant, then: Then, bytes: Vec<u8>) {
        if at <= Instant::now() {
            return self.release(port, then, &bytes);
        }
        let cable = &self.delayed[port];
        let held = lock(&cable.queue).hold(at, then, bytes);
        match held {
            Ok(true) => cable.sooner.notify_one(),
            Ok(false) => {}
            Err(_) => self.lock().switch.count_impairment(port, &Fate::Overflow),
        }
    }

    fn release(&self, port: usize, then: Then, bytes: &[u8]) {
        match then {
            Then::Switch => self.switch_frame(port, bytes),
            Then::Send => self.send(port, &[bytes]),
        }
    }

    fn send(&self, port: usize, frames: &[&[u8]]) {
        // Never waits: what the guest has no room for waits in its port's bounded queue, and
        // past that bound, or with no guest there, it is lost and counted, like a congested
        // port's, without stalling the others.
        let dropped = self.egress[port].send(frames);
        self.count_tx_errors(port, dropped);
    }

    fn count_tx_errors(&self, port: usize, n: usize) {
        if n > 0 {
            self.lock().switch.count_tx_errors(port, n as u64);
        }
    }
}

/// Forwards `frame`, which came in on `port`, under the switch's lock: it is captured, and
/// each copy going out is captured, tapped and admitted by its cable, to be sent now or held.
fn forward<'f>(
    s: &mut State,
    port: usize,
    frame: &'f [u8],
    now: Instant,
    sends: &mut Sends<'f>,
    holds: &mut Holds,
) {
    s.all.write(frame);
    s.per_port[port].write(frame);
    s.taps.entered(port, frame);
    let Some(fwd) = s.switch.forward(port, frame, now) else {
        return;
    };
    for &o in &fwd.ports {
        // Each port's own bytes: a trunk tags, an access port strips (a copy only then).
        let bytes = s.switch.frame_for(o, frame, &fwd);
        let fate = s.links[o].admit(bytes.len(), now);
        s.switch.count_impairment(o, &fate);
        if matches!(fate, Fate::Lost | Fate::Overflow) {
            continue;
        }
        // What leaves the port is captured as it is let out, now or later.
        s.per_port[o].write(&bytes);
        s.taps.left(o, &bytes);
        match fate {
            Fate::SendAt(times) => holds.extend(
                times
                    .into_iter()
                    .map(|at| (o, at, Then::Send, bytes.to_vec())),
            ),
            _ => sends.push((o, bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident memory (nextest runs each test in a process of its own).
    fn rss() -> usize {
        let kib = crate::host::memory_kib(std::process::id(), "status", "VmRSS:");
        usize::try_from(kib).unwrap_or(usize::MAX) * 1024
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_flood_over_a_ten_minute_delay_costs_the_cables_bound_and_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let switch = SwitchHandle::start(
            &[(PortPolicy::default(), Impairment::default()); 2],
            dir.path(),
            &dir.path().join("captures"),
        )
        .expect("switch");
        switch.set_impairment(
            1,
            Impairment {
                delay: Duration::from_secs(600),
                ..Impairment::default()
            },
        );
        let guest = UnixDatagram::bind(&switch.sockets(0).guest).expect("bind");
        // Broadcast, so every frame goes out through port 1's slow cable.
        let mut frame = vec![0xff; 6];
        frame.extend([2, 0, 0, 0, 0, 0xa, 0x08, 0x00]);
        frame.resize(60, 0);
        let before = rss();
        let frames = 300_000u64;
        for _ in 0..frames {
            guest
                .send_to(&frame, &switch.sockets(0).switch)
                .await
                .expect("send");
        }
        let took_all =
            crate::wait::until(Duration::from_secs(120), Duration::from_millis(20), || {
                let c = switch.counters(0);
                async move { (c.rx_frames >= frames).then_some(()) }
            })
            .await;
        assert!(took_all.is_some(), "{:?}", switch.counters(0));
        let held = switch.delayed_bytes(1);
        let overflow = switch.counters(1).impaired_overflow;
        assert!(held <= MAX_DELAYED_BYTES, "{held}");
        assert!(
            overflow > 0 && overflow < frames,
            "some held, the rest dropped and counted: {overflow}"
        );
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 2 * MAX_DELAYED_BYTES + (16 << 20),
            "the host grew by {} MiB",
            grown >> 20
        );
        drop(switch);
    }
}
