//! One network model. Whatever describes a lab (a topology file, `lab run`'s flags, or
//! [`crate::LabBuilder`] calls) is first a [`RawLan`]: what was written, each part with its
//! [`Source`]. [`RawLan::resolve`] checks all of it once and gives a [`Spec`], which
//! [`crate::Lab::boot`] boots and nothing else does:
//!
//! ```text
//! topology file ─┐
//! lab run flags ─┼─▶ RawLan (values + where each came from) ──resolve──▶ Spec ──▶ Lab::boot
//! LabBuilder    ─┘                  every mistake refused here, naming its source
//! ```
//!
//! A `Spec` cannot be made any other way, so whatever boots was checked: its hosts with their
//! kernel, image, extras, NICs, addresses and routes; its segments (switches), each port with
//! the policy and impairment it starts with. It holds no sources: the same LAN written three
//! ways is the same `Spec`.

pub mod file;
mod raw;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::config::VmConfig;
use crate::lan::impair::Impairment;
use crate::lan::PortPolicy;

pub use file::{Check, Probe, Topology};
pub use raw::{
    RawAt, RawCable, RawEnd, RawHost, RawLan, RawPort, RawRoute, RawSwitch, Sourced,
    DEFAULT_SWITCH, DRIVERS_NET_PACKAGES, MAX_HOSTS, SSH_PACKAGES,
};

/// What a user adds to a guest beyond the base image. Everything is checked, and packages are
/// fetched, before any guest boots ([`crate::Assets::vm_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    /// Debian packages (same archive and release as the image), with their dependencies.
    pub packages: Vec<String>,
    /// Kernel modules `modprobe`d at boot, with what they depend on.
    pub modules: Vec<String>,
    /// Directories of out-of-tree modules (a `Kbuild` saying `obj-m := NAME.o` and its
    /// sources), built on the host against the guests' kernel and `insmod`ed at boot after
    /// [`Extras::modules`]; the `.ko` files are in `/lab-modules` too.
    pub module_sources: Vec<PathBuf>,
    /// A host directory copied to `/lab` in the guest.
    pub dir: Option<PathBuf>,
}

/// A guest's size; what is left out is the default (memory: what its image and extras need,
/// at least 256 MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// NICs (`eth0`, `eth1`...), each its own switch port with its own cable: bonds and the
    /// like.
    pub nics: Option<u8>,
}

/// Where something a user wrote came from, named in its refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A line of a topology file.
    Line {
        file: std::sync::Arc<str>,
        line: usize,
    },
    /// A command-line flag, as it is spelt (`--hosts`).
    Flag(String),
    /// A builder call, as it was written (`LabBuilder::host("h1")`).
    Call(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Line { file, line: 0 } => write!(f, "{file}"),
            Source::Line { file, line } => write!(f, "{file}:{line}"),
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Call(call) => write!(f, "{call}"),
        }
    }
}

/// A mistake in a lab's description, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct SpecError {
    pub at: Source,
    pub message: String,
}

impl SpecError {
    pub fn new(source: &Source, message: impl Into<String>) -> Self {
        Self {
            at: source.clone(),
            message: message.into(),
        }
    }

    /// The line of the file it is at, when it comes from a file.
    pub fn line(&self) -> Option<usize> {
        match self.at {
            Source::Line { line, .. } => Some(line),
            _ => None,
        }
    }
}

/// A lab, checked: what [`crate::Lab::boot`] boots. Made only by [`RawLan::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Names the lab's run directory.
    name: String,
    hosts: Vec<HostSpec>,
    segments: Vec<Segment>,
    /// A flat LAN numbered as [`lan_addresses`] says, ready once its first host reaches every
    /// other's `eth0`.
    numbered: bool,
    /// Every host reaches every other as root over ssh ([`crate::ssh`]).
    ssh: bool,
    /// The remote end of the first host's drivers/net tests.
    remote: Option<RemoteEnd>,
    /// Decides every random choice the lab makes (impairments without a seed of their own,
    /// restored guests' kernel randomness): a run repeated with it is repeated as far as the
    /// lab can. `None`: fresh randomness.
    seed: Option<u64>,
    /// Changes to cables in time, after setup, in order ([`crate::Lab::play_timeline`]).
    timeline: Vec<Timed>,
}

/// A change to a cable at a time after setup.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub after: std::time::Duration,
    pub host: usize,
    pub nic: u8,
    pub change: Change,
}

/// What happens to the cable.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Plugged in (`true`) or pulled out.
    Link(bool),
    Impair(Impairment),
}

