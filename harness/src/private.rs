//! Files and directories only their user may open: what a run keeps holds every frame of its
//! LAN and every line its guests printed. A leaf: it uses nothing of the crate.

use std::path::Path;

/// A new file (or an emptied one) that only its user may read: what a run keeps holds every
/// frame of its LAN and every line its guests printed.
pub fn file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// `dir` and its missing parents, each new one 0700.
pub fn dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
