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

/// Names one run of a lab command and everything it starts; inherited through the environment
/// by test binaries and QEMU alike.
pub const ENV_RUN: &str = "LAB_RUN";
const OWNER: &str = ".owner";

/// This process's run: `LAB_RUN`, or its own pid when nothing set one.
pub fn run_id() -> String {
    std::env::var(ENV_RUN).unwrap_or_else(|_| format!("pid{}", std::process::id()))
}

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
    std::fs::write(
        dir.path().join(OWNER),
        format!("{} {}\n", run_id(), std::process::id()),
    )?;
    Ok(dir)
}

/// Who made a directory: its run and process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub run: String,
    pub pid: u32,
}

pub fn owner(dir: &Path) -> Option<Owner> {
    let text = std::fs::read_to_string(dir.join(OWNER)).ok()?;
    let (run, pid) = text.trim().split_once(' ')?;
    Some(Owner {
        run: run.to_string(),
        pid: pid.parse().ok()?,
    })
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

/// Removes the lab directories whose maker is dead (a run killed before it could clean up);
/// returns them. A directory without an owner file is left alone: it is not ours to judge.
pub fn sweep_stale() -> Vec<PathBuf> {
    sweep_stale_in(&std::env::temp_dir())
}

/// [`sweep_stale`] in `parent` rather than the temp dir.
pub fn sweep_stale_in(parent: &Path) -> Vec<PathBuf> {
    let mut swept = Vec::new();
    for dir in ours_in(parent) {
        let Some(owner) = owner(&dir) else { continue };
        if !alive(owner.pid) && std::fs::remove_dir_all(&dir).is_ok() {
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
        assert_eq!(
            owner(dir.path()),
            Some(Owner {
                run: run_id(),
                pid: std::process::id()
            })
        );
        assert!(alive(std::process::id()));
        assert!(!alive(999_999_999));
    }
}
