//! VMs inside a lab guest, started the way libvirt starts a `type=direct` interface (the seed's
//! `virt-install --network type=direct,source=eth0,source.mode=bridge`): a macvtap on the guest's
//! `eth0`, and a QEMU whose NIC is that macvtap's character device passed as fd 3
//! (`-netdev tap,fd=3 ... 3<>/dev/tapN`), with the macvtap's MAC.
//!
//! The lab guest must boot the nest image ([`crate::Assets::nest_vm`]), which carries QEMU, the
//! inner kernel and image, and KVM. The inner VM runs the `lab` agent too; its port is a unix
//! socket inside the lab guest, which the guest's agent relays to (`lab call`). So an
//! [`InnerVm`] is driven like any [`Guest`], and goes when its host goes. QEMU's socket takes one
//! client at a time, so an inner VM's commands run one after another.
//!
//! Inner VMs restore rather than boot where they can. Before a nest guest's snapshot is taken
//! ([`crate::snapshot`]), [`save_template`] boots one inner VM and saves it in the guest's tmpfs,
//! at [`TEMPLATE_DIR`]: its memory as a file (QEMU's `x-ignore-shared`: the state holds only the
//! devices), the way the harness saves lab guests. Every clone restored from that snapshot then
//! holds the saved VM, and [`InnerVm::start`] starts each inner VM on a copy-on-write mapping
//! of its memory (`share=off`) with `-incoming`: ready many times sooner than a boot
//! (docs/measurements.md). The clone makes itself its own like a lab guest ([`lab_proto::Resume`]:
//! randomness, clock, hostname, MAC). Only KVM VMs of the template's memory and kernel command
//! line are saved and restored; anything else boots, as does everything when the restore fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lab_proto::{
    Call, Hello, Op, Ready, Refused, Reply, Request, Response, RunOutput, MAX_RESPONSE_BYTES,
};

use crate::accel::Accel;
use crate::config::MacAddr;
use crate::error::{Error, Phase, Result};
use crate::guest::Guest;
use crate::vm::{Cmd, Vm};

/// Paths inside a nest guest, where `lab_rootfs::nest` puts the files: one definition.
pub use lab_rootfs::nest::{INNER_INITRD, INNER_KERNEL, QEMU_WRAPPER as QEMU};
/// The agent binary inside every lab guest.
const AGENT: &str = "/init";
/// A shell command printing how many QEMU processes run in a lab guest. The guest has no
/// `pgrep` (busybox-static lacks it); the bracket keeps grep and the shell from matching
/// their own command lines.
pub const COUNT_QEMU: &str = "grep -l 'qemu-syste[m]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l";
/// Lines of an inner console an error shows.
const CONSOLE_TAIL: usize = 30;
/// Where a nest guest keeps its saved inner VM: `state` (device state) and `memory`.
pub const TEMPLATE_DIR: &str = "/run/nest-template";
/// The memory of the saved inner VM; inner VMs of another size boot.
const TEMPLATE_MEMORY_MIB: u32 = 128;
/// How long saving the template's device state may take.
const SAVE_WITHIN: Duration = Duration::from_secs(60);

/// Which accelerator the inner QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerAccel {
    /// KVM when the lab guest has `/dev/kvm`, else TCG.
    Auto,
    Force(Accel),
}

/// An inner VM before it starts.
#[derive(Debug, Clone)]
pub struct InnerSpec {
    pub name: String,
    /// The macvtap's name on the lab guest (`macvtap0`, as libvirt names them).
    pub interface: String,
    /// The device the macvtap is made on (`source=` of virt-install): `eth0` unless told, or
    /// a bond, a VLAN...
    pub source: String,
    /// The macvtap's mode (virt-install's default is VEPA; ours is bridge).
    pub mode: crate::link::MacvtapMode,
    pub mac: MacAddr,
    pub memory_mib: u32,
    pub accel: InnerAccel,
    pub boot_timeout: Duration,
    /// With [`InnerAccel::Auto`], how long a KVM boot may take before TCG is tried instead: a
    /// nested KVM that hangs guests must not hang the run.
    pub kvm_boot_limit: Duration,
    pub command_timeout: Duration,
    /// Appended to the inner kernel's command line.
    pub extra_cmdline: Vec<String>,
    /// Start from the nest guest's saved VM ([`TEMPLATE_DIR`]) when it has one that fits;
    /// `false` always boots the kernel.
    pub restore: bool,
}

