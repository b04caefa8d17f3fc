//! What defines one guest, as data: the machine, what it boots, what it is plugged into, how
//! long things may take, and what is kept of it. Nothing here does anything; the rest of the
//! harness reads it ([`crate::qemu::args`] turns it into QEMU's command line).
//!
//! A configuration is checked once, at the edge ([`VmConfig::validate`], which [`crate::Vm::boot`]
//! calls first), so that no later step meets a name with a comma in it or a guest of no CPUs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::accel::Accel;
pub use crate::mac::{BadMacAddr, MacAddr};

/// The most NICs a guest may have: microvm has 24 virtio-mmio slots, and the agent's port and
/// the module disk take two.
pub const MAX_NICS: u8 = 8;
/// The most CPUs a guest may have.
pub const MAX_CPUS: u32 = 64;
/// Below this no Debian kernel boots to its agent.
pub const MIN_MEMORY_MIB: u32 = 64;
/// The most memory a guest may have: 64 GiB, more than a lab host lends one guest.
pub const MAX_MEMORY_MIB: u32 = 64 << 10;

/// Everything that defines one guest. Start from [`VmConfig::new`] (or [`crate::Assets::vm`])
/// and adjust fields.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest's hostname, and its name in logs, files and QEMU's `-name`.
    pub name: String,
    pub machine: Machine,
    pub boot: Boot,
    pub net: NetBackend,
    pub policy: Policy,
    pub keep: Keep,
    /// The store of snapshots of guests' shapes ([`crate::snapshot`]) it restores from, or saves
    /// its own shape's in; `None` boots cold.
    pub snapshots: Option<PathBuf>,
}

/// The virtual hardware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub memory_mib: u32,
    pub cpus: u32,
    /// How many NICs (`eth0`, `eth1`...): each is its own switch port with its own cable, for
    /// bonds and the like.
    pub nics: u8,
    /// `eth0`'s address; `eth1`... have [`MacAddr::of_nic`] of it.
    pub mac: MacAddr,
    pub accel: Accel,
    /// Under TCG, the TSC rate passed as `tsc_early_khz` (see [`crate::qemu::cmdline`]).
    pub tsc_khz: Option<u32>,
    /// The QEMU binary; `None` is `qemu-system-x86_64` from `PATH`.
    pub qemu: Option<PathBuf>,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Archives appended to `initrd`, in order; a later one's file replaces an earlier one's.
    pub layers: Vec<InitrdLayer>,
    /// The kernel's whole module tree on a read-only disk, mounted on /lib/modules.
    pub modules_disk: Option<PathBuf>,
    /// Modules `modprobe`d once the agent is up (the [`crate::Phase::Setup`] of a boot).
    pub modprobe: Vec<String>,
    /// Module files in the guest (built from a user's source) `insmod`ed in order after
    /// [`Boot::modprobe`], which loads what they depend on.
    pub insmod: Vec<String>,
    /// `uname -r` the guest must report; checked at boot when set.
    pub kernel_release: Option<String>,
    /// Added to the kernel command line.
    pub extra_cmdline: Vec<String>,
    /// A nest guest: before its shape's snapshot is taken, an inner VM is booted and saved in
    /// it, so that the inner VMs of its clones restore (see [`crate::nest`]).
    pub inner_template: bool,
}

/// How long things may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// From QEMU's start to the agent's ready message.
    pub boot_timeout: Duration,
    /// Boots that time out (not ones that fail) are retried this many times in all.
    pub boot_attempts: u32,
    /// Default deadline of a command.
    pub command_timeout: Duration,
    /// A guest whose kernel reports a problem on its console (a WARN, a BUG, an Oops...) does
    /// not fail its run: for a test that provokes one on purpose.
    pub allow_splats: bool,
    /// Scan with kmemleak when the job is done and fail on a leak (a kernel built with
    /// `CONFIG_DEBUG_KMEMLEAK`; see [`crate::kmemleak`]).
    pub kmemleak: bool,
    /// A restored guest's kernel randomness comes from this seed (and its name) rather than
    /// the host's: a rerun with the seed of a failure restores the same random state. A cold
    /// boot's randomness is its kernel's own whatever this says.
    pub seed: Option<u64>,
}

