//! Steering a running lab from another terminal: `lab link` cuts and restores a cable, `lab set`
//! makes one slow, `lab show` shows the ports, `lab capture` feeds tcpdump in another pane; the
//! lab runs in a `lab shell` on a real terminal (tmux), as a person would have it.

use std::process::Output;
use std::time::Duration;

mod support;
use support::terminal::{lab_shell, last_rtt, Terminal};
use support::{text, xtask};

fn steer(pid: &str, args: &[&str]) -> Output {
    xtask()
        .arg("lab")
        .args(args)
        .args(["--pid", pid])
        .output()
        .expect("run xtask")
}

#[test]
fn a_cable_is_cut_restored_and_slowed_from_another_terminal() {
    let (term, pid) = lab_shell("steer", "--hosts 2");

    // The lab's events, read live while it is steered.
    let mut events = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["lab", "events", "--pid", &pid])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start lab events");
    let mut events_out = events.stdout.take().expect("stdout");
    let events_read = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut events_out, &mut text);
        text
    });
    std::thread::sleep(Duration::from_secs(2));

    let shown = steer(&pid, &["show"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout);
    for expected in [
        "host1:eth0  lan port 0  cable up",
        "host2:eth0  lan port 1  cable up",
        "a good cable",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }

    // Watched from a second terminal as a person would: the capture piped into tcpdump, which
    // prints five ICMP packets of host1's pings and ends; the capture ends with its reader.
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let watch = Terminal::start(
        "steer-tcpdump",
        &format!("{xtask} lab capture --pid {pid} host2 | tcpdump -n -r - -c 5 icmp; echo TCPDUMP=$?; sleep 600"),
    );
    std::thread::sleep(Duration::from_secs(2));
    term.type_line("clear; ping -c 8 -i 0.3 192.168.88.2 | tail -1; echo WATCHED=$?");
    term.wait_for("WATCHED=0", 1, Duration::from_secs(60));
    let printed = watch.wait_for("TCPDUMP=", 1, Duration::from_secs(60));
    let packets = printed
        .lines()
        .filter(|l| l.contains(": ICMP echo"))
        .count();
    assert_eq!(packets, 5, "tcpdump printed:\n{printed}");
    assert!(printed.contains("TCPDUMP=0"), "tcpdump printed:\n{printed}");

    // Cut: host2's carrier goes, and host1's pings get no answer.
    let cut = steer(&pid, &["link", "host2", "down"]);
    assert!(cut.status.success(), "{}", text(&cut));
    assert!(
        text(&cut).contains("host2:eth0: cable pulled out"),
        "{}",
        text(&cut)
    );
    term.type_line("ping -c 3 -W 1 192.168.88.2; echo PING1=$?");
    term.wait_for("PING1=1", 1, Duration::from_secs(30));
    let down = steer(&pid, &["show", "host2"]);
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("cable DOWN"),
        "{}",
        text(&down)
    );

    // Restored: it answers again.
    let plugged = steer(&pid, &["link", "host2", "up"]);
    assert!(plugged.status.success(), "{}", text(&plugged));
    term.type_line("ping -c 1 -w 20 192.168.88.2 >/dev/null; echo PING2=$?");
    term.wait_for("PING2=0", 1, Duration::from_secs(40));

    // Slowed: 100 ms each way puts about 200 ms on the round trip, measured against the
    // cable's own RTT just before (paired, so a busy machine slows both alike).
    term.type_line("clear; ping -c 5 -i 0.2 -W 2 192.168.88.2 | tail -1; echo PING3=$?");
    let before = last_rtt(&term.wait_for("PING3=0", 1, Duration::from_secs(40)));
    let slowed = steer(&pid, &["set", "host2", "--delay", "100ms"]);
    assert!(slowed.status.success(), "{}", text(&slowed));
    assert!(
        text(&slowed).contains("host2:eth0: delay 100ms"),
        "{}",
        text(&slowed)
    );
    term.type_line("clear; ping -c 5 -i 0.2 -W 2 192.168.88.2 | tail -1; echo PING4=$?");
    let after = last_rtt(&term.wait_for("PING4=0", 1, Duration::from_secs(40)));
    assert!(
        (150.0..400.0).contains(&(after - before)),
        "the RTT grew by {:.0} ms ({before:.1} -> {after:.1}), not about 200",
        after - before
    );
    let cleared = steer(&pid, &["set", "host2", "--clear"]);
    assert!(
        text(&cleared).contains("a good cable"),
        "{}",
        text(&cleared)
    );

    // Mistakes are refused, naming what there is.
    let wrong = steer(&pid, &["link", "host9", "down"]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("this lab has no \"host9\"; its hosts are host1, host2"),
        "{}",
        text(&wrong)
    );
    let no_nic = steer(&pid, &["link", "host2:eth3", "down"]);
    assert!(
        text(&no_nic).contains("host2 has no \"eth3\"; its NICs are eth0"),
        "{}",
        text(&no_nic)
    );
    let nothing = steer(&pid, &["set", "host2"]);
    assert!(
        !nothing.status.success() && text(&nothing).contains("--clear"),
        "{}",
        text(&nothing)
    );

    term.type_line("exit");
    assert!(events
        .wait()
        .expect("lab events ends with the lab")
        .success());
    let lines: Vec<serde_json::Value> = events_read
        .join()
        .expect("reader")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(lines.iter().all(|e| e["version"] == 1), "{lines:?}");
    let has = |what: &dyn Fn(&serde_json::Value) -> bool, name: &str| {
        assert!(lines.iter().any(what), "no {name} event in {lines:#?}");
    };
    has(
        &|e| e["event"] == "cable" && e["port"] == "host2:eth0" && e["up"] == false,
        "cable down",
    );
    has(
        &|e| e["event"] == "cable" && e["port"] == "host2:eth0" && e["up"] == true,
        "cable up",
    );
    has(
        &|e| e["event"] == "impairment" && e["impairment"] == "delay 100ms",
        "impairment",
    );
    has(
        &|e| e["event"] == "mac_forgotten" && e["port"] == "host2:eth0",
        "address flushed with the cable",
    );
    has(
        &|e| e["event"] == "mac_learned" && e["port"] == "host2:eth0",
        "address learned again",
    );
}

/// The seed's bond0 failover, from outside: host1's active-backup bond keeps reaching the peer
/// while its active NIC's cable is cut with `lab link host1:eth0 down`.
#[test]
fn a_bond_keeps_pinging_while_lab_link_cuts_one_of_its_cables() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bond.toml");
    let (term, pid) = lab_shell("bond", &format!("--topology {}", file.display()));
    term.type_line("grep 'Currently Active Slave' /proc/net/bonding/bond0");
    term.wait_for("Currently Active Slave: eth0", 1, Duration::from_secs(20));
    term.type_line("ping -c 40 -i 0.2 -W 1 192.168.88.2 | tail -2; echo BOND-PING=$((1+1))");
    // Cut eth0's cable while the pings run.
    std::thread::sleep(Duration::from_secs(3));
    let cut = steer(&pid, &["link", "host1:eth0", "down"]);
    assert!(cut.status.success(), "{}", text(&cut));
    let screen = term.wait_for("BOND-PING=2", 1, Duration::from_secs(60));
    let summary = screen
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{screen}"));
    let received: u32 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    // miimon 100: the bond notices within a tenth of a second; a ping or two may go.
    assert!(received >= 36, "the bond kept pinging: {summary}");
    term.type_line("clear; grep 'Currently Active Slave' /proc/net/bonding/bond0");
    term.wait_for("Currently Active Slave: eth1", 1, Duration::from_secs(20));
    term.type_line("exit");
}
