//! What of this host a run could leave behind or change, read in one place: QEMU processes
//! (from /proc) and the network (interfaces and routes). The leak check of `cargo xtask` and the
//! kill tests all look through this; none of it needs root.

use std::collections::BTreeSet;

/// A QEMU process found in /proc.
#[derive(Debug, Clone)]
pub struct QemuProcess {
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl QemuProcess {
    /// Whether its environment holds `entry` (`NAME=value`) exactly. False once it is gone.
    pub fn env_has(&self, entry: &str) -> bool {
        std::fs::read(format!("/proc/{}/environ", self.pid))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .any(|var| var == entry.as_bytes())
    }
}

/// Every `qemu-system-*` process this user can see, ours or not.
pub fn qemu_processes() -> Vec<QemuProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains("qemu-system")
                .then_some(QemuProcess { pid, cmdline })
        })
        .collect()
}

/// The command lines of the QEMUs whose command line names `dir` (their state directory is in
/// it): what a run that keeps its guests under `dir` left running.
pub fn qemus_in(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    qemu_processes()
        .into_iter()
        .filter(|q| q.cmdline.contains(&needle))
        .map(|q| q.cmdline)
        .collect()
}

/// The host's interfaces as `ip link` lists them: `name mac operstate`.
pub fn links() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            format!(
                "{} {} {}",
                e.file_name().to_string_lossy(),
                read("address").trim(),
                read("operstate").trim()
            )
        })
        .collect()
}

/// The host's network: [`links`] and the IPv4 routing table. Equal before and after a run
/// when the run changed nothing on the host.
pub fn network() -> String {
    let links: Vec<String> = links().into_iter().collect();
    links.join("\n") + "\n" + &std::fs::read_to_string("/proc/net/route").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_has_a_loopback_and_this_process_is_no_qemu() {
        assert!(
            links()
                .iter()
                .any(|l| l.starts_with("lo 00:00:00:00:00:00")),
            "{:?}",
            links()
        );
        assert!(network().contains("Iface"), "the route table's header");
        assert!(qemu_processes().iter().all(|q| q.pid != std::process::id()));
    }
}
