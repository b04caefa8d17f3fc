//! Several guests on one LAN, in the style of the NixOS test driver: `lab["host1"].succeed(..)`.
//!
//! Each run keeps its evidence under `target/lab/runs/<name>-<time>/`: the switch captures while
//! it runs, and on failure every guest's console, its QMP events and a `summary.json`. A run that
//! ends with [`Lab::shutdown`] succeeding removes the directory; any other end keeps it and says
//! where it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::assets::Assets;
use crate::config::{NetBackend, VmConfig};
use crate::error::{Error, Result};
use crate::lan::impair::Impairment;
use crate::lan::{PortCounters, PortPolicy, SwitchHandle};
use crate::vm::{Cmd, Vm};

/// The most guests one LAN takes: each is a QEMU with its own memory, and the LAN's addresses
/// (`192.168.88.N`) and switch ports are counted for a few dozen.
pub const MAX_HOSTS: usize = 64;

/// How many guests start at once: each start (a cold boot, or a restore's state load and
/// re-translation under TCG) keeps a core busy, so more at once only makes each slower and
/// every deadline tighter.
pub fn starts_at_once() -> usize {
    2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Describes a LAN before it boots.
#[derive(Debug)]
pub struct LabBuilder {
    assets: Assets,
    run: String,
    hosts: Vec<VmConfig>,
    policy: PortPolicy,
}

/// A booted LAN: guests, the switch between them, and the run's artifact directory.
#[derive(Debug)]
pub struct Lab {
    // Guests go before the switch, the switch before the directories its sockets are in.
    vms: Vec<Vm>,
    /// The switch ports of each guest's NICs (`eth0` first), in the order of `vms`.
    ports: Vec<Vec<usize>>,
    switch: SwitchHandle,
    /// The switch's socket directory, held until the switch is gone.
    sockets: tempfile::TempDir,
    artifacts: PathBuf,
    /// Whether a lab that passes keeps its artifacts ([`crate::assets::Runs::keep_passed`]).
    keep_passed: bool,
    finished: bool,
}

impl LabBuilder {
    /// `run` names the artifact directory (e.g. the test's name).
    pub fn new(assets: &Assets, run: &str) -> Self {
        Self {
            assets: assets.clone(),
            run: run.to_string(),
            hosts: Vec::new(),
            policy: PortPolicy::default(),
        }
    }

    /// Adds a guest called `name` on the next switch port.
    pub fn host(self, name: &str) -> Self {
        self.host_with(name, |_| {})
    }

    /// Adds a guest configured in full (e.g. [`Assets::nest_vm`]); its name is `cfg.name`.
    pub fn host_config(mut self, cfg: VmConfig) -> Self {
        self.hosts.push(cfg);
        self
    }

    /// Adds a guest and lets `adjust` change its configuration (memory, kernel arguments...).
    pub fn host_with(mut self, name: &str, adjust: impl FnOnce(&mut VmConfig)) -> Self {
        let mut cfg = self.assets.vm(name);
        adjust(&mut cfg);
        self.hosts.push(cfg);
        self
    }

    /// The policy every port starts with (hairpin, MAC cap); change ports later with
    /// [`Lab::set_policy`].
    pub fn ports(mut self, policy: PortPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the switch and boots the guests, [`starts_at_once`] at a time.
    pub async fn boot(self) -> Result<Lab> {
        self.policy.validate().map_err(|e| {
            Error::invalid(
                format!("the ports' policy: {e}"),
                "give a MAC cap from 1 to 8192, VLANs from 1 to 4094 and a trunk at least one",
            )
        })?;
        if self.hosts.len() > MAX_HOSTS {
            return Err(Error::invalid(
                format!("a LAN of {} hosts", self.hosts.len()),
                format!("give at most {MAX_HOSTS} hosts"),
            ));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let artifacts = self
            .assets
            .runs
            .dir
            .join(format!("{}-{stamp}", self.run.replace(['/', ' '], "_")));
        let keep_passed = self.assets.runs.keep_passed;
        let sockets =
            crate::rundirs::create("lan", None).map_err(|e| Error::io(Path::new("temp dir"), e))?;
        // Each NIC its own port, a guest's NICs side by side: host1's eth0 and eth1, then
        // host2's...
        let mut ports = Vec::new();
        let mut next = 0;
        for cfg in &self.hosts {
            let n = usize::from(cfg.machine.nics.max(1));
            ports.push((next..next + n).collect::<Vec<usize>>());
            next += n;
        }
        let policies = vec![self.policy; next];
        let switch = SwitchHandle::start(&policies, sockets.path(), &artifacts)
            .map_err(|e| Error::io(&artifacts, e))?;

        let mut set = tokio::task::JoinSet::new();
        let at_once = std::sync::Arc::new(tokio::sync::Semaphore::new(starts_at_once()));
        for ((guest, mut cfg), nic_ports) in self.hosts.into_iter().enumerate().zip(&ports) {
            cfg.net = NetBackend::Switch(
                nic_ports
                    .iter()
                    .map(|&p| switch.sockets(p).clone())
                    .collect(),
            );
            cfg.keep.artifacts = Some(artifacts.clone());
            cfg.keep.console |= keep_passed;
            let at_once = std::sync::Arc::clone(&at_once);
            set.spawn(async move {
                // Never closed: a permit always comes.
                let _turn = at_once.acquire().await;
                (guest, Vm::boot(cfg).await)
            });
        }
        let mut booted: Vec<(usize, Result<Vm>)> = set.join_all().await;
        booted.sort_by_key(|(guest, _)| *guest);
        let mut vms = Vec::new();
        let mut first_error = None;
        for (_, vm) in booted {
            match vm {
                Ok(vm) => vms.push(vm),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        let lab = Lab {
            vms,
            ports,
            switch,
            sockets,
            artifacts,
            keep_passed,
            finished: false,
        };
        match first_error {
            // Dropping `lab` kills the guests that did boot and keeps the artifacts.
            Some(e) => Err(e),
            None => Ok(lab),
        }
    }
}

impl Lab {
    pub fn builder(assets: &Assets, run: &str) -> LabBuilder {
        LabBuilder::new(assets, run)
    }

    /// The guest called `name`. Panics on an unknown name: that is a bug in the test.
    pub fn vm(&self, name: &str) -> &Vm {
        &self.vms[self.index(name)]
    }

    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// Where `name` is in the order guests were added (host1 first).
    fn index(&self, name: &str) -> usize {
        self.vms
            .iter()
            .position(|v| v.name() == name)
            .unwrap_or_else(|| panic!("no guest called {name} in this lab"))
    }

    /// The switch port `name`'s `eth0` is plugged into.
    pub fn port(&self, name: &str) -> usize {
        self.nic_port(name, 0)
    }

    /// The switch port `name`'s NIC `nic` (`eth<nic>`) is plugged into. Panics on a NIC the
    /// guest does not have: that is a bug in the test.
    pub fn nic_port(&self, name: &str, nic: u8) -> usize {
        *self.ports[self.index(name)]
            .get(usize::from(nic))
            .unwrap_or_else(|| panic!("{name} has no eth{nic}: give it more `nics`"))
    }

    pub fn switch(&self) -> &SwitchHandle {
        &self.switch
    }

    pub fn counters(&self, name: &str) -> PortCounters {
        self.switch.counters(self.port(name))
    }

    /// Gives the port of `name`'s `eth0` `policy` (hairpin, MAC cap, VLANs). Refused, naming
    /// what is wrong, if no port can be so.
    pub fn set_policy(&self, name: &str, policy: PortPolicy) -> Result<()> {
        self.set_nic_policy(name, 0, policy)
    }

    /// [`Lab::set_policy`] of the port of `name`'s NIC `nic` (`eth<nic>`).
    pub fn set_nic_policy(&self, name: &str, nic: u8, policy: PortPolicy) -> Result<()> {
        policy.validate().map_err(|e| {
            Error::invalid(
                format!("the port of {name}'s eth{nic}: {e}"),
                "give a MAC cap from 1 to 8192, VLANs from 1 to 4094 and a trunk at least one",
            )
        })?;
        self.switch.set_policy(self.nic_port(name, nic), policy);
        Ok(())
    }

    /// Makes the cable of `name`'s `eth0` bad, both ways (delay, jitter, loss, duplicates,
    /// reordering, a rate limit), or good again with `Impairment::default()`. No root and no
    /// `tc`: the lab's switch does it. Refused, naming the field, if it cannot be.
    pub fn set_impairment(&self, name: &str, impairment: Impairment) -> Result<()> {
        self.set_nic_impairment(name, 0, impairment)
    }

    /// [`Lab::set_impairment`] of `name`'s NIC `nic` (`eth<nic>`).
    pub fn set_nic_impairment(&self, name: &str, nic: u8, impairment: Impairment) -> Result<()> {
        impairment.validate().map_err(|e| {
            Error::invalid(
                format!("the impairment of {name}'s eth{nic}: {e}"),
                "give shares from 0 to 1 (0% to 100%), delays of at most an hour and a rate from 1 bit/s to 100 Gbit/s",
            )
        })?;
        self.switch
            .set_impairment(self.nic_port(name, nic), impairment);
        Ok(())
    }

    /// Plugs or pulls the cable of `name`'s `eth0`: QMP `set_link` on the guest's NIC (the
    /// guest sees NO-CARRIER) and the switch port down with it.
    pub async fn cable(&self, name: &str, up: bool) -> Result<()> {
        self.nic_cable(name, 0, up).await
    }

    /// [`Lab::cable`] of `name`'s NIC `nic` (`eth<nic>`).
    pub async fn nic_cable(&self, name: &str, nic: u8, up: bool) -> Result<()> {
        let port = self.nic_port(name, nic);
        self.vm(name)
            .qmp()
            .set_link_of(nic, up)
            .await
            .map_err(|e| Error::qmp(name, &e))?;
        self.switch.set_up(port, up);
        Ok(())
    }

    /// The address [`Lab::number_hosts`] gives `name`: `192.168.88.<n>` for the n-th guest
    /// added (host1 .1, host2 .2...).
    pub fn ip(&self, name: &str) -> String {
        format!("{LAN_PREFIX}.{}", self.index(name) + 1)
    }

    /// `name`'s IPv6 address on `eth0`: `fd00:88::N` in the LAN's unique local prefix (/64),
    /// N as in [`Lab::ip`]. Its link-local address is the kernel's, from its MAC.
    pub fn ip6(&self, name: &str) -> String {
        format!("{LAN_PREFIX6}::{}", self.index(name) + 1)
    }

    /// Gives every guest its [`Lab::ip`] (/24) and [`Lab::ip6`] (/64) on `eth0` and waits until
    /// the LAN is usable:
    /// the first guest pings every other, and every `eth0` is operationally UP (the kernel's
    /// linkwatch applies carrier up to a second after the link is set up, and macvlan children
    /// only come up once their parent's operstate is UP).
    pub async fn number_hosts(&self) -> Result<()> {
        // Every guest at once, each in one command: a command costs a guest ~0.1 s under TCG,
        // more right after a restore, when QEMU translates every code path anew.
        let numbered = self.vms.iter().map(|vm| {
            // Up, then wait in the guest until the kernel calls the link operational: frames
            // queued before then may be dropped.
            // `nodad`: the addresses are unique by construction, and duplicate detection would
            // hold the v6 one back for a second or more.
            vm.succeed(format!(
                "ip addr add {}/24 dev eth0 && ip -6 addr add {}/64 dev eth0 nodad && ip link set eth0 up && \
                 for i in $(seq 500); do [ \"$(cat /sys/class/net/eth0/operstate)\" = up ] && exit 0; sleep 0.02; done; \
                 echo 'eth0 never became operational' >&2; exit 1",
                self.ip(vm.name()),
                self.ip6(vm.name())
            ))
        });
        for result in futures::future::join_all(numbered).await {
            result?;
        }
        if let Some((first, others)) = self.vms.split_first() {
            if !others.is_empty() {
                let ips: Vec<String> = others.iter().map(|o| self.ip(o.name())).collect();
                let script = format!(
                    "for ip in {}; do until ping -c1 -W1 $ip >/dev/null; do sleep 0.1; done; done",
                    ips.join(" ")
                );
                first.succeed(Cmd::script(script).timeout(SETTLE)).await?;
            }
        }
        Ok(())
    }

    /// The capture of every frame the switch received.
    pub fn capture(&self) -> PathBuf {
        self.switch.flush_captures()
    }

    /// The capture of `name`'s cable, both directions.
    pub fn port_capture(&self, name: &str) -> PathBuf {
        self.switch.port_capture(self.port(name))
    }

    pub fn artifacts(&self) -> &Path {
        &self.artifacts
    }

    /// The private directory of the switch's sockets.
    pub fn sockets_dir(&self) -> &Path {
        self.sockets.path()
    }

    /// Powers every guest off; on success the run's artifacts are removed, unless they are kept
    /// ([`crate::assets::Runs::keep_passed`]).
    pub async fn shutdown(mut self) -> Result<()> {
        self.write_summary();
        let vms = std::mem::take(&mut self.vms);
        let mut first_error = None;
        for result in futures::future::join_all(vms.into_iter().map(Vm::shutdown)).await {
            if let Err(e) = result {
                first_error = first_error.or(Some(e));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                self.finished = true;
                Ok(())
            }
        }
    }

    /// `summary.json`: guests, MACs, ports and counters, and each guest's QMP events.
    fn write_summary(&self) {
        #[derive(Serialize)]
        struct Guest {
            name: String,
            nics: Vec<Nic>,
            qmp_events: Vec<String>,
            /// The last lines exchanged with QEMU over QMP (`->` sent, `<-` received).
            qmp_lines: Vec<String>,
            /// Bytes its console log left out to stay bounded (the log says where).
            console_cut_bytes: u64,
        }
        /// One NIC and its switch port.
        #[derive(Serialize)]
        struct Nic {
            mac: String,
            port: usize,
            counters: PortCounters,
            learned: Vec<String>,
            /// Frames its capture left out to stay bounded (its last frame says so).
            capture_cut_frames: u64,
        }
        let guests: Vec<Guest> = self
            .vms
            .iter()
            .zip(&self.ports)
            .map(|(vm, ports)| Guest {
                name: vm.name().to_string(),
                nics: vm
                    .macs()
                    .iter()
                    .zip(ports)
                    .map(|(mac, &port)| Nic {
                        mac: mac.to_string(),
                        port,
                        counters: self.switch.counters(port),
                        learned: self
                            .switch
                            .learned(port)
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                        capture_cut_frames: self.switch.capture_cut(Some(port)),
                    })
                    .collect(),
                qmp_events: vm
                    .qmp()
                    .events()
                    .iter()
                    .map(|e| format!("{} {}", e.name, e.data))
                    .collect(),
                qmp_lines: vm.qmp().raw_log(),
                console_cut_bytes: vm.console_cut(),
            })
            .collect();
        if let Ok(json) = serde_json::to_vec_pretty(&guests) {
            let _ = crate::private::file(&self.artifacts.join("summary.json"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, &json));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.finished && !std::thread::panicking() {
            if !self.keep_passed {
                let _ = std::fs::remove_dir_all(&self.artifacts);
            }
            return;
        }
        if !self.vms.is_empty() {
            self.write_summary();
        }
        for vm in &mut self.vms {
            vm.mark_failed();
        }
        eprintln!(
            "lab: artifacts of this run (captures, consoles, summary) kept in {}",
            self.artifacts.display()
        );
    }
}

/// How long to wait for ARP, carrier and the like to settle on the LAN.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The /24 every lab LAN numbers its guests in, as the seed does (`192.168.88.0/24`).
pub const LAN_PREFIX: &str = "192.168.88";
/// The IPv6 /64 beside it: a unique local prefix (`fd00:88::/64`), so nothing leaves it.
pub const LAN_PREFIX6: &str = "fd00:88";
