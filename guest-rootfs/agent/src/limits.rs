//! What a command may take, so that no command takes the agent down with it. Every command runs
//! in a cgroup of its own under `/sys/fs/cgroup/commands`, and `commands` as a whole is capped:
//! - **memory**: all of the guest's but a reserve (a quarter, at least 32 MiB). A command that
//!   eats memory meets the OOM killer inside `commands`; its whole cgroup is killed
//!   (`memory.oom.group`), and the agent, outside, is never the victim. The result says so.
//! - **processes**: 4 per MiB of the guest's memory. A fork bomb gets `EAGAIN` instead of a
//!   guest with no pid left for the agent's threads, and its group is killed at its timeout.
//! - **CPU**: `commands` as a whole weighs as much with the scheduler as each of the agent's
//!   threads. Without that, a fork bomb's 850 runnable processes each weighed as much as the
//!   thread that must see its timeout and kill it.
//!
//! The agent itself is also out of reach of a guest-wide OOM (`oom_score_adj` -1000); its
//! commands start again from 0.

use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

const ROOT: &str = "/sys/fs/cgroup";
const COMMANDS: &str = "/sys/fs/cgroup/commands";

/// Mounts cgroup2 and makes `commands` with its limits; from PID 1, before the server starts.
/// Without cgroups (a kernel built without them) commands run unconfined, as before.
pub fn set_up() -> Result<String, String> {
    let _ = fs::create_dir_all(ROOT);
    let flags = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    nix::mount::mount(Some("cgroup2"), ROOT, Some("cgroup2"), flags, None::<&str>)
        .map_err(|e| format!("mount cgroup2: {e}"))?;
    write(
        &Path::new(ROOT).join("cgroup.subtree_control"),
        "+memory +pids",
    )?;
    // Only at the root: within `commands`, commands share its time as before.
    let cpu = match write(&Path::new(ROOT).join("cgroup.subtree_control"), "+cpu") {
        Ok(()) => "",
        Err(_) => " (no cpu controller: a busy command can slow the agent down)",
    };
    fs::create_dir_all(COMMANDS).map_err(|e| format!("mkdir {COMMANDS}: {e}"))?;
    write(
        &Path::new(COMMANDS).join("cgroup.subtree_control"),
        "+memory +pids",
    )?;
    let total = mem_total_bytes().ok_or("no MemTotal in /proc/meminfo")?;
    let (memory, pids) = caps(total);
    write(&Path::new(COMMANDS).join("memory.max"), &memory.to_string())?;
    write(&Path::new(COMMANDS).join("pids.max"), &pids.to_string())?;
    Ok(format!(
        "commands may use {} MiB and {pids} processes{cpu}",
        memory >> 20
    ))
}

/// The caps of `commands` for a guest with `total` bytes of memory.
fn caps(total: u64) -> (u64, u64) {
    let reserve = (total / 4).max(32 << 20);
    (total.saturating_sub(reserve), (total >> 20) * 4)
}

fn mem_total_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// Where a process sets its own OOM score: the agent's -1000, which what it starts inherits,
/// and a command's 0 ([`reset_oom_score_in_child`]).
const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// What a command's process does before its exec, however it was started ([`Group::enter`],
/// [`crate::spawn`]): back to an OOM score of 0 from the agent's -1000 it inherited, so that
/// commands are fair game for the OOM killer again. Async-signal-safe: open, write, close.
pub fn reset_oom_score_in_child() -> std::io::Result<()> {
    write_in_child(OOM_SCORE_ADJ, b"0")
}

/// Keeps the agent out of the OOM killer's choice; what it starts is reset in [`Group::enter`].
pub fn protect_agent() {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::OsStr::from_bytes(OOM_SCORE_ADJ.to_bytes());
    let _ = fs::write(path, "-1000");
}

/// One command's cgroup; removed when dropped, or later when processes of it still live (a
/// daemon the command started, such as an inner VM).
#[derive(Debug)]
pub struct Group {
    dir: PathBuf,
    procs: CString,
    /// The directory, open: what `clone3` starts a command in ([`crate::spawn`]).
    fd: File,
}

impl Group {
    /// A new cgroup for a command, or `None` when there are no cgroups to make one in.
    pub fn create() -> Option<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        remove_left_over();
        if !Path::new(COMMANDS).is_dir() {
            return None;
        }
        let dir = Path::new(COMMANDS).join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
        fs::create_dir(&dir).ok()?;
        // One command, one fate: an OOM kill takes all of it, not a random process of it.
        let _ = fs::write(dir.join("memory.oom.group"), "1");
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .ok()?;
        let fd = File::open(&dir).ok()?;
        Some(Self { dir, procs, fd })
    }

    /// The cgroup's directory, open.
    pub fn dir(&self) -> &File {
        &self.fd
    }

    /// What the child runs between fork and exec to enter the group. Only async-signal-safe
    /// calls: open, write, close.
    pub fn enter(&self) -> impl Fn() -> std::io::Result<()> + Send + Sync + 'static {
        let procs = self.procs.clone();
        move || {
            write_in_child(&procs, b"0")?;
            reset_oom_score_in_child()
        }
    }

    /// Kills every process of this group at once, also those that left the command's process
    /// group (`cgroup.kill`, Linux 5.14 and later; before that, the caller's `killpg` is all).
    pub fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// How many processes of this group the OOM killer killed.
    pub fn oom_kills(&self) -> u64 {
        let events = fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if fs::remove_dir(&self.dir).is_err() {
            left_over()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.dir.clone());
        }
    }
}

fn write_in_child(path: &std::ffi::CStr, value: &[u8]) -> std::io::Result<()> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::write(&fd, value)?;
    Ok(())
}

/// Groups whose processes had not all gone when their command ended.
fn left_over() -> &'static Mutex<Vec<PathBuf>> {
    static LEFT: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    LEFT.get_or_init(Mutex::default)
}

fn remove_left_over() {
    left_over()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|dir| fs::remove_dir(dir).is_err());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_leave_the_agent_a_quarter_and_at_least_32_mib() {
        let mib = |m: u64| m << 20;
        assert_eq!(caps(mib(240)), (mib(180), 960));
        assert_eq!(caps(mib(100)), (mib(68), 400));
        assert_eq!(caps(mib(600)).0, mib(450));
    }
}