/// Where the tests of the selftests' `drivers/net` find their remote end, in HW mode: the
/// first host's NIC `netif` on a segment with `host`, and the addresses either has there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEnd {
    /// The remote host's index.
    pub host: usize,
    /// The device under test, on the first host (`eth0`).
    pub netif: String,
    pub local_v4: Option<IpAddr>,
    pub local_v6: Option<IpAddr>,
    pub remote_v4: Option<IpAddr>,
    pub remote_v6: Option<IpAddr>,
}

impl RemoteEnd {
    /// The families both ends have: `(local, remote, "4" or "6")`.
    pub fn pairs(&self) -> Vec<(IpAddr, IpAddr, &'static str)> {
        let mut pairs = Vec::new();
        if let (Some(l), Some(r)) = (self.local_v4, self.remote_v4) {
            pairs.push((l, r, "4"));
        }
        if let (Some(l), Some(r)) = (self.local_v6, self.remote_v6) {
            pairs.push((l, r, "6"));
        }
        pairs
    }

    /// The variables `drivers/net/README.rst` names (`NETIF`, `LOCAL_V4`...,
    /// `REMOTE_TYPE=ssh`, `REMOTE_ARGS` the remote host's name), for the environment or
    /// `net.config`; a family only one end has is left out, as the tests require.
    pub fn variables(&self, remote_name: &str) -> Vec<(String, String)> {
        let mut vars = vec![("NETIF".to_string(), self.netif.clone())];
        for (local, remote, family) in self.pairs() {
            vars.push((format!("LOCAL_V{family}"), local.to_string()));
            vars.push((format!("REMOTE_V{family}"), remote.to_string()));
        }
        vars.push(("REMOTE_TYPE".into(), "ssh".into()));
        vars.push(("REMOTE_ARGS".into(), remote_name.to_string()));
        vars
    }
}

/// One guest.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    pub name: String,
    /// Its own kernel; `None` is the assets' own.
    pub kernel: Option<Kernel>,
    pub image: Image,
    pub size: Size,
    pub extras: Extras,
    /// A kernel problem on its console does not fail the run ([`crate::Policy::allow_splats`]).
    pub allow_splats: bool,
    /// Its kernel is scanned for leaks at the end ([`crate::Policy::kmemleak`]).
    pub kmemleak: bool,
    /// `eth0`, `eth1`...: where each is plugged in and what it is given.
    pub nics: Vec<Nic>,
    /// It routes between its NICs (IPv4 and IPv6 forwarding on).
    pub forwarding: bool,
    /// Commands run as root once every host has its addresses and routes, in order.
    pub setup: Vec<String>,
}

impl HostSpec {
    /// Every address of every NIC, `eth0`'s first.
    pub fn addresses(&self) -> impl Iterator<Item = &IpNet> {
        self.nics.iter().flat_map(|n| &n.addresses)
    }
}

/// A host's own kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    /// A kernel of `kernels/kernels.toml`, by id.
    Id(String),
    /// The kernel built in this Linux tree (its `arch/x86/boot/bzImage` and `make
    /// modules_install`), as `--kernel-tree` boots it.
    Tree(PathBuf),
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kernel::Id(id) => write!(f, "{id}"),
            Kernel::Tree(dir) => write!(f, "the tree {}", dir.display()),
        }
    }
}

/// What a guest boots.
#[derive(Debug, Clone)]
pub enum Image {
    /// The base image.
    Base,
    /// The nest image, with room for this many VMs of its own ([`crate::Assets::nest_vm`]).
    Nest { inner_vms: u32 },
    /// A configuration made in code ([`crate::LabBuilder::host_config`]); its NICs are the
    /// lab's to plug.
    Given(Box<VmConfig>),
}

impl PartialEq for Image {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Image::Base, Image::Base) => true,
            (Image::Nest { inner_vms: a }, Image::Nest { inner_vms: b }) => a == b,
            // A configuration made in code is its own: equal only to itself.
            (Image::Given(a), Image::Given(b)) => std::ptr::eq(&**a, &**b),
            _ => false,
        }
    }
}

/// One NIC of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The segment it is plugged into, and the port there.
    pub segment: usize,
    pub port: usize,
    /// Its addresses, v4 and v6, with their prefix.
    pub addresses: Vec<IpNet>,
    /// Routes through a gateway on this NIC's subnets.
    pub routes: Vec<Route>,
}

/// A static route: `to` (none: the default route of `via`'s family) through `via`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub to: Option<IpNet>,
    pub via: IpAddr,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to {
            Some(to) => write!(f, "{to} via {}", self.via),
            None => write!(f, "default via {}", self.via),
        }
    }
}

