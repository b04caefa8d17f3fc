//! The Debian archive every package comes from, whatever distribution the host runs.
//!
//! apt is pointed at it through a private configuration (`APT_CONFIG`) with its own sources,
//! package lists, download cache and configuration parts under the lab's cache directory: the
//! host's `/etc/apt/apt.conf` and `apt.conf.d` are not read, so none of their hooks
//! (`APT::Update::Post-Invoke`, ...) runs and none of their settings changes what we fetch. Only
//! the host's proxy settings are carried over, as values. So a GitHub Ubuntu runner and a
//! Debian laptop build the same guest from the same packages, and nothing of the host's apt
//! state is read or written. No root is needed: apt does not lock or sandbox for an
//! ordinary user, and our directories are the user's own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::{Error, Result};

/// `[archive]` of `kernels.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// One-line-style apt sources (`deb [signed-by=KEYRING] URI SUITE COMPONENT`).
    pub sources: Vec<String>,
    /// The keyring the sources are signed by; it must exist on the host.
    pub keyring: PathBuf,
}

/// Package lists older than this are fetched again.
const FRESH: Duration = Duration::from_secs(24 * 3600);

/// apt pointed at one archive: every call of [`crate::deb`] takes one, so nothing reaches apt
/// without saying which archive it means (and no process-wide setting decides it).
#[derive(Debug, Clone)]
pub struct Apt {
    /// The private configuration, passed as `APT_CONFIG`.
    config: PathBuf,
}

impl Apt {
    /// Points `cmd` (an apt tool) at this archive.
    pub(crate) fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("APT_CONFIG", &self.config)
    }
}

/// apt pointed at `archive`, with its state in `<cache>/apt`; fetches the package lists unless
/// fresh ones are there.
pub fn use_archive(archive: &Archive, cache: &Path) -> Result<Apt> {
    if !archive.keyring.is_file() {
        return Err(Error::MissingTool {
            tool: "debian-archive-keyring",
            fix: format!(
                "{} is missing; install Debian's archive keys (`sudo apt-get install debian-archive-keyring`, on Ubuntu too)",
                archive.keyring.display()
            ),
        });
    }
    let root = cache.join("apt");
    let conf = write_config(archive, &root)?;
    // The cache is shared by every clone on the machine, and apt runs here without its own
    // locks: one update at a time, and the ones that waited find the lists fresh.
    let lock_path = root.join("update.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if !lists_fetched_within_the_day(&root.join("state/lists")) {
        let task = crate::progress::Task::start(
            "updating the package lists of Debian's archive",
            None,
            crate::progress::Unit::Bytes,
        );
        let mut update = Command::new(crate::deb::tool("apt-get")?);
        update.arg("update").env("APT_CONFIG", &conf);
        let out = crate::progress::output_watching(&mut update, &task, &root.join("state/lists"))
            .map_err(|e| Error::io(Path::new("apt-get"), e))?;
        // apt-get update exits 0 even when a source failed; its stderr says so with "E:" or "W:".
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            || stderr
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W: Failed"))
        {
            return Err(Error::Command {
                what: format!("apt-get update (APT_CONFIG={})", conf.display()),
                stderr: stderr.trim().to_string(),
                fix: "check that deb.debian.org is reachable (or that the host's apt proxy settings apply), then try again".into(),
            });
        }
    }
    Ok(Apt { config: conf })
}

