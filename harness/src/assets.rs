//! The kernel and guest image a run uses, as `cargo xtask` provisioned them.
//!
//! `cargo xtask` writes `target/lab/assets.json`; tests and the lab read it (or the file named by
//! `LAB_ASSETS`). Plain `cargo test` without provisioning fails with the command that fixes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::config::{InitrdLayer, VmConfig};
use crate::error::{Error, Result};
use crate::settings::Settings;

pub use crate::settings::ENV_ASSETS;

/// Where [`Extras::dir`] is copied to in the guest.
pub use lab_rootfs::layers::DIR_IN_GUEST;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assets {
    pub kernel: KernelAsset,
    pub image: ImageAsset,
    /// The image of guests that run VMs of their own (the base image plus QEMU, the inner
    /// kernel and image, and KVM); absent when no host QEMU was found at provisioning.
    #[serde(default)]
    pub nest: Option<ImageAsset>,
    /// The kernel's whole module tree on an ext4 image, attached read-only to every guest.
    #[serde(default)]
    pub modules_disk: Option<PathBuf>,
    /// The directory the assets file was read from (`target/lab`).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The cache they were made in (kernels, packages, images, snapshots), shared by every
    /// clone on the machine; `<dir>/cache` in assets files older than that.
    #[serde(default)]
    pub cache: PathBuf,
    /// Where labs booted with these assets keep their artifacts; `<dir>/runs`, dropped on
    /// success, unless the caller says otherwise.
    #[serde(skip)]
    pub runs: Runs,
    /// What the environment asked for when these were loaded (`LAB_ACCEL`, `LAB_SNAPSHOT`...):
    /// every configuration [`Assets::vm`] makes follows them.
    #[serde(skip)]
    pub settings: Settings,
}

/// Where each lab keeps its captures (pcaps), consoles and `summary.json`: a directory of its
/// own under `dir`. A failed lab always keeps it; a passed one only when `keep_passed` (the
/// lab commands keep their latest runs for people to open; tests drop theirs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs {
    pub dir: PathBuf,
    pub keep_passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelAsset {
    /// Manifest id, e.g. `debian-6.1`.
    pub id: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub bzimage: PathBuf,
    /// Its `/lib/modules/<release>` on the host, to check module names before a boot.
    #[serde(default)]
    pub modules_dir: PathBuf,
    /// Where it came from: a Debian package (shown as `linux-image-6.1.0-56-cloud-amd64
    /// 6.1.192-2 sha256:...`) or a file of the user's. Modules are built for it from it.
    pub origin: lab_kernels::Origin,
}

pub use crate::spec::{Extras, Size};

pub use crate::config::MAX_NICS;

/// Memory a guest needs beyond twice its image and three times its layers (the archive, then
/// its unpacked files, whose many small files round up to whole pages: Python's standard
/// library in a 120 MB layer did not unpack in 448 MiB, twice its size and this, but did in
/// 544): the kernel, the agent, page cache. A rule of thumb fitted to the layers the lab uses
/// (iperf3's, docs/measurements.md; drivers/net's with Python), not a floor:
/// below it a boot is refused with the size to ask for, since the rule said 287 MiB where
/// 336 MiB still ran out of room at unpacking; past the rule, the boot fails by name
/// (`Vm::boot`).
const MEMORY_OVERHEAD_MIB: u64 = 160;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAsset {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub modules: Vec<String>,
    /// The Debian packages it was built from, `name=version sha256`: what reproduces it.
    #[serde(default)]
    pub packages: Vec<String>,
}

impl Assets {
    /// Where `cargo xtask` leaves the assets file of this workspace: `lab/assets.json` in its
    /// target directory (`CARGO_TARGET_DIR` when set, as cargo and xtask take it).
    pub fn default_path(settings: &Settings) -> PathBuf {
        settings
            .target_dir
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("lab/assets.json")
    }

