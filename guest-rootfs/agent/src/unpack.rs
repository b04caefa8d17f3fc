//! [`lab_proto::Op::Unpack`]: a cpio archive unpacked at `/`, the way the kernel unpacks the
//! image's layers at boot (directories, regular files with their modes, symlinks; a later entry
//! replaces an earlier one).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

pub fn unpack(archive: &[u8]) -> Result<(), String> {
    let mut rest = archive;
    loop {
        let mut entry = cpio::NewcReader::new(rest).map_err(|e| format!("cpio: {e}"))?;
        if entry.entry().is_trailer() {
            return Ok(());
        }
        let (name, mode) = (entry.entry().name().to_string(), entry.entry().mode());
        let path = inside_root(&name)?;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("cpio {name}: {e}"))?;
        place(&path, mode, &data).map_err(|e| format!("unpacking {}: {e}", path.display()))?;
        rest = entry.finish().map_err(|e| format!("cpio {name}: {e}"))?;
    }
}

/// `/NAME`, refusing names that climb out of `/` (`..`) or are empty.
fn inside_root(name: &str) -> Result<PathBuf, String> {
    let relative = Path::new(name.trim_start_matches('/'));
    if name.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("cpio entry {name:?} is not a path under /"));
    }
    Ok(Path::new("/").join(relative))
}

fn place(path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match mode & S_IFMT {
        S_IFDIR => {
            std::fs::create_dir_all(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        }
        S_IFREG => {
            remove_unless_dir(path)?;
            std::fs::write(path, data)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        }
        S_IFLNK => {
            remove_unless_dir(path)?;
            std::os::unix::fs::symlink(String::from_utf8_lossy(data).as_ref(), path)
        }
        // Devices, sockets, fifos: the archives we build hold none.
        _ => Ok(()),
    }
}

/// Clears the way for a file or symlink, as the kernel's unpacker does (a busybox applet link
/// gives way to a real program).
fn remove_unless_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_stay_under_the_root() {
        assert_eq!(
            inside_root("lab/run.sh").expect("plain"),
            Path::new("/lab/run.sh")
        );
        assert_eq!(inside_root("/lab").expect("absolute"), Path::new("/lab"));
        assert!(inside_root("lab/../../etc/passwd").is_err());
        assert!(inside_root("").is_err());
    }
}
