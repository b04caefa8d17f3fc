//! `target/lab/runs/`: what the lab commands keep of their runs for people to open (pcaps in
//! Wireshark, consoles, `summary.json`), passed or not.
//!
//! Each `cargo xtask lab`, `lab run` and `lab shell` gets a directory of its own,
//! `<UTC time>-<command>-<pid>` (one subdirectory per LAN inside), and `runs/latest` points at
//! the newest. The [`KEEP`] newest run directories stay; older ones go when a new run starts,
//! except those whose process is still running. The test suite keeps only failed labs', in
//! `target/lab/failed`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::os::unix::fs::DirBuilderExt;

use anyhow::Context;
use lab_harness::Runs;

/// Run directories kept: enough to compare a few runs, bounded so that they never pile up.
pub const KEEP: usize = 10;

/// The name of the link to the newest run.
const LATEST: &str = "latest";

/// Starts a kept run of `command` (`lab`, `run`, `shell`): its directory, `latest` pointing at
/// it, older runs pruned.
pub fn start(command: &str) -> anyhow::Result<Runs> {
    let root = crate::lab_dir().join("runs");
    let name = format!(
        "{}-{command}-{}",
        utc_stamp(SystemTime::now()),
        std::process::id()
    );
    let dir = root.join(&name);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Only its user reads what a run kept (pcaps hold every frame of the LAN).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    lab_harness::rundirs::mark(&dir).with_context(|| format!("marking {}", dir.display()))?;
    point_latest(&root, &name)?;
    prune(&root, KEEP);
    Ok(Runs {
        dir,
        keep_passed: true,
    })
}

/// Where a person finds this run: the `latest` path while it still names this run.
pub fn shown(runs: &Runs) -> PathBuf {
    let latest = runs.dir.with_file_name(LATEST);
    match std::fs::read_link(&latest) {
        Ok(target) if Some(target.as_os_str()) == runs.dir.file_name() => latest,
        _ => runs.dir.clone(),
    }
}

/// Points `root/latest` at `name`, atomically: a new link renamed over the old one, so a
/// reader never finds it missing, and two runs starting together leave one of them there.
fn point_latest(root: &Path, name: &str) -> anyhow::Result<()> {
    let temp = root.join(format!(".{LATEST}-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(name, &temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    std::fs::rename(&temp, root.join(LATEST))
        .with_context(|| format!("updating {}", root.join(LATEST).display()))
}

/// Removes all but the `keep` newest run directories, never one whose process is alive.
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut runs: Vec<(String, Option<u32>)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter_map(|n| run_pid(&n).map(|pid| (n, Some(pid))))
        .collect();
    // The names start with the UTC time, so name order is age order.
    runs.sort();
    let old = runs.len().saturating_sub(keep);
    for (name, pid) in runs.into_iter().take(old) {
        let dir = root.join(&name);
        // Its maker's pid namespace, boot and start time tell a live run from a dead one with
        // the same pid (a run in a container sharing this checkout); a directory of an older
        // lab, without them, falls back to the pid alone.
        let running = match lab_harness::rundirs::owner(&dir) {
            Some(owner) => !owner.is_gone(),
            None => pid.is_some_and(lab_harness::rundirs::alive),
        };
        if !running {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The pid at the end of a run directory's name (`20261129-071530-lab-4242`), if it is one.
fn run_pid(name: &str) -> Option<u32> {
    let (stamp, rest) = name.split_at_checked(15)?;
    let ok = stamp.bytes().enumerate().all(|(i, b)| {
        if i == 8 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    let (_, pid) = rest.rsplit_once('-')?;
    if ok && rest.starts_with('-') {
        pid.parse().ok()
    } else {
        None
    }
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn utc_stamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        // 2024-02-29 23:59:59 UTC, a leap day.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199)),
            "20240229-235959"
        );
        assert_eq!(
            utc_stamp(UNIX_EPOCH + std::time::Duration::from_secs(1_795_936_530)),
            "20261129-071530"
        );
    }

    #[test]
    fn only_run_directories_are_recognised() {
        assert_eq!(run_pid("20261129-071530-lab-4242"), Some(4242));
        assert_eq!(run_pid("20261129-071530-run-1"), Some(1));
        assert_eq!(run_pid("latest"), None);
        assert_eq!(run_pid("lab-shell-1795933761126"), None);
        assert_eq!(run_pid("2026112-0071530-lab-4242"), None);
    }

    /// What `dir` holds, by name, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pruning_tells_a_run_by_its_owner_not_its_pid_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        let me = std::process::id();
        // This process's pid, but another process's start time: a dead run whose pid was
        // reused. And a pid nothing here has, but in another pid namespace: a container's
        // run, alive for all we can see.
        let reused = format!("20260101-000000-run-{me}");
        let elsewhere = "20260102-000000-run-999999999".to_string();
        let newest = format!("20260103-000000-run-{me}");
        for (name, owner) in [
            (&reused, format!("r {me} pid:[1] {} 1\n", boot.trim())),
            (
                &elsewhere,
                format!("r 999999999 pid:[1] {} 1\n", boot.trim()),
            ),
            (&newest, String::new()),
        ] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            if owner.is_empty() {
                lab_harness::rundirs::mark(&dir).expect("mark");
            } else {
                std::fs::write(dir.join(".owner"), owner).expect("owner");
            }
        }
        // A reused pid in our own namespace: make its owner line name our namespace.
        let ns = std::fs::read_link("/proc/self/ns/pid").expect("ns");
        let ns = ns.to_string_lossy().replace(' ', "_");
        let line = format!("r {me} {ns} {} 1\n", boot.trim());
        std::fs::write(root.path().join(&reused).join(".owner"), line).expect("owner");
        prune(root.path(), 1);
        let left = names_in(root.path());
        assert_eq!(left, [elsewhere, newest]);
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_live() {
        let root = tempfile::tempdir().expect("tempdir");
        let dead = 999_999_999; // above pid_max: never alive
        let live = std::process::id();
        let names = [
            format!("20260101-000000-lab-{live}"),
            format!("20260102-000000-lab-{dead}"),
            format!("20260103-000000-run-{dead}"),
            format!("20260104-000000-shell-{dead}"),
            "someone-elses".to_string(),
        ];
        for n in &names {
            std::fs::create_dir(root.path().join(n)).expect("mkdir");
        }
        prune(root.path(), 2);
        let left = names_in(root.path());
        assert_eq!(
            left,
            [
                names[0].clone(),
                names[2].clone(),
                names[3].clone(),
                names[4].clone()
            ]
        );
    }
}
