//! Snapshots: the first guest of a shape boots its kernel; every later one restores QEMU's saved
//! state of it, ready in a fraction of the time (`cargo xtask bench` measures both).
//!
//! A *shape* is everything the saved state depends on: QEMU's binary, the accelerator, the
//! machine and device arguments, memory and CPUs, the kernel command line (less the hostname),
//! and the identity of every file the guest boots from (kernel, image, layers, module disk). Its
//! hash names the snapshot's directory in the store, `<store>/<key>/{memory, state, meta.json}`.
//!
//! - **Memory apart from state**: the guest that takes a snapshot boots with its memory in a
//!   memfd of ours (`memory-backend-file,share=on` on `/proc/<pid>/fd/<n>`); `stop` and
//!   `migrate "exec:cat > state"` with `x-ignore-shared` then save only device state
//!   (~70 KiB), and that QEMU quits. Its memory's non-zero pages, copied into a sparse file,
//!   are the snapshot's memory. A memfd is gone with the last process holding it: a killed
//!   run leaves no guest memory behind.
//! - **Restored guests share pages**: each maps `memory` copy-on-write (`share=off`) and loads
//!   `state`. Eight guests of one shape read one copy of it from the page cache, and each owns
//!   only the pages it writes; nothing is copied through a pipe at start.
//! - **Race-free**: a snapshot is written into a directory of its own and renamed into place
//!   whole; a file lock per shape makes guests of one shape, in any process, wait for the one
//!   taking it instead of each booting cold.
//! - **Checked**: `meta.json` records the shape's key and the state's size, so a file cut short
//!   (a killed run, a full disk) or made for another shape is found, named, and taken again;
//!   `memory` is never written after it is published, only mapped privately. A
//!   restore that fails anyway falls back to a cold boot, which takes the snapshot anew; the
//!   guest's [`BootKind`] says which happened.
//! - **Clones are not twins**: a restored guest gets its own MAC, hostname, wall clock and fresh
//!   kernel randomness at once ([`lab_proto::Op::Resume`]).
//!
//! This module is the store alone: a shape's [`key`], [`find`] (is its snapshot whole?), a
//! [`Taking`] (save a guest and publish it), [`prune`] and the per-shape [`lock`]. Whether a
//! guest restores or boots cold is decided above it, in [`crate::boot`]; nothing here boots.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{InitrdLayer, VmConfig};
use crate::error::{Error, Result};
use crate::qemu::{self, StatePaths};
use crate::vm::Vm;

/// Bumped when what a snapshot holds or how it is keyed changes.
const FORMAT: u32 = 2;
const STATE: &str = "state";
const MEMORY: &str = "memory";
const META: &str = "meta.json";
/// Saving a guest's device state takes milliseconds; a loaded host may take far longer.
const SAVE_WITHIN: Duration = Duration::from_secs(120);
/// Snapshots a store keeps (70–270 MiB of memory each on disk); the least recently restored go
/// first. The lab and the suite on both kernels use about 14 shapes.
pub const KEEP: usize = 16;
/// Touched at every restore: its modification time says when the snapshot was last used.
const USED: &str = "used";
/// Hex digits of the shape's key that name its directory.
const SHORT_KEY: usize = 24;

/// What `meta.json` says of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The shape's key: a snapshot found under another shape's name is not used.
    pub key: String,
    /// Bytes in `state`: fewer means the file was cut short.
    pub size: u64,
    /// sha256 of `state`, which QEMU parses when it restores: a state changed since it was
    /// saved is not fed to QEMU. (`memory` is only mapped as the guest's RAM.)
    #[serde(default)]
    pub state_sha256: String,
    /// Bytes in `memory` (the guest's memory size; zero pages are holes).
    pub memory: u64,
    /// Unique per snapshot taken, so a guest that failed to restore one does not throw away
    /// another that replaced it in the meantime.
    pub id: String,
    pub taken_from: String,
    pub qemu: String,
}

/// A snapshot that looked whole when found.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Snapshot {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY)
    }
}

/// What the store holds for a shape.
pub(crate) enum Found {
    Ready(Snapshot),
    Missing,
    /// There, but not usable: why.
    Broken(String),
}

