//! One guest: boot it, run commands in it the way the NixOS test driver does (`succeed`, `fail`,
//! `wait_until_succeeds`), look at it through QMP, and power it off. Dropping a `Vm` kills its
//! QEMU and removes its state directory, whatever happened before.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use lab_proto::{Op, Ready, Reply, RunOutput, Stream, TtySize};
use tokio::net::UnixListener;

use crate::accel::Accel;
use crate::agent::{AgentClient, AgentError};
pub use crate::cmd::Cmd;
use crate::error::{Error, Phase, Result};
use crate::guest::Guest;
pub use crate::mac::{BadMacAddr, MacAddr};
use crate::process::QemuProcess;
use crate::qemu::{self, Memory, StatePaths};
use crate::qmp::Qmp;
use crate::snapshot::BootKind;

/// How many console lines an error shows.
const CONSOLE_TAIL: usize = 40;

/// What the guest's `eth0` is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// Nothing: frames go nowhere. No host interface is touched.
    Isolated,
    /// Ports of the lab's switch ([`crate::lan`]), one per NIC (`eth0` first), through unix
    /// datagram sockets.
    Switch(Vec<crate::lan::PortSockets>),
}

/// A cpio archive appended to a guest's image ([`lab_rootfs::layers`]): a file (a cached package
/// layer) or bytes (a user's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdLayer {
    File(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

/// Everything that defines one guest. Start from [`VmConfig::new`] (or [`crate::Assets::vm`])
/// and adjust fields.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Archives appended to `initrd`, in order; a later one's file replaces an earlier one's.
    pub layers: Vec<InitrdLayer>,
    /// The kernel's whole module tree on a read-only disk, mounted on /lib/modules.
    pub modules_disk: Option<PathBuf>,
    /// Modules `modprobe`d once the agent is up (the [`Phase::Setup`] of a boot).
    pub modprobe: Vec<String>,
    /// `uname -r` the guest must report; checked at boot when set.
    pub kernel_release: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `eth0`'s address; `eth1`... have [`MacAddr::of_nic`] of it.
    pub mac: MacAddr,
    /// How many NICs (`eth0`, `eth1`...): each is its own switch port with its own cable, for
    /// bonds and the like.
    pub nics: u8,
    pub net: NetBackend,
    pub accel: Accel,
    /// Under TCG, the TSC rate passed as `tsc_early_khz` (see [`qemu::kernel_cmdline`]).
    pub tsc_khz: Option<u32>,
    pub extra_cmdline: Vec<String>,
    /// From QEMU's start to the agent's ready message.
    pub boot_timeout: Duration,
    /// Boots that time out (not ones that fail) are retried this many times in all.
    pub boot_attempts: u32,
    /// Default deadline of a command.
    pub command_timeout: Duration,
    /// Where the throwaway state directory is created (the system temp dir by default).
    pub state_parent: Option<PathBuf>,
    /// Where to keep the console log when the guest fails or its test panics.
    pub artifacts: Option<PathBuf>,
    /// Keep the console log in `artifacts` even when all went well (a kept run).
    pub keep_console: bool,
    /// Where snapshots of guest shapes are kept ([`crate::snapshot`]); `None` boots cold.
    pub snapshots: Option<PathBuf>,
    /// A nest guest: before its shape's snapshot is taken, an inner VM is booted and saved in
    /// it, so that the inner VMs of its clones restore ([`crate::nest::save_template`]).
    pub inner_template: bool,
}

impl VmConfig {
    pub fn new(name: &str, kernel: &Path, initrd: &Path) -> Self {
        let accel = Accel::choose().unwrap_or(Accel::Tcg);
        Self {
            name: name.to_string(),
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            layers: Vec::new(),
            modules_disk: None,
            modprobe: Vec::new(),
            kernel_release: None,
            memory_mib: 256,
            cpus: 1,
            mac: MacAddr::unique(),
            nics: 1,
            net: NetBackend::Isolated,
            accel,
            tsc_khz: if accel == Accel::Tcg {
                crate::accel::host_tsc_khz()
            } else {
                None
            },
            extra_cmdline: Vec::new(),
            boot_timeout: match accel {
                Accel::Kvm => Duration::from_secs(20),
                Accel::Tcg => Duration::from_secs(60),
            },
            boot_attempts: 2,
            command_timeout: Duration::from_secs(60),
            state_parent: None,
            artifacts: std::env::var_os("LAB_ARTIFACTS").map(PathBuf::from),
            keep_console: false,
            snapshots: None,
            inner_template: false,
        }
    }

