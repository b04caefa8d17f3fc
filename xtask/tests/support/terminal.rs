//! A real terminal for the tests of `lab shell`, `lab attach` and `lab up`: a tmux session the
//! test types into and reads, as a person would.

use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one command on a 160x48 terminal; killed on drop. Its panes are
/// addressed by index (0 is the command's own; `lab up` opens the others).
pub struct Terminal {
    name: String,
}

impl Terminal {
    pub fn start(label: &str, command: &str) -> Self {
        let name = format!("lab-{label}-test-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "160", "-y", "48", command])
            .status()
            .unwrap_or_else(|e| panic!("tmux is needed to test the shell on a terminal (`sudo apt-get install tmux`): {e}"));
        assert!(status.success(), "tmux new-session failed");
        Self { name }
    }

    /// The first pane.
    pub fn pane(&self) -> Pane<'_> {
        self.pane_at(0)
    }

    pub fn pane_at(&self, index: usize) -> Pane<'_> {
        Pane {
            target: format!("{}:0.{index}", self.name),
            _session: self,
        }
    }

    /// How many panes the session's window has.
    pub fn panes(&self) -> usize {
        let out = Command::new("tmux")
            .args(["list-panes", "-t", &format!("{}:0", self.name)])
            .output()
            .expect("tmux list-panes");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Waits until the window has `n` panes; panics with the first pane's screen otherwise.
    pub fn wait_for_panes(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.panes() != n {
            assert!(
                Instant::now() < deadline,
                "{n} panes not open within {within:?} ({} open):\n{}",
                self.panes(),
                self.pane().screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn screen(&self) -> String {
        self.pane().screen()
    }

    /// Starts `command` once every byte it writes to the terminal is also appended to `file`
    /// (cursor moves and redraws included, which the screen no longer shows).
    pub fn start_recorded(label: &str, command: &str, file: &std::path::Path) -> Self {
        let go = file.with_extension("go");
        let term = Self::start(
            label,
            &format!(
                "while [ ! -e '{}' ]; do sleep 0.05; done; {command}",
                go.display()
            ),
        );
        let status = Command::new("tmux")
            .args(["pipe-pane", "-o", "-t", &term.pane().target])
            .arg(format!("cat >> '{}'", file.display()))
            .status()
            .expect("tmux pipe-pane");
        assert!(status.success(), "tmux pipe-pane failed");
        std::fs::write(&go, b"").expect("the start signal");
        term
    }

    pub fn keys(&self, keys: &[&str]) {
        self.pane().keys(keys)
    }

    pub fn type_line(&self, line: &str) {
        self.pane().type_line(line)
    }

    pub fn wait_for(&self, text: &str, times: usize, within: Duration) -> String {
        self.pane().wait_for(text, times, within)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

/// One pane of a [`Terminal`].
pub struct Pane<'a> {
    target: String,
    _session: &'a Terminal,
}

impl Pane<'_> {
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-J", "-S", "-400", "-t", &self.target])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.target])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    pub fn type_line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// Waits until the screen shows `text` `times` times; panics with the screen otherwise.
    pub fn wait_for(&self, text: &str, times: usize, within: Duration) -> String {
        self.wait_until(&format!("{text:?} ({times}x)"), within, |screen| {
            screen.matches(text).count() >= times
        })
    }

    /// Waits until `done` holds for the screen (`what` says what it looks for, in the panic).
    pub fn wait_until(&self, what: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not on {} within {within:?}:\n{screen}",
                self.target
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts `lab shell ARGS` in tmux; returns the terminal and the shell's process id (it
/// replaces the tmux pane's shell, so `$$` is its pid: several shells may run at once in the
/// suite, and `--pid` picks this one).
pub fn lab_shell(label: &str, args: &str) -> (Terminal, String) {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let term = Terminal::start(
        label,
        &format!("echo LAB-PID=$$; exec {xtask} lab shell {args}"),
    );
    let screen = term.wait_for("root@host1:", 1, Duration::from_secs(180));
    let pid = screen
        .lines()
        .find_map(|l| l.trim().strip_prefix("LAB-PID="))
        .expect("the pane printed its pid")
        .trim()
        .to_string();
    (term, pid)
}

/// The average RTT of the last ping summary on `screen`, in ms.
pub fn last_rtt(screen: &str) -> f64 {
    let line = screen
        .lines()
        .rev()
        .find(|l| l.starts_with("rtt "))
        .unwrap_or_else(|| panic!("no ping summary on the screen:\n{screen}"));
    line.split(" = ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .unwrap_or_else(|| panic!("no RTT in {line:?}"))
}
