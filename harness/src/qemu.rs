//! The QEMU command line for one guest, and finding QEMU on the host.
//!
//! Architecture invariant: this is the only module that knows QEMU's command-line syntax.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accel::Accel;
use crate::config::{NetBackend, VmConfig};
use crate::error::{Error, Result};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Every QEMU we start carries this in its `-name`, so leak checks can find strays.
pub const PROCESS_MARKER: &str = "macvlan-lab";

/// The files QEMU and the harness share for one guest, all inside its throwaway state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub agent: PathBuf,
    /// The log of the serial console, written by [`crate::console::record`].
    pub console: PathBuf,
    /// Where QEMU sends the serial console.
    pub console_sock: PathBuf,
    pub qemu_log: PathBuf,
    /// The image with its layers appended, when the guest has any.
    pub initrd: PathBuf,
}

impl StatePaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            qmp: dir.join("qmp.sock"),
            agent: dir.join("agent.sock"),
            console: dir.join("console.log"),
            console_sock: dir.join("console.sock"),
            qemu_log: dir.join("qemu.log"),
            initrd: dir.join("initrd.cpio"),
        }
    }
}

/// The QEMU binary: `chosen` (a configuration's [`crate::config::Machine::qemu`], from
/// `LAB_QEMU`), else `qemu-system-x86_64` from `PATH`, else an error saying how to install it.
pub fn find_binary(chosen: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = chosen {
        return Ok(p.to_path_buf());
    }
    which::which(QEMU_BINARY).map_err(|_| Error::Missing {
        what: QEMU_BINARY.into(),
        fix: install_hint(),
    })
}

pub fn install_hint() -> String {
    "install it: `sudo apt-get install qemu-system-x86` (Debian/Ubuntu), `sudo dnf install qemu-system-x86` \
     (Fedora), or set LAB_QEMU=/path/to/qemu-system-x86_64; `cargo xtask test` installs it when run as root"
        .into()
}

/// `QEMU emulator version 7.2.22 (...)` -> `7.2.22`.
pub fn version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(binary, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("unknown")
        .to_string())
}

/// The kernel command line. `panic=-1` plus QEMU's `-no-reboot` turns a guest kernel panic into a
/// QEMU exit, which the harness notices at once instead of waiting out a deadline.
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    // Freed pages are zeroed, so that a snapshot ([`crate::snapshot`]) holds only the memory
    // the guest uses: its zero pages are holes in the memory file. Without it the freed kernel
    // and initramfs copies of the boot stay in it.
    let mut extra = vec!["init_on_free=1".to_string()];
    if cfg.boot.modules_disk.is_some() {
        // The one virtio-blk device, so the first disk. Before the caller's arguments: those may
        // end with `-- ARGS` for init, and anything after `--` is init's, not the kernel's.
        extra.push("lab.modules_disk=vda".to_string());
    }
    extra.extend(cfg.boot.extra_cmdline.iter().cloned());
    let m = &cfg.machine;
    cmdline(&cfg.name, m.accel, m.tsc_khz, &extra)
}

/// What a guest restored from a snapshot is given as `-kernel` and `-initrd`, written into its
/// state directory `dir`. QEMU builds the machine from them before the saved state replaces the
/// guest's memory, so nothing of them ever runs, and of the kernel it parses only the boot
/// header (its setup sectors). Handing it those and an empty initrd, instead of 14 MiB and 19
/// MiB to read and copy, took a QEMU start on a snapshot from 50 to 27 ms of CPU (`perf stat -r
/// 5`), which counts eight times over when eight guests start at once.
pub fn restore_stand_ins(kernel: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(kernel)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|e| Error::io(kernel, e))?;
    // The boot protocol: the number of setup sectors at 0x1f1 (0 means 4), after the boot sector.
    let sectors = match head.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    // A page of the kernel proper after them, so that QEMU finds a kernel there at all.
    head.truncate((sectors + 1) * 512 + 4096);
    let stand_ins = (dir.join("kernel-header"), dir.join("initrd-empty"));
    for (path, bytes) in [(&stand_ins.0, &head[..]), (&stand_ins.1, &[][..])] {
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    }
    Ok(stand_ins)
}