    /// Every NIC's address, `eth0` first.
    pub fn macs(&self) -> Vec<MacAddr> {
        (0..self.nics.max(1)).map(|n| self.mac.of_nic(n)).collect()
    }
}

/// The kernel's "Initramfs unpacking failed: ..." line in a console log, if it is there.
fn unpacking_failed(console: &Path) -> Option<String> {
    let text = std::fs::read(console).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .find(|l| l.contains("Initramfs unpacking failed"))?;
    let from = line.find("Initramfs unpacking failed")?;
    Some(line[from..].trim().to_string())
}

/// A running guest.
pub struct Vm {
    cfg: VmConfig,
    // Field order is drop order: connections first, then QEMU, then the directory its sockets live in.
    agent: AgentClient,
    qmp: Qmp,
    process: QemuProcess,
    paths: StatePaths,
    ready: Ready,
    boot_time: Duration,
    attempts: u32,
    boot_kind: BootKind,
    /// Bytes the console log left out to stay bounded.
    console_cut: crate::console::Cut,
    failed: bool,
    state: Option<tempfile::TempDir>,
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
    /// Boots a guest and waits for its agent: from its shape's snapshot when there is one
    /// ([`crate::snapshot`], unless `cfg.snapshots` is `None` or `LAB_SNAPSHOT=off`), else its
    /// kernel from scratch. Then loads `cfg.modprobe` ([`Phase::Setup`]).
    pub async fn boot(cfg: VmConfig) -> Result<Vm> {
        let vm = match &cfg.snapshots {
            Some(store) if crate::snapshot::enabled()? => {
                crate::snapshot::boot(&cfg, store).await?
            }
            _ => Self::boot_cold(&cfg, Memory::Anonymous).await?,
        };
        crate::snapshot::count(&vm.boot_kind);
        vm.setup().await?;
        Ok(vm)
    }

    /// Boots the kernel from scratch. A boot that times out is retried up to
    /// `cfg.boot_attempts` times in all; a guest that dies (kernel panic, QEMU error) is not.
    pub(crate) async fn boot_cold(cfg: &VmConfig, memory: Memory<'_>) -> Result<Vm> {
        let attempts = cfg.boot_attempts.max(1);
        let mut attempt = 1;
        loop {
            match Self::launch(cfg, attempt, Start::Boot(memory)).await {
                Ok(vm) => return Ok(vm),
                Err(BootFailure {
                    error,
                    retryable: true,
                }) if attempt < attempts => {
                    tracing::warn!(
                        "{}: boot attempt {attempt} timed out, retrying: {error}",
                        cfg.name
                    );
                    attempt += 1;
                }
                Err(BootFailure { error, .. }) => return Err(error),
            }
        }
    }

    /// Starts QEMU on a saved state and its memory file and makes the guest its own
    /// (`resume`). One attempt: the caller falls back to a cold boot.
    pub(crate) async fn restore(
        cfg: &VmConfig,
        state: &Path,
        memory: &Path,
        resume: lab_proto::Resume,
    ) -> Result<Vm> {
        let mut vm = Self::launch(
            cfg,
            1,
            Start::Restore {
                state,
                memory,
                resume,
            },
        )
        .await
        .map_err(|f| f.error)?;
        vm.boot_kind = BootKind::Restored;
        Ok(vm)
    }

