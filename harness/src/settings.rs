//! The `LAB_*` environment variables the library obeys, read in one place, once.
//!
//! Architecture invariant: no other module of the harness reads the environment. A setting
//! reaches the code that needs it as data: [`crate::Assets`] carries these [`Settings`] into
//! every [`crate::VmConfig`] it makes, so a configuration built in code means what it says
//! whatever the environment holds.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::accel::Accel;
use crate::error::{Error, Result};

pub const ENV_ASSETS: &str = "LAB_ASSETS";
pub const ENV_ACCEL: &str = "LAB_ACCEL";
pub const ENV_QEMU: &str = "LAB_QEMU";
pub const ENV_ARTIFACTS: &str = "LAB_ARTIFACTS";
pub const ENV_SNAPSHOT: &str = "LAB_SNAPSHOT";
pub const ENV_REQUIRE_ACCEL: &str = "LAB_REQUIRE_ACCEL";
/// Names one run of a lab command and everything it starts; inherited through the environment
/// by test binaries and QEMU alike ([`crate::rundirs`]).
pub const ENV_RUN: &str = "LAB_RUN";

/// What the environment asks of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `LAB_ASSETS`: the assets file to load instead of the workspace's.
    pub assets: Option<PathBuf>,
    /// `CARGO_TARGET_DIR`: where cargo, and so `cargo xtask`, puts the workspace's `target`
    /// (and the assets file in its `lab/`).
    pub target_dir: Option<PathBuf>,
    /// `LAB_ACCEL=kvm|tcg`; `None` lets the lab probe the host ([`Accel::probe`]).
    pub accel: Option<Accel>,
    /// `LAB_QEMU`: the QEMU binary instead of `qemu-system-x86_64` from `PATH`.
    pub qemu: Option<PathBuf>,
    /// `LAB_ARTIFACTS`: where failed guests' consoles are kept.
    pub artifacts: Option<PathBuf>,
    /// `LAB_SNAPSHOT=off` boots every guest cold.
    pub snapshots: bool,
    /// `LAB_REQUIRE_ACCEL=kvm|tcg`: a run that would get another accelerator fails at once
    /// instead (CI that must not fall back to TCG unnoticed).
    pub require_accel: Option<Accel>,
}

impl Default for Settings {
    /// What an empty environment means.
    fn default() -> Self {
        Self {
            assets: None,
            target_dir: None,
            accel: None,
            qemu: None,
            artifacts: None,
            snapshots: true,
            require_accel: None,
        }
    }
}

impl Settings {
    /// The settings of this process's environment; an error names a variable whose value
    /// means nothing.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// The settings that `var` (a variable's value by name) gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let text = |name: &str| {
            var(name)
                .map(|v| v.to_string_lossy().trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let path = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(Self {
            assets: path(ENV_ASSETS),
            target_dir: path("CARGO_TARGET_DIR"),
            accel: text(ENV_ACCEL)
                .map(|v| parse_accel(ENV_ACCEL, &v))
                .transpose()?,
            qemu: path(ENV_QEMU),
            artifacts: path(ENV_ARTIFACTS),
            snapshots: snapshots(text(ENV_SNAPSHOT).as_deref())?,
            require_accel: text(ENV_REQUIRE_ACCEL)
                .map(|v| parse_accel(ENV_REQUIRE_ACCEL, &v))
                .transpose()?,
        })
    }

    /// The accelerator guests get, or an error if it is not the one required, saying why the
    /// host gives the other.
    pub fn checked_accel(&self) -> Result<Accel> {
        self.checked_accel_on(Accel::why_not_kvm)
    }

