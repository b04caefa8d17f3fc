//! The nest: what a lab guest needs to run VMs of its own, the seed's `virt-install` part.
//!
//! It is a second cpio archive appended to the base image. Linux unpacks concatenated archives in
//! order, so the nest's files add to the base image's, and its `/etc/lab/modules` (the base list
//! plus KVM) replaces the base one. It holds:
//! - `/nest/qemu/`: the host's own QEMU (the harness requires one anyway, so no second download),
//!   the shared libraries its ELF headers name, its dynamic loader, the firmware microvm boots and
//!   QEMU's TCG module. `/nest/bin/qemu-system-x86_64` starts it through that loader, so its
//!   libraries never mix with the guest's Debian ones, whatever distribution the host runs.
//! - `/nest/inner/`: the inner guest, the same kernel and the base image (its agent included).
//! - `/nest/nest.json`: what went in, for the harness and for people.

use std::path::{Path, PathBuf};
use std::process::Command;

use lab_kernels::Kernel;
use serde::{Deserialize, Serialize};

use crate::recipe::{NestRecipe, Recipe};
use crate::sysroot::Sysroot;
use crate::tree::Tree;
use crate::{Error, Image, Result};

/// Paths inside the guest, known to the harness too.
pub const QEMU_WRAPPER: &str = "/nest/bin/qemu-system-x86_64";
pub const INNER_KERNEL: &str = "/nest/inner/vmlinuz";
pub const INNER_INITRD: &str = "/nest/inner/initrd.cpio";
const QEMU_DIR: &str = "/nest/qemu";

/// `/nest/nest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NestInfo {
    pub qemu_version: String,
    /// The inner QEMU can fall back to TCG (its TCG module, if it has one, was found).
    pub tcg: bool,
}

/// Builds (or finds in `cache`) the nest image: `base` with the nest archive appended.
pub fn build(
    recipe: &Recipe,
    kernel: &Kernel,
    base: &Image,
    qemu: &Path,
    cache: &Path,
) -> Result<Image> {
    let nest = &recipe.nest;
    let task = lab_kernels::progress::Task::steps(
        &format!("building the nest image for {}", kernel.release),
        3,
    );
    task.step("the host's QEMU, its libraries and firmware");
    let mut tree = Tree::default();
    let info = install_qemu(&mut tree, nest, qemu)?;
    task.step("the inner kernel, image and modules");
    tree.file(INNER_KERNEL, crate::read(&kernel.bzimage)?, 0o644);
    let base_bytes = crate::read(&base.path)?;
    tree.file(INNER_INITRD, base_bytes.clone(), 0o644);
    let wanted: Vec<String> = recipe
        .modules
        .iter()
        .chain(&nest.modules)
        .cloned()
        .collect();
    let modules = crate::install_modules(&mut tree, kernel, &wanted)?;
    let json = serde_json::to_vec_pretty(&info).map_err(|e| Error::Missing(e.to_string()))?;
    tree.file("/nest/nest.json", json, 0o644);

    task.step("packing and storing the archive");
    let mut bytes = base_bytes;
    bytes.extend(tree.to_cpio().map_err(|e| Error::io(cache, e))?);
    let image = crate::store(
        &bytes,
        &format!("nest-{}", kernel.release),
        &kernel.made_in(cache),
    )?;
    Ok(Image {
        modules,
        packages: base.packages.clone(),
        kernel_release: kernel.release.clone(),
        ..image
    })
}