    /// Starts QEMU and waits for the agent: booting the kernel, or on a saved state, where the
    /// agent makes the guest its own with the `Resume` given.
    async fn launch(cfg: &VmConfig, attempt: u32, start: Start<'_>) -> Result<Vm, BootFailure> {
        let fatal = |error| BootFailure {
            error,
            retryable: false,
        };
        let binary = qemu::find_binary().map_err(fatal)?;
        for (what, path) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd)] {
            if !path.is_file() {
                return Err(fatal(Error::Missing {
                    what: format!("{what} {}", path.display()),
                    fix: "run `cargo xtask test` (or `cargo xtask provision`), which fetches the kernel and builds the image".into(),
                }));
            }
        }
        let state = state_dir(cfg).map_err(fatal)?;
        let paths = StatePaths::in_dir(state.path());
        let (args, incoming) = match start {
            Start::Boot(memory) => {
                if let Memory::SavedTo(file) = memory {
                    // Emptied, then sized: a retried boot starts on fresh memory, not on what
                    // the last attempt left.
                    let sized = std::fs::OpenOptions::new()
                        .write(true)
                        .open(file)
                        .and_then(|f| {
                            f.set_len(0)?;
                            f.set_len(u64::from(cfg.memory_mib) << 20)
                        });
                    sized.map_err(|e| fatal(Error::io(file, e)))?;
                }
                compose_initrd(cfg, &paths).map_err(fatal)?;
                let mut args = qemu::args(cfg, &paths);
                args.extend(qemu::memory_args(cfg, memory));
                (args, None)
            }
            // The saved state and memory hold the guest, image and all: what QEMU loads before
            // the state replaces it is never read, so the layers need not be put together.
            Start::Restore {
                state,
                memory,
                resume,
            } => {
                let (kernel, initrd) =
                    qemu::restore_stand_ins(&cfg.kernel, &paths.dir).map_err(fatal)?;
                let bare = VmConfig {
                    layers: Vec::new(),
                    kernel,
                    initrd,
                    ..cfg.clone()
                };
                let mut args = qemu::args(&bare, &paths);
                args.extend(qemu::memory_args(cfg, Memory::RestoredFrom(memory)));
                args.extend(qemu::incoming_args());
                (args, Some((state, resume)))
            }
        };
        let (incoming, resume) = incoming.unzip();
        let launch_err =
            |e: std::io::Error| fatal(Error::guest(&cfg.name, Phase::Launch, e.to_string()));
        let console_listener = UnixListener::bind(&paths.console_sock).map_err(launch_err)?;
        let qmp_listener = UnixListener::bind(&paths.qmp).map_err(launch_err)?;
        let agent_listener = UnixListener::bind(&paths.agent).map_err(launch_err)?;
        let started = Instant::now();
        let mut process =
            QemuProcess::spawn(&binary, &args, &paths.qemu_log).map_err(launch_err)?;

        let step =
            |what: &str| tracing::debug!("{}: {what} at {:.0?}", cfg.name, started.elapsed());
        let mut booting = Booting {
            cfg,
            paths: &paths,
            process: &mut process,
        };
        let console = booting
            .accept(&console_listener, Duration::from_secs(10))
            .await?;
        let console_cut = console
            .into_std()
            .and_then(|c| {
                c.set_nonblocking(false)?;
                crate::console::record(c, &paths.console, crate::console::MAX_BYTES)
            })
            .map_err(|e| {
                booting.fail(Phase::Launch, format!("recording the console: {e}"), false)
            })?;
        let qmp_stream = booting
            .accept(&qmp_listener, Duration::from_secs(10))
            .await?;
        let qmp = Qmp::connect(qmp_stream, Duration::from_secs(10))
            .await
            .map_err(|e| booting.fail(Phase::Qmp, e.to_string(), false))?;
        step("QMP connected");
        let agent = AgentClient::new(
            booting
                .accept(&agent_listener, Duration::from_secs(10))
                .await?,
        );
        if let Some(saved) = incoming {
            let within = cfg.boot_timeout.saturating_sub(started.elapsed());
            qmp.load_state(saved, within)
                .await
                .map_err(|e| booting.fail(Phase::Boot, e.to_string(), false))?;
            step("saved state loaded, guest running");
        }
        let ready = match resume {
            None => {
                booting
                    .wait_ready(&agent, started, Duration::from_secs(1))
                    .await?
            }
            // A restored agent does not announce itself again: ask often. Its first answer may
            // as well be to `resume`, sent at once rather than after the hello.
            Some(resume) => {
                let resumed = agent.request(Op::Resume(resume), cfg.command_timeout);
                let (ready, resumed) = tokio::join!(
                    booting.wait_ready(&agent, started, Duration::from_millis(50)),
                    resumed
                );
                let ready = ready?;
                match resumed {
                    Ok(Reply::Done) => step("resumed as its own guest"),
                    Ok(Reply::Error { message }) => {
                        return Err(booting.fail(Phase::Boot, format!("resume: {message}"), false))
                    }
                    Ok(other) => {
                        return Err(booting.fail(
                            Phase::Boot,
                            format!("resume: unexpected reply {other:?}"),
                            false,
                        ))
                    }
                    Err(e) => return Err(booting.fail(Phase::Boot, format!("resume: {e}"), false)),
                }
                ready
            }
        };
        let boot_time = started.elapsed();
        if let Some(want) = &cfg.kernel_release {
            if &ready.kernel_release != want {
                let msg = format!(
                    "guest runs kernel {} but {want} was asked for",
                    ready.kernel_release
                );
                return Err(booting.fail(Phase::Boot, msg, false));
            }
        }
        if incoming.is_none() {
            // The kernel unpacks the image and its layers into memory; when that runs out it
            // says so (at KERN_EMERG, past `quiet`) and boots on with files missing.
            if let Some(why) = unpacking_failed(&paths.console) {
                let msg = format!(
                    "the image and its layers did not fit in {} MiB of memory (the kernel said \"{why}\", and files are missing in the guest): give the guest more memory (`--memory {}`, `VmConfig::memory_mib`)",
                    cfg.memory_mib,
                    cfg.memory_mib * 2
                );
                return Err(booting.fail(Phase::Boot, msg, false));
            }
        }
        let how = if incoming.is_some() {
            "restored"
        } else {
            "booted"
        };
        tracing::info!(
            "{}: {how} in {boot_time:.2?} (attempt {attempt}, {}, QEMU {})",
            cfg.name,
            cfg.accel,
            qmp.version
        );
        Ok(Vm {
            cfg: cfg.clone(),
            agent,
            qmp,
            process,
            paths,
            ready,
            boot_time,
            attempts: attempt,
            boot_kind: BootKind::Cold,
            console_cut,
            failed: false,
            state: Some(state),
        })
    }

    /// Loads the modules the configuration asks for. A failure keeps the console, like a failed
    /// boot (dropping the guest on the way out).
    async fn setup(&self) -> Result<()> {
        if self.cfg.modprobe.is_empty() {
            return Ok(());
        }
        let out = self
            .run(Cmd::argv(
                ["modprobe", "-a"]
                    .into_iter()
                    .map(String::from)
                    .chain(self.cfg.modprobe.iter().cloned()),
            ))
            .await?;
        if !out.success() {
            keep_console(&self.cfg, &self.paths, true);
            let message = format!(
                "modprobe {} failed: {}",
                self.cfg.modprobe.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Err(self.error(Phase::Setup, message));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// `eth0`'s address.
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
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

    pub(crate) fn set_boot_kind(&mut self, kind: BootKind) {
        self.boot_kind = kind;
    }

    /// What [`Vm::config`] says the guest's layers are, once they were put in another way.
    pub(crate) fn set_layers(&mut self, layers: Vec<InitrdLayer>) {
        self.cfg.layers = layers;
    }

    /// Unpacks a cpio archive at the guest's `/`, as the kernel does with the image's layers.
    pub(crate) async fn unpack(&self, archive: &[u8]) -> Result<()> {
        match self
            .agent
            .request(
                Op::Unpack {
                    archive: archive.to_vec(),
                },
                self.cfg.command_timeout,
            )
            .await
        {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Error { message }) => {
                Err(self.error(Phase::Setup, format!("unpacking a layer: {message}")))
            }
            Ok(other) => Err(self.error(
                Phase::Setup,
                format!("unpacking a layer: unexpected reply {other:?}"),
            )),
            Err(e) => Err(self.agent_failure("unpacking a layer", e)),
        }
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
        self.console_cut.bytes()
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

    /// Runs a command, passing each piece of its output to `on_output` as it comes; returns its
    /// result with stdout and stderr kept apart (each up to the protocol's cap).
    pub async fn run_streaming(
        &self,
        cmd: impl Into<Cmd>,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<RunOutput> {
        let mut cmd = cmd.into();
        if cmd.spec.timeout.is_zero() {
            cmd = cmd.timeout(self.cfg.command_timeout);
        }
        cmd.spec.stream = true;
        let within = cmd.spec.timeout + Duration::from_secs(10);
        let started = self
            .agent
            .start(Op::Run(cmd.spec.clone()))
            .await
            .map_err(|e| self.agent_failure(&cmd.describe(), e))?;
        let (id, mut output, reply) = (started.id, started.output, started.reply);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let waiting = self.agent.wait(id, reply, within);
        tokio::pin!(waiting);
        let reply = loop {
            tokio::select! {
                Some((stream, data)) = output.recv() => {
                    on_output(stream, &data);
                    keep(if stream == Stream::Stdout { &mut stdout } else { &mut stderr }, &data);
                }
                reply = &mut waiting => break reply,
            }
        };
        // Pieces sent before the reply may still sit in the channel.
        while let Ok((stream, data)) = output.try_recv() {
            on_output(stream, &data);
            keep(
                if stream == Stream::Stdout {
                    &mut stdout
                } else {
                    &mut stderr
                },
                &data,
            );
        }
        self.ran(&cmd.describe(), reply).map(|out| RunOutput {
            stdout,
            stderr,
            ..out
        })
    }

    /// The result of a run from the agent's answer to it; anything else is an error naming `what`.
    fn ran(&self, what: &str, reply: Result<Reply, AgentError>) -> Result<RunOutput> {
        match reply {
            Ok(Reply::Ran(out)) => Ok(out),
            Ok(Reply::Error { message }) => {
                Err(self.error(Phase::Command, format!("`{what}`: {message}")))
            }
            Ok(other) => Err(self.error(Phase::Command, format!("unexpected reply {other:?}"))),
            Err(e) => Err(self.agent_failure(what, e)),
        }
    }

    /// Starts `cmd` on a new terminal of `size` in the guest (an interactive shell, say): what
    /// is typed goes in with [`Session::input`], what it shows comes out of [`Session::output`].
    pub async fn interactive(&self, cmd: impl Into<Cmd>, size: TtySize) -> Result<Session<'_>> {
        let mut cmd = cmd.into();
        cmd.spec.tty = Some(size);
        if cmd.spec.timeout.is_zero() {
            // A person at a shell may take their time: a week.
            cmd = cmd.timeout(Duration::from_secs(7 * 24 * 3600));
        }
        let started = self
            .agent
            .start(Op::Run(cmd.spec.clone()))
            .await
            .map_err(|e| self.agent_failure(&cmd.describe(), e))?;
        Ok(Session {
            vm: self,
            started: Some(started),
            timeout: cmd.spec.timeout,
        })
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        match self
            .agent
            .request(Op::ReadFile { path: path.into() }, self.cfg.command_timeout)
            .await
        {
            Ok(Reply::File { data }) => Ok(data),
            Ok(Reply::Error { message }) => Err(self.error(Phase::Command, message)),
            Ok(other) => Err(self.error(Phase::Command, format!("unexpected reply {other:?}"))),
            Err(e) => Err(self.agent_failure(&format!("read {path}"), e)),
        }
    }

    pub async fn write_file(&self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        let op = Op::WriteFile {
            path: path.into(),
            data: data.into(),
            mode,
        };
        match self.agent.request(op, self.cfg.command_timeout).await {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Error { message }) => Err(self.error(Phase::Command, message)),
            Ok(other) => Err(self.error(Phase::Command, format!("unexpected reply {other:?}"))),
            Err(e) => Err(self.agent_failure(&format!("write {path}"), e)),
        }
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
    /// then SIGKILL, each step only if the one before did not end QEMU in time.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self
            .agent
            .request(Op::PowerOff, Duration::from_secs(5))
            .await;
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
        Error::guest(&self.cfg.name, phase, message)
            .with_console(Some(qemu_console_tail(&self.paths)))
    }

    fn agent_failure(&self, what: &str, e: AgentError) -> Error {
        self.error(Phase::Command, format!("{what}: {e}"))
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
        self.cfg.command_timeout
    }

    async fn run_cmd(&self, cmd: Cmd) -> Result<RunOutput> {
        // The agent enforces the command's timeout; allow it time to report back.
        let within = cmd.spec.timeout + Duration::from_secs(10);
        let reply = self.agent.request(Op::Run(cmd.spec.clone()), within).await;
        self.ran(&cmd.describe(), reply)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.process.kill();
        let failed = self.failed || std::thread::panicking();
        if failed || self.cfg.keep_console {
            keep_console(&self.cfg, &self.paths, failed);
        }
        // TempDir's own drop removes the directory and the sockets in it.
        drop(self.state.take());
    }
}

/// An interactive program on a terminal in a guest ([`Vm::interactive`]).
#[derive(Debug)]
pub struct Session<'a> {
    vm: &'a Vm,
    started: Option<crate::agent::Started>,
    timeout: Duration,
}

