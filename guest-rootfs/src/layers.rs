//! What a user adds to a guest on top of the base image, as cpio archives appended to it: Linux
//! unpacks concatenated archives in order, and a later entry replaces an earlier one at the same
//! path (so coreutils' `/bin/readlink` replaces busybox's applet link).
//!
//! - [`packages`]: Debian packages and everything they depend on, resolved by apt itself against
//!   the same archive and release as the base image, cached by the hash of what went in.
//! - [`directory`]: a host directory, copied to [`DIR_IN_GUEST`].
//! - [`modules`]: kernel modules built from a user's source, put in [`MODULES_IN_GUEST`].
//!
//! Why a copy and not a share: Debian's cloud kernels have no 9p, and virtiofs would need a
//! `virtiofsd` daemon on the host and shared guest memory. A copied-in archive needs nothing,
//! costs milliseconds for a test directory, and stays valid when a guest is restored from a
//! snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tree::Tree;
use crate::{Error, Result};

/// Where [`directory`] puts the user's files in the guest.
pub const DIR_IN_GUEST: &str = "/lab";
/// Where [`modules`] puts the modules built from a user's source: not under /lib/modules, on
/// which the module disk is mounted.
pub const MODULES_IN_GUEST: &str = "/lab-modules";
/// Bumped whenever a layer's layout changes, so cached layers of the old layout are rebuilt.
const FORMAT: u32 = 2;
/// Package contents nobody needs in a throwaway guest, and files the base image owns.
const LEFT_OUT: [&str; 11] = [
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/locale",
    "/usr/share/lintian",
    "/usr/share/bug",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/init",
];

/// An archive to append to the base image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub path: PathBuf,
    pub size: u64,
    /// What it holds: `name=version` of each package.
    pub contents: Vec<String>,
}

/// The layer holding `wanted` and their dependencies, less the files the base image (at `base`)
/// already holds: those come from the same archive, so they are the same files. Resolving costs
/// apt about two seconds, so the answer is kept under the hash of the request, the base image and
/// apt's package lists: asking again for the same packages is a file lookup.
pub fn packages(
    apt: &lab_kernels::archive::Apt,
    wanted: &[String],
    base: &Path,
    cache: &Path,
) -> Result<Layer> {
    let dir = cache.join("layers");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut names: Vec<String> = wanted
        .iter()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    names.sort();
    names.dedup();
    let request = format!(
        "format {FORMAT}\nwanted {}\nbase {}\nlists {}\n",
        names.join(" "),
        base.display(),
        lists_fingerprint(cache)
    );
    let resolved = dir.join(format!(
        "request-{}.json",
        &lab_kernels::deb::sha256_hex(request.as_bytes())[..16]
    ));
    if let Some(layer) = read_json::<Layer>(&resolved) {
        match std::fs::metadata(&layer.path) {
            Ok(m) if m.len() == layer.size => return Ok(layer),
            Ok(m) => {
                eprintln!(
                    "lab-rootfs: package layer {} is cut short ({} of {} bytes): building it again",
                    layer.path.display(),
                    m.len(),
                    layer.size
                );
                let _ = std::fs::remove_file(&layer.path);
            }
            Err(_) => {}
        }
    }
    let closure = lab_kernels::deb::closure(apt, &names)?;
    let contents: Vec<String> = closure.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let key = lab_kernels::deb::sha256_hex(
        format!(
            "format {FORMAT}\nbase {}\n{}",
            base.display(),
            contents.join("\n")
        )
        .as_bytes(),
    );
    let path = dir.join(format!("packages-{}.cpio", &key[..16]));
    if !path.is_file() {
        let task = lab_kernels::progress::Task::steps(
            &format!("building a layer of {} packages", closure.len()),
            2,
        );
        task.step("their files");
        let unpacked = lab_kernels::deb::fetch_exact(apt, &closure, &cache.join("debs"))?;
        task.step("packing and storing the archive");
        let in_base = archive_files(base)?;
        let skip = |guest: &str| {
            in_base.contains(guest)
                || LEFT_OUT
                    .iter()
                    .any(|l| guest == *l || guest.starts_with(&format!("{l}/")))
        };
        let mut tree = Tree::default();
        for package in &unpacked {
            tree.add_host_dir(&package.root, "", &skip, u64::MAX)
                .map_err(|e| Error::io(&package.root, e))?;
        }
        lab_kernels::write_atomically(&path, &tree.to_cpio().map_err(|e| Error::io(&path, e))?)?;
    }
    let size = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    let layer = Layer {
        path,
        size,
        contents,
    };
    let json = serde_json::to_vec_pretty(&layer).map_err(|e| Error::Missing(e.to_string()))?;
    lab_kernels::write_atomically(&resolved, &json)?;
    Ok(layer)
}

/// The most a user's directory may hold: it is read into the host's memory and then the guest's.
pub const MAX_DIR_BYTES: u64 = 256 << 20;