impl InnerSpec {
    pub fn new(name: &str, interface: &str) -> Self {
        Self {
            name: name.to_string(),
            interface: interface.to_string(),
            source: "eth0".into(),
            mode: crate::link::MacvtapMode::Bridge,
            mac: MacAddr::unique(),
            memory_mib: 128,
            accel: InnerAccel::Auto,
            boot_timeout: Duration::from_secs(180),
            kvm_boot_limit: Duration::from_secs(90),
            command_timeout: Duration::from_secs(60),
            extra_cmdline: Vec::new(),
            restore: true,
        }
    }

    pub fn mode(mut self, mode: crate::link::MacvtapMode) -> Self {
        self.mode = mode;
        self
    }

    /// Makes the macvtap on `source` instead of `eth0` (`--source bond0`).
    pub fn source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }
}

/// One row of [`domiflist`], as `virsh domiflist` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub interface: String,
    pub kind: String,
    pub source: String,
    pub model: String,
    pub mac: String,
}

/// A running VM inside the lab guest `host`.
#[derive(Debug)]
pub struct InnerVm<'h> {
    host: &'h Vm,
    spec: InnerSpec,
    accel: Accel,
    dir: String,
    boot_time: Duration,
    ready: Ready,
    next_id: AtomicU64,
    fallback: Option<String>,
    restored: bool,
    restore_failure: Option<String>,
}

/// How an inner QEMU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Booting the inner kernel.
    Boot,
    /// Booting, with its memory in [`TEMPLATE_DIR`] to be saved ([`save_template`]).
    BootToSave,
    /// On a copy-on-write mapping of the saved VM's memory, loading its state.
    Restore,
}

/// Whether `spec` under `accel` is the VM the nest saved: KVM, its memory, no kernel arguments
/// of its own (the saved VM booted with none).
fn fits_template(spec: &InnerSpec, accel: Accel) -> bool {
    spec.restore
        && accel == Accel::Kvm
        && spec.memory_mib == TEMPLATE_MEMORY_MIB
        && spec.extra_cmdline.is_empty()
}

