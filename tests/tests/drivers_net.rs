//! A driver developer's bench: the selftests' `drivers/net` in HW mode across two guests, the
//! remote end reached over ssh (`REMOTE_TYPE=ssh`) as on the netdev CI's hardware, the
//! selftests unmodified.

use std::time::Duration;

use lab_harness::ktap::Outcome;
use lab_harness::lan::capture::read_frames;
use lab_harness::{Extras, Job, Lab, Stream};
use lab_tests::{assets_of, Check};
use rstest::rstest;

/// An IPv4 ICMP echo request from `src` to `dst` (last octets of 192.168.88.N).
fn is_echo_request(frame: &[u8], src: u8, dst: u8) -> bool {
    let Some(ip) = frame.get(14..) else {
        return false;
    };
    let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    frame.get(12..14) == Some(&[0x08, 0x00][..])
        && ip.get(9) == Some(&1)
        && ip.get(12..16) == Some(&[192, 168, 88, src][..])
        && ip.get(16..20) == Some(&[192, 168, 88, dst][..])
        && ip.get(ihl) == Some(&8)
}

/// `ping.py` passes whole on each Debian kernel: its remote half runs on host2 over ssh (host2's
/// sshd accepted host1's key; the capture holds host2's own echo requests to host1), and every
/// host reaches every other by name, both ways, with scp.
#[rstest]
#[case::debian_6_1("debian-6.1")]
#[case::debian_6_12("debian-6.12")]
#[tokio::test]
async fn upstream_drivers_net_ping_passes_across_two_hosts_over_ssh(#[case] kernel: &str) {
    let assets = assets_of(kernel);
    let lab = Lab::builder(&assets, &format!("drivers-net-{kernel}"))
        .host("host1")
        .extras(Extras {
            // Installed-style: the YNL library where drivers/net's Python tests load it.
            dir: Some(lab_tests::selftests(&[
                "drivers/net/ping.py",
                "kselftest-list.txt",
                "net/lib/ynl/lib/ynl.py",
            ])),
            ..Extras::default()
        })
        .host("host2")
        .numbered()
        .remote("host2")
        .boot()
        .await
        .check();
    let (host1, host2) = (lab.vm("host1"), lab.vm("host2"));

    // Root over ssh by name, both ways, and scp.
    let there = host1
        .succeed("ssh host2 ip -br addr show eth0")
        .await
        .check();
    assert!(there.contains("192.168.88.2/24"), "{there}");
    let back = host2.succeed("ssh host1 hostname").await.check();
    assert_eq!(back.trim(), "host1");
    host1
        .succeed("echo copied > /tmp/f && scp -q /tmp/f host2:/tmp/g")
        .await
        .check();
    assert_eq!(host2.succeed("cat /tmp/g").await.check(), "copied\n");
    let config = host1
        .succeed("cat /lab/drivers/net/net.config")
        .await
        .check();
    assert!(
        config.contains("REMOTE_TYPE=ssh\n") && config.contains("REMOTE_ARGS=host2\n"),
        "{config}"
    );

    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let out = Job::Program(vec!["drivers/net/ping.py".into()])
        .run_on(
            host1,
            true,
            &lab.spec().job_env(),
            Duration::from_secs(300),
            |stream, bytes| match stream {
                Stream::Stdout => stdout.extend_from_slice(bytes),
                Stream::Stderr => stderr.extend_from_slice(bytes),
            },
        )
        .await
        .check();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    let subtests = lab_harness::ktap::parse(&stdout).expect("ping.py prints KTAP");
    let results: Vec<(&str, Outcome)> = subtests
        .iter()
        .map(|s| (s.name.as_str(), s.outcome))
        .collect();
    assert!(
        out.success()
            && results
                == [
                    ("ping.test_v4", Outcome::Pass),
                    ("ping.test_v6", Outcome::Pass),
                    ("ping.test_tcp", Outcome::Pass)
                ],
        "exit {:?}: {results:?}\n{stdout}\n{stderr}",
        out.code
    );

    let log = host2.succeed("cat /run/sshd.log").await.check();
    assert!(
        log.contains("Accepted publickey for root from 192.168.88.1"),
        "host2's sshd let host1 in: {log}"
    );
    let frames = read_frames(&lab.port_capture("host2")).check();
    assert!(
        frames.iter().any(|f| is_echo_request(f, 2, 1)),
        "host2 itself pinged host1 (ping.py's remote half): {} frames captured",
        frames.len()
    );
    lab.shutdown().await.check();
}
