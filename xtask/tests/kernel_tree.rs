//! `--kernel-tree DIR`: a kernel developer's own build boots in the lab, with its modules, and
//! modules of `--module-source` are built in that tree.
//!
//! Building a real Linux tree takes hours on a 2-core machine without KVM, so the test's tree
//! is a stand-in that is, to the lab, what a built tree is: `arch/x86/boot/bzImage` (Debian's
//! kernel), `include/config/kernel.release`, `modules.order`, and a Makefile whose
//! `modules_install` installs Debian's modules under `INSTALL_MOD_PATH` and whose `M=` builds
//! go to Debian's headers, as a real tree's own would. The lab calls the same targets with the
//! same variables on both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lab_harness::Assets;

/// A stand-in built tree in `dir` for the suite's kernel; its Makefile appends a line to
/// `installs.log` each time `modules_install` runs.
fn stand_in_tree(dir: &Path, assets: &Assets) -> PathBuf {
    let kernel = &assets.kernel;
    let lab_kernels::Origin::Debian {
        package, version, ..
    } = &kernel.origin
    else {
        panic!("the suite's kernel is Debian's: {}", kernel.origin);
    };
    let apt = assets.apt().expect("apt");
    let headers = lab_kernels::kbuild::KernelBuild::debian(&apt, package, version, &assets.cache)
        .expect("Debian's headers");
    let tree = dir.join("linux");
    std::fs::create_dir_all(tree.join("arch/x86/boot")).expect("mkdir");
    std::fs::create_dir_all(tree.join("include/config")).expect("mkdir");
    std::fs::copy(&kernel.bzimage, tree.join("arch/x86/boot/bzImage")).expect("bzImage");
    std::fs::write(
        tree.join("include/config/kernel.release"),
        format!("{}\n", kernel.release),
    )
    .expect("release");
    // One module of its own, made now: each test run is a build the cache has not seen.
    std::fs::create_dir_all(tree.join("lab")).expect("mkdir");
    std::fs::write(tree.join("lab/stamp.ko"), "").expect("stamp.ko");
    std::fs::write(tree.join("modules.order"), "lab/stamp.o\n").expect("modules.order");
    let makefile = format!(
        "# A stand-in for a built Linux tree (xtask/tests/kernel_tree.rs).\n\
         modules_install:\n\
         \tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/{release}\n\
         \tcp -R {modules}/. $(INSTALL_MOD_PATH)/lib/modules/{release}/\n\
         \techo $(INSTALL_MOD_PATH) >> {log}\n\
         modules:\n\
         \t$(MAKE) -C {headers} M=$(M) modules\n",
        release = kernel.release,
        modules = kernel.modules_dir.display(),
        log = tree.join("installs.log").display(),
        headers = headers.dir.display(),
    );
    std::fs::write(tree.join("Makefile"), makefile).expect("Makefile");
    tree
}

fn lab_run(tree: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["lab", "run", "--kernel-tree"])
        .arg(tree)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("xtask runs")
}

