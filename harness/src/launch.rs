//! Starting one QEMU for a configuration and waiting for its agent: a kernel booted from
//! scratch ([`cold`]), or a saved state restored ([`restore`]). What comes out is a running
//! [`Vm`]; which of the two to do is the caller's choice ([`crate::boot`] makes it).
//!
//! The order is fixed and one way: the configuration gives QEMU's arguments
//! ([`crate::qemu::args`]); QEMU connects to sockets we listen on (console, QMP, agent), so no
//! output is lost and no socket file is polled; then the agent says it is ready. Any step
//! that fails kills QEMU and keeps its console ([`Booting::fail`]).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lab_proto::Ready;
use tokio::net::UnixListener;

use crate::agent::{AgentClient, AgentError};
use crate::config::{InitrdLayer, MacAddr, VmConfig};
use crate::error::{Error, Phase, Result};
use crate::process::QemuProcess;
use crate::qemu::{self, Memory, StatePaths};
use crate::qmp::Qmp;
use crate::vm::{BootKind, Vm};

/// Boots the kernel from scratch. A boot that times out is retried up to
/// `cfg.policy.boot_attempts` times in all; a guest that dies (kernel panic, QEMU error) is not.
pub(crate) async fn cold(cfg: &VmConfig, memory: Memory<'_>) -> Result<Vm> {
    let attempts = cfg.policy.boot_attempts.max(1);
    let mut attempt = 1;
    loop {
        match launch(cfg, attempt, Start::Boot(memory)).await {
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

/// Starts QEMU on a saved state and its memory file and makes the guest `cfg`'s own: its
/// name, MACs, clock and fresh randomness ([`resume_as`]). One attempt: the caller falls back
/// to a cold boot.
pub(crate) async fn restore(cfg: &VmConfig, state: &Path, memory: &Path) -> Result<Vm> {
    let resume = resume_as(&cfg.name, &cfg.macs(), cfg.policy.seed);
    let mut vm = launch(
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
    let binary = binary_and_files(cfg).map_err(fatal)?;
    let state = state_dir(cfg).map_err(fatal)?;
    let paths = StatePaths::in_dir(state.path());
    let (args, incoming) = command_line(cfg, start, &paths).map_err(fatal)?;
    let launch_err =
        |e: std::io::Error| fatal(Error::guest(&cfg.name, Phase::Launch, e.to_string()));
    let sockets = Sockets::bind(&paths).map_err(launch_err)?;
    let started = Instant::now();
    let mut process = QemuProcess::spawn(&binary, &args, &paths.qemu_log).map_err(launch_err)?;
    let mut booting = Booting {
        cfg,
        paths: &paths,
        process: &mut process,
        started,
    };
    let (console, qmp, agent) = booting.connect(sockets).await?;
    let restored = incoming.is_some();
    let ready = booting.come_up(&qmp, &agent, incoming).await?;
    booting.check(&ready, restored)?;
    let boot_time = started.elapsed();
    tracing::info!(
        "{}: {} in {boot_time:.2?} (attempt {attempt}, {}, QEMU {})",
        cfg.name,
        if restored { "restored" } else { "booted" },
        cfg.machine.accel,
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
        console,
        failed: false,
        state: Some(state),
    })
}

/// The QEMU binary, once the kernel and image the guest boots are known to be there.
fn binary_and_files(cfg: &VmConfig) -> Result<std::path::PathBuf> {
    let binary = qemu::find_binary(cfg.machine.qemu.as_deref())?;
    for (what, path) in [("kernel", &cfg.boot.kernel), ("initrd", &cfg.boot.initrd)] {
        if !path.is_file() {
            return Err(Error::Missing {
                what: format!("{what} {}", path.display()),
                fix: "run `cargo xtask test` (or `cargo xtask provision`), which fetches the kernel and builds the image".into(),
            });
        }
    }
    Ok(binary)
}

/// Boots `cfg`'s kernel on its machine to `image`, a static `/init` that powers off at once
/// (`lab_rootfs::bare_image`), and says how long QEMU took from its start to its exit: the
/// least a boot of that kernel can take, which a cold boot is measured against. No agent,
/// disk or NIC; nothing of it is left behind.
pub async fn bare_boot(cfg: &VmConfig, image: &Path) -> Result<Duration> {
    let mut bare = cfg.clone();
    bare.boot.initrd = image.to_path_buf();
    bare.boot.layers.clear();
    bare.boot.modules_disk = None;
    // After `--`, init's arguments: `/init bare`.
    bare.boot.extra_cmdline = vec!["--".into(), "bare".into()];
    let binary = binary_and_files(&bare)?;
    let dir = state_dir(&bare)?;
    let paths = StatePaths::in_dir(dir.path());
    let started = Instant::now();
    let mut process = QemuProcess::spawn(&binary, &qemu::bare_args(&bare, &paths), &paths.qemu_log)
        .map_err(|e| Error::guest(&bare.name, Phase::Launch, format!("starting QEMU: {e}")))?;
    let within = bare.policy.boot_timeout;
    let status = tokio::time::timeout(within, process.wait()).await;
    let took = started.elapsed();
    // `-no-reboot` ends QEMU the same way for a power-off and a kernel panic (an image with no
    // /init, say): only the console tells them apart.
    let said = std::fs::read_to_string(&paths.console).unwrap_or_default();
    let why = match status {
        Ok(Ok(s)) if s.success() && said.contains("reboot: Power down") => return Ok(took),
        Ok(status) => {
            let log = std::fs::read_to_string(&paths.qemu_log).unwrap_or_default();
            format!(
                "the bare boot did not power off (QEMU: {}{})",
                describe_status(status),
                match log.trim() {
                    "" => String::new(),
                    log => format!(", {log}"),
                },
            )
        }
        Err(_) => format!("the bare boot did not power off within {within:?}"),
    };
    let tail = crate::console::tail(&paths.console, crate::console::ERROR_LINES);
    Err(Error::guest(&bare.name, Phase::Boot, why).with_console(Some(tail)))
}

/// A saved state to load, and what makes the restored guest its own.
type Incoming<'a> = Option<(&'a Path, lab_proto::Resume)>;

/// QEMU's arguments for `start`, with what it starts from put in place in `paths`.
fn command_line<'a>(
    cfg: &VmConfig,
    start: Start<'a>,
    paths: &StatePaths,
) -> Result<(Vec<std::ffi::OsString>, Incoming<'a>)> {
    match start {
        Start::Boot(memory) => {
            if let Memory::SavedTo(file) = memory {
                // Emptied, then sized: a retried boot starts on fresh memory, not on what
                // the last attempt left.
                let sized = std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)
                    .and_then(|f| {
                        f.set_len(0)?;
                        f.set_len(u64::from(cfg.machine.memory_mib) << 20)
                    });
                sized.map_err(|e| Error::io(file, e))?;
            }
            compose_initrd(cfg, paths)?;
            let mut args = qemu::args(cfg, paths);
            args.extend(qemu::memory_args(cfg, memory));
            Ok((args, None))
        }
        // The saved state and memory hold the guest, image and all: what QEMU loads before
        // the state replaces it is never read, so the layers need not be put together.
        Start::Restore {
            state,
            memory,
            resume,
        } => {
            let (kernel, initrd) = qemu::restore_stand_ins(&cfg.boot.kernel, &paths.dir)?;
            let mut bare = cfg.clone();
            bare.boot.layers.clear();
            (bare.boot.kernel, bare.boot.initrd) = (kernel, initrd);
            let mut args = qemu::args(&bare, paths);
            args.extend(qemu::memory_args(cfg, Memory::RestoredFrom(memory)));
            args.extend(qemu::incoming_args());
            Ok((args, Some((state, resume))))
        }
    }
}

