//! Debian packages fetched and unpacked without root: `apt-cache show` to resolve a name to a
//! version, `apt-get download` (works as any user on Debian and Ubuntu) and `dpkg-deb -x`. apt
//! looks at the archive [`crate::archive`] set up, or at the host's sources if none was.
//!
//! Each package lands in `<cache>/<package>_<version>/` with a `fetched.json` written last, so an
//! interrupted fetch is redone rather than trusted.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::Apt;
use crate::progress::{Task, Unit};
use crate::{Error, Result};

/// A package unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unpacked {
    pub package: String,
    pub version: String,
    /// sha256 of the `.deb` file.
    pub sha256: String,
    /// The unpacked file tree (`root/usr/...`).
    #[serde(skip)]
    pub root: PathBuf,
    /// sha256 of every regular file of the tree (path relative to `root`), taken right after
    /// apt fetched and checked the `.deb`: what is read from the tree later, to be run or put in
    /// an image, is checked against it ([`Unpacked::verify`]).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

impl Unpacked {
    /// Fails unless `bytes`, read from `host` in this package's tree, are what the package
    /// shipped. A path outside the tree is not this package's to judge.
    pub fn verify(&self, host: &Path, bytes: &[u8]) -> Result<()> {
        let Ok(rel) = host.strip_prefix(&self.root) else {
            return Ok(());
        };
        let rel = rel.to_string_lossy();
        match self.files.get(rel.as_ref()) {
            Some(sum) if *sum == sha256_hex(bytes) => Ok(()),
            found => {
                Err(Error::Invalid(format!(
                "{} {} since {} {} was fetched: the cache was changed behind the lab's back\n  \
                 fix: `cargo xtask clean-cache`, and find out who else writes {}",
                host.display(),
                if found.is_some() { "changed" } else { "appeared" },
                self.package,
                self.version,
                self.root.display()
            )))
            }
        }
    }
}

/// sha256 of every regular file under `root`, by path relative to it.
pub(crate) fn hash_tree(root: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    crate::files_under(root)?
        .into_iter()
        .map(|(rel, _)| {
            let path = root.join(&rel);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            Ok((rel.to_string_lossy().into_owned(), sha256_hex(&bytes)))
        })
        .collect()
}

const MARKER: &str = "fetched.json";

/// The candidate version of `package` and the packages it depends on (alternatives flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub depends: Vec<String>,
}

/// Fetches `package` (its candidate version) into `cache` unless it is there already.
pub fn fetch_and_unpack(apt: &Apt, package: &str, cache: &Path) -> Result<Unpacked> {
    let info = show(apt, &follow_meta_package(apt, package)?)?;
    Ok(fetch_infos(apt, &[info], cache)?.remove(0))
}

/// Fetches several packages, asking apt about all of them at once (each `apt-cache` call reads
/// the whole package index: about a second on a Debian host).
pub fn fetch_all(apt: &Apt, packages: &[String], cache: &Path) -> Result<Vec<Unpacked>> {
    fetch_infos(apt, &show_many(apt, packages)?, cache)
}

/// The packages of `infos` from the cache, fetching those it lacks, in the order given.
fn fetch_infos(apt: &Apt, infos: &[PackageInfo], cache: &Path) -> Result<Vec<Unpacked>> {
    let mut found: Vec<Option<Unpacked>> = infos.iter().map(|i| from_cache(i, cache)).collect();
    let missing: Vec<&PackageInfo> = infos
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(info, _)| info)
        .collect();
    let mut fetched = download(apt, &missing, cache)?.into_iter();
    for f in found.iter_mut().filter(|f| f.is_none()) {
        *f = fetched.next();
    }
    Ok(found.into_iter().flatten().collect())
}

/// `info`'s package as the cache holds it, if it is there whole.
fn from_cache(info: &PackageInfo, cache: &Path) -> Option<Unpacked> {
    match cached(&package_dir(info, cache)) {
        Cached::Whole(done) => Some(done),
        Cached::Damaged(why) => {
            eprintln!("lab-kernels: {why}: fetching {} again", info.package);
            None
        }
        Cached::Missing => None,
    }
}

