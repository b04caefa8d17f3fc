//! `cargo xtask lab shell`: a root shell on host1 of a fresh LAN, on this terminal.
//!
//! The guest's agent runs bash on a pseudo-terminal of its own (line editing, job control,
//! Ctrl-C to the foreground job: the guest's terminal does all of that). This end only puts the
//! local terminal in raw mode, so every key goes through untouched, and passes bytes and window
//! size changes along. `exit` (or a closed terminal, or SIGTERM) powers the lab off.
//!
//! While it runs, `lab attach HOST` in another terminal opens a shell on any host of the same
//! lab, through this process (see `attach.rs`).

use anyhow::Context;

use lab_harness::assets::DIR_IN_GUEST;
use lab_harness::{Assets, Lab, TtySize};

use crate::attach::{guest_shell, Control};
use crate::lab::LanArgs;
use crate::terminal::{self, say, Remote};

/// Where the other hosts' shells open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panes {
    /// Nowhere by themselves: the banner says how to `lab attach` them.
    None,
    /// In a tmux pane each, beside this one (`lab up` inside tmux).
    Tmux,
}

pub fn run(lan: &LanArgs, panes: Panes) -> anyhow::Result<()> {
    let spec = lan.checked()?;
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let mut assets = crate::lab::assets_for(&[&spec], &lan.provision)?;
    assets.runs = crate::runs::start("shell")?;
    let before = crate::leaks::HostFootprint::take();
    let rt = tokio::runtime::Runtime::new()?;
    let code = rt.block_on(shell(&assets, spec.named("lab-shell"), lan, panes));
    // The thread reading our stdin may still be blocked in a read: do not wait for it.
    rt.shutdown_background();
    let code = code?;
    let leaks = crate::leaks::HostFootprint::take().leaked_since(&before);
    anyhow::ensure!(
        leaks.is_empty(),
        "the shell's lab left things behind:\n  {}",
        leaks.join("\n  ")
    );
    say("lab: the guests are off; nothing was left behind");
    say(&format!(
        "lab: captures and consoles of this lab are in {}",
        crate::runs::shown(&assets.runs).display()
    ));
    std::process::exit(code);
}

async fn shell(
    assets: &Assets,
    spec: lab_harness::Spec,
    lan: &LanArgs,
    panes: Panes,
) -> anyhow::Result<i32> {
    eprintln!("lab: booting {}", lan.describe());
    let lab = lab_harness::Lab::boot(assets, spec).await?;
    let first = lab.spec().first_host().to_string();
    let code = {
        let control = Control::open(&lab)?;
        eprint!("{}", banner(&lab, assets, lan, panes));
        if panes == Panes::Tmux {
            open_panes(&lab)?;
        }
        let cwd = if lan.dir.is_some() {
            DIR_IN_GUEST
        } else {
            "/root"
        };
        let session = lab
            .vm(&first)
            .interactive(guest_shell(cwd, &terminal::kind()), terminal::size())
            .await?;
        // A topology's timeline plays while the person types (a cable cut after 5 s, say).
        let shell = async {
            tokio::select! {
                code = terminal::relay(HostShell(session)) => code,
                () = control.serve(&lab) => unreachable!("serves until dropped"),
            }
        };
        lab.alongside_timeline(shell).await??
    };
    say("\r\nlab: shell ended; powering the guests off");
    lab.shutdown().await?;
    Ok(code)
}

/// A pane beside this one for every host but the first, each a `lab attach` of this lab, laid
/// out so that all are seen at once. The first host's shell keeps the focus.
fn open_panes(lab: &Lab) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program to attach with")?;
    let pid = std::process::id().to_string();
    // The pane this runs in, or tmux's idea of the current one.
    let here = std::env::var("TMUX_PANE").map_or_else(|_| vec![], |p| vec!["-t".to_string(), p]);
    let here: Vec<&str> = here.iter().map(String::as_str).collect();
    for vm in lab.vms().iter().skip(1) {
        // Arguments apart, so tmux runs the program itself: no shell to quote for. TMPDIR, so
        // the attach looks where this process keeps its control socket, whatever the tmux
        // server's environment says.
        let tmpdir = format!("TMPDIR={}", std::env::temp_dir().display());
        tmux(&[&["split-window", "-d", "-e", &tmpdir], &here[..]].concat())?
            .arg(&exe)
            .args(["lab", "attach", vm.name(), "--pid", &pid])
            .status()
            .context("running tmux")?
            .success()
            .then_some(())
            .with_context(|| format!("tmux could not open a pane for {}", vm.name()))?;
    }
    tmux(&[&["select-layout"], &here[..], &["tiled"]].concat())?.status()?;
    Ok(())
}

