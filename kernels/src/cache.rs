//! The lab's cache directory: made by us, marked as ours, and reachable by no other user.
//!
//! Everything the lab deletes in bulk (`cargo xtask clean-cache`, snapshot pruning) lives in a
//! directory that carries our `CACHEDIR.TAG` (the standard tag of <https://bford.info/cachedir/>,
//! which backup tools honour too). A directory without it is not ours: `LAB_CACHE=/mnt/big`
//! must never make `clean-cache` empty a disk. And since the lab boots and runs what the cache
//! holds, a cache that another user could write is refused: whoever can write it would run code
//! as the user.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The standard tag's file name.
pub const TAG: &str = "CACHEDIR.TAG";
/// The standard tag's first line, then ours: the line that says the lab made it.
const TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by macvlan-lab.\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";
/// What says a tag is ours, not another program's.
const OURS: &str = "created by macvlan-lab";

/// How a directory came to be used as a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    /// Only a new or empty directory, or one with our tag (a path the user named).
    Named,
    /// Also an untagged one, which is then tagged: the default location, whose name
    /// (`macvlan-lab`) is ours, made by versions of the lab before the tag.
    Default,
}

/// Opens `dir` as the lab's cache: made (0700) and tagged when missing or empty, used when it
/// carries our tag, refused otherwise; refused too when it is relative, not the user's, or
/// writable by group or others. Returns it.
pub fn open(dir: &Path, adopt: Adopt) -> Result<PathBuf> {
    absolute(dir)?;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(dir, e))?;
            tag(dir)?;
        }
        Err(e) => return Err(Error::io(dir, e)),
        Ok(_) if is_ours(dir) => {}
        Ok(meta) if meta.is_dir() && (is_empty(dir)? || adopt == Adopt::Default) => {
            check_private(dir)?;
            tag(dir)?;
        }
        Ok(meta) if meta.is_dir() => {
            return Err(refused(
                dir,
                "holds files but no CACHEDIR.TAG of macvlan-lab: it is not a cache the lab made, \
                 and `clean-cache` would delete what it holds",
                &format!(
                    "point LAB_CACHE at a new or empty directory, e.g. LAB_CACHE={}",
                    dir.join("macvlan-lab").display()
                ),
            ))
        }
        Ok(_) => {
            return Err(refused(
                dir,
                "is not a directory",
                "point LAB_CACHE at a directory",
            ))
        }
    }
    check_private(dir)?;
    Ok(dir.to_path_buf())
}

/// Fails unless `dir` is a cache the lab made (our tag) and only the user can write it: what
/// must hold before anything in it is deleted in bulk, booted or run.
pub fn check(dir: &Path) -> Result<()> {
    absolute(dir)?;
    if !is_ours(dir) {
        return Err(refused(
            dir,
            "has no CACHEDIR.TAG of macvlan-lab: it is not a cache the lab made",
            "the lab deletes only in directories it made; point LAB_CACHE at a new or empty directory",
        ));
    }
    check_private(dir)
}

/// Whether `dir` carries our tag.
pub fn is_ours(dir: &Path) -> bool {
    // A link named like the tag could point anywhere: only a regular file counts.
    std::fs::symlink_metadata(dir.join(TAG)).is_ok_and(|m| m.is_file())
        && std::fs::read_to_string(dir.join(TAG)).is_ok_and(|t| {
            t.starts_with("Signature: 8a477f597d28d172789f06886806bc55") && t.contains(OURS)
        })
}

/// Marks `dir` as a cache the lab made (also a store inside the cache, such as the snapshots').
pub fn tag(dir: &Path) -> Result<()> {
    if is_ours(dir) {
        return Ok(());
    }
    crate::write_atomically(&dir.join(TAG), TAG_TEXT.as_bytes())
}

/// `dir` is the user's, and neither group nor others may write it.
fn check_private(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(refused(
            dir,
            &format!("belongs to uid {}, not to you (uid {uid})", meta.uid()),
            "use a cache of your own: unset LAB_CACHE, or point it at a directory you made",
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refused(
            dir,
            &format!(
                "is writable by other users (mode {:o}): whoever can write the cache runs code as you",
                meta.mode() & 0o777
            ),
            &format!("`chmod go-w {}`", dir.display()),
        ));
    }
    Ok(())
}