/// Fetches `missing` into the cache as one download task, in bytes (sized by apt's index when
/// someone watches), each package's bytes counted as apt writes them.
fn download(apt: &Apt, missing: &[&PackageInfo], cache: &Path) -> Result<Vec<Unpacked>> {
    let what = match missing {
        [] => return Ok(Vec::new()),
        [one] => format!("downloading {}", one.package),
        many => format!("downloading {} packages", many.len()),
    };
    let sizes = if crate::progress::watching() {
        download_sizes(apt, missing)
    } else {
        None
    };
    let task = Task::start(&what, sizes.as_ref().map(|s| s.iter().sum()), Unit::Bytes);
    let mut fetched = Vec::with_capacity(missing.len());
    for (i, info) in missing.iter().enumerate() {
        if missing.len() > 1 {
            task.note(&format!("{}/{} {}", i + 1, missing.len(), info.package));
        }
        let base = task.done();
        fetched.push(fetch_missing(apt, info, cache, &task)?);
        // What apt's index said it weighs, or what was seen of it if it said nothing.
        let size = sizes.as_ref().map_or(0, |s| s[i]);
        task.set(base + size.max(task.done().saturating_sub(base)));
    }
    Ok(fetched)
}

/// Where the cache keeps `info`'s package.
fn package_dir(info: &PackageInfo, cache: &Path) -> PathBuf {
    cache.join(format!(
        "{}_{}",
        info.package,
        info.version.replace(':', "%3a")
    ))
}

/// The download size of each package, as apt's index gives it; `None` unless it gives all.
fn download_sizes(apt: &Apt, infos: &[&PackageInfo]) -> Option<Vec<u64>> {
    let mut cmd = Command::new(tool("apt-get").ok()?);
    apt.configure(&mut cmd)
        .args(["download", "--print-uris", "--"])
        .args(infos.iter().map(|i| format!("{}={}", i.package, i.version)));
    let out = cmd.output().ok()?;
    sizes_in(&String::from_utf8_lossy(&out.stdout), infos)
}

/// Each package's size in `apt-get download --print-uris` output: lines of
/// `'URI' FILE SIZE HASH`, FILE being `<package>_<version, ':' as %3a>_<arch>.deb`.
fn sizes_in(printed: &str, infos: &[&PackageInfo]) -> Option<Vec<u64>> {
    let by_file: std::collections::HashMap<&str, u64> = printed
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            Some((words.next()?, words.next()?.parse().ok()?))
        })
        .collect();
    infos
        .iter()
        .map(|i| {
            let stem = format!("{}_{}_", i.package, i.version.replace(':', "%3a"));
            by_file
                .iter()
                .find(|(file, _)| file.starts_with(&stem))
                .map(|(_, size)| *size)
        })
        .collect()
}

/// Fetches `info`'s package into the cache; its download's bytes go to `task`.
fn fetch_missing(apt: &Apt, info: &PackageInfo, cache: &Path, task: &Task) -> Result<Unpacked> {
    let dir = package_dir(info, cache);
    // A staging directory of this call's own: threads of one process (test cases, guests booted
    // side by side) may fetch the same package at the same time.
    let staging = crate::cache::Staging::new(cache, &info.package)?;
    let unpacked = fetch_into(apt, info, staging.path(), task)?;
    // Another fetch of the same package may have finished first: its result is as good as ours,
    // and someone may be reading it, so it stays. A directory without a marker is a leftover.
    if let Cached::Whole(done) = cached(&dir) {
        return Ok(done);
    }
    let _ = std::fs::remove_dir_all(&dir);
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok(Unpacked {
                root: dir.join("root"),
                ..unpacked
            })
        }
        Err(e) => read_marker(&dir).ok_or_else(|| Error::io(&dir, e)),
    }
}

fn fetch_into(apt: &Apt, info: &PackageInfo, staging: &Path, task: &Task) -> Result<Unpacked> {
    let spec = format!("{}={}", info.package, info.version);
    let mut download = Command::new(tool("apt-get")?);
    apt.configure(&mut download)
        .args(["download", "--"])
        .arg(&spec)
        .current_dir(staging);
    checked(
        crate::progress::output_watching(&mut download, task, staging),
        &format!("apt-get download {spec}"),
        "run `sudo apt-get update` so apt knows the package, then try again",
    )?;
    let deb = only_deb(staging)?;
    let bytes = std::fs::read(&deb).map_err(|e| Error::io(&deb, e))?;
    let sha256 = sha256_hex(&bytes);
    let root = staging.join("root");
    run(
        Command::new(tool("dpkg-deb")?)
            .arg("-x")
            .arg(&deb)
            .arg(&root),
        &format!("dpkg-deb -x {}", deb.display()),
        "the download may be damaged: delete the cache directory and try again",
    )?;
    let unpacked = Unpacked {
        package: info.package.clone(),
        version: info.version.clone(),
        sha256,
        files: hash_tree(&root)?,
        root,
    };
    let marker = staging.join(MARKER);
    let json = serde_json::to_vec_pretty(&unpacked).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&marker, json).map_err(|e| Error::io(&marker, e))?;
    Ok(unpacked)
}

