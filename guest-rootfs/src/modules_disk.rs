//! The kernel's whole module tree on a read-only ext4 disk, with the indexes `depmod` makes, so
//! that `modprobe bonding` (or any of the kernel's ~1100 modules) works in every guest.
//!
//! Why a disk and not the initramfs: the tree is 91 MiB (Debian's 6.1 cloud kernel). In the
//! initramfs every guest would hold all of it in RAM; on a virtio-blk disk the guest reads only
//! the modules it loads, into its page cache. ext4 is built into Debian's kernels, and
//! `mkfs.ext4 -d` fills an image without root. The agent mounts it on `/lib/modules` at boot
//! (`lab.modules_disk=` on the kernel command line).
//!
//! The indexes come from Debian's own `depmod` (package kmod, the same version the guest's
//! `modprobe` is), run on the host through the dynamic loader and libraries of its packages, so
//! the host needs no kmod of its own and every host writes the same indexes.

use std::path::{Path, PathBuf};
use std::process::Command;

use lab_kernels::Kernel;
use serde::{Deserialize, Serialize};

use crate::sysroot::Sysroot;
use crate::{Error, Result};

/// Bumped whenever the disk's layout changes, so cached disks of the old layout are rebuilt.
const FORMAT: u32 = 1;
/// Debian packages whose `kmod` binary (as `depmod`) writes the indexes.
const DEPMOD_PACKAGES: [&str; 6] = [
    "kmod", "libkmod2", "libc6", "liblzma5", "libssl3", "libzstd1",
];

/// A built module disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModulesDisk {
    pub path: PathBuf,
    pub release: String,
    pub size: u64,
    /// How many `.ko` files it holds.
    pub modules: usize,
}

/// Builds (or finds in `cache`) the module disk of `kernel`.
pub fn build(
    apt: &lab_kernels::archive::Apt,
    kernel: &Kernel,
    cache: &Path,
) -> Result<ModulesDisk> {
    let files = module_files(&kernel.modules_dir)?;
    let key = cache_key(&kernel.release, &files);
    let dir = kernel.made_in(cache).join("modules");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{}-{}.ext4", kernel.release, &key[..16]));
    let modules = files.iter().filter(|f| is_module(&f.rel)).count();
    if let Ok(meta) = std::fs::metadata(&path) {
        return Ok(ModulesDisk {
            path,
            release: kernel.release.clone(),
            size: meta.len(),
            modules,
        });
    }
    let task = lab_kernels::progress::Task::steps(
        &format!("building the module disk for {}", kernel.release),
        3,
    );
    task.step(&format!("copying {modules} modules"));
    let staging = lab_kernels::cache::Staging::new(&dir, "modules")?;
    let tree = staging.path().join("lib/modules").join(&kernel.release);
    copy_tree(&kernel.modules_dir, &tree, &files)?;
    task.step("depmod");
    depmod(
        apt,
        staging.path(),
        &kernel.release,
        &cache.join("debs"),
        staging.path(),
    )?;
    task.step("mkfs.ext4");
    let image = staging.path().join("disk.ext4");
    mkfs(&staging.path().join("lib/modules"), &image)?;
    std::fs::rename(&image, &path).map_err(|e| Error::io(&path, e))?;
    lab_kernels::cache::keep_newest(&dir, crate::KEEP_BUILDS, |name| {
        lab_kernels::cache::is_keyed(name, &kernel.release, ".ext4")
    });
    let size = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    Ok(ModulesDisk {
        path,
        release: kernel.release.clone(),
        size,
        modules,
    })
}

fn is_module(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".ko") || name.ends_with(".ko.xz") || name.ends_with(".ko.zst")
}

/// A file of a module tree, and what says it changed without reading it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ModuleFile {
    rel: PathBuf,
    size: u64,
    /// Time of the last change, in ns: a Debian package's files keep the package's; a tree's
    /// `make modules_install` gives new ones, so a module rebuilt at the same size is seen.
    mtime_ns: i128,
}

