//! The throwaway directories a run makes in the temp dir (a guest's state and sockets, a LAN's
//! sockets, a shell's control socket): private, and marked with who made them.
//!
//! - **Private**: mode 0700 whatever the umask, so nobody but the user reaches the sockets in
//!   them (whoever can connect to a guest's agent is root in that guest).
//! - **Marked**: an `.owner` file names the run (`LAB_RUN`, which `cargo xtask` sets for
//!   everything it starts) and the process that made the directory. A run's leak check judges
//!   only its own run's directories and QEMUs, and the next run sweeps directories whose
//!   process is dead, never a live one's.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::qemu::PROCESS_MARKER;

pub use crate::settings::{run_id, ENV_RUN};
const OWNER: &str = ".owner";

/// A new directory `<temp dir>/macvlan-lab-<what>-XXXXXX` (or in `parent`), 0700, owned by
/// this process and run; removed when the handle drops.
pub fn create(what: &str, parent: Option<&Path>) -> std::io::Result<tempfile::TempDir> {
    let prefix = format!("{PROCESS_MARKER}-{what}-");
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(0o700));
    let dir = match parent {
        Some(parent) => builder.tempdir_in(parent)?,
        None => builder.tempdir()?,
    };
    std::fs::write(dir.path().join(OWNER), Owner::me().to_line())?;
    Ok(dir)
}

/// Who made a directory: its run and process, and what tells that process from another with
/// the same number (its pid namespace, the boot, its start time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub run: String,
    pub pid: u32,
    /// `pid:[4026531836]`: a pid means nothing outside its namespace (a container sharing
    /// `$TMPDIR` has its own).
    pub pid_ns: String,
    /// The kernel's boot id: no process of an earlier boot is alive.
    pub boot_id: String,
    /// The process's start time in clock ticks since boot: a reused pid has another.
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Self {
        let pid = std::process::id();
        Self {
            run: run_id(),
            pid,
            pid_ns: pid_namespace(),
            boot_id: boot_id(),
            start: crate::host::start_time(pid).unwrap_or(0),
        }
    }

    fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.run, self.pid, self.pid_ns, self.boot_id, self.start
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let owner = Self {
            run: words.next()?.to_string(),
            pid: words.next()?.parse().ok()?,
            pid_ns: words.next()?.to_string(),
            boot_id: words.next()?.to_string(),
            start: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(owner)
    }

    /// Whether the maker is provably gone: of an earlier boot, or of this pid namespace with
    /// no live process of its number and start time. A maker in another pid namespace may be
    /// alive for all we can see: it is not gone.
    pub fn is_gone(&self) -> bool {
        if self.boot_id != boot_id() {
            return true;
        }
        self.pid_ns == pid_namespace()
            && !(alive(self.pid) && crate::host::start_time(self.pid) == Some(self.start))
    }
}

/// Records this process as the maker of `dir` (a directory that outlives it, such as a kept
/// run's), so that [`owner`] can later tell whether its maker is gone.
pub fn mark(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(OWNER), Owner::me().to_line())
}

/// Who made `dir`, if it says so in the current format. A directory of an older lab (its
/// `.owner` without namespace and boot) cannot prove its maker dead, and is left alone.
pub fn owner(dir: &Path) -> Option<Owner> {
    Owner::parse(&std::fs::read_to_string(dir.join(OWNER)).ok()?)
}

/// This process's pid namespace, as `/proc/self/ns/pid` names it.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().replace(' ', "_"))
        .unwrap_or_else(|_| "unknown".into())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// This user's lab directories in the temp dir.
pub fn ours() -> Vec<PathBuf> {
    ours_in(&std::env::temp_dir())
}

/// This user's lab directories in `parent`.
pub fn ours_in(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let uid = nix::unistd::getuid().as_raw();
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{PROCESS_MARKER}-"))
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid))
        .map(|e| e.path())
        .collect()
}

/// Removes the lab directories whose maker is provably dead (a run killed before it could clean
/// up); returns them. A directory without an owner file, or whose maker lives in another pid
/// namespace, is left alone: it is not ours to judge.
pub fn sweep_stale() -> Vec<PathBuf> {
    sweep_stale_in(&std::env::temp_dir())
}

/// [`sweep_stale`] in `parent` rather than the temp dir.
pub fn sweep_stale_in(parent: &Path) -> Vec<PathBuf> {
    let mut swept = Vec::new();
    for dir in ours_in(parent) {
        let Some(owner) = owner(&dir) else { continue };
        if owner.is_gone() && std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir);
        }
    }
    swept
}

/// Whether process `pid` exists (a zombie counts as gone: it made nothing new since).
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses: `pid (comm) S ...`.
    !stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_private_and_name_their_owner() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = create("unit", Some(parent.path())).expect("create");
        let mode = std::fs::metadata(dir.path())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "mode {mode:o}");
        let me = owner(dir.path()).expect("owner");
        assert_eq!((me.run, me.pid), (run_id(), std::process::id()));
        assert!(
            me.start > 0 && me.pid_ns.starts_with("pid:["),
            "{:?}",
            me.pid_ns
        );
        assert!(alive(std::process::id()));
        assert!(!alive(999_999_999));
    }

    fn write_owner(parent: &Path, name: &str, owner: &Owner) -> PathBuf {
        let dir = parent.join(format!("{PROCESS_MARKER}-{name}"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join(OWNER), owner.to_line()).expect("owner");
        dir
    }

    #[test]
    fn only_directories_whose_maker_is_provably_dead_are_swept() {
        let parent = tempfile::tempdir().expect("tempdir");
        let me = Owner::me();
        let live = write_owner(parent.path(), "live", &me);
        // A run in a container sharing $TMPDIR: its pid means nothing here.
        let other_ns = write_owner(
            parent.path(),
            "container",
            &Owner {
                pid: 999_999_999,
                pid_ns: "pid:[1]".into(),
                ..me.clone()
            },
        );
        let dead = write_owner(
            parent.path(),
            "dead",
            &Owner {
                pid: 999_999_999,
                ..me.clone()
            },
        );
        // This pid, reused by another process since: another start time.
        let reused = write_owner(
            parent.path(),
            "reused",
            &Owner {
                start: me.start + 1,
                ..me.clone()
            },
        );
        let rebooted = write_owner(
            parent.path(),
            "rebooted",
            &Owner {
                pid_ns: "pid:[1]".into(),
                boot_id: "an-earlier-boot".into(),
                ..me.clone()
            },
        );
        let older_lab = parent.path().join(format!("{PROCESS_MARKER}-older"));
        std::fs::create_dir(&older_lab).expect("mkdir");
        std::fs::write(older_lab.join(OWNER), "run 999999999\n").expect("owner");
        let mut swept = sweep_stale_in(parent.path());
        swept.sort();
        let mut expected = vec![dead, reused, rebooted];
        expected.sort();
        assert_eq!(swept, expected);
        assert!(live.exists() && other_ns.exists() && older_lab.exists());
    }
}