/// The sockets QEMU connects to, bound before it starts.
struct Sockets {
    console: UnixListener,
    qmp: UnixListener,
    agent: UnixListener,
}

impl Sockets {
    fn bind(paths: &StatePaths) -> std::io::Result<Self> {
        Ok(Self {
            console: UnixListener::bind(&paths.console_sock)?,
            qmp: UnixListener::bind(&paths.qmp)?,
            agent: UnixListener::bind(&paths.agent)?,
        })
    }
}

/// What makes a restored guest (a lab guest, or an inner VM of a nest) the guest `hostname`
/// with `macs`: entropy from this host (or from `seed`, to repeat a run), this host's time.
/// Clones of one snapshot share its kernel's random state until they get this.
pub(crate) fn resume_as(hostname: &str, macs: &[MacAddr], seed: Option<u64>) -> lab_proto::Resume {
    let entropy = match seed {
        Some(seed) => seeded_entropy(seed, hostname),
        None => {
            let mut entropy = vec![0u8; 64];
            // /dev/urandom does not fail on Linux once the host is up; zeros would still be
            // refused by the guest if it did (fewer than 32 bytes read).
            let read =
                std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut entropy));
            if read.is_err() {
                entropy.clear();
            }
            entropy
        }
    };
    let unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    lab_proto::Resume {
        hostname: hostname.to_string(),
        macs: macs.iter().map(ToString::to_string).collect(),
        unix_nanos,
        entropy,
    }
}