/// Copies the host's QEMU closure, firmware and modules, and writes the wrapper.
fn install_qemu(tree: &mut Tree, nest: &NestRecipe, qemu: &Path) -> Result<NestInfo> {
    let qemu = qemu.canonicalize().map_err(|e| Error::io(qemu, e))?;
    let host = Sysroot::host();
    let closure = host.closure(&qemu.to_string_lossy())?;
    for (i, (path, bytes)) in closure.into_iter().enumerate() {
        let name = file_name(Path::new(&path));
        let dest = if i == 0 {
            format!("{QEMU_DIR}/bin/qemu-system-x86_64")
        } else {
            format!("{QEMU_DIR}/lib/{name}")
        };
        tree.file(&dest, bytes, 0o755);
    }
    // Each file from whichever data directory holds it: Debian's QEMU 7.2 keeps microvm's
    // firmware with its own data, QEMU 10 from backports in /usr/share/seabios.
    let dirs = data_dirs(&qemu)?;
    for f in &nest.firmware {
        let path = dirs
            .iter()
            .map(|d| d.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::Missing(format!(
                    "no data directory of {} holds {f} (see `{} -L help`)",
                    qemu.display(),
                    qemu.display()
                ))
            })?;
        tree.file(&format!("{QEMU_DIR}/share/{f}"), crate::read(&path)?, 0o644);
    }
    let mut tcg = true;
    for m in &nest.qemu_modules {
        match module_dirs(&qemu)
            .into_iter()
            .map(|d| d.join(m))
            .find(|p| p.is_file())
        {
            Some(path) => {
                for (i, (lib, bytes)) in host
                    .closure(&path.to_string_lossy())?
                    .into_iter()
                    .enumerate()
                {
                    let dest = if i == 0 {
                        format!("{QEMU_DIR}/modules/{m}")
                    } else {
                        format!("{QEMU_DIR}/lib/{}", file_name(Path::new(&lib)))
                    };
                    tree.file(&dest, bytes, 0o755);
                }
            }
            // A QEMU built with TCG inside has no such module; one without TCG at all cannot
            // fall back to it, which the harness reports if it ever needs to.
            None => tcg = tcg && qemu_has_builtin_tcg(&qemu),
        }
    }
    tree.file(QEMU_WRAPPER, wrapper().into_bytes(), 0o755);
    Ok(NestInfo {
        qemu_version: qemu_version(&qemu),
        tcg,
    })
}

fn wrapper() -> String {
    let interp = "ld-linux-x86-64.so.2";
    format!(
        "#!/bin/sh\n\
         # The host's QEMU with the libraries it came with, started through their own loader.\n\
         export QEMU_MODULE_DIR={QEMU_DIR}/modules\n\
         exec {QEMU_DIR}/lib/{interp} --library-path {QEMU_DIR}/lib {QEMU_DIR}/bin/qemu-system-x86_64 -L {QEMU_DIR}/share \"$@\"\n"
    )
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// QEMU's firmware directories, as it lists them itself.
fn data_dirs(qemu: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new(qemu)
        .args(["-L", "help"])
        .output()
        .map_err(|e| Error::io(qemu, e))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_dir())
        .collect())
}

/// Where distributions put QEMU's loadable modules.
fn module_dirs(qemu: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [
        "/usr/lib/x86_64-linux-gnu/qemu",
        "/usr/lib64/qemu",
        "/usr/lib/qemu",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Some(prefix) = qemu.parent().and_then(Path::parent) {
        dirs.push(prefix.join("lib/qemu"));
        dirs.push(prefix.join("lib/x86_64-linux-gnu/qemu"));
    }
    dirs
}

/// Whether `qemu` runs TCG without a module: it starts a machine-less QEMU on it, rather than
/// trusting `-accel help`, which can list an accelerator whose module is missing. A QEMU that
/// has not quit within 10 s is killed and counts as without.
fn qemu_has_builtin_tcg(qemu: &Path) -> bool {
    use std::io::Write;
    let started = Command::new(qemu)
        .args([
            "-M",
            "none",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-no-user-config", "-monitor", "stdio"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = started else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn qemu_version(qemu: &Path) -> String {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_counts_only_when_qemu_starts_on_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let fake = |name: &str, script: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("a fake QEMU");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("executable");
            path
        };
        // Lists TCG, as a QEMU whose TCG module is missing may, but cannot start on it.
        let listed_only = fake(
            "listed-only",
            r#"case "$*" in *"accel help"*) printf 'kvm\ntcg\n'; exit 0;; esac; exit 1"#,
        );
        assert!(!qemu_has_builtin_tcg(&listed_only));
        let starts = fake("starts", "read line; [ \"$line\" = quit ]");
        assert!(qemu_has_builtin_tcg(&starts));
        assert!(!qemu_has_builtin_tcg(&dir.path().join("missing")));
    }

    #[test]
    fn wrapper_runs_the_bundled_loader_with_the_bundled_libraries() {
        let w = wrapper();
        assert!(w.starts_with("#!/bin/sh\n"));
        assert!(w.contains("exec /nest/qemu/lib/ld-linux-x86-64.so.2 --library-path /nest/qemu/lib /nest/qemu/bin/qemu-system-x86_64 -L /nest/qemu/share \"$@\""));
        assert!(w.contains("QEMU_MODULE_DIR=/nest/qemu/modules"));
    }
}
