//! What a lab does, as a stream of events: one JSON object per line (NDJSON), each with the
//! schema's `version`, the time and an `event` naming its kind (docs/events.md lists them).
//! They go to `events.ndjson` in the lab's run directory and to live readers (`lab events`).
//!
//! Guests, cables and jobs say what they do when they do it; what the switch and the consoles
//! do frame by frame (addresses learned and forgotten, frames dropped, kernel problems) a
//! watcher reads every [`WATCH_EVERY`] and tells as changes, so a flood of drops is one event
//! per port and reason each time, with its count, not one per frame.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::lan::{PortCounters, SwitchView};

/// The schema's version, in every record; bumped when a field changes meaning or goes.
pub const VERSION: u32 = 1;
/// How often the watcher looks at the switches and consoles.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// Lines a live reader may be behind before it is told how many it missed.
const BEHIND: usize = 4096;
/// Bytes of `events.ndjson`; past them a last line says the file was cut.
const MAX_FILE_BYTES: u64 = 32 << 20;

/// One thing the lab did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A guest is up: `boot` is `cold`, `restored` or `fallback` (its snapshot could not be used).
    GuestUp { host: String, boot: String },
    /// A guest was powered off.
    GuestDown { host: String },
    /// The switch learned `mac` on a port, in `vlan` (1 on a VLAN-unaware port).
    MacLearned {
        port: String,
        segment: String,
        vlan: u16,
        mac: String,
    },
    /// The switch forgot it: aged out, or flushed when the port's cable went down.
    MacForgotten {
        port: String,
        segment: String,
        vlan: u16,
        mac: String,
    },
    /// `frames` more frames were dropped at a port for `reason` (`vlan`, `mac_cap`,
    /// `link_down`, `impairment_loss`, `impairment_full`, `not_delivered`, `runt`,
    /// `oversize`, `same_port`, `bad_source`).
    Dropped {
        port: String,
        segment: String,
        reason: String,
        frames: u64,
    },
    /// A cable was pulled (`up` false) or plugged in.
    Cable { port: String, up: bool },
    /// A cable's impairment changed (`impairment` in words).
    Impairment { port: String, impairment: String },
    /// A port's policy changed (hairpin, MAC cap, VLANs, in words).
    Policy { port: String, policy: String },
    /// A guest's kernel printed a problem: its kind, the line, its fingerprint.
    KernelProblem {
        host: String,
        kind: String,
        line: String,
        fingerprint: String,
    },
    /// A job started on a host (`seed`: the lab's, when it has one).
    JobStarted {
        host: String,
        job: String,
        seed: Option<u64>,
    },
    /// A job ended: its exit code (none when killed or timed out) and whether it passed.
    JobEnded {
        host: String,
        job: String,
        exit_code: Option<i32>,
        passed: bool,
    },
    /// A live reader fell behind and missed this many events (they are in the file).
    Missed { events: u64 },
}

#[derive(Serialize)]
struct Record<'a> {
    version: u32,
    unix_ms: u64,
    #[serde(flatten)]
    event: &'a Event,
}

/// A lab's events: its file and its live readers.
#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Arc<str>>,
    file: Mutex<File>,
}

#[derive(Debug)]
struct File {
    out: Option<std::fs::File>,
    written: u64,
}

impl Events {
    /// Events written to `path` (and to readers); a file that cannot be made leaves readers.
    pub fn new(path: &Path) -> Self {
        let out = crate::private::file(path).ok();
        Self {
            tx: broadcast::channel(BEHIND).0,
            file: Mutex::new(File { out, written: 0 }),
        }
    }

    /// Records `event` now.
    pub fn emit(&self, event: Event) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let Some(line) = line(&event, unix_ms) else {
            return;
        };
        self.write(&line);
        // No reader is no error: the file has it.
        let _ = self.tx.send(line);
    }

    fn write(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let File { out, written } = &mut *file;
        let Some(f) = out else { return };
        if *written + line.len() as u64 > MAX_FILE_BYTES {
            let _ = writeln!(
                f,
                "{{\"version\":{VERSION},\"event\":\"file_cut\",\"after_bytes\":{written}}}"
            );
            *out = None;
            return;
        }
        if f.write_all(line.as_bytes()).is_ok() {
            *written += line.len() as u64;
        }
    }

    /// A live reader: every event from now on, as NDJSON lines.
    pub fn subscribe(&self) -> Reader {
        Reader(self.tx.subscribe())
    }
}

/// `event`'s NDJSON line: the record with its version and time, and a newline.
fn line(event: &Event, unix_ms: u64) -> Option<Arc<str>> {
    let record = Record {
        version: VERSION,
        unix_ms,
        event,
    };
    let json = serde_json::to_string(&record).ok()?;
    Some(Arc::from(format!("{json}\n")))
}

/// A live reader of a lab's events.
#[derive(Debug)]
pub struct Reader(broadcast::Receiver<Arc<str>>);

