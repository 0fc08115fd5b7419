//! README section (5), `--skip-net`: guest<->host throughput in the lab, TCP over virtio-net
//! (a tap in a network namespace) and vsock, each way, measured in the guest with qvm-vsock's
//! checked transfers; qvm-vmm beside QEMU microvm (`-netdev tap` userspace virtio-net,
//! `vhost-vsock-device`), runs interleaved.

use std::time::Duration;

use qvm_tests::fixtures::{self, guest_kernel, vm_toml, vmm_binary};
use qvm_tests::lab;

use crate::common::{initramfs_with_script, median};

/// Guest<->host throughput over virtio-net (TCP through a tap in a network namespace) and
/// vsock, measured in the guest with qvm-vsock's checked transfers, qvm-vmm beside QEMU microvm.
pub fn bench(runs: usize) -> Result<(), String> {
    const BYTES: u64 = 32 << 20;
    let script = format!(
        "ip link set lo up; ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up\n\
         for i in $(seq 50); do ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1 && break; done\n\
         echo \"BENCH net-g2h $(qvm-vsock client tcp:10.77.0.1:7000 send {BYTES} 1)\"\n\
         echo \"BENCH net-h2g $(qvm-vsock client tcp:10.77.0.1:7000 recv {BYTES} 2)\"\n\
         echo \"BENCH vsock-g2h $(qvm-vsock client vsock:2:6000 send {BYTES} 3)\"\n\
         echo \"BENCH vsock-h2g $(qvm-vsock client vsock:2:6000 recv {BYTES} 4)\"\n\
         exit 0\n"
    );
    let initrd = initramfs_with_script("net-bench.sh", &script)?;
    let kernel = &guest_kernel().vmlinux;
    let tool = fixtures::qvm_vsock_binary();
    let share = lab::lab_share_dir();
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run qvm.script=/net-bench.sh";
    let cfg = share.join("net-bench.toml");
    let mut text = vm_toml(kernel, Some(&initrd), 1, 256, cmdline);
    text.push_str(
        "\n[[net]]\ntap = \"qvmtap0\"\nmac = \"52:54:00:aa:bb:02\"\n\n[vsock]\nguest_cid = 3\nsocket = \"/tmp/qvm-net-bench/v.sock\"\n",
    );
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    let qvm = format!(
        "{tool} serve unix:/tmp/qvm-net-bench/v.sock_6000 >/dev/null 2>&1 & vs=$!; {} --config {} </dev/null 2>&1; kill $vs",
        vmm_binary().display(),
        cfg.display(),
        tool = tool.display(),
    );
    let qemu = format!(
        "{tool} serve vsock:6000 >/dev/null 2>&1 & vs=$!; {} -netdev tap,id=n0,ifname=qvmtap0,script=no,downscript=no \
         -device virtio-net-device,netdev=n0,mac=52:54:00:aa:bb:02 -device vhost-vsock-device,guest-cid=3 2>&1; kill $vs",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, cmdline),
        tool = tool.display(),
    );
    let wrap = |cmd: &str| {
        format!(
            "modprobe vhost_vsock 2>/dev/null; rm -rf /tmp/qvm-net-bench; mkdir -p /tmp/qvm-net-bench\n\
             ns=qvmb$$; ip netns add $ns; trap 'ip netns del $ns' EXIT\n\
             ip netns exec $ns sh -c {}\n",
            lab::shell_quote(&format!(
                "ip link set lo up; ip tuntap add qvmtap0 mode tap; ip addr add 10.77.0.1/24 dev qvmtap0; \
                 ip link set qvmtap0 up; {tool} serve tcp:7000 >/dev/null 2>&1 & ts=$!; timeout 600 sh -c {}; kill $ts",
                lab::shell_quote(cmd),
                tool = tool.display()
            ))
        )
    };
    let jobs = ["net-g2h", "net-h2g", "vsock-g2h", "vsock-h2g"];
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); jobs.len()]; 2];
    eprintln!(
        "net/vsock bench: {runs} runs per VMM, {} MiB per transfer",
        BYTES >> 20
    );
    for run in 0..runs {
        for (v, cmd) in [&qvm, &qemu].iter().enumerate() {
            let out = lab::run(&wrap(cmd), Duration::from_secs(700)).map_err(|e| e.to_string())?;
            for (j, job) in jobs.iter().enumerate() {
                let line = out
                    .output
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("BENCH {job} ")));
                match line.map(|l| l.split_whitespace().collect::<Vec<_>>()) {
                    Some(f) if f.get(1) == Some(&"ok") => {
                        if let Some(r) = f.last().and_then(|r| r.parse::<f64>().ok()) {
                            results[v][j].push(r);
                        }
                    }
                    _ => {
                        return Err(format!(
                            "run {}: {} gave no good {job} line:\n{}",
                            run + 1,
                            ["qvm-vmm", "qemu"][v],
                            out.output
                        ))
                    }
                }
            }
            eprintln!("  run {}: {} done", run + 1, ["qvm-vmm", "qemu microvm"][v]);
        }
    }
    println!("\nGuest<->host throughput, {} MiB checked transfers (qvm-vsock), MB/s, median of {runs} runs", BYTES >> 20);
    println!("| transfer | qvm-vmm | QEMU microvm |");
    println!("|---|---|---|");
    let names = [
        "TCP guest->host (virtio-net, tap)",
        "TCP host->guest (virtio-net, tap)",
        "vsock guest->host",
        "vsock host->guest",
    ];
    for (j, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.1} |",
            median(&mut results[0][j]),
            median(&mut results[1][j])
        );
    }
    Ok(())
}
