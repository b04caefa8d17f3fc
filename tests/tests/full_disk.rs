//! A full disk: a guest whose snapshot does not fit boots cold and says why, nothing half-made is
//! left for a later run to trust, and a write that fails says the disk is full and what to do.
//!
//! The disk is a 64 MiB tmpfs, mounted in a mount namespace of this test's own (`unshare -m` as
//! root, as in CI; `unshare -Urm`, a user namespace, otherwise), so the host sees no mount. The
//! test binary runs itself again in there, with [`INNER`] naming the tmpfs.

use std::path::Path;
use std::process::Command;

use lab_harness::{BootKind, Vm};
use lab_tests::{assets, Check};

const INNER: &str = "LAB_TEST_FULL_DISK";
const TEST: &str = "a_full_disk_costs_a_cold_boot_and_a_clear_error_never_a_half_made_file";

#[test]
fn a_full_disk_costs_a_cold_boot_and_a_clear_error_never_a_half_made_file() {
    if let Some(disk) = std::env::var_os(INNER) {
        return in_the_namespace(Path::new(&disk));
    }
    let disk = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("this test binary");
    let script = format!(
        "mount -t tmpfs -o size=64m,mode=0700 lab-full-disk '{}' && exec '{}' --exact {TEST} --nocapture",
        disk.path().display(),
        exe.display()
    );
    let namespace: &[&str] = if nix::unistd::geteuid().is_root() {
        &["-m"]
    } else {
        &["-Urm"]
    };
    let out = Command::new("unshare")
        .args(namespace)
        .args(["sh", "-c", &script])
        .env(INNER, disk.path())
        .output()
        .expect("unshare (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "in a mount namespace of its own (unshare {}; without root this needs unprivileged user namespaces): {text}",
        namespace.join(" ")
    );
    assert!(
        text.contains("full disk checked"),
        "the checks ran in the namespace: {text}"
    );
    assert_eq!(
        std::fs::read_dir(disk.path()).expect("ls").count(),
        0,
        "the host never saw the tmpfs"
    );
}

fn in_the_namespace(disk: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = disk.join("snapshots");
    std::fs::create_dir(&store).expect("store");
    let assets = assets();
    let boot = |name: &str| {
        let mut cfg = assets.vm(name);
        cfg.snapshots = Some(store.clone());
        let vm = rt.block_on(Vm::boot(cfg)).check();
        assert_eq!(
            vm.boot_kind(),
            &BootKind::Cold,
            "no snapshot fits in 64 MiB: {name} boots cold"
        );
        assert_eq!(rt.block_on(vm.succeed("echo up")).check(), "up\n");
        rt.block_on(vm.shutdown()).check();
    };
    boot("first");
    boot("second");
    let left: Vec<String> = std::fs::read_dir(&store)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter()
            .all(|n| n.ends_with(".lock") || n == lab_kernels::cache::TAG),
        "no snapshot, whole or half-made (only locks and the store's tag): {left:?}"
    );

    // Fill the disk, then write what a run writes: the error names the file and the fix, and
    // the file a later run would read is not there half-written.
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0x5a_u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let target = disk.join("assets.json");
    let err = assets.save(&target).expect_err("nothing fits");
    let message = err.to_string();
    assert!(message.contains("fix: the disk is full"), "{message}");
    assert!(!target.exists(), "no half-written assets.json: {message}");
    let temp: Vec<_> = std::fs::read_dir(disk)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "filler" && n != "snapshots")
        .collect();
    assert!(temp.is_empty(), "no temp file left: {temp:?}");
    std::fs::remove_file(&filler).expect("rm filler");
    eprintln!("what a full disk says: {message}");
    eprintln!("full disk checked");
}
