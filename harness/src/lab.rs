//! Several guests on their network, in the style of the NixOS test driver:
//! `lab.vm("host1").succeed(..)`. A lab boots from a [`Spec`] (made from a topology file, `lab
//! run`'s flags or a [`LabBuilder`]) and nothing else: every segment's switch starts with each
//! port's policy and impairment, the hosts boot a few at a time, get their addresses, routes
//! and forwarding, then run their setup.
//!
//! Each run keeps its evidence under `target/lab/runs/<name>-<time>/`: the switch captures while
//! it runs (the first segment's at the top, each other's in a directory named after it), and on
//! failure every guest's console, its QMP events and a `summary.json`. A run that ends with
//! [`Lab::shutdown`] succeeding removes the directory; any other end keeps it and says where it
//! is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::assets::Assets;
use crate::config::{NetBackend, VmConfig};
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::lan::impair::Impairment;
use crate::lan::{PortCounters, PortPolicy, SwitchHandle};
use crate::spec::{
    HostSpec, Image, RawHost, RawLan, RawPort, RawSwitch, Route, Source, Sourced, Spec,
};
use crate::vm::{Cmd, Vm};

pub use crate::spec::{LAN_PREFIX, LAN_PREFIX6, MAX_HOSTS};

/// How many guests start at once: each start (a cold boot, or a restore's state load and
/// re-translation under TCG) keeps a core busy, so more at once only makes each slower and
/// every deadline tighter.
pub fn starts_at_once() -> usize {
    2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A lab described in code: each call is a part of a [`RawLan`], named by the call in a
/// refusal. [`LabBuilder::boot`] resolves it and boots the [`Spec`].
///
/// ```no_run
/// # async fn demo() -> lab_harness::Result<()> {
/// use lab_harness::{Assets, Lab, PortPolicy};
/// let assets = Assets::from_env()?;
/// let lab = Lab::builder(&assets, "three")
///     .host("host1").host("host2").host("host3")
///     .ports(PortPolicy::HAIRPIN)
///     .numbered() // 192.168.88.N/24 and fd00:88::N/64 on each eth0
///     .boot()
///     .await?;
/// lab.vm("host1").succeed("ping -c1 192.168.88.3").await?;
/// lab.shutdown().await
/// # }
/// ```
#[derive(Debug)]
pub struct LabBuilder {
    assets: Assets,
    raw: RawLan,
}

/// A booted lab: guests, the switches between them, and the run's artifact directory.
#[derive(Debug)]
pub struct Lab {
    // Guests go before the switches, the switches before the directories their sockets are in.
    vms: Vec<Vm>,
    spec: Spec,
    /// One running switch per segment of the spec, in its order.
    segments: Vec<SwitchHandle>,
    /// The switches' socket directory, held until they are gone.
    sockets: tempfile::TempDir,
    artifacts: PathBuf,
    /// Whether a lab that passes keeps its artifacts ([`crate::assets::Runs::keep_passed`]).
    keep_passed: bool,
    finished: bool,
    /// What it does, as events (`events.ndjson`, `lab events`).
    events: std::sync::Arc<Events>,
    /// Tells the switches' and consoles' changes as events; aborted with the lab.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl LabBuilder {
    /// `run` names the artifact directory (e.g. the test's name).
    pub fn new(assets: &Assets, run: &str) -> Self {
        let mut raw = RawLan::new(Source::Call(format!("Lab::builder(_, {run:?})")));
        raw.name = run.to_string();
        Self {
            assets: assets.clone(),
            raw,
        }
    }

    fn call(what: String) -> Source {
        Source::Call(format!("LabBuilder::{what}"))
    }

    /// Adds a guest called `name` of the base image.
    pub fn host(mut self, name: &str) -> Self {
        let at = Self::call(format!("host({name:?})"));
        self.raw
            .hosts
            .push(RawHost::new(Sourced::new(name.into(), at)));
        self
    }

    /// Adds a guest configured in full (e.g. [`Assets::nest_vm`]); its name is `cfg.name`, its
    /// NICs are plugged by the lab.
    pub fn host_config(mut self, cfg: VmConfig) -> Self {
        let at = Self::call(format!("host_config({:?})", cfg.name));
        let mut host = RawHost::new(Sourced::new(cfg.name.clone(), at));
        host.config = Some(Box::new(cfg));
        self.raw.hosts.push(host);
        self
    }

    /// Adds a guest and lets `adjust` change its configuration (memory, kernel arguments...).
    pub fn host_with(self, name: &str, adjust: impl FnOnce(&mut VmConfig)) -> Self {
        let mut cfg = self.assets.vm(name);
        adjust(&mut cfg);
        self.host_config(cfg)
    }

    /// The last host added, changed by `adjust` (its kernel, size, addresses...): for what
    /// [`RawHost`] holds that the calls above do not say.
    pub fn with(mut self, adjust: impl FnOnce(&mut RawHost)) -> Self {
        if let Some(host) = self.raw.hosts.last_mut() {
            adjust(host);
        }
        self
    }

    /// The last host added is of `size` (CPUs, memory, NICs).
    pub fn size(mut self, size: crate::assets::Size) -> Self {
        if let Some(host) = self.raw.hosts.last_mut() {
            let at = Self::call(format!("size({size:?}) of {:?}", host.name.value));
            host.set_size(&size, &at);
        }
        self
    }

    /// The last host added gets `extras` (packages, modules, a directory).
    pub fn extras(mut self, extras: crate::assets::Extras) -> Self {
        if let Some(host) = self.raw.hosts.last_mut() {
            let at = Self::call(format!("extras(..) of {:?}", host.name.value));
            host.set_extras(&extras, &at);
        }
        self
    }

    /// The settings every port of the default switch starts with (hairpin, MAC cap, VLANs);
    /// change ports later with [`Lab::set_policy`].
    pub fn ports(mut self, policy: PortPolicy) -> Self {
        let at = Self::call(format!("ports({policy:?})"));
        let port = RawPort::of_policy(&policy, &at);
        match self.raw.switches.first_mut() {
            Some(first) => first.port = port,
            None => self.raw.switches.push(RawSwitch {
                name: Sourced::new(crate::spec::DEFAULT_SWITCH.into(), at),
                port,
            }),
        }
        self
    }

    /// Every host's `eth0` on the first switch that has no address of its own gets the
    /// LAN's: `192.168.88.N/24` and `fd00:88::N/64`, N counted from 1 in the order hosts
    /// were added; the lab is ready once the first host reaches every other.
    pub fn numbered(mut self) -> Self {
        self.raw.numbered = true;
        self
    }

    /// Every host reaches every other as root over ssh ([`crate::ssh`]).
    pub fn ssh(mut self) -> Self {
        self.raw.ssh = Some(Sourced::new(true, Self::call("ssh()".into())));
        self
    }

    /// `host` is the remote end of the first host's drivers/net tests
    /// ([`crate::spec::RemoteEnd`]); implies [`LabBuilder::ssh`].
    pub fn remote(mut self, host: &str) -> Self {
        let at = Self::call(format!("remote({host:?})"));
        self.raw.remote = Some(Sourced::new(host.into(), at));
        self
    }

    /// What the calls describe, as written.
    pub fn raw(&self) -> &RawLan {
        &self.raw
    }

    /// The lab the calls describe, checked.
    pub fn spec(&self) -> Result<Spec> {
        self.raw.resolve().map_err(Error::from)
    }

    /// Checks the lab, starts its switches and boots the guests ([`Lab::boot`]).
    pub async fn boot(self) -> Result<Lab> {
        let spec = self.spec()?;
        Lab::boot(&self.assets, spec).await
    }
}

impl Lab {
    /// Boots `spec`: each segment's switch with every port's policy and impairment, then the
    /// guests, [`starts_at_once`] at a time, each on its kernel; then their addresses, routes
    /// and forwarding, and last each host's setup commands in order. Packages, modules and
    /// sizes are checked before anything boots.
    pub async fn boot(assets: &Assets, spec: Spec) -> Result<Lab> {
        let configs = spec
            .hosts()
            .iter()
            .map(|h| {
                let mut cfg = host_config(assets, h)?;
                cfg.policy.seed = spec.seed();
                Ok(cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let artifacts = assets
            .runs
            .dir
            .join(format!("{}-{stamp}", spec.name().replace(['/', ' '], "_")));
        let keep_passed = assets.runs.keep_passed;
        let sockets =
            crate::rundirs::create("lan", None).map_err(|e| Error::io(Path::new("temp dir"), e))?;
        let mut segments = Vec::new();
        for (s, segment) in spec.segments().iter().enumerate() {
            let ports: Vec<(PortPolicy, Impairment)> = segment
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let seed = spec.impairment_seed(s, i);
                    (
                        p.policy,
                        Impairment {
                            seed,
                            ..p.impairment
                        },
                    )
                })
                .collect();
            let dir = sockets.path().join(s.to_string());
            crate::private::dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let captures = if s == 0 {
                artifacts.clone()
            } else {
                artifacts.join(&segment.name)
            };
            segments.push(
                SwitchHandle::start(&ports, &dir, &captures)
                    .map_err(|e| Error::io(&captures, e))?,
            );
        }

        let mut set = tokio::task::JoinSet::new();
        let at_once = std::sync::Arc::new(tokio::sync::Semaphore::new(starts_at_once()));
        for ((guest, mut cfg), host) in configs.into_iter().enumerate().zip(spec.hosts()) {
            cfg.net = NetBackend::Switch(
                host.nics
                    .iter()
                    .map(|n| segments[n.segment].sockets(n.port).clone())
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
        let events = std::sync::Arc::new(Events::new(&artifacts.join("events.ndjson")));
        for vm in &vms {
            events.emit(Event::GuestUp {
                host: vm.name().to_string(),
                boot: match vm.boot_kind() {
                    crate::vm::BootKind::Cold => "cold".into(),
                    crate::vm::BootKind::Restored => "restored".into(),
                    crate::vm::BootKind::Fallback(_) => "fallback".into(),
                },
            });
        }
        let mut lab = Lab {
            vms,
            spec,
            segments,
            sockets,
            artifacts,
            keep_passed,
            finished: false,
            events,
            watcher: None,
        };
        if let Some(e) = first_error {
            // Dropping `lab` kills the guests that did boot and keeps the artifacts.
            return Err(e);
        }
        lab.watcher = Some(tokio::spawn(crate::events::watch(
            std::sync::Arc::clone(&lab.events),
            lab.watched(),
        )));
        lab.configure().await?;
        if lab.spec.ssh() {
            crate::ssh::connect(&lab.vms, &lab.spec).await?;
        }
        lab.prepare_remote().await?;
        lab.run_setup().await?;
        Ok(lab)
    }

    /// Every host's addresses, routes and forwarding, all hosts at once; a numbered LAN is
    /// ready when its first host reaches every other.
    async fn configure(&self) -> Result<()> {
        let names = self.spec.etc_hosts();
        let configured = self
            .vms
            .iter()
            .zip(self.spec.hosts())
            .filter_map(|(vm, host)| network_of(host, &names).map(|n| vm.network(n)));
        for result in futures::future::join_all(configured).await {
            result?;
        }
        if self.spec.numbered() {
            self.settle(false).await?;
        }
        Ok(())
    }

    /// With a remote end for the first host's drivers/net tests: its `net.config` written
    /// where a copy of the selftests has `drivers/net`, and the connection to it opened, so
    /// that a broken one fails here and the tests' first command is as fast as the rest.
    async fn prepare_remote(&self) -> Result<()> {
        let (Some((_, remote)), Some(config)) = (self.spec.remote(), self.spec.net_config()) else {
            return Ok(());
        };
        let first = &self.vms[0];
        let dir = format!("{}/drivers/net", crate::assets::DIR_IN_GUEST);
        if first.run(Cmd::argv(["test", "-d", &dir])).await?.code == Some(0) {
            first
                .write_file(&format!("{dir}/net.config"), config, 0o644)
                .await?;
        }
        first.succeed(Cmd::argv(["ssh", remote, "true"])).await?;
        Ok(())
    }

    /// Each host's setup commands, host by host in order.
    async fn run_setup(&self) -> Result<()> {
        for (vm, host) in self.vms.iter().zip(self.spec.hosts()) {
            for command in &host.setup {
                vm.succeed(Cmd::script(command.clone())).await?;
            }
        }
        Ok(())
    }

    /// Runs `work` (a job, checks, a shell) while the spec's timeline plays from now: each
    /// change to a cable at its time after this call, as `lab link` and `lab set` make them.
    /// `work`'s end ends the timeline; a change that fails ends both.
    pub async fn alongside_timeline<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        let start = tokio::time::Instant::now();
        let timeline = async {
            for t in self.spec.timeline() {
                tokio::time::sleep_until(start + t.after).await;
                let name = self.spec.hosts()[t.host].name.clone();
                match &t.change {
                    crate::spec::Change::Link(up) => self.nic_cable(&name, t.nic, *up).await?,
                    crate::spec::Change::Impair(i) => self.set_nic_impairment(&name, t.nic, *i)?,
                }
            }
            Ok::<(), Error>(())
        };
        tokio::pin!(work);
        tokio::pin!(timeline);
        let mut played = false;
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                done = &mut timeline, if !played => {
                    done?;
                    played = true;
                }
            }
        }
    }

    /// What the watcher looks at: every NIC's port, named `host:ethN`, and every console.
    fn watched(&self) -> crate::events::Watched {
        let mut ports = Vec::new();
        for host in self.spec.hosts() {
            for (n, nic) in host.nics.iter().enumerate() {
                ports.push(crate::events::WatchedPort {
                    name: format!("{}:eth{n}", host.name),
                    segment: self.spec.segments()[nic.segment].name.clone(),
                    switch: self.segments[nic.segment].view(),
                    port: nic.port,
                });
            }
        }
        let consoles = self
            .vms
            .iter()
            .map(|vm| (vm.name().to_string(), vm.console.clone()))
            .collect();
        crate::events::Watched { ports, consoles }
    }

    /// Its events: emit a job's, or read them live ([`Events::subscribe`]).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The lab as it was booted.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

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

    /// The port `name`'s NIC `nic` (`eth<nic>`) is plugged into, on its segment
    /// ([`Lab::nic_switch`]). Panics on a NIC the guest does not have: that is a bug in the
    /// test.
    pub fn nic_port(&self, name: &str, nic: u8) -> usize {
        self.nic(name, nic).port
    }

    /// The switch `name`'s NIC `nic` is plugged into.
    pub fn nic_switch(&self, name: &str, nic: u8) -> &SwitchHandle {
        &self.segments[self.nic(name, nic).segment]
    }

    fn nic(&self, name: &str, nic: u8) -> &crate::spec::Nic {
        self.spec.hosts()[self.index(name)]
            .nics
            .get(usize::from(nic))
            .unwrap_or_else(|| panic!("{name} has no eth{nic}: give it more `nics`"))
    }

    /// The first segment's switch (the only one of a flat LAN).
    pub fn switch(&self) -> &SwitchHandle {
        &self.segments[0]
    }

    /// The switch of the segment called `name` (a `[[switch]]`, or a host-to-host cable's
    /// `host1.eth1-host2.eth0`).
    pub fn segment(&self, name: &str) -> Option<&SwitchHandle> {
        let at = self.spec.segments().iter().position(|s| s.name == name)?;
        self.segments.get(at)
    }

    pub fn counters(&self, name: &str) -> PortCounters {
        self.nic_switch(name, 0).counters(self.port(name))
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
        self.nic_switch(name, nic)
            .set_policy(self.nic_port(name, nic), policy);
        self.events.emit(Event::Policy {
            port: format!("{name}:eth{nic}"),
            policy: format!("{policy:?}"),
        });
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
        self.nic_switch(name, nic)
            .set_impairment(self.nic_port(name, nic), impairment);
        self.events.emit(Event::Impairment {
            port: format!("{name}:eth{nic}"),
            impairment: impairment.to_string(),
        });
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
        self.nic_switch(name, nic).set_up(port, up);
        self.events.emit(Event::Cable {
            port: format!("{name}:eth{nic}"),
            up,
        });
        Ok(())
    }

    /// The address [`Lab::number_hosts`] gives `name`: `192.168.88.<n>` for the n-th guest
    /// added (host1 .1, host2 .2...).
    pub fn ip(&self, name: &str) -> String {
        crate::spec::lan_addresses(self.index(name))[0]
            .addr()
            .to_string()
    }

    /// `name`'s IPv6 address on `eth0`: `fd00:88::N` in the LAN's unique local prefix (/64),
    /// N as in [`Lab::ip`]. Its link-local address is the kernel's, from its MAC.
    pub fn ip6(&self, name: &str) -> String {
        crate::spec::lan_addresses(self.index(name))[1]
            .addr()
            .to_string()
    }

    /// Gives every guest its [`Lab::ip`] (/24) and [`Lab::ip6`] (/64) on `eth0` and waits until
    /// the LAN is usable: the first guest reaches every other (ICMP echo), and every `eth0` is
    /// operationally UP (the kernel's linkwatch applies carrier up to a second after the link
    /// is set up, and macvlan children only come up once their parent's operstate is UP).
    pub async fn number_hosts(&self) -> Result<()> {
        // Every guest at once, each set up by its agent, with no program started.
        let numbered = self.vms.iter().enumerate().map(|(i, vm)| {
            vm.network(lab_proto::Network {
                nics: vec![nic_setup(0, &crate::spec::lan_addresses(i), &[])],
                ..lab_proto::Network::default()
            })
        });
        for result in futures::future::join_all(numbered).await {
            result?;
        }
        self.settle(true).await
    }

    /// Waits until the first guest reaches every other's [`Lab::ip`] on the LAN (all of them
    /// when `all`, as after [`Lab::number_hosts`]); else those whose `eth0` has it on a plain
    /// port of the first switch, as the first's must (a VLAN port carries no untagged frame
    /// until a setup command makes it).
    async fn settle(&self, all: bool) -> Result<()> {
        let on_lan = |i: usize| {
            if all {
                return true;
            }
            let nic = &self.spec.hosts()[i].nics[0];
            let lan = crate::spec::lan_addresses(i)[0];
            nic.segment == 0
                && nic.addresses.contains(&lan)
                && self.spec.segments()[0].ports[nic.port].policy.vlans
                    == crate::lan::PortVlans::Unaware
        };
        let Some(first) = self.vms.first().filter(|_| on_lan(0)) else {
            return Ok(());
        };
        let ips: Vec<String> = (1..self.vms.len())
            .filter(|&i| on_lan(i))
            .map(|i| self.ip(self.vms[i].name()))
            .collect();
        if !ips.is_empty() {
            first
                .reach(lab_proto::Reach {
                    addresses: ips,
                    within: SETTLE,
                })
                .await?;
        }
        Ok(())
    }

    /// The capture of every frame the first segment's switch received.
    pub fn capture(&self) -> PathBuf {
        self.switch().flush_captures()
    }

    /// The capture of `name`'s `eth0` cable, both directions.
    pub fn port_capture(&self, name: &str) -> PathBuf {
        self.nic_switch(name, 0).port_capture(self.port(name))
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
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        let vms = std::mem::take(&mut self.vms);
        for vm in &vms {
            self.events.emit(Event::GuestDown {
                host: vm.name().to_string(),
            });
        }
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
            /// The segment (switch) it is plugged into, and its port there.
            segment: String,
            port: usize,
            counters: PortCounters,
            learned: Vec<String>,
            /// Frames its capture left out to stay bounded (its last frame says so).
            capture_cut_frames: u64,
        }
        let guests: Vec<Guest> = self
            .vms
            .iter()
            .zip(self.spec.hosts())
            .map(|(vm, host)| Guest {
                name: vm.name().to_string(),
                nics: vm
                    .macs()
                    .iter()
                    .zip(&host.nics)
                    .map(|(mac, nic)| {
                        let switch = &self.segments[nic.segment];
                        Nic {
                            mac: mac.to_string(),
                            segment: self.spec.segments()[nic.segment].name.clone(),
                            port: nic.port,
                            counters: switch.counters(nic.port),
                            learned: switch
                                .learned(nic.port)
                                .iter()
                                .map(ToString::to_string)
                                .collect(),
                            capture_cut_frames: switch.capture_cut(Some(nic.port)),
                        }
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
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
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

/// `host`'s guest configuration, from the assets of its kernel: its image, extras and kernel
/// watch.
fn host_config(assets: &Assets, host: &HostSpec) -> Result<VmConfig> {
    let assets = match &host.kernel {
        Some(kernel) => assets.for_kernel(kernel)?,
        None => assets.clone(),
    };
    let mut cfg = match &host.image {
        Image::Base => assets.vm(&host.name),
        Image::Nest { inner_vms } => assets.nest_vm(&host.name, *inner_vms)?,
        Image::Given(cfg) => (**cfg).clone(),
    };
    // A configuration made in code is booted as it was made, unless extras were added to it.
    let given_as_made = matches!(host.image, Image::Given(_))
        && host.extras == crate::assets::Extras::default()
        && host.size == crate::assets::Size::default();
    if !given_as_made {
        assets.apply(&mut cfg, &host.extras, host.size)?;
    }
    cfg.policy.allow_splats |= host.allow_splats;
    if host.kmemleak {
        // Asked for, kmemleak is checked to be in the kernel and turned on there: a policy
        // alone would scan a kernel that never recorded anything.
        assets.check_kmemleak()?;
        cfg.policy.kmemleak = true;
        cfg.boot
            .extra_cmdline
            .push(crate::kmemleak::CMDLINE.to_string());
    }
    Ok(cfg)
}

/// `eth{n}` with its addresses and routes, as its agent sets it up.
fn nic_setup(n: usize, addresses: &[ipnet::IpNet], routes: &[Route]) -> lab_proto::NicSetup {
    lab_proto::NicSetup {
        name: format!("eth{n}"),
        addresses: addresses.iter().map(ToString::to_string).collect(),
        routes: routes
            .iter()
            .map(|r| lab_proto::RouteSetup {
                to: r.to.map(|to| to.to_string()),
                via: r.via.to_string(),
            })
            .collect(),
    }
}

/// What `host`'s agent sets up: its NICs' addresses (each NIC brought up and operational
/// before anything is sent: frames queued before may be dropped), their routes, forwarding,
/// and the lab's `names` in `/etc/hosts`; `None` when it has none of these.
fn network_of(host: &HostSpec, names: &str) -> Option<lab_proto::Network> {
    let network = lab_proto::Network {
        // A NIC with routes but no address of its own is brought up too: its routes need it.
        nics: host
            .nics
            .iter()
            .enumerate()
            .filter(|(_, nic)| !nic.addresses.is_empty() || !nic.routes.is_empty())
            .map(|(n, nic)| nic_setup(n, &nic.addresses, &nic.routes))
            .collect(),
        forwarding: host.forwarding,
        hosts: names.to_string(),
    };
    (network != lab_proto::Network::default()).then_some(network)
}
