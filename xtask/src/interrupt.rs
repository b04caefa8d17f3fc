//! Ctrl-C (SIGINT) and SIGTERM (a cancelled CI job) in the middle of a run: the work in progress
//! is dropped, which kills its guests' QEMUs and removes their directories (their `Drop`), and
//! the run ends saying so, with the shell's exit code for the signal.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// A run stopped by a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}: the guests were stopped and their directories removed")]
pub struct Interrupted {
    pub name: &'static str,
    pub signal: i32,
}

/// Runs `work` to its end, unless SIGINT or SIGTERM comes first.
pub async fn unless_interrupted<T>(work: impl Future<Output = T>) -> anyhow::Result<T> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        out = work => Ok(out),
        _ = int.recv() => Err(Interrupted { name: "SIGINT (Ctrl-C)", signal: libc::SIGINT }.into()),
        _ = term.recv() => Err(Interrupted { name: "SIGTERM", signal: libc::SIGTERM }.into()),
    }
}

/// The exit code for an error: 128 + the signal for an interrupted run, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    error
        .downcast_ref::<Interrupted>()
        .map_or(1, |i| 128 + i.signal)
}