/// What the cache holds of one package.
#[derive(Debug)]
enum Cached {
    Whole(Unpacked),
    Missing,
    /// There, but not as fetched: why.
    Damaged(String),
}

/// The package in `dir` if its marker is there and its `.deb` still has the sha256 the marker
/// recorded when it was fetched (a file cut short or changed since is fetched again). Hashing
/// the cached packages costs well under a second, and only when provisioning is not warm.
fn cached(dir: &Path) -> Cached {
    let Some(done) = read_marker(dir) else {
        return Cached::Missing;
    };
    if done.files.is_empty() {
        return Cached::Damaged(format!(
            "{} was fetched by an older lab, without the hashes of its files",
            dir.display()
        ));
    }
    let deb = match only_deb(dir) {
        Ok(deb) => deb,
        Err(e) => return Cached::Damaged(format!("{}: {e}", dir.display())),
    };
    match std::fs::read(&deb) {
        Ok(bytes) if sha256_hex(&bytes) == done.sha256 => Cached::Whole(done),
        Ok(bytes) => Cached::Damaged(format!(
            "{} is damaged ({} bytes, sha256 differs from when it was fetched)",
            deb.display(),
            bytes.len()
        )),
        Err(e) => Cached::Damaged(format!("{} cannot be read: {e}", deb.display())),
    }
}

fn read_marker(dir: &Path) -> Option<Unpacked> {
    let text = std::fs::read(dir.join(MARKER)).ok()?;
    let done: Unpacked = serde_json::from_slice(&text).ok()?;
    Some(Unpacked {
        root: dir.join("root"),
        ..done
    })
}

/// Kernel meta-packages (`linux-image-cloud-amd64`) hold no kernel: follow their one
/// `linux-image-*` dependency to the package that does.
pub fn follow_meta_package(apt: &Apt, package: &str) -> Result<String> {
    let mut name = package.to_string();
    for _ in 0..4 {
        let info = show(apt, &name)?;
        match info.depends.iter().find(|d| d.starts_with("linux-image-")) {
            Some(next) => name.clone_from(next),
            None => return Ok(name),
        }
    }
    Err(Error::Invalid(format!(
        "{package}: too many levels of meta-packages"
    )))
}

/// `packages` and every package they depend on (not the ones they recommend), as apt itself
/// resolves them against an empty system: `(name, version)` in apt's install order. An unknown
/// name fails with apt's own reason.
pub fn closure(apt: &Apt, packages: &[String]) -> Result<Vec<(String, String)>> {
    check_names(packages)?;
    let what = format!("apt-get install --simulate {}", packages.join(" "));
    let out = run(
        apt.configure(&mut Command::new(tool("apt-get")?)).args(["install", "--simulate", "--no-install-recommends", "-q", "--"]).args(packages),
        &what,
        "check the package names: the guests use Debian 12 (bookworm) packages (`apt-cache search WORD`, or packages.debian.org)",
    )?;
    Ok(out.lines().filter_map(parse_inst).collect())
}

/// `Inst bash (5.2.15-2+b13 Debian:12.15/oldstable [amd64])` -> (bash, 5.2.15-2+b13).
fn parse_inst(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let version = rest.strip_prefix('(')?.split_whitespace().next()?;
    Some((name.to_string(), version.to_string()))
}

/// Fetches the exact versions given (as [`closure`] resolved them) into `cache`.
pub fn fetch_exact(
    apt: &Apt,
    packages: &[(String, String)],
    cache: &Path,
) -> Result<Vec<Unpacked>> {
    let infos: Vec<PackageInfo> = packages
        .iter()
        .map(|(package, version)| PackageInfo {
            package: package.clone(),
            version: version.clone(),
            depends: Vec::new(),
        })
        .collect();
    fetch_infos(apt, &infos, cache)
}

/// `apt-cache show` of the candidate version.
pub fn show(apt: &Apt, package: &str) -> Result<PackageInfo> {
    let mut infos = show_many(apt, &[package.to_string()])?;
    Ok(infos.remove(0))
}

