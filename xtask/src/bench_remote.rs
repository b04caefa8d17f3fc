//! The drivers/net bench's costs: a remote command over ssh's persistent connection against one
//! that opens its own, and `ping.py` across two hosts against a one-host `lab run` of `true`,
//! end to end, paired.

use std::time::Duration;

use lab_harness::{Assets, Lab};

/// `ssh host2 true` from host1, `n` times over the lab's persistent connection and a tenth as
/// often (at least 3) with a connection of its own; medians and the 95th percentile.
pub async fn remote_commands(assets: &Assets, n: usize) -> anyhow::Result<()> {
    let lab = Lab::builder(assets, "bench-ssh")
        .host("host1")
        .host("host2")
        .numbered()
        .ssh()
        .boot()
        .await?;
    let times = |count: usize, options: &str| {
        // bash's EPOCHREALTIME: microseconds, in the guest, around each command alone.
        format!(
            "for i in $(seq {count}); do s=$EPOCHREALTIME; ssh {options} host2 true || exit 1; \
             e=$EPOCHREALTIME; echo $(( ${{e/./}} - ${{s/./}} )); done"
        )
    };
    let host1 = lab.vm("host1");
    let parse = |out: String| -> anyhow::Result<Vec<Duration>> {
        let mut v = out
            .lines()
            .map(|l| l.trim().parse::<u64>().map(Duration::from_micros))
            .collect::<Result<Vec<_>, _>>()?;
        v.sort();
        Ok(v)
    };
    let kept = parse(
        host1
            .succeed(lab_harness::Cmd::argv(["bash", "-c", &times(n, "")]))
            .await?,
    )?;
    let fresh_n = (n / 10).max(3);
    let fresh = parse(
        host1
            .succeed(lab_harness::Cmd::argv([
                "bash",
                "-c",
                &times(fresh_n, "-o ControlMaster=no -o ControlPath=none"),
            ]))
            .await?,
    )?;
    lab.shutdown().await?;
    let (k, f) = (crate::bench::pct(&kept, 50), crate::bench::pct(&fresh, 50));
    println!(
        "ssh host2 true from host1: median {k:.2?} (p95 {:.2?}) over the persistent connection ({n} commands), {f:.2?} with a connection of its own ({fresh_n}): {:.0}x",
        crate::bench::pct(&kept, 95),
        f.as_secs_f64() / k.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// `lab run --hosts 2 --remote host2 ... drivers/net/ping.py` against `lab run -- true`, end
/// to end, `pairs` pairs interleaved after one warm-up each (both restore their guests).
pub fn ping_py(assets_path: &std::path::Path, pairs: usize) -> anyhow::Result<()> {
    let selftests = crate::selftests::provide()?;
    let time = |args: &[&str]| crate::bench::timed_lab_run(assets_path, args, &[]);
    let dir = selftests.to_string_lossy().into_owned();
    let remote = [
        "--hosts",
        "2",
        "--remote",
        "host2",
        "--dir",
        dir.as_str(),
        "--",
        "drivers/net/ping.py",
    ];
    let alone = ["--", "true"];
    time(&remote)?;
    time(&alone)?;
    let (mut r, mut a) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        r.push(time(&remote)?);
        a.push(time(&alone)?);
    }
    r.sort();
    a.sort();
    let (rm, am) = (crate::bench::pct(&r, 50), crate::bench::pct(&a, 50));
    println!(
        "drivers/net/ping.py across two hosts over ssh, end to end: median {rm:.2?} against {am:.2?} for a one-host `lab run -- true` ({:.1}x), {pairs} pairs",
        rm.as_secs_f64() / am.as_secs_f64().max(1e-9)
    );
    Ok(())
}
