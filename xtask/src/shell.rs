//! `cargo xtask lab shell`: a root shell on host1 of a fresh LAN, on this terminal.
//!
//! The guest's agent runs bash on a pseudo-terminal of its own (line editing, job control,
//! Ctrl-C to the foreground job: the guest's terminal does all of that). This end only puts the
//! local terminal in raw mode, so every key goes through untouched, and passes bytes and window
//! size changes along. `exit` (or a closed terminal, or SIGTERM) powers the lab off.

use std::time::Duration;

use anyhow::Context;
use lab_harness::assets::DIR_IN_GUEST;
use lab_harness::{Assets, Cmd, Lab, TtySize};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::lab::LanArgs;

pub fn run(lan: &LanArgs) -> anyhow::Result<()> {
    lan.check()?;
    crate::hosttools::ensure_qemu()?;
    let assets = Assets::load(&crate::provision::assets_path(&lan.provision)?)?;
    let before = crate::leaks::Snapshot::take();
    let rt = tokio::runtime::Runtime::new()?;
    let code = rt.block_on(shell(&assets, lan));
    // The thread reading our stdin may still be blocked in a read: do not wait for it.
    rt.shutdown_background();
    let code = code?;
    let leaks = crate::leaks::Snapshot::take().leaked_since(&before);
    anyhow::ensure!(leaks.is_empty(), "the shell's lab left things behind:\n  {}", leaks.join("\n  "));
    say("lab: the guests are off; nothing was left behind");
    std::process::exit(code);
}

async fn shell(assets: &Assets, lan: &LanArgs) -> anyhow::Result<i32> {
    eprintln!("lab: booting {}", lan.describe());
    let lab = lab_scenarios::script::boot(assets, "lab-shell", &lan.lan(Duration::ZERO)).await?;
    eprint!("{}", banner(&lab, assets, lan));
    let cwd = if lan.dir.is_some() { DIR_IN_GUEST } else { "/root" };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let bash = Cmd::argv(["/bin/bash", "-i"]).cwd(cwd).env("TERM", &term).env("PS1", "\\u@\\h:\\w\\$ ");
    let code = {
        let session = lab.vm("host1").interactive(bash, terminal_size()).await?;
        let _raw = RawMode::enable();
        relay(session).await?
    };
    // The terminal may be gone (closed window): saying so must not panic before the shutdown.
    say("\r\nlab: shell ended; powering the guests off");
    lab.shutdown().await?;
    Ok(code)
}

/// A line on stderr, if there still is one.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What a person reads before the prompt: each host, its address, how to reach the others.
fn banner(lab: &Lab, assets: &Assets, lan: &LanArgs) -> String {
    let mut text = format!("\nmacvlan-lab shell: root on host1 ({}/24 on eth0), kernel {}\n", lab.ip("host1"), assets.kernel.release);
    for vm in lab.vms().iter().skip(1) {
        text.push_str(&format!("  {:<6} {:<14} on the same switch (hairpin {}): ping {}\n", vm.name(), lab.ip(vm.name()), if lan.hairpin { "on" } else { "off" }, lab.ip(vm.name())));
    }
    if let Some(dir) = &lan.dir {
        text.push_str(&format!("  {} is copied to {DIR_IN_GUEST} (a copy: changes stay in the guest)\n", dir.display()));
    }
    text.push_str("  Every kernel module is a `modprobe` away.\n");
    text.push_str("  `exit` or Ctrl-D powers the lab off.\n\n");
    text
}

/// Passes keys in and the screen out until the shell ends (its exit code) or this process is
/// told to stop (SIGHUP: the terminal closed; SIGTERM; SIGINT when stdin is not a terminal).
async fn relay(mut session: lab_harness::Session<'_>) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut stdin = tokio::io::stdin();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 4096];
    let mut winch = signal(SignalKind::window_change())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            out = session.output() => match out {
                Some(bytes) => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes).and_then(|()| stdout.flush()).context("writing to the terminal")?;
                }
                None => break,
            },
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(n @ 1..) => session.input(&buf[..n]).await?,
                // Our input ended: as if Ctrl-D was typed at the prompt.
                _ => {
                    stdin_open = false;
                    session.input(b"\x04").await?;
                }
            },
            _ = winch.recv() => session.resize(terminal_size()).await?,
            _ = hup.recv() => return Ok(129),
            _ = term.recv() => return Ok(143),
            _ = int.recv() => return Ok(130),
        }
    }
    let out = session.finish().await?;
    Ok(out.code.unwrap_or(1))
}

/// This terminal's size, or 24x80 when stdout is not one.
fn terminal_size() -> TtySize {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        TtySize { rows: ws.ws_row, cols: ws.ws_col }
    } else {
        TtySize { rows: 24, cols: 80 }
    }
}

/// The local terminal in raw mode while it lives: keys (Ctrl-C, arrows, Tab) go to the guest's
/// terminal, which does the line editing and signals. Restored on drop, whatever happens.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enable() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else { return Self { saved: None } };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        match termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => Self { saved: Some(saved) },
            Err(_) => Self { saved: None },
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}
