//! README section (3), `--skip-blk`: in-guest virtio-blk throughput and IOPS in the lab
//! (`qvm-guest-io` from `src/bin`, built static: O_DIRECT, queue depth 1, sequential 1 MiB and
//! random 4 KiB reads and writes), qvm-vmm beside QEMU microvm's `virtio-blk-device` on the
//! same fully allocated raw image, runs interleaved.

use std::path::PathBuf;
use std::process::Command;

use qvm_tests::fixtures::{self, guest_kernel};
use qvm_tests::lab;

use crate::common::{
    initramfs_with_extra, interleaved, lab_config, median, script_cmdline, table, vmm_cmd, VMMS,
};

/// Builds the static in-guest disk benchmark and an initramfs holding it and the bench script.
fn blk_bench_initramfs(secs: u32) -> Result<PathBuf, String> {
    let ws = fixtures::workspace();
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&ws)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "qvm-benches",
            "--bin",
            "qvm-guest-io",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("building the static qvm-guest-io failed".into());
    }
    let extra = std::env::temp_dir().join(format!("qvm-blk-bench-extra-{}", std::process::id()));
    std::fs::create_dir_all(extra.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy(
        ws.join("target/x86_64-unknown-linux-gnu/release/qvm-guest-io"),
        extra.join("bin/qvm-guest-io"),
    )
    .map_err(|e| e.to_string())?;
    let script = format!(
        "for job in seqread:1048576 seqwrite:1048576 randread:4096 randwrite:4096; do\n\
         \x20 /bin/qvm-guest-io /dev/vda ${{job%%:*}} ${{job##*:}} {secs}\n\
         done\nexit 0\n"
    );
    std::fs::write(extra.join("blk-bench.sh"), script).map_err(|e| e.to_string())?;
    initramfs_with_extra(&extra)
}

/// In-guest disk throughput and IOPS (queue depth 1, O_DIRECT) on a virtio-blk disk backed by
/// the same raw image, qvm-vmm beside QEMU microvm's virtio-blk-device, runs interleaved.
pub fn bench(runs: usize) -> Result<(), String> {
    const SECS: u32 = 3;
    let initrd = blk_bench_initramfs(SECS)?;
    let kernel = &guest_kernel().vmlinux;
    let share = lab::lab_share_dir();
    let img = share.join("blk-bench.img");
    let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
    // Fully allocated, so reads hit real blocks in both VMMs.
    let st = Command::new("fallocate")
        .args(["-l", "256M"])
        .arg(&img)
        .status()
        .map_err(|e| e.to_string())?;
    drop(f);
    if !st.success() {
        return Err("fallocate failed".into());
    }
    let cmdline = script_cmdline("blk-bench.sh");
    let disk = fixtures::disk_toml(&img, false, None);
    let cfg = lab_config("blk-bench.toml", kernel, &initrd, 256, &cmdline, &disk)?;
    let qvm = format!("timeout 600 {} </dev/null 2>&1", vmm_cmd(&cfg));
    let qemu = format!(
        "timeout 600 {} -drive id=d0,file={},format=raw,if=none -device virtio-blk-device,drive=d0 2>&1",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, &cmdline),
        lab::shell_quote(&img.to_string_lossy())
    );
    let jobs = ["seqread", "seqwrite", "randread", "randwrite"];
    // results[vmm][job] = (MB/s samples, IOPS samples)
    let mut results: Vec<Vec<(Vec<f64>, Vec<f64>)>> = vec![vec![(Vec::new(), Vec::new()); 4]; 2];
    eprintln!("blk bench: {runs} runs per VMM, {SECS} s per job");
    interleaved(runs, [qvm, qemu], |run, v, out| {
        for line in out.lines().filter_map(|l| l.trim().strip_prefix("RESULT ")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(j), Some(mbs), Some(iops)) = (
                jobs.iter().position(|j| Some(j) == f.first()),
                f.get(2).and_then(|x| x.parse::<f64>().ok()),
                f.get(3).and_then(|x| x.parse::<f64>().ok()),
            ) {
                results[v][j].0.push(mbs);
                results[v][j].1.push(iops);
            }
        }
        let got: usize = results[v].iter().map(|r| r.0.len()).sum();
        if got != (run + 1) * jobs.len() {
            let vmm = ["qvm-vmm", "qemu"][v];
            return Err(format!("missing RESULT lines from {vmm}:\n{out}"));
        }
        Ok(format!("{} done", VMMS[v]))
    })?;
    table(
        &format!("In-guest disk I/O on virtio-blk, 256 MiB raw image, O_DIRECT, queue depth 1, {SECS} s per job, median of {runs} runs"),
        "| job | qvm-vmm MB/s | qvm-vmm IOPS | QEMU microvm MB/s | QEMU microvm IOPS |",
    );
    for (j, job) in jobs.iter().enumerate() {
        let bs = if job.starts_with("seq") {
            "1 MiB"
        } else {
            "4 KiB"
        };
        let mut cells = Vec::new();
        for r in results.iter_mut() {
            cells.push(format!("{:.1}", median(&mut r[j].0)));
            cells.push(format!("{:.0}", median(&mut r[j].1)));
        }
        println!("| {job} {bs} | {} |", cells.join(" | "));
    }
    Ok(())
}
