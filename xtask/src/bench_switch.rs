//! Throughput of the lab's switch: alone (two sockets standing in for guests, full-size frames as
//! fast as the host can send them) and guest to guest (`ping -f` between two guests). The first
//! must be far above the second, or the switch would be the bottleneck of an experiment.

use std::time::{Duration, Instant};

use lab_harness::lan::{PortPolicy, SwitchHandle};
use lab_harness::{Assets, Lab};
use tokio::net::UnixDatagram;

const FRAME: usize = 1514;

/// Frames per second through the switch alone from one source and from `sources` distinct
/// random ones (a MAC flood), and their ratio: a bounded O(1) address table keeps the two close.
pub async fn alone_and_flooded(frames: usize, sources: usize) -> anyhow::Result<()> {
    let plain = alone(frames, 1).await?;
    let flooded = alone(frames, sources).await?;
    offered_rates(&[50_000, 100_000, 200_000, 400_000]).await?;
    println!(
        "switch alone, {sources} random sources against one: {:.2}x the frames per second ({flooded:.0} against {plain:.0})",
        flooded / plain.max(1e-6)
    );
    let (plain, flooded) = (table(frames, 1), table(frames, sources));
    println!(
        "switch forwarding logic alone (no sockets), {sources} random sources against one: {:.2}x the frames per second ({flooded:.0} against {plain:.0})",
        flooded / plain.max(1e-6)
    );
    Ok(())
}

/// Frames per second of [`lab_harness::lan::Switch::ingress`] alone, from `sources` sources.
fn table(frames: usize, sources: usize) -> f64 {
    let mut switch =
        lab_harness::lan::Switch::new(&[PortPolicy::default(); 2], Duration::from_secs(300));
    let batch: Vec<Vec<u8>> = (0..frames)
        .map(|i| frame([2, 0, 0, 0, 0, 0xb], source(i % sources)))
        .collect();
    let now = Instant::now();
    let started = Instant::now();
    for (i, f) in batch.iter().enumerate() {
        std::hint::black_box(switch.ingress(0, f, now + Duration::from_micros(i as u64)));
    }
    frames as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// Source MAC number `i`: locally administered, unicast, a hash of `i` (random-looking, as
/// pktgen's are), source 0 being the plain run's one.
fn source(i: usize) -> [u8; 6] {
    if i == 0 {
        return [2u8, 0, 0, 0, 0, 0xa];
    }
    let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// A switch of two plain ports alone, its sockets and captures in a directory of its own
/// (held by the caller while the switch runs).
fn two_ports() -> anyhow::Result<(tempfile::TempDir, SwitchHandle)> {
    let dir = lab_harness::rundirs::create("bench", None)?;
    let switch = SwitchHandle::start(
        &[(PortPolicy::default(), lab_harness::Impairment::default()); 2],
        dir.path(),
        &dir.path().join("captures"),
    )?;
    Ok((dir, switch))
}

/// Two guest stand-ins on a switch of two ports: `b` has spoken, so the switch knows where it
/// is and `a`'s frames to it are unicast to one port.
struct Pair {
    // Held: the switch runs, and its sockets' directory stays, while the pair lives.
    _dir: tempfile::TempDir,
    switch: SwitchHandle,
    a: std::os::unix::net::UnixDatagram,
    to_switch: nix::sys::socket::UnixAddr,
    b: UnixDatagram,
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

async fn pair() -> anyhow::Result<Pair> {
    let (dir, switch) = two_ports()?;
    let a = std::os::unix::net::UnixDatagram::bind(&switch.sockets(0).guest)?;
    let b = UnixDatagram::bind(&switch.sockets(1).guest)?;
    b.send_to(&frame(MAC_A, MAC_B), &switch.sockets(1).switch)
        .await?;
    // Learned once the switch has taken that frame in.
    let learned =
        lab_harness::wait::until(Duration::from_secs(5), Duration::from_millis(5), || async {
            (switch.counters(1).rx_frames >= 1).then_some(())
        })
        .await;
    anyhow::ensure!(
        learned.is_some(),
        "the switch did not take in b's first frame within 5 s"
    );
    let to_switch = nix::sys::socket::UnixAddr::new(&switch.sockets(0).switch)?;
    Ok(Pair {
        _dir: dir,
        switch,
        a,
        to_switch,
        b,
    })
}

/// Counts what `b` receives until nothing came for 500 ms after the first frame (10 s before
/// it): a batch per call, on a thread of its own, as a guest's QEMU reads its socket in a
/// process of its own.
fn count_arrivals(b: UnixDatagram) -> tokio::task::JoinHandle<usize> {
    tokio::task::spawn_blocking(move || {
        use nix::poll::{poll, PollFd, PollFlags};
        use std::os::fd::AsFd;
        let b = b.into_std().expect("a std socket");
        let mut inbox = lab_harness::lan::batch::Inbox::new(64, 2048);
        let mut got = 0usize;
        loop {
            match inbox.receive(b.as_fd()) {
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(b.as_fd(), PollFlags::POLLIN)];
                    let idle: u16 = if got == 0 { 10_000 } else { 500 };
                    if !matches!(poll(&mut fds, idle), Ok(1..)) {
                        return got;
                    }
                }
                Err(_) => return got,
            }
        }
    })
}

/// Frames per second through the switch alone, `frames` frames from `sources` sources, sent
/// as fast as the switch takes them (a batch per call, waiting while its socket is full).
async fn alone(frames: usize, sources: usize) -> anyhow::Result<f64> {
    // Its other fields (the switch, its directory) live until the end.
    let pair = pair().await?;
    let batch: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            frame(
                MAC_B,
                if sources == 1 {
                    MAC_A
                } else {
                    source(i % sources)
                },
            )
        })
        .collect();
    let receiver = count_arrivals(pair.b);
    let cpu = ProcessCpu::start();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsFd;
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        lab_harness::lan::batch::send_waiting(pair.a.as_fd(), Some(&pair.to_switch), &refs, 32)
    })
    .await??;
    let got = receiver.await?;
    let secs = (started.elapsed().saturating_sub(Duration::from_millis(500)))
        .as_secs_f64()
        .max(1e-6);
    println!(
        "switch alone, {sources} source(s): {got} of {frames} frames of {FRAME} B delivered, {:.0} frames/s, {:.0} Mbit/s (captures on); {}",
        got as f64 / secs,
        got as f64 * FRAME as f64 * 8.0 / secs / 1e6,
        cpu.per_frame(got)
    );
    Ok(got as f64 / secs)
}

