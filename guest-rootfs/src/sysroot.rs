//! The unpacked Debian packages, seen as one file system (a "sysroot"), and copying programs out
//! of it together with the shared libraries their ELF headers name.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use lab_kernels::deb::{self, Unpacked};

use crate::tree::Tree;
use crate::{Error, Result};

/// Where the dynamic loader of a Debian amd64 system looks for libraries.
const LIBRARY_DIRS: [&str; 5] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/lib",
];

#[derive(Debug)]
pub struct Sysroot {
    packages: Vec<Unpacked>,
    /// Packages from the cache, whose files are checked against their fetch's hashes when read;
    /// not the host's own file system.
    checked: bool,
}

impl Sysroot {
    pub fn fetch(apt: &lab_kernels::archive::Apt, names: &[String], cache: &Path) -> Result<Self> {
        let packages = deb::fetch_all(apt, names, cache)?;
        Ok(Self {
            packages,
            checked: true,
        })
    }

    /// The host's own file system, for programs taken from the host (the nest's QEMU).
    pub fn host() -> Self {
        Self {
            packages: vec![Unpacked {
                package: "host".into(),
                version: String::new(),
                sha256: String::new(),
                root: "/".into(),
                files: Default::default(),
            }],
            checked: false,
        }
    }

    /// `name=version sha256` per package, for the record.
    pub fn describe(&self) -> Vec<String> {
        self.packages
            .iter()
            .map(|p| format!("{}={} {}", p.package, p.version, p.sha256))
            .collect()
    }

    /// The host path of `path` inside the sysroot, following symlinks as the guest would.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let mut path = PathBuf::from(path);
        for _ in 0..16 {
            let host = self
                .packages
                .iter()
                .map(|p| p.root.join(relative(&path)))
                .find(|h| h.symlink_metadata().is_ok())?;
            match std::fs::read_link(&host) {
                Ok(target) if target.is_absolute() => path = target,
                Ok(target) => {
                    path = normalise(&path.parent().unwrap_or(Path::new("/")).join(target))
                }
                Err(_) => return Some(host),
            }
        }
        None
    }

    /// The bytes of `path`, checked against what its package shipped: they are put into images
    /// and, for depmod, run on the host.
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let host = self.resolve(path).ok_or_else(|| {
            Error::Missing(format!("{path} is not in any package of the guest recipe; add the package that ships it to guest-rootfs/rootfs.toml"))
        })?;
        let bytes = std::fs::read(&host).map_err(|e| Error::io(&host, e))?;
        if let Some(package) = self
            .packages
            .iter()
            .find(|p| self.checked && host.starts_with(&p.root))
        {
            package.verify(&host, &bytes)?;
        }
        Ok(bytes)
    }

    /// Copies `path` and, transitively, its dynamic loader and libraries.
    pub fn install_program(&self, tree: &mut Tree, path: &str) -> Result<()> {
        for (file, bytes) in self.closure(path)? {
            tree.file(&file, bytes, 0o755);
        }
        Ok(())
    }

    /// `path`, its dynamic loader and every library it needs, transitively: (path as the
    /// program asks for it, contents), `path` first.
    pub fn closure(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut pending = vec![path.to_string()];
        let mut done = BTreeSet::new();
        let mut files = Vec::new();
        while let Some(file) = pending.pop() {
            if !done.insert(file.clone()) {
                continue;
            }
            let bytes = self.read(&file)?;
            let (interp, needed) = dynamic_deps(&bytes, &file)?;
            pending.extend(interp);
            for lib in needed {
                pending.push(self.find_library(&lib, &file)?);
            }
            files.push((file, bytes));
        }
        Ok(files)
    }

    fn find_library(&self, soname: &str, wanted_by: &str) -> Result<String> {
        LIBRARY_DIRS.iter().map(|dir| format!("{dir}/{soname}")).find(|p| self.resolve(p).is_some()).ok_or_else(|| {
            Error::Missing(format!(
                "{wanted_by} needs {soname}, which no package of the guest recipe ships; \
                 add its package (`dpkg -S {soname}` on a Debian host names it) to guest-rootfs/rootfs.toml"
            ))
        })
    }

    /// Copies the directory `path` of the packages, files and symlinks as they are.
    pub fn install_tree(&self, tree: &mut Tree, path: &str) -> Result<()> {
        let host = self.resolve(path).ok_or_else(|| {
            Error::Missing(format!("{path} is in no package of the guest recipe"))
        })?;
        tree.add_host_dir(&host, path, &|_| false, u64::MAX)
            .map_err(|e| Error::io(&host, e))
    }

    /// Copies busybox and links each of its applets into /bin, except names in `keep_out`.
    pub fn install_busybox(
        &self,
        tree: &mut Tree,
        busybox: &str,
        keep_out: &[String],
    ) -> Result<()> {
        let host = self
            .resolve(busybox)
            .ok_or_else(|| Error::Missing(format!("{busybox} not found in the packages")))?;
        // Checked against its fetch's hashes before it runs here, not only before it is
        // copied: the cache holds what we execute.
        let bytes = self.read(busybox)?;
        // busybox-static is a static x86_64 binary: asking it for its applets is the only list
        // that is always right for the version we ship.
        let out = Command::new(&host)
            .arg("--list")
            .output()
            .map_err(|e| Error::io(&host, e))?;
        let applets = String::from_utf8_lossy(&out.stdout).into_owned();
        if applets.trim().is_empty() {
            return Err(Error::Missing(format!(
                "{} --list printed no applets",
                host.display()
            )));
        }
        tree.file("/bin/busybox", bytes, 0o755);
        for applet in applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            let link = format!("/bin/{applet}");
            if !keep_out.iter().any(|k| k == applet) && !tree.contains(&link) {
                tree.symlink(&link, "busybox");
            }
        }
        Ok(())
    }
}

