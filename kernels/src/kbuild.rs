//! Out-of-tree kernel modules built on the host, without root, for the guests' kernel.
//!
//! A module is built by its own kernel's build directory: `make -C BUILD M=SOURCE modules`. For
//! a Debian kernel that directory is its `linux-headers-<release>` package, which needs the
//! `linux-headers-<abi>-common` and `linux-kbuild-<version>` packages beside it: their relative
//! symlinks (`scripts -> ../../lib/linux-kbuild-6.1/scripts`) point into each other, and its
//! Makefile includes `/usr/src/linux-headers-<abi>-common/Makefile` by absolute path. So the
//! three are unpacked into one tree in the cache ([`KernelBuild::debian`]) and that include is
//! pointed into it. A kernel tree of the user's own is its own build directory
//! ([`KernelBuild::tree`]). Either way the host needs `make` and a C compiler, and nothing
//! else: no package installed, no root.
//!
//! The user's source is copied to a scratch directory first: a build writes objects next to
//! the sources, and the lab does not write into a directory it was only asked to read.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::archive::Apt;
use crate::{deb, Error, Result};

/// The most a module's source directory may hold: it is copied before it is built.
pub const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// The marker of a whole headers tree, written last: the sha256 of every file in it.
const MARKER: &str = "headers.json";

/// A directory that builds modules for one kernel release.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelBuild {
    /// What `make -C` is given.
    pub dir: PathBuf,
    pub release: String,
    /// Debian's headers name `gcc-12`, what their kernel was built with; a host without it
    /// builds with its `gcc` (Debian turns the compiler version check off for this).
    debian: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    packages: Vec<(String, String)>,
    files: std::collections::BTreeMap<String, String>,
}

impl KernelBuild {
    /// A kernel tree the user built (`make` ran in it): it is its own build directory.
    pub fn tree(dir: &Path, release: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            release: release.to_string(),
            debian: false,
        }
    }

    /// The build directory of Debian's kernel package `image` (`linux-image-<release>`) at
    /// `version`, fetched and assembled in `cache/headers` unless it is there already.
    pub fn debian(apt: &Apt, image: &str, version: &str, cache: &Path) -> Result<Self> {
        let release = image.strip_prefix("linux-image-").ok_or_else(|| {
            Error::Invalid(format!(
                "{image} is not a Debian kernel image package (linux-image-<release>)"
            ))
        })?;
        let headers = format!("linux-headers-{release}");
        let root_of = |dir: &Path| dir.join("root");
        let dir = cache
            .join("headers")
            .join(format!("{headers}_{}", version.replace(':', "%3a")));
        let build = Self {
            dir: root_of(&dir).join("usr/src").join(&headers),
            release: release.to_string(),
            debian: true,
        };
        if verified(&dir)? {
            return Ok(build);
        }
        let packages = packages_of(apt, &headers, version)?;
        let fetched = deb::fetch_exact(apt, &packages, &cache.join("debs"))?;
        let staging = crate::cache::Staging::new(&cache.join("headers"), &headers)?;
        for unpacked in &fetched {
            let package_dir = unpacked.root.parent().unwrap_or(&unpacked.root);
            let debfile = deb::only_deb(package_dir)?;
            deb::run(
                Command::new(deb::tool("dpkg-deb")?)
                    .arg("-x")
                    .arg(&debfile)
                    .arg(root_of(staging.path())),
                &format!("dpkg-deb -x {}", debfile.display()),
                "the download may be damaged: `cargo xtask clean-cache`, then try again",
            )?;
        }
        point_include_at(
            &root_of(staging.path()).join("usr/src").join(&headers),
            &root_of(&dir).join("usr/src"),
        )?;
        let marker = Marker {
            packages,
            files: deb::hash_tree(&root_of(staging.path()))?,
        };
        let json = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Invalid(e.to_string()))?;
        let marker_path = staging.path().join(MARKER);
        std::fs::write(&marker_path, json).map_err(|e| Error::io(&marker_path, e))?;
        // Another build may have assembled the same tree meanwhile; theirs is as good as ours.
        if !verified(&dir)? {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(staging.path(), &dir).map_err(|e| Error::io(&dir, e))?;
            let _ = staging.keep();
        }
        Ok(build)
    }

    /// Builds the out-of-tree module(s) in `source` (a directory with a `Kbuild` or `Makefile`
    /// saying `obj-m := NAME.o`) in a copy under `scratch`; returns the `.ko` files in the
    /// order the build lists them (`modules.order`), which is the order to load them in.
    pub fn build(&self, source: &Path, scratch: &Path) -> Result<Vec<PathBuf>> {
        check_source(source)?;
        let original = source.canonicalize().map_err(|e| Error::io(source, e))?;
        let name = original
            .file_name()
            .map_or_else(|| "module".into(), |n| n.to_string_lossy().into_owned());
        let copy = scratch.join(&name);
        copy_tree(source, &copy)?;
        let shown = format!(
            "make -C {} M={} modules (the module in {}, for kernel {})",
            self.dir.display(),
            copy.display(),
            source.display(),
            self.release
        );
        let out = run_make(&self.make_args(&copy, &original), &shown)?;
        if !out.status.success() {
            // The compiler named the copy's files: name the user's instead.
            let said = last_lines(&out.stdout, &out.stderr, 30)
                .replace(&copy.display().to_string(), &original.display().to_string());
            return Err(self.failed(shown, said, source));
        }
        built_modules(&copy, source)
    }

    /// `make`'s arguments to build the module copied to `copy` from `original`.
    fn make_args(&self, copy: &Path, original: &Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-C".into(),
            self.dir.clone().into(),
            format!("M={}", copy.display()).into(),
            format!("-j{}", jobs()).into(),
            "modules".into(),
        ];
        // WARN()s and BUG()s name their file: the user's, not the copy, which is gone by then.
        let (from, to) = (copy.display().to_string(), original.display().to_string());
        if !from.contains(char::is_whitespace) && !to.contains(char::is_whitespace) {
            args.push(format!("KCFLAGS=-fmacro-prefix-map={from}={to}").into());
        }
        if self.debian && which::which("gcc-12").is_err() {
            args.push("CC=gcc".into());
        }
        args
    }

    /// The error of a build that failed, from what make and the compiler `said`.
    fn failed(&self, what: String, said: String, source: &Path) -> Error {
        let fix = if said.contains("error while loading shared libraries") {
            "the kernel's build tools need a library this host lacks (named above): \
             `sudo apt-get install libelf1 libssl3`"
                .to_string()
        } else {
            format!(
                "fix the module's source in {} (the compiler's words are above); it is built \
                 against the headers of {}",
                source.display(),
                self.release
            )
        };
        Error::Command {
            what,
            stderr: said,
            fix,
        }
    }
}

