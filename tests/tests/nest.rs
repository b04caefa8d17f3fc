//! VMs inside lab guests (the seed's virt-install part): an inner VM boots our kernel on a
//! macvtap, is driven like any guest, fails loudly, and leaves nothing behind when stopped.

use std::time::{Duration, Instant};

use lab_harness::nest::{domiflist, guest_tsc_khz, InnerSpec, InnerVm, COUNT_QEMU};
use lab_harness::{Accel, Error, Guest, Phase};
use lab_tests::{assets, boot, Check};
use rstest::rstest;

#[rstest]
#[tokio::test]
async fn an_inner_vm_runs_our_kernel_on_a_macvtap_and_its_console_is_captured() {
    let assets = assets();
    let host = boot(assets.nest_vm("nesthost", 1).check()).await;
    // KVM is in the nest image; one of its vendor modules loads whenever the CPU can nest.
    let modules = &host.ready_info().modules;
    assert!(modules.iter().any(|m| m == "kvm"), "{modules:?}");
    // What an inner TCG guest is told its TSC runs at when the harness did not measure it.
    let found = guest_tsc_khz(&host)
        .await
        .expect("the guest kernel logs its TSC rate");
    if let Some(measured) = host.config().tsc_khz {
        assert!(
            found.abs_diff(measured) < measured / 100,
            "guest found {found} kHz, host measured {measured} kHz"
        );
    }

    let spec = InnerSpec::new("vm1", "macvtap0");
    let mac = spec.mac;
    let vm = InnerVm::start(&host, spec).await.check();
    assert_eq!(
        vm.succeed("uname -r").await.check().trim(),
        assets.kernel.release
    );
    assert_eq!(vm.succeed("hostname").await.check().trim(), "vm1");
    assert_eq!(
        vm.succeed("cat /sys/class/net/eth0/address")
            .await
            .check()
            .trim(),
        mac.to_string()
    );
    assert_eq!(
        vm.run("echo out; echo err >&2; exit 7").await.check().code,
        Some(7)
    );

    vm.succeed("echo written-to-the-inner-console > /dev/console")
        .await
        .check();
    assert!(vm
        .console_log()
        .await
        .contains("written-to-the-inner-console"));

    let rows = domiflist(&[&vm]).await.check();
    assert_eq!(
        (
            rows[0].interface.as_str(),
            rows[0].kind.as_str(),
            rows[0].source.as_str()
        ),
        ("macvtap0", "direct", "eth0")
    );
    assert_eq!(rows[0].mac, mac.to_string());

    assert_eq!(
        host.succeed(COUNT_QEMU).await.check().trim(),
        "1",
        "the inner QEMU runs, and the probe sees it"
    );
    vm.stop().await.check();
    assert_eq!(
        host.succeed(COUNT_QEMU).await.check().trim(),
        "0",
        "no inner QEMU left"
    );
    assert_eq!(
        host.succeed("ip -br link show type macvtap")
            .await
            .check()
            .trim(),
        "",
        "no macvtap left"
    );
    host.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn an_inner_vm_whose_kernel_dies_fails_at_once_with_its_console() {
    let host = boot(assets().nest_vm("nesthost-panic", 1).check()).await;
    let mut spec = InnerSpec::new("doomed", "macvtap0");
    // No init in the initramfs by that name: the kernel panics, and -no-reboot ends QEMU.
    spec.extra_cmdline.push("rdinit=/no/such/init".into());
    let started = Instant::now();
    let err = InnerVm::start(&host, spec)
        .await
        .expect_err("the boot must fail");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "failed at once, not at the deadline: {:?}",
        started.elapsed()
    );
    match &err {
        Error::Guest {
            phase: Phase::Boot,
            message,
            console_tail: Some(console),
            ..
        } => {
            assert!(message.contains("exited"), "{message}");
            assert!(
                console.contains("Kernel panic"),
                "the console tail shows why: {console}"
            );
        }
        other => panic!("expected a boot failure with the console, got {other}"),
    }
    // A failed start cleans up after itself, as a failed `virsh start` does.
    assert_eq!(
        host.succeed(format!("ip -br link show type macvtap; {COUNT_QEMU}"))
            .await
            .check()
            .trim(),
        "0"
    );
    host.shutdown().await.check();
}

#[rstest]
#[tokio::test]
async fn an_inner_vm_falls_back_to_tcg_when_kvm_does_not_boot_it_in_time() {
    let host = boot(assets().nest_vm("nesthost-tcg", 1).check()).await;
    let has_kvm = host.run("test -w /dev/kvm").await.check().success();
    let mut spec = InnerSpec::new("slow", "macvtap0");
    // No KVM boot is that fast, so `Auto` gives up on it at once, as it would on a nested KVM
    // that hangs guests. TCG inside TCG is slow (~80 s to boot here).
    spec.kvm_boot_limit = Duration::from_secs(1);
    spec.boot_timeout = Duration::from_secs(400);
    let vm = InnerVm::start(&host, spec).await.check();
    assert_eq!(vm.accel(), Accel::Tcg);
    assert_eq!(vm.fallback().is_some(), has_kvm, "{:?}", vm.fallback());
    assert_eq!(vm.succeed("hostname").await.check().trim(), "slow");
    vm.stop().await.check();
    host.shutdown().await.check();
}
