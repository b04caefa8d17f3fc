//! The lab's LAN: a switch of our own that guests join through QEMU's `-netdev dgram` (unix
//! datagram sockets, QEMU >= 7.2). No root, no host interface, no bridge on the host: frames
//! travel between QEMU processes through this process only.

pub mod capture;
pub mod lab;
pub mod script;
pub mod switch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use capture::Capture;
pub use switch::{BadVlan, Forward, PortCounters, PortPolicy, PortVlans, Switch, VlanSet};

/// How a guest joins a port: QEMU binds `guest`, sends to `switch`; the switch does the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSockets {
    pub switch: PathBuf,
    pub guest: PathBuf,
}

/// A running switch: one task per port moving frames between sockets and the [`Switch`] logic.
#[derive(Debug)]
pub struct SwitchHandle {
    state: Arc<Mutex<State>>,
    ports: Vec<PortSockets>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    switch: Switch,
    all: Capture,
    per_port: Vec<Capture>,
}

impl SwitchHandle {
    /// Starts a switch with one port per policy; sockets live in `sockets`, captures in `captures`.
    pub fn start(
        policies: &[PortPolicy],
        sockets: &Path,
        captures: &Path,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(captures)?;
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
            switch: Switch::new(policies, Duration::from_secs(300)),
            all: Capture::create(&captures.join("switch.pcap"))?,
            per_port,
        };
        let state = Arc::new(Mutex::new(state));
        let guests: Arc<Vec<PathBuf>> = Arc::new(ports.iter().map(|p| p.guest.clone()).collect());
        let tasks = (0..ports.len())
            .map(|i| {
                tokio::spawn(port_loop(
                    i,
                    Arc::clone(&bound[i]),
                    bound.clone(),
                    Arc::clone(&guests),
                    Arc::clone(&state),
                ))
            })
            .collect();
        Ok(Self {
            state,
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

async fn port_loop(
    port: usize,
    sock: Arc<UnixDatagram>,
    all: Vec<Arc<UnixDatagram>>,
    guests: Arc<Vec<PathBuf>>,
    state: Arc<Mutex<State>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = sock.recv(&mut buf).await else {
            continue;
        };
        let frame = &buf[..n];
        let out: Vec<(usize, std::borrow::Cow<'_, [u8]>)> = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.all.write(frame);
            s.per_port[port].write(frame);
            let Some(fwd) = s.switch.forward(port, frame, Instant::now()) else {
                continue;
            };
            // Each port's own bytes: a trunk tags, an access port strips (a copy only then).
            let out: Vec<(usize, std::borrow::Cow<'_, [u8]>)> = fwd
                .ports
                .iter()
                .map(|&o| (o, s.switch.frame_for(o, frame, &fwd)))
                .collect();
            for (o, bytes) in &out {
                s.per_port[*o].write(bytes);
            }
            out
        };
        for (o, bytes) in out {
            // Non-blocking: a guest that is gone or not keeping up loses the frame, like a
            // congested port, and never stalls the others.
            if all[o].try_send_to(&bytes, &guests[o]).is_err() {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .switch
                    .count_tx_error(o);
            }
        }
    }
}