/// The archive of host directory `dir`, placed at [`DIR_IN_GUEST`]: files with their modes,
/// symlinks as they are, sockets and devices left out; at most [`MAX_DIR_BYTES`], with names
/// that are UTF-8.
pub fn directory(dir: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::Missing(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut tree = Tree::default();
    tree.dir(DIR_IN_GUEST);
    tree.add_host_dir(dir, DIR_IN_GUEST, &|_| false, MAX_DIR_BYTES)
        .map_err(|e| Error::io(dir, e))?;
    tree.to_cpio().map_err(|e| Error::io(dir, e))
}

/// The archive of kernel modules `kos` (`.ko` files on the host), placed in
/// [`MODULES_IN_GUEST`] under their own names; with their paths in the guest, in order.
pub fn modules(kos: &[PathBuf]) -> Result<(Vec<u8>, Vec<String>)> {
    let mut tree = Tree::default();
    tree.dir(MODULES_IN_GUEST);
    let mut in_guest = Vec::new();
    for ko in kos {
        let name = ko
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Missing(format!("{} names no file", ko.display())))?;
        let path = format!("{MODULES_IN_GUEST}/{name}");
        if in_guest.contains(&path) {
            return Err(Error::Missing(format!(
                "two modules are named {name}: give each module source its own module names"
            )));
        }
        let data = std::fs::read(ko).map_err(|e| Error::io(ko, e))?;
        tree.file(&path, data, 0o644);
        in_guest.push(path);
    }
    let archive = tree
        .to_cpio()
        .map_err(|e| Error::io(Path::new(MODULES_IN_GUEST), e))?;
    Ok((archive, in_guest))
}

/// The paths of the regular files in a cpio archive (`/bin/dash`). Links are left out: busybox's
/// applet links must give way to the real programs of a package.
fn archive_files(path: &Path) -> Result<BTreeSet<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rest = std::io::BufReader::new(file);
    let mut names = BTreeSet::new();
    loop {
        let reader = cpio::NewcReader::new(rest).map_err(|e| Error::io(path, e))?;
        let entry = reader.entry();
        if entry.is_trailer() {
            return Ok(names);
        }
        if entry.mode() & 0o170000 == 0o100000 {
            names.insert(format!("/{}", entry.name()));
        }
        rest = reader.skip().map_err(|e| Error::io(path, e))?;
    }
}

/// Names and sizes of apt's package lists: a new download changes it, so a cached resolution is
/// redone against the new lists (and usually finds the same layer).
/// What apt's package lists in `cache` are: a refresh that brings new versions changes it.
pub fn lists_fingerprint(cache: &Path) -> String {
    let lists = cache.join("apt/state/lists");
    let mut parts: Vec<String> = std::fs::read_dir(&lists)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
                .map(|e| {
                    format!(
                        "{}:{}",
                        e.file_name().to_string_lossy(),
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    lab_kernels::deb::sha256_hex(parts.join(",").as_bytes())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_keeps_modes_and_links_under_the_guest_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("net")).expect("mkdir");
        std::fs::write(dir.path().join("net/lib.sh"), b"x=1\n").expect("write");
        std::fs::write(dir.path().join("run.sh"), b"#!/bin/bash\n").expect("write");
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("net/lib.sh", dir.path().join("lib.sh")).expect("link");
        let bytes = directory(dir.path()).expect("archive");
        let mut entries = Vec::new();
        let mut rest = std::io::Cursor::new(bytes);
        loop {
            let reader = cpio::NewcReader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            entries.push((
                reader.entry().name().to_string(),
                reader.entry().mode() & 0o170777,
            ));
            rest = reader.finish().expect("finish");
        }
        assert!(
            entries.contains(&("lab/run.sh".into(), 0o100755)),
            "{entries:?}"
        );
        assert!(
            entries.contains(&("lab/net/lib.sh".into(), 0o100644)),
            "{entries:?}"
        );
        assert!(
            entries.contains(&("lab/lib.sh".into(), 0o120777)),
            "{entries:?}"
        );
    }

    #[test]
    fn names_that_are_not_utf8_are_refused_rather_than_collapsed() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // Both would read as "caf\u{FFFD}" lossily: one name in the archive for two files.
        for raw in [&b"caf\xe9"[..], b"caf\xe8"] {
            std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(raw)), b"x").expect("write");
        }
        let err = directory(dir.path()).expect_err("refused").to_string();
        assert!(err.contains("is not UTF-8") && err.contains("caf"), "{err}");
    }

    #[test]
    fn a_directory_over_the_cap_is_refused_before_it_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = std::fs::File::create(dir.path().join("big.img")).expect("create");
        // Sparse: the size counts, no disk is used.
        big.set_len(MAX_DIR_BYTES + 1).expect("size");
        let err = directory(dir.path()).expect_err("refused").to_string();
        assert!(err.contains("holds more than 256 MiB"), "{err}");
        assert!(err.contains("give a smaller directory"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = directory(Path::new("/nonexistent/selftests"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/nonexistent/selftests"), "{err}");
    }

    #[test]
    fn left_out_paths_match_whole_components() {
        let skip = |g: &str| {
            LEFT_OUT
                .iter()
                .any(|l| g == *l || g.starts_with(&format!("{l}/")))
        };
        assert!(skip("/usr/share/doc/bash/copyright") && skip("/etc/passwd"));
        assert!(!skip("/usr/share/docs") && !skip("/etc/passwd.d"));
    }
}
