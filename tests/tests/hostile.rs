//! Hostile input: whatever a command does in a guest, and whatever bytes reach the agent or a
//! switch port, the agent, the guest and the switch stay up, and the result says what happened.

use std::time::Duration;

use lab_harness::{Cmd, Reply, Vm};
use lab_tests::{boot, config, Check};

/// The agent still answers, promptly.
async fn still_serves(vm: &Vm) {
    let out = vm
        .succeed(Cmd::script("echo alive").timeout(Duration::from_secs(60)))
        .await
        .check();
    assert_eq!(out, "alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_a_memory_hog_and_a_closed_stdout_each_end_clearly() {
    let vm = boot(config("hostile")).await;

    // Forks without end: it meets the commands' process cap, not an agent without pids, and is
    // killed, all of it, at its timeout.
    let bomb = vm
        .run(Cmd::script("b() { b | b & }; b; sleep 600").timeout(Duration::from_secs(8)))
        .await
        .check();
    assert!(bomb.timed_out, "the bomb ends at its timeout: {bomb:?}");
    still_serves(&vm).await;
    let pids = vm
        .wait_until_succeeds(
            Cmd::script("test $(cat /sys/fs/cgroup/commands/pids.current) -le 3 && echo gone"),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(pids.check(), "gone\n", "no process of the bomb is left");

    // Eats memory (tail keeps all of a file without newlines): the OOM killer ends it, inside
    // the commands' cgroup, and the result says so.
    let hog = vm
        .run(Cmd::script("tail /dev/zero").timeout(Duration::from_secs(60)))
        .await
        .check();
    assert!(
        hog.oom_killed && !hog.timed_out,
        "the hog is OOM-killed: {hog:?}"
    );
    let err = vm
        .succeed(Cmd::script("tail /dev/zero").timeout(Duration::from_secs(60)))
        .await
        .expect_err("a hog fails");
    assert!(
        err.to_string().contains("OOM killer"),
        "the error says why: {err}"
    );
    still_serves(&vm).await;

    // Closes its own stdout: what it writes there is lost, and the rest of its result stands.
    let closed = vm
        .run(Cmd::script("exec >&-; echo lost; echo said >&2; exit 3"))
        .await
        .check();
    assert_eq!(
        (closed.code, closed.stdout.as_slice()),
        (Some(3), &b""[..]),
        "{closed:?}"
    );
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains("said"),
        "{closed:?}"
    );
    still_serves(&vm).await;

    let log = vm.console_log();
    assert!(!log.contains("Kernel panic"), "the guest lives: {log}");
    vm.shutdown().await.check();
}

#[tokio::test(flavor = "multi_thread")]
async fn random_and_oversized_lines_each_get_an_error_reply() {
    let vm = boot(config("noise")).await;
    let seed = lab_tests::seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..200 {
        let len = rng.usize(0..4096);
        // Any bytes but a newline, which would cut the line in two.
        let mut line: Vec<u8> = (0..len)
            .map(|_| rng.u8(..))
            .map(|b| if b == b'\n' { b' ' } else { b })
            .collect();
        if line.iter().all(u8::is_ascii_whitespace) {
            line.push(b'x'); // a blank line is skipped, not answered
        }
        line.push(b'\n');
        let reply = vm.send_raw_to_agent(&line).await.check();
        assert!(
            matches!(reply, Reply::Error { .. }),
            "line {i} (seed {seed}) got {reply:?}"
        );
    }
    // Longer than a request may be (32 MiB): refused without being kept.
    let mut huge = vec![b'x'; lab_proto::MAX_REQUEST_BYTES + 1024];
    huge.push(b'\n');
    let reply = vm.send_raw_to_agent(&huge).await.check();
    assert!(
        matches!(&reply, Reply::Error { message } if message.contains("exceeds the limit")),
        "{reply:?}"
    );
    still_serves(&vm).await;
    vm.shutdown().await.check();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_ends_when_it_does_and_a_terminal_nobody_reads_holds_up_nothing() {
    let vm = boot(config("detach")).await;

    // A child in a session of its own holds the command's stdout for 100 s: the reply does not
    // wait for it (the child lives on, detached).
    let started = std::time::Instant::now();
    let out = vm
        .run(Cmd::script("setsid sleep 100 & echo started").timeout(Duration::from_secs(60)))
        .await
        .check();
    assert!(
        out.success() && !out.timed_out && out.stdout == b"started\n",
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the reply waited {:?} for a detached child",
        started.elapsed()
    );

    // A program that never reads its terminal, typed at (1 MiB): input is flow-controlled, so
    // the typing waits once the window is sent (the agent holds no more), and the agent
    // serves on meanwhile.
    let size = lab_harness::TtySize { rows: 24, cols: 80 };
    let session = vm.interactive("sleep 600", size).await.check();
    let mib = vec![b'x'; 1 << 20];
    let typing = session.input(&mib);
    let waited = tokio::time::timeout(Duration::from_secs(3), typing).await;
    assert!(waited.is_err(), "1 MiB went into a terminal nobody reads");
    still_serves(&vm).await;

    // The terminal's ends are close-on-exec: a command started beside the session does not
    // hold them.
    let fds = vm.succeed("ls -l /proc/self/fd/").await.check();
    assert!(
        !fds.contains("ptmx") && !fds.contains("/dev/pts"),
        "a command inherited the session's terminal:\n{fds}"
    );
    drop(session);

    // A program that reads its terminal, typed at faster than it reads: every byte arrives,
    // in order (before, input past 256 queued pieces was dropped).
    let reader = "stty raw -echo && head -c 1048576 | sha256sum";
    let mut session = vm.interactive(reader, size).await.check();
    let typed: Vec<u8> = (0..1u32 << 20)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz"[(i % 26) as usize])
        .collect();
    // After the prompt-less `stty`: typed sooner, the terminal's line discipline would still
    // be cooked and take some bytes as editing keys.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let input = session.input_sender().expect("running");
    let typing = tokio::spawn(async move { input.send(&typed).await });
    let mut shown = Vec::new();
    while let Some(piece) = session.output().await {
        shown.extend_from_slice(&piece);
    }
    typing.await.expect("joins").check();
    let want = {
        use sha2::Digest;
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz"[(i % 26) as usize])
            .collect();
        format!("{:x}", sha2::Sha256::digest(&data))
    };
    let shown = String::from_utf8_lossy(&shown);
    assert!(shown.contains(&want), "{shown}");
    session.finish().await.check();
    vm.shutdown().await.check();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_flood_is_cut_to_the_logs_limit_and_says_so() {
    let vm = boot(config("flood")).await;
    let limit = lab_harness::console::MAX_BYTES;
    // A little more than the limit: at ~0.6 MB/s through the emulated UART, seconds of it.
    let flood = format!(
        "head -c {} /dev/zero | tr '\\0' x > /dev/ttyS0; echo; echo flood over > /dev/ttyS0",
        limit + (1 << 20)
    );
    vm.succeed(Cmd::script(flood).timeout(Duration::from_secs(300)))
        .await
        .check();
    let log = lab_harness::wait::until(Duration::from_secs(30), Duration::from_millis(100), || {
        let log = vm.console_log();
        async move { log.contains("flood over").then_some(log) }
    })
    .await
    .expect("the console's last line reaches its log");
    assert!(
        log.len() as u64 <= limit,
        "the log holds {} bytes, over its limit of {limit}",
        log.len()
    );
    assert!(
        log.contains("bytes cut here"),
        "the log says where it was cut"
    );
    assert!(vm.console_cut() > 0, "the guest says how much was cut");
    vm.shutdown().await.check();
}