impl Reader {
    /// The next line; a reader that fell behind gets a [`Event::Missed`] line first. `None`
    /// once the lab is gone.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        match self.0.recv().await {
            Ok(line) => Some(line),
            Err(broadcast::error::RecvError::Lagged(n)) => line(&Event::Missed { events: n }, 0),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// What the watcher looks at: each port with its name, and each guest's console.
pub(crate) struct Watched {
    pub ports: Vec<WatchedPort>,
    pub consoles: Vec<(String, crate::console::Watch)>,
}

pub(crate) struct WatchedPort {
    pub name: String,
    pub segment: String,
    pub switch: SwitchView,
    pub port: usize,
}

/// Tells `events` what changed in `watched`, every [`WATCH_EVERY`], until aborted.
pub(crate) async fn watch(events: Arc<Events>, watched: Watched) {
    let mut learned: Vec<BTreeSet<(u16, String)>> = vec![BTreeSet::new(); watched.ports.len()];
    let mut counted: Vec<PortCounters> = vec![PortCounters::default(); watched.ports.len()];
    let mut splats: BTreeMap<String, usize> = BTreeMap::new();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        for (i, p) in watched.ports.iter().enumerate() {
            let now: BTreeSet<(u16, String)> = p
                .switch
                .learned_in_vlans(p.port)
                .into_iter()
                .map(|(vlan, mac)| (vlan, mac.to_string()))
                .collect();
            for (vlan, mac) in now.difference(&learned[i]) {
                events.emit(Event::MacLearned {
                    port: p.name.clone(),
                    segment: p.segment.clone(),
                    vlan: *vlan,
                    mac: mac.clone(),
                });
            }
            for (vlan, mac) in learned[i].difference(&now) {
                events.emit(Event::MacForgotten {
                    port: p.name.clone(),
                    segment: p.segment.clone(),
                    vlan: *vlan,
                    mac: mac.clone(),
                });
            }
            learned[i] = now;
            let c = p.switch.counters(p.port);
            for (reason, frames) in drops(&counted[i], &c) {
                events.emit(Event::Dropped {
                    port: p.name.clone(),
                    segment: p.segment.clone(),
                    reason: reason.into(),
                    frames,
                });
            }
            counted[i] = c;
        }
        for (host, console) in &watched.consoles {
            let seen = console.splats();
            let told = splats.entry(host.clone()).or_insert(0);
            for s in seen.iter().skip(*told) {
                events.emit(Event::KernelProblem {
                    host: host.clone(),
                    kind: format!("{:?}", s.kind),
                    line: s.line.clone(),
                    fingerprint: s.fingerprint(),
                });
            }
            *told = seen.len();
        }
    }
}

/// Each drop counter that grew from `before` to `now`: its reason and by how much.
fn drops(before: &PortCounters, now: &PortCounters) -> Vec<(&'static str, u64)> {
    [
        ("vlan", before.drop_vlan, now.drop_vlan),
        ("mac_cap", before.drop_mac_limit, now.drop_mac_limit),
        ("link_down", before.drop_link_down, now.drop_link_down),
        ("impairment_loss", before.impaired_lost, now.impaired_lost),
        (
            "impairment_full",
            before.impaired_overflow,
            now.impaired_overflow,
        ),
        ("not_delivered", before.drop_tx_error, now.drop_tx_error),
        ("runt", before.drop_runt, now.drop_runt),
        ("oversize", before.drop_oversize, now.drop_oversize),
        ("same_port", before.drop_same_port, now.drop_same_port),
        ("bad_source", before.drop_bad_source, now.drop_bad_source),
    ]
    .into_iter()
    .filter(|(_, b, n)| n > b)
    .map(|(reason, b, n)| (reason, n - b))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_event_is_one_versioned_line_in_the_file_and_to_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.ndjson");
        let events = Events::new(&path);
        let mut reader = events.subscribe();
        events.emit(Event::Cable {
            port: "host2:eth0".into(),
            up: false,
        });
        let line = reader.next().await.expect("a line");
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(json["version"], VERSION);
        assert_eq!(json["event"], "cable");
        assert_eq!(json["port"], "host2:eth0");
        assert_eq!(json["up"], false);
        assert!(json["unix_ms"].as_u64().is_some_and(|t| t > 0));
        assert_eq!(std::fs::read_to_string(&path).expect("file"), &*line);
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_told_how_many_it_missed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = Events::new(&dir.path().join("events.ndjson"));
        let mut reader = events.subscribe();
        for _ in 0..BEHIND + 10 {
            events.emit(Event::GuestDown { host: "a".into() });
        }
        let first = reader.next().await.expect("a line");
        let json: serde_json::Value = serde_json::from_str(&first).expect("JSON");
        assert_eq!(json["event"], "missed");
        assert_eq!(json["events"], 10);
    }

    #[test]
    fn drops_are_told_by_reason_with_their_count() {
        let before = PortCounters::default();
        let now = PortCounters {
            drop_vlan: 3,
            impaired_lost: 2,
            ..PortCounters::default()
        };
        assert_eq!(drops(&before, &now), [("vlan", 3), ("impairment_loss", 2)]);
        assert!(drops(&now, &now).is_empty());
    }
}
