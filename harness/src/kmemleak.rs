//! `--kmemleak`: the kernel's leak detector, scanned when a guest's job is done, failing the
//! run on an unreferenced object as NIPA and libbpf's CI do.
//!
//! kmemleak reports only objects older than its minimum age (5 s), so the scan runs twice,
//! 5 s apart, before the report is read. It needs a kernel built with
//! `CONFIG_DEBUG_KMEMLEAK=y`, which none of Debian's is: the lab says so before any
//! guest boots, from the kernel's own config file (`Assets::check_kmemleak`).

use std::path::Path;

use crate::error::{Error, Result};

/// The option a kernel needs.
pub const OPTION: &str = "CONFIG_DEBUG_KMEMLEAK";
/// Added to the kernel command line: a kernel built with kmemleak off by default turns it on.
pub const CMDLINE: &str = "kmemleak=on";

/// Runs in the guest once its job is done: debugfs mounted, two scans 5 s apart, the report.
pub const SCAN: &str = "grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug; \
     k=/sys/kernel/debug/kmemleak; [ -e $k ] || { echo 'kmemleak: no /sys/kernel/debug/kmemleak' >&2; exit 3; }; \
     echo scan > $k && sleep 5 && echo scan > $k && cat $k";

/// Fails unless `config` (the text of `path`, kernel `release`'s config) enables kmemleak,
/// naming the file and what to do.
pub(crate) fn check_config_text(path: &Path, config: &str, release: &str) -> Result<()> {
    if config.lines().any(|l| l == format!("{OPTION}=y")) {
        return Ok(());
    }
    Err(Error::invalid(
        format!(
            "kmemleak: kernel {release} was built without kmemleak ({OPTION} is not set in {}); \
             none of Debian's kernels has it",
            path.display()
        ),
        format!(
            "build a kernel tree with {OPTION}=y (and DEBUG_FS) and boot it with --kernel-tree DIR"
        ),
    ))
}

/// The leaks in kmemleak's report: each `unreferenced object` block, as it reads.
pub fn leaks(report: &str) -> Vec<String> {
    let mut leaks: Vec<String> = Vec::new();
    for line in report.lines() {
        if line.starts_with("unreferenced object") {
            leaks.push(line.to_string());
        } else if let Some(leak) = leaks.last_mut() {
            leak.push('\n');
            leak.push_str(line);
        }
    }
    leaks
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "unreferenced object 0xffff888003a2c000 (size 64):\n  \
        comm \"insmod\", pid 99, jiffies 4294893210 (age 5.120s)\n  hex dump (first 32 bytes):\n  \
        backtrace:\n    [<ffffffffa0000011>] leaky_init+0x11/0x1000 [leaky]\n\
        unreferenced object 0xffff888003a2c040 (size 64):\n  comm \"insmod\", pid 99\n";

    #[test]
    fn each_unreferenced_object_is_one_leak_with_its_backtrace() {
        let leaks = leaks(REPORT);
        assert_eq!(leaks.len(), 2);
        assert!(leaks[0].starts_with("unreferenced object 0xffff888003a2c000 (size 64):"));
        assert!(leaks[0].contains("leaky_init+0x11/0x1000 [leaky]"));
        assert!(super::leaks("").is_empty());
    }

    #[test]
    fn a_kernel_without_kmemleak_is_refused_naming_its_config_and_the_way() {
        let path = Path::new("/cache/boot/config-6.1.0-57-cloud-amd64");
        let err = check_config_text(
            path,
            "CONFIG_DEBUG_FS=y\n# CONFIG_DEBUG_KMEMLEAK is not set\n",
            "6.1.0-57-cloud-amd64",
        )
        .expect_err("no kmemleak");
        let text = err.to_string();
        assert!(
            text.contains("CONFIG_DEBUG_KMEMLEAK is not set in /cache/boot/config-6.1.0-57")
                && text.contains("--kernel-tree"),
            "{text}"
        );
        check_config_text(path, "CONFIG_DEBUG_KMEMLEAK=y\n", "x").expect("has it");
    }
}
