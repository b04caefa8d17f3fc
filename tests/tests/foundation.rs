//! The foundation: a throwaway microVM boots the provisioned kernel, the agent runs commands,
//! QMP sees what the guest does, and nothing is left behind.

use std::time::{Duration, Instant};

use lab_harness::{Cmd, Error, Phase, Reply, Vm};
use lab_tests::{assets, boot, config, Check};
use rstest::rstest;

#[rstest]
#[tokio::test]
async fn guest_runs_the_manifest_kernel_with_the_mac_qemu_was_given() {
    let assets = assets();
    let vm = boot(config("basics")).await;

    let release = vm.succeed("uname -r").await.check();
    assert_eq!(release.trim(), assets.kernel.release);
    let mac = vm.succeed("cat /sys/class/net/eth0/address").await.check();
    assert_eq!(mac.trim(), vm.mac().to_string());
    assert_eq!(vm.succeed("hostname").await.check().trim(), "basics");
    vm.succeed("ip link show lo | grep -q 'LOOPBACK,UP' && ping -c1 -W1 127.0.0.1")
        .await
        .check();

    // The real iproute2 answers, not busybox's applet: `-d -j` and `netns` work.
    let link = vm.succeed("ip -d -j link show eth0").await.check();
    assert!(link.contains("\"ifname\":\"eth0\""), "{link}");
    vm.succeed("ip netns add probe && ip netns exec probe ip link show lo && ip netns del probe")
        .await
        .check();

    assert_eq!(vm.qmp().status().await.check(), "running");
    let qemu_version = vm.qmp().query_version().await.check();
    assert_eq!(
        qemu_version,
        vm.qmp().version,
        "query-version agrees with the greeting"
    );
    vm.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn promiscuous_mode_in_the_guest_is_seen_by_the_host_through_qmp() {
    let vm = boot(config("promisc")).await;
    vm.succeed("ip link set eth0 up").await.check();
    assert!(
        !vm.qmp().rx_filter().await.check().promiscuous,
        "a fresh NIC is not promiscuous"
    );

    vm.succeed("ip link set eth0 promisc on").await.check();
    let filter = vm.qmp().rx_filter().await.check();
    assert!(filter.promiscuous, "{filter:?}");
    assert_eq!(filter.main_mac, vm.mac().to_string());

    vm.succeed("ip link set eth0 promisc off").await.check();
    assert!(!vm.qmp().rx_filter().await.check().promiscuous);
    vm.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn pulling_the_cable_with_set_link_shows_no_carrier_in_the_guest() {
    let vm = boot(config("cable")).await;
    vm.succeed("ip link set eth0 up").await.check();
    vm.wait_until_succeeds(
        "ip link show eth0 | grep -q LOWER_UP",
        Duration::from_secs(10),
    )
    .await
    .check();

    vm.qmp().set_link(false).await.check();
    vm.wait_until_succeeds(
        "ip link show eth0 | grep -q NO-CARRIER",
        Duration::from_secs(10),
    )
    .await
    .check();

    vm.qmp().set_link(true).await.check();
    vm.wait_until_succeeds(
        "! ip link show eth0 | grep -q NO-CARRIER",
        Duration::from_secs(10),
    )
    .await
    .check();
    vm.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn commands_report_failure_timeouts_big_output_stdin_and_namespaces() {
    let vm = boot(config("commands")).await;

    let out = vm.fail("echo oops >&2; exit 3").await.check();
    assert_eq!(out.code, Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");

    let err = vm
        .succeed("echo visible; exit 7")
        .await
        .expect_err("exit 7 must not succeed")
        .to_string();
    assert!(
        err.contains("exited with 7") && err.contains("visible"),
        "the error shows code and output: {err}"
    );

    let started = Instant::now();
    let out = vm
        .run(Cmd::script("sleep 30").timeout(Duration::from_secs(1)))
        .await
        .check();
    assert!(out.timed_out && out.code.is_none(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the timeout was enforced"
    );

    // Each command starts in a cgroup of its own under `commands`, fair game for the OOM killer,
    // with no signal blocked and SIGPIPE not ignored (the agent ignores it), in its own process group.
    let me = vm
        .succeed(Cmd::argv([
            "sh",
            "-c",
            "cat /proc/self/cgroup /proc/self/oom_score_adj; grep -E '^Sig(Ign|Blk)' /proc/self/status; ps -o pid,pgid | grep \"^ *$$ \"",
        ]))
        .await
        .check();
    let lines: Vec<&str> = me.lines().collect();
    assert!(lines[0].starts_with("0::/commands/"), "{me}");
    assert_eq!(lines[1..3], ["0", "SigBlk:\t0000000000000000"], "{me}");
    let ignored = lines[3]
        .strip_prefix("SigIgn:\t")
        .map(|hex| u64::from_str_radix(hex, 16));
    assert!(
        matches!(ignored, Some(Ok(mask)) if mask & (1 << (13 - 1)) == 0),
        "SIGPIPE (13) is not ignored: {me}"
    );
    let pid_pgid: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(pid_pgid[0], pid_pgid[1], "its own process group: {me}");
    let again = vm.succeed("cat /proc/self/cgroup").await.check();
    assert_ne!(again.trim(), lines[0], "another command, another cgroup");

    // A timeout ends all of a command, also a child in a session of its own that holds the
    // output open, and the reply keeps what came before.
    let out = vm
        .run(
            Cmd::script("echo before; setsid sleep 300 & sleep 30").timeout(Duration::from_secs(1)),
        )
        .await
        .check();
    assert!(out.timed_out && out.signal == Some(9), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
    let left = vm
        .succeed("ps -o args | grep -c '[s]leep 300' || true")
        .await
        .check();
    assert_eq!(left, "0\n", "the session's sleep was killed too");

    let five_mb = 5 * 1024 * 1024;
    let out = vm
        .run(format!("head -c {five_mb} /dev/zero | tr '\\0' x"))
        .await
        .check();
    assert_eq!(out.stdout.len(), five_mb);
    assert!(out.stdout.iter().all(|&b| b == b'x') && !out.truncated);

    let echoed = vm
        .succeed(Cmd::argv(["cat"]).stdin(b"through stdin\n".to_vec()))
        .await
        .check();
    assert_eq!(echoed, "through stdin\n");

    vm.succeed("ip netns add ns1 && ip link add v0 type veth peer name v1 netns ns1")
        .await
        .check();
    let inside = vm
        .succeed(Cmd::script("ip -o link show | cut -d: -f2").netns("ns1"))
        .await
        .check();
    assert!(
        inside.contains("v1") && !inside.contains("eth0"),
        "{inside}"
    );

    vm.write_file("/tmp/note", b"hello file".to_vec(), 0o600)
        .await
        .check();
    assert_eq!(vm.read_file("/tmp/note").await.check(), b"hello file");
    assert_eq!(
        vm.succeed("stat -c %a /tmp/note").await.check().trim(),
        "600"
    );
    assert!(vm.read_file("/no/such/file").await.is_err());
    vm.shutdown().await.check();
}

#[rstest]
#[case::not_json(b"this is not json\n".to_vec())]
#[case::unknown_op(b"{\"id\":99,\"op\":\"format_disk\"}\n".to_vec())]
#[case::wrong_types(b"{\"id\":\"x\",\"op\":17}\n".to_vec())]
#[tokio::test]
async fn malformed_agent_messages_get_an_error_and_the_agent_lives_on(#[case] garbage: Vec<u8>) {
    let vm = boot(config("garbage")).await;
    let reply = vm.send_raw_to_agent(&garbage).await.check();
    assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    assert_eq!(vm.succeed("echo still here").await.check(), "still here\n");
    vm.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn a_guest_whose_kernel_panics_fails_fast_with_the_console_tail() {
    let mut cfg = config("panics");
    // The last rdinit= wins: the kernel finds no init and panics; panic=-1 + -no-reboot end QEMU.
    cfg.boot.extra_cmdline.push("rdinit=/does/not/exist".into());
    cfg.policy.boot_timeout = Duration::from_secs(120);
    let started = Instant::now();
    let err = Vm::boot(cfg)
        .await
        .expect_err("a panicking kernel cannot boot");
    assert_eq!(err.phase(), Some(Phase::Boot), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("Kernel panic"),
        "the console tail shows the panic: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "noticed by QEMU's exit, not by the deadline"
    );
}

/// The bench's limit for a cold boot: the image's `/init` started as `/init bare` powers off at
/// once, and the time to that is the answer; a boot that panics instead (an image with no
/// `/init`) ends QEMU the same way, and is an error with the console's end, not a time.
#[rstest]
#[tokio::test]
async fn a_bare_boot_is_timed_to_its_power_off_and_a_panic_is_no_time() {
    let cfg = config("bare");
    let took = lab_harness::launch::bare_boot(&cfg, &cfg.boot.initrd)
        .await
        .check();
    assert!(took < cfg.policy.boot_timeout, "{took:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.cpio");
    std::fs::write(&empty, b"").expect("write");
    let err = lab_harness::launch::bare_boot(&cfg, &empty)
        .await
        .expect_err("no /init, no power-off");
    let text = err.to_string();
    assert!(
        text.contains("did not power off") && text.contains("Kernel panic"),
        "{text}"
    );
}

#[rstest]
#[tokio::test]
async fn a_guest_that_never_reaches_the_agent_fails_at_its_deadline() {
    let mut cfg = config("hangs");
    // PID 1 is busybox sleep: the kernel boots but nothing ever answers.
    cfg.boot
        .extra_cmdline
        .extend(["rdinit=/bin/sleep".to_string(), "--".into(), "1000".into()]);
    cfg.policy.boot_timeout = Duration::from_secs(8);
    cfg.policy.boot_attempts = 1;
    let started = Instant::now();
    let err = Vm::boot(cfg).await.expect_err("no agent, no boot");
    assert!(
        matches!(
            err,
            Error::Guest {
                phase: Phase::Boot,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not ready within"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(30),
        "took {took:?}"
    );
}

#[rstest]
#[tokio::test]
async fn two_guests_at_once_do_not_collide() {
    let (a, b) = tokio::join!(boot(config("twin-a")), boot(config("twin-b")));
    assert_ne!(a.mac(), b.mac());
    assert_ne!(a.state_dir(), b.state_dir());
    assert_ne!(a.qemu_pid(), b.qemu_pid());
    let (ha, hb) = tokio::join!(a.succeed("hostname"), b.succeed("hostname"));
    assert_eq!((ha.check().trim(), hb.check().trim()), ("twin-a", "twin-b"));
    let (ma, mb) = tokio::join!(
        a.succeed("cat /sys/class/net/eth0/address"),
        b.succeed("cat /sys/class/net/eth0/address")
    );
    assert_eq!(ma.check().trim(), a.mac().to_string());
    assert_eq!(mb.check().trim(), b.mac().to_string());
    let (ra, rb) = tokio::join!(a.shutdown(), b.shutdown());
    ra.check();
    rb.check();
}

#[rstest]
#[case::shutdown(true)]
#[case::dropped(false)]
#[tokio::test]
async fn a_finished_guest_leaves_no_process_and_no_directory(#[case] orderly: bool) {
    let parent = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(if orderly { "tidy" } else { "dropped" });
    cfg.keep.state_parent = Some(parent.path().to_path_buf());
    let vm = boot(cfg).await;
    let pid = vm.qemu_pid();
    assert!(vm.state_dir().starts_with(parent.path()));
    if orderly {
        vm.shutdown().await.check();
    } else {
        drop(vm);
    }
    let gone = lab_harness::wait::until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
    assert!(gone.is_some(), "QEMU {pid} still running");
    let left: Vec<_> = std::fs::read_dir(parent.path()).expect("read").collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

/// Alive and not a zombie waiting to be reaped.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