impl<'h> InnerVm<'h> {
    /// Creates the macvtap, starts QEMU on it and waits for the inner agent: restored from the
    /// nest's saved VM when there is one that fits ([`TEMPLATE_DIR`]), else booted. A restore
    /// that fails is followed by a boot ([`InnerVm::restore_failure`] says why). With
    /// [`InnerAccel::Auto`] a KVM boot that does not finish in time (some nested KVMs hang
    /// guests) is retried once under TCG; [`InnerVm::fallback`] says so.
    pub async fn start(host: &'h Vm, spec: InnerSpec) -> Result<InnerVm<'h>> {
        let found = host
            .succeed(format!(
                "! test -w /dev/kvm || echo kvm; ! test -s {TEMPLATE_DIR}/state || echo saved"
            ))
            .await?;
        let accel = match spec.accel {
            InnerAccel::Force(a) => a,
            InnerAccel::Auto if found.contains("kvm") => Accel::Kvm,
            InnerAccel::Auto => Accel::Tcg,
        };
        let mut restore_failure = None;
        if found.contains("saved") && fits_template(&spec, accel) {
            match Self::start_with(host, spec.clone(), accel, spec.boot_timeout, Start::Restore)
                .await
            {
                Ok(vm) => return Ok(vm),
                Err(f) => {
                    tracing::warn!(
                        "{}: restoring the nest's saved VM failed, booting it: {}",
                        spec.name,
                        f.error
                    );
                    restore_failure = Some(f.error.to_string());
                }
            }
        }
        let mut vm = Self::boot(host, spec, accel).await?;
        vm.restore_failure = restore_failure;
        Ok(vm)
    }

    /// Boots the inner kernel, under `accel`, or under TCG when `Auto` chose KVM and KVM did
    /// not boot it in time.
    async fn boot(host: &'h Vm, spec: InnerSpec, accel: Accel) -> Result<InnerVm<'h>> {
        if spec.accel != InnerAccel::Auto || accel == Accel::Tcg {
            return Self::start_with(host, spec.clone(), accel, spec.boot_timeout, Start::Boot)
                .await
                .map_err(|f| f.error);
        }
        let limit = spec.kvm_boot_limit.min(spec.boot_timeout);
        match Self::start_with(host, spec.clone(), Accel::Kvm, limit, Start::Boot).await {
            Err(BootFailure {
                timed_out: true,
                error,
            }) => {
                tracing::warn!("{}: no KVM boot in time, trying TCG: {error}", spec.name);
                let mut vm = Self::start_with(
                    host,
                    spec.clone(),
                    Accel::Tcg,
                    spec.boot_timeout,
                    Start::Boot,
                )
                .await
                .map_err(|f| f.error)?;
                vm.fallback = Some(format!("KVM did not boot it within {limit:?}"));
                Ok(vm)
            }
            other => other.map_err(|f| f.error),
        }
    }

    async fn start_with(
        host: &'h Vm,
        spec: InnerSpec,
        accel: Accel,
        boot_timeout: Duration,
        start: Start,
    ) -> Result<InnerVm<'h>, BootFailure> {
        let started = Instant::now();
        let fail = |error| BootFailure {
            error,
            timed_out: false,
        };
        let dir = format!("/run/nest/{}", spec.name);
        let tsc_khz = match (accel, host.config().machine.tsc_khz) {
            (Accel::Tcg, None) => guest_tsc_khz(host).await,
            (_, known) => known,
        };
        let launch = Cmd::script(launch_script(&spec, accel, tsc_khz, &dir, start))
            .timeout(Duration::from_secs(60));
        let out = host.run(launch).await.map_err(fail)?;
        if !out.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(fail(Error::guest(
                &spec.name,
                Phase::Launch,
                format!("starting it in {}: {}", host.name(), err.trim()),
            )));
        }
        let mut vm = InnerVm {
            host,
            spec,
            accel,
            dir,
            boot_time: Duration::ZERO,
            ready: Ready::default(),
            next_id: AtomicU64::new(1),
            fallback: None,
            restored: start == Start::Restore,
            restore_failure: None,
        };
        let ready = match vm.wait_ready(started, boot_timeout).await {
            Ok(ready) if start == Start::Restore => vm.resume().await.map(|()| ready).map_err(fail),
            other => other,
        };
        match ready {
            Ok(ready) => vm.ready = ready,
            Err(failure) => {
                // The error holds the console tail already; leave nothing else behind.
                let _ = vm.stop().await;
                return Err(failure);
            }
        }
        vm.boot_time = started.elapsed();
        tracing::info!(
            "{}: inner VM on {} {} in {:.2?} ({accel})",
            vm.spec.name,
            host.name(),
            if vm.restored { "restored" } else { "ready" },
            vm.boot_time
        );
        Ok(vm)
    }

    /// Makes a VM restored from the saved one its own: fresh randomness, the time, its name
    /// and its MAC (the saved VM's until now; QEMU's NIC takes the new one from the guest).
    async fn resume(&self) -> Result<()> {
        let resume = crate::launch::resume_as(&self.spec.name, &[self.spec.mac], None);
        match self.call(resume, self.spec.command_timeout).await {
            Ok(()) => Ok(()),
            Err(InnerCallError::Failed(e)) => Err(e),
            Err(InnerCallError::Refused(why)) => {
                Err(self.error(Phase::Boot, format!("resume: {why}")).await)
            }
            Err(InnerCallError::NotThere | InnerCallError::Deadline) => {
                Err(self.error(Phase::Boot, "resume: no answer".into()).await)
            }
        }
    }