/// `apt-cache show` of several packages in one call, in the order asked.
pub fn show_many(apt: &Apt, packages: &[String]) -> Result<Vec<PackageInfo>> {
    check_names(packages)?;
    let what = format!("apt-cache show {}", packages.join(" "));
    let out = run(
        apt.configure(&mut Command::new(tool("apt-cache")?)).args(["show", "--no-all-versions", "--"]).args(packages),
        &what,
        "run `sudo apt-get update`; on a distribution without these packages set LAB_KERNEL and LAB_KERNEL_MODULES",
    )?;
    let stanzas: Vec<PackageInfo> = out.split("\n\n").filter_map(parse_stanza).collect();
    packages
        .iter()
        .map(|name| {
            stanzas
                .iter()
                .find(|s| &s.package == name)
                .cloned()
                .ok_or_else(|| Error::Command {
                    what: what.clone(),
                    stderr: format!("no stanza for {name}"),
                    fix: "run `sudo apt-get update` so apt knows the package".into(),
                })
        })
        .collect()
}

/// Fails unless every name is a Debian package name (Debian Policy 5.6.1: lower-case letters,
/// digits, `+`, `-` and `.`, at least two characters, starting with a letter or digit): what
/// reaches apt is a package, never an option (`-v`, `-o Dir=...`) or anything else.
pub fn check_names(packages: &[String]) -> Result<()> {
    match packages.iter().find(|p| !is_package_name(p)) {
        None => Ok(()),
        Some(bad) => Err(Error::Invalid(format!(
            "{bad:?} is not a Debian package name (lower-case letters, digits, '+', '-' and '.', \
             at least two, starting with a letter or digit); give names such as tcpdump or iperf3"
        ))),
    }
}

fn is_package_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() >= 2
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn parse_stanza(text: &str) -> Option<PackageInfo> {
    let text = text.trim_start_matches('\n');
    let field = |name: &str| {
        text.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let depends = field("Depends")
        .unwrap_or_default()
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .collect();
    Some(PackageInfo {
        package: field("Package")?.to_string(),
        version: field("Version")?.to_string(),
        depends,
    })
}

pub(crate) fn only_deb(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "apt-get download left no .deb in {}",
                dir.display()
            ))
        })
}

pub(crate) fn tool(name: &'static str) -> Result<PathBuf> {
    which::which(name).map_err(|_| Error::MissingTool {
        tool: name,
        fix: "the lab fetches Debian packages with apt on a Debian or Ubuntu host; elsewhere set \
              LAB_KERNEL=/path/to/bzImage and LAB_KERNEL_MODULES=/path/to/lib/modules/RELEASE"
            .into(),
    })
}

pub(crate) fn run(cmd: &mut Command, what: &str, fix: &str) -> Result<String> {
    checked(cmd.output(), what, fix)
}

