//! An interactive program on a terminal in a guest: what `lab shell` and `lab attach` drive.

use std::time::Duration;

use lab_proto::{Op, RunOutput, TtySize};

use crate::cmd::Cmd;
use crate::error::{Phase, Result};
use crate::vm::Vm;

impl Vm {
    /// Starts `cmd` on a new terminal of `size` in the guest (an interactive shell, say): what
    /// is typed goes in with [`Session::input`], what it shows comes out of [`Session::output`].
    pub async fn interactive(&self, cmd: impl Into<Cmd>, size: TtySize) -> Result<Session<'_>> {
        let mut cmd = cmd.into();
        cmd.spec.tty = Some(size);
        if cmd.spec.timeout.is_zero() {
            // A person at a shell may take their time: a week.
            cmd = cmd.timeout(Duration::from_secs(7 * 24 * 3600));
        }
        let started = self
            .agent
            .start(Op::Run(cmd.spec.clone()))
            .await
            .map_err(|e| self.agent_failure(&cmd.describe(), e))?;
        Ok(Session {
            vm: self,
            started: Some(started),
            timeout: cmd.spec.timeout,
        })
    }
}

/// An interactive program on a terminal in a guest ([`Vm::interactive`]).
#[derive(Debug)]
pub struct Session<'a> {
    pub(crate) vm: &'a Vm,
    pub(crate) started: Option<crate::agent::Started>,
    pub(crate) timeout: Duration,
}

impl Session<'_> {
    /// The next piece of what the terminal shows; `None` once the program has ended.
    pub async fn output(&mut self) -> Option<Vec<u8>> {
        self.started
            .as_mut()?
            .output
            .recv()
            .await
            .map(|(_, data)| data)
    }

    /// Types `data` (keys, Ctrl-C as byte 3, ...) into the terminal, waiting while the program
    /// has not taken what was typed before ([`Session::input_sender`]).
    pub async fn input(&self, data: &[u8]) -> Result<()> {
        let Some(input) = self.input_sender() else {
            return Ok(());
        };
        input
            .send(data)
            .await
            .map_err(|e| self.vm.agent_failure("terminal input", e))
    }

    /// Where the terminal's input goes, as a handle of its own: a relay waits for input room
    /// with it while it goes on reading [`Session::output`] (a program that writes and does not
    /// read would otherwise hold up both).
    pub fn input_sender(&self) -> Option<crate::agent::InputSender> {
        self.started.as_ref().map(|s| s.input.clone())
    }

    /// The terminal changed size.
    pub async fn resize(&self, size: TtySize) -> Result<()> {
        let Some(started) = &self.started else {
            return Ok(());
        };
        let op = Op::Resize {
            run: started.id,
            rows: size.rows,
            cols: size.cols,
        };
        self.vm
            .agent
            .notify(op)
            .await
            .map_err(|e| self.vm.agent_failure("terminal resize", e))
    }

    /// The person at the terminal went away (a closed window): the guest's shell gets SIGHUP.
    /// Its end still comes through [`Session::output`] and [`Session::finish`].
    pub async fn hang_up(&self) -> Result<()> {
        let Some(started) = &self.started else {
            return Ok(());
        };
        let op = Op::Hangup { run: started.id };
        self.vm
            .agent
            .notify(op)
            .await
            .map_err(|e| self.vm.agent_failure("terminal hangup", e))
    }

    /// Waits for the program to end (call once [`Session::output`] says `None`).
    pub async fn finish(mut self) -> Result<RunOutput> {
        let Some(started) = self.started.take() else {
            return Err(self
                .vm
                .error(Phase::Command, "session already finished".into()));
        };
        let reply = self
            .vm
            .agent
            .wait(
                started.id,
                started.reply,
                self.timeout + Duration::from_secs(10),
            )
            .await;
        self.vm.ran("interactive session", reply)
    }
}
