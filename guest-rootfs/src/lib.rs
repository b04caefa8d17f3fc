//! Builds the guest image: an uncompressed cpio (newc) initramfs holding the `lab` agent as `/init`,
//! busybox, the real iproute2 (with `tc`), dash, bash, kmod and ping with their libraries, and the
//! kernel modules needed at boot, in the order they must be loaded. The rest of the kernel's
//! modules go on a disk of their own ([`modules_disk`]).
//!
//! Everything comes from Debian packages unpacked on the host ([`lab_kernels::deb`]), so building
//! needs no root and nothing installed but apt. The image is reproducible (sorted entries, zero
//! timestamps and owners) and cached under the sha256 of its own bytes' inputs.

pub mod layers;
pub mod modules_disk;
pub mod nest;
mod recipe;
mod sysroot;
mod tree;

use std::path::{Path, PathBuf};

use lab_kernels::modules::ModuleTree;
use lab_kernels::progress::Task;
use lab_kernels::Kernel;
use serde::{Deserialize, Serialize};

pub use recipe::{NestRecipe, Recipe};
use sysroot::Sysroot;
use tree::Tree;

/// A built image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Kernel release whose modules it carries: an image boots only that kernel.
    pub kernel_release: String,
    /// Modules loaded at boot, in order.
    pub modules: Vec<String>,
    /// Debian packages it was made from: `name=version sha256`.
    pub packages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] lab_kernels::Error),
    #[error("guest image recipe {path}: {message}")]
    Recipe { path: PathBuf, message: String },
    #[error("{}: {source}{}", path.display(), lab_kernels::io_fix(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The image of a bare boot: the agent at `agent` alone, as `/init`. Booted with `-- bare` it
/// powers off at once (see the agent's `main`), so a boot of it is the least any guest's boot
/// of that kernel can take: the limit `cargo xtask bench` measures a cold boot against.
pub fn bare_image(agent: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(agent).map_err(|e| Error::io(agent, e))?;
    let mut tree = Tree::default();
    tree.dir("/dev");
    tree.file("/init", data, 0o755);
    tree.to_cpio().map_err(|e| Error::io(agent, e))
}

/// Builds (or finds in `cache`) the image for `kernel` with the agent binary at `agent`.
pub fn build(
    apt: &lab_kernels::archive::Apt,
    recipe: &Recipe,
    kernel: &Kernel,
    agent: &Path,
    cache: &Path,
) -> Result<Image> {
    let task = Task::steps(
        &format!("building the guest image for {}", kernel.release),
        4,
    );
    task.step("its packages");
    let sysroot = Sysroot::fetch(apt, &recipe.packages, &cache.join("debs"))?;
    task.step("its programs");
    let mut tree = Tree::default();
    tree.skeleton();
    tree.file("/init", read(agent)?, 0o755);
    sysroot.install_busybox(&mut tree, &recipe.busybox, &recipe.provided_names())?;
    for program in &recipe.programs {
        sysroot.install_program(&mut tree, program)?;
    }
    for [link, target] in &recipe.links {
        tree.symlink(link, target);
    }
    let after_boot: String = recipe
        .links_after_boot
        .iter()
        .map(|[link, target]| format!("{link} {target}\n"))
        .collect();
    // Read by the agent at boot (`init::make_links_after_boot`).
    tree.file("/etc/lab/links", after_boot.into_bytes(), 0o644);
    for dir in &recipe.trees {
        sysroot.install_tree(&mut tree, dir)?;
    }
    task.step("its modules");
    let modules = install_modules(&mut tree, kernel, &recipe.modules)?;
    tree.file(
        "/etc/lab/packages",
        sysroot.describe().join("\n").into_bytes(),
        0o644,
    );

    task.step("packing and storing the archive");
    let bytes = tree.to_cpio().map_err(|e| Error::io(cache, e))?;
    let image = store(
        &bytes,
        &format!("initramfs-{}", kernel.release),
        &kernel.made_in(cache),
    )?;
    Ok(Image {
        kernel_release: kernel.release.clone(),
        modules,
        packages: sysroot.describe(),
        ..image
    })
}

/// Images (and module disks) of one kernel release kept in the cache: the newest builds.
pub const KEEP_BUILDS: usize = 2;

/// Writes `bytes` to `<cache>/images/<stem>-<sha256 prefix>.cpio` unless it is there already,
/// whole: a file of that name with other contents (cut short by a full disk, damaged on disk)
/// is named and written again. Reading it back costs ~20 ms, against seconds to build it.
fn store(bytes: &[u8], stem: &str, cache: &Path) -> Result<Image> {
    let sha256 = lab_kernels::deb::sha256_hex(bytes);
    let dir = cache.join("images");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{stem}-{}.cpio", &sha256[..16]));
    match std::fs::read(&path) {
        Ok(there) if there == bytes => {}
        Ok(there) => {
            eprintln!(
                "lab-rootfs: image {} is damaged ({} bytes, {} expected, contents differ): writing it again",
                path.display(),
                there.len(),
                bytes.len()
            );
            lab_kernels::write_atomically(&path, bytes)?;
        }
        Err(_) => {
            lab_kernels::write_atomically(&path, bytes)?;
            // A new build of the same kernel (a rebuilt tree, a new agent) replaces the old.
            lab_kernels::cache::keep_newest(&dir, KEEP_BUILDS, |name| {
                lab_kernels::cache::is_keyed(name, stem, ".cpio")
            });
        }
    }
    Ok(Image {
        path,
        sha256,
        size: bytes.len() as u64,
        kernel_release: String::new(),
        modules: Vec::new(),
        packages: Vec::new(),
    })
}

/// Copies the modules (and their dependencies) and writes `/etc/lab/modules`, the load order the
/// agent follows at boot.
fn install_modules(tree: &mut Tree, kernel: &Kernel, wanted: &[String]) -> Result<Vec<String>> {
    let modules = ModuleTree::open(&kernel.modules_dir)?;
    let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let order = modules.load_order(&names)?;
    let base = format!("/lib/modules/{}", kernel.release);
    let mut list = String::new();
    for rel in &order {
        let bytes = lab_kernels::modules::read(&modules.root().join(rel))?;
        tree.file(&format!("{base}/{}", rel.display()), bytes, 0o644);
        list.push_str(&format!("{}\n", rel.display()));
    }
    tree.file("/etc/lab/modules", list.into_bytes(), 0o644);
    Ok(order.iter().map(|p| p.display().to_string()).collect())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_cached_image_is_written_again() {
        let cache = tempfile::tempdir().expect("tempdir");
        let bytes = b"070701 an image".repeat(1000);
        let image = store(&bytes, "initramfs-test", cache.path()).expect("store");
        assert_eq!(std::fs::read(&image.path).expect("read"), bytes);
        // Cut short, as a full disk or a killed copy leaves it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image.path)
            .expect("open")
            .set_len(100)
            .expect("truncate");
        let again = store(&bytes, "initramfs-test", cache.path()).expect("store again");
        assert_eq!(again.path, image.path);
        assert_eq!(
            std::fs::read(&again.path).expect("read"),
            bytes,
            "whole again"
        );
        let left: Vec<_> = std::fs::read_dir(cache.path().join("images"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    }
}