/// A command's stdout, if it ran and succeeded; else what it was, what it said and the fix.
fn checked(out: std::io::Result<std::process::Output>, what: &str, fix: &str) -> Result<String> {
    let out = out.map_err(|e| Error::Command {
        what: what.into(),
        stderr: e.to_string(),
        fix: fix.into(),
    })?;
    if !out.status.success() {
        return Err(
            crate::stopped(what, &out.status).unwrap_or_else(|| Error::Command {
                what: what.into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                fix: fix.into(),
            }),
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_first_stanza_and_flattens_alternatives() {
        let text = "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\n\
                    Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\n\
                    Description: x\n\nPackage: other\nVersion: 1\n";
        let info = parse_stanza(text).expect("stanza");
        assert_eq!(info.package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(info.version, "6.1.192-2");
        assert_eq!(
            info.depends,
            [
                "kmod",
                "linux-base",
                "initramfs-tools",
                "linux-initramfs-tool"
            ]
        );
    }

    #[test]
    fn a_command_a_signal_ended_says_so_instead_of_blaming_its_input() {
        let err = run(
            Command::new("sh").args(["-c", "kill -TERM $$"]),
            "dpkg-deb -x x.deb",
            "the download may be damaged",
        )
        .expect_err("killed");
        let text = err.to_string();
        assert!(
            text.contains("stopped by signal 15") && !text.contains("damaged"),
            "{text}"
        );
    }

    #[test]
    fn only_debian_package_names_reach_apt() {
        for good in [
            "tcpdump",
            "iperf3",
            "libstdc++6",
            "g++",
            "python3.11",
            "0ad",
        ] {
            assert!(is_package_name(good), "{good}");
        }
        for bad in [
            "-v",
            "-o",
            "-oDir::Etc=/tmp",
            "Tcpdump",
            "a",
            "",
            "x y",
            "pkg=1.0",
            "../x",
            ".x",
        ] {
            let err = check_names(&["bash".into(), bad.into()]).expect_err(bad);
            assert!(
                err.to_string().contains("is not a Debian package name"),
                "{err}"
            );
        }
    }

    #[test]
    fn parses_apt_simulate_lines() {
        assert_eq!(
            parse_inst("Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []"),
            Some(("libc6".into(), "2.36-9+deb12u14".into()))
        );
        assert_eq!(parse_inst("Conf libc6 (2.36-9 Debian [amd64])"), None);
    }

    #[test]
    fn a_cached_deb_cut_short_or_changed_is_named_and_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pkg = dir.path().join("hello_1.0");
        std::fs::create_dir(&pkg).expect("mkdir");
        assert!(
            matches!(cached(&pkg), Cached::Missing),
            "no marker yet: being fetched, or killed"
        );
        let deb = pkg.join("hello_1.0_amd64.deb");
        let bytes = b"!<arch>\ndebian-binary".repeat(100);
        std::fs::write(&deb, &bytes).expect("deb");
        let marker = Unpacked {
            package: "hello".into(),
            version: "1.0".into(),
            sha256: sha256_hex(&bytes),
            root: PathBuf::new(),
            files: [("usr/bin/hello".to_string(), sha256_hex(b"hi"))].into(),
        };
        std::fs::write(pkg.join(MARKER), serde_json::to_vec(&marker).expect("json"))
            .expect("marker");
        assert!(matches!(cached(&pkg), Cached::Whole(u) if u.package == "hello"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&deb)
            .expect("open")
            .set_len(10)
            .expect("truncate");
        match cached(&pkg) {
            Cached::Damaged(why) => assert!(
                why.contains("hello_1.0_amd64.deb is damaged (10 bytes"),
                "{why}"
            ),
            other => panic!("a cut-short .deb was trusted: {other:?}"),
        }
        std::fs::remove_file(&deb).expect("rm");
        assert!(
            matches!(cached(&pkg), Cached::Damaged(_)),
            "a marker without its .deb"
        );
    }

    #[test]
    fn a_file_of_an_unpacked_tree_changed_after_its_fetch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/kmod"), b"ELF as shipped").expect("write");
        let unpacked = Unpacked {
            package: "kmod".into(),
            version: "30".into(),
            sha256: "x".into(),
            files: hash_tree(&root).expect("hash"),
            root: root.clone(),
        };
        let kmod = root.join("usr/bin/kmod");
        unpacked
            .verify(&kmod, b"ELF as shipped")
            .expect("as fetched");
        let err = unpacked
            .verify(&kmod, b"ELF of someone else")
            .expect_err("changed");
        assert!(
            err.to_string()
                .contains("changed since kmod 30 was fetched"),
            "{err}"
        );
        let err = unpacked
            .verify(&root.join("usr/bin/extra"), b"")
            .expect_err("new");
        assert!(err.to_string().contains("appeared"), "{err}");
        unpacked
            .verify(Path::new("/usr/bin/env"), b"host")
            .expect("not the tree's");
    }

    #[test]
    fn download_sizes_are_read_per_package_epochs_included() {
        let info = |package: &str, version: &str| PackageInfo {
            package: package.into(),
            version: version.into(),
            depends: Vec::new(),
        };
        let (bash, libcap, libc) = (
            info("bash", "5.2.15-2+b13"),
            info("libcap2-bin", "1:2.66-4+deb12u3+b1"),
            info("libc6", "2.36-9"),
        );
        let printed = "'http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb13_amd64.deb' bash_5.2.15-2+b13_amd64.deb 1490652 SHA256:82\n\
                       'http://deb.debian.org/debian/pool/main/libc/libcap2/libcap2-bin_2.66-4%2bdeb12u3%2bb1_amd64.deb' libcap2-bin_1%3a2.66-4+deb12u3+b1_amd64.deb 35220 SHA256:e7\n";
        assert_eq!(
            sizes_in(printed, &[&libcap, &bash]),
            Some(vec![35_220, 1_490_652])
        );
        // A package apt said nothing of: no total rather than a wrong one.
        assert_eq!(sizes_in(printed, &[&bash, &libc]), None);
    }

    #[test]
    fn sha256_is_hex_of_the_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
