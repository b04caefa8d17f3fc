//! The guest's serial console, captured to a file by QEMU.

use std::path::Path;

/// The last `lines` lines of the console log (empty if there is none yet).
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    tail_of(&String::from_utf8_lossy(&bytes), lines)
}

/// The last `lines` lines of a console's text (an inner VM's, read through its host).
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile_dir();
        let p = dir.join("console.log");
        std::fs::write(&p, "a\nb\nc\nd\n").expect("write");
        assert_eq!(super::tail(&p, 2), "c\nd");
        assert_eq!(super::tail(&dir.join("none"), 2), "");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        tempfile::Builder::new()
            .prefix("console-test")
            .tempdir()
            .expect("tempdir")
            .keep()
    }
}