/// Removes all but the `keep` most recently used snapshots of `store`. A guest restoring one
/// at that moment keeps reading it (its file stays open); one about to start on it falls back
/// to a cold boot.
pub(crate) fn prune(store: &Path, keep: usize) {
    // The store is any path a library user configured: only one the lab made (tagged when
    // [`lock`] made it) is pruned, and in it only what is named like a snapshot.
    if !lab_kernels::cache::is_ours(store) {
        tracing::warn!(
            "not pruning {}: it has no CACHEDIR.TAG of macvlan-lab, so it is not a store the lab made",
            store.display()
        );
        return;
    }
    let last_use = |dir: &Path| {
        [dir.join(USED), dir.join(META)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(UNIX_EPOCH)
    };
    let snapshot = |p: &Path| {
        p.is_dir()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_short_key)
    };
    for dir in lab_kernels::cache::beyond_newest(store, keep, snapshot, last_use) {
        tracing::info!(
            "removing snapshot {}: the store keeps the {keep} most recently used",
            dir.display()
        );
        discard(&dir);
        let _ = std::fs::remove_file(dir.with_extension("lock"));
    }
}

/// Whether `name` is what a snapshot's directory is named: a shape's short key.
fn is_short_key(name: &str) -> bool {
    name.len() == SHORT_KEY
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The hash of everything a saved state depends on (see the module's documentation).
pub fn key(cfg: &VmConfig) -> Result<String> {
    let binary = qemu::find_binary(cfg.machine.qemu.as_deref())?;
    let mut text = format!(
        "format {FORMAT}\nqemu {}\naccel {}\n",
        identity(&binary)?,
        cfg.machine.accel
    );
    // The command line of a guest of this shape who is no one in particular: what is each
    // guest's own (name, MAC, sockets, the exact TSC rate) is in its `Instance`, which the
    // type system makes every field of a configuration choose (`VmConfig::split`).
    let (shape, _) = cfg.split();
    for arg in qemu::args(&shape.anyone(), &StatePaths::in_dir(Path::new("/state"))) {
        text.push_str(&arg.to_string_lossy());
        text.push('\n');
    }
    if cfg.boot.inner_template {
        text.push_str("inner template\n");
    }
    for file in [&cfg.boot.kernel, &cfg.boot.initrd]
        .into_iter()
        .chain(cfg.boot.modules_disk.as_ref())
    {
        text.push_str(&format!("file {}\n", identity(file)?));
    }
    for layer in &cfg.boot.layers {
        match layer {
            InitrdLayer::File(path) => text.push_str(&format!("layer {}\n", identity(path)?)),
            InitrdLayer::Bytes(bytes) => text.push_str(&format!(
                "layer sha256 {}\n",
                lab_kernels::deb::sha256_hex(bytes)
            )),
        }
    }
    Ok(lab_kernels::deb::sha256_hex(text.as_bytes()))
}

/// A file's path, size and modification time: what changes when a cache file or a binary is
/// replaced (they are never edited in place), without reading it.
pub fn identity(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {} {mtime}", path.display(), meta.len()))
}

/// Whether `dir` holds a whole snapshot of the shape `key`; if it is there but unusable, why.
pub(crate) fn find(dir: &Path, key: &str) -> Found {
    let meta_path = dir.join(META);
    let text = match std::fs::read(&meta_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
            return Found::Missing
        }
        Err(e) => {
            return Found::Broken(format!(
                "snapshot {} has no readable {META} ({e})",
                dir.display()
            ))
        }
    };
    let meta: Meta = match serde_json::from_slice(&text) {
        Ok(meta) => meta,
        Err(e) => {
            return Found::Broken(format!(
                "snapshot {} has a damaged {META} ({e})",
                dir.display()
            ))
        }
    };
    if meta.key != key {
        return Found::Broken(format!(
            "snapshot {} was made for another guest shape",
            dir.display()
        ));
    }
    for (file, size) in [(STATE, meta.size), (MEMORY, meta.memory)] {
        let path = dir.join(file);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == size => {}
            Ok(m) => {
                return Found::Broken(format!(
                    "snapshot {} is cut short: {} of {size} bytes",
                    path.display(),
                    m.len()
                ))
            }
            Err(e) => {
                return Found::Broken(format!(
                    "snapshot {} is missing its {file} ({e})",
                    dir.display()
                ))
            }
        }
    }
    if meta.state_sha256.is_empty() {
        return Found::Broken(format!(
            "snapshot {} was taken by an older lab, without its state's hash",
            dir.display()
        ));
    }
    // About 70 KiB: hashing it costs well under a millisecond.
    let state = dir.join(STATE);
    match std::fs::read(&state) {
        Ok(bytes) if lab_kernels::deb::sha256_hex(&bytes) == meta.state_sha256 => {}
        Ok(_) => {
            return Found::Broken(format!(
                "snapshot {} is not what was saved (its sha256 differs)",
                state.display()
            ))
        }
        Err(e) => {
            return Found::Broken(format!("snapshot {} cannot be read ({e})", state.display()))
        }
    }
    Found::Ready(Snapshot {
        dir: dir.to_path_buf(),
        meta,
    })
}

