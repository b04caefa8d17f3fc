//! The open lab: a user's own files, packages, modules and programs in the guests, what they
//! exit with, and a clear error (before anything boots) for what cannot be.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab_harness::{Error, Extras, Stream, Verdict};
use lab_harness::{Job, Size, Spec};
use lab_tests::{assets, assets_of, Check};
use rstest::rstest;

/// What `lab run` boots for host1 with `extras`.
fn lan(extras: Extras) -> Spec {
    lab_tests::lan(&assets(), 1, &extras)
}

/// A directory with a bash program that checks what the guest has, and its sibling file.
fn user_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("lib")).expect("mkdir");
    std::fs::write(
        dir.path().join("lib/common.sh"),
        "greeting=sibling-file-sourced\n",
    )
    .expect("write");
    let program = r#"#!/bin/bash
set -e
source ./lib/common.sh
echo "$greeting in $(pwd) by bash ${BASH_VERSINFO[0]}"
lsmod | grep -q '^bonding ' && echo "bonding loaded at boot"
modprobe vrf && modprobe sch_ingress && echo "modprobe works"
tc qdisc add dev lo ingress && echo "tc works"
echo '{"a":[1,2]}' | jq -c '.a' && readlink --version | head -1 && date +%N | grep -qv N && echo "GNU date"
echo "cpus $(nproc) memory $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
echo "nics: $(cd /sys/class/net && echo eth*)"
echo "to stderr" >&2
exit "${1:-0}"
"#;
    std::fs::write(dir.path().join("check.sh"), program).expect("write");
    std::fs::set_permissions(
        dir.path().join("check.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::write(
        dir.path().join("needs-python.sh"),
        "#!/usr/bin/python3\nprint('hi')\n",
    )
    .expect("write");
    std::fs::set_permissions(
        dir.path().join("needs-python.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    dir
}

#[rstest]
#[case::pass("0", Verdict::Pass)]
#[case::kselftest_skip("4", Verdict::Skip)]
#[tokio::test]
async fn a_program_from_the_users_directory_gets_its_packages_modules_and_size(
    #[case] exit: &str,
    #[case] verdict: Verdict,
) {
    let dir = user_dir();
    let extras = Extras {
        packages: vec!["jq".into(), "coreutils".into()],
        modules: vec!["bonding".into()],
        module_sources: Vec::new(),
        dir: Some(dir.path().to_path_buf()),
    };
    let size = Size {
        cpus: Some(2),
        memory_mib: Some(320),
        nics: Some(2),
    };
    let mut streamed = (Vec::new(), Vec::new());
    let job = Job::Program(vec!["./check.sh".into(), exit.into()]);
    let spec = lab_tests::lan_of(&assets(), 1, &extras, size);
    let lab = lab_harness::Lab::boot(&assets(), spec).await.check();
    let out = job
        .run_on(
            lab.vm("host1"),
            true,
            &[],
            Duration::from_secs(300),
            |stream, bytes| match stream {
                Stream::Stdout => streamed.0.extend_from_slice(bytes),
                Stream::Stderr => streamed.1.extend_from_slice(bytes),
            },
        )
        .await
        .check();
    lab.shutdown().await.check();
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty() && !out.truncated,
        "a streamed run's output all went by as it came: {out:?}"
    );
    let stdout = String::from_utf8_lossy(&streamed.0);
    let stderr = String::from_utf8_lossy(&streamed.1);
    assert_eq!(
        out.code,
        Some(exit.parse().expect("code")),
        "the exit code comes back as is\n{stdout}\n{stderr}"
    );
    assert_eq!(out.verdict(), verdict);
    for line in [
        "sibling-file-sourced in /lab by bash 5",
        "bonding loaded at boot",
        "modprobe works",
        "tc works",
        "[1,2]",
        "readlink (GNU coreutils)",
        "GNU date",
        "cpus 2 memory ",
        "nics: eth0 eth1\n",
    ] {
        assert!(
            stdout.contains(line),
            "missing {line:?} in stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(stderr.trim(), "to stderr", "stderr stays apart from stdout");
    assert!(!stdout.contains("to stderr"));
}

#[rstest]
#[tokio::test]
async fn a_script_runs_by_its_shebang_and_without_one_by_sh() {
    let bash = Job::Script("#!/bin/bash\necho \"${BASH_VERSION%%.*}\"\n".into());
    let out = lab_tests::run_job(&assets(), &bash, lan(Extras::default()))
        .await
        .check();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5", "{out:?}");
    let sh = Job::Script("echo \"[${BASH_VERSION:-dash}]\"\n".into());
    let out = lab_tests::run_job(&assets(), &sh, lan(Extras::default()))
        .await
        .check();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[dash]",
        "{out:?}"
    );
}

#[rstest]
#[tokio::test]
async fn a_missing_interpreter_is_named_with_the_fix() {
    let dir = user_dir();
    let extras = Extras {
        dir: Some(dir.path().to_path_buf()),
        ..Extras::default()
    };
    let job = Job::Program(vec!["./needs-python.sh".into()]);
    let err = lab_tests::run_job(&assets(), &job, lan(extras))
        .await
        .expect_err("no python in the guest")
        .to_string();
    assert!(
        err.contains("/usr/bin/python3") && err.contains("--package"),
        "{err}"
    );
}

/// Bad requests fail at once, naming the cause and the fix, before any guest boots.
#[rstest]
#[case::unknown_package(Extras { packages: vec!["jqq-no-such-package".into()], ..Extras::default() }, Size::default(), &["jqq-no-such-package", "Unable to locate package"])]
#[case::unknown_module(Extras { modules: vec!["bondingg".into()], ..Extras::default() }, Size::default(), &["no module 'bondingg'", "did you mean bonding"])]
#[case::missing_dir(Extras { dir: Some(PathBuf::from("/nonexistent/selftests")), ..Extras::default() }, Size::default(), &["/nonexistent/selftests", "no such directory"])]
#[case::memory_too_small(Extras::default(), Size { memory_mib: Some(48), ..Size::default() }, &["48 MiB of memory is too small", "--memory"])]
#[case::cpus(Extras::default(), Size { cpus: Some(0), ..Size::default() }, &["0 CPUs", "between 1 and 64 CPUs"])]
#[case::nics(Extras::default(), Size { nics: Some(9), ..Size::default() }, &["9 NICs", "between 1 and 8 NICs"])]
fn bad_extras_are_refused_before_anything_boots(
    #[case] extras: Extras,
    #[case] size: Size,
    #[case] said: &[&str],
) {
    let started = std::time::Instant::now();
    let err = assets()
        .vm_with("host1", &extras, size)
        .expect_err("must be refused");
    assert!(
        matches!(err, Error::Invalid { .. } | Error::Image(_)),
        "{err:?}"
    );
    let text = err.to_string();
    for s in said {
        assert!(text.contains(s), "{s:?} not in: {text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "refused without booting"
    );
}

/// The upstream selftest, unmodified, with its sibling files, as examples/bonding-selftest.sh
/// runs it.
#[rstest]
#[case::debian_6_1("debian-6.1")]
#[case::debian_6_12("debian-6.12")]
#[tokio::test]
async fn upstream_bond_macvlan_ipvlan_selftest_passes_all_96_checks(#[case] kernel: &str) {
    let extras = Extras {
        packages: vec!["jq".into(), "coreutils".into()],
        dir: Some(lab_tests::selftests(&[
            "drivers/net/bonding/bond_macvlan_ipvlan.sh",
        ])),
        ..Extras::default()
    };
    let assets = assets_of(kernel);
    let size = Size {
        memory_mib: Some(512),
        ..Size::default()
    };
    let on = lab_tests::lan_of(&assets, 1, &extras, size);
    let job = Job::Program(vec!["drivers/net/bonding/bond_macvlan_ipvlan.sh".into()]);
    let out = lab_tests::run_job_for(&assets, &job, on, Duration::from_secs(600))
        .await
        .check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = stdout.lines().filter(|l| l.contains("[ OK ]")).count();
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("[FAIL]") || l.contains("[SKIP]"))
        .collect();
    assert!(
        out.success() && ok == 96 && failed.is_empty(),
        "exit {:?}, {ok} OK, not OK: {failed:?}\n{stdout}\n{}",
        out.code,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A layer bigger than the guest's memory, past `Assets::apply`'s rule of thumb: the kernel
/// runs out of room unpacking it and boots on with files missing. The boot fails instead,
/// naming the memory and the option that gives more.
#[rstest]
#[tokio::test]
async fn an_image_that_does_not_fit_in_memory_fails_its_boot_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Random bytes: the archive is not compressed, so this is what the kernel must hold.
    let big: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(120 << 20)
        .collect();
    std::fs::write(dir.path().join("big"), big).expect("write");
    let mut cfg = assets().vm("too-small");
    cfg.snapshots = None;
    cfg.boot
        .layers
        .push(lab_harness::InitrdLayer::Bytes(std::sync::Arc::new(
            lab_rootfs::layers::directory(dir.path()).check(),
        )));
    let err = lab_harness::Vm::boot(cfg)
        .await
        .expect_err("a boot with files missing");
    let text = err.to_string();
    assert!(
        text.contains("did not fit in 256 MiB of memory")
            && text.contains("Initramfs unpacking failed")
            && text.contains("--memory 512"),
        "{text}"
    );
}

/// A real WARN: the init of a module of ours calls WARN(). Debian's kernels have no LKDTM,
/// so the module is built from its source (`tests/data/warn-module`) against the guests'
/// kernel, the way `lab run --module-source` builds a user's, and loaded at boot.
#[rstest]
#[case::fails_the_run(false)]
#[case::allowed(true)]
#[tokio::test]
async fn a_warn_from_a_module_built_from_source_fails_the_run_naming_its_line_unless_allowed(
    #[case] allow: bool,
) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/warn-module");
    let on = lan(Extras {
        module_sources: vec![source.clone()],
        ..Extras::default()
    })
    .with_watch(allow, false);
    let job = Job::Script("lsmod | grep -o '^lab_warn'; ls /lab-modules".into());
    let result = lab_tests::run_job(&assets(), &job, on).await;
    if allow {
        let out = result.check();
        assert!(out.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "lab_warn\nlab_warn.ko",
            "the module is loaded, and its file is in /lab-modules"
        );
        return;
    }
    let err = result.expect_err("a guest whose kernel WARNed fails its run");
    assert_eq!(err.phase(), Some(lab_harness::Phase::Kernel), "{err}");
    let text = err.to_string();
    let at = format!("{}:", source.join("lab_warn.c").display());
    assert!(
        text.contains("\"WARNING: CPU: ") && text.contains(&at) && text.contains("lab_warn_init"),
        "the error names the console line, with the user's source file in it: {text}"
    );
}

/// A module that does not compile is refused before any guest boots, with the compiler's
/// words on the user's own paths (not the copy it was built in) and what to fix.
#[test]
fn a_module_that_does_not_compile_is_refused_with_the_compilers_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("broken");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::write(source.join("Kbuild"), "obj-m := broken.o\n").expect("write");
    std::fs::write(
        source.join("broken.c"),
        "#include <linux/module.h>\nstatic int __init b(void) { return nope; }\n\
         module_init(b);\nMODULE_LICENSE(\"GPL\");\n",
    )
    .expect("write");
    let extras = Extras {
        module_sources: vec![source.clone()],
        ..Extras::default()
    };
    let err = assets()
        .vm_with("broken", &extras, Size::default())
        .expect_err("it does not compile")
        .to_string();
    let file = source.canonicalize().expect("path").join("broken.c");
    assert!(
        err.contains(&format!("{}:2:", file.display()))
            && err.contains("nope")
            && err.contains("fix the module's source"),
        "{err}"
    );
    assert_eq!(
        source.read_dir().expect("read").count(),
        2,
        "nothing was built in the user's directory"
    );
}

/// `--kmemleak` on a kernel built without it (every Debian kernel) is refused before a guest
/// boots, naming the kernel's config and the way to a kernel that has it.
#[tokio::test]
async fn kmemleak_on_a_kernel_without_it_is_refused_before_anything_boots() {
    let assets = assets();
    let on = lan(Extras::default()).with_watch(false, true);
    let started = std::time::Instant::now();
    let err = lab_tests::run_job(&assets, &Job::Script("true".into()), on)
        .await
        .expect_err("Debian's kernels have no kmemleak");
    let text = err.to_string();
    let config = assets
        .kernel
        .bzimage
        .with_file_name(format!("config-{}", assets.kernel.release));
    assert!(
        text.contains(&format!(
            "CONFIG_DEBUG_KMEMLEAK is not set in {}",
            config.display()
        )) && text.contains("--kernel-tree"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "refused late");
}

/// The guest's half of `--kmemleak` (debugfs mounted, the scan, its report read) on a kernel
/// the config check was not asked about: a kernel without kmemleak fails the guest's shutdown
/// saying so, rather than passing as "no leaks".
#[tokio::test]
async fn a_kmemleak_scan_on_a_kernel_without_it_fails_instead_of_passing() {
    let mut cfg = lab_tests::config("noleakscan");
    cfg.policy.kmemleak = true;
    let vm = lab_tests::boot(cfg).await;
    let err = vm.shutdown().await.expect_err("nothing was scanned");
    assert_eq!(err.phase(), Some(lab_harness::Phase::Kernel), "{err}");
    assert!(
        err.to_string()
            .contains("the scan failed: kmemleak: no /sys/kernel/debug/kmemleak"),
        "{err}"
    );
}

/// A real kernel splat: a task stuck in uninterruptible sleep past the hung-task detector's
/// one second (a write to a frozen filesystem), which the kernel reports as
/// "INFO: task ... blocked for more than 1 seconds". Debian's kernels have no LKDTM to WARN
/// on request; this needs nothing but busybox and the loop and ext4 modules.
const HUNG_TASK: &str = include_str!("../data/hung-task.sh");

#[rstest]
#[case::fails_the_run(false)]
#[case::allowed(true)]
#[tokio::test]
async fn a_kernel_splat_fails_the_run_naming_its_line_unless_allowed(#[case] allow: bool) {
    let on = lan(Extras::default()).with_watch(allow, false);
    let job = Job::Script(HUNG_TASK.into());
    let result = lab_tests::run_job(&assets(), &job, on).await;
    if allow {
        let out = result.check();
        assert!(out.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
        return;
    }
    let err = result.expect_err("a guest whose kernel reported a hung task fails its run");
    assert_eq!(err.phase(), Some(lab_harness::Phase::Kernel), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"INFO: task ") && text.contains("blocked for more than 1 seconds."),
        "the error names the console line: {text}"
    );
    assert!(
        text.contains("--allow-kernel-splats"),
        "and the way out: {text}"
    );
}
