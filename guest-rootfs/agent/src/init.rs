//! PID 1 duties: mount the pseudo file systems, load the kernel modules the image lists, bring up
//! `lo` (and `eth0` with `lab.eth0=ADDR/PREFIX`), find the agent's virtio-serial port, then
//! supervise the server and reap orphans.
//!
//! The server runs as a child process rather than in PID 1 itself so that a bug in request handling
//! can never panic the kernel ("Attempted to kill init"): init restarts it instead.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Load order of the image's modules, one path per line relative to `/lib/modules/$(uname -r)`;
/// written by the image builder, which resolved their dependencies on the host.
const MODULE_LIST: &str = "/etc/lab/modules";
/// `LINK TARGET` lines: links the image leaves to us (`links_after_boot` in rootfs.toml).
const LINKS_AFTER_BOOT: &str = "/etc/lab/links";
const PORT_WAIT: Duration = Duration::from_secs(20);

pub fn run() -> ! {
    log("starting");
    mount_pseudo_fs();
    match crate::limits::set_up() {
        Ok(caps) => log(&caps),
        Err(e) => log(&format!("commands run without limits: {e}")),
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(name) = cmdline_value(&cmdline, "lab.hostname") {
        if let Err(e) = nix::unistd::sethostname(name) {
            log(&format!("sethostname {name}: {e}"));
        }
    }
    let loaded = load_modules(&cmdline);
    let _ = fs::write("/run/lab-modules", loaded.join("\n"));
    // `lab.modules_disk=vda`: the kernel's whole module tree, for modprobe (its driver is among
    // the modules just loaded).
    if let Some(disk) = cmdline_value(&cmdline, "lab.modules_disk") {
        mount_modules_disk(&Path::new("/dev").join(disk));
    }
    // Only now: until here the kernel's own module requests find no modprobe and fail at once.
    make_links_after_boot();
    if let Err(e) = crate::network::bring_up("lo", None) {
        log(&format!("could not bring lo up: {e}"));
    }
    // `lab.eth0=ADDR/PREFIX`: an address before anyone asks, as a VM's own network config would.
    if let Some(addr) = cmdline_value(&cmdline, "lab.eth0") {
        if let Err(e) = crate::network::bring_up("eth0", Some(addr)) {
            log(&format!("could not give eth0 {addr}: {e}"));
        }
    }
    let port = match wait_for_port(lab_proto::PORT_NAME, PORT_WAIT) {
        Some(p) => p,
        None => {
            log(&format!(
                "no virtio-serial port named {} after {PORT_WAIT:?}; powering off",
                lab_proto::PORT_NAME
            ));
            power_off();
        }
    };
    log(&format!("serving on {}", port.display()));
    supervise(&port)
}

/// Makes the links of [`LINKS_AFTER_BOOT`] (`/sbin/modprobe`): the kernel runs modprobe for
/// what it asks for while booting, which finds nothing before the module disk is mounted, and
/// each run costs a program start in an emulated CPU.
fn make_links_after_boot() {
    let list = fs::read_to_string(LINKS_AFTER_BOOT).unwrap_or_default();
    for (link, target) in list.lines().filter_map(|l| l.split_once(' ')) {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => log(&format!("link {link} -> {target}: {e}")),
        }
    }
}

fn log(msg: &str) {
    // stdout of PID 1 is /dev/console: these lines land in the console log the harness keeps.
    println!("lab-init: {msg}");
}

fn mount_pseudo_fs() {
    let mounts: [(&str, &str, &str, MsFlags); 7] = [
        ("proc", "/proc", "proc", MsFlags::empty()),
        ("sysfs", "/sys", "sysfs", MsFlags::empty()),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::empty()),
        ("devpts", "/dev/pts", "devpts", MsFlags::empty()),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID),
        ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID),
        ("none", "/sys/fs/bpf", "bpf", MsFlags::empty()),
    ];
    for (src, target, fstype, flags) in mounts {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), flags, None::<&str>) {
            log(&format!("mount {target}: {e}"));
        }
    }
    // iproute2 keeps named namespaces under /var/run/netns.
    let _ = fs::create_dir_all("/var");
    let _ = symlink("/run", "/var/run");
}