/// 64 bytes that `seed` and `hostname` alone decide: the same for a rerun, another for each
/// host of a lab. Not secret (a seeded run is for repeating, and its ssh keys follow from it).
fn seeded_entropy(seed: u64, hostname: &str) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for b in hostname.bytes() {
        rng = fastrand::Rng::with_seed(rng.u64(..) ^ u64::from(b));
    }
    (0..64).map(|_| rng.u8(..)).collect()
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

/// Writes the image the guest boots, `initrd` with its layers appended, into its state directory.
fn compose_initrd(cfg: &VmConfig, paths: &StatePaths) -> Result<()> {
    if cfg.boot.layers.is_empty() {
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
    copy(&cfg.boot.initrd, &mut out)?;
    for layer in &cfg.boot.layers {
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
    /// When QEMU was started: the boot deadline counts from it.
    started: Instant,
}

impl Booting<'_> {
    /// Says at debug level when a step of the boot was done and the CPU QEMU had used by
    /// then: where a guest's start-up time and CPU go.
    fn step(&self, what: &str) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let elapsed = self.started.elapsed();
        let cpu = crate::host::cpu_seconds(self.process.pid()).unwrap_or_default();
        tracing::debug!(
            "{}: {what} at {elapsed:.0?}, QEMU's CPU {cpu:.2} s",
            self.cfg.name
        );
    }

    /// Takes QEMU's connections, in the order it makes them: the console (recorded from then
    /// on), QMP (negotiated), the agent's port.
    async fn connect(
        &mut self,
        sockets: Sockets,
    ) -> Result<(crate::console::Watch, Qmp, AgentClient), BootFailure> {
        let within = Duration::from_secs(10);
        let console = self.accept(&sockets.console, within).await?;
        let watch = console
            .into_std()
            .and_then(|c| {
                c.set_nonblocking(false)?;
                crate::console::record(c, &self.paths.console, crate::console::MAX_BYTES)
            })
            .map_err(|e| self.fail(Phase::Launch, format!("recording the console: {e}"), false))?;
        let qmp_stream = self.accept(&sockets.qmp, within).await?;
        let qmp = Qmp::connect(qmp_stream, within)
            .await
            .map_err(|e| self.fail(Phase::Qmp, e.to_string(), false))?;
        self.step("QMP connected");
        let agent = AgentClient::new(self.accept(&sockets.agent, within).await?);
        Ok((watch, qmp, agent))
    }

    /// Waits for the agent's ready message: after the kernel boots, or after the saved state
    /// is loaded and the restored guest made its own.
    async fn come_up(
        &mut self,
        qmp: &Qmp,
        agent: &AgentClient,
        incoming: Incoming<'_>,
    ) -> Result<Ready, BootFailure> {
        let Some((saved, resume)) = incoming else {
            return self.wait_ready(agent, Duration::from_secs(1)).await;
        };
        let within = self
            .cfg
            .policy
            .boot_timeout
            .saturating_sub(self.started.elapsed());
        qmp.load_state(saved, within)
            .await
            .map_err(|e| self.fail(Phase::Boot, e.to_string(), false))?;
        self.step("saved state loaded, guest running");
        // A restored agent does not announce itself again: ask often. Its first answer may as
        // well be to `resume`, sent at once rather than after the hello.
        let resumed = agent.call(resume, self.cfg.policy.command_timeout);
        let (ready, resumed) =
            tokio::join!(self.wait_ready(agent, Duration::from_millis(50)), resumed);
        let ready = ready?;
        if let Err(e) = resumed {
            return Err(self.fail(Phase::Boot, format!("resume: {e}"), false));
        }
        self.step("resumed as its own guest");
        Ok(ready)
    }

    /// Whether the guest that came up is the one asked for: its kernel, and (booted, not
    /// restored) its whole image.
    fn check(&mut self, ready: &Ready, restored: bool) -> Result<(), BootFailure> {
        let cfg = self.cfg;
        if let Some(want) = &cfg.boot.kernel_release {
            if &ready.kernel_release != want {
                let msg = format!(
                    "guest runs kernel {} but {want} was asked for",
                    ready.kernel_release
                );
                return Err(self.fail(Phase::Boot, msg, false));
            }
        }
        // The kernel unpacks the image and its layers into memory; when that runs out it says
        // so (at KERN_EMERG, past `quiet`) and boots on with files missing.
        if !restored {
            if let Some(why) = unpacking_failed(&self.paths.console) {
                let msg = format!(
                    "the image and its layers did not fit in {} MiB of memory (the kernel said \"{why}\", and files are missing in the guest): give the guest more memory (`--memory {}`, `Machine::memory_mib`)",
                    cfg.machine.memory_mib,
                    cfg.machine.memory_mib * 2
                );
                return Err(self.fail(Phase::Boot, msg, false));
            }
        }
        Ok(())
    }

    fn fail(&mut self, phase: Phase, message: String, retryable: bool) -> BootFailure {
        self.process.kill();
        let (cfg, log) = (self.cfg, &self.paths.console);
        crate::console::keep(&cfg.name, cfg.keep.artifacts.as_deref(), log, true);
        let error = Error::guest(&cfg.name, phase, message)
            .with_console(Some(crate::console::tail(log, crate::console::ERROR_LINES)));
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
        nudge: Duration,
    ) -> Result<Ready, BootFailure> {
        let remaining = self
            .cfg
            .policy
            .boot_timeout
            .saturating_sub(self.started.elapsed());
        tokio::select! {
            ready = agent.wait_ready(remaining, nudge) => match ready {
                Ok(r) => {
                    self.step(&format!("agent ready at the guest's uptime {:.2} s", r.uptime_secs));
                    Ok(r)
                }
                Err(AgentError::Timeout(_)) => {
                    let msg = format!("the agent was not ready within {:?} ({} accel)", self.cfg.policy.boot_timeout, self.cfg.machine.accel);
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

fn state_dir(cfg: &VmConfig) -> Result<tempfile::TempDir> {
    crate::rundirs::create(&cfg.name, cfg.keep.state_parent.as_deref()).map_err(|e| {
        Error::guest(
            &cfg.name,
            Phase::Launch,
            format!("creating its state directory: {e}"),
        )
    })
}
