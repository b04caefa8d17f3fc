//! What every guest the harness drives can do, whether a lab guest ([`crate::Vm`]) or a VM
//! inside one ([`crate::nest::InnerVm`]): run a command, and on top of that the NixOS-driver
//! verbs `succeed`, `fail` and `wait_until_succeeds`, written once here.

use std::future::Future;
use std::time::{Duration, Instant};

use lab_proto::RunOutput;

use crate::cmd::Cmd;
use crate::error::{Error, Result};

/// A guest that runs commands. Implementors provide [`Guest::run_cmd`]; the verbs come free.
pub trait Guest {
    fn name(&self) -> &str;

    /// Deadline of a command that sets none.
    fn command_timeout(&self) -> Duration;

    /// Runs `cmd` (its timeout already set) and returns its result, whatever its exit status.
    fn run_cmd(&self, cmd: Cmd) -> impl Future<Output = Result<RunOutput>> + Send;

    /// Runs a command and returns its result, whatever its exit status.
    fn run(&self, cmd: impl Into<Cmd> + Send) -> impl Future<Output = Result<RunOutput>> + Send
    where
        Self: Sync,
    {
        async move {
            let mut cmd = cmd.into();
            if cmd.timeout_or_zero().is_zero() {
                cmd = cmd.timeout(self.command_timeout());
            }
            self.run_cmd(cmd).await
        }
    }

    /// Runs a command that must exit 0; returns its stdout.
    fn succeed(&self, cmd: impl Into<Cmd> + Send) -> impl Future<Output = Result<String>> + Send
    where
        Self: Sync,
    {
        async move {
            let cmd = cmd.into();
            let out = self.run(cmd.clone()).await?;
            if !out.success() {
                return Err(unexpected(self.name(), &cmd, "must succeed", out));
            }
            if out.truncated {
                // What it returns would not be all it printed.
                let cut = "must succeed with all of its output (more than the protocol's cap per stream was cut; stream it with `run_streaming`)";
                return Err(unexpected(self.name(), &cmd, cut, out));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }

    /// Runs a command that must exit non-zero (and not time out); returns its result.
    fn fail(&self, cmd: impl Into<Cmd> + Send) -> impl Future<Output = Result<RunOutput>> + Send
    where
        Self: Sync,
    {
        async move {
            let cmd = cmd.into();
            let out = self.run(cmd.clone()).await?;
            if out.success() || out.timed_out {
                return Err(unexpected(self.name(), &cmd, "must fail", out));
            }
            Ok(out)
        }
    }

    /// Runs a command until it succeeds, for at most `within`; returns its stdout.
    fn wait_until_succeeds(
        &self,
        cmd: impl Into<Cmd> + Send,
        within: Duration,
    ) -> impl Future<Output = Result<String>> + Send
    where
        Self: Sync,
    {
        async move {
            let cmd = cmd.into();
            let deadline = Instant::now() + within;
            // The last failed attempt, for the error.
            let last = std::sync::Mutex::new(None);
            let succeeded = crate::wait::try_until(within, Duration::from_millis(200), || {
                let attempt = cmd.clone().timeout(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_secs(1), self.command_timeout()),
                );
                let last = &last;
                async move {
                    let out: RunOutput = self.run(attempt).await?;
                    if out.success() {
                        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
                    }
                    if let Ok(mut last) = last.lock() {
                        *last = Some(out);
                    }
                    Ok::<_, Error>(None)
                }
            })
            .await?;
            match succeeded {
                Some(stdout) => Ok(stdout),
                None => Err(match last.into_inner().ok().flatten() {
                    Some(out) => unexpected(self.name(), &cmd, "did not succeed in time", out),
                    None => Error::guest(
                        self.name(),
                        crate::Phase::Command,
                        format!("`{}` did not succeed within {within:?}", cmd.describe()),
                    ),
                }),
            }
        }
    }
}

fn unexpected(name: &str, cmd: &Cmd, expected: &'static str, output: RunOutput) -> Error {
    Error::Unexpected {
        vm: name.to_string(),
        command: cmd.describe(),
        expected,
        output: Box::new(output),
    }
}
