//! Choosing how QEMU runs the guest's CPU.
//!
//! KVM is used only when it can really work: `/dev/kvm` opens read-write *and* the host CPU shows
//! `vmx` or `svm`. Some hosts (nested paravirtual KVM, as on this project's build machines) expose
//! a `/dev/kvm` on which stock kernels hang during boot; their CPU flags show neither, so they get
//! TCG. `LAB_ACCEL=kvm|tcg` overrides the probe ([`crate::settings`]).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl Accel {
    /// `kvm` or `tcg`, in any case.
    pub fn parse(s: &str) -> Option<Accel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// What the host can do: KVM when it really works, else TCG.
    pub fn probe() -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::decide(kvm_opens(), &cpuinfo)
    }

    fn decide(kvm_opens: bool, cpuinfo: &str) -> Accel {
        match why_not_kvm(kvm_opens, cpuinfo) {
            None => Accel::Kvm,
            Some(_) => Accel::Tcg,
        }
    }

    /// Why the host gives guests TCG rather than KVM, if it does.
    pub fn why_not_kvm() -> Option<&'static str> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        why_not_kvm(kvm_opens(), &cpuinfo)
    }

    /// QEMU's `-accel` and `-cpu` for this accelerator. Under TCG, `max` gives the guest SVM,
    /// which lets `kvm_amd` load inside it for nested guests; without ERMS and FSRM ("fast
    /// `rep movsb`/`stosb`"), which TCG runs a byte per step: a kernel that sees them clears
    /// every page and copies every syscall's buffer that way, 8 times the steps of `rep
    /// stosq`. A nest guest took 28-53 s to free the 244 MB of an inner TCG QEMU that exited
    /// (it zeroes what it frees), 7 s without them.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max,-erms,-fsrm"],
        }
    }
}

fn why_not_kvm(kvm_opens: bool, cpuinfo: &str) -> Option<&'static str> {
    if !kvm_opens {
        Some("/dev/kvm is missing or does not open read-write for this user")
    } else if !cpu_has_virtualisation(cpuinfo) {
        Some("/dev/kvm opens, but the CPU shows neither vmx nor svm (a nested /dev/kvm that stock kernels hang on)")
    } else {
        None
    }
}

fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn cpu_has_virtualisation(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The host's TSC rate in kHz, measured once per process (about 50 ms).
///
/// Under TCG, QEMU hands the guest the host's own TSC ticks, so this is exactly the rate the
/// guest sees. Passing it as `tsc_early_khz` spares the guest kernel its TSC calibration against
/// the emulated PIT, which fails on a loaded host ("Unable to calibrate against PIT") and then
/// hangs the boot: measured here, 8 of 8 guests booted side by side on 2 cores hung without it,
/// 0 of 8 with it.
pub fn host_tsc_khz() -> Option<u32> {
    static KHZ: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(measure_tsc_khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u32> {
    use std::time::{Duration, Instant};
    // SAFETY: rdtsc has no preconditions on x86_64.
    let ticks = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), ticks());
    std::thread::sleep(Duration::from_millis(50));
    let (c1, elapsed) = (ticks(), t0.elapsed());
    let khz = (c1.wrapping_sub(c0) as f64 / elapsed.as_secs_f64() / 1000.0).round();
    (100_000.0..20_000_000.0)
        .contains(&khz)
        .then_some(khz as u32)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_SVM: &str = "processor\t: 0\nflags\t\t: fpu vme svm lm\n";
    const WITHOUT: &str = "processor\t: 0\nflags\t\t: fpu vme lm hypervisor\n";

    #[test]
    fn kvm_needs_both_the_device_and_the_cpu_flag() {
        assert_eq!(Accel::decide(true, WITH_SVM), Accel::Kvm);
        assert_eq!(
            Accel::decide(true, WITHOUT),
            Accel::Tcg,
            "a /dev/kvm without vmx/svm hangs stock kernels"
        );
        assert_eq!(Accel::decide(false, WITH_SVM), Accel::Tcg);
    }

    #[test]
    fn parse_accepts_both_and_rejects_others() {
        assert_eq!(Accel::parse("KVM"), Some(Accel::Kvm));
        assert_eq!(Accel::parse("tcg"), Some(Accel::Tcg));
        assert_eq!(Accel::parse("hvf"), None);
    }
}
