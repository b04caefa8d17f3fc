//! `lab capture`: a running lab's frames, live, as pcapng on stdout, from another terminal; a
//! reader that stops reading does not slow the lab, and the stream counts what it lost.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
use pcap_file::pcapng::{Block, PcapNgReader};

mod support;
use support::terminal::{lab_shell, last_rtt};

/// What a pcapng stream held: its interfaces' names, its frames (interface, bytes), and the
/// drops its statistics blocks report.
#[derive(Debug, Default)]
struct Stream {
    interfaces: Vec<String>,
    frames: Vec<(u32, Vec<u8>)>,
    dropped: Option<u64>,
}

fn parse(bytes: &[u8]) -> Stream {
    let mut reader = PcapNgReader::new(bytes).expect("a pcapng section header");
    let mut stream = Stream::default();
    while let Some(block) = reader.next_block() {
        match block.expect("a whole block") {
            Block::InterfaceDescription(idb) => {
                for option in idb.options {
                    if let InterfaceDescriptionOption::IfName(name) = option {
                        stream.interfaces.push(name.into_owned());
                    }
                }
            }
            Block::EnhancedPacket(epb) => stream
                .frames
                .push((epb.interface_id, epb.data.into_owned())),
            Block::InterfaceStatistics(isb) => {
                for option in isb.options {
                    if let InterfaceStatisticsOption::IsbIfDrop(n) = option {
                        *stream.dropped.get_or_insert(0) += n;
                    }
                }
            }
            _ => {}
        }
    }
    stream
}

/// IPv4 ICMP frames of a stream.
fn icmp(stream: &Stream) -> usize {
    stream
        .frames
        .iter()
        .filter(|(_, f)| f.get(12..14) == Some(&[8, 0][..]) && f.get(23) == Some(&1))
        .count()
}

fn capture(pid: &str, target: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["lab", "capture", "--pid", pid]);
    if let Some(t) = target {
        cmd.arg(t);
    }
    cmd.env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lab capture")
}

/// Reads a capture's stdout to its end in a thread of its own.
fn drain(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    })
}

#[test]
fn captures_stream_live_and_a_stalled_reader_loses_frames_not_the_lan() {
    let (term, pid) = lab_shell("capture", "--hosts 2");

    // Two at once: host2's cable, and the whole switch.
    let mut cable = capture(&pid, Some("host2"));
    let cable_out = drain(&mut cable);
    let mut switch = capture(&pid, None);
    let switch_out = drain(&mut switch);
    // A third whose reader never reads, until the end.
    let mut stalled = capture(&pid, Some("host2"));
    // Give the captures time to connect before the frames they should see.
    std::thread::sleep(Duration::from_secs(3));

    term.type_line("clear; ping -c 10 -i 0.2 -W 2 192.168.88.2 | tail -1; echo PING1=$?");
    let before = last_rtt(&term.wait_for("PING1=0", 1, Duration::from_secs(60)));
    // A flood past what the stalled reader's pipe, socket and tap can hold.
    term.type_line("clear; ping -f -c 4000 -s 1400 192.168.88.2 | tail -2; echo FLOOD=$?");
    term.wait_for("FLOOD=", 1, Duration::from_secs(180));
    term.type_line("clear; ping -c 10 -i 0.2 -W 2 192.168.88.2 | tail -1; echo PING2=$?");
    let after = last_rtt(&term.wait_for("PING2=0", 1, Duration::from_secs(60)));
    assert!(
        after - before < 20.0,
        "a stalled capture slowed the LAN: RTT {before:.1} ms before, {after:.1} ms after"
    );

    // The stalled reader reads again while the lab runs, so the shell can tell it its drops.
    let stalled_out = drain(&mut stalled);
    std::thread::sleep(Duration::from_secs(4));
    term.type_line("exit");
    for child in [&mut cable, &mut switch, &mut stalled] {
        let status = child.wait().expect("capture ends");
        let mut err = String::new();
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        assert!(status.success(), "lab capture ended with {status}: {err}");
    }

    let cable = parse(&cable_out.join().expect("reader"));
    assert_eq!(cable.interfaces, ["host2:eth0"]);
    assert!(icmp(&cable) >= 20, "{} ICMP frames", icmp(&cable));
    let switch = parse(&switch_out.join().expect("reader"));
    assert_eq!(switch.interfaces, ["host1:eth0", "host2:eth0"]);
    for iface in [0, 1] {
        assert!(
            switch.frames.iter().any(|(i, _)| *i == iface),
            "frames entering by port {iface}"
        );
    }
    let stalled = parse(&stalled_out.join().expect("reader"));
    let dropped = stalled.dropped.expect("a statistics block");
    assert!(dropped > 0, "the stalled stream counted its losses");
    assert!(
        (stalled.frames.len() as u64) < (cable.frames.len() as u64),
        "it lost frames the reading one kept: {} against {}",
        stalled.frames.len(),
        cable.frames.len()
    );
}