/// Removes a snapshot (or a half-made one).
pub(crate) fn discard(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Why `store` cannot take a snapshot of a guest of `memory_mib` now, if it cannot: its memory
/// file may need that much (its non-zero pages, often a third). Checked first, so that a full
/// disk costs a cold boot and a warning, not a boot, a failed copy and a second boot.
pub(crate) fn no_room(store: &Path, memory_mib: u32) -> Option<String> {
    let stat = nix::sys::statvfs::statvfs(store).ok()?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let need = u64::from(memory_mib) << 20;
    (free < need).then(|| {
        format!(
            "{} has {} MiB free, and a snapshot of this guest may need {memory_mib} MiB",
            store.display(),
            free >> 20
        )
    })
}

/// The directory a shape's snapshot for `key` lives in.
pub(crate) fn dir_of(store: &Path, key: &str) -> PathBuf {
    store.join(&key[..SHORT_KEY])
}

/// Records that `snap` was just used, for [`prune`].
pub(crate) fn mark_used(snap: &Snapshot) {
    let _ = std::fs::write(snap.dir.join(USED), b"");
}

/// A snapshot being taken: a private directory in the store and the memory the guest boots
/// on. The guest is booted by the caller on [`Taking::memory`]; then [`Taking::save`] and
/// [`Taking::publish`] make it the shape's snapshot. Dropped unpublished, it leaves nothing.
pub(crate) struct Taking {
    dir: tempfile::TempDir,
    memory: GuestMemory,
    key: String,
}

impl Taking {
    /// Starts taking the snapshot of shape `key` for guest `name`; hold the shape's [`lock`].
    pub(crate) fn begin(store: &Path, key: &str, name: &str) -> Result<Self> {
        // Only the lock's holder takes this shape's snapshot: one in the making now was left
        // by a process killed while taking it.
        remove_takings(store, &key[..SHORT_KEY]);
        let dir = tempfile::Builder::new()
            .prefix(&taking_prefix(&key[..SHORT_KEY]))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(store)
            .map_err(|e| Error::io(store, e))?;
        Ok(Self {
            dir,
            memory: GuestMemory::new(name)?,
            key: key.to_string(),
        })
    }

    /// The file the guest's memory must live in ([`crate::qemu::Memory::SavedTo`]).
    pub(crate) fn memory(&self) -> &Path {
        &self.memory.path
    }

    /// Saves the device state of `vm` (just booted cold on [`Taking::memory`], nothing run in
    /// it yet), and leaves it stopped: its memory is then the rest of the snapshot.
    pub(crate) async fn save(&self, vm: &Vm) -> Result<()> {
        // The page cache (module disk reads) is not worth saving; with `init_on_free` what is
        // dropped becomes zero pages, which the memory file leaves out as holes.
        let _ = vm
            .run(crate::cmd::Cmd::script(
                "sync; echo 3 > /proc/sys/vm/drop_caches",
            ))
            .await;
        tracing::debug!("{}: page cache dropped", vm.name());
        let qmp = vm.qmp();
        qmp.stop()
            .await
            .map_err(|e| vm.error(crate::Phase::Qmp, e.to_string()))?;
        qmp.save_state(&self.dir.path().join(STATE), SAVE_WITHIN)
            .await
            .map_err(|e| vm.error(crate::Phase::Qmp, e.to_string()))
    }

    /// Copies the saved guest's memory (its QEMU has quit) and makes the whole the shape's
    /// snapshot at `dir`, then prunes the store to its [`KEEP`] most recently used.
    pub(crate) fn publish(
        self,
        store: &Path,
        taken_from: String,
        qemu: String,
    ) -> Result<Snapshot> {
        let memory_file = self.dir.path().join(MEMORY);
        self.memory
            .copy_sparse(&memory_file)
            .map_err(|e| Error::io(&memory_file, e))?;
        let snap = publish(
            self.dir,
            &dir_of(store, &self.key),
            &self.key,
            taken_from,
            qemu,
        )?;
        prune(store, KEEP);
        Ok(snap)
    }
}

/// A guest's memory while it boots to be snapshotted: a memfd that QEMU opens by its
/// `/proc/<our pid>/fd/<n>` path, as a file it shares (QEMU sizes nothing: [`crate::launch`]
/// does). Our descriptor outlives QEMU, so the memory can be read once QEMU has quit.
struct GuestMemory {
    fd: std::fs::File,
    path: PathBuf,
}

impl GuestMemory {
    fn new(name: &str) -> Result<Self> {
        let flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
        let fd =
            nix::sys::memfd::memfd_create(format!("macvlan-lab-{name}-memory").as_str(), flags)
                .map_err(|e| Error::io(Path::new("memfd"), e.into()))?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        Ok(Self {
            fd: fd.into(),
            path,
        })
    }

    /// Writes the memory's non-zero pages into a new file at `to`, of the memory's length: the
    /// zero pages stay holes, which read as zeros and take no disk or page cache.
    fn copy_sparse(&self, to: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        const PAGE: usize = 4096;
        static ZERO: [u8; PAGE] = [0; PAGE];
        let len = self.fd.metadata()?.len();
        let out = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            0o600,
        )
        .open(to)?;
        out.set_len(len)?;
        let mut chunk = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < len {
            let n = chunk.len().min((len - offset) as usize);
            self.fd.read_exact_at(&mut chunk[..n], offset)?;
            for (i, page) in chunk[..n].chunks(PAGE).enumerate() {
                // A slice comparison is a `memcmp`: fast in a debug build too.
                if page != &ZERO[..page.len()] {
                    out.write_all_at(page, offset + (i * PAGE) as u64)?;
                }
            }
            offset += n as u64;
        }
        // On disk before `meta.json` says the snapshot is whole.
        out.sync_all()
    }
}