    /// Why the VM runs under TCG although KVM was there, if it does.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn host(&self) -> &Vm {
        self.host
    }

    /// Whether it was restored from the nest's saved VM rather than booted.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// Why it was booted although the nest had a saved VM for it, if a restore failed.
    pub fn restore_failure(&self) -> Option<&str> {
        self.restore_failure.as_deref()
    }

    pub fn mac(&self) -> MacAddr {
        self.spec.mac
    }

    /// The accelerator the inner QEMU was started with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// From the macvtap's creation to the inner agent's ready message.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn ready_info(&self) -> &Ready {
        &self.ready
    }

    /// The inner VM's serial console so far.
    pub async fn console_log(&self) -> String {
        let bytes = self
            .host
            .read_file(&format!("{}/console.log", self.dir))
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Stops the VM as `virsh destroy` does (SIGTERM to its QEMU, SIGKILL if it lingers) and
    /// removes its macvtap, as libvirt does when the domain goes.
    pub async fn stop(self) -> Result<()> {
        let script = format!(
            "# QEMU removes its pidfile when it exits: no pidfile, nothing to kill.
             if pid=$(cat {dir}/qemu.pid 2>/dev/null); then
               kill $pid 2>/dev/null
               for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
               kill -9 $pid 2>/dev/null || true
             fi
             ! ip link show {tap} >/dev/null 2>&1 || ip link delete {tap}
             rm -rf {dir}",
            dir = self.dir,
            tap = self.spec.interface
        );
        self.host.succeed(script).await.map(drop)
    }

    /// Polls the inner agent through the host's until it answers `hello`, failing early (with
    /// the inner console) if its QEMU dies.
    async fn wait_ready(&self, started: Instant, within: Duration) -> Result<Ready, BootFailure> {
        let fail = |error| BootFailure {
            error,
            timed_out: false,
        };
        let deadline = started + within;
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = crate::wait::try_until(left, Duration::from_millis(500), || async {
            let ask = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            match self.call(Hello, ask).await {
                Ok(r) => return Ok(Some(r)),
                Err(InnerCallError::Refused(why)) => {
                    let msg = format!("answered hello with {why}");
                    return Err(fail(self.error(Phase::Boot, msg).await));
                }
                Err(InnerCallError::NotThere | InnerCallError::Deadline) => {}
                Err(InnerCallError::Failed(e)) => return Err(fail(e)),
            }
            let alive = self
                .host
                .run(format!("kill -0 $(cat {}/qemu.pid)", self.dir))
                .await
                .map_err(fail)?;
            if alive.success() {
                Ok(None)
            } else {
                let msg = "its QEMU exited before the agent was ready".to_string();
                Err(fail(self.error(Phase::Boot, msg).await))
            }
        })
        .await?;
        match ready {
            Some(ready) => Ok(ready),
            None => {
                let msg = format!(
                    "the agent was not ready within {within:?} ({} inside {})",
                    self.accel,
                    self.host.name()
                );
                Err(BootFailure {
                    error: self.error(Phase::Boot, msg).await,
                    timed_out: true,
                })
            }
        }
    }

    /// One request to the inner agent, relayed by the host's (`lab call`).
    /// Sends `call` to the inner agent, relayed by the host's agent, and returns its answer.
    async fn call<C: Call>(
        &self,
        call: C,
        within: Duration,
    ) -> std::result::Result<C::Ok, InnerCallError> {
        let reply = self.relay(call.into(), within).await?;
        C::answer(reply).map_err(InnerCallError::Refused)
    }

    async fn relay(&self, op: Op, within: Duration) -> std::result::Result<Reply, InnerCallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = lab_proto::encode(&Request { id, op });
        let relay = Cmd::argv([
            AGENT.to_string(),
            "call".into(),
            format!("{}/agent.sock", self.dir),
            within.as_secs().max(1).to_string(),
        ])
        .stdin(request)
        .timeout(within + Duration::from_secs(10));
        let out = self.host.run(relay).await.map_err(InnerCallError::Failed)?;
        match out.code {
            Some(0) => {}
            Some(3) => return Err(InnerCallError::NotThere),
            Some(4) => return Err(InnerCallError::Deadline),
            _ => {
                let msg = format!(
                    "relaying to it failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return Err(InnerCallError::Failed(Error::guest(
                    &self.spec.name,
                    Phase::Command,
                    msg,
                )));
            }
        }
        let line = out.stdout.trim_ascii();
        let response: Response = lab_proto::decode(line, MAX_RESPONSE_BYTES).map_err(|e| {
            InnerCallError::Failed(Error::guest(
                &self.spec.name,
                Phase::Command,
                format!("bad response: {e}"),
            ))
        })?;
        Ok(response.reply)
    }

    async fn error(&self, phase: Phase, message: String) -> Error {
        let tail = crate::console::tail_of(&self.console_log().await, CONSOLE_TAIL);
        Error::guest(
            &format!("{} (in {})", self.spec.name, self.host.name()),
            phase,
            message,
        )
        .with_console(Some(tail))
    }
}

