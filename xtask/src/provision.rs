//! Everything a guest needs, made ready without root: the static agent, the kernel and the image.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use lab_harness::assets::{Assets, ImageAsset, KernelAsset};
use lab_kernels::{Kernel, Manifest, Origin};

use crate::{lab_dir, workspace_root};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProvisionArgs {
    /// Kernel id from kernels/kernels.toml (default: the manifest's default).
    #[arg(long)]
    pub kernel: Option<String>,
}

/// The agent is built for an explicit target so that +crt-static applies to it alone, not to
/// build scripts and proc macros of the host build.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The assets file named by `LAB_ASSETS` (as `cargo xtask test` sets for its tests), or a fresh
/// provisioning's.
pub fn assets_path(args: &ProvisionArgs) -> anyhow::Result<PathBuf> {
    match std::env::var_os(lab_harness::assets::ENV_ASSETS) {
        Some(path) => Ok(PathBuf::from(path)),
        None => run(args),
    }
}

/// Provisions and returns the path of the assets file.
pub fn run(args: &ProvisionArgs) -> anyhow::Result<PathBuf> {
    let cache = lab_dir().join("cache");
    let agent = build_agent()?;
    let manifest = Manifest::load(&Manifest::bundled_path())?;
    lab_kernels::archive::use_archive(&manifest.archive, &cache).context("pointing apt at Debian's archive")?;
    let kernel = lab_kernels::provide(&manifest, args.kernel.as_deref(), &cache).context("providing the guest kernel")?;
    let recipe = lab_rootfs::Recipe::load(&lab_rootfs::Recipe::bundled_path())?;
    let image = lab_rootfs::build(&recipe, &kernel, &agent, &cache).context("building the guest image")?;
    let modules_disk = lab_rootfs::modules_disk::build(&kernel, &cache).context("building the module disk")?;
    let nest = match lab_harness::qemu::find_binary() {
        Ok(qemu) => Some(lab_rootfs::nest::build(&recipe, &kernel, &image, &qemu, &cache).context("building the nest image")?),
        Err(e) => {
            eprintln!("xtask: no nest image (guests that run VMs need the host's QEMU): {e}");
            None
        }
    };
    let asset = |i: &lab_rootfs::Image| ImageAsset { path: i.path.clone(), sha256: i.sha256.clone(), size: i.size, modules: i.modules.clone() };
    let assets = Assets {
        kernel: KernelAsset {
            id: kernel.id.clone(),
            release: kernel.release.clone(),
            bzimage: kernel.bzimage.clone(),
            modules_dir: kernel.modules_dir.clone(),
            origin: describe_origin(&kernel),
        },
        image: asset(&image),
        nest: nest.as_ref().map(asset),
        modules_disk: Some(modules_disk.path.clone()),
        dir: lab_dir(),
        runs: lab_harness::Runs::default(),
    };
    let path = lab_dir().join("assets.json");
    assets.save(&path)?;
    assets.save(&lab_dir().join(format!("assets-{}.json", kernel.id)))?;
    eprintln!(
        "xtask: kernel {} ({}), image {} ({:.1} MiB, sha256 {}), module disk of {} modules ({:.0} MiB){}, assets in {}",
        kernel.release,
        assets.kernel.origin,
        image.path.display(),
        image.size as f64 / 1048576.0,
        &image.sha256[..16],
        modules_disk.modules,
        modules_disk.size as f64 / 1048576.0,
        nest.as_ref().map(|n| format!(", nest image {:.1} MiB", n.size as f64 / 1048576.0)).unwrap_or_default(),
        path.display()
    );
    Ok(path)
}

fn describe_origin(kernel: &Kernel) -> String {
    match &kernel.origin {
        Origin::Debian { package, version, sha256 } => format!("{package} {version} sha256:{sha256}"),
        Origin::Override { bzimage_sha256 } => format!("{} sha256:{bzimage_sha256}", kernel.bzimage.display()),
    }
}

fn build_agent() -> anyhow::Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--release", "--package", "lab-agent", "--target", AGENT_TARGET])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .context("running cargo to build the agent")?;
    anyhow::ensure!(
        status.success(),
        "building the static lab agent failed; it needs glibc's static libraries (`sudo apt-get install libc6-dev`)"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join(AGENT_TARGET).join("release").join("lab"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_harness_looks_for_the_nest_where_the_image_puts_it() {
        use lab_harness::nest as harness;
        use lab_rootfs::nest as image;
        assert_eq!(harness::QEMU, image::QEMU_WRAPPER);
        assert_eq!(harness::INNER_KERNEL, image::INNER_KERNEL);
        assert_eq!(harness::INNER_INITRD, image::INNER_INITRD);
    }
}
