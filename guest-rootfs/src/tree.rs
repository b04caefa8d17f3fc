//! The image's file tree in memory, written out as a reproducible cpio archive.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

/// What a path holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Paths are absolute (`/bin/sh`); parents are created implicitly.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Tree {
    /// Mount points and directories every guest needs.
    pub fn skeleton(&mut self) {
        for dir in [
            "/dev",
            "/proc",
            "/sys",
            "/run",
            "/tmp",
            "/root",
            "/etc",
            "/mnt",
            "/var",
            "/usr/bin",
            "/usr/sbin",
            "/sbin",
            "/bin",
        ] {
            self.dir(dir);
        }
        self.file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        );
        self.file("/etc/group", b"root:x:0:\n".to_vec(), 0o644);
        self.file(
            "/etc/hosts",
            b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
            0o644,
        );
        self.file(
            "/etc/nsswitch.conf",
            b"passwd: files\ngroup: files\nhosts: files\n".to_vec(),
            0o644,
        );
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        self.nodes.insert(path.to_string(), Node::Dir);
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.parents(path);
        self.nodes
            .insert(path.to_string(), Node::File { data, mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.nodes
            .insert(path.to_string(), Node::Symlink(target.to_string()));
    }

    /// Adds everything under host directory `root` below `at` (`""` for `/`): files with their
    /// modes, symlinks as they are, sockets and devices left out, and no guest path that `skip`
    /// names. Fails on a name or link target that is not UTF-8 (an archive's names are text,
    /// and a lossy one would make two names one), and once its files pass `max_bytes`.
    pub fn add_host_dir(
        &mut self,
        root: &Path,
        at: &str,
        skip: &dyn Fn(&str) -> bool,
        max_bytes: u64,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let text = |path: &Path, name: &std::ffi::OsStr| {
            name.to_str().map(str::to_string).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} has a name that is not UTF-8: rename it, or leave it out of the directory",
                        path.display()
                    ),
                )
            })
        };
        let mut total = 0u64;
        let mut pending = vec![(root.to_path_buf(), at.to_string())];
        while let Some((dir, guest)) = pending.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let from = entry.path();
                let to = format!("{guest}/{}", text(&from, &entry.file_name())?);
                if skip(&to) {
                    continue;
                }
                let meta = from.symlink_metadata()?;
                if meta.is_dir() {
                    self.dir(&to);
                    pending.push((from, to));
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&from)?;
                    self.symlink(&to, &text(&from, target.as_os_str())?);
                } else if meta.is_file() {
                    total += meta.len();
                    if total > max_bytes {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::FileTooLarge,
                            format!(
                                "{} holds more than {} MiB of files (the guest keeps them in its memory): give a smaller directory",
                                root.display(),
                                max_bytes >> 20
                            ),
                        ));
                    }
                    self.file(
                        &to,
                        std::fs::read(&from)?,
                        meta.permissions().mode() & 0o7777,
                    );
                }
            }
        }
        Ok(())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += i + 1;
            self.nodes
                .entry(path[..at].to_string())
                .or_insert(Node::Dir);
        }
    }

    /// The archive: entries in path order (parents first), owner root, timestamps zero.
    pub fn to_cpio(&self) -> std::io::Result<Vec<u8>> {
        let entries = self.nodes.iter().map(|(path, node)| {
            let (mode, nlink, data) = match node {
                Node::Dir => (S_IFDIR | 0o755, 2, Vec::new()),
                Node::File { data, mode } => (S_IFREG | mode, 1, data.clone()),
                Node::Symlink(target) => (S_IFLNK | 0o777, 1, target.clone().into_bytes()),
            };
            let name = path.trim_start_matches('/');
            let builder = cpio::NewcBuilder::new(name)
                .mode(mode)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(0);
            (builder, Cursor::new(data))
        });
        cpio::write_cpio(entries, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_implied_and_output_is_reproducible() {
        let mut a = Tree::default();
        a.file("/usr/sbin/ip", b"elf".to_vec(), 0o755);
        a.symlink("/bin/sh", "/bin/dash");
        assert!(a.contains("/usr") && a.contains("/usr/sbin") && a.contains("/bin"));
        let mut b = Tree::default();
        b.symlink("/bin/sh", "/bin/dash");
        b.file("/usr/sbin/ip", b"elf".to_vec(), 0o755);
        assert_eq!(
            a.to_cpio().expect("cpio"),
            b.to_cpio().expect("cpio"),
            "insertion order must not matter"
        );
    }

    #[test]
    fn archive_reads_back_with_modes() {
        let mut t = Tree::default();
        t.file("/init", b"#!x".to_vec(), 0o755);
        t.symlink("/bin/sh", "dash");
        let bytes = t.to_cpio().expect("cpio");
        let mut names = Vec::new();
        let mut rest = Cursor::new(bytes);
        loop {
            let reader = cpio::NewcReader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mode()));
            rest = reader.finish().expect("finish");
        }
        assert_eq!(
            names,
            [
                ("bin".into(), S_IFDIR | 0o755),
                ("bin/sh".into(), S_IFLNK | 0o777),
                ("init".into(), S_IFREG | 0o755)
            ]
        );
    }
}
