//! `cargo xtask bench` cannot rot: its quick mode (every part once, small counts) runs here, so
//! a part that breaks (a memory rule changed, a flag renamed, output that no longer arrives
//! whole) fails the tests instead of waiting for the next person to measure.

mod support;
use support::xtask;

#[test]
fn the_quick_bench_runs_every_part_to_its_end() {
    let out = xtask()
        .args(["-q", "bench", "--quick"])
        .output()
        .expect("xtask runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for part in [
        "cold boot:",
        "cold boot against a bare boot of the same kernel",
        "restore:",
        "nest guest",
        "inner VM",
        "lab run of `uname -r`, end to end",
        "switch alone",
        "µs of CPU a frame delivered",
        "guest to guest",
        "over a 600 s delay",
        "byte-exact yes read at once and yes through a reader that stalls",
        "a LAN of 3 hosts: ready in",
        "boot to agent ready with those extras",
    ] {
        assert!(stdout.contains(part), "no {part:?} in:\n{stdout}\n{stderr}");
    }
}
