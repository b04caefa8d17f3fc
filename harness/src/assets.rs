//! The kernel and guest image a run uses, as `cargo xtask` provisioned them.
//!
//! `cargo xtask` writes `target/lab/assets.json`; tests and the lab read it (or the file named by
//! `LAB_ASSETS`). Plain `cargo test` without provisioning fails with the command that fixes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vm::VmConfig;

pub const ENV_ASSETS: &str = "LAB_ASSETS";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assets {
    pub kernel: KernelAsset,
    pub image: ImageAsset,
    /// The image of guests that run VMs of their own (the base image plus QEMU, the inner
    /// kernel and image, and KVM); absent when no host QEMU was found at provisioning.
    #[serde(default)]
    pub nest: Option<ImageAsset>,
    /// The directory the assets file was read from (`target/lab`); runs keep artifacts below it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelAsset {
    /// Manifest id, e.g. `debian-6.1`.
    pub id: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub bzimage: PathBuf,
    /// Where it came from, e.g. `linux-image-6.1.0-56-cloud-amd64 6.1.192-2 sha256:...`.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAsset {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub modules: Vec<String>,
}

impl Assets {
    /// Where `cargo xtask` leaves the assets file in this workspace.
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/assets.json")
    }

    /// `LAB_ASSETS`, else the workspace default.
    pub fn from_env() -> Result<Self> {
        let path = std::env::var_os(ENV_ASSETS).map(PathBuf::from).unwrap_or_else(Self::default_path);
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|_| Error::Missing {
            what: format!("guest assets ({})", path.display()),
            fix: "run `cargo xtask test` (or `cargo xtask provision`): it fetches the kernel and builds the guest image".into(),
        })?;
        let assets: Assets = serde_json::from_str(&text).map_err(|e| Error::Missing {
            what: format!("valid guest assets in {}: {e}", path.display()),
            fix: "run `cargo xtask provision` again".into(),
        })?;
        let dir = path.parent().map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf())).unwrap_or_default();
        Ok(Assets { dir, ..assets })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e| Error::Io { path: path.to_path_buf(), source: e };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(path, json).map_err(io)
    }

    /// A guest that can run `inner_vms` VMs of its own ([`crate::nest`]): the nest image and
    /// room for them in memory.
    pub fn nest_vm(&self, name: &str, inner_vms: u32) -> Result<VmConfig> {
        let nest = self.nest.as_ref().ok_or_else(|| Error::Missing {
            what: "the nest image (QEMU, inner kernel and image) for guests that run VMs".into(),
            fix: "install QEMU (`sudo apt-get install qemu-system-x86`) and run `cargo xtask provision` again".into(),
        })?;
        let mut cfg = self.vm(name);
        cfg.initrd = nest.path.clone();
        // The initramfs (~80 MiB unpacked) plus, per inner VM, its memory and its QEMU's.
        cfg.memory_mib = 384 + 256 * inner_vms;
        Ok(cfg)
    }

    /// A guest configuration booting these assets, checked to run this kernel.
    pub fn vm(&self, name: &str) -> VmConfig {
        let mut cfg = VmConfig::new(name, &self.kernel.bzimage, &self.image.path);
        cfg.kernel_release = Some(self.kernel.release.clone());
        cfg
    }
}
