//! Bringing a guest up: the one place that decides how. [`Vm::boot`] checks the configuration,
//! restores the guest from its shape's snapshot when the store has one, else boots it cold and
//! saves the snapshot for the next guest, then loads its modules.
//!
//! Architecture invariant: this module only calls down, to [`crate::launch`] (start QEMU),
//! [`crate::snapshot`] (the store) and [`crate::nest`] (the inner VM a nest guest saves before
//! its snapshot is taken); none of them knows this one.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{InitrdLayer, VmConfig};
use crate::error::{Error, Phase, Result};
use crate::qemu::Memory;
use crate::snapshot::{self, Found, Snapshot, Taking};
use crate::vm::{BootKind, Vm};

/// Largest user directory (an [`InitrdLayer::Bytes`]) sent to a restored guest to unpack; a
/// bigger one boots cold with it in its image. Requests are capped at 32 MiB of base64.
const MAX_UNPACK: usize = 16 << 20;

impl Vm {
    /// Boots a guest and waits for its agent: from its shape's snapshot when there is one
    /// (`cfg.snapshots` names the store; `None` boots cold), else its kernel from scratch.
    /// Then loads `cfg.boot.modprobe` and `cfg.boot.insmod` ([`Phase::Setup`]).
    pub async fn boot(cfg: VmConfig) -> Result<Vm> {
        cfg.validate()?;
        let vm = match &cfg.snapshots {
            Some(store) => from_store(&cfg, store).await?,
            None => crate::launch::cold(&cfg, Memory::Anonymous).await?,
        };
        count(&vm.boot_kind);
        setup(&vm).await?;
        Ok(vm)
    }
}

/// Loads the modules the configuration asks for: the kernel's own, then those built from a
/// user's source. A failure keeps the console, like a failed boot (dropping the guest on the
/// way out).
async fn setup(vm: &Vm) -> Result<()> {
    let modules = &vm.cfg.boot.modprobe;
    if !modules.is_empty() {
        let argv = ["modprobe", "-a"].into_iter().map(String::from);
        load(vm, argv.chain(modules.iter().cloned()).collect()).await?;
    }
    for ko in &vm.cfg.boot.insmod {
        load(vm, vec!["insmod".into(), ko.clone()]).await?;
    }
    Ok(())
}

async fn load(vm: &Vm, argv: Vec<String>) -> Result<()> {
    let shown = argv.join(" ");
    let out = vm.run(crate::cmd::Cmd::argv(argv)).await?;
    if !out.success() {
        vm.keep_console(true);
        let message = format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(vm.error(Phase::Setup, message));
    }
    Ok(())
}

/// Boots `cfg` from its shape's snapshot in `store`, or cold (taking the snapshot) when there
/// is none or it cannot be used. A user's directory is not part of the shape: it differs from
/// run to run, so it is unpacked into the guest after the restore rather than snapshotted.
async fn from_store(cfg: &VmConfig, store: &Path) -> Result<Vm> {
    let (shape, archives) = without_archives(cfg);
    if archives.iter().map(|a| a.len()).sum::<usize>() > MAX_UNPACK {
        return crate::launch::cold(cfg, Memory::Anonymous).await;
    }
    let mut vm = boot_shape(&shape, store).await?;
    for archive in archives {
        vm.unpack(&archive).await?;
    }
    vm.cfg.boot.layers.clone_from(&cfg.boot.layers);
    Ok(vm)
}

/// `cfg` without its in-memory layers, and those layers.
fn without_archives(cfg: &VmConfig) -> (VmConfig, Vec<Arc<Vec<u8>>>) {
    let mut shape = cfg.clone();
    let mut archives = Vec::new();
    shape.boot.layers.retain(|layer| match layer {
        InitrdLayer::File(_) => true,
        InitrdLayer::Bytes(bytes) => {
            archives.push(Arc::clone(bytes));
            false
        }
    });
    (shape, archives)
}

async fn boot_shape(cfg: &VmConfig, store: &Path) -> Result<Vm> {
    let key = snapshot::key(cfg)?;
    let dir = snapshot::dir_of(store, &key);
    let mut fallback: Option<String> = None;
    let mut failed_id = None;
    // Without the lock first: once a shape's snapshot exists, guests restore side by side.
    match snapshot::find(&dir, &key) {
        Found::Ready(snap) => match restore(cfg, &snap).await {
            Ok(vm) => return Ok(vm),
            Err(reason) => {
                fallback = Some(reason.to_string());
                failed_id = Some(snap.meta.id);
            }
        },
        Found::Broken(reason) => fallback = Some(reason),
        Found::Missing => {}
    }
    let _lock = snapshot::lock(store, &key).await?;
    match snapshot::find(&dir, &key) {
        // Taken by another guest while we waited for the lock, or replaced since ours failed.
        Found::Ready(snap) if failed_id.as_ref() != Some(&snap.meta.id) => {
            match restore(cfg, &snap).await {
                Ok(vm) => return Ok(vm),
                Err(reason) => {
                    fallback = Some(reason.to_string());
                    snapshot::discard(&dir);
                }
            }
        }
        Found::Ready(_) => snapshot::discard(&dir),
        Found::Broken(reason) => {
            fallback = Some(reason);
            snapshot::discard(&dir);
        }
        Found::Missing => {}
    }
    if let Some(reason) = &fallback {
        tracing::warn!(
            "{}: {reason}; booting cold and taking the snapshot again",
            cfg.name
        );
    }
    let mut vm = if let Some(why) = snapshot::no_room(store, cfg.machine.memory_mib) {
        tracing::warn!("{}: no snapshot taken: {why}; booting cold", cfg.name);
        crate::launch::cold(cfg, Memory::Anonymous).await?
    } else {
        match take(cfg, store, &key).await? {
            Taken::Snapshot(snap) => match restore(cfg, &snap).await {
                Ok(vm) => vm,
                Err(reason) => {
                    tracing::warn!(
                        "{}: {reason}, right after taking it; removed, booting cold",
                        cfg.name
                    );
                    snapshot::discard(&dir);
                    crate::launch::cold(cfg, Memory::Anonymous).await?
                }
            },
            Taken::Not(vm) => *vm,
        }
    };
    vm.boot_kind = fallback.map_or(BootKind::Cold, BootKind::Fallback);
    Ok(vm)
}

