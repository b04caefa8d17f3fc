//! `guest-rootfs/rootfs.toml`: what goes into the image, kept as data.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub packages: Vec<String>,
    pub busybox: String,
    pub programs: Vec<String>,
    #[serde(default)]
    pub links: Vec<[String; 2]>,
    /// Links the agent makes after the boot's modules are loaded (`/etc/lab/links`).
    #[serde(default)]
    pub links_after_boot: Vec<[String; 2]>,
    /// Directories copied whole from the packages (terminfo, say).
    #[serde(default)]
    pub trees: Vec<String>,
    pub modules: Vec<String>,
    pub nest: NestRecipe,
}

/// What a guest that runs VMs of its own carries on top of the base image (see [`crate::nest`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NestRecipe {
    /// Extra kernel modules loaded at boot; ones the CPU cannot use fail to load, harmlessly.
    pub modules: Vec<String>,
    /// Files of the host QEMU's data directory (`qemu -L help`) the inner microVMs boot with.
    pub firmware: Vec<String>,
    /// QEMU's loadable modules the inner QEMU may need (TCG is one in Debian's build).
    pub qemu_modules: Vec<String>,
}

impl Recipe {
    pub fn bundled_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs.toml")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Recipe {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// File names that real programs provide, so busybox must not shadow them in /bin.
    pub fn provided_names(&self) -> Vec<String> {
        let names = self.programs.iter().chain(
            self.links
                .iter()
                .chain(&self.links_after_boot)
                .map(|[link, _]| link),
        );
        names
            .filter_map(|p| {
                Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel runs /sbin/modprobe for what it asks for while booting: the image must not
    /// hold it then, but the agent makes it (and busybox's applet must not take its place).
    #[test]
    fn modprobe_is_linked_after_boot_not_in_the_image() {
        let recipe = Recipe::load(&Recipe::bundled_path()).expect("bundled recipe");
        assert!(!recipe
            .links
            .iter()
            .any(|[link, _]| link == "/sbin/modprobe"));
        assert!(recipe
            .links_after_boot
            .iter()
            .any(|[link, target]| link == "/sbin/modprobe" && target == "/bin/kmod"));
    }

    #[test]
    fn bundled_recipe_keeps_busybox_away_from_sh_and_ip() {
        let recipe = Recipe::load(&Recipe::bundled_path()).expect("bundled recipe");
        let provided = recipe.provided_names();
        for name in [
            "sh", "ip", "ping", "dash", "bash", "tc", "modprobe", "lsmod",
        ] {
            assert!(
                provided.iter().any(|p| p == name),
                "{name} must come from a real program, not busybox"
            );
        }
        assert!(recipe.modules.iter().any(|m| m == "macvlan"));
    }
}