#[test]
fn a_kernel_tree_boots_with_its_modules_and_builds_module_sources_in_it() {
    let assets = lab_tests::assets();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = stand_in_tree(dir.path(), &assets);
    let warn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/warn-module");
    let job = "uname -r; modprobe bonding && echo bonding-loaded; lsmod | grep -o '^lab_warn'";
    for _ in 0..2 {
        let out = lab_run(
            &tree,
            &[
                "--module-source",
                warn.to_str().expect("utf-8"),
                "--allow-kernel-splats",
                "--",
                "sh",
                "-c",
                job,
            ],
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [assets.kernel.release.as_str(), "bonding-loaded", "lab_warn"],
            "the tree's kernel, a module of its modules_install, and one built in it:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("the tree {}", tree.display())),
            "the run says which kernel it booted:\n{stderr}"
        );
    }
    // The kernel under test beside a stable peer: host1 on the tree, host2 on debian-6.1,
    // the selftests' drivers/net/ping.py between them over ssh; the run's summary names both
    // kernels.
    let selftests = lab_tests::selftests(&["drivers/net/ping.py"])
        .to_string_lossy()
        .into_owned();
    let run_dir_file = dir.path().join("run-dir");
    let out = lab_run(
        &tree,
        &[
            "--hosts",
            "2",
            "--peer-kernel",
            "debian-6.1",
            "--remote",
            "host2",
            "--dir",
            &selftests,
            "--run-dir-to",
            run_dir_file.to_str().expect("utf-8"),
            "--",
            "drivers/net/ping.py",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("ok 3 ping.test_tcp"),
        "{stdout}\n{stderr}"
    );
    let run_dir = std::fs::read_to_string(&run_dir_file).expect("the run's directory");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(run_dir.trim()).join("summary.json"))
            .expect("summary.json"),
    )
    .expect("JSON");
    let kernels: Vec<&str> = summary["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["kernel"].as_str().unwrap_or_default())
        .collect();
    assert!(
        kernels.len() == 2
            && kernels[0].contains(&format!("the tree {}", tree.display()))
            && kernels[1].contains("linux-image-6.1.0-"),
        "{kernels:?}"
    );
    assert!(
        stderr.contains("host1 boots") && stderr.contains("host2 boots"),
        "the run says which kernel each host boots:\n{stderr}"
    );
    assert_eq!(summary["passed"], true, "{summary}");

    // One host of a lab on the tree's kernel, beside one on the suite's (a file's
    // `kernel_tree`, relative to the file): in the same test, since the lab keeps one tree's
    // build at a time.
    let file = dir.path().join("tree-beside-debian.toml");
    std::fs::write(
        &file,
        "[[host]]\nname = \"dev\"\nkernel_tree = \"linux\"\n\n[[host]]\nname = \"peer\"\n\n\
         [[check]]\nhost = \"dev\"\nreachable = \"192.168.88.2\"\n\n\
         [[check]]\nhost = \"peer\"\nrun = \"modprobe bonding\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["lab", "test"])
        .arg(&file)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("xtask runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "dev boots {} (the tree {}",
            assets.kernel.release,
            tree.display()
        )),
        "the lab says dev booted the tree's kernel:\n{stderr}"
    );
    let installs = std::fs::read_to_string(tree.join("installs.log")).unwrap_or_default();
    assert_eq!(
        installs.lines().count(),
        1,
        "an unchanged build is installed once: {installs}"
    );
    assert!(
        installs.starts_with(&assets.cache.join("trees").display().to_string()),
        "installed into the lab's cache, not the host: {installs}"
    );
    // The suite's kernel stays the default one.
    let default =
        Assets::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/assets.json"))
            .expect("assets.json");
    assert!(
        matches!(default.kernel.origin, lab_kernels::Origin::Debian { .. }),
        "assets.json is still Debian's kernel: {}",
        default.kernel.origin
    );
    // What was made for the tree is kept with its build, apart from Debian's kernels' files.
    let tree_assets =
        Assets::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab/assets-tree.json"))
            .expect("assets-tree.json");
    let build = tree_assets
        .kernel
        .bzimage
        .parent()
        .expect("its build's directory");
    assert!(
        build.starts_with(assets.cache.join("trees")),
        "{}",
        build.display()
    );
    for made in [
        Some(&tree_assets.image.path),
        tree_assets.modules_disk.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            made.starts_with(build),
            "{} is not in {}",
            made.display(),
            build.display()
        );
    }
}

#[test]
fn a_kernel_tree_that_was_not_built_says_how_to_build_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let out = lab_run(dir.path(), &["--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("it is not a built kernel tree")
            && stderr.contains("cargo xtask kernel-config"),
        "{stderr}"
    );
    assert!(started.elapsed().as_secs() < 60, "refused late");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "lab",
            "run",
            "--kernel-tree",
            "/x",
            "--kernel",
            "debian-6.12",
            "--",
            "true",
        ])
        .output()
        .expect("xtask runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "one kernel at a time"
    );
}
