//! README section (5), `--skip-net`: guest<->host throughput in the lab, TCP over virtio-net
//! (a tap in a network namespace) and vsock, each way, measured in the guest with qvm-vsock's
//! checked transfers; qvm-vmm beside QEMU microvm (`-netdev tap` userspace virtio-net,
//! `vhost-vsock-device`), runs interleaved.

use qvm_tests::fixtures::{self, guest_kernel};
use qvm_tests::lab;

use crate::common::{
    bench_line, initramfs_with_script, interleaved, lab_config, script_cmdline, table, vmm_cmd,
    vmm_rows, VMMS,
};

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
    let cmdline = script_cmdline("net-bench.sh");
    let cfg = lab_config(
        "net-bench.toml",
        kernel,
        &initrd,
        256,
        &cmdline,
        "\n[[net]]\ntap = \"qvmtap0\"\nmac = \"52:54:00:aa:bb:02\"\n\n[vsock]\nguest_cid = 3\nsocket = \"/tmp/qvm-net-bench/v.sock\"\n",
    )?;
    let qvm = format!(
        "{tool} serve unix:/tmp/qvm-net-bench/v.sock_6000 >/dev/null 2>&1 & vs=$!; {} </dev/null 2>&1; kill $vs",
        vmm_cmd(&cfg),
        tool = tool.display(),
    );
    let qemu = format!(
        "{tool} serve vsock:6000 >/dev/null 2>&1 & vs=$!; {} -netdev tap,id=n0,ifname=qvmtap0,script=no,downscript=no \
         -device virtio-net-device,netdev=n0,mac=52:54:00:aa:bb:02 -device vhost-vsock-device,guest-cid=3 2>&1; kill $vs",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, &cmdline),
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
    interleaved(runs, [wrap(&qvm), wrap(&qemu)], |_, v, out| {
        for (j, job) in jobs.iter().enumerate() {
            match bench_line(out, job).map(|l| l.split_whitespace().collect::<Vec<_>>()) {
                Some(f) if f.get(1) == Some(&"ok") => {
                    if let Some(r) = f.last().and_then(|r| r.parse::<f64>().ok()) {
                        results[v][j].push(r);
                    }
                }
                _ => {
                    let vmm = ["qvm-vmm", "qemu"][v];
                    return Err(format!("{vmm} gave no good {job} line:\n{out}"));
                }
            }
        }
        Ok(format!("{} done", VMMS[v]))
    })?;
    table(
        &format!("Guest<->host throughput, {} MiB checked transfers (qvm-vsock), MB/s, median of {runs} runs", BYTES >> 20),
        "| transfer | qvm-vmm | QEMU microvm |",
    );
    let names = [
        "TCP guest->host (virtio-net, tap)",
        "TCP host->guest (virtio-net, tap)",
        "vsock guest->host",
        "vsock host->guest",
    ];
    vmm_rows(&names, &mut results, |_| 1);
    Ok(())
}
