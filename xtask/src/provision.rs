//! Everything a guest needs, made ready without root: the static agent, the kernel and the image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use lab_harness::assets::{Assets, ImageAsset, KernelAsset};
use lab_kernels::{Manifest, Origin};

use crate::{lab_dir, workspace_root};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProvisionArgs {
    /// Kernel id from kernels/kernels.toml (default: the manifest's default).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Boot the kernel built in this Linux tree (its arch/x86/boot/bzImage), with its modules
    /// (`make modules_install` into the lab's cache); modules of --module-source are built in
    /// it. `cargo xtask kernel-config` prints the options the lab needs.
    #[arg(
        long,
        value_name = "DIR",
        env = "LAB_KERNEL_TREE",
        conflicts_with = "kernel"
    )]
    pub kernel_tree: Option<PathBuf>,
    /// Made beside the run's kernel (a kernel a lab's host names): `assets.json` stays
    /// whichever kernel the run boots.
    #[arg(skip)]
    pub beside: bool,
}

impl ProvisionArgs {
    /// The id of the kernel these arguments pick, whose assets are `assets-<id>.json`.
    fn id(&self, manifest: &Manifest) -> String {
        if self.kernel_tree.is_some() {
            "tree".into()
        } else if std::env::var_os(lab_kernels::ENV_KERNEL).is_some() {
            "custom".into()
        } else {
            self.kernel
                .clone()
                .unwrap_or_else(|| manifest.default.clone())
        }
    }
}

/// The agent is built for an explicit target so that +crt-static applies to it alone, not to
/// build scripts and proc macros of the host build.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The assets file named by `LAB_ASSETS` (as `cargo xtask test` sets for its tests), or a fresh
/// provisioning's; a kernel asked for by name or tree is provisioned whatever `LAB_ASSETS` says.
pub fn assets_path(args: &ProvisionArgs) -> anyhow::Result<PathBuf> {
    match std::env::var_os(lab_harness::assets::ENV_ASSETS) {
        Some(path) if args.kernel.is_none() && args.kernel_tree.is_none() => {
            Ok(PathBuf::from(path))
        }
        _ => run(args),
    }
}

/// Bumped when what provisioning makes changes in a way its inputs (below) do not show.
const STAMP_FORMAT: u32 = 1;

