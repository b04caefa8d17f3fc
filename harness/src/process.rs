//! The QEMU process: started in a process group of its own, killed with the harness.
//!
//! Three independent guards make sure no QEMU outlives its test: `Drop` kills the group,
//! tokio's `kill_on_drop` kills the child, and `PR_SET_PDEATHSIG` has the kernel kill it when
//! the thread that started it dies (a test that panics, or a harness killed with SIGKILL).

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    pid: u32,
}

impl QemuProcess {
    pub fn spawn(binary: &Path, args: &[std::ffi::OsString], log: &Path) -> std::io::Result<Self> {
        let log_file = std::fs::File::create(log)?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("QEMU exited at once"))?;
        Ok(Self { child, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for QEMU to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// `Some(status)` if QEMU has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        // The group id is QEMU's pid (process_group(0)); anything QEMU started goes with it.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.start_kill();
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}
