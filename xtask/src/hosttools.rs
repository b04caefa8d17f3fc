//! Host tools the lab needs, installed when we may (root with apt-get), otherwise named with the
//! exact command that installs them.

use std::path::Path;
use std::process::Command;

use lab_harness::qemu;

/// QEMU, and the Debian archive keys apt checks the guests' packages with.
pub fn ensure_qemu() -> anyhow::Result<()> {
    if qemu::find_binary().is_err() && !apt_install("qemu-system-x86") {
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

/// Installs `package` with apt-get if we are root on an apt system; true if that worked. Never
/// removes a host package to make room (`--no-remove`: apt stops instead, and we say so).
fn apt_install(package: &str) -> bool {
    if !nix::unistd::geteuid().is_root() || which::which("apt-get").is_err() {
        return false;
    }
    eprintln!("xtask: installing {package} with `apt-get install --no-remove --no-install-recommends {package}`");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-remove",
            "--no-install-recommends",
            package,
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask: apt-get did not install {package} without removing anything (see above); nothing was changed. \
             Install it yourself, from the release your other QEMU packages come from if there are any \
             (e.g. `sudo apt-get install -t bookworm-backports {package}`)"
        );
    }
    ok
}
