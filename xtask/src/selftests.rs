//! Upstream kernel selftests, taken from Debian's `linux-source-6.12` package (fetched and cached
//! the way the kernels are), so that `lab run --dir` can run them unmodified with their sibling
//! files. Only the directories the network selftests source are unpacked.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

/// The package, and the selftest directories unpacked from its tarball.
const PACKAGE: &str = "linux-source-6.12";
const DIRS: [&str; 3] = [
    "tools/testing/selftests/drivers/net",
    "tools/testing/selftests/net",
    "tools/testing/selftests/kselftest",
];

/// Returns `<cache>/selftests/<version>/`, holding `drivers/net/bonding/...`, `net/...` as in
/// the kernel tree's `tools/testing/selftests`.
pub fn provide() -> anyhow::Result<PathBuf> {
    let cache = crate::cache_dir()?;
    let manifest = lab_kernels::Manifest::load(&lab_kernels::Manifest::bundled_path())?;
    let apt = lab_kernels::archive::use_archive(&manifest.archive, &cache)
        .context("pointing apt at Debian's archive")?;
    let unpacked = lab_kernels::deb::fetch_and_unpack(&apt, PACKAGE, &cache.join("debs"))
        .context("fetching the kernel source package")?;
    let out = cache.join("selftests").join(&unpacked.version);
    if out.join(".complete").is_file() {
        return Ok(out);
    }
    let tarball = std::fs::read_dir(unpacked.root.join("usr/src"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .with_context(|| format!("{PACKAGE} holds no source tarball under /usr/src"))?;
    let top = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.xz"))
        .unwrap_or(PACKAGE)
        .to_string();
    let staging = lab_kernels::cache::Staging::new(&cache, "selftests")?;
    eprintln!(
        "xtask: unpacking the selftests from {} (once)",
        tarball.display()
    );
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(staging.path())
        .arg("--strip-components=4")
        .args(DIRS.iter().map(|d| format!("{top}/{d}")))
        .status()
        .context("running tar (and xz: `sudo apt-get install xz-utils`)")?;
    anyhow::ensure!(
        status.success(),
        "tar could not unpack the selftests from {} ({status})",
        tarball.display()
    );
    std::fs::write(staging.path().join(".complete"), &unpacked.version)?;
    std::fs::create_dir_all(out.parent().unwrap_or(&cache))?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(staging.keep(), &out)?;
    Ok(out)
}