/// Runs the host's `make` with `args` (`shown` names it in errors). No make, or a make a
/// signal ended, is an error here; a build that failed is the caller's to explain.
pub(crate) fn run_make(args: &[std::ffi::OsString], shown: &str) -> Result<std::process::Output> {
    let fix = "install make and a C compiler (`sudo apt-get install make gcc libelf1`)";
    let make = which::which("make").map_err(|_| Error::MissingTool {
        tool: "make",
        fix: fix.into(),
    })?;
    let out = Command::new(make)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            what: shown.into(),
            stderr: e.to_string(),
            fix: fix.into(),
        })?;
    match crate::stopped(shown, &out.status) {
        Some(stopped) => Err(stopped),
        None => Ok(out),
    }
}

/// The headers package and the `-common` and `linux-kbuild` packages it depends on, all at
/// the kernel's `version` (Debian builds them from one source package).
fn packages_of(apt: &Apt, headers: &str, version: &str) -> Result<Vec<(String, String)>> {
    let info = deb::show(apt, headers)?;
    if info.version != version {
        return Err(Error::Invalid(format!(
            "Debian's archive has {headers} {}, not {version} like the guests' kernel\n  \
             fix: `cargo xtask provision` moves the lab to the archive's current kernel",
            info.version
        )));
    }
    let mut packages = vec![(headers.to_string(), version.to_string())];
    packages.extend(
        info.depends
            .iter()
            .filter(|d| d.starts_with("linux-headers-") || d.starts_with("linux-kbuild-"))
            .map(|d| (d.clone(), version.to_string())),
    );
    Ok(packages)
}

/// Whether `dir` holds a whole headers tree whose files are as they were assembled. A tree
/// cut short or changed since is assembled again; make runs its scripts and tools.
fn verified(dir: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read(dir.join(MARKER)) else {
        return Ok(false);
    };
    let Ok(marker) = serde_json::from_slice::<Marker>(&text) else {
        return Ok(false);
    };
    Ok(deb::hash_tree(&dir.join("root")).is_ok_and(|files| files == marker.files))
}

/// Points the headers' `include /usr/src/...` at the tree in the cache.
fn point_include_at(headers: &Path, usr_src: &Path) -> Result<()> {
    let makefile = headers.join("Makefile");
    let text = std::fs::read_to_string(&makefile).map_err(|e| Error::io(&makefile, e))?;
    let pointed = text.replace(
        "include /usr/src/",
        &format!("include {}/", usr_src.display()),
    );
    if pointed == text {
        return Err(Error::Invalid(format!(
            "{} does not include /usr/src/...: Debian's headers changed their layout",
            makefile.display()
        )));
    }
    std::fs::write(&makefile, pointed).map_err(|e| Error::io(&makefile, e))
}