/// What a directory being filled in the cache is named with, before it is renamed into place.
pub const STAGING: &str = ".staging-";
/// A staging directory younger than this is never swept: it may be between its making and its
/// lock.
const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A directory being filled in the cache, to be renamed into place when whole. Its maker holds
/// an exclusive `flock` on it while it lives, so a sweep tells a live one from one a killed run
/// left, across processes, containers and pid namespaces alike; dropped, it is removed.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl Staging {
    /// A new `<parent>/.staging-<what>-XXXXXX`, 0700.
    pub fn new(parent: &Path, what: &str) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(parent, e))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STAGING}{what}-"))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        let lock = std::fs::File::open(dir.path()).map_err(|e| Error::io(dir.path(), e))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(Error::io(dir.path(), std::io::Error::last_os_error()));
        }
        Ok(Self { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// No longer removed when dropped (it was renamed into place).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// Removes the staging directories in `cache` and its subdirectories that nobody holds (left by
/// a killed run); returns them.
pub fn sweep_staging(cache: &Path) -> Vec<PathBuf> {
    let subdirs = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path());
    std::iter::once(cache.to_path_buf())
        .chain(subdirs)
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING))
        .map(|e| e.path())
        .filter(|path| abandoned(path) && std::fs::remove_dir_all(path).is_ok())
        .collect()
}

/// Removes the entries of `dir` that `ours` picks by name, all but the `keep` newest (by time
/// of change): how the cache bounds what each new build adds (a kernel tree rebuilt fifty times
/// keeps the images of its last few builds, not fifty). A guest that has such a file open
/// keeps reading it; a later boot of assets that named it provisions again.
pub fn keep_newest(dir: &Path, keep: usize, ours: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let changed = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH)
    };
    let named = |path: &Path| path.file_name().is_some_and(|n| ours(&n.to_string_lossy()));
    beyond_newest(dir, keep, named, changed)
        .into_iter()
        .filter(|path| {
            if path.is_dir() {
                std::fs::remove_dir_all(path).is_ok()
            } else {
                std::fs::remove_file(path).is_ok()
            }
        })
        .collect()
}

/// The entries of `dir` that `ours` picks, all but the `keep` newest by `time`, oldest last:
/// what a store bounded to `keep` entries removes.
pub fn beyond_newest(
    dir: &Path,
    keep: usize,
    ours: impl Fn(&Path) -> bool,
    time: impl Fn(&Path) -> std::time::SystemTime,
) -> Vec<PathBuf> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|path| ours(path))
        .map(|path| (time(&path), path))
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    entries
        .into_iter()
        .skip(keep)
        .map(|(_, path)| path)
        .collect()
}