/// A failed start, and whether it failed by running out of time (worth another accelerator).
struct BootFailure {
    error: Error,
    timed_out: bool,
}

enum InnerCallError {
    /// Nobody answered at the socket: the VM is not up yet, or gone.
    NotThere,
    Deadline,
    /// The agent answered, but not with what was asked for: its error, or another reply.
    Refused(Refused),
    Failed(Error),
}

impl Guest for InnerVm<'_> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn command_timeout(&self) -> Duration {
        self.spec.command_timeout
    }

    async fn run_cmd(&self, cmd: Cmd) -> Result<RunOutput> {
        let within = cmd.spec().timeout + Duration::from_secs(10);
        match self.call(cmd.spec().clone(), within).await {
            Ok(out) => Ok(out),
            Err(InnerCallError::Refused(why)) => Err(self
                .error(Phase::Command, format!("`{}`: {why}", cmd.describe()))
                .await),
            Err(InnerCallError::Failed(e)) => Err(e),
            Err(InnerCallError::NotThere) => Err(self
                .error(
                    Phase::Command,
                    format!("`{}`: the VM is gone", cmd.describe()),
                )
                .await),
            Err(InnerCallError::Deadline) => Err(self
                .error(
                    Phase::Command,
                    format!("`{}`: no answer within {within:?}", cmd.describe()),
                )
                .await),
        }
    }
}

