//! A kernel of the user's own tree (`--kernel-tree DIR`): the `arch/x86/boot/bzImage` that
//! `make` left there, and its modules installed with `make modules_install INSTALL_MOD_PATH`
//! into the cache (no root, and nothing written into the tree).
//!
//! What is booted is a copy, keyed by what the build made: the bzImage's hash and the size and
//! time of every module `modules.order` lists. A rebuild gives a new key, so a run never mixes
//! a kernel with another build's modules, and a developer's next `make` during a run changes
//! nothing under it. The cache keeps the last few builds' copies, each with the images and
//! module disk made for it ([`Kernel::made_in`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{deb, Error, Kernel, Origin, Result};

/// Where `make` leaves the kernel, relative to the tree.
pub const BZIMAGE: &str = "arch/x86/boot/bzImage";
/// What `make kernelrelease` prints, as the build writes it.
const RELEASE: &str = "include/config/kernel.release";
/// Written last into a whole installed copy.
const DONE: &str = "installed";
/// Installed builds kept in the cache, the most recently made.
const KEEP: usize = 3;

/// The kernel built in tree `dir`, with its modules installed in `cache/trees` unless that
/// build's are there already.
pub fn provide(dir: &Path, cache: &Path) -> Result<Kernel> {
    let build = Build::of(dir)?;
    let installed = cache
        .join("trees")
        .join(format!("{}-{}", build.release, &build.key[..16]));
    if !installed.join(DONE).is_file() {
        install(dir, &build.bzimage, &installed, cache)?;
    }
    Ok(Kernel {
        id: "tree".into(),
        bzimage: installed.join("bzImage"),
        modules_dir: installed.join("lib/modules").join(&build.release),
        release: build.release,
        origin: Origin::Tree {
            dir: dir.to_path_buf(),
            bzimage_sha256: build.bzimage_sha256,
        },
    })
}

/// What identifies the build in tree `dir` (its bzImage's hash, its modules' sizes and times):
/// what [`provide`] keys its copy by, for a caller that wants to know whether it changed.
pub fn fingerprint(dir: &Path) -> Result<String> {
    Ok(Build::of(dir)?.key)
}

/// One build of a tree, as read from it.
struct Build {
    bzimage: Vec<u8>,
    bzimage_sha256: String,
    release: String,
    /// [`build_key`] of it.
    key: String,
}

impl Build {
    fn of(dir: &Path) -> Result<Self> {
        let (path, release, order) = built(dir)?;
        let bzimage = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bzimage_sha256 = deb::sha256_hex(&bzimage);
        let key = build_key(dir, &bzimage_sha256, &order)?;
        Ok(Self {
            bzimage,
            bzimage_sha256,
            release,
            key,
        })
    }
}

/// The tree's bzImage, release and `modules.order`, or what to run to make them.
fn built(dir: &Path) -> Result<(PathBuf, String, String)> {
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "--kernel-tree {}: no such directory on this machine",
            dir.display()
        )));
    }
    let build_it = format!(
        "\n  fix: build it first, with the options the lab needs: `cargo xtask kernel-config > \
         lab.config`, then in {}: `scripts/kconfig/merge_config.sh -m .config lab.config && \
         make olddefconfig && make -j$(nproc) bzImage modules`",
        dir.display()
    );
    let bzimage = dir.join(BZIMAGE);
    let release = std::fs::read_to_string(dir.join(RELEASE)).unwrap_or_default();
    if !bzimage.is_file() || release.trim().is_empty() {
        return Err(Error::Invalid(format!(
            "--kernel-tree {}: it has no {BZIMAGE} and {RELEASE}: it is not a built kernel \
             tree{build_it}",
            dir.display()
        )));
    }
    let order = std::fs::read_to_string(dir.join("modules.order")).map_err(|_| {
        Error::Invalid(format!(
            "--kernel-tree {}: it has no modules.order: its modules were not built (the lab \
             needs CONFIG_MODULES=y and `make modules`){build_it}",
            dir.display()
        ))
    })?;
    let release = release.trim();
    if !is_release(release) {
        return Err(Error::Invalid(format!(
            "--kernel-tree {}: its {RELEASE} says {release:?}, which is no kernel release: the              lab names directories after it, so it must be one path component of letters,              digits and `.+-_~` (CONFIG_LOCALVERSION is where it comes from)",
            dir.display()
        )));
    }
    Ok((bzimage, release.to_string(), order))
}

/// Whether `release` can name a directory as it is: one path component, not `.` or `..`,
/// of the characters kernel releases use.
fn is_release(release: &str) -> bool {
    (1..=64).contains(&release.len())
        && release != "."
        && release != ".."
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
}

