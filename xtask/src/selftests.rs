//! Upstream kernel selftests, taken from Debian's `linux-source-6.12` package (fetched and cached
//! the way the kernels are), laid out as kselftest's `make install` lays them out, so that `lab
//! run --dir` runs them unmodified with their sibling files: the network collections, the YNL
//! library and netlink specs that the Python tests of `drivers/net` load from `net/lib`, and
//! `kselftest-list.txt`, by which those tests know they are installed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use lab_kernels::progress::Unit;

/// The package, and the selftest directories unpacked from its tarball.
const PACKAGE: &str = "linux-source-6.12";
const DIRS: [&str; 3] = [
    "tools/testing/selftests/drivers/net",
    "tools/testing/selftests/net",
    "tools/testing/selftests/kselftest",
];
/// Where `make install` puts what `net/lib/Makefile`'s `TEST_FILES` names: the tree's path,
/// and the installed one.
const NET_LIB_FILES: [(&str, &str); 2] = [
    ("tools/net/ynl", "net/lib/ynl"),
    ("Documentation/netlink/specs", "net/lib/specs"),
];
/// Bumped when the layout changes, so an older unpacking is not taken for this one.
const LAYOUT: u32 = 2;

/// Returns `<cache>/selftests/<version>-<layout>/`, holding `drivers/net/bonding/...`, `net/...`
/// as an installed `tools/testing/selftests` does.
pub fn provide() -> anyhow::Result<PathBuf> {
    let cache = crate::cache_dir()?;
    let manifest = lab_kernels::Manifest::load(&lab_kernels::Manifest::bundled_path())?;
    let apt = lab_kernels::archive::use_archive(&manifest.archive, &cache)
        .context("pointing apt at Debian's archive")?;
    let unpacked = lab_kernels::deb::fetch_and_unpack(&apt, PACKAGE, &cache.join("debs"))
        .context("fetching the kernel source package")?;
    let out = cache
        .join("selftests")
        .join(format!("{}-{LAYOUT}", unpacked.version));
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
    crate::ui::status!(
        "xtask: unpacking the selftests from {} (once)",
        tarball.display()
    );
    unpack(&tarball, &top, staging.path())?;
    let list = kselftest_list(staging.path())?;
    std::fs::write(staging.path().join("kselftest-list.txt"), list)?;
    std::fs::write(staging.path().join(".complete"), &unpacked.version)?;
    std::fs::create_dir_all(out.parent().unwrap_or(&cache))?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(staging.keep(), &out)?;
    Ok(out)
}

/// One pass of tar over the tarball: the selftest directories at the top of `into`, the YNL
/// library and specs where an installed `net/lib` has them.
fn unpack(tarball: &Path, top: &str, into: &Path) -> anyhow::Result<()> {
    let mut transform = vec![format!("s,^{top}/tools/testing/selftests/,,")];
    for (tree, installed) in NET_LIB_FILES {
        transform.push(format!("s,^{top}/{tree},{installed},"));
    }
    let mut tar = Command::new("tar")
        .arg("-xJf")
        .arg("-")
        .arg("-C")
        .arg(into)
        .arg(format!("--transform={}", transform.join(";")))
        .args(DIRS.iter().map(|d| format!("{top}/{d}")))
        .args(NET_LIB_FILES.iter().map(|(d, _)| format!("{top}/{d}")))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running tar (and xz: `sudo apt-get install xz-utils`)")?;
    // Fed through a pipe so that what tar has read is known: a minute of xz is progress.
    let size = std::fs::metadata(tarball)?.len();
    let task =
        lab_kernels::progress::Task::start("unpacking the selftests", Some(size), Unit::Bytes);
    let mut from = std::fs::File::open(tarball)?;
    let mut to = tar.stdin.take().context("tar's stdin")?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut chunk)?;
        // tar may end early (an error it reports itself): its status says so below.
        if n == 0 || to.write_all(&chunk[..n]).is_err() {
            break;
        }
        task.add(n as u64);
    }
    drop(to);
    let status = tar.wait()?;
    anyhow::ensure!(
        status.success(),
        "tar could not unpack the selftests from {} ({status})",
        tarball.display()
    );
    Ok(())
}

/// `kselftest-list.txt`: a `collection:test` line for every program each Makefile under `root`
/// names in `TEST_PROGS`, as `make install` writes it.
fn kselftest_list(root: &Path) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    for makefile in makefiles(root)? {
        let dir = makefile.parent().unwrap_or(root);
        let collection = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        let text = std::fs::read_to_string(&makefile)
            .with_context(|| format!("reading {}", makefile.display()))?;
        for program in test_progs(&text) {
            if dir.join(&program).is_file() {
                lines.push(format!("{collection}:{program}\n"));
            }
        }
    }
    lines.sort();
    Ok(lines.concat())
}

/// Every `Makefile` under `root`.
fn makefiles(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else if entry.file_name() == "Makefile" {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// The words of a Makefile's `TEST_PROGS` assignments (`:=`, `=`, `+=`, continued lines),
/// leaving out make's own expressions (`$(wildcard ...)`).
fn test_progs(makefile: &str) -> Vec<String> {
    let joined = makefile.replace("\\\n", " ");
    let mut progs = Vec::new();
    for line in joined.lines() {
        let Some(rest) = line.trim_start().strip_prefix("TEST_PROGS") else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(value) = [":=", "+=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
        else {
            continue;
        };
        let value = value.split('#').next().unwrap_or_default();
        progs.extend(
            value
                .split_whitespace()
                .filter(|w| !w.contains('$'))
                .map(str::to_string),
        );
    }
    progs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_progs_are_read_across_continued_lines_and_appends() {
        let makefile = "TEST_INCLUDES := $(wildcard lib/py/*.py)\n\
                        TEST_PROGS := \\\n\tping.py \\\n\tqueues.py # the end\n\
                        TEST_PROGS += stats.py $(EXTRA)\n\
                        TEST_PROGS_EXTENDED := helper.sh\n\
                        TEST_GEN_PROGS = built\n";
        assert_eq!(test_progs(makefile), ["ping.py", "queues.py", "stats.py"]);
    }

    #[test]
    fn the_list_names_each_collections_programs_that_exist() {
        let root = tempfile::tempdir().expect("temp dir");
        let net = root.path().join("drivers/net");
        std::fs::create_dir_all(&net).expect("dirs");
        std::fs::write(net.join("Makefile"), "TEST_PROGS := ping.py gone.py\n").expect("write");
        std::fs::write(net.join("ping.py"), "").expect("write");
        assert_eq!(
            kselftest_list(root.path()).expect("list"),
            "drivers/net:ping.py\n"
        );
    }
}