/// [`kernel_cmdline`] from its parts: the nest's inner VMs boot with it too.
pub fn cmdline(name: &str, accel: Accel, tsc_khz: Option<u32>, extra: &[String]) -> String {
    let mut args = vec![
        "console=ttyS0".to_string(),
        "rdinit=/init".into(),
        "panic=-1".into(),
        "quiet".into(),
        // Warnings too (`quiet` shows errors and worse): a WARN_ON and lockdep's reports are
        // printed at KERN_WARNING, and the console is where a run finds them
        // ([`crate::console::splat_kind`]).
        "loglevel=5".into(),
        format!("lab.hostname={name}"),
        // Debian's kernels test every crypto algorithm they register as they boot; under TCG
        // that is a fifth of the kernel's start-up (1.46-1.56 s to /init with the tests, 1.16-
        // 1.17 s without, `cargo xtask bench`, two pairs), and more for an inner TCG guest. A
        // throwaway guest has no use for them (FIPS mode, which would insist, is off).
        "cryptomgr.notests=1".into(),
    ];
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        // Under TCG the guest TSC runs at the host's rate, and calibrating it against the emulated
        // PIT hangs the boot on a loaded host (see `accel::host_tsc_khz`). Telling the kernel the
        // rate skips that calibration; `tsc=reliable` keeps the clocksource watchdog, which
        // compares against jiffies that lag on a busy host, from demoting the TSC mid-run.
        args.push(format!("tsc_early_khz={khz}"));
        args.push("tsc=reliable".into());
    }
    args.extend(extra.iter().cloned());
    args.join(" ")
}

/// `path` as the value of a QEMU option (`key=value,key=value`): a comma in it is doubled, or
/// `TMPDIR=/tmp/a,b` would cut the option there and `,key=value` in a path would add options.
pub fn opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The machine every lab guest, and every VM inside one, boots as.
pub const MACHINE: &str = "microvm,pit=on,pic=on,rtc=on,isa-serial=on";

/// QEMU's whole command line for `cfg`, its sockets and files in `paths` (less where its
/// memory lives: [`memory_args`]).
pub fn args(cfg: &VmConfig, paths: &StatePaths) -> Vec<OsString> {
    [
        machine_args(cfg),
        boot_args(cfg, paths),
        socket_args(paths),
        disk_args(cfg),
        nic_args(cfg),
    ]
    .concat()
}

/// QEMU's command line for a bare boot of `cfg`'s machine and kernel: its image and command
/// line as [`boot_args`] gives them, the console into the file `paths.console`, no other
/// device ([`crate::launch::bare_boot`]).
pub fn bare_args(cfg: &VmConfig, paths: &StatePaths) -> Vec<OsString> {
    let serial = format!("file:{}", paths.console.display());
    [
        machine_args(cfg),
        boot_args(cfg, paths),
        strings(&["-serial", &serial]),
    ]
    .concat()
}

fn strings(items: &[&str]) -> Vec<OsString> {
    items.iter().map(OsString::from).collect()
}

/// The machine: its name for `ps`, microvm, the accelerator, memory and CPUs, and nothing QEMU
/// would add by default.
fn machine_args(cfg: &VmConfig) -> Vec<OsString> {
    let m = &cfg.machine;
    let name = format!("guest={},process={PROCESS_MARKER}-{}", cfg.name, cfg.name);
    let mut a = strings(&["-name", &name]);
    // microvm: no PCI, no firmware tables to walk, virtio over MMIO. pit/pic/rtc are needed for
    // the stock Debian kernel to calibrate its clocks (without pit=on it hangs at TSC calibration).
    a.extend(strings(&["-M", MACHINE]));
    a.extend(strings(&m.accel.qemu_args()));
    a.extend(strings(&[
        "-m",
        &m.memory_mib.to_string(),
        "-smp",
        &m.cpus.to_string(),
    ]));
    a.extend(strings(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]));
    a
}

/// The kernel, the image (with its layers, put together in `paths`) and the command line.
fn boot_args(cfg: &VmConfig, paths: &StatePaths) -> Vec<OsString> {
    let initrd = if cfg.boot.layers.is_empty() {
        &cfg.boot.initrd
    } else {
        &paths.initrd
    };
    vec![
        "-kernel".into(),
        cfg.boot.kernel.clone().into(),
        "-initrd".into(),
        initrd.into(),
        "-append".into(),
        kernel_cmdline(cfg).into(),
    ]
}