/// Fails unless `source` is a directory with a `Kbuild` or `Makefile`: what can be said of a
/// module's source before anything is fetched or built.
pub fn check_source(source: &Path) -> Result<()> {
    if !source.is_dir() {
        return Err(Error::Invalid(format!(
            "--module-source {}: no such directory on this machine",
            source.display()
        )));
    }
    if !source.join("Kbuild").is_file() && !source.join("Makefile").is_file() {
        return Err(Error::Invalid(format!(
            "--module-source {}: it has no Kbuild or Makefile\n  fix: an out-of-tree module's \
             directory has a Kbuild file saying `obj-m := NAME.o` beside NAME.c",
            source.display()
        )));
    }
    Ok(())
}

/// Copies the regular files under `from` to `to`, with their modes; symlinks and special files
/// are left out, and a tree over [`MAX_SOURCE_BYTES`] is refused before anything is copied.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let files = crate::files_under(from)?;
    let total: u64 = files.iter().map(|(_, meta)| meta.len()).sum();
    if total > MAX_SOURCE_BYTES {
        return Err(Error::Invalid(format!(
            "--module-source {} holds {} MiB; a module's source may hold {} MiB\n  fix: point it \
             at the module's own directory",
            from.display(),
            total >> 20,
            MAX_SOURCE_BYTES >> 20
        )));
    }
    for (rel, _) in files {
        let target = to.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::copy(from.join(&rel), &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

/// The `.ko` files a build made in `dir`, in `modules.order`'s order.
fn built_modules(dir: &Path, source: &Path) -> Result<Vec<PathBuf>> {
    let order = dir.join("modules.order");
    let text = std::fs::read_to_string(&order).unwrap_or_default();
    let modules: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let ko = PathBuf::from(line).with_extension("ko");
            if ko.is_absolute() {
                ko
            } else {
                dir.join(ko)
            }
        })
        .filter(|ko| ko.is_file())
        .collect();
    if modules.is_empty() {
        return Err(Error::Invalid(format!(
            "--module-source {}: the build made no .ko\n  fix: its Kbuild (or Makefile) must say \
             `obj-m := NAME.o` for a NAME.c beside it",
            source.display()
        )));
    }
    Ok(modules)
}

/// The last `n` lines of what a command printed, its errors last.
fn last_lines(stdout: &[u8], stderr: &[u8], n: usize) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_include_is_pointed_into_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let makefile = dir.path().join("Makefile");
        std::fs::write(
            &makefile,
            "include /usr/src/linux-headers-6.1.0-57-common/Makefile\n",
        )
        .expect("write");
        point_include_at(dir.path(), Path::new("/cache/headers/x/root/usr/src")).expect("points");
        assert_eq!(
            std::fs::read_to_string(&makefile).expect("read"),
            "include /cache/headers/x/root/usr/src/linux-headers-6.1.0-57-common/Makefile\n"
        );
        let err = point_include_at(dir.path(), Path::new("/elsewhere"))
            .expect_err("an include already pointed is a layout the lab does not know");
        assert!(err.to_string().contains("changed their layout"), "{err}");
    }

    #[test]
    fn a_source_without_kbuild_or_makefile_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("warn.c"), "").expect("write");
        let err = check_source(dir.path()).expect_err("no Kbuild");
        assert!(err.to_string().contains("obj-m := NAME.o"), "{err}");
        let err = check_source(&dir.path().join("nope")).expect_err("no directory");
        assert!(err.to_string().contains("no such directory"), "{err}");
    }

    #[test]
    fn modules_come_in_the_order_the_build_lists_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.ko", "a.ko"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        std::fs::write(
            dir.path().join("modules.order"),
            format!("{}/b.ko\na.o\n", dir.path().display()),
        )
        .expect("write");
        let got = built_modules(dir.path(), Path::new("src")).expect("modules");
        assert_eq!(got, [dir.path().join("b.ko"), dir.path().join("a.ko")]);
        std::fs::remove_file(dir.path().join("modules.order")).expect("rm");
        let err = built_modules(dir.path(), Path::new("src")).expect_err("no order, no modules");
        assert!(err.to_string().contains("made no .ko"), "{err}");
    }

    #[test]
    fn a_source_over_the_cap_is_refused_before_anything_is_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = std::fs::File::create(dir.path().join("big")).expect("create");
        big.set_len(MAX_SOURCE_BYTES + 1).expect("sparse file");
        let to = dir.path().join("copy");
        let err = copy_tree(dir.path(), &to).expect_err("over the cap");
        assert!(err.to_string().contains("may hold 64 MiB"), "{err}");
        assert!(!to.exists());
    }
}