/// Where the guest's files go, and what is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// Where the throwaway state directory is created (the system temp dir by default).
    pub state_parent: Option<PathBuf>,
    /// Where to keep the console log when the guest fails or its test panics.
    pub artifacts: Option<PathBuf>,
    /// Keep the console log in `artifacts` even when all went well (a kept run).
    pub console: bool,
}

/// What the guest's `eth0` is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// Nothing: frames go nowhere. No host interface is touched.
    Isolated,
    /// Ports of the lab's switch ([`crate::lan`]), one per NIC (`eth0` first), through unix
    /// datagram sockets.
    Switch(Vec<crate::lan::PortSockets>),
}

/// A cpio archive appended to a guest's image ([`lab_rootfs::layers`]): a file (a cached package
/// layer) or bytes (a user's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdLayer {
    File(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

/// A configuration that cannot be booted, and what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0:?} is not a guest name: it becomes a hostname and part of QEMU's options")]
    Name(String),
    #[error("{0} CPUs is not a guest size")]
    Cpus(u32),
    #[error("{0} NICs is not a guest's")]
    Nics(u8),
    #[error("{0} MiB of memory is not a guest's size")]
    Memory(u32),
    #[error("{0} boot attempts would never boot")]
    BootAttempts(u32),
}

impl ConfigError {
    /// What to give instead.
    pub fn fix(&self) -> String {
        match self {
            Self::Name(_) => "name it with up to 63 letters, digits and '-' (e.g. host1)".into(),
            Self::Cpus(_) => format!("give it between 1 and {MAX_CPUS} CPUs"),
            Self::Nics(_) => format!("give it between 1 and {MAX_NICS} NICs"),
            Self::Memory(_) => {
                format!("give it between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB of memory")
            }
            Self::BootAttempts(_) => "give at least 1 boot attempt".into(),
        }
    }
}

impl VmConfig {
    /// A guest of 256 MiB, one CPU and one NIC that plugs into nothing, on the accelerator the
    /// host can use ([`Accel::probe`]).
    pub fn new(name: &str, kernel: &Path, initrd: &Path) -> Self {
        let accel = Accel::probe();
        Self {
            name: name.to_string(),
            machine: Machine::on(accel),
            boot: Boot {
                kernel: kernel.to_path_buf(),
                initrd: initrd.to_path_buf(),
                layers: Vec::new(),
                modules_disk: None,
                modprobe: Vec::new(),
                insmod: Vec::new(),
                kernel_release: None,
                extra_cmdline: Vec::new(),
                inner_template: false,
            },
            net: NetBackend::Isolated,
            policy: Policy::for_accel(accel),
            keep: Keep::default(),
            snapshots: None,
        }
    }

    /// Puts the guest on `accel`, with the TSC hint and boot deadline that go with it.
    pub fn with_accel(mut self, accel: Accel) -> Self {
        let qemu = self.machine.qemu.take();
        self.machine = Machine {
            qemu,
            ..Machine::on(accel)
        }
        .sized_as(&self.machine);
        self.policy.boot_timeout = Policy::for_accel(accel).boot_timeout;
        self
    }

    /// Every NIC's address, `eth0` first.
    pub fn macs(&self) -> Vec<MacAddr> {
        self.machine.macs()
    }

    /// Whether this configuration can be booted at all; the first thing [`crate::Vm::boot`]
    /// checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_guest_name(&self.name) {
            return Err(ConfigError::Name(self.name.clone()));
        }
        let m = &self.machine;
        if !(1..=MAX_CPUS).contains(&m.cpus) {
            return Err(ConfigError::Cpus(m.cpus));
        }
        if !(1..=MAX_NICS).contains(&m.nics) {
            return Err(ConfigError::Nics(m.nics));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m.memory_mib) {
            return Err(ConfigError::Memory(m.memory_mib));
        }
        if self.policy.boot_attempts == 0 {
            return Err(ConfigError::BootAttempts(0));
        }
        Ok(())
    }
}

