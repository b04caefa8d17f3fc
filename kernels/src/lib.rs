//! Which guest kernels the lab knows ([`manifest`]), how they are fetched from Debian's archive
//! without root ([`deb`]), and what their module trees contain ([`modules`]).
//!
//! The output of this crate is a [`Kernel`]: a bzImage, its module tree, and where it came from.

pub mod archive;
pub mod cache;
pub mod config;
pub mod deb;
pub mod kbuild;
pub mod manifest;
pub mod modules;
pub mod progress;
pub mod tree;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use manifest::{KernelSpec, Manifest};

/// A kernel ready to boot: everything the image builder and the harness need to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// Manifest id (`debian-6.1`), `custom` for a `LAB_KERNEL` override, `tree` for a
    /// `--kernel-tree`.
    pub id: String,
    /// `uname -r` inside the guest.
    pub release: String,
    pub bzimage: PathBuf,
    /// `/lib/modules/<release>` of this kernel.
    pub modules_dir: PathBuf,
    /// Where it came from: a Debian package (name, version, sha256 of the .deb) or a path.
    pub origin: Origin,
}

impl Kernel {
    /// Where what is made for this kernel (images, the module disk) is kept, under `images/`
    /// and `modules/`: the cache itself, shared by every clone, or for a kernel tree's build
    /// the directory of that build, so that they go when it is evicted and never evict what
    /// the cache holds for Debian's kernels.
    pub fn made_in(&self, cache: &Path) -> PathBuf {
        match &self.origin {
            Origin::Tree { .. } => self
                .bzimage
                .parent()
                .map_or_else(|| cache.to_path_buf(), Path::to_path_buf),
            _ => cache.to_path_buf(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Debian {
        package: String,
        version: String,
        sha256: String,
    },
    Override {
        bzimage_sha256: String,
    },
    /// A kernel tree the user built (`--kernel-tree`).
    Tree {
        dir: PathBuf,
        bzimage_sha256: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Debian {
                package,
                version,
                sha256,
            } => write!(f, "{package} {version} sha256:{sha256}"),
            Origin::Override { bzimage_sha256 } => {
                write!(f, "{ENV_KERNEL} sha256:{bzimage_sha256}")
            }
            Origin::Tree {
                dir,
                bzimage_sha256,
            } => write!(f, "the tree {} sha256:{bzimage_sha256}", dir.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("unknown kernel '{id}'; the manifest knows: {known}")]
    UnknownKernel { id: String, known: String },
    #[error("`{tool}` was not found on PATH; {fix}")]
    MissingTool { tool: &'static str, fix: String },
    #[error("{what} failed: {stderr}\n  fix: {fix}")]
    Command {
        what: String,
        stderr: String,
        fix: String,
    },
    #[error("{}: {source}{}", path.display(), io_fix(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the cache {} {why}\n  fix: {fix}", dir.display())]
    Cache {
        dir: PathBuf,
        why: String,
        fix: String,
    },
}

/// Writes `bytes` to a temporary file beside `path`, then renames it: a reader never sees half a
/// file, and two writers of the same content end with one good file. Every cache and report
/// file of the lab is written this way.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Every regular file under `root`, by its path relative to `root`, with its metadata;
/// symlinks and other kinds are left out. The one walk of a tree of files the crates share.
pub fn files_under(root: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.push((rel, meta));
            }
        }
    }
    Ok(out)
}

/// The error of a command a signal ended (Ctrl-C reaches the lab's children too): it says so,
/// rather than blaming what the command was given.
pub(crate) fn stopped(what: &str, status: &std::process::ExitStatus) -> Option<Error> {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal()?;
    Some(Error::Command {
        what: what.into(),
        stderr: format!("it was stopped by signal {signal} (Ctrl-C, or a kill)"),
        fix: "nothing is left half-made: run it again".into(),
    })
}

/// What to do about an I/O error, where there is one thing to do; every crate's `Io` error
/// ends with it, so a full disk reads the same wherever it is met.
pub fn io_fix(e: &std::io::Error) -> &'static str {
    // By kind, not by errno: wrappers such as tempfile's keep the kind and hide the errno.
    match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::StorageFull, _) | (_, Some(libc::EDQUOT)) => {
            "\n  fix: the disk is full: free space on it (`df -h` shows which); `cargo xtask clean-cache` \
             frees the lab's cache, which is made again"
        }
        _ => "",
    }
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

/// Environment overrides: a kernel of the user's own instead of a manifest entry.
pub const ENV_KERNEL: &str = "LAB_KERNEL";
pub const ENV_KERNEL_MODULES: &str = "LAB_KERNEL_MODULES";

/// Provides the kernel `id` (or the manifest default, or the `LAB_KERNEL` override), fetching and
/// unpacking it into `cache` when it is not there yet.
pub fn provide(
    apt: &archive::Apt,
    manifest: &Manifest,
    id: Option<&str>,
    cache: &Path,
) -> Result<Kernel> {
    if let Some(bzimage) = std::env::var_os(ENV_KERNEL) {
        return from_override(
            Path::new(&bzimage),
            std::env::var_os(ENV_KERNEL_MODULES)
                .as_deref()
                .map(Path::new),
        );
    }
    let spec = manifest.get(id)?;
    let unpacked = deb::fetch_and_unpack(apt, &spec.package, &cache.join("kernels"))?;
    let modules_root = unpacked.root.join("lib/modules");
    let release = only_subdir(&modules_root)?;
    let bzimage = unpacked
        .root
        .join("boot")
        .join(format!("vmlinuz-{release}"));
    if !bzimage.is_file() {
        return Err(Error::Invalid(format!(
            "package {} has no {}",
            unpacked.package,
            bzimage.display()
        )));
    }
    Ok(Kernel {
        id: spec.id.clone(),
        modules_dir: modules_root.join(&release),
        release,
        bzimage,
        origin: Origin::Debian {
            package: unpacked.package,
            version: unpacked.version,
            sha256: unpacked.sha256,
        },
    })
}

fn from_override(bzimage: &Path, modules: Option<&Path>) -> Result<Kernel> {
    let modules_dir = modules.ok_or_else(|| {
        Error::Invalid(format!(
            "{ENV_KERNEL} is set but {ENV_KERNEL_MODULES} is not: point it at the kernel's /lib/modules/<release> directory"
        ))
    })?;
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{ENV_KERNEL_MODULES}={} has no release name",
                modules_dir.display()
            ))
        })?;
    let bytes = std::fs::read(bzimage).map_err(|e| Error::io(bzimage, e))?;
    Ok(Kernel {
        id: "custom".into(),
        release,
        bzimage: bzimage.to_path_buf(),
        modules_dir: modules_dir.to_path_buf(),
        origin: Origin::Override {
            bzimage_sha256: deb::sha256_hex(&bytes),
        },
    })
}

fn only_subdir(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => Err(Error::Invalid(format!(
            "expected one kernel release under {}, found {n}",
            dir.display()
        ))),
    }
}