/// Makes the saved `taking` directory the shape's snapshot at `dir`: `meta.json` written last,
/// and the directory renamed into place whole.
fn publish(
    taking: tempfile::TempDir,
    dir: &Path,
    key: &str,
    taken_from: String,
    qemu: String,
) -> Result<Snapshot> {
    let state = taking.path().join(STATE);
    let memory = taking.path().join(MEMORY);
    let state_bytes = std::fs::read(&state).map_err(|e| Error::io(&state, e))?;
    let memory_size = std::fs::metadata(&memory)
        .map_err(|e| Error::io(&memory, e))?
        .len();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let meta = Meta {
        key: key.to_string(),
        size: state_bytes.len() as u64,
        state_sha256: lab_kernels::deb::sha256_hex(&state_bytes),
        memory: memory_size,
        id: format!("{stamp}-{}", std::process::id()),
        taken_from,
        qemu,
    };
    let meta_path = taking.path().join(META);
    std::fs::write(
        &meta_path,
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&meta_path, e))?;
    make_private(taking.path())?;
    // Whole or not at all. Another process holding no lock (an older run) may have put one
    // there first: then that one stays, and ours goes with the temp dir.
    if std::fs::rename(taking.path(), dir).is_ok() {
        let _ = taking.keep();
        return Ok(Snapshot {
            dir: dir.to_path_buf(),
            meta,
        });
    }
    match find(dir, key) {
        Found::Ready(snap) => Ok(snap),
        Found::Broken(why) => Err(Error::invalid(
            why,
            "remove the directory; the next guest takes the snapshot again",
        )),
        Found::Missing => Err(Error::io(
            dir,
            std::io::Error::other("the snapshot could not be moved into place"),
        )),
    }
}

