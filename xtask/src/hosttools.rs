//! Host tools the lab needs, installed when we may (root with apt-get), otherwise named with the
//! exact command that installs them.

use std::path::Path;
use std::process::Command;

use lab_harness::qemu;

/// QEMU, and the Debian archive keys apt checks the guests' packages with.
pub fn ensure_qemu() -> anyhow::Result<()> {
    if qemu::find_binary().is_err() && !apt_install_qemu() {
        anyhow::bail!("{} is missing: {}", qemu::QEMU_BINARY, qemu::install_hint());
    }
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    if !keyring.is_file() && !apt_install("debian-archive-keyring") {
        anyhow::bail!(
            "{} is missing: `sudo apt-get install debian-archive-keyring` (Ubuntu has it too)",
            keyring.display()
        );
    }
    Ok(())
}

/// cargo-nextest, the test runner behind `cargo xtask test`: installed once with
/// `cargo install --locked cargo-nextest` (a few minutes) when missing.
pub fn ensure_nextest() -> anyhow::Result<()> {
    let present = || {
        Command::new(env!("CARGO"))
            .args(["nextest", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!("xtask: cargo-nextest runs the tests; installing it once with `cargo install --locked cargo-nextest` (a few minutes)");
    let installed = Command::new(env!("CARGO"))
        .args(["install", "--locked", "cargo-nextest"])
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        installed && present(),
        "cargo-nextest could not be installed; install it yourself (`cargo install --locked cargo-nextest`, or a prebuilt one from https://nexte.st) and run again"
    );
    Ok(())
}

/// Installs QEMU with apt-get if we may. QEMU's packages must all come from one release: a host
/// that has some from Debian's backports already (this project's CI machines come with
/// qemu-utils 10 from bookworm-backports, which breaks qemu-system-common 7.2) takes
/// qemu-system-x86 from that backports suite too.
fn apt_install_qemu() -> bool {
    match qemu_backports_suite() {
        None => apt_install("qemu-system-x86"),
        Some(suite) => {
            eprintln!("xtask: the host's QEMU packages come from {suite}; qemu-system-x86 comes from there too");
            install_from_backports("qemu-system-x86", &suite)
                .inspect_err(|e| eprintln!("xtask: {e:#}"))
                .is_ok()
        }
    }
}

/// The backports suite (`bookworm-backports`) of the QEMU packages installed on the host, if
/// any is a backport: Debian marks a backport's version `~bpoNN`.
fn qemu_backports_suite() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}\n", "qemu-*"])
        .output()
        .ok()?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let backport = installed
        .lines()
        .any(|l| l.starts_with("ii") && l.contains("~bpo"));
    let os_release = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?
        .trim_matches('"');
    (backport && !codename.is_empty()).then(|| format!("{codename}-backports"))
}

/// Installs `package` from Debian's `suite` (a backports suite the host's apt sources may not
/// list). apt sees the suite for this one install through a private source list (the host's
/// `sources.list` plus the suite) and private package lists in a temporary directory: the
/// host's apt configuration and lists are not changed.
fn install_from_backports(package: &str, suite: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(may_use_apt(), "installing needs root and apt-get");
    let view = tempfile::tempdir()
        .with_context(|| format!("a temporary directory for apt's view of {suite}"))?;
    let lists = view.path().join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let host_sources = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let sources = view.path().join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "{host_sources}\ndeb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
        ),
    )?;
    let options = [
        "-o".to_string(),
        format!("Dir::Etc::SourceList={}", sources.display()),
        "-o".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
    ];
    let apt = |args: &[&str]| apt_get(&options, args);
    anyhow::ensure!(
        apt(&["update", "-q"]),
        "apt-get update with {suite} added failed (see above); is deb.debian.org reachable?"
    );
    eprintln!("xtask: installing {package} with `apt-get install --no-remove --no-install-recommends -t {suite} {package}`");
    anyhow::ensure!(
        apt(&["install", "-y", "-q", "--no-remove", "--no-install-recommends", "-t", suite, package]),
        "apt-get did not install {package} from {suite} without removing anything (see above); nothing was changed. \
         Install it yourself: `sudo apt-get install -t {suite} {package}`"
    );
    Ok(())
}

/// Installs `package` with apt-get if we are root on an apt system; true if that worked. Never
/// removes a host package to make room (`--no-remove`: apt stops instead, and we say so).
fn apt_install(package: &str) -> bool {
    if !may_use_apt() {
        return false;
    }
    eprintln!("xtask: installing {package} with `apt-get install --no-remove --no-install-recommends {package}`");
    let ok = apt_get(
        &[],
        &[
            "install",
            "-y",
            "--no-remove",
            "--no-install-recommends",
            package,
        ],
    );
    if !ok {
        eprintln!(
            "xtask: apt-get did not install {package} without removing anything (see above); nothing was changed. \
             Install it yourself, from the release your other QEMU packages come from if there are any \
             (e.g. `sudo apt-get install -t bookworm-backports {package}`)"
        );
    }
    ok
}

/// Whether we may install host packages: root on a system with apt-get.
fn may_use_apt() -> bool {
    nix::unistd::geteuid().is_root() && which::which("apt-get").is_ok()
}

/// Runs `apt-get OPTIONS ARGS` without questions; true if it succeeded.
fn apt_get(options: &[String], args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(options)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}