    fn checked_accel_on(&self, why_not_kvm: impl Fn() -> Option<&'static str>) -> Result<Accel> {
        let reason = why_not_kvm();
        let accel = self.accel.unwrap_or(if reason.is_none() {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
        match self.require_accel {
            Some(required) if required != accel => {
                let why = match (self.accel, reason) {
                    (Some(chosen), _) => format!("{ENV_ACCEL}={chosen} asks for it"),
                    (None, Some(reason)) => reason.to_string(),
                    (None, None) => "the host can do no other".into(),
                };
                Err(Error::invalid(
                    format!("{ENV_REQUIRE_ACCEL}={required}, but guests would run on {accel}: {why}"),
                    format!("run where {required} works (for KVM: /dev/kvm read-write and a CPU with vmx or svm), or unset {ENV_REQUIRE_ACCEL}"),
                ))
            }
            _ => Ok(accel),
        }
    }

    /// The QEMU binary guests run on ([`crate::qemu::find_binary`]).
    pub fn qemu_binary(&self) -> Result<PathBuf> {
        crate::qemu::find_binary(self.qemu.as_deref())
    }

    /// The accelerator guests get: the override, else what the host can do.
    pub fn accel(&self) -> Accel {
        self.accel.unwrap_or_else(Accel::probe)
    }
}

fn parse_accel(var: &str, value: &str) -> Result<Accel> {
    Accel::parse(value).ok_or_else(|| {
        Error::invalid(
            format!("{var}={value} is not an accelerator the lab knows (kvm, tcg)"),
            format!("set {var}=kvm or {var}=tcg, or unset it"),
        )
    })
}

fn snapshots(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("on" | "1") => Ok(true),
        Some("off" | "0") => Ok(false),
        Some(other) => Err(Error::invalid(
            format!("{ENV_SNAPSHOT}={other} is neither on nor off"),
            format!("set {ENV_SNAPSHOT}=off to boot every guest cold, or unset it"),
        )),
    }
}

/// This process's run: `LAB_RUN`, or its own pid when nothing set one. Read once: it names
/// everything the process makes, so it must not change under it.
pub fn run_id() -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        std::env::var(ENV_RUN).unwrap_or_else(|_| format!("pid{}", std::process::id()))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Settings> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn an_empty_environment_means_the_defaults() {
        assert_eq!(from(&[]).ok(), Some(Settings::default()));
        assert_eq!(
            from(&[(ENV_ACCEL, ""), (ENV_SNAPSHOT, " ")]).ok(),
            Some(Settings::default())
        );
    }

    #[test]
    fn each_variable_lands_in_its_field() {
        let s = from(&[
            (ENV_ACCEL, "TCG"),
            (ENV_SNAPSHOT, "off"),
            (ENV_ARTIFACTS, "/tmp/a"),
            (ENV_QEMU, "/opt/q"),
            (ENV_ASSETS, "/x/assets.json"),
        ])
        .expect("valid");
        assert_eq!(s.accel, Some(Accel::Tcg));
        assert!(!s.snapshots);
        assert_eq!(s.artifacts, Some("/tmp/a".into()));
        assert_eq!(s.qemu, Some("/opt/q".into()));
        assert_eq!(s.assets, Some("/x/assets.json".into()));
    }

    #[test]
    fn a_required_accelerator_the_run_would_not_get_fails_saying_why() {
        let kvm_works = || None;
        let nested = || Some("the CPU shows neither vmx nor svm");
        let required = from(&[(ENV_REQUIRE_ACCEL, "kvm")]).expect("valid");
        assert_eq!(required.checked_accel_on(kvm_works).ok(), Some(Accel::Kvm));
        let e = required.checked_accel_on(nested).expect_err("TCG refused");
        assert!(
            e.to_string().contains("LAB_REQUIRE_ACCEL=kvm, but guests would run on tcg: the CPU shows neither vmx nor svm"),
            "{e}"
        );
        let forced = from(&[(ENV_REQUIRE_ACCEL, "kvm"), (ENV_ACCEL, "tcg")]).expect("valid");
        let e = forced
            .checked_accel_on(kvm_works)
            .expect_err("LAB_ACCEL=tcg refused");
        assert!(e.to_string().contains("LAB_ACCEL=tcg asks for it"), "{e}");
        assert_eq!(
            from(&[]).expect("valid").checked_accel_on(nested).ok(),
            Some(Accel::Tcg)
        );
    }

    #[test]
    fn a_value_that_means_nothing_is_refused_naming_the_variable() {
        for (var, value) in [
            (ENV_ACCEL, "hvf"),
            (ENV_SNAPSHOT, "maybe"),
            (ENV_REQUIRE_ACCEL, "xen"),
        ] {
            let e = from(&[(var, value)]).expect_err("refused").to_string();
            assert!(e.contains(&format!("{var}={value}")), "{e}");
        }
    }
}