impl Session<'_> {
    /// The next piece of what the terminal shows; `None` once the program has ended.
    pub async fn output(&mut self) -> Option<Vec<u8>> {
        self.started
            .as_mut()?
            .output
            .recv()
            .await
            .map(|(_, data)| data)
    }

    /// Types `data` (keys, Ctrl-C as byte 3, ...) into the terminal.
    pub async fn input(&self, data: &[u8]) -> Result<()> {
        let Some(started) = &self.started else {
            return Ok(());
        };
        let op = Op::Input {
            run: started.id,
            data: data.to_vec(),
        };
        self.vm
            .agent
            .notify(op)
            .await
            .map_err(|e| self.vm.agent_failure("terminal input", e))
    }

    /// The terminal changed size.
    pub async fn resize(&self, size: TtySize) -> Result<()> {
        let Some(started) = &self.started else {
            return Ok(());
        };
        let op = Op::Resize {
            run: started.id,
            rows: size.rows,
            cols: size.cols,
        };
        self.vm
            .agent
            .notify(op)
            .await
            .map_err(|e| self.vm.agent_failure("terminal resize", e))
    }

    /// The person at the terminal went away (a closed window): the guest's shell gets SIGHUP.
    /// Its end still comes through [`Session::output`] and [`Session::finish`].
    pub async fn hang_up(&self) -> Result<()> {
        let Some(started) = &self.started else {
            return Ok(());
        };
        let op = Op::Hangup { run: started.id };
        self.vm
            .agent
            .notify(op)
            .await
            .map_err(|e| self.vm.agent_failure("terminal hangup", e))
    }

    /// Waits for the program to end (call once [`Session::output`] says `None`).
    pub async fn finish(mut self) -> Result<RunOutput> {
        let Some(started) = self.started.take() else {
            return Err(self
                .vm
                .error(Phase::Command, "session already finished".into()));
        };
        let reply = self
            .vm
            .agent
            .wait(
                started.id,
                started.reply,
                self.timeout + Duration::from_secs(10),
            )
            .await;
        self.vm.ran("interactive session", reply)
    }
}