impl Machine {
    /// One CPU, 256 MiB, one NIC with a new address, on `accel`.
    pub fn on(accel: Accel) -> Self {
        Self {
            memory_mib: 256,
            cpus: 1,
            nics: 1,
            mac: MacAddr::unique(),
            accel,
            tsc_khz: match accel {
                Accel::Tcg => crate::accel::host_tsc_khz(),
                Accel::Kvm => None,
            },
            qemu: None,
        }
    }

    fn sized_as(self, other: &Machine) -> Self {
        Self {
            memory_mib: other.memory_mib,
            cpus: other.cpus,
            nics: other.nics,
            mac: other.mac,
            ..self
        }
    }

    /// Every NIC's address, `eth0` first.
    pub fn macs(&self) -> Vec<MacAddr> {
        (0..self.nics.max(1)).map(|n| self.mac.of_nic(n)).collect()
    }
}

/// What every guest of a shape shares: what its saved state depends on, and so what
/// [`crate::snapshot::key`] hashes. Made only by [`VmConfig::split`], which must place each
/// field of [`VmConfig`] here or in [`Instance`]: a field added to either without being placed
/// does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub memory_mib: u32,
    pub cpus: u32,
    pub nics: u8,
    pub accel: Accel,
    /// The TSC rate's band (10 MHz wide): every process measures the rate anew, and a restored
    /// guest keeps its snapshot's.
    pub tsc_band: Option<u32>,
    pub qemu: Option<PathBuf>,
    pub boot: Boot,
    /// Plugged into switch ports (one per NIC) rather than nothing.
    pub switched: bool,
}

/// What is each guest's own, beside its [`Shape`]: none of it is in a snapshot's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub mac: MacAddr,
    pub tsc_khz: Option<u32>,
    /// Its switch ports' sockets (none when isolated).
    pub sockets: Vec<crate::lan::PortSockets>,
    pub policy: Policy,
    pub keep: Keep,
    pub snapshots: Option<PathBuf>,
}

/// The width of a [`Shape::tsc_band`].
const TSC_BAND_KHZ: u32 = 10_000;

impl VmConfig {
    /// Its shape and what is its own. Every field is named here, none by `..`: the compiler
    /// makes a new one be put in one or the other.
    pub fn split(&self) -> (Shape, Instance) {
        let VmConfig {
            name,
            machine,
            boot,
            net,
            policy,
            keep,
            snapshots,
        } = self;
        let Machine {
            memory_mib,
            cpus,
            nics,
            mac,
            accel,
            tsc_khz,
            qemu,
        } = machine;
        let (switched, sockets) = match net {
            NetBackend::Isolated => (false, Vec::new()),
            NetBackend::Switch(ports) => (true, ports.clone()),
        };
        let shape = Shape {
            memory_mib: *memory_mib,
            cpus: *cpus,
            nics: *nics,
            accel: *accel,
            tsc_band: tsc_khz.map(|khz| khz / TSC_BAND_KHZ),
            qemu: qemu.clone(),
            boot: boot.clone(),
            switched,
        };
        let instance = Instance {
            name: name.clone(),
            mac: *mac,
            tsc_khz: *tsc_khz,
            sockets,
            policy: policy.clone(),
            keep: keep.clone(),
            snapshots: snapshots.clone(),
        };
        (shape, instance)
    }

    /// The guest of `shape` that `instance` is.
    pub fn join(shape: Shape, instance: Instance) -> VmConfig {
        VmConfig {
            name: instance.name,
            machine: Machine {
                memory_mib: shape.memory_mib,
                cpus: shape.cpus,
                nics: shape.nics,
                mac: instance.mac,
                accel: shape.accel,
                tsc_khz: instance.tsc_khz,
                qemu: shape.qemu,
            },
            boot: shape.boot,
            net: if shape.switched {
                NetBackend::Switch(instance.sockets)
            } else {
                NetBackend::Isolated
            },
            policy: instance.policy,
            keep: instance.keep,
            snapshots: instance.snapshots,
        }
    }
}