/// Frames offered at each of `rates` frames per second for a second, paced a millisecond at a
/// time: how many arrived. Below the switch's limit every frame should.
pub async fn offered_rates(rates: &[u64]) -> anyhow::Result<()> {
    for &rate in rates {
        let pair = pair().await?;
        let receiver = count_arrivals(pair.b);
        let cpu = ProcessCpu::start();
        let one = frame(MAC_B, MAC_A);
        let (sent, took) = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;
            let per_ms = usize::try_from(rate / 1000).unwrap_or(usize::MAX).max(1);
            let refs: Vec<&[u8]> = vec![one.as_slice(); per_ms];
            let started = Instant::now();
            let mut sent = 0;
            for ms in 0..1000u32 {
                let due = started + Duration::from_millis(u64::from(ms));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                sent += lab_harness::lan::batch::send_waiting(
                    pair.a.as_fd(),
                    Some(&pair.to_switch),
                    &refs,
                    32,
                )?;
            }
            Ok::<_, std::io::Error>((sent, started.elapsed()))
        })
        .await??;
        let got = receiver.await?;
        let full = pair.switch.counters(1).drop_tx_error;
        println!(
            "switch alone, offered {rate} frames/s of {FRAME} B: sent {:.0}/s, {got} of {sent} delivered ({:.1}%; {full} lost to the receiver's full queue); {}",
            sent as f64 / took.as_secs_f64(),
            got as f64 * 100.0 / sent.max(1) as f64,
            cpu.per_frame(got)
        );
    }
    Ok(())
}

pub async fn guest_to_guest(assets: &Assets, count: usize) -> anyhow::Result<()> {
    let lab = Lab::builder(assets, "bench-switch")
        .host("host1")
        .host("host2")
        .boot()
        .await?;
    lab.number_hosts().await?;
    let started = Instant::now();
    lab.vm("host1")
        .succeed(format!("ping -f -q -c {count} -s 1472 192.168.88.2"))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let frames = lab.counters("host2").tx_frames + lab.counters("host1").tx_frames;
    println!(
        "guest to guest (ping -f, 1514 B frames): {:.0} frames/s, {:.1} Mbit/s through the switch",
        frames as f64 / secs,
        frames as f64 * FRAME as f64 * 8.0 / secs / 1e6
    );
    lab.shutdown().await?;
    Ok(())
}