/// The ELF interpreter (`PT_INTERP`) and `DT_NEEDED` names of a binary; none for a static one.
fn dynamic_deps(bytes: &[u8], path: &str) -> Result<(Option<String>, Vec<String>)> {
    let elf = goblin::elf::Elf::parse(bytes)
        .map_err(|e| Error::Missing(format!("{path} is not an ELF file: {e}")))?;
    Ok((
        elf.interpreter.map(String::from),
        elf.libraries.iter().map(|s| s.to_string()).collect(),
    ))
}

fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Resolves `.` and `..` lexically, as a symlink target inside the sysroot must be.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_resolves_dotdot() {
        assert_eq!(
            normalise(Path::new("/lib/x86_64-linux-gnu/../../usr/lib/./libz.so.1")),
            Path::new("/usr/lib/libz.so.1")
        );
        assert_eq!(normalise(Path::new("/../x")), Path::new("/x"));
    }

    #[test]
    fn resolve_follows_links_across_packages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(a.join("lib")).expect("mkdir");
        std::fs::create_dir_all(b.join("usr/lib")).expect("mkdir");
        std::os::unix::fs::symlink("../usr/lib/libz.so.1.2", a.join("lib/libz.so.1"))
            .expect("link");
        std::fs::write(b.join("usr/lib/libz.so.1.2"), b"z").expect("write");
        let unpacked = |root: PathBuf| Unpacked {
            package: "p".into(),
            version: "1".into(),
            sha256: String::new(),
            root,
            files: Default::default(),
        };
        let sysroot = Sysroot {
            packages: vec![unpacked(a), unpacked(b.clone())],
            checked: false,
        };
        assert_eq!(
            sysroot.resolve("/lib/libz.so.1"),
            Some(b.join("usr/lib/libz.so.1.2"))
        );
        assert_eq!(sysroot.resolve("/lib/nope"), None);
    }
}