/// The TSC rate the lab guest's kernel found, in kHz, from its boot log. An inner TCG guest reads
/// the lab guest's TSC and, like a lab guest under TCG, must be told its rate or risk hanging in
/// calibration; the harness knows it only when it measured it itself (the lab guest under TCG).
pub async fn guest_tsc_khz(host: &Vm) -> Option<u32> {
    let out = host.run(r"dmesg | sed -n 's/.*tsc: Detected \([0-9]*\)\.\([0-9][0-9][0-9]\) MHz.*/\1\2/p' | head -1").await.ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The shell script that creates the macvtap and starts QEMU on it, as libvirt would. Every
/// inner QEMU has a QMP socket beside its agent's (`lab qmp` talks to it); a restored one then
/// gets the saved state through it.
fn launch_script(
    spec: &InnerSpec,
    accel: Accel,
    tsc_khz: Option<u32>,
    dir: &str,
    start: Start,
) -> String {
    let cmdline = crate::qemu::cmdline(&spec.name, accel, tsc_khz, &spec.extra_cmdline);
    let accel_args = match accel {
        // Whatever CPU the lab guest has (SVM under TCG's `-cpu max`), the inner one gets.
        Accel::Kvm => "-accel kvm -cpu host",
        // A small translation cache (QEMU's default is up to 1 GiB), so that the inner QEMU,
        // its guest and the saved inner VM's pages stay within the memory the nest guest's
        // commands may use.
        Accel::Tcg => "-accel tcg,tb-size=64",
    };
    let memory = |share| {
        format!(
            "-object memory-backend-file,id=ram,size={}M,mem-path={TEMPLATE_DIR}/memory,share={share} -machine memory-backend=ram",
            spec.memory_mib
        )
    };
    let (memory_args, incoming_args, load) = match start {
        Start::Boot => (String::new(), "", String::new()),
        Start::BootToSave => (memory("on"), "", String::new()),
        // The capability must match the saving QEMU's, and QEMU 7.2 takes it only over QMP.
        Start::Restore => (
            memory("off"),
            "-incoming defer",
            format!(
                r#"{q}
q migrate-set-capabilities '{IGNORE_SHARED}' >/dev/null && q migrate-incoming '{{"uri":"exec:cat {TEMPLATE_DIR}/state"}}' >/dev/null || {{ kill $(cat {dir}/qemu.pid); ip link delete {tap}; exit 1; }}
"#,
                q = qmp_function(dir),
                tap = spec.interface
            ),
        ),
    };
    format!(
        r#"set -e
mkdir -p {dir}{template_dir}
ip link add link {source} name {tap} address {mac} type macvtap mode {mode}
ip link set {tap} up
idx=$(cat /sys/class/net/{tap}/ifindex)
# The tap's character device appears once the kernel has registered it (devtmpfs, no udev).
for i in $(seq 50); do [ -c /dev/tap$idx ] && break; sleep 0.1; done
{qemu} -name {name},process=qemu-{name} -M {machine} {accel_args} -m {mem} -smp 1 {memory_args} \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel {kernel} -initrd {initrd} -append '{cmdline}' \
  -chardev file,id=console,path={dir}/console.log -serial chardev:console \
  -device virtio-serial-device,max_ports=2 \
  -chardev socket,id=agent,path={dir}/agent.sock,server=on,wait=off \
  -device virtserialport,chardev=agent,name={port} \
  -qmp unix:{dir}/qmp.sock,server=on,wait=off \
  -netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac={mac} {incoming_args} \
  -pidfile {dir}/qemu.pid -daemonize 3<>/dev/tap$idx 2>{dir}/qemu.log || {{ cat {dir}/qemu.log >&2; ip link delete {tap}; exit 1; }}
{load}"#,
        template_dir = if start == Start::BootToSave {
            format!(" {TEMPLATE_DIR}")
        } else {
            String::new()
        },
        tap = spec.interface,
        source = spec.source,
        mac = spec.mac,
        mode = spec.mode,
        qemu = QEMU,
        name = spec.name,
        machine = crate::qemu::MACHINE,
        mem = spec.memory_mib,
        kernel = INNER_KERNEL,
        initrd = INNER_INITRD,
        port = lab_proto::PORT_NAME,
    )
}

/// QMP arguments of `migrate-set-capabilities` that leave memory out of a saved state.
const IGNORE_SHARED: &str = r#"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#;

/// Boots an inner VM in `host` and saves it at [`TEMPLATE_DIR`], for the snapshot of `host`
/// about to be taken (see the module's documentation). Only a KVM VM is saved: TCG inside TCG
/// takes a minute or more to boot, which no snapshot should wait for. On failure nothing is
/// left at [`TEMPLATE_DIR`], and inner VMs boot.
pub async fn save_template(host: &Vm) -> Result<()> {
    if !host.run("test -w /dev/kvm").await?.success() {
        return Err(Error::guest(
            host.name(),
            Phase::Setup,
            "no writable /dev/kvm: inner VMs would run under TCG, which is not saved",
        ));
    }
    let mut spec = InnerSpec::new("template", "macvtap-tpl");
    spec.memory_mib = TEMPLATE_MEMORY_MIB;
    let limit = spec.kvm_boot_limit;
    let vm = match InnerVm::start_with(host, spec, Accel::Kvm, limit, Start::BootToSave).await {
        Ok(vm) => vm,
        Err(f) => {
            let _ = host.run(format!("rm -rf {TEMPLATE_DIR}")).await;
            return Err(f.error);
        }
    };
    // What the kernel dropped reads as zero pages, which the snapshot's memory file leaves out.
    let _ = vm.run("sync; echo 3 > /proc/sys/vm/drop_caches").await;
    let save = Cmd::script(save_script(&vm.dir)).timeout(SAVE_WITHIN + Duration::from_secs(10));
    let saved = host.run(save).await;
    let stopped = vm.stop().await;
    let result = match saved {
        Ok(out) if out.success() => stopped,
        Ok(out) => Err(Error::guest(
            host.name(),
            Phase::Setup,
            format!(
                "saving the inner VM failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = host.run(format!("rm -rf {TEMPLATE_DIR}")).await;
    }
    result
}

/// Saves the running VM whose QMP socket is in `dir`: device state only (its memory is the file
/// it runs on), written aside and renamed into place once QEMU says the save completed. The VM
/// is not stopped first, so the state says "running" and a restore starts it by itself.
fn save_script(dir: &str) -> String {
    let polls = SAVE_WITHIN.as_millis() / 100;
    format!(
        r#"set -e
{q}
q migrate-set-capabilities '{IGNORE_SHARED}' >/dev/null
q migrate '{{"uri":"exec:cat > {TEMPLATE_DIR}/state.partial"}}' >/dev/null
for i in $(seq {polls}); do
  status=$(q query-migrate)
  case $status in
    *'"completed"'*) mv {TEMPLATE_DIR}/state.partial {TEMPLATE_DIR}/state; exit 0 ;;
    *'"failed"'*|*'"cancelled"'*) echo "$status" >&2; exit 1 ;;
  esac
  sleep 0.1
done
echo "the save did not complete within {secs} s" >&2
exit 1
"#,
        q = qmp_function(dir),
        secs = SAVE_WITHIN.as_secs()
    )
}

/// A shell function `q COMMAND [ARGUMENTS]`: one QMP command (`lab qmp`) to the inner QEMU
/// whose state directory is `dir`.
fn qmp_function(dir: &str) -> String {
    format!(r#"q() {{ {AGENT} qmp {dir}/qmp.sock "$@"; }}"#)
}

/// `virsh domiflist` for the given VMs of one host, read back from the host's kernel: each
/// VM's macvtap, its parent (`source`), and the MAC the macvtap carries.
pub async fn domiflist(vms: &[&InnerVm<'_>]) -> Result<Vec<Interface>> {
    let mut rows = Vec::new();
    for vm in vms {
        let json = vm
            .host
            .succeed(format!("ip -d -j link show {}", vm.spec.interface))
            .await?;
        let link: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
            Error::guest(
                vm.host.name(),
                Phase::Command,
                format!("`ip -j` printed no JSON: {e}"),
            )
        })?;
        let first = &link[0];
        let kind = first["linkinfo"]["info_kind"].as_str().unwrap_or_default();
        rows.push(Interface {
            interface: vm.spec.interface.clone(),
            kind: if kind == "macvtap" {
                "direct".into()
            } else {
                kind.to_string()
            },
            source: first["link"].as_str().unwrap_or_default().to_string(),
            model: "virtio".into(),
            mac: first["address"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(rows)
}

/// `rows` formatted as `virsh domiflist` prints them.
pub fn format_domiflist(rows: &[Interface]) -> String {
    let mut out = format!(
        " {:<11} {:<8} {:<8} {:<8} {}\n",
        "Interface", "Type", "Source", "Model", "MAC"
    );
    out.push_str(&format!("{}\n", "-".repeat(61)));
    for r in rows {
        out.push_str(&format!(
            " {:<11} {:<8} {:<8} {:<8} {}\n",
            r.interface, r.kind, r.source, r.model, r.mac
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_passes_the_macvtap_as_fd_3_with_its_own_mac() {
        let mut spec = InnerSpec::new("vm1", "macvtap0").mode(crate::link::MacvtapMode::Vepa);
        spec.mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let s = launch_script(&spec, Accel::Kvm, None, "/run/nest/vm1", Start::Boot);
        assert!(s.contains("ip link add link eth0 name macvtap0 address 52:54:00:00:00:01 type macvtap mode vepa"), "{s}");
        assert!(s.contains("-netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=52:54:00:00:00:01"), "{s}");
        assert!(s.contains("3<>/dev/tap$idx"), "{s}");
        assert!(s.contains("-accel kvm"), "{s}");
        assert!(s.contains("lab.hostname=vm1"), "{s}");
    }

    #[test]
    fn domiflist_looks_like_virsh() {
        let row = Interface {
            interface: "macvtap0".into(),
            kind: "direct".into(),
            source: "eth0".into(),
            model: "virtio".into(),
            mac: "52:54:00:00:00:01".into(),
        };
        let text = format_domiflist(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Interface", "Type", "Source", "Model", "MAC"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["macvtap0", "direct", "eth0", "virtio", "52:54:00:00:00:01"]
        );
    }
}
