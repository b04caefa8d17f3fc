//! Whether the agent needs cargo at all. Building it is a second cargo (the agent's target and
//! release profile), whose own check that nothing changed costs every warm `lab run` 0.2 s, and
//! over a second on a busy host. A mark written by the last build answers the same question
//! with a few `stat`s: nothing that build read is newer than its start.
//!
//! What the mark compares: every source file of the workspace's crates the agent was built from
//! (cargo's dep-info, `lab.d`) and each one's `Cargo.toml`; the workspace's manifest,
//! `Cargo.lock` (which pins every registry crate) and `.cargo/config.toml`; and xtask's own
//! binary, which cargo rebuilds first when the toolchain changes. The mark also holds the flags
//! the build ran with and the binary it left, so a build by hand with other flags is noticed.
//! Any doubt (a file missing, a mark unreadable) is an answer of "not fresh": cargo runs.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The mark of a build that started at `started` with `flags` and left `binary`, written whole
/// (a reader never sees half of it) with `started` as its modification time.
pub fn write_mark(
    mark: &Path,
    started: SystemTime,
    flags: &str,
    binary: &Path,
) -> std::io::Result<()> {
    let dir = mark.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, contents(flags, binary)?.as_bytes())?;
    file.as_file().set_modified(started)?;
    file.persist(mark).map_err(|e| e.error)?;
    Ok(())
}

/// Whether the agent `binary` that the mark describes is still what a build with `flags` would
/// make: the mark matches, and nothing the build read (`dep_info`, `also`) changed since it
/// started.
pub fn fresh(mark: &Path, dep_info: &Path, binary: &Path, flags: &str, also: &[PathBuf]) -> bool {
    let (Ok(meta), Ok(text), Ok(deps)) = (
        std::fs::metadata(mark),
        std::fs::read_to_string(mark),
        std::fs::read_to_string(dep_info),
    ) else {
        return false;
    };
    let Ok(started) = meta.modified() else {
        return false;
    };
    if contents(flags, binary).ok().as_deref() != Some(text.as_str()) {
        return false;
    }
    let sources = sources(&deps);
    if sources.is_empty() {
        return false;
    }
    // One manifest per crate, however many of its sources the build read.
    let mut manifests: Vec<PathBuf> = sources.iter().filter_map(|s| manifest_of(s)).collect();
    manifests.sort();
    manifests.dedup();
    sources
        .iter()
        .chain(&manifests)
        .chain(also)
        .all(|f| modified(f).is_some_and(|t| t < started))
}

/// What a mark says: the flags, and the binary's size and modification time.
fn contents(flags: &str, binary: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(binary)?;
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("flags {flags}\nbinary {} {nanos}\n", meta.len()))
}

/// The files a make-style dep-info line names after its target (`target: a b\ c`), a space in
/// a name escaped with a backslash.
fn sources(dep_info: &str) -> Vec<PathBuf> {
    let Some((_, deps)) = dep_info.lines().next().and_then(|l| l.split_once(": ")) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    let mut name = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.extend(chars.next()),
            ' ' => {
                files.extend((!name.is_empty()).then(|| PathBuf::from(std::mem::take(&mut name))))
            }
            c => name.push(c),
        }
    }
    files.extend((!name.is_empty()).then(|| PathBuf::from(name)));
    files
}

/// The `Cargo.toml` of the crate `source` belongs to: the nearest one above it.
fn manifest_of(source: &Path) -> Option<PathBuf> {
    source
        .ancestors()
        .skip(1)
        .map(|d| d.join("Cargo.toml"))
        .find(|m| m.is_file())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A crate with one source, a binary, its dep-info and a mark of a build that started a
    /// minute after they were all written.
    fn built() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let krate = dir.path().join("my crate");
        std::fs::create_dir_all(krate.join("src")).expect("mkdir");
        let source = krate.join("src/main.rs");
        std::fs::write(&source, "fn main() {}").expect("source");
        std::fs::write(krate.join("Cargo.toml"), "[package]").expect("manifest");
        let binary = dir.path().join("lab");
        std::fs::write(&binary, b"ELF").expect("binary");
        let dep_info = dir.path().join("lab.d");
        let escaped = source.display().to_string().replace(' ', "\\ ");
        std::fs::write(&dep_info, format!("{}: {escaped}\n", binary.display())).expect("d");
        let mark = dir.path().join("lab.checked");
        let started = SystemTime::now() + Duration::from_secs(60);
        write_mark(&mark, started, "-C x", &binary).expect("mark");
        (dir, mark, dep_info, binary, source)
    }

    fn touch(path: &Path, at: SystemTime) {
        std::fs::File::options()
            .append(true)
            .open(path)
            .and_then(|f| f.set_modified(at))
            .expect("touch");
    }

    #[test]
    fn nothing_newer_than_the_build_is_fresh_and_a_newer_source_or_manifest_is_not() {
        let (dir, mark, dep_info, binary, source) = built();
        assert!(fresh(&mark, &dep_info, &binary, "-C x", &[]));
        let later = SystemTime::now() + Duration::from_secs(120);
        touch(&source, later);
        assert!(
            !fresh(&mark, &dep_info, &binary, "-C x", &[]),
            "a source edited since"
        );
        touch(&source, SystemTime::now());
        touch(&dir.path().join("my crate/Cargo.toml"), later);
        assert!(
            !fresh(&mark, &dep_info, &binary, "-C x", &[]),
            "its manifest edited since"
        );
    }

    #[test]
    fn other_flags_another_binary_a_missing_file_or_no_mark_is_not_fresh() {
        let (dir, mark, dep_info, binary, _) = built();
        assert!(
            !fresh(&mark, &dep_info, &binary, "-C y", &[]),
            "other flags"
        );
        let lock = dir.path().join("Cargo.lock");
        assert!(
            !fresh(&mark, &dep_info, &binary, "-C x", &[lock]),
            "a file not there"
        );
        std::fs::write(&binary, b"ELF, built by hand").expect("rebuild");
        assert!(
            !fresh(&mark, &dep_info, &binary, "-C x", &[]),
            "another binary"
        );
        std::fs::remove_file(&mark).expect("rm");
        assert!(!fresh(&mark, &dep_info, &binary, "-C x", &[]), "no mark");
    }

    #[test]
    fn dep_info_names_keep_their_escaped_spaces() {
        assert_eq!(
            sources("/t/lab: /a/b.rs /c\\ d/e.rs\n/a/b.rs:\n"),
            [PathBuf::from("/a/b.rs"), PathBuf::from("/c d/e.rs")]
        );
        assert!(sources("no dep-info").is_empty());
    }
}
