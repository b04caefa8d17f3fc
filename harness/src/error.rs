//! Errors of the harness. Every failure names the guest, the phase that broke (as vmtest does:
//! a failed boot and a failed command are different stories) and, where it helps, the last lines
//! the guest printed on its console.

use std::fmt;
use std::path::PathBuf;

use lab_proto::RunOutput;

/// The stage of a guest's life in which something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Finding QEMU and the assets, starting the QEMU process.
    Launch,
    /// From QEMU's start until the agent said it was ready.
    Boot,
    /// Making the guest what was asked after it booted (loading `--module`s).
    Setup,
    /// Talking to QEMU over QMP.
    Qmp,
    /// A request to the agent.
    Command,
    /// Powering off.
    Shutdown,
    /// The guest's kernel reported a problem (a WARN, a BUG, an Oops...) on its console.
    Kernel,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Launch => "launch",
            Phase::Boot => "boot",
            Phase::Setup => "setup",
            Phase::Qmp => "qmp",
            Phase::Command => "command",
            Phase::Shutdown => "shutdown",
            Phase::Kernel => "kernel",
        })
    }
}

/// `Debug` is the same text as `Display` (as anyhow's is): a test returning `Result` prints the
/// command, its output as text and the console tail, not byte arrays.
#[derive(thiserror::Error)]
pub enum Error {
    /// Something the host lacks; `fix` says how to get it.
    #[error("{what} is missing: {fix}")]
    Missing { what: String, fix: String },

    /// Something the user asked for cannot be: an unknown package or module, a directory that
    /// is not there, too little memory. Found before any guest boots.
    #[error("{what}\n  fix: {fix}")]
    Invalid { what: String, fix: String },

    /// A lab's description has a mistake, named with where it was written (a file's line, a
    /// flag, a builder call). Found before anything boots.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),

    /// Building what a guest boots from (packages, the module disk) failed.
    #[error(transparent)]
    Image(#[from] lab_rootfs::Error),

    /// A guest failed in `phase`.
    #[error("{vm}: {phase} failed: {message}{}", tail(console_tail))]
    Guest {
        vm: String,
        phase: Phase,
        message: String,
        console_tail: Option<String>,
    },

    /// A command ran, but did not end the way the caller required.
    #[error(
        "{vm}: `{command}` {expected}, but {}\n{}",
        describe_exit(output),
        show_output(output)
    )]
    Unexpected {
        vm: String,
        command: String,
        expected: &'static str,
        output: Box<RunOutput>,
    },

    /// A QMP command failed, outside any one guest's call (`?` on [`crate::Qmp`] methods).
    #[error("QMP: {0}")]
    Qmp(#[from] crate::qmp::QmpError),

    #[error("{}: {source}{}", path.display(), lab_kernels::io_fix(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// An I/O error on `path` (the same constructor as `lab_kernels::Error::io` and
    /// `lab_rootfs::Error::io`).
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn invalid(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            fix: fix.into(),
        }
    }

    pub fn guest(vm: &str, phase: Phase, message: impl Into<String>) -> Self {
        Self::Guest {
            vm: vm.to_string(),
            phase,
            message: message.into(),
            console_tail: None,
        }
    }

    /// A QMP command to guest `vm` failed.
    pub fn qmp(vm: &str, e: &crate::qmp::QmpError) -> Self {
        Self::guest(vm, Phase::Qmp, e.to_string())
    }

    pub(crate) fn with_console(self, console: Option<String>) -> Self {
        match self {
            Self::Guest {
                vm,
                phase,
                message,
                console_tail: None,
            } => Self::Guest {
                vm,
                phase,
                message,
                console_tail: console,
            },
            other => other,
        }
    }

    pub fn phase(&self) -> Option<Phase> {
        match self {
            Self::Guest { phase, .. } => Some(*phase),
            Self::Unexpected { .. } => Some(Phase::Command),
            _ => None,
        }
    }
}

fn tail(console: &Option<String>) -> String {
    match console {
        Some(c) if !c.trim().is_empty() => format!(
            "\n--- last console lines ---\n{}\n--- end of console ---",
            crate::text::printable(c.trim_end())
        ),
        _ => String::new(),
    }
}

fn describe_exit(out: &RunOutput) -> String {
    if out.oom_killed {
        // The guest's commands share all of its memory but a reserve for the agent.
        return "the guest's OOM killer killed it: its commands ran out of memory (give the guest more with \
                `Machine::memory_mib`, or `--memory` on the command line)"
            .to_string();
    }
    match (out.timed_out, out.code, out.signal) {
        (true, ..) => format!("it timed out after {:?}", out.duration),
        (_, Some(code), _) => format!("it exited with {code}"),
        (_, None, Some(sig)) => format!("it was killed by signal {sig}"),
        _ => "it ended without a status".to_string(),
    }
}

fn show_output(out: &RunOutput) -> String {
    let clip = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim_end();
        if s.len() > 4000 {
            // The last 4000 bytes, from a character's start: a byte offset may fall inside one.
            let from = (s.len() - 4000..s.len())
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(s.len());
            format!("...{}", &s[from..])
        } else {
            s.to_string()
        }
    };
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        crate::text::printable(&clip(&out.stdout)),
        crate::text::printable(&clip(&out.stderr))
    )
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::invalid(e.to_string(), e.fix())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_in_chinese_is_clipped_at_a_character() {
        // 3 bytes a character: a cut 4000 bytes from the end falls inside one.
        let text = "主机无法访问它自己的macvlan子接口".repeat(300);
        let output = RunOutput {
            code: Some(1),
            signal: None,
            timed_out: false,
            stdout: text.clone().into_bytes(),
            stderr: Vec::new(),
            truncated: false,
            oom_killed: false,
            duration: std::time::Duration::from_millis(5),
        };
        let shown = show_output(&output);
        assert!(shown.starts_with("--- stdout ---\n..."), "{shown}");
        assert!(shown.contains("macvlan子接口\n--- stderr ---"), "{shown}");
    }

    #[test]
    fn debug_shows_output_as_text_as_display_does() {
        let output = RunOutput {
            code: Some(1),
            signal: None,
            timed_out: false,
            stdout: b"pinging\n".to_vec(),
            stderr: b"ping: connect: Network is unreachable\n".to_vec(),
            truncated: false,
            oom_killed: false,
            duration: std::time::Duration::from_millis(5),
        };
        let err = Error::Unexpected {
            vm: "host1".into(),
            command: "ping -c1 192.168.88.2".into(),
            expected: "to succeed",
            output: Box::new(output),
        };
        let debug = format!("{err:?}");
        assert_eq!(debug, err.to_string());
        assert!(
            debug.contains("ping: connect: Network is unreachable") && !debug.contains("[112,"),
            "{debug}"
        );
    }
}