/// Keeps `data` in `buf` up to the protocol's per-stream cap.
fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = lab_proto::MAX_OUTPUT_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Writes the image the guest boots, `initrd` with its layers appended, into its state directory.
fn compose_initrd(cfg: &VmConfig, paths: &StatePaths) -> Result<()> {
    if cfg.layers.is_empty() {
        return Ok(());
    }
    use std::io::Write;
    let io = |e| Error::io(&paths.initrd, e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&paths.initrd).map_err(io)?);
    let copy = |path: &Path, out: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        std::io::copy(&mut file, out).map_err(io)?;
        Ok(())
    };
    copy(&cfg.initrd, &mut out)?;
    for layer in &cfg.layers {
        match layer {
            InitrdLayer::File(path) => copy(path, &mut out)?,
            InitrdLayer::Bytes(bytes) => out.write_all(bytes).map_err(io)?,
        }
    }
    out.flush().map_err(io)
}

/// How [`Vm::launch`] starts a guest.
enum Start<'a> {
    /// Boot the kernel, its memory where [`Memory`] says.
    Boot(Memory<'a>),
    /// Load a snapshot's device state, on its memory file, and make the guest its own.
    Restore {
        state: &'a Path,
        memory: &'a Path,
        resume: lab_proto::Resume,
    },
}

