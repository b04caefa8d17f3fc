//! A user's job on a guest: a script's text or a program with its arguments, run as root with
//! its output streamed. `cargo xtask lab run` boots a lab and runs one on its first host.

use std::time::Duration;

use crate::assets::DIR_IN_GUEST;
use crate::{Cmd, Result, RunOutput, Stream, Vm};

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// A script's text: run through its `#!` interpreter if it has one, else by `/bin/sh`.
    Script(String),
    /// A program and its arguments, started in [`crate::Extras::dir`]'s copy (`/lab`) when
    /// there is one: a relative path is taken from there, and its `#!` line is honoured.
    Program(Vec<String>),
}

/// Where a script is written in the guest.
const SCRIPT: &str = "/run/lab-run.sh";

impl Job {
    /// Runs on `vm` for at most `timeout`, in `/lab` if `in_dir` (the guest has a user's
    /// directory) else `/root`, with `env` added to its environment. `output` is called with each piece of output, stdout and
    /// stderr apart, while it runs: all of it, in order (a slow `output` slows the job), and
    /// the result's `stdout` and `stderr` are empty ([`crate::Vm::run_streaming`]).
    pub async fn run_on(
        &self,
        vm: &Vm,
        in_dir: bool,
        env: &[(String, String)],
        timeout: Duration,
        output: impl FnMut(Stream, &[u8]),
    ) -> Result<RunOutput> {
        let cmd = match self {
            Job::Script(text) => {
                vm.write_file(SCRIPT, text.as_bytes().to_vec(), 0o755)
                    .await?;
                // The kernel honours a `#!` line; a script without one is the shell's.
                if text.starts_with("#!") {
                    Cmd::argv([SCRIPT])
                } else {
                    Cmd::argv(["/bin/sh", SCRIPT])
                }
            }
            Job::Program(argv) => Cmd::argv(argv.clone()),
        };
        let cwd = if in_dir { DIR_IN_GUEST } else { "/root" };
        let cmd = env
            .iter()
            .fold(cmd.cwd(cwd).timeout(timeout), |cmd, (k, v)| cmd.env(k, v));
        vm.run_streaming(cmd, output).await
    }
}