/// Mounts the module disk read-only on /lib/modules, over the few modules the image carries.
fn mount_modules_disk(dev: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dev.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if let Err(e) = mount(Some(dev), "/lib/modules", Some("ext4"), flags, None::<&str>) {
        log(&format!(
            "mount {} on /lib/modules: {e}; modprobe will not find most modules",
            dev.display()
        ));
    }
}

/// `key=value` from the kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
}

/// Module parameters given on the kernel command line as `module.param=value`. The kernel applies
/// those only to built-in code; for modules it is modprobe's job, so ours too.
fn module_params(cmdline: &str, module: &str) -> String {
    let prefix = format!("{}.", module.replace('-', "_"));
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_modules(cmdline: &str) -> Vec<String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = PathBuf::from("/lib/modules").join(&release);
    let list = fs::read_to_string(MODULE_LIST).unwrap_or_default();
    let mut loaded = Vec::new();
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = base.join(rel);
        let name = module_name(&path);
        match load_module(&path, &module_params(cmdline, &name)) {
            Ok(()) => loaded.push(name),
            Err(e) => log(&format!("insmod {}: {e}", path.display())),
        }
    }
    loaded
}

fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.split('.').next().unwrap_or_default().replace('-', "_")
}

fn load_module(path: &Path, params: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // Kernels that compress their modules (Debian's 6.12: .ko.xz) decompress them themselves when
    // asked to; nix has no name for that flag.
    const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;
    let compressed = path
        .extension()
        .is_some_and(|x| x == "xz" || x == "zst" || x == "gz");
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let params = std::ffi::CString::new(params).map_err(|e| e.to_string())?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated params string; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    match rc {
        0 => Ok(()),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(e.to_string()),
        },
    }
}

/// Finds `/dev/vportNpM` whose sysfs name is `name`, waiting for the driver to probe it.
fn wait_for_port(name: &str, within: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let found =
                    fs::read_to_string(entry.path().join("name")).is_ok_and(|n| n.trim() == name);
                let dev = Path::new("/dev").join(entry.file_name());
                if found && dev.exists() {
                    return Some(dev);
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the server as a child, restarting it if it dies, and reaps every orphan the guest makes.
fn supervise(port: &Path) -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let mut restarts = 0u32;
    loop {
        let child = Command::new(&exe)
            .arg("serve")
            .arg(port)
            .env("PATH", crate::exec::PATH)
            .spawn();
        let server = match child {
            Ok(c) => Pid::from_raw(c.id() as i32),
            Err(e) => {
                log(&format!("cannot start server: {e}; powering off"));
                power_off();
            }
        };
        // Reap until the server itself is among the dead.
        loop {
            match waitpid(None, None) {
                Ok(status) if status.pid() == Some(server) => {
                    log(&format!("server exited ({status:?}), restarting"));
                    break;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        restarts += 1;
        std::thread::sleep(Duration::from_millis(100 * u64::from(restarts.min(10))));
    }
}

pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached when not permitted; nothing sensible is left to do.
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cmdline_values_and_module_params() {
        let cmdline = "console=ttyS0 lab.hostname=host1 virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.x=1 quiet";
        assert_eq!(cmdline_value(cmdline, "lab.hostname"), Some("host1"));
        assert_eq!(cmdline_value(cmdline, "lab.host"), None);
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 x=1"
        );
        assert_eq!(module_params(cmdline, "macvlan"), "");
    }

    #[test]
    fn module_name_normalises_dashes_and_extensions() {
        assert_eq!(
            module_name(Path::new("kernel/arch/x86/kvm/kvm-amd.ko")),
            "kvm_amd"
        );
        assert_eq!(
            module_name(Path::new("kernel/drivers/net/macvlan.ko.xz")),
            "macvlan"
        );
    }
}
