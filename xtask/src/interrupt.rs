//! Ctrl-C (SIGINT) and SIGTERM (a cancelled CI job) in the middle of a run: the work in progress
//! is dropped, which kills its guests' QEMUs and removes their directories (their `Drop`), and
//! the run ends saying so, with the shell's exit code for the signal.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{signal, SignalKind};

/// A run stopped by a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}: the guests were stopped and their directories removed")]
pub struct Interrupted {
    pub name: &'static str,
    pub signal: i32,
}

/// Set once SIGINT or SIGTERM came: what blocks outside the runtime (a write to a pipe nobody
/// reads) looks at it and gives up, so that the run can stop.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM came during [`unless_interrupted`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Runs `work` to its end, unless SIGINT or SIGTERM comes first.
pub async fn unless_interrupted<T>(work: impl Future<Output = T>) -> anyhow::Result<T> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // On a worker thread of its own, so that the signal is seen while `work`, polled on this
    // thread, is stuck in something blocking (writing our stdout, say).
    let mut watch_int = signal(SignalKind::interrupt())?;
    let mut watch_term = signal(SignalKind::terminate())?;
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = watch_int.recv() => {}
            _ = watch_term.recv() => {}
        }
        REQUESTED.store(true, Ordering::Relaxed);
    });
    let _stop_watching = AbortOnDrop(watcher);
    tokio::select! {
        out = work => Ok(out),
        _ = int.recv() => Err(Interrupted { name: "SIGINT (Ctrl-C)", signal: libc::SIGINT }.into()),
        _ = term.recv() => Err(Interrupted { name: "SIGTERM", signal: libc::SIGTERM }.into()),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes `bytes` to `to` (our stdout or stderr), waiting for room as long as it takes unless
/// SIGINT or SIGTERM comes: a reader that never reads (`lab run ... | sleep 600`) must not keep
/// the run from stopping. What could not be written by then is dropped.
pub fn write_unless_interrupted(to: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // At most a pipe's atomic size a write: after POLLOUT a pipe has room for that much, so
    // the write does not block.
    const PIECE: usize = 4096;
    while !bytes.is_empty() && !requested() {
        let mut fds = [PollFd::new(to, PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        match nix::unistd::write(to, &bytes[..bytes.len().min(PIECE)]) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            // The reader is gone (EPIPE): nothing more can be said there.
            Err(_) => return,
        }
    }
}

/// The exit code for an error: 128 + the signal for an interrupted run, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    error
        .downcast_ref::<Interrupted>()
        .map_or(1, |i| 128 + i.signal)
}