/// Whether `name` is `<stem>-<16 hex digits><ext>`: a file the lab keyed by a hash.
pub fn is_keyed(name: &str, stem: &str, ext: &str) -> bool {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(ext))
        .is_some_and(|key| key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether nobody holds the staging directory `path`, and it is past its grace.
fn abandoned(path: &Path) -> bool {
    let old = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STAGING_GRACE);
    let Some(dir) = old.then(|| std::fs::File::open(path).ok()).flatten() else {
        return false;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    // SAFETY: flock on a descriptor we own; the lock goes with it when `dir` drops.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A relative cache would be another directory in every working directory.
fn absolute(dir: &Path) -> Result<()> {
    if dir.is_absolute() {
        return Ok(());
    }
    Err(refused(
        dir,
        "is a relative path",
        "give the cache as an absolute path, e.g. LAB_CACHE=$PWD/cache",
    ))
}

fn is_empty(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .next()
        .is_none())
}

fn refused(dir: &Path, why: &str, fix: &str) -> Error {
    Error::Cache {
        dir: dir.to_path_buf(),
        why: why.to_string(),
        fix: fix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_newest_keyed_files_of_a_stem_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |secs| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let names = [
            ("initramfs-6.1.0-1-0000000000000001.cpio", 1),
            ("initramfs-6.1.0-1-0000000000000002.cpio", 2),
            ("initramfs-6.1.0-1-0000000000000003.cpio", 3),
            ("initramfs-6.1.0-1-cloud-0000000000000004.cpio", 0),
            ("initramfs-6.1.0-1-photo.cpio", 0),
        ];
        for (name, secs) in names {
            let file = std::fs::File::create(dir.path().join(name)).expect("create");
            file.set_modified(at(secs)).expect("mtime");
        }
        let removed = super::keep_newest(dir.path(), 2, |n| {
            super::is_keyed(n, "initramfs-6.1.0-1", ".cpio")
        });
        assert_eq!(
            removed,
            [dir.path().join("initramfs-6.1.0-1-0000000000000001.cpio")]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left.len(),
            4,
            "another release's and a stranger's stay: {left:?}"
        );
    }

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_or_empty_directory_is_made_private_and_tagged() {
        let top = tempfile::tempdir().expect("tempdir");
        let new = top.path().join("a/b/cache");
        open(&new, Adopt::Named).expect("new");
        assert!(is_ours(&new));
        let mode = std::fs::metadata(&new).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700, "mode {mode:o}");
        let empty = top.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        open(&empty, Adopt::Named).expect("empty");
        assert!(is_ours(&empty));
        check(&empty).expect("ours now");
    }

    #[test]
    fn a_directory_with_files_but_no_tag_of_ours_is_refused_and_left_alone() {
        let big = tempfile::tempdir().expect("tempdir");
        std::fs::write(big.path().join("thesis.tex"), b"years of work").expect("write");
        let err = open(big.path(), Adopt::Named).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("no CACHEDIR.TAG of macvlan-lab"), "{text}");
        assert!(text.contains("macvlan-lab"), "names a fix: {text}");
        assert!(
            !big.path().join(TAG).exists(),
            "not tagged behind the user's back"
        );
        assert!(check(big.path()).is_err());
        // Another program's tag is not ours either.
        std::fs::write(
            big.path().join(TAG),
            b"Signature: 8a477f597d28d172789f06886806bc55\n# made by cargo\n",
        )
        .expect("tag");
        assert!(open(big.path(), Adopt::Named).is_err());
    }

    #[test]
    fn the_default_location_of_an_older_lab_is_adopted() {
        let top = tempfile::tempdir().expect("tempdir");
        let old = top.path().join("macvlan-lab");
        std::fs::create_dir(&old).expect("mkdir");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(old.join("snapshots")).expect("mkdir");
        open(&old, Adopt::Default).expect("adopted");
        assert!(is_ours(&old));
    }

    fn age(path: &Path) {
        let past = std::time::SystemTime::now() - STAGING_GRACE * 2;
        std::fs::File::open(path)
            .expect("open")
            .set_modified(past)
            .expect("mtime");
    }

    #[test]
    fn staging_left_by_a_killed_run_is_swept_and_a_live_one_is_not() {
        let cache = tempfile::tempdir().expect("tempdir");
        let live = Staging::new(&cache.path().join("debs"), "live").expect("staging");
        age(live.path());
        // What a SIGKILL leaves: the directory, and no process holding it.
        let dead = Staging::new(&cache.path().join("debs"), "dead").expect("staging");
        let dead_path = dead.keep();
        age(&dead_path);
        let young = Staging::new(cache.path(), "young").expect("staging").keep();
        let swept = sweep_staging(cache.path());
        assert_eq!(swept, std::slice::from_ref(&dead_path));
        assert!(!dead_path.exists());
        assert!(live.path().exists(), "held by its maker");
        assert!(young.exists(), "within its grace");
    }

    #[test]
    fn a_relative_or_shared_cache_is_refused() {
        let err = open(Path::new("cache"), Adopt::Named).expect_err("relative");
        assert!(err.to_string().contains("relative"), "{err}");
        let top = tempfile::tempdir().expect("tempdir");
        let shared = top.path().join("shared");
        open(&shared, Adopt::Named).expect("made");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = open(&shared, Adopt::Named).expect_err("world-writable");
        assert!(
            err.to_string()
                .contains("writable by other users (mode 777)"),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        assert!(check(&shared).is_err());
    }
}
