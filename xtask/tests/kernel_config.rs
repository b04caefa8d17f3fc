//! `cargo xtask kernel-config` prints what a guest kernel needs; every kernel the lab
//! provisioned (Debian's, from kernels/kernels.toml) has each of those options set, built in or
//! as a module. So a tree's `.config` merged with the fragment has what the lab's own kernels
//! have, where it matters to the lab.

use std::path::PathBuf;
use std::process::Command;

fn lab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lab")
}

#[test]
fn the_printed_fragment_is_the_one_the_checks_use() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("kernel-config")
        .output()
        .expect("xtask runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        lab_kernels::config::FRAGMENT
    );
}

#[test]
fn every_provisioned_debian_kernel_sets_every_option_the_lab_needs() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(lab_dir()).expect("target/lab: run `cargo xtask provision`") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !(name.starts_with("assets-") && name.ends_with(".json")) {
            continue;
        }
        let assets = lab_harness::Assets::load_with(&path, lab_harness::Settings::default())
            .unwrap_or_else(|e| panic!("{e}"));
        // Only Debian's: a kernel tree's assets (a stand-in tree's, left by kernel_tree.rs in
        // an earlier run) have no `boot/config-*` beside their modules.
        if !matches!(assets.kernel.origin, lab_kernels::Origin::Debian { .. }) {
            continue;
        }
        // `<root>/lib/modules/<release>` beside `<root>/boot/config-<release>`.
        let root = assets.kernel.modules_dir.join("../../..");
        let config = root.join(format!("boot/config-{}", assets.kernel.release));
        let text = std::fs::read_to_string(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        let missing = lab_kernels::config::missing_from(&text);
        assert!(
            missing.is_empty(),
            "{} lacks what the lab needs: {missing:?}",
            assets.kernel.id
        );
        checked.push(assets.kernel.id);
    }
    assert!(
        !checked.is_empty(),
        "no provisioned kernel in {}: run `cargo xtask provision`",
        lab_dir().display()
    );
}