/// QMP, the agent port and the console: unix sockets the harness listens on. QEMU connects at
/// start-up, so there is no polling for socket files and no window in which output is lost.
/// The console goes through us rather than to a file so that its log stays bounded.
fn socket_args(paths: &StatePaths) -> Vec<OsString> {
    strings(&[
        "-chardev",
        &format!("socket,id=console,path={}", opt(&paths.console_sock)),
        "-serial",
        "chardev:console",
        "-chardev",
        &format!("socket,id=qmp,path={}", opt(&paths.qmp)),
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!("socket,id=agent,path={}", opt(&paths.agent)),
        "-device",
        &format!("virtserialport,chardev=agent,name={}", lab_proto::PORT_NAME),
    ])
}

/// The module disk, read-only and shared by every guest: QEMU takes no write lock on it.
fn disk_args(cfg: &VmConfig) -> Vec<OsString> {
    let Some(disk) = &cfg.boot.modules_disk else {
        return Vec::new();
    };
    let drive = format!(
        "file={},if=none,id=modules,format=raw,readonly=on",
        opt(disk)
    );
    strings(&[
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=modules",
    ])
}

/// A virtio-net device per NIC, each on its switch port or on a hub of its own.
fn nic_args(cfg: &VmConfig) -> Vec<OsString> {
    let mut a = Vec::new();
    for (nic, mac) in (0u8..).zip(cfg.macs()) {
        let port = match &cfg.net {
            NetBackend::Isolated => None,
            NetBackend::Switch(ports) => ports.get(usize::from(nic)),
        };
        let netdev = match port {
            // QEMU >= 7.2: one Ethernet frame per datagram, no header, no host interface.
            Some(port) => format!(
                "dgram,id=net{nic},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                opt(&port.guest),
                opt(&port.switch)
            ),
            // A hub of its own per NIC: frames leave and go nowhere. No host interface, no root.
            None => format!("hubport,id=net{nic},hubid={nic}"),
        };
        let device = format!(
            "virtio-net-device,netdev=net{nic},id={},mac={mac}",
            crate::qmp::nic_id(nic)
        );
        a.extend(strings(&["-netdev", &netdev, "-device", &device]));
    }
    a
}

