//! A kernel's module tree: which modules exist, which are built in, and what each depends on,
//! read from the `.ko` files themselves (a Debian package ships no `modules.dep`: depmod makes it
//! at install time).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The module tree of one kernel release.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    /// Module name (dashes as underscores) -> path relative to `root`.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    pub fn open(modules_dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        walk(modules_dir, modules_dir, &mut files)?;
        let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(|l| name_of(Path::new(l)))
            .collect();
        Ok(Self {
            root: modules_dir.to_path_buf(),
            files,
            builtin,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `name` (dashes or underscores) is a module of this kernel, built in or loadable.
    pub fn has(&self, name: &str) -> bool {
        let name = normalise(name);
        self.builtin.contains(&name) || self.files.contains_key(&name)
    }

    /// Up to `max` module names closest to `name`, for "did you mean" hints.
    pub fn similar(&self, name: &str, max: usize) -> Vec<String> {
        let name = normalise(name);
        let mut scored: Vec<(usize, &String)> = self
            .files
            .keys()
            .chain(&self.builtin)
            .map(|k| (edit_distance(&name, k), k))
            .filter(|(d, _)| *d <= 3)
            .collect();
        scored.sort();
        scored
            .into_iter()
            .take(max)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// `names` and everything they need, dependencies first, built-ins left out, each module once.
    /// Paths are relative to the module tree.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(&normalise(name), &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<()> {
        if depth > 64 {
            return Err(Error::Invalid(format!(
                "module dependency cycle through {name}"
            )));
        }
        if self.builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let rel = self.files.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "kernel module '{name}' is neither built in nor present under {}",
                self.root.display()
            ))
        })?;
        for dep in depends(&self.root.join(rel))? {
            self.visit(&dep, seen, order, depth + 1)?;
        }
        order.push(rel.clone());
        Ok(())
    }
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, files)?;
        } else if is_module(&path) {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            files.insert(name_of(&path), rel);
        }
    }
    Ok(())
}

fn is_module(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".ko") || name.ends_with(".ko.xz")
}

/// `kvm-amd.ko.xz` -> `kvm_amd`.
fn name_of(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    normalise(file.split('.').next().unwrap_or_default())
}

/// Levenshtein distance, small inputs only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn depends(path: &Path) -> Result<Vec<String>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let elf_bytes = if path.extension().is_some_and(|x| x == "xz") {
        unxz(&raw, path)?
    } else {
        raw
    };
    Ok(modinfo(&elf_bytes, "depends")
        .map(|deps| {
            deps.split(',')
                .filter(|d| !d.is_empty())
                .map(normalise)
                .collect()
        })
        .unwrap_or_default())
}

fn unxz(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(raw), &mut out)
        .map_err(|e| Error::Invalid(format!("{}: cannot decompress: {e}", path.display())))?;
    Ok(out)
}

/// Finds `key=value` among the NUL-separated strings of a module. Scanning the whole file for
/// the key is enough: `.modinfo` entries are the only NUL-delimited `depends=` strings in a `.ko`.
fn modinfo<'a>(elf: &'a [u8], key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    elf.split(|&b| b == 0)
        .find_map(|s| std::str::from_utf8(s).ok()?.strip_prefix(needle.as_str()))
}

/// Reads a whole file, for callers that copy modules.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(|e| Error::io(path, e))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_module(dir: &Path, rel: &str, depends: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let body = format!("\x7fELF junk\0license=GPL\0depends={depends}\0vermagic=6.1\0");
        std::fs::write(path, body).expect("write");
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_module(dir.path(), "kernel/drivers/net/macvtap.ko", "tap,macvlan");
        fake_module(dir.path(), "kernel/drivers/net/tap.ko", "");
        fake_module(dir.path(), "kernel/drivers/net/macvlan.ko", "");
        fake_module(
            dir.path(),
            "kernel/drivers/virtio/virtio_mmio.ko",
            "virtio,virtio_ring",
        );
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
        )
        .expect("write");
        let tree = ModuleTree::open(dir.path()).expect("tree");
        let order = tree
            .load_order(&["macvtap", "virtio-mmio", "macvlan"])
            .expect("order");
        let names: Vec<_> = order.iter().map(|p| name_of(p)).collect();
        assert_eq!(names, ["tap", "macvlan", "macvtap", "virtio_mmio"]);
    }

    #[test]
    fn has_knows_loadable_and_builtin_and_suggests_near_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_module(dir.path(), "kernel/drivers/net/bonding/bonding.ko", "");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/net/8021q/8021q.ko\n",
        )
        .expect("write");
        let tree = ModuleTree::open(dir.path()).expect("tree");
        assert!(tree.has("bonding") && tree.has("8021q") && !tree.has("bondingg"));
        assert_eq!(tree.similar("bondng", 3), ["bonding"]);
    }

    #[test]
    fn missing_module_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = ModuleTree::open(dir.path()).expect("tree");
        let err = tree
            .load_order(&["nosuch"])
            .expect_err("missing")
            .to_string();
        assert!(err.contains("'nosuch'"), "{err}");
    }
}