/// A failed boot attempt, and whether trying again could help.
struct BootFailure {
    error: Error,
    retryable: bool,
}

/// The state of a guest between QEMU's start and its agent's ready message.
struct Booting<'a> {
    cfg: &'a VmConfig,
    paths: &'a StatePaths,
    process: &'a mut QemuProcess,
}

impl Booting<'_> {
    fn fail(&mut self, phase: Phase, message: String, retryable: bool) -> BootFailure {
        self.process.kill();
        keep_console(self.cfg, self.paths, true);
        let error = Error::guest(&self.cfg.name, phase, message)
            .with_console(Some(qemu_console_tail(self.paths)));
        BootFailure { error, retryable }
    }

    /// Accepts QEMU's connection to one of our sockets, unless QEMU dies first.
    async fn accept(
        &mut self,
        listener: &UnixListener,
        within: Duration,
    ) -> Result<tokio::net::UnixStream, BootFailure> {
        tokio::select! {
            conn = tokio::time::timeout(within, listener.accept()) => match conn {
                Ok(Ok((stream, _))) => Ok(stream),
                Ok(Err(e)) => Err(self.fail(Phase::Launch, format!("accepting QEMU's connection: {e}"), false)),
                Err(_) => Err(self.fail(Phase::Launch, format!("QEMU did not connect within {within:?}"), false)),
            },
            status = self.process.wait() => {
                let log = std::fs::read_to_string(&self.paths.qemu_log).unwrap_or_default();
                Err(self.fail(Phase::Launch, format!("QEMU exited at start ({status:?}): {}", log.trim()), false))
            }
        }
    }

    /// Waits for the agent, failing at once if QEMU exits (a panicking kernel with `panic=-1`
    /// and `-no-reboot` makes QEMU exit) and after the boot timeout otherwise.
    async fn wait_ready(
        &mut self,
        agent: &AgentClient,
        started: Instant,
        nudge: Duration,
    ) -> Result<Ready, BootFailure> {
        let remaining = self.cfg.boot_timeout.saturating_sub(started.elapsed());
        tokio::select! {
            ready = agent.wait_ready(remaining, nudge) => match ready {
                Ok(r) => Ok(r),
                Err(AgentError::Timeout(_)) => {
                    let msg = format!("the agent was not ready within {:?} ({} accel)", self.cfg.boot_timeout, self.cfg.accel);
                    Err(self.fail(Phase::Boot, msg, true))
                }
                Err(e) => Err(self.fail(Phase::Boot, e.to_string(), false)),
            },
            status = self.process.wait() => {
                let msg = format!("QEMU exited before the agent was ready ({}); the guest kernel died or powered off", describe_status(status));
                Err(self.fail(Phase::Boot, msg, false))
            }
        }
    }
}

fn describe_status(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

fn qemu_console_tail(paths: &StatePaths) -> String {
    crate::console::tail(&paths.console, CONSOLE_TAIL)
}

fn state_dir(cfg: &VmConfig) -> Result<tempfile::TempDir> {
    crate::rundirs::create(&cfg.name, cfg.state_parent.as_deref()).map_err(|e| {
        Error::guest(
            &cfg.name,
            Phase::Launch,
            format!("creating its state directory: {e}"),
        )
    })
}

/// Copies the console log to the artifacts directory, if one is configured; says where when the
/// guest failed.
fn keep_console(cfg: &VmConfig, paths: &StatePaths, failed: bool) {
    let Some(dir) = &cfg.artifacts else { return };
    if std::fs::create_dir_all(dir).is_ok() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dest = dir.join(format!("{}-{stamp}.console.log", cfg.name));
        if std::fs::copy(&paths.console, &dest).is_ok() && failed {
            eprintln!("{}: console log kept at {}", cfg.name, dest.display());
        }
    }
}