/// What identifies a build: its bzImage, and each module's path, size and time of change.
fn build_key(dir: &Path, bzimage_sha256: &str, order: &str) -> Result<String> {
    let mut text = format!("bzImage {bzimage_sha256}\n");
    for line in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ko = dir.join(Path::new(line).with_extension("ko"));
        let meta = std::fs::metadata(&ko).map_err(|e| Error::io(&ko, e))?;
        text.push_str(&format!(
            "{line} {} {}.{}\n",
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
    }
    Ok(deb::sha256_hex(text.as_bytes()))
}

/// Copies the bzImage and runs the tree's `make modules_install` into `installed`.
fn install(dir: &Path, bzimage: &[u8], installed: &Path, cache: &Path) -> Result<()> {
    let staging = crate::cache::Staging::new(&cache.join("trees"), "tree")?;
    let copy = staging.path().join("bzImage");
    std::fs::write(&copy, bzimage).map_err(|e| Error::io(&copy, e))?;
    let shown = format!(
        "make -C {} modules_install INSTALL_MOD_PATH={}",
        dir.display(),
        staging.path().display()
    );
    // The lab runs depmod itself, Debian's, when it makes the module disk: the host's may be
    // missing or older than the tree.
    let args = [
        "-C".into(),
        dir.as_os_str().to_owned(),
        "modules_install".into(),
        format!("INSTALL_MOD_PATH={}", staging.path().display()).into(),
        "DEPMOD=true".into(),
    ];
    let out = crate::kbuild::run_make(&args, &shown)?;
    if !out.status.success() {
        return Err(Error::Command {
            what: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            fix: format!(
                "run `make modules` in {} and try again; the lab needs CONFIG_MODULES=y",
                dir.display()
            ),
        });
    }
    let done = staging.path().join(DONE);
    std::fs::write(&done, "").map_err(|e| Error::io(&done, e))?;
    // Another run may have installed the same build meanwhile; theirs is as good as ours.
    if !installed.join(DONE).is_file() {
        let _ = std::fs::remove_dir_all(installed);
        std::fs::rename(staging.path(), installed).map_err(|e| Error::io(installed, e))?;
        let _ = staging.keep();
    }
    crate::cache::keep_newest(&cache.join("trees"), KEEP, |name| {
        !name.starts_with(crate::cache::STAGING)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_that_was_not_built_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = built(dir.path()).expect_err("nothing built");
        let text = err.to_string();
        assert!(
            text.contains("arch/x86/boot/bzImage") && text.contains("cargo xtask kernel-config"),
            "{text}"
        );
        let boot = dir.path().join("arch/x86/boot");
        std::fs::create_dir_all(&boot).expect("mkdir");
        std::fs::write(boot.join("bzImage"), "kernel").expect("write");
        std::fs::create_dir_all(dir.path().join("include/config")).expect("mkdir");
        std::fs::write(dir.path().join(RELEASE), "6.18.0-rc1+\n").expect("write");
        let err = built(dir.path()).expect_err("no modules built");
        assert!(err.to_string().contains("CONFIG_MODULES=y"), "{err}");
        std::fs::write(dir.path().join("modules.order"), "").expect("write");
        let (_, release, _) = built(dir.path()).expect("built");
        assert_eq!(release, "6.18.0-rc1+");
        for bad in ["../../../../tmp/x", "a/b", "..", "6.1 x", ""] {
            std::fs::write(dir.path().join(RELEASE), format!("{bad}\n")).expect("release");
            let e = built(dir.path()).expect_err(bad).to_string();
            assert!(
                e.contains("no kernel release") || e.contains("not a built kernel tree"),
                "{bad}: {e}"
            );
        }
        let err = built(&dir.path().join("nope")).expect_err("no directory");
        assert!(err.to_string().contains("no such directory"), "{err}");
    }

    #[test]
    fn a_rebuilt_module_gives_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ko = dir.path().join("net/a.ko");
        std::fs::create_dir_all(ko.parent().expect("parent")).expect("mkdir");
        std::fs::write(&ko, "one").expect("write");
        let order = "net/a.o\n";
        let before = build_key(dir.path(), "abc", order).expect("key");
        assert_eq!(before, build_key(dir.path(), "abc", order).expect("key"));
        assert_ne!(before, build_key(dir.path(), "abd", order).expect("key"));
        let file = std::fs::File::options()
            .write(true)
            .open(&ko)
            .expect("open");
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .expect("touch");
        assert_ne!(before, build_key(dir.path(), "abc", order).expect("key"));
    }
}
