//! Host tools the lab needs, installed when we may (root with apt-get), otherwise named with the
//! exact command that installs them.

use std::process::Command;

use lab_harness::qemu;

pub fn ensure_qemu() -> anyhow::Result<()> {
    if qemu::find_binary().is_ok() {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    if root && which::which("apt-get").is_ok() {
        eprintln!("xtask: {} is missing; installing qemu-system-x86 with apt-get", qemu::QEMU_BINARY);
        let ok = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
        if ok && qemu::find_binary().is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!("{} is missing: {}", qemu::QEMU_BINARY, qemu::install_hint())
}