/// What the directory a snapshot is made in is named with: its shape's short key.
fn taking_prefix(short_key: &str) -> String {
    format!(".taking-{short_key}-")
}

/// Removes the half-made snapshots of a shape; call with its lock held.
fn remove_takings(store: &Path, short_key: &str) {
    let prefix = taking_prefix(short_key);
    for entry in std::fs::read_dir(store).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(
                "removing {}: a snapshot left half-made by a killed run",
                entry.path().display()
            );
            discard(&entry.path());
        }
    }
}

/// Bytes a file takes on disk (holes take none).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Makes `store` (0700: snapshots hold guest memory, with the kernel's secrets in it) and tags
/// it as the lab's, so that [`prune`] may delete in it.
fn make_store(store: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)
        .map_err(|e| Error::io(store, e))?;
    // A store made by an older lab (0755) is made private too.
    std::fs::set_permissions(store, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| Error::io(store, e))?;
    Ok(lab_kernels::cache::tag(store).map_err(lab_rootfs::Error::from)?)
}

/// Makes what a snapshot holds readable by the user alone: the guest's memory holds its
/// kernel's secrets (KASLR offset, hash and syncookie keys), and QEMU's `cat > state` and
/// [`GuestMemory::copy_sparse`] create files by the umask.
fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))
    };
    set(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        set(&entry.path(), 0o600)?;
    }
    Ok(())
}