/// Every file under `root`, relative, with its size and time, sorted.
fn module_files(root: &Path) -> Result<Vec<ModuleFile>> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<ModuleFile> = lab_kernels::files_under(root)?
        .into_iter()
        .map(|(rel, meta)| ModuleFile {
            rel,
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What the disk depends on: the release, every file's path, size and time, and the layout.
fn cache_key(release: &str, files: &[ModuleFile]) -> String {
    let mut text = format!(
        "format {FORMAT}\nrelease {release}\ndepmod {}\n",
        DEPMOD_PACKAGES.join(",")
    );
    for file in files {
        text.push_str(&format!(
            "{} {} {}\n",
            file.rel.display(),
            file.size,
            file.mtime_ns
        ));
    }
    lab_kernels::deb::sha256_hex(text.as_bytes())
}

/// Hard-links (or copies) the module tree; Debian's own `modules.*` indexes are not shipped in
/// the package anyway, and ours are written next.
fn copy_tree(from: &Path, to: &Path, files: &[ModuleFile]) -> Result<()> {
    for ModuleFile { rel, .. } in files {
        let (src, dest) = (from.join(rel), to.join(rel));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// Runs Debian's `depmod -b BASE RELEASE` with its own loader and libraries, copied to `scratch`.
fn depmod(
    apt: &lab_kernels::archive::Apt,
    base: &Path,
    release: &str,
    debs: &Path,
    scratch: &Path,
) -> Result<()> {
    let names: Vec<String> = DEPMOD_PACKAGES.iter().map(|s| s.to_string()).collect();
    let sysroot = Sysroot::fetch(apt, &names, debs)?;
    let tools = scratch.join("depmod-tools");
    let lib = tools.join("lib");
    std::fs::create_dir_all(&lib).map_err(|e| Error::io(&lib, e))?;
    let mut kmod = PathBuf::new();
    let mut loader = PathBuf::new();
    for (i, (path, bytes)) in sysroot.closure("/bin/kmod")?.into_iter().enumerate() {
        let name = Path::new(&path)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let dest = if i == 0 {
            tools.join("kmod")
        } else {
            lib.join(&name)
        };
        std::fs::write(&dest, bytes).map_err(|e| Error::io(&dest, e))?;
        set_executable(&dest)?;
        if i == 0 {
            kmod = dest;
        } else if name.to_string_lossy().starts_with("ld-linux") {
            loader = dest;
        }
    }
    let out = Command::new(&loader)
        .arg("--argv0")
        .arg("depmod")
        .arg("--library-path")
        .arg(&lib)
        .arg(&kmod)
        .arg("-b")
        .arg(base)
        .arg(release)
        .output()
        .map_err(|e| Error::io(&loader, e))?;
    if !out.status.success() {
        return Err(Error::Missing(format!(
            "depmod for {release} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = std::fs::remove_dir_all(&tools);
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(path, e))
}

/// `mkfs.ext4 -d DIR` into a new image sized for DIR, with a fixed UUID and hash seed so the
/// same tree gives the same disk.
fn mkfs(dir: &Path, image: &Path) -> Result<()> {
    let mkfs = find_mkfs()?;
    let bytes = tree_bytes(dir)?;
    // ext4 metadata (inode tables, bitmaps) on top of the data, and room to spare.
    let kib = bytes / 1024 * 5 / 4 + 32 * 1024;
    let out = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            "lab-modules",
            "-m",
            "0",
            "-N",
            "8192",
        ])
        .args([
            "-U",
            "6c61622d-6d6f-6475-6c65-730000000001",
            "-E",
            "root_owner=0:0,hash_seed=6c61622d-6d6f-6475-6c65-730000000002",
        ])
        .arg("-d")
        .arg(dir)
        .arg(image)
        .arg(format!("{kib}k"))
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|e| Error::io(&mkfs, e))?;
    if !out.status.success() {
        return Err(Error::Missing(format!(
            "{} failed: {}",
            mkfs.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn find_mkfs() -> Result<PathBuf> {
    which::which("mkfs.ext4")
        .ok()
        .or_else(|| ["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"].iter().map(PathBuf::from).find(|p| p.is_file()))
        .ok_or_else(|| Error::Missing("mkfs.ext4 is not installed: `sudo apt-get install e2fsprogs` (the module disk is an ext4 image)".into()))
}

/// Data blocks of every file under `dir`, in bytes (4 KiB each, rounded up).
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for ModuleFile { size, .. } in module_files(dir)? {
        total += size.div_ceil(4096) * 4096;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_any_file_its_time_and_the_release() {
        let file = |rel: &str, size| ModuleFile {
            rel: PathBuf::from(rel),
            size,
            mtime_ns: 1,
        };
        let files = vec![file("kernel/net/bonding.ko", 10), file("modules.order", 3)];
        let a = cache_key("6.1.0-1", &files);
        assert_eq!(a, cache_key("6.1.0-1", &files));
        assert_ne!(a, cache_key("6.1.0-2", &files));
        let mut other = files.clone();
        other[0].size = 11;
        assert_ne!(a, cache_key("6.1.0-1", &other));
        let mut rebuilt = files.clone();
        rebuilt[0].mtime_ns = 2;
        assert_ne!(
            a,
            cache_key("6.1.0-1", &rebuilt),
            "a module rebuilt at the same size"
        );
    }
}
