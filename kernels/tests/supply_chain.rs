//! Packages are what Debian's signed indices say they are: apt checks every `.deb` it fetches
//! against the hash its (signed) index lists, and a package whose bytes differ is refused, with
//! nothing of it left in the cache. Shown with a local archive of two packages, one intact and
//! one changed after it was indexed (same size, one byte different).

use std::path::Path;
use std::process::Command;

use lab_kernels::archive::{use_archive, Archive};
use lab_kernels::deb::{fetch_and_unpack, sha256_hex};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `<repo>/<name>_1.0_all.deb` holding one file.
fn package(repo: &Path, name: &str) -> std::path::PathBuf {
    let tree = repo.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("DEBIAN")).expect("mkdir");
    std::fs::create_dir_all(tree.join("usr/share/lab-test")).expect("mkdir");
    std::fs::write(
        tree.join("usr/share/lab-test").join(name),
        format!("{name}\n"),
    )
    .expect("file");
    let control = format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: lab <lab@example.org>\nDescription: supply-chain test\n");
    std::fs::write(tree.join("DEBIAN/control"), control).expect("control");
    let deb = repo.join(format!("{name}_1.0_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb));
    std::fs::remove_dir_all(&tree).expect("rm tree");
    deb
}

#[test]
fn a_package_whose_bytes_differ_from_its_index_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("repo");
    package(&repo, "lab-intact");
    let tampered = package(&repo, "lab-tampered");
    // The index, with the true hashes.
    let packages = Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&repo)
        .output()
        .expect("dpkg-scanpackages");
    assert!(packages.status.success());
    std::fs::write(repo.join("Packages"), &packages.stdout).expect("Packages");
    let release = format!(
        "Origin: lab-test\nLabel: lab-test\nSuite: test\nCodename: test\nDate: Sun, 29 Nov 2026 00:00:00 UTC\nArchitectures: all amd64\nSHA256:\n {} {} Packages\n",
        sha256_hex(&packages.stdout),
        packages.stdout.len()
    );
    std::fs::write(repo.join("Release"), release).expect("Release");
    // Changed after it was indexed: same size, its last byte different.
    let mut bytes = std::fs::read(&tampered).expect("deb");
    *bytes.last_mut().expect("not empty") ^= 0xff;
    std::fs::write(&tampered, bytes).expect("tamper");

    let cache = dir.path().join("cache");
    // `trusted=yes` stands in for the signature check of a real archive (this one has no key);
    // the hashes the index lists are checked all the same.
    let archive = Archive {
        sources: vec![format!("deb [trusted=yes] file:{} ./", repo.display())],
        keyring: "/usr/share/keyrings/debian-archive-keyring.gpg".into(),
    };
    let apt = use_archive(&archive, &cache)
        .unwrap_or_else(|e| panic!("apt-get update on the local archive: {e}"));
    let debs = cache.join("debs");
    let intact =
        fetch_and_unpack(&apt, "lab-intact", &debs).expect("the intact package is fetched");
    assert!(intact.root.join("usr/share/lab-test/lab-intact").is_file());

    let err = fetch_and_unpack(&apt, "lab-tampered", &debs)
        .expect_err("a package that differs from its index is refused");
    let message = err.to_string();
    assert!(
        message.contains("Hash Sum mismatch"),
        "apt says why: {message}"
    );
    let left: Vec<String> = std::fs::read_dir(&debs)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tampered"))
        .collect();
    assert!(left.is_empty(), "nothing of it in the cache: {left:?}");
}
