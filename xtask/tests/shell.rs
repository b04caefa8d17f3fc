//! `cargo xtask lab shell` and `lab attach` on real terminals: tmux gives each a pty, the test
//! types the seed's container section key by key and reads the screens, as a person would.

use std::time::Duration;

mod support;
use support::terminal::Terminal;

#[test]
fn a_person_types_the_seed_into_the_shell_and_ctrl_c_stops_ping_but_not_the_shell() {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let term = Terminal::start(
        "shell",
        &format!("{xtask} lab shell --hosts 2; echo SHELL-EXIT=$?; sleep 120"),
    );
    let banner = term.wait_for("root@host1:", 1, Duration::from_secs(120));
    assert!(
        banner.contains("host2  192.168.88.2"),
        "the banner lists the other hosts:\n{banner}"
    );
    assert!(
        banner.contains("lab attach host2"),
        "the banner says how to reach host2's shell:\n{banner}"
    );
    assert!(
        banner.contains("lab capture host2 | wireshark -k -i -")
            && banner.contains("lab link host2 down|up"),
        "the banner says how to watch and steer the lab:\n{banner}"
    );

    // A second terminal into host2 of the same lab; its exit code is its shell's.
    let second = Terminal::start(
        "attach",
        &format!("{xtask} lab attach host2; echo ATTACH-EXIT=$?; sleep 120"),
    );
    second.wait_for("root@host2:", 1, Duration::from_secs(30));
    second.type_line("hostname; ping -c 2 -W 2 192.168.88.1");
    second.wait_for(
        "2 packets transmitted, 2 received",
        1,
        Duration::from_secs(30),
    );
    second.type_line("exit 7");
    second.wait_for("ATTACH-EXIT=7", 1, Duration::from_secs(20));
    let wrong = Terminal::start(
        "attach-wrong",
        &format!("RUST_BACKTRACE=0 {xtask} lab attach host9; sleep 120"),
    );
    wrong.wait_for(
        "this lab has no \"host9\"; its hosts are host1, host2",
        1,
        Duration::from_secs(20),
    );
    // One more, left open: it must hear that the lab ended with the shell.
    let left_open = Terminal::start(
        "attach-open",
        &format!("RUST_BACKTRACE=0 {xtask} lab attach host2; sleep 120"),
    );
    left_open.wait_for("root@host2:", 1, Duration::from_secs(30));

    // The seed's 模拟容器 section, one command at a time.
    for line in [
        "ip link set eth0 promisc on",
        "ip link add link eth0 macvlan1 type macvlan mode bridge",
        "ip link add link eth0 macvlan2 type macvlan mode bridge",
        "ip netns add ns1; ip link set macvlan1 netns ns1",
        "ip netns exec ns1 ip addr add 192.168.88.11/24 dev macvlan1; ip netns exec ns1 ip link set dev macvlan1 up",
        "ip netns add ns2; ip link set macvlan2 netns ns2",
        "ip netns exec ns2 ip addr add 192.168.88.12/24 dev macvlan2; ip netns exec ns2 ip link set dev macvlan2 up",
        "ip netns exec ns2 ping -c 3 -W 2 192.168.88.11",
    ] {
        term.type_line(line);
    }
    term.wait_for(
        "3 packets transmitted, 3 received",
        1,
        Duration::from_secs(60),
    );

    // Ctrl-C reaches the guest's foreground job, not the shell, and not this side.
    term.type_line("ping 192.168.88.2");
    term.wait_for("bytes from 192.168.88.2", 2, Duration::from_secs(30));
    term.keys(&["C-c"]);
    term.wait_for("192.168.88.2 ping statistics", 1, Duration::from_secs(20));
    term.type_line("echo alive-$((6*7))");
    term.wait_for("alive-42", 1, Duration::from_secs(20));

    term.type_line("exit");
    let end = term.wait_for("SHELL-EXIT=", 1, Duration::from_secs(60));
    assert!(
        end.contains("SHELL-EXIT=0"),
        "the shell's exit is the run's:\n{end}"
    );
    assert!(end.contains("nothing was left behind"), "{end}");
    left_open.wait_for("the lab shell (pid", 1, Duration::from_secs(20));

    // The lab's captures and consoles stay for a person to open, although it passed.
    let kept = end
        .lines()
        .find_map(|l| l.split("captures and consoles of this lab are in ").nth(1))
        .unwrap_or_else(|| panic!("no kept run named:\n{end}"));
    // Its LANs are its directories (`.owner` says whose run it is).
    let lans: Vec<_> = std::fs::read_dir(kept.trim())
        .expect("the kept run's directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(lans.len(), 1, "one LAN: {lans:?}");
    let files: Vec<String> = std::fs::read_dir(&lans[0])
        .expect("the LAN's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "switch.pcap",
        "port0.pcap",
        "port1.pcap",
        "summary.json",
        "host1-",
        "host2-",
    ] {
        assert!(
            files.iter().any(|f| f.starts_with(wanted)),
            "{wanted} kept in {}: {files:?}",
            lans[0].display()
        );
    }
    let switch = std::fs::metadata(lans[0].join("switch.pcap"))
        .expect("switch.pcap")
        .len();
    assert!(
        switch > 1000,
        "the pings are in the capture ({switch} bytes)"
    );
}

/// `lab shell` killed while a person is at its prompt: by SIGTERM (a cancelled job), SIGHUP (the
/// terminal closed), SIGINT (from `kill`: typed, Ctrl-C goes to the guest) or SIGKILL. No QEMU
/// outlives it; the first three end it saying so, with nothing left; after SIGKILL the next run
/// sweeps the directories it could not remove.
#[rstest::rstest]
#[case::sigterm(nix::sys::signal::Signal::SIGTERM, 143)]
#[case::sighup(nix::sys::signal::Signal::SIGHUP, 129)]
#[case::sigint(nix::sys::signal::Signal::SIGINT, 130)]
#[case::sigkill(nix::sys::signal::Signal::SIGKILL, 137)]
fn a_killed_shell_leaves_no_qemu_and_nothing_once_swept(
    #[case] signal: nix::sys::signal::Signal,
    #[case] code: i32,
) {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let tmp = tempfile::tempdir().expect("tempdir");
    let pidfile = tmp.path().join("shell.pid");
    let term = Terminal::start(
        &format!("kill-{}", signal.as_str().to_lowercase()),
        &format!(
            "TMPDIR={tmp} RUST_BACKTRACE=0 sh -c 'echo $$ > {pid}; exec {xtask} lab shell --hosts 2'; echo SHELL-EXIT=$?; sleep 120",
            tmp = tmp.path().display(),
            pid = pidfile.display()
        ),
    );
    term.wait_for("root@host1:", 1, Duration::from_secs(120));
    let (dirs, qemus) = support::leftovers(tmp.path());
    assert!(
        qemus.len() == 2 && !dirs.is_empty(),
        "the lab runs: {dirs:?} {qemus:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
    let end = term.wait_for("SHELL-EXIT=", 1, Duration::from_secs(30));
    assert!(
        end.contains(&format!("SHELL-EXIT={code}")),
        "exit code for {signal}:\n{end}"
    );
    let killed = signal == nix::sys::signal::Signal::SIGKILL;
    let (dirs, qemus) = support::wait_for_leftovers_to_clear(tmp.path(), !killed);
    assert!(qemus.is_empty(), "QEMU outlived the shell: {qemus:?}");
    if killed {
        let sweep = support::xtask()
            .args(["lab", "--only", "no-such-scenario"])
            .env("TMPDIR", tmp.path())
            .output()
            .expect("xtask runs");
        let (after, _) = support::leftovers(tmp.path());
        assert!(
            after.is_empty(),
            "{dirs:?} left, {after:?} after the sweep: {}",
            String::from_utf8_lossy(&sweep.stderr)
        );
    } else {
        assert!(dirs.is_empty(), "left after {signal}: {dirs:?}");
    }
}
