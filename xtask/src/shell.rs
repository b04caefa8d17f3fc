//! `cargo xtask lab shell`: a root shell on host1 of a fresh LAN, on this terminal.
//!
//! The guest's agent runs bash on a pseudo-terminal of its own (line editing, job control,
//! Ctrl-C to the foreground job: the guest's terminal does all of that). This end only puts the
//! local terminal in raw mode, so every key goes through untouched, and passes bytes and window
//! size changes along. `exit` (or a closed terminal, or SIGTERM) powers the lab off.
//!
//! While it runs, `lab attach HOST` in another terminal opens a shell on any host of the same
//! lab, through this process (see `attach.rs`).

use std::time::Duration;

use lab_harness::assets::DIR_IN_GUEST;
use lab_harness::{Assets, Lab, TtySize};

use crate::attach::{guest_shell, Control};
use crate::lab::LanArgs;
use crate::terminal::{self, say, Remote};

pub fn run(lan: &LanArgs) -> anyhow::Result<()> {
    lan.check()?;
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let mut assets = Assets::load(&crate::provision::assets_path(&lan.provision)?)?;
    assets.runs = crate::runs::start("shell")?;
    let before = crate::leaks::HostFootprint::take();
    let rt = tokio::runtime::Runtime::new()?;
    let code = rt.block_on(shell(&assets, lan));
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

async fn shell(assets: &Assets, lan: &LanArgs) -> anyhow::Result<i32> {
    eprintln!("lab: booting {}", lan.describe());
    let on = lan.lan(Duration::ZERO)?;
    let lab = lab_harness::lan::script::boot(assets, "lab-shell", &on).await?;
    let first = on.first_host();
    let code = {
        let control = Control::open(&lab)?;
        eprint!("{}", banner(&lab, assets, lan));
        let cwd = if lan.dir.is_some() {
            DIR_IN_GUEST
        } else {
            "/root"
        };
        let session = lab
            .vm(&first)
            .interactive(guest_shell(cwd, &terminal::kind()), terminal::size())
            .await?;
        tokio::select! {
            code = terminal::relay(HostShell(session)) => code?,
            () = control.serve(&lab) => unreachable!("serves until dropped"),
        }
    };
    say("\r\nlab: shell ended; powering the guests off");
    lab.shutdown().await?;
    Ok(code)
}

/// What a person reads before the prompt: each host, its address, how to reach the others.
fn banner(lab: &Lab, assets: &Assets, lan: &LanArgs) -> String {
    let first = lab.vms().first().map_or("host1", |vm| vm.name());
    let mut text = format!(
        "\nmacvlan-lab shell: root on {first} ({}/24 on eth0), kernel {}\n",
        lab.ip(first),
        assets.kernel.release
    );
    for vm in lab.vms().iter().skip(1) {
        text.push_str(&format!(
            "  {:<6} {:<14} on the same switch (hairpin {}): ping {}\n",
            vm.name(),
            lab.ip(vm.name()),
            if lan.hairpin { "on" } else { "off" },
            lab.ip(vm.name())
        ));
    }
    if let Some(dir) = &lan.dir {
        text.push_str(&format!(
            "  {} is copied to {DIR_IN_GUEST} (a copy: changes stay in the guest)\n",
            dir.display()
        ));
    }
    text.push_str("  Every kernel module is a `modprobe` away.\n");
    match lab.vms().get(1) {
        Some(other) => text.push_str(&format!(
            "  A shell on another host, from another terminal: cargo xtask lab attach {}\n",
            other.name()
        )),
        None => text.push_str(&format!(
            "  Another shell on {first}, from another terminal: cargo xtask lab attach {first}\n"
        )),
    }
    text.push_str("  `exit` or Ctrl-D powers the lab off.\n\n");
    text
}

/// host1's shell, run from here.
struct HostShell<'a>(lab_harness::Session<'a>);

impl Remote for HostShell<'_> {
    async fn output(&mut self) -> Option<Vec<u8>> {
        self.0.output().await
    }

    async fn input(&mut self, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.input(data).await?)
    }

    async fn resize(&mut self, size: TtySize) -> anyhow::Result<()> {
        Ok(self.0.resize(size).await?)
    }

    async fn finish(self) -> anyhow::Result<i32> {
        let out = self.0.finish().await?;
        Ok(crate::attach::exit_code(&out))
    }
}
