//! Snapshots: guests of one shape restored from one saved state are ready fast, and are not
//! twins: their own MAC (in the guest and in QEMU), hostname, clock and kernel randomness.

use lab_harness::{BootKind, Cmd, Vm};
use lab_tests::{assets, Check};

/// A guest of the base shape whose snapshots live in `store` (a test's own, empty at first).
fn in_store(
    assets: &lab_harness::Assets,
    store: &std::path::Path,
    name: &str,
) -> lab_harness::VmConfig {
    let mut cfg = assets.vm(name);
    cfg.snapshots = Some(store.to_path_buf());
    cfg
}

/// What a clone reads from its kernel's generator and how it names itself.
async fn identity(vm: &Vm) -> Vec<String> {
    let script = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid; \
                  ip link add link eth0 mv0 type macvlan mode bridge; cat /sys/class/net/mv0/address; \
                  cat /sys/class/net/eth0/address; hostname";
    let out = vm.succeed(Cmd::script(script)).await.check();
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn clones_of_one_snapshot_restore_fast_and_are_not_twins() {
    let assets = assets();
    // The first guest of a fresh store boots cold and takes the snapshot.
    let store = tempfile::tempdir().expect("tempdir");
    let shaped = |name: &str| in_store(&assets, store.path(), name);
    let first = Vm::boot(shaped("first")).await.check();
    assert_eq!(first.boot_kind(), &BootKind::Cold);
    let (a, b) = tokio::join!(Vm::boot(shaped("clone-a")), Vm::boot(shaped("clone-b")));
    let (a, b) = (a.check(), b.check());
    for vm in [&a, &b] {
        assert_eq!(
            vm.boot_kind(),
            &BootKind::Restored,
            "{} restored",
            vm.name()
        );
    }
    let (ia, ib) = (identity(&a).await, identity(&b).await);
    assert_ne!(ia[0], ib[0], "/dev/urandom differs between clones");
    assert_ne!(ia[1], ib[1], "UUIDs differ");
    assert_ne!(ia[2], ib[2], "new macvlans get different MACs");
    for (vm, id) in [(&a, &ia), (&b, &ib)] {
        assert_eq!(
            id[3],
            vm.mac().to_string(),
            "{}'s eth0 has its own MAC",
            vm.name()
        );
        let filter = vm.qmp().rx_filter().await.check();
        assert_eq!(
            filter.main_mac,
            vm.mac().to_string(),
            "QEMU agrees with {}'s eth0",
            vm.name()
        );
        assert_eq!(id[4], vm.name(), "its own hostname");
    }
    // Both map the snapshot's memory file copy-on-write, so they share its pages; its zero
    // pages are holes, not disk blocks.
    let memory = only_snapshot(store.path()).join("memory");
    for vm in [&a, &b] {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", vm.qemu_pid())).expect("maps");
        let mapping = maps
            .lines()
            .find(|l| l.ends_with(&*memory.to_string_lossy()))
            .unwrap_or_else(|| panic!("{} maps {}: {maps}", vm.name(), memory.display()));
        assert_eq!(
            mapping.split_whitespace().nth(1),
            Some("rw-p"),
            "a private mapping: {mapping}"
        );
    }
    let meta = std::fs::metadata(&memory).expect("memory");
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < meta.len() / 2,
        "zero pages punched out: {meta:?}"
    );
    let skew = a
        .succeed("date +%s")
        .await
        .check()
        .trim()
        .parse::<i64>()
        .expect("seconds");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        (skew - host).abs() <= 2,
        "the clone has the host's time: {skew} vs {host}"
    );
    for vm in [first, a, b] {
        vm.shutdown().await.check();
    }
}

/// The snapshot directory of the one shape in `store`.
fn only_snapshot(store: &std::path::Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(store)
        .expect("store")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one shape, one snapshot: {dirs:?}");
    dirs[0].clone()
}

#[rstest::rstest]
#[case::state_cut_short("state", "cut short")]
#[case::memory_cut_short("memory", "cut short")]
#[case::state_damaged("state", "not what was saved")]
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_snapshot_is_named_booted_around_and_taken_again(
    #[case] file: &str,
    #[case] damage: &str,
) {
    let assets = assets();
    let store = tempfile::tempdir().expect("tempdir");
    let shaped = |name: &str| in_store(&assets, store.path(), name);
    Vm::boot(shaped("taker"))
        .await
        .check()
        .shutdown()
        .await
        .check();
    let state = only_snapshot(store.path()).join(file);
    let len = std::fs::metadata(&state).expect("state").len();
    if damage == "cut short" {
        // An earlier run killed while writing it, or a full disk.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&state)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
    } else {
        // The right size, wrong contents: its hash tells, before QEMU parses any of it.
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&state)
            .expect("open");
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.write_all(&[0xff; 4096]).expect("scribble");
    }
    let survivor = Vm::boot(shaped("survivor")).await.check();
    match survivor.boot_kind() {
        BootKind::Fallback(why) => {
            assert!(why.contains(damage), "the reason names the damage: {why}");
            assert!(
                damage != "cut short" || why.contains(file),
                "and which file: {why}"
            );
            assert!(
                why.contains(&only_snapshot(store.path()).display().to_string()),
                "and the file: {why}"
            );
        }
        other => panic!("a broken snapshot was not noticed: {other:?}"),
    }
    assert_eq!(
        survivor.succeed("hostname").await.check().trim(),
        "survivor"
    );
    survivor.shutdown().await.check();
    // Taken again whole (its size as recorded), and the next guest restores it.
    let snapshot = only_snapshot(store.path());
    let meta: lab_harness::snapshot::Meta =
        serde_json::from_slice(&std::fs::read(snapshot.join("meta.json")).expect("meta"))
            .expect("meta json");
    assert_eq!(
        std::fs::metadata(snapshot.join("state"))
            .expect("state")
            .len(),
        meta.size,
        "retaken whole"
    );
    assert_eq!(meta.taken_from, "survivor");
    let next = Vm::boot(shaped("next")).await.check();
    assert_eq!(next.boot_kind(), &BootKind::Restored);
    next.shutdown().await.check();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_store_every_guest_boots_its_kernel() {
    let mut cfg = assets().vm("cold");
    cfg.snapshots = None;
    let vm = Vm::boot(cfg).await.check();
    assert_eq!(vm.boot_kind(), &BootKind::Cold);
    let dmesg = vm.succeed("dmesg | head -1").await.check();
    assert!(
        dmesg.contains("Linux version"),
        "a kernel that booted here: {dmesg}"
    );
    vm.shutdown().await.check();
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_of_a_new_shape_booting_together_make_one_snapshot() {
    let assets = assets();
    let store = tempfile::tempdir().expect("tempdir");
    let shaped = |name: &str| in_store(&assets, store.path(), name);
    // Each takes the shape's lock on a file descriptor of its own, as separate processes do.
    let (a, b, c) = tokio::join!(
        Vm::boot(shaped("a")),
        Vm::boot(shaped("b")),
        Vm::boot(shaped("c"))
    );
    let vms = [a.check(), b.check(), c.check()];
    let mut kinds: Vec<String> = vms
        .iter()
        .map(|vm| format!("{:?}", vm.boot_kind()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["Cold", "Restored", "Restored"],
        "one guest took the snapshot, the others waited for it"
    );
    let snapshot = only_snapshot(store.path());
    let leftovers: Vec<_> = std::fs::read_dir(store.path())
        .expect("store")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".taking"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no half-made snapshot left: {leftovers:?}"
    );
    assert!(snapshot.join("meta.json").is_file());
    for vm in vms {
        vm.shutdown().await.check();
    }
}