/// This process's CPU time from a start: the sender, the switch and the receiver all run in it,
/// so its CPU per delivered frame is what the socket path costs, a figure that a busy host's
/// share of cores moves far less than frames per second.
struct ProcessCpu(f64);

impl ProcessCpu {
    fn start() -> Self {
        Self(Self::now())
    }

    fn now() -> f64 {
        lab_harness::host::cpu_seconds(std::process::id()).unwrap_or_default()
    }

    /// "N µs of CPU a frame delivered" since the start.
    fn per_frame(&self, delivered: usize) -> String {
        let used = Self::now() - self.0;
        format!(
            "{:.1} µs of CPU a frame delivered (sender, switch and receiver)",
            used * 1e6 / delivered.max(1) as f64
        )
    }
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; FRAME];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// A flood over a cable that delays every frame ten minutes: `frames` small broadcast frames
/// through port 1's delayed cable. The cable holds at most its bound
/// ([`lab_harness::lan::MAX_DELAYED_BYTES`], bookkeeping included) and counts the rest as
/// dropped; this process's private memory grows by about that bound, not with the flood.
pub async fn delayed_flood(frames: u64) -> anyhow::Result<()> {
    let (_dir, switch) = two_ports()?;
    switch.set_impairment(
        1,
        lab_harness::lan::impair::Impairment {
            delay: Duration::from_secs(600),
            ..Default::default()
        },
    );
    let a = UnixDatagram::bind(&switch.sockets(0).guest)?;
    let mut small = frame([0xff; 6], [2, 0, 0, 0, 0, 0xa]);
    small.truncate(60);
    let own = || lab_harness::host::memory_kib(std::process::id(), "status", "RssAnon:");
    let before = own();
    let started = Instant::now();
    for _ in 0..frames {
        a.send_to(&small, &switch.sockets(0).switch).await?;
    }
    let took_all =
        lab_harness::wait::until(Duration::from_secs(120), Duration::from_millis(20), || {
            let rx = switch.counters(0).rx_frames;
            async move { (rx >= frames).then_some(()) }
        })
        .await;
    anyhow::ensure!(
        took_all.is_some(),
        "the switch did not take the flood in within 120 s"
    );
    let grown = own().saturating_sub(before);
    let held = switch.delayed_bytes(1);
    let dropped = switch.counters(1).impaired_overflow;
    println!(
        "a flood of {frames} 60-byte frames over a 600 s delay (in {:.1?}): the cable holds {:.1} MiB \
         ({} frames; bound {} MiB), {dropped} dropped and counted; this process grew by {:.1} MiB",
        started.elapsed(),
        held as f64 / 1048576.0,
        frames - dropped,
        lab_harness::lan::MAX_DELAYED_BYTES >> 20,
        grown as f64 / 1024.0
    );
    Ok(())
}

/// A LAN of `hosts` guests: how long until it is ready (every guest booted or restored,
/// [`lab_harness::lab::starts_at_once`] at a time, then numbered, host1 reaching every
/// other) and what it costs the host (this process's private memory, each QEMU's PSS).
pub async fn big_lan(assets: &Assets, hosts: usize) -> anyhow::Result<()> {
    let names: Vec<String> = (1..=hosts).map(|i| format!("host{i}")).collect();
    let started = Instant::now();
    let lab = names
        .iter()
        .fold(Lab::builder(assets, "bench-lan"), |b, name| b.host(name))
        .boot()
        .await?;
    let booted = started.elapsed();
    lab.number_hosts().await?;
    let ready = started.elapsed();
    let own = lab_harness::host::memory_kib(std::process::id(), "status", "RssAnon:");
    let qemus: u64 = names
        .iter()
        .map(|n| lab_harness::host::memory_kib(lab.vm(n).qemu_pid(), "smaps_rollup", "Pss:"))
        .sum();
    println!(
        "a LAN of {hosts} hosts: ready in {ready:.1?} ({booted:.1?} booted, {} at a time, then \
         numbered); host memory: this process {:.0} MiB private, the QEMUs {:.0} MiB PSS ({:.0} \
         MiB a guest)",
        lab_harness::lab::starts_at_once(),
        own as f64 / 1024.0,
        qemus as f64 / 1024.0,
        qemus as f64 / 1024.0 / hosts as f64
    );
    lab.shutdown().await?;
    Ok(())
}
