//! The wire format between `cargo xtask lab attach` and the `lab shell` whose lab it joins:
//! the same JSON lines as the agent's ([`crate::encode`], [`crate::decode`]), over the shell's
//! control socket (a Unix socket in a directory only its user can enter).
//!
//! The attaching side sends [`ToShell::Attach`] first, then keys and window sizes; the shell
//! answers [`ToAttach::Attached`] or [`ToAttach::Refused`], then what the terminal shows, then
//! [`ToAttach::Ended`] with the guest shell's exit code. A closed socket on either side ends it.
//!
//! `lab link`, `lab set` and `lab show` steer the same lab: they send one [`ToShell::Steer`]
//! and get one [`ToAttach::Steered`] (what the lab did or shows) or [`ToAttach::Refused`].
//! `lab capture` sends [`ToShell::Capture`] and gets [`ToAttach::Capturing`] (its interfaces),
//! then frames and drop counts until either side goes; `lab events` sends [`ToShell::Events`]
//! and gets [`ToAttach::Event`]s.

use serde::{Deserialize, Serialize};

use crate::TtySize;

/// Largest line either side sends: a screenful of output, base64-encoded, is far below it.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// From `lab attach` to the running shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToShell {
    /// Open a shell on `host` (`host2`), on a terminal of `size` of kind `term` (`$TERM`).
    Attach {
        host: String,
        size: TtySize,
        term: String,
    },
    /// Keys typed.
    Input {
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// The terminal changed size.
    Resize { size: TtySize },
    /// Change the running lab, or show it: `target` is `HOST` or `HOST:NIC` (`host2:eth1`).
    Steer { target: String, action: Steer },
    /// Stream the frames of `target`'s cable (`HOST[:NIC]`), or of the first switch (empty).
    Capture { target: String },
    /// Stream the lab's events, from now on.
    Events,
}

/// What `lab link`, `lab set` and `lab show` ask of a running lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Steer {
    /// Plug (`up`) or pull the cable: carrier as the guest sees it, and frames both ways.
    Link { up: bool },
    /// The cable's impairment, replacing the one it had (what is not given is off).
    Impair(Cable),
    /// Hosts, ports, VLANs, impairments and counters (`target` empty: all hosts).
    Show,
}

/// A cable's impairment as `lab set` gives it, in plain units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cable {
    pub delay_us: u64,
    pub jitter_us: u64,
    /// Shares from 0 to 1.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub rate_bps: Option<u64>,
}

/// From the running shell to `lab attach`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAttach {
    /// The shell on `host` (address `ip`) is running.
    Attached { host: String, ip: String },
    /// No shell was started, and why (an unknown host, say, with the ones there are).
    Refused { reason: String },
    /// What the terminal shows.
    Output {
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// The guest's shell exited with `code`.
    Ended { code: i32 },
    /// What a [`ToShell::Steer`] did, or what the lab shows.
    Steered { text: String },
    /// A capture started: its interfaces, in the order frames name them (`host2:eth0`).
    Capturing { interfaces: Vec<String> },
    /// A captured frame, on interface `interface`, at `unix_ns` (nanoseconds since 1970).
    Frame {
        interface: u32,
        unix_ns: u64,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Frames the capture dropped so far because its reader was behind.
    CaptureDropped { frames: u64 },
    /// One event of the lab's, its NDJSON line (`lab_harness::events`).
    Event { line: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_a_round_trip_on_one_line() {
        let sent = [
            ToShell::Attach {
                host: "host2".into(),
                size: TtySize {
                    rows: 40,
                    cols: 120,
                },
                term: "xterm".into(),
            },
            ToShell::Input {
                data: b"ping -c1 host1\r\x03\n".to_vec(),
            },
            ToShell::Resize {
                size: TtySize { rows: 1, cols: 2 },
            },
            ToShell::Steer {
                target: "host2:eth1".into(),
                action: Steer::Impair(Cable {
                    delay_us: 100_000,
                    loss: 0.01,
                    rate_bps: Some(10_000_000),
                    ..Cable::default()
                }),
            },
            ToShell::Steer {
                target: "host2".into(),
                action: Steer::Link { up: false },
            },
        ];
        for msg in sent {
            let line = crate::encode(&msg);
            assert_eq!(
                line.iter().filter(|&&b| b == b'\n').count(),
                1,
                "one line: {line:?}"
            );
            assert_eq!(
                crate::decode::<ToShell>(&line[..line.len() - 1], MAX_LINE_BYTES).expect("decodes"),
                msg
            );
        }
        let back = ToAttach::Output {
            data: vec![0, 255, b'\n'],
        };
        let line = crate::encode(&back);
        assert_eq!(
            crate::decode::<ToAttach>(&line[..line.len() - 1], MAX_LINE_BYTES).expect("decodes"),
            back
        );
    }
}
