//! The guest image does not say who built it where. The same commit once gave one image as root
//! and another as a user: the static agent held 11 paths of `$CARGO_HOME/registry/src/…`
//! (panic locations). Here the agent is built a second time from a copy of this checkout at
//! another path, with another `CARGO_HOME` (its registry a link to this one's, so nothing is
//! downloaded), into another target directory: the two binaries are the same bytes, and so is
//! the image made of the agent and the pinned packages.

use std::path::Path;
use std::process::Command;

mod support;

/// The files git tracks in this checkout, copied under `to`.
fn copy_checkout(to: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    for file in out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(file).expect("a UTF-8 path"));
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&from, &dest).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

fn build_agent(workspace: Option<&Path>, env: &[(&str, &Path)]) -> Vec<u8> {
    let mut cmd = support::xtask();
    cmd.arg("build-agent");
    if let Some(w) = workspace {
        cmd.arg("--workspace").arg(w);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("xtask runs");
    assert!(
        out.status.success(),
        "building the agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_agent_is_the_same_bytes_from_another_checkout_path_and_cargo_home() {
    let here = build_agent(None, &[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (checkout, cargo_home, target) = (
        tmp.path().join("elsewhere/macvlan-lab"),
        tmp.path().join("another-cargo-home"),
        tmp.path().join("target"),
    );
    copy_checkout(&checkout);
    let real_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    std::fs::create_dir_all(&cargo_home).expect("mkdir");
    std::os::unix::fs::symlink(real_home.join("registry"), cargo_home.join("registry"))
        .expect("symlink");
    let there = build_agent(
        Some(&checkout),
        &[
            ("CARGO_HOME", &cargo_home),
            ("CARGO_TARGET_DIR", &target),
            ("CARGO_NET_OFFLINE", Path::new("true")),
        ],
    );
    // What the difference would be made of, for the message.
    let leaks: Vec<String> = [&checkout, &cargo_home, &real_home]
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| {
            [&here, &there]
                .iter()
                .any(|bin| bin.windows(p.len()).any(|w| w == p.as_bytes()))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "the agent names where it was built: {leaks:?}"
    );
    assert!(
        here == there,
        "two builds of one commit differ ({} and {} bytes)",
        here.len(),
        there.len()
    );
}
