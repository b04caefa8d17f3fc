//! `kernels/kernels.toml`: the kernels the lab knows, kept as data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub default: String,
    /// Where the kernels (and the guest image's packages) come from.
    pub archive: crate::archive::Archive,
    #[serde(rename = "kernel")]
    pub kernels: BTreeMap<String, KernelSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KernelSpec {
    #[serde(skip)]
    pub id: String,
    pub description: String,
    /// Debian package holding the image, or a meta-package depending on it.
    pub package: String,
}

impl Manifest {
    /// The manifest shipped in this crate's directory.
    pub fn bundled_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels.toml")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|message| Error::Manifest {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        for (id, spec) in &mut m.kernels {
            spec.id.clone_from(id);
        }
        if !m.kernels.contains_key(&m.default) {
            return Err(format!("default kernel '{}' is not defined", m.default));
        }
        Ok(m)
    }

    /// The kernel `id`, or the default.
    pub fn get(&self, id: Option<&str>) -> Result<&KernelSpec> {
        let id = id.unwrap_or(&self.default);
        self.kernels.get(id).ok_or_else(|| Error::UnknownKernel {
            id: id.to_string(),
            known: self.kernels.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_manifest_parses_and_has_its_default() {
        let m = Manifest::load(&Manifest::bundled_path()).expect("bundled manifest");
        assert_eq!(m.get(None).expect("default").id, m.default);
        assert!(m.get(Some("debian-6.12")).is_ok());
    }

    #[test]
    fn unknown_kernel_lists_the_known_ones() {
        let m = Manifest::load(&Manifest::bundled_path()).expect("bundled manifest");
        let err = m.get(Some("nope")).expect_err("unknown id").to_string();
        assert!(err.contains("debian-6.1"), "{err}");
    }

    #[test]
    fn default_must_exist() {
        let text = "default = \"x\"\n[archive]\nsources = []\nkeyring = \"/k\"\n[kernel.y]\ndescription = \"\"\npackage = \"p\"\n";
        let err = Manifest::parse(text).expect_err("bad");
        assert!(err.contains("'x'"), "{err}");
    }
}