fn write_config(archive: &Archive, root: &Path) -> Result<PathBuf> {
    for dir in [
        "state/lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "preferences.d",
        "apt.conf.d",
    ] {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let status = root.join("state/status");
    if !status.exists() {
        std::fs::write(&status, b"").map_err(|e| Error::io(&status, e))?;
    }
    let sources = root.join("sources.list");
    write_if_changed(&sources, &(archive.sources.join("\n") + "\n"))?;
    let conf = root.join("apt.conf");
    let p = |sub: &str| root.join(sub).display().to_string();
    let text = format!(
        "Dir::State \"{state}\";\nDir::State::status \"{status}\";\nDir::Cache \"{cache}\";\n\
         Dir::Etc::SourceList \"{sources}\";\nDir::Etc::SourceParts \"{parts}\";\n\
         Dir::Etc::Preferences \"{prefs}/none\";\nDir::Etc::PreferencesParts \"{prefs}\";\n\
         APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n\
         Debug::NoLocking \"true\";\nAcquire::Languages \"none\";\n\
         Dir::Etc::Parts \"{conf_parts}\";\nDir::Etc::Main \"{conf_parts}/none\";\n{proxies}",
        conf_parts = p("apt.conf.d"),
        proxies = host_proxies(),
        state = p("state"),
        status = status.display(),
        cache = p("cache"),
        sources = sources.display(),
        parts = p("sources.list.d"),
        prefs = p("preferences.d"),
    );
    write_if_changed(&conf, &text)?;
    Ok(conf)
}

/// The host's apt proxy settings, as lines of apt configuration: the one thing of the host's
/// apt configuration the private one keeps (a machine behind a proxy reaches the archive only
/// through it). `apt-config` reads the configuration without running anything of it.
fn host_proxies() -> String {
    let mut lines = String::new();
    for key in ["Acquire::http::Proxy", "Acquire::https::Proxy"] {
        let value = Command::new("apt-config")
            .args(["shell", "V", key])
            .env_remove("APT_CONFIG")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .and_then(|out| proxy_value(&out));
        if let Some(value) = value {
            lines.push_str(&format!("{key} \"{value}\";\n"));
        }
    }
    lines
}

/// `V='http://proxy:3142'` (what `apt-config shell V KEY` prints) -> the value, if it is one
/// that can stand in a quoted apt string.
fn proxy_value(shell: &str) -> Option<String> {
    let value = shell.trim().strip_prefix("V='")?.strip_suffix('\'')?;
    (!value.is_empty() && !value.contains(['"', '\'', ';', '\n', '{', '}']))
        .then(|| value.to_string())
}

/// Replaces `path` with `text`, whole, unless it holds that already: apt in another process (a
/// second clone sharing the cache) may be reading it.
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    crate::write_atomically(path, text.as_bytes())
}

/// Whether the package lists [`use_archive`] keeps under `cache` were fetched within the day,
/// so that it would not fetch them again.
pub fn lists_fresh(cache: &Path) -> bool {
    lists_fetched_within_the_day(&cache.join("apt/state/lists"))
}

/// Whether `lists` holds package indexes fetched less than [`FRESH`] ago.
fn lists_fetched_within_the_day(lists: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(lists) else {
        return false;
    };
    let newest = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    newest.is_some_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < FRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private configuration for Debian's archive, in a directory of its own.
    fn configured() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive {
            sources: vec![
                "deb [signed-by=/k.gpg] http://deb.debian.org/debian bookworm main".into(),
            ],
            keyring: "/k.gpg".into(),
        };
        let conf = write_config(&archive, dir.path()).expect("config");
        (dir, conf)
    }

    #[test]
    fn config_points_apt_at_private_state_and_the_given_sources() {
        let (dir, conf) = configured();
        let text = std::fs::read_to_string(&conf).expect("read");
        assert!(
            text.contains(&format!("Dir::State \"{}/state\";", dir.path().display())),
            "{text}"
        );
        assert!(text.contains("Dir::Etc::SourceList"), "{text}");
        let sources = std::fs::read_to_string(dir.path().join("sources.list")).expect("sources");
        assert_eq!(
            sources,
            "deb [signed-by=/k.gpg] http://deb.debian.org/debian bookworm main\n"
        );
        assert!(
            !lists_fetched_within_the_day(&dir.path().join("state/lists")),
            "no lists yet"
        );
    }

    #[test]
    fn the_hosts_apt_configuration_is_not_read_but_its_proxy_is_kept() {
        let (dir, conf) = configured();
        // apt itself says which parts it reads under our configuration, and runs no hook.
        let out = Command::new("apt-config")
            .arg("dump")
            .env("APT_CONFIG", &conf)
            .output()
            .expect("apt-config runs");
        let dump = String::from_utf8_lossy(&out.stdout);
        let parts = format!("Dir::Etc::parts \"{}/apt.conf.d\";", dir.path().display());
        assert!(dump.contains(&parts), "{dump}");
        assert!(
            !dump.contains("Post-Invoke") && !dump.contains("Pre-Invoke"),
            "{dump}"
        );
        assert_eq!(
            proxy_value("V='http://proxy.example:3142'\n"),
            Some("http://proxy.example:3142".into())
        );
        assert_eq!(proxy_value("V=''\n"), None);
        assert_eq!(
            proxy_value("V='x\"; APT::Update::Post-Invoke {\"rm\"}'\n"),
            None
        );
    }

    #[test]
    fn a_missing_keyring_names_the_package_that_brings_it() {
        let archive = Archive {
            sources: vec![],
            keyring: "/nonexistent/keyring.gpg".into(),
        };
        let err = use_archive(&archive, Path::new("/tmp"))
            .expect_err("no keyring")
            .to_string();
        assert!(err.contains("debian-archive-keyring"), "{err}");
    }
}