fn tmux(args: &[&str]) -> anyhow::Result<std::process::Command> {
    let tmux = which::which("tmux")
        .context("tmux is not on PATH (`sudo apt-get install tmux`), or run `lab up --no-panes`")?;
    let mut cmd = std::process::Command::new(tmux);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    Ok(cmd)
}

/// What a person reads before the prompt: each host, its address, how to reach the others.
fn banner(lab: &Lab, assets: &Assets, lan: &LanArgs, panes: Panes) -> String {
    let first = lab.spec().first_host();
    let mut text = format!(
        "\nmacvlan-lab shell: root on {first}, kernel {}\n",
        assets.kernel.release
    );
    if lan.topology.is_none() {
        text.push_str(&format!(
            "  every host's eth0 on one switch, hairpin {}\n",
            if lan.hairpin { "on" } else { "off" }
        ));
    }
    // Each host's NICs as the spec plugged and numbered them: the lab's real network.
    for host in lab.spec().hosts() {
        let nics: Vec<String> = host
            .nics
            .iter()
            .enumerate()
            .map(|(n, nic)| {
                let addresses: Vec<String> =
                    nic.addresses.iter().map(ToString::to_string).collect();
                let segment = &lab.spec().segments()[nic.segment].name;
                match addresses.is_empty() {
                    true => format!("eth{n} on {segment}"),
                    false => format!("{} on eth{n} ({segment})", addresses.join(" ")),
                }
            })
            .collect();
        let kernel = host
            .kernel
            .as_ref()
            .map(|k| format!(", kernel {k}"))
            .unwrap_or_default();
        text.push_str(&format!("  {:<6} {}{kernel}\n", host.name, nics.join(", ")));
    }
    if let Some(dir) = &lan.dir {
        text.push_str(&format!(
            "  {} is copied to {DIR_IN_GUEST} (a copy: changes stay in the guest)\n",
            dir.display()
        ));
    }
    text.push_str("  Every kernel module is a `modprobe` away.\n");
    match lab.vms().get(1) {
        Some(_) if panes == Panes::Tmux => {
            text.push_str("  The other hosts' shells are in the panes beside this one.\n")
        }
        Some(other) => text.push_str(&format!(
            "  A shell on another host, from another terminal: cargo xtask lab attach {}\n",
            other.name()
        )),
        None => text.push_str(&format!(
            "  Another shell on {first}, from another terminal: cargo xtask lab attach {first}\n"
        )),
    }
    let cable = lab.vms().get(1).map_or(first, |vm| vm.name());
    text.push_str(&format!(
        "  Watch and steer it from another terminal: cargo xtask lab capture {cable} | wireshark -k -i -\n    (live frames), lab link {cable} down|up, lab set {cable} --delay 50ms, lab show, lab events\n"
    ));
    if !lab.spec().timeline().is_empty() {
        text.push_str(&format!(
            "  Its timeline changes {} cable(s) while you type ([[at]] of the file).\n",
            lab.spec().timeline().len()
        ));
    }
    text.push_str("  `exit` or Ctrl-D powers the lab off.\n\n");
    text
}

/// host1's shell, run from here.
struct HostShell<'a>(lab_harness::Session<'a>);

/// Keys for a guest's terminal, straight to its agent.
#[derive(Clone)]
pub(crate) struct GuestKeys(pub(crate) Option<lab_harness::agent::InputSender>);

impl crate::terminal::Keys for GuestKeys {
    async fn send(&self, data: Vec<u8>) -> anyhow::Result<()> {
        match &self.0 {
            Some(input) => input
                .send(&data)
                .await
                .context("typing into the guest's terminal"),
            None => Ok(()),
        }
    }
}

impl Remote for HostShell<'_> {
    type Keys = GuestKeys;

    fn keys(&self) -> GuestKeys {
        GuestKeys(self.0.input_sender())
    }

    async fn output(&mut self) -> Option<Vec<u8>> {
        self.0.output().await
    }

    async fn resize(&mut self, size: TtySize) -> anyhow::Result<()> {
        Ok(self.0.resize(size).await?)
    }

    async fn finish(self) -> anyhow::Result<i32> {
        let out = self.0.finish().await?;
        Ok(crate::attach::exit_code(&out))
    }
}
