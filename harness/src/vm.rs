//! One guest: boot it, run commands in it the way the NixOS test driver does (`succeed`, `fail`,
//! `wait_until_succeeds`), look at it through QMP, and power it off. Dropping a `Vm` kills its
//! QEMU and removes its state directory, whatever happened before.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use lab_proto::{
    Op, PowerOff, ReadFile, Ready, Reply, RunOutput, RunSpec, Stream, Unpack, WriteFile,
};
use serde::{Deserialize, Serialize};

use crate::agent::{answer, AgentClient, AgentError, CallError};
pub use crate::cmd::Cmd;
use crate::config::{MacAddr, VmConfig};
use crate::error::{Error, Phase, Result};
use crate::guest::Guest;
use crate::process::QemuProcess;
use crate::qemu::StatePaths;
use crate::qmp::Qmp;

/// How a guest came up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "why", rename_all = "snake_case")]
pub enum BootKind {
    /// Its kernel booted from scratch: snapshots are off, or this was its shape's first guest
    /// (which then took the snapshot).
    Cold,
    /// Restored from its shape's snapshot.
    Restored,
    /// Its shape's snapshot could not be used (the reason); it booted cold and took a new one.
    Fallback(String),
}

/// A running guest. Made by [`Vm::boot`] ([`crate::boot`]); everything here drives one that
/// is up.
pub struct Vm {
    pub(crate) cfg: VmConfig,
    // Field order is drop order: connections first, then QEMU, then the directory its sockets live in.
    pub(crate) agent: AgentClient,
    pub(crate) qmp: Qmp,
    pub(crate) process: QemuProcess,
    pub(crate) paths: StatePaths,
    pub(crate) ready: Ready,
    pub(crate) boot_time: Duration,
    pub(crate) attempts: u32,
    pub(crate) boot_kind: BootKind,
    /// What the console's recorder saw: bytes its log left out, the kernel's problems.
    pub(crate) console: crate::console::Watch,
    pub(crate) failed: bool,
    pub(crate) state: Option<tempfile::TempDir>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.cfg.name)
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// `eth0`'s address.
    pub fn mac(&self) -> MacAddr {
        self.cfg.machine.mac
    }

    /// Every NIC's address, `eth0` first.
    pub fn macs(&self) -> Vec<MacAddr> {
        self.cfg.macs()
    }

    /// What the agent reported at boot: kernel release, loaded modules, uptime.
    pub fn ready_info(&self) -> &Ready {
        &self.ready
    }

    /// From QEMU's start to the agent's ready message.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Which boot attempt succeeded (1 unless a boot timed out and was retried).
    pub fn boot_attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the guest was restored from a snapshot, booted cold, or fell back to a cold boot
    /// (and why).
    pub fn boot_kind(&self) -> &BootKind {
        &self.boot_kind
    }

    /// Unpacks a cpio archive at the guest's `/`, as the kernel does with the image's layers.
    pub(crate) async fn unpack(&self, archive: &[u8]) -> Result<()> {
        let unpack = Unpack {
            archive: archive.to_vec(),
        };
        let within = self.cfg.policy.command_timeout;
        self.set_up(unpack, within, "unpacking a layer").await
    }

    /// Gives the guest's NICs their addresses and routes, through its agent (no program runs).
    pub(crate) async fn network(&self, network: lab_proto::Network) -> Result<()> {
        let within = self.cfg.policy.command_timeout;
        self.set_up(network, within, "setting up its network").await
    }

    /// Waits until the guest reaches every address (ICMP echo, sent by its agent).
    pub(crate) async fn reach(&self, reach: lab_proto::Reach) -> Result<()> {
        let within = reach.within + self.cfg.policy.command_timeout;
        self.set_up(reach, within, "reaching the LAN's hosts").await
    }

    /// A part of the guest's set-up done by its agent; a failure is the set-up's, naming `what`.
    async fn set_up<C: lab_proto::Call>(
        &self,
        call: C,
        within: Duration,
        what: &str,
    ) -> Result<C::Ok> {
        let started = std::time::Instant::now();
        let done = self
            .agent
            .call(call, within)
            .await
            .map_err(|e| self.call_failed(Phase::Setup, what, e));
        // As the boot's steps say theirs: where a lab's set-up time and CPU go.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let cpu = crate::host::cpu_seconds(self.qemu_pid()).unwrap_or_default();
            tracing::debug!(
                "{}: {what} done in {:.0?}, QEMU's CPU {cpu:.2} s",
                self.name(),
                started.elapsed()
            );
        }
        done
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    pub fn qemu_pid(&self) -> u32 {
        self.process.pid()
    }

    /// The guest's private state directory: its QMP and agent sockets, console, QEMU log.
    pub fn state_dir(&self) -> &Path {
        &self.paths.dir
    }

    /// Bytes of the console that its log left out to stay under [`crate::console::MAX_BYTES`]
    /// (the log says where, in a line of its own).
    pub fn console_cut(&self) -> u64 {
        self.console.cut.bytes()
    }

    /// The problems the guest's kernel reported on its console so far (a WARN, a BUG, an
    /// Oops, KASAN, UBSAN, an RCU stall, a hung task), the first
    /// [`crate::console::MAX_SPLATS`]. [`Vm::shutdown`] fails on them unless
    /// [`crate::Policy::allow_splats`].
    pub fn kernel_splats(&self) -> Vec<crate::console::Splat> {
        self.console.splats()
    }

    /// The error a guest whose kernel reported a problem ends with, naming the first line.
    fn splat_error(&self) -> Option<Error> {
        if self.cfg.policy.allow_splats {
            return None;
        }
        let splats = self.kernel_splats();
        let first = splats.first()?;
        let more = match splats.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        let message = format!(
            "it printed \"{}\"{more} on its console; if that is provoked on purpose, allow it (`--allow-kernel-splats`, `Policy::allow_splats`)",
            first.line
        );
        Some(self.error(Phase::Kernel, message))
    }

    /// The error a guest ends with when kmemleak finds a leak (or cannot scan), naming the
    /// first unreferenced object and its backtrace.
    async fn kmemleak_error(&self) -> Option<Error> {
        let scan = crate::cmd::Cmd::script(crate::kmemleak::SCAN).timeout(Duration::from_secs(120));
        let out = match self.run(scan).await {
            Ok(out) => out,
            Err(e) => return Some(e),
        };
        let report = String::from_utf8_lossy(&out.stdout);
        if !out.success() {
            let message = format!(
                "--kmemleak: the scan failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Some(self.error(Phase::Kernel, message));
        }
        let leaks = crate::kmemleak::leaks(&report);
        let first = leaks.first()?;
        let message = format!(
            "kmemleak found {} unreferenced object(s); the first:\n{first}",
            leaks.len()
        );
        Some(self.error(Phase::Kernel, message))
    }

    /// Everything the guest printed on its serial console so far (at most
    /// [`crate::console::MAX_BYTES`]: a flood is cut in the middle).
    pub fn console_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.paths.console).unwrap_or_default())
            .into_owned()
    }

    /// Runs a command and returns its result, whatever its exit status.
    pub async fn run(&self, cmd: impl Into<Cmd> + Send) -> Result<RunOutput> {
        Guest::run(self, cmd).await
    }

    /// Runs a command that must exit 0; returns its stdout.
    pub async fn succeed(&self, cmd: impl Into<Cmd> + Send) -> Result<String> {
        Guest::succeed(self, cmd).await
    }

    /// Runs a command that must exit non-zero (and not time out); returns its result.
    pub async fn fail(&self, cmd: impl Into<Cmd> + Send) -> Result<RunOutput> {
        Guest::fail(self, cmd).await
    }

    /// Runs a command until it succeeds, for at most `within`; returns its stdout.
    pub async fn wait_until_succeeds(
        &self,
        cmd: impl Into<Cmd> + Send,
        within: Duration,
    ) -> Result<String> {
        Guest::wait_until_succeeds(self, cmd, within).await
    }

    /// Runs a command, passing each piece of its output to `on_output` as it comes, in order and
    /// whole: the guest's output is flow-controlled ([`crate::agent::OUTPUT_WINDOW`]), so an
    /// `on_output` that takes its time (a pipe nobody drains yet) slows the command instead of
    /// losing bytes. The result's `stdout` and `stderr` are empty: all of it went to
    /// `on_output`. Its `truncated` says a guest broke the window and bytes were dropped.
    ///
    /// The reply is awaited until the command's timeout and 10 s more, counted from the last
    /// piece of output taken: the time `on_output` spends is the reader's, not the guest's.
    pub async fn run_streaming(
        &self,
        cmd: impl Into<Cmd>,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<RunOutput> {
        let mut cmd = cmd.into();
        if cmd.spec.timeout.is_zero() {
            cmd = cmd.timeout(self.cfg.policy.command_timeout);
        }
        cmd.spec.stream = true;
        let grace = Duration::from_secs(10);
        let started = self
            .agent
            .start(Op::Run(cmd.spec.clone()))
            .await
            .map_err(|e| self.agent_failure(&cmd.describe(), e))?;
        let (id, mut output, mut reply) = (started.id, started.output, started.reply);
        let mut deadline = tokio::time::Instant::now() + cmd.spec.timeout.saturating_add(grace);
        let reply = loop {
            tokio::select! {
                Some((stream, data)) = output.recv() => {
                    on_output(stream, &data);
                    deadline = deadline.max(tokio::time::Instant::now() + grace);
                }
                reply = &mut reply => break reply.map_err(|_| AgentError::Closed),
                () = tokio::time::sleep_until(deadline) => {
                    self.agent.forget(id);
                    break Err(AgentError::Timeout(cmd.spec.timeout.saturating_add(grace)));
                }
            }
        };
        // Pieces sent before the reply may still sit in the channel.
        while let Some((stream, data)) = output.try_recv() {
            on_output(stream, &data);
        }
        self.ran(&cmd.describe(), reply)
    }

    /// The result of a run from the agent's answer to it; anything else is an error naming `what`.
    pub(crate) fn ran(&self, what: &str, reply: Result<Reply, AgentError>) -> Result<RunOutput> {
        answer::<RunSpec>(reply)
            .map_err(|e| self.call_failed(Phase::Command, &format!("`{what}`"), e))
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let read = ReadFile { path: path.into() };
        self.agent
            .call(read, self.cfg.policy.command_timeout)
            .await
            .map_err(|e| self.call_failed(Phase::Command, &format!("read {path}"), e))
    }

    pub async fn write_file(&self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        let write = WriteFile {
            path: path.into(),
            data: data.into(),
            mode,
        };
        self.agent
            .call(write, self.cfg.policy.command_timeout)
            .await
            .map_err(|e| self.call_failed(Phase::Command, &format!("write {path}"), e))
    }

    /// Sends raw bytes to the agent and returns its answer to input it cannot attribute
    /// (for testing that bad input gets an error and not a dead agent).
    pub async fn send_raw_to_agent(&self, bytes: &[u8]) -> Result<Reply> {
        self.agent
            .send_raw(bytes, Duration::from_secs(10))
            .await
            .map_err(|e| self.agent_failure("raw input", e))
    }

    /// Powers the guest off: through the agent, then ACPI `system_powerdown`, then QMP `quit`,
    /// then SIGKILL, each step only if the one before did not end QEMU in time. Fails, once
    /// the guest is off, if its kernel reported a problem ([`Vm::kernel_splats`]).
    pub async fn shutdown(mut self) -> Result<()> {
        let leaked = match self.cfg.policy.kmemleak {
            true => self.kmemleak_error().await,
            false => None,
        };
        self.power_off().await?;
        // The recorder reads what the console held when QEMU ended; then it is all there.
        let drained = crate::wait::until(Duration::from_secs(2), Duration::from_millis(20), || {
            let closed = self.console.closed();
            async move { closed.then_some(()) }
        })
        .await;
        if drained.is_none() {
            tracing::debug!("{}: console still open after power-off", self.cfg.name);
        }
        match self.splat_error().or(leaked) {
            Some(e) => {
                self.failed = true;
                Err(e)
            }
            None => Ok(()),
        }
    }

    async fn power_off(&mut self) -> Result<()> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            if let Some(cpu) = crate::host::cpu_seconds(self.qemu_pid()) {
                tracing::debug!("{}: powering off; QEMU's CPU {cpu:.2} s", self.cfg.name);
            }
        }
        let _ = self.agent.call(PowerOff, Duration::from_secs(5)).await;
        if self.exited_within(Duration::from_secs(10)).await {
            return Ok(());
        }
        let _ = self.qmp.system_powerdown().await;
        if self.exited_within(Duration::from_secs(5)).await {
            return Ok(());
        }
        let quit = self.qmp.quit().await;
        if self.exited_within(Duration::from_secs(5)).await {
            return Ok(());
        }
        self.process.kill();
        let message = format!(
            "QEMU did not exit after power-off, system_powerdown and quit ({quit:?}); killed"
        );
        Err(self.error(Phase::Shutdown, message))
    }

    /// Ends QEMU at once with QMP `quit`, the guest as it is (a stopped guest whose state was
    /// just saved); SIGKILL if that does not end it in time.
    pub(crate) async fn quit(mut self) {
        let _ = self.qmp.quit().await;
        if !self.exited_within(Duration::from_secs(5)).await {
            self.process.kill();
            let _ = self.process.wait().await;
        }
    }

    async fn exited_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.process.wait())
            .await
            .is_ok()
    }

    pub(crate) fn error(&self, phase: Phase, message: String) -> Error {
        Error::guest(&self.cfg.name, phase, message).with_console(Some(crate::console::tail(
            &self.paths.console,
            crate::console::ERROR_LINES,
        )))
    }

    pub(crate) fn agent_failure(&self, what: &str, e: AgentError) -> Error {
        self.error(Phase::Command, format!("{what}: {e}"))
    }

    fn call_failed(&self, phase: Phase, what: &str, e: CallError) -> Error {
        self.error(phase, format!("{what}: {e}"))
    }

    /// Copies the console log to the artifacts directory, if one is configured.
    pub(crate) fn keep_console(&self, failed: bool) {
        crate::console::keep(
            &self.cfg.name,
            self.cfg.keep.artifacts.as_deref(),
            &self.paths.console,
            failed,
        );
    }

    /// Marks the guest as failed so its console is kept in the artifacts directory on drop.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }
}

impl Guest for Vm {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn command_timeout(&self) -> Duration {
        self.cfg.policy.command_timeout
    }

    async fn run_cmd(&self, cmd: Cmd) -> Result<RunOutput> {
        // The agent enforces the command's timeout; allow it time to report back.
        let within = cmd.spec.timeout + Duration::from_secs(10);
        let run = self.agent.call(cmd.spec.clone(), within).await;
        run.map_err(|e| self.call_failed(Phase::Command, &format!("`{}`", cmd.describe()), e))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.process.kill();
        let failed = self.failed || std::thread::panicking();
        if failed || self.cfg.keep.console {
            self.keep_console(failed);
        }
        // TempDir's own drop removes the directory and the sockets in it.
        drop(self.state.take());
    }
}
