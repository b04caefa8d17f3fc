//! A command for a guest: what to run (a script or an argv), in which namespace, with what stdin
//! and deadline. A leaf type: every kind of guest ([`crate::Guest`]) runs these.

use std::time::Duration;

use lab_proto::{Program, RunSpec};

/// A command for [`crate::Vm::run`]: a script by default, with optional namespace, stdin and timeout.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub(crate) spec: RunSpec,
}

impl Cmd {
    /// A shell script run by the guest's `/bin/sh` (dash).
    pub fn script(script: impl Into<String>) -> Self {
        Self::from_program(Program::Script(script.into()))
    }

    /// A program and its arguments, run directly.
    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self::from_program(Program::Argv(argv.into_iter().map(Into::into).collect()))
    }

    fn from_program(program: Program) -> Self {
        Self {
            spec: RunSpec::new(program, Duration::ZERO),
        }
    }

    /// Runs in directory `dir` of the guest (`/` by default).
    pub fn cwd(mut self, dir: &str) -> Self {
        self.spec.cwd = Some(dir.to_string());
        self
    }

    /// Runs inside `ip netns exec NAME`.
    pub fn netns(mut self, name: &str) -> Self {
        self.spec.netns = Some(name.to_string());
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.spec.stdin = Some(data.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.spec.timeout = t;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.spec.env.insert(key.to_string(), value.to_string());
        self
    }

    /// The deadline set so far (zero: the guest's default applies).
    pub fn timeout_or_zero(&self) -> Duration {
        self.spec.timeout
    }

    /// The request the agent receives.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub(crate) fn describe(&self) -> String {
        let prefix = self
            .spec
            .netns
            .as_ref()
            .map(|n| format!("[netns {n}] "))
            .unwrap_or_default();
        match &self.spec.program {
            Program::Script(s) => format!("{prefix}{}", s.trim()),
            Program::Argv(a) => format!("{prefix}{}", a.join(" ")),
        }
    }
}

impl From<&str> for Cmd {
    fn from(s: &str) -> Self {
        Cmd::script(s)
    }
}

impl From<String> for Cmd {
    fn from(s: String) -> Self {
        Cmd::script(s)
    }
}