impl Shape {
    /// A guest of this shape that is no one in particular: what a snapshot's key renders.
    pub fn anyone(&self) -> VmConfig {
        let placeholder = crate::lan::PortSockets {
            guest: "/port.guest".into(),
            switch: "/port".into(),
        };
        VmConfig::join(
            self.clone(),
            Instance {
                name: "snapshot".into(),
                mac: MacAddr([0x02, 0, 0, 0, 0, 0]),
                tsc_khz: self.tsc_band.map(|band| band * TSC_BAND_KHZ),
                sockets: vec![placeholder; usize::from(self.nics)],
                policy: Policy::for_accel(self.accel),
                keep: Keep::default(),
                snapshots: None,
            },
        )
    }
}

impl Policy {
    /// Deadlines that suit `accel`: a TCG boot takes seconds where KVM's takes a fraction.
    pub fn for_accel(accel: Accel) -> Self {
        Self {
            boot_timeout: match accel {
                Accel::Kvm => Duration::from_secs(20),
                Accel::Tcg => Duration::from_secs(60),
            },
            boot_attempts: 2,
            command_timeout: Duration::from_secs(60),
            allow_splats: false,
            kmemleak: false,
            seed: None,
        }
    }
}

/// A name that is a hostname label and needs no quoting anywhere: QEMU's `-name guest=NAME,...`
/// would take a comma as the start of another option.
pub(crate) fn is_guest_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig::new("host1", Path::new("/k"), Path::new("/i"))
    }

    /// Two guests that differ only in what is their own have one shape; a difference in what
    /// their saved state holds makes two. Split and joined, a configuration is itself.
    #[test]
    fn a_shape_is_what_guests_share_and_an_instance_what_is_their_own() {
        let a = cfg();
        let mut b = VmConfig::new("host2", Path::new("/k"), Path::new("/i"));
        b.keep.console = true;
        b.policy.command_timeout = Duration::from_secs(1);
        assert_ne!(a.split().1, b.split().1);
        assert_eq!(a.split().0, b.split().0);
        b.machine.memory_mib += 32;
        assert_ne!(a.split().0, b.split().0);
        let (shape, instance) = a.split();
        let again = VmConfig::join(shape, instance);
        assert_eq!(again.split(), a.split());
        assert_eq!(again.name, a.name);
    }

    #[test]
    fn a_configuration_that_cannot_boot_is_refused_naming_the_field() {
        assert_eq!(cfg().validate(), Ok(()));
        type Change = fn(&mut VmConfig);
        let cases: [(Change, ConfigError); 6] = [
            (
                |c| c.name = "a,b=c".into(),
                ConfigError::Name("a,b=c".into()),
            ),
            (|c| c.name = String::new(), ConfigError::Name(String::new())),
            (|c| c.machine.cpus = 0, ConfigError::Cpus(0)),
            (|c| c.machine.nics = 9, ConfigError::Nics(9)),
            (|c| c.machine.memory_mib = 16, ConfigError::Memory(16)),
            (|c| c.policy.boot_attempts = 0, ConfigError::BootAttempts(0)),
        ];
        for (change, want) in cases {
            let mut c = cfg();
            change(&mut c);
            assert_eq!(c.validate(), Err(want.clone()));
            assert!(!want.fix().is_empty());
        }
    }

    #[test]
    fn moving_to_tcg_keeps_the_size_and_adds_the_tsc_hint_where_the_host_has_one() {
        let mut c = cfg().with_accel(Accel::Kvm);
        c.machine.memory_mib = 512;
        c.machine.qemu = Some("/opt/qemu".into());
        let tcg = c.clone().with_accel(Accel::Tcg);
        assert_eq!(tcg.machine.memory_mib, 512);
        assert_eq!(tcg.machine.mac, c.machine.mac);
        assert_eq!(tcg.machine.qemu, c.machine.qemu);
        assert_eq!(tcg.machine.tsc_khz, crate::accel::host_tsc_khz());
        assert_eq!(c.machine.tsc_khz, None);
        assert!(tcg.policy.boot_timeout > c.policy.boot_timeout);
    }
}