    /// `LAB_ASSETS`, else the workspace default, with the environment's [`Settings`].
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let path = settings
            .assets
            .clone()
            .unwrap_or_else(|| Self::default_path(&settings));
        Self::load_with(&path, settings)
    }

    /// The assets of `kernel` beside these, with the same settings and run directory:
    /// `assets-<id>.json` for a kernel of `kernels/kernels.toml`, `assets-tree.json` for a
    /// tree's, as `cargo xtask provision --kernel <id>` (or `--kernel-tree <dir>`) writes them
    /// (and `cargo xtask lab` does for every kernel a lab names).
    pub fn for_kernel(&self, kernel: &crate::spec::Kernel) -> Result<Assets> {
        use crate::spec::Kernel;
        let (file, fix) = match kernel {
            Kernel::Id(id) if *id == self.kernel.id => return Ok(self.clone()),
            Kernel::Id(id) => (
                format!("assets-{id}.json"),
                format!("run `cargo xtask provision --kernel {id}`"),
            ),
            Kernel::Tree(dir) => (
                "assets-tree.json".into(),
                format!(
                    "run `cargo xtask provision --kernel-tree {}`",
                    dir.display()
                ),
            ),
        };
        let path = self.dir.join(file);
        let missing = || Error::Missing {
            what: format!("{kernel}'s assets ({})", path.display()),
            fix: fix.clone(),
        };
        if !path.exists() {
            return Err(missing());
        }
        let mut other = Self::load_with(&path, self.settings.clone())?;
        if let (Kernel::Tree(dir), lab_kernels::Origin::Tree { dir: built, .. }) =
            (kernel, &other.kernel.origin)
        {
            // assets-tree.json is the latest tree provisioned: another tree's is not this one.
            if built.canonicalize().ok().as_ref() != Some(dir) {
                return Err(missing());
            }
        }
        other.runs = self.runs.clone();
        Ok(other)
    }

    /// The assets file at `path`, with the environment's [`Settings`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Settings::from_env()?)
    }

    /// The assets file at `path`, with `settings` whatever the environment says. Fails when
    /// the settings require an accelerator guests would not get.
    pub fn load_with(path: &Path, settings: Settings) -> Result<Self> {
        settings.checked_accel()?;
        let text = std::fs::read_to_string(path).map_err(|_| Error::Missing {
            what: format!("guest assets ({})", path.display()),
            fix: format!(
                "run `cargo xtask provision` in macvlan-lab's workspace (it fetches the kernel and builds the guest image), \
                 and from elsewhere point {ENV_ASSETS} at the assets.json it writes"
            ),
        })?;
        let assets: Assets = serde_json::from_str(&text).map_err(|e| Error::Missing {
            what: format!("valid guest assets in {}: {e}", path.display()),
            fix: "run `cargo xtask provision` again".into(),
        })?;
        // What the cache holds is booted and run: one another user could write is refused
        // (and `Assets::vm` prunes snapshots in it).
        if !assets.cache.as_os_str().is_empty() && assets.cache.exists() {
            lab_kernels::cache::check(&assets.cache).map_err(lab_rootfs::Error::from)?;
        }
        let dir = path
            .parent()
            .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()))
            .unwrap_or_default();
        Ok(Assets {
            runs: Runs {
                dir: dir.join("runs"),
                keep_passed: false,
            },
            dir,
            settings,
            ..assets
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e| Error::io(path, e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        // A reader (another run starting) sees the old file or the new one, never half of one.
        Ok(
            lab_kernels::write_atomically(path, json.as_bytes())
                .map_err(lab_rootfs::Error::from)?,
        )
    }

    /// A guest that can run `inner_vms` VMs of its own ([`crate::nest`]): the nest image and
    /// room for them in memory.
    pub fn nest_vm(&self, name: &str, inner_vms: u32) -> Result<VmConfig> {
        let nest = self.nest.as_ref().ok_or_else(|| Error::Missing {
            what: "the nest image (QEMU, inner kernel and image) for guests that run VMs".into(),
            fix: "install QEMU (`sudo apt-get install qemu-system-x86`) and run `cargo xtask provision` again".into(),
        })?;
        let mut cfg = self.vm(name);
        cfg.boot.initrd = nest.path.clone();
        // The initramfs (~80 MiB unpacked), the saved inner VM's memory (in tmpfs) and, per
        // inner VM, its memory and its QEMU's.
        cfg.machine.memory_mib = 512 + 256 * inner_vms;
        cfg.boot.inner_template = true;
        Ok(cfg)
    }

    /// The cache these assets were made in.
    pub fn cache_dir(&self) -> PathBuf {
        if self.cache.as_os_str().is_empty() {
            self.dir.join("cache")
        } else {
            self.cache.clone()
        }
    }

    /// A guest configuration booting these assets, checked to run this kernel.
    pub fn vm(&self, name: &str) -> VmConfig {
        let mut cfg = VmConfig::new(name, &self.kernel.bzimage, &self.image.path);
        if let Some(accel) = self.settings.accel {
            cfg = cfg.with_accel(accel);
        }
        cfg.machine.qemu.clone_from(&self.settings.qemu);
        cfg.boot.kernel_release = Some(self.kernel.release.clone());
        cfg.boot.modules_disk.clone_from(&self.modules_disk);
        cfg.keep.artifacts.clone_from(&self.settings.artifacts);
        cfg.snapshots = self
            .settings
            .snapshots
            .then(|| self.cache_dir().join("snapshots"));
        cfg
    }

    /// [`Assets::vm`] of `size` with `extras`: packages fetched (or found in the cache),
    /// modules and sizes checked, the directory archived. Blocks while apt works (seconds, on a
    /// cold cache).
    pub fn vm_with(&self, name: &str, extras: &Extras, size: Size) -> Result<VmConfig> {
        let mut cfg = self.vm(name);
        self.apply(&mut cfg, extras, size)?;
        Ok(cfg)
    }

    /// Adds `extras` to a configuration made from these assets (a nest guest's, say) and
    /// gives it `size`; memory left out grows to what the image and extras need.
    pub fn apply(&self, cfg: &mut VmConfig, extras: &Extras, size: Size) -> Result<()> {
        if let Some(cpus) = size.cpus {
            cfg.machine.cpus = cpus;
        }
        if let Some(nics) = size.nics {
            cfg.machine.nics = nics;
        }
        cfg.validate()?;
        self.check_modules(&extras.modules)?;
        cfg.boot.modprobe.extend(extras.modules.iter().cloned());
        if !extras.packages.is_empty() {
            cfg.boot.layers.push(InitrdLayer::File(
                self.package_layer(&extras.packages)?.path,
            ));
        }
        if !extras.module_sources.is_empty() {
            let (archive, in_guest) = self.built_modules(&extras.module_sources)?;
            cfg.boot.layers.push(InitrdLayer::Bytes(Arc::new(archive)));
            cfg.boot.insmod.extend(in_guest);
        }
        if let Some(dir) = &extras.dir {
            if !dir.is_dir() {
                let what = format!("the directory {}: no such directory", dir.display());
                return Err(Error::invalid(
                    what,
                    "give the path of a directory on this machine",
                ));
            }
            cfg.boot
                .layers
                .push(InitrdLayer::Bytes(Arc::new(lab_rootfs::layers::directory(
                    dir,
                )?)));
        }
        if let Some(memory) = size.memory_mib {
            cfg.machine.memory_mib = memory;
        }
        let needed = self.memory_needed(cfg);
        if size.memory_mib.is_none() && u64::from(cfg.machine.memory_mib) < needed {
            // Nobody chose the size: give what the layers need (in steps of 32 MiB, so that
            // near sizes share a snapshot shape) rather than refuse a size nobody asked for.
            let grown = needed.div_ceil(32) * 32;
            cfg.machine.memory_mib = u32::try_from(grown).unwrap_or(u32::MAX);
        }
        if u64::from(cfg.machine.memory_mib) < needed {
            let what = format!("{} MiB of memory is too small for guest {}: its image and layers need about {needed} MiB", cfg.machine.memory_mib, cfg.name);
            return Err(Error::invalid(
                what,
                format!("give it {needed} MiB or more (`memory` of its [[host]], `--memory`, `Size::memory_mib`)"),
            ));
        }
        Ok(())
    }

    /// The cached layer of `packages` and their dependencies.
    pub fn package_layer(&self, packages: &[String]) -> Result<lab_rootfs::layers::Layer> {
        Ok(lab_rootfs::layers::packages(
            &self.apt()?,
            packages,
            &self.image.path,
            &self.cache_dir(),
        )?)
    }

    /// The modules of `sources` built for these assets' kernel, as a layer, with their paths in
    /// the guest in load order.
    pub fn built_modules(&self, sources: &[PathBuf]) -> Result<(Vec<u8>, Vec<String>)> {
        let build = self.kernel_build()?;
        let scratch = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let mut kos = Vec::new();
        for source in sources {
            kos.extend(
                build
                    .build(source, scratch.path())
                    .map_err(lab_rootfs::Error::from)?,
            );
        }
        Ok(lab_rootfs::layers::modules(&kos)?)
    }

    /// Where modules for this kernel are built: Debian's headers of its package (fetched into
    /// the cache on first use), or the user's own tree.
    fn kernel_build(&self) -> Result<lab_kernels::kbuild::KernelBuild> {
        match &self.kernel.origin {
            lab_kernels::Origin::Debian {
                package, version, ..
            } => Ok(lab_kernels::kbuild::KernelBuild::debian(
                &self.apt()?,
                package,
                version,
                &self.cache_dir(),
            )
            .map_err(lab_rootfs::Error::from)?),
            lab_kernels::Origin::Tree { dir, .. } => Ok(lab_kernels::kbuild::KernelBuild::tree(
                dir,
                &self.kernel.release,
            )),
            lab_kernels::Origin::Override { .. } => Err(Error::invalid(
                format!(
                    "modules cannot be built for a {} kernel: the lab has no build directory for it",
                    lab_kernels::ENV_KERNEL
                ),
                "boot your kernel with --kernel-tree DIR (modules are then built in that tree), or copy the .ko in with --dir",
            )),
        }
    }

    /// Fails unless this kernel was built with kmemleak (`--kmemleak`), from its config file:
    /// Debian's beside its image (`/boot/config-<release>`), a tree's `.config`. A
    /// `LAB_KERNEL` file has none here; the guest's scan then says whether it has kmemleak.
    pub fn check_kmemleak(&self) -> Result<()> {
        let kernel = &self.kernel;
        let path = match &kernel.origin {
            lab_kernels::Origin::Debian { .. } => kernel
                .bzimage
                .with_file_name(format!("config-{}", kernel.release)),
            lab_kernels::Origin::Tree { dir, .. } => dir.join(".config"),
            lab_kernels::Origin::Override { .. } => return Ok(()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        crate::kmemleak::check_config_text(&path, &text, &kernel.release)
    }

    /// apt pointed at the manifest's archive, with its state in these assets' cache.
    pub fn apt(&self) -> Result<lab_kernels::archive::Apt> {
        let manifest = lab_kernels::Manifest::load(&lab_kernels::Manifest::bundled_path())
            .map_err(lab_rootfs::Error::from)?;
        Ok(
            lab_kernels::archive::use_archive(&manifest.archive, &self.cache_dir())
                .map_err(lab_rootfs::Error::from)?,
        )
    }

    fn check_modules(&self, modules: &[String]) -> Result<()> {
        if modules.is_empty() {
            return Ok(());
        }
        if self.modules_disk.is_none() {
            return Err(Error::Missing {
                what: "the module disk".into(),
                fix: "run `cargo xtask provision` again".into(),
            });
        }
        let tree = lab_kernels::modules::ModuleTree::open(&self.kernel.modules_dir)
            .map_err(lab_rootfs::Error::from)?;
        for name in modules {
            if !tree.has(name) {
                let near = tree.similar(name, 3);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!("did you mean {}? ", near.join(", "))
                };
                let what = format!("kernel {} has no module '{name}'", self.kernel.release);
                return Err(Error::invalid(
                    what,
                    format!(
                        "{hint}`ls {}` lists them",
                        self.kernel.modules_dir.join("kernel").display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// MiB a guest needs to boot: twice its image, three times its layers, and the kernel's own.
    fn memory_needed(&self, cfg: &VmConfig) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let layers: u64 = cfg
            .boot
            .layers
            .iter()
            .map(|l| match l {
                InitrdLayer::File(p) => size(p),
                InitrdLayer::Bytes(b) => b.len() as u64,
            })
            .sum();
        (2 * size(&cfg.boot.initrd) + 3 * layers).div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB
    }
}
