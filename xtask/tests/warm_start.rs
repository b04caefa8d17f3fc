//! A warm start is a few file reads: once everything is provisioned and Debian's package
//! lists are less than a day old, `cargo xtask provision` (and every command that starts with
//! it, `lab run` among them) runs no apt tool. It used to ask the host's apt for its proxy on
//! every run, and to stop when lists a day old could not be fetched again, so a laptop offline
//! for a day could not start a lab it had everything for (it now goes on with what it has).

mod support;
use support::{text, xtask};

#[test]
fn a_warm_provision_runs_no_apt_tool() {
    // Warm first: what the suite provisioned is still current, or this makes it so.
    let out = xtask()
        .args(["provision", "-q"])
        .output()
        .expect("xtask runs");
    assert!(out.status.success(), "{}", text(&out));

    // apt-config, apt-get and apt-cache as stubs that say they ran, and fail.
    let stubs = tempfile::tempdir().expect("tempdir");
    let ran = stubs.path().join("ran");
    for tool in ["apt-config", "apt-get", "apt-cache"] {
        let path = stubs.path().join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho {tool} >> '{}'\nexit 1\n", ran.display()),
        )
        .expect("stub");
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&path, executable).expect("chmod");
    }
    let path = std::env::join_paths(std::iter::once(stubs.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let out = xtask()
        .args(["provision", "-q"])
        .env("PATH", path)
        .output()
        .expect("xtask runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !ran.exists(),
        "a warm provision ran {:?}",
        std::fs::read_to_string(&ran).unwrap_or_default()
    );
}