/// Where a guest's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory<'a> {
    /// QEMU's own anonymous memory (`-m`): a guest nobody snapshots.
    Anonymous,
    /// A file the guest's memory is written through to as it runs (`share=on`), sized at
    /// launch. The guest that takes its shape's snapshot boots this way (on a memfd), so that
    /// the saved state need not carry its memory ([`crate::snapshot`]).
    SavedTo(&'a Path),
    /// A snapshot's memory file, mapped copy-on-write (`share=off`): every guest restored from
    /// one snapshot reads the same page-cache pages, and only the pages it writes are its own.
    RestoredFrom(&'a Path),
}

/// The arguments that put a guest's memory where `memory` says; none for anonymous memory,
/// which `-m` in [`args`] describes.
pub fn memory_args(cfg: &VmConfig, memory: Memory<'_>) -> Vec<OsString> {
    let (path, share) = match memory {
        Memory::Anonymous => return Vec::new(),
        Memory::SavedTo(path) => (path, "on"),
        Memory::RestoredFrom(path) => (path, "off"),
    };
    let backend = format!(
        "memory-backend-file,id=ram,size={}M,mem-path={},share={share}",
        cfg.machine.memory_mib,
        opt(path)
    );
    // `-machine` options merge with the `-M` in [`args`].
    ["-object", &backend, "-machine", "memory-backend=ram"]
        .iter()
        .map(OsString::from)
        .collect()
}

/// What makes QEMU wait for a saved state instead of booting: `-incoming defer`. The state is
/// loaded over QMP ([`crate::qmp::Qmp::load_state`]) once the migration capability it was saved
/// with is set, which QEMU 7.2 takes only over QMP. The rest of the command line must describe
/// the same machine ([`crate::snapshot::key`]).
pub fn incoming_args() -> Vec<OsString> {
    vec!["-incoming".into(), "defer".into()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;

    #[test]
    fn every_path_in_an_option_has_its_commas_doubled() {
        let dir = Path::new("/tmp/a,b/x,share=on");
        let mut cfg = VmConfig::new("host1", &dir.join("bzImage"), &dir.join("initrd"));
        cfg.boot.modules_disk = Some(dir.join("modules.ext4"));
        cfg.net = NetBackend::Switch(vec![crate::lan::PortSockets {
            guest: dir.join("port.guest"),
            switch: dir.join("port"),
        }]);
        let mut args = args(&cfg, &StatePaths::in_dir(dir));
        args.extend(memory_args(&cfg, Memory::SavedTo(&dir.join("memory"))));
        // The values of the flags that take `key=value,...` (`-kernel` and `-initrd` take a
        // plain path).
        let keyed = [
            "-chardev", "-netdev", "-drive", "-object", "-device", "-machine",
        ];
        let options: Vec<String> = args
            .windows(2)
            .filter(|w| keyed.iter().any(|k| w[0] == *k))
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect();
        for option in &options {
            assert!(
                !option.contains("a,b") && !option.contains("x,share"),
                "a comma of the path is left single in {option}"
            );
        }
        assert!(
            options
                .iter()
                .filter(|o| o.contains("/tmp/a,,b/x,,share=on"))
                .count()
                >= 6,
            "{options:#?}"
        );
    }

    #[test]
    fn a_restored_guest_gets_the_kernels_boot_header_and_an_empty_initrd() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let bzimage = |sectors: u8| {
            let mut k: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            k[0x1f1] = sectors;
            let path = dir.path().join(format!("vmlinuz-{sectors}"));
            std::fs::write(&path, &k).expect("a kernel file");
            (path, k)
        };
        for (sectors, kept) in [(39, 40 * 512 + 4096), (0, 5 * 512 + 4096)] {
            let (path, whole) = bzimage(sectors);
            let out = dir.path().join(format!("state-{sectors}"));
            std::fs::create_dir(&out).expect("a state dir");
            let (kernel, initrd) = restore_stand_ins(&path, &out).expect("stand-ins");
            assert_eq!(
                std::fs::read(&kernel).expect("the header"),
                whole[..kept],
                "{sectors} sectors"
            );
            assert_eq!(std::fs::read(&initrd).expect("the initrd"), b"");
        }
        let err = restore_stand_ins(&dir.path().join("gone"), dir.path())
            .expect_err("a missing kernel fails");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    fn cfg(accel: Accel) -> VmConfig {
        let mut c = VmConfig::new(
            "host1",
            Path::new("/k/vmlinuz"),
            Path::new("/k/initrd.cpio"),
        );
        c.machine.accel = accel;
        c.machine.mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        c
    }

    #[test]
    fn command_line_has_microvm_sockets_and_mac() {
        let paths = StatePaths::in_dir(Path::new("/tmp/x"));
        let line: Vec<String> = args(&cfg(Accel::Tcg), &paths)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let joined = line.join(" ");
        assert!(
            joined.contains("-M microvm,pit=on,pic=on,rtc=on"),
            "{joined}"
        );
        assert!(joined.contains("-accel tcg -cpu max"), "{joined}");
        assert!(
            joined.contains("socket,id=qmp,path=/tmp/x/qmp.sock"),
            "{joined}"
        );
        assert!(joined.contains("name=lab.agent"), "{joined}");
        assert!(joined.contains("mac=52:54:00:01:02:03"), "{joined}");
        assert!(joined.contains("process=macvlan-lab-host1"), "{joined}");
    }

    #[test]
    fn the_module_disk_argument_stays_before_arguments_for_init() {
        let mut c = cfg(Accel::Kvm);
        c.boot.modules_disk = Some(PathBuf::from("/cache/modules.ext4"));
        c.boot.extra_cmdline = vec!["rdinit=/bin/sleep".into(), "--".into(), "1000".into()];
        let line = kernel_cmdline(&c);
        assert!(
            line.ends_with("lab.modules_disk=vda rdinit=/bin/sleep -- 1000"),
            "{line}"
        );
    }

    #[test]
    fn tsc_hint_only_under_tcg() {
        let mut tcg = cfg(Accel::Tcg);
        tcg.machine.tsc_khz = Some(2_000_000);
        assert!(kernel_cmdline(&tcg).contains("tsc_early_khz=2000000"));
        let mut kvm = cfg(Accel::Kvm);
        kvm.machine.tsc_khz = Some(2_000_000);
        assert!(!kernel_cmdline(&kvm).contains("tsc_early_khz="));
        assert!(kernel_cmdline(&cfg(Accel::Kvm)).contains("lab.hostname=host1"));
        assert!(kernel_cmdline(&tcg).contains("cryptomgr.notests=1"));
    }
}
