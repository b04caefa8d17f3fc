//! What a run must not leave behind: QEMU processes, guest state directories, host interfaces.

use std::collections::BTreeSet;

use lab_harness::qemu::PROCESS_MARKER;

#[derive(Debug, Default)]
pub struct Snapshot {
    qemus: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    host_links: BTreeSet<String>,
}

impl Snapshot {
    pub fn take() -> Self {
        Self { qemus: lab_qemus(), state_dirs: state_dirs(), host_links: host_links() }
    }

    /// Everything present now that was not in `before`, and host interfaces that vanished.
    pub fn leaked_since(&self, before: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.qemus.difference(&before.qemus).map(|q| format!("QEMU still running: {q}")));
        out.extend(self.state_dirs.difference(&before.state_dirs).map(|d| format!("state directory left: {d}")));
        out.extend(self.host_links.difference(&before.host_links).map(|l| format!("host interface added: {l}")));
        out.extend(before.host_links.difference(&self.host_links).map(|l| format!("host interface removed: {l}")));
        out
    }
}

/// `pid: cmdline` of every QEMU whose `-name` carries our marker.
fn lab_qemus() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("qemu-system") && cmdline.contains(PROCESS_MARKER))
                .then(|| format!("{}: {}", e.file_name().to_string_lossy(), cmdline.chars().take(120).collect::<String>()))
        })
        .collect()
}

fn state_dirs() -> BTreeSet<String> {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else { return BTreeSet::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PROCESS_MARKER))
        .map(|n| tmp.join(n).display().to_string())
        .collect()
}

/// The host's network interfaces (what `ip link` lists), with their MAC addresses.
fn host_links() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return BTreeSet::new() };
    entries
        .flatten()
        .map(|e| {
            let mac = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
            format!("{} {}", e.file_name().to_string_lossy(), mac.trim())
        })
        .collect()
}