/// A snapshot that did not restore.
#[derive(Debug, thiserror::Error)]
#[error("restoring snapshot {dir} failed: {error}")]
struct RestoreFailed {
    dir: String,
    error: Error,
}

async fn restore(cfg: &VmConfig, snap: &Snapshot) -> Result<Vm, RestoreFailed> {
    let mut vm = crate::launch::restore(cfg, &snap.state(), &snap.memory())
        .await
        .map_err(|error| RestoreFailed {
            dir: snap.dir.display().to_string(),
            error,
        })?;
    vm.boot_kind = BootKind::Restored;
    snapshot::mark_used(snap);
    Ok(vm)
}

/// What [`take`] ended with.
enum Taken {
    /// The shape's snapshot, in place: the caller restores its guest from it.
    Snapshot(Snapshot),
    /// No snapshot (why was logged), but a guest booted cold all the same.
    Not(Box<Vm>),
}

/// Boots `cfg` cold with its memory in a memfd, runs the hook of a nest guest (an inner VM
/// saved in it), saves it as the snapshot of its shape and publishes it. Only a failed cold
/// boot is an error: a guest whose snapshot could not be saved carries on as a cold-booted one.
async fn take(cfg: &VmConfig, store: &Path, key: &str) -> Result<Taken> {
    let taking = Taking::begin(store, key, &cfg.name)?;
    let vm = crate::launch::cold(cfg, Memory::SavedTo(taking.memory())).await?;
    if cfg.boot.inner_template {
        save_inner_vm(&vm).await;
    }
    let started = std::time::Instant::now();
    if let Err(e) = taking.save(&vm).await {
        tracing::warn!("{}: no snapshot taken: {e}", cfg.name);
        // It runs on, on the memfd QEMU keeps mapped.
        return match vm.qmp().cont().await {
            Ok(()) => Ok(Taken::Not(Box::new(vm))),
            Err(e) => Err(vm.error(Phase::Qmp, format!("cont after a failed save: {e}"))),
        };
    }
    tracing::debug!("{}: state saved at {:.0?}", cfg.name, started.elapsed());
    let taken_from = vm.name().to_string();
    let qemu = vm.qmp().version.clone();
    vm.quit().await;
    match taking.publish(store, taken_from, qemu) {
        Ok(snap) => {
            let on_disk = snapshot::disk_usage(&snap.memory()) + snap.meta.size;
            tracing::info!(
                "{}: snapshot of its shape taken ({:.0} MiB on disk) in {:.2?}: {}",
                cfg.name,
                on_disk as f64 / 1048576.0,
                started.elapsed(),
                snap.dir.display()
            );
            Ok(Taken::Snapshot(snap))
        }
        Err(e) => {
            tracing::warn!("{}: no snapshot taken: {e}; booting cold", cfg.name);
            let vm = crate::launch::cold(cfg, Memory::Anonymous).await?;
            Ok(Taken::Not(Box::new(vm)))
        }
    }
}

/// The nest's hook: an inner VM booted and saved in the guest before its snapshot, so that
/// its clones' inner VMs restore. Failing costs only speed.
async fn save_inner_vm(vm: &Vm) {
    match crate::nest::save_template(vm).await {
        Ok(()) => tracing::info!(
            "{}: an inner VM saved in it, for its clones' inner VMs to restore",
            vm.name()
        ),
        Err(e) => tracing::warn!(
            "{}: its clones' inner VMs will boot, not restore: {e}",
            vm.name()
        ),
    }
}

/// How the guests of this process came up so far (for reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootTally {
    pub restored: usize,
    pub cold: usize,
    /// Why each guest that should have restored booted cold instead.
    pub fallbacks: Vec<String>,
}

fn tally_cell() -> &'static std::sync::Mutex<BootTally> {
    static TALLY: std::sync::OnceLock<std::sync::Mutex<BootTally>> = std::sync::OnceLock::new();
    TALLY.get_or_init(Default::default)
}

/// How the guests of this process came up so far.
pub fn tally() -> BootTally {
    tally_cell()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn count(kind: &BootKind) {
    let mut tally = tally_cell().lock().unwrap_or_else(|p| p.into_inner());
    match kind {
        BootKind::Restored => tally.restored += 1,
        BootKind::Cold => tally.cold += 1,
        BootKind::Fallback(why) => tally.fallbacks.push(why.clone()),
    }
}

impl std::fmt::Display for BootTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} guests restored from snapshots, {} booted cold, {} fell back to a cold boot",
            self.restored,
            self.cold,
            self.fallbacks.len()
        )?;
        if let Some(why) = self.fallbacks.first() {
            write!(f, " (first: {why})")?;
        }
        Ok(())
    }
}