/// One switch, or the two ends of a cable between two hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    pub ports: Vec<Port>,
}

/// A switch port: which NIC it takes, and how it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub host: usize,
    pub nic: u8,
    pub policy: PortPolicy,
    /// What its cable does to frames either way.
    pub impairment: Impairment,
}

impl Spec {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same lab under another name (its run directory's).
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    pub fn numbered(&self) -> bool {
        self.numbered
    }

    /// Whether its hosts reach each other over ssh.
    pub fn ssh(&self) -> bool {
        self.ssh
    }

    /// The remote end of the first host's drivers/net tests, and its host's name.
    pub fn remote(&self) -> Option<(&RemoteEnd, &str)> {
        self.remote
            .as_ref()
            .map(|r| (r, self.hosts[r.host].name.as_str()))
    }

    /// Lines for `/etc/hosts`: every host's name at each of its addresses, so that `ssh host2`
    /// and `ping host2` work from every host (`getent hosts host2` gives them all).
    pub fn etc_hosts(&self) -> String {
        let mut text = String::new();
        for host in &self.hosts {
            for a in host.addresses() {
                text.push_str(&format!("{} {}\n", a.addr(), host.name));
            }
        }
        text
    }

    /// What a job on the first host finds in its environment: its remote end's variables
    /// ([`RemoteEnd::variables`]), if it has one.
    pub fn job_env(&self) -> Vec<(String, String)> {
        self.remote()
            .map(|(end, name)| end.variables(name))
            .unwrap_or_default()
    }

    /// `drivers/net/net.config` for the first host's tests, when it has a remote end.
    pub fn net_config(&self) -> Option<String> {
        let (end, name) = self.remote()?;
        let mut text = String::from("# Written by macvlan-lab: this lab's remote end, over ssh\n");
        for (key, value) in end.variables(name) {
            text.push_str(&format!("{key}={value}\n"));
        }
        Some(text)
    }

    pub fn hosts(&self) -> &[HostSpec] {
        &self.hosts
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The kernels its hosts boot beyond the assets' own, each once.
    pub fn kernels(&self) -> Vec<&Kernel> {
        let mut ids: Vec<&Kernel> = self
            .hosts
            .iter()
            .filter_map(|h| h.kernel.as_ref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The first host's name: where `lab run` runs its job.
    pub fn first_host(&self) -> &str {
        &self.hosts[0].name
    }

    /// Gives the first host `dir` (copied to `/lab`), where a job runs.
    pub fn with_dir_on_first(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.hosts[0].extras.dir = dir;
        self
    }

    /// The lab's randomness decided by `seed` ([`Spec::seed`]).
    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Its changes to cables in time, in order.
    pub fn timeline(&self) -> &[Timed] {
        &self.timeline
    }

    /// The seed of segment `segment`'s port `port`'s impairment: its own if it has one, else
    /// one the lab's seed decides.
    pub fn impairment_seed(&self, segment: usize, port: usize) -> Option<u64> {
        let own = self.segments[segment].ports[port].impairment.seed;
        own.or_else(|| {
            let mut rng = fastrand::Rng::with_seed(self.seed?);
            let mix = rng.u64(..) ^ ((segment as u64) << 32 | port as u64);
            Some(fastrand::Rng::with_seed(mix).u64(..))
        })
    }

    /// Every host's kernel watched for splats unless `allow_splats`, and for leaks if
    /// `kmemleak`.
    pub fn with_watch(mut self, allow_splats: bool, kmemleak: bool) -> Self {
        for host in &mut self.hosts {
            host.allow_splats |= allow_splats;
            host.kmemleak |= kmemleak;
        }
        self
    }
}

/// The /24 a flat lab numbers its guests in, as the seed does (`192.168.88.0/24`).
pub const LAN_PREFIX: &str = "192.168.88";
/// The IPv6 /64 beside it: a unique local prefix (`fd00:88::/64`), so nothing leaves it.
pub const LAN_PREFIX6: &str = "fd00:88";

/// The addresses the `n`-th host (from 0) of a numbered LAN has on `eth0`.
pub fn lan_addresses(n: usize) -> [IpNet; 2] {
    let v4 = format!("{LAN_PREFIX}.{}/24", n + 1);
    // Decimal digits read as hex, as [`crate::Lab::ip6`] spells them: host 12 is `fd00:88::12`.
    let v6 = format!("{LAN_PREFIX6}::{}/64", n + 1);
    [
        v4.parse().expect("a /24 of the LAN"),
        v6.parse().expect("a /64 of the LAN"),
    ]
}