/// The per-shape lock: one guest at a time takes (or replaces) a shape's snapshot, across
/// threads and processes. Released when dropped.
pub(crate) async fn lock(store: &Path, key: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    make_store(store)?;
    let path = store.join(format!("{}.lock", &key[..SHORT_KEY]));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let locked = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
    })
    .await;
    match locked {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err((_, errno))) => Err(Error::io(&path, errno.into())),
        Err(e) => Err(Error::io(&path, std::io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_cut_short_or_of_another_shape_is_named_and_not_used() {
        let store = tempfile::tempdir().expect("tempdir");
        let dir = store.path().join("shape");
        assert!(matches!(find(&dir, "k"), Found::Missing));
        std::fs::create_dir(&dir).expect("mkdir");
        let meta = Meta {
            key: "k".into(),
            size: 10,
            state_sha256: lab_kernels::deb::sha256_hex(&[0u8; 10]),
            memory: 8,
            id: "1".into(),
            taken_from: "host1".into(),
            qemu: "7.2.22".into(),
        };
        std::fs::write(dir.join(META), serde_json::to_vec(&meta).expect("json"))
            .expect("write meta");
        std::fs::write(dir.join(STATE), [0u8; 10]).expect("write state");
        assert!(
            matches!(find(&dir, "k"), Found::Broken(why) if why.contains("missing its memory"))
        );
        std::fs::write(dir.join(MEMORY), [0u8; 8]).expect("write memory");
        assert!(matches!(find(&dir, "k"), Found::Ready(_)));
        match find(&dir, "other") {
            Found::Broken(why) => assert!(why.contains("another guest shape"), "{why}"),
            _ => panic!("a snapshot of another shape was taken as good"),
        }
        std::fs::write(dir.join(STATE), [1u8; 10]).expect("changed, same size");
        match find(&dir, "k") {
            Found::Broken(why) => assert!(why.contains("not what was saved"), "{why}"),
            _ => panic!("a state changed since it was saved was taken as good"),
        }
        std::fs::write(dir.join(STATE), [0u8; 4]).expect("cut short");
        match find(&dir, "k") {
            Found::Broken(why) => assert!(
                why.contains("cut short: 4 of 10 bytes") && why.contains("state"),
                "{why}"
            ),
            _ => panic!("a cut-short snapshot was taken as good"),
        }
        std::fs::write(dir.join(META), b"{").expect("damage meta");
        assert!(matches!(find(&dir, "k"), Found::Broken(why) if why.contains("damaged")));
    }

    #[test]
    fn pruning_keeps_the_most_recently_used() {
        let store = tempfile::tempdir().expect("tempdir");
        make_store(store.path()).expect("store");
        let [old, used, new] = ["a".repeat(24), "b".repeat(24), "c".repeat(24)];
        for (i, name) in [&old, &used, &new].iter().enumerate() {
            let dir = store.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(dir.join(META), b"{}").expect("meta");
            let at = std::fs::File::options()
                .write(true)
                .open(dir.join(META))
                .expect("open");
            at.set_modified(UNIX_EPOCH + Duration::from_secs(1000 + i as u64))
                .expect("mtime");
        }
        std::fs::write(store.path().join(&old).join(USED), b"").expect("restored just now");
        std::fs::create_dir(store.path().join(".taking-x")).expect("in the making");
        std::fs::create_dir(store.path().join("photos")).expect("not a snapshot");
        prune(store.path(), 1);
        let left = names_in(store.path());
        assert_eq!(left, [".taking-x", lab_kernels::cache::TAG, &old, "photos"]);
    }

    #[test]
    fn a_store_the_lab_did_not_make_is_not_pruned() {
        let store = tempfile::tempdir().expect("tempdir");
        for name in ["a".repeat(24), "b".repeat(24), "music".into()] {
            std::fs::create_dir(store.path().join(name)).expect("mkdir");
        }
        prune(store.path(), 0);
        assert_eq!(
            names_in(store.path()).len(),
            3,
            "nothing removed from an untagged store"
        );
    }

    #[test]
    fn a_published_snapshot_is_readable_by_the_user_alone() {
        use std::os::unix::fs::PermissionsExt;
        let store = tempfile::tempdir().expect("tempdir");
        make_store(store.path()).expect("store");
        let taking = tempfile::Builder::new()
            .tempdir_in(store.path())
            .expect("taking");
        std::fs::set_permissions(taking.path(), std::fs::Permissions::from_mode(0o755))
            .expect("as a umask of 022 makes it");
        std::fs::write(taking.path().join(STATE), b"state").expect("state");
        std::fs::write(taking.path().join(MEMORY), b"memory").expect("memory");
        let dir = store.path().join("d".repeat(24));
        let snap = publish(taking, &dir, "k", "host1".into(), "10.0".into()).expect("publish");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o700, "the store");
        assert_eq!(mode(&snap.dir), 0o700, "the snapshot's directory");
        for file in [STATE, MEMORY, META] {
            assert_eq!(mode(&snap.dir.join(file)), 0o600, "{file}");
        }
    }

    #[test]
    fn half_made_snapshots_of_a_shape_are_removed_and_no_others() {
        let store = tempfile::tempdir().expect("tempdir");
        for name in [".taking-aaaa-1", ".taking-aaaa-2", ".taking-bbbb-1", "aaaa"] {
            std::fs::create_dir(store.path().join(name)).expect("mkdir");
        }
        std::fs::write(store.path().join(".taking-aaaa-1").join(MEMORY), [1u8; 16])
            .expect("memory");
        remove_takings(store.path(), "aaaa");
        let left = names_in(store.path());
        assert_eq!(
            left,
            [".taking-bbbb-1", "aaaa"],
            "another shape's, being taken under its own lock, stays"
        );
    }

    #[test]
    fn guest_memory_is_copied_with_its_zero_pages_as_holes() {
        use std::os::unix::fs::FileExt;
        let memory = GuestMemory::new("test").expect("memfd");
        // What QEMU does: open the memfd by its path.
        let by_path = std::fs::OpenOptions::new()
            .write(true)
            .open(&memory.path)
            .expect("open by path");
        by_path.set_len(8 << 20).expect("size");
        by_path
            .write_all_at(&[1], 5 * 4096 + 7)
            .expect("a page in use at the start");
        by_path
            .write_all_at(&[2], (8 << 20) - 1)
            .expect("and one at the end");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join(MEMORY);
        memory.copy_sparse(&copy).expect("copy");
        let data = std::fs::read(&copy).expect("read");
        assert_eq!(data.len(), 8 << 20);
        assert_eq!((data[5 * 4096 + 7], data[(8 << 20) - 1]), (1, 2));
        assert_eq!(
            data.iter().filter(|b| **b != 0).count(),
            2,
            "holes read as zeros"
        );
        assert!(
            disk_usage(&copy) < 1 << 20,
            "{} bytes on disk for two pages in use",
            disk_usage(&copy)
        );
    }
}