/// Provisions and returns the path of the assets file. When nothing it is made from changed
/// since the last time (the stamp of its inputs matches, and every file it made is there), that
/// is a few file reads.
pub fn run(args: &ProvisionArgs) -> anyhow::Result<PathBuf> {
    let cache = crate::cache_dir()?;
    let agent = build_agent(&workspace_root())?;
    let manifest = Manifest::load(&Manifest::bundled_path())?;
    let id = args.id(&manifest);
    let tree = args.kernel_tree.as_deref();
    let stamp_path = lab_dir().join(format!("assets-{id}.stamp"));
    let made = warm(
        &id,
        &stamp(&id, &agent, &cache, tree)?,
        &stamp_path,
        args.beside,
    )?;
    // Warm, on lists fetched within the day: no apt tool runs (pointing apt at the archive
    // asks the host's apt for its proxy, and fetches lists a day old).
    let fresh = lab_kernels::archive::lists_fresh(&cache);
    if let (Some(path), true) = (&made, fresh) {
        return Ok(path.clone());
    }
    let archive = lab_kernels::archive::use_archive(&manifest.archive, &cache);
    let apt = match (archive, made) {
        (Ok(apt), _) => apt,
        // Offline with everything made: lists a day old are no reason to stop.
        (Err(e), Some(path)) => {
            crate::ui::status!(
                "xtask: Debian's package lists are over a day old and could not be fetched \
                 again; going on with the assets already made\n  {e}"
            );
            return Ok(path);
        }
        (Err(e), None) => return Err(e).context("pointing apt at Debian's archive"),
    };
    // The lists just fetched are in the stamp: unchanged, the assets are still warm.
    let stamp = stamp(&id, &agent, &cache, tree)?;
    if let Some(path) = warm(&id, &stamp, &stamp_path, args.beside)? {
        return Ok(path);
    }
    let path = provision(&apt, args, &manifest, &agent, &cache)?;
    std::fs::write(&stamp_path, &stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(path)
}

/// The assets of kernel `id`, made the default ones, when `stamp` says nothing changed since
/// they were made and they are all still there.
fn warm(
    id: &str,
    stamp: &str,
    stamp_path: &std::path::Path,
    beside: bool,
) -> anyhow::Result<Option<PathBuf>> {
    if std::fs::read_to_string(stamp_path).ok().as_deref() != Some(stamp) {
        return Ok(None);
    }
    let Ok(assets) = Assets::load(&lab_dir().join(format!("assets-{id}.json"))) else {
        return Ok(None);
    };
    let sized =
        |path: &std::path::Path, size: u64| std::fs::metadata(path).is_ok_and(|m| m.len() == size);
    let whole = assets.kernel.bzimage.is_file()
        && sized(&assets.image.path, assets.image.size)
        && assets.modules_disk.as_ref().is_none_or(|d| d.is_file())
        && assets.nest.as_ref().is_none_or(|n| sized(&n.path, n.size));
    if !whole || !booted_unchanged(id)? {
        return Ok(None);
    }
    let path = publish(&assets, beside)?;
    crate::ui::status!("xtask: kernel {} ({}) and its images are up to date (nothing they are made from changed); assets in {}", assets.kernel.release, assets.kernel.origin, path.display());
    Ok(Some(path))
}

/// Saves `assets` as `assets-<id>.json` and returns the path runs use: `assets.json`, made
/// the default, for a manifest kernel; `assets-tree.json` for a tree, since the tests and the
/// next plain `lab run` boot the manifest's kernels unless asked for the tree again; only
/// `assets-<id>.json` when made `beside` the run's.
fn publish(assets: &Assets, beside: bool) -> anyhow::Result<PathBuf> {
    let own = lab_dir().join(format!("assets-{}.json", assets.kernel.id));
    assets.save(&own)?;
    if beside || matches!(assets.kernel.origin, Origin::Tree { .. }) {
        return Ok(own);
    }
    let path = lab_dir().join("assets.json");
    assets.save(&path)?;
    Ok(path)
}

/// The hash of what provisioning kernel `id` is made from: the manifest and the recipe, the
/// agent and this program (whose code builds the images), the host's QEMU (the nest image holds
/// it), a `LAB_KERNEL` override, a kernel tree's build (its bzImage and modules: the
/// developer's next `make` changes them), and apt's package lists.
fn stamp(
    id: &str,
    agent: &std::path::Path,
    cache: &std::path::Path,
    tree: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let identity =
        |path: &std::path::Path| lab_harness::snapshot::identity(path).map_err(anyhow::Error::from);
    let mut text = format!("format {STAMP_FORMAT}\nkernel {id}\n");
    for file in [Manifest::bundled_path(), lab_rootfs::Recipe::bundled_path()] {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        text.push_str(&format!(
            "{} {}\n",
            file.display(),
            lab_kernels::deb::sha256_hex(&bytes)
        ));
    }
    text.push_str(&format!(
        "agent {}\nxtask {}\n",
        identity(agent)?,
        identity(&std::env::current_exe()?)?
    ));
    match lab_harness::Settings::from_env().and_then(|s| s.qemu_binary()) {
        Ok(qemu) => text.push_str(&format!("qemu {}\n", identity(&qemu)?)),
        Err(_) => text.push_str("qemu none\n"),
    }
    for var in [lab_kernels::ENV_KERNEL, lab_kernels::ENV_KERNEL_MODULES] {
        if let Some(value) = std::env::var_os(var) {
            text.push_str(&format!(
                "{var} {}\n",
                identity(std::path::Path::new(&value))?
            ));
        }
    }
    if let Some(tree) = tree {
        let tree = std::path::absolute(tree)?;
        text.push_str(&format!(
            "tree {} {}\n",
            tree.display(),
            lab_kernels::tree::fingerprint(&tree)?
        ));
    }
    text.push_str(&format!(
        "lists {}\n",
        lab_rootfs::layers::lists_fingerprint(cache)
    ));
    Ok(lab_kernels::deb::sha256_hex(text.as_bytes()))
}

/// Fetches the kernel, builds the images, writes the assets files.
fn provision(
    apt: &lab_kernels::archive::Apt,
    args: &ProvisionArgs,
    manifest: &Manifest,
    agent: &std::path::Path,
    cache: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let kernel = match &args.kernel_tree {
        Some(tree) => lab_kernels::tree::provide(&std::path::absolute(tree)?, cache)
            .context("providing the kernel of your tree")?,
        None => lab_kernels::provide(apt, manifest, args.kernel.as_deref(), cache)
            .context("providing the guest kernel")?,
    };
    let recipe = lab_rootfs::Recipe::load(&lab_rootfs::Recipe::bundled_path())?;
    let image = lab_rootfs::build(apt, &recipe, &kernel, agent, cache)
        .context("building the guest image")?;
    let modules_disk =
        lab_rootfs::modules_disk::build(apt, &kernel, cache).context("building the module disk")?;
    let nest = match lab_harness::Settings::from_env().and_then(|s| s.qemu_binary()) {
        Ok(qemu) => Some(
            lab_rootfs::nest::build(&recipe, &kernel, &image, &qemu, cache)
                .context("building the nest image")?,
        ),
        Err(e) => {
            eprintln!("xtask: no nest image (guests that run VMs need the host's QEMU): {e}");
            None
        }
    };
    let asset = |i: &lab_rootfs::Image| ImageAsset {
        path: i.path.clone(),
        sha256: i.sha256.clone(),
        size: i.size,
        modules: i.modules.clone(),
        packages: i.packages.clone(),
    };
    let assets = Assets {
        kernel: KernelAsset {
            id: kernel.id.clone(),
            release: kernel.release.clone(),
            bzimage: kernel.bzimage.clone(),
            modules_dir: kernel.modules_dir.clone(),
            origin: kernel.origin.clone(),
        },
        image: asset(&image),
        nest: nest.as_ref().map(asset),
        modules_disk: Some(modules_disk.path.clone()),
        dir: lab_dir(),
        cache: cache.to_path_buf(),
        runs: lab_harness::Runs::default(),
        settings: lab_harness::Settings::default(),
    };
    let path = publish(&assets, args.beside)?;
    record_booted(&kernel.id, &assets)?;
    crate::ui::status!(
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

/// A file guests boot from (QEMU reads it), as provisioning left it: its content's hash, and
/// what tells without reading it that it has not changed since (the kernel sets a file's ctime
/// on every change, and nobody can set it back).
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Booted {
    path: PathBuf,
    sha256: String,
    size: u64,
    inode: u64,
    ctime_ns: i128,
}

impl Booted {
    fn of(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut booted = Self::stat(path)?;
        booted.sha256 = lab_kernels::deb::sha256_hex(&bytes);
        Ok(booted)
    }

    /// Its size, inode and ctime (no hash).
    fn stat(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            sha256: String::new(),
            size: meta.len(),
            inode: meta.ino(),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        })
    }
}

/// The files guests of `assets` boot from.
fn booted_paths(assets: &Assets) -> Vec<PathBuf> {
    [Some(&assets.kernel.bzimage), Some(&assets.image.path)]
        .into_iter()
        .chain([
            assets.nest.as_ref().map(|n| &n.path),
            assets.modules_disk.as_ref(),
        ])
        .flatten()
        .cloned()
        .collect()
}

fn booted_record(id: &str) -> PathBuf {
    lab_dir().join(format!("booted-{id}.json"))
}

/// Hashes what guests of kernel `id` boot from, for [`booted_unchanged`] to check.
fn record_booted(id: &str, assets: &Assets) -> anyhow::Result<()> {
    let record = booted_paths(assets)
        .iter()
        .map(|p| Booted::of(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    lab_kernels::write_atomically(&booted_record(id), &serde_json::to_vec_pretty(&record)?)?;
    Ok(())
}

/// Whether every file guests of kernel `id` boot from is what provisioning made (`false` when
/// there is no record: provision again); an error when one changed since. A file whose inode
/// and ctime are as recorded is not read again, so the warm check stays a few `stat`s.
fn booted_unchanged(id: &str) -> anyhow::Result<bool> {
    let Ok(text) = std::fs::read(booted_record(id)) else {
        return Ok(false);
    };
    let Ok(record) = serde_json::from_slice::<Vec<Booted>>(&text) else {
        return Ok(false);
    };
    record.iter().try_for_each(unchanged)?;
    Ok(true)
}

/// Fails if `booted` changed since it was recorded.
fn unchanged(booted: &Booted) -> anyhow::Result<()> {
    let now = Booted::stat(&booted.path)?;
    if (now.size, now.inode, now.ctime_ns) == (booted.size, booted.inode, booted.ctime_ns) {
        return Ok(());
    }
    anyhow::ensure!(
        Booted::of(&booted.path)?.sha256 == booted.sha256,
        "{} changed since it was provisioned (its sha256 differs): something other than the lab \
         writes the cache.\n  fix: `cargo xtask clean-cache`, then run again (and find out what wrote it)",
        booted.path.display()
    );
    Ok(())
}

/// Static, and with the paths of this checkout and of cargo's registry written as fixed
/// names: panic messages embed source paths, and the image must not depend on who built it
/// where (root's `/root/.cargo` against a user's `~/.cargo`).
fn agent_rustflags(workspace: &Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let mut flags = "-C target-feature=+crt-static".to_string();
    // The variable is split at spaces: a path with one cannot be passed, and is left as it is.
    for (path, name) in [(cargo_home, "/cargo"), (workspace.to_path_buf(), "/src")] {
        let path = path.display().to_string();
        if !path.is_empty() && !path.contains(char::is_whitespace) {
            flags.push_str(&format!(" --remap-path-prefix={path}={name}"));
        }
    }
    flags
}

/// Builds the static agent of the checkout at `workspace` (this one, or another for the test
/// that two checkouts build the same agent) and returns its path.
pub fn build_agent(workspace: &Path) -> anyhow::Result<PathBuf> {
    let flags = agent_rustflags(workspace);
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join(AGENT_TARGET)
        .join("release");
    let binary = release.join("lab");
    let mark = release.join("lab.checked");
    let also: Vec<PathBuf> = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"]
        .iter()
        .map(|f| workspace.join(f))
        .filter(|f| f.is_file())
        .chain(std::env::current_exe().ok())
        .collect();
    if crate::agent_fresh::fresh(&mark, &release.join("lab.d"), &binary, &flags, &also) {
        return Ok(binary);
    }
    let started = std::time::SystemTime::now();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "lab-agent",
            "--target",
            AGENT_TARGET,
        ])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", &flags);
    let status = if lab_kernels::progress::watching() {
        crate::progress::cargo(&mut cargo, "building the lab agent")
    } else {
        cargo.status()
    }
    .context("running cargo to build the agent")?;
    anyhow::ensure!(
        status.success(),
        "building the static lab agent failed; it needs glibc's static libraries (`sudo apt-get install libc6-dev`)"
    );
    // Without the mark the next run asks cargo again, which is only slower.
    let _ = crate::agent_fresh::write_mark(&mark, started, &flags, &binary);
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_booted_file_changed_since_provisioning_is_refused_and_a_touched_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("initramfs.cpio");
        std::fs::write(&image, b"the image as built").expect("write");
        let record = Booted::of(&image).expect("hash");
        unchanged(&record).expect("as provisioned");
        // Rewritten with the same bytes (ctime moves): read again, and accepted.
        std::fs::write(&image, b"the image as built").expect("rewrite");
        unchanged(&record).expect("same content");
        // Same size, other bytes, the mtime put back: the ctime still gives it away.
        let mtime = std::fs::metadata(&image)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::fs::write(&image, b"the image by someone").expect("tamper");
        std::fs::File::options()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_modified(mtime))
            .expect("mtime");
        assert!(
            unchanged(&record).is_err(),
            "a changed image was taken as provisioned"
        );
    }
}
