//! `qvm-bench`: qvm's boot numbers, each printed beside QEMU measured in the same run.
//!
//! 1. Lab (or hardware KVM): wall time from exec to the guest's userspace marker, qvm-vmm
//!    beside `qemu-system-x86_64 -M microvm -accel kvm`, same kernel, initrd and command line,
//!    runs interleaved, median of N each. Timestamps come from bash's $EPOCHREALTIME (no fork,
//!    which costs 100+ ms per exec under TCG).
//! 2. This host's /dev/kvm, tiny guest: exec to first KVM_RUN and RSS beyond guest memory, beside
//!    QEMU microvm started paused (-S) with the same memory (its exec-to-pidfile time and RSS).
//!
//! 3. Lab: in-guest disk throughput/IOPS on virtio-blk (static `qvm-guest-io`, O_DIRECT, QD1),
//!    qvm-vmm beside QEMU microvm's virtio-blk-device on the same image, interleaved.
//!
//! 5. Lab: TCP over virtio-net (tap) and vsock throughput, guest->host and host->guest, qvm-vmm
//!    beside QEMU microvm (`-netdev tap` userspace virtio-net, `vhost-vsock-device`), interleaved.
//!
//! 6. Lab: virtio-fs in the guest (sequential write/read MB/s with dd, create/stat/unlink of
//!    small files per second with busybox sh builtins), one virtiofsd binary started with the
//!    same options for both, qvm-vmm beside QEMU microvm (`vhost-user-fs-device`, memfd RAM),
//!    interleaved.
//!
//! 4. Host, no guest: instructions per virtio-blk request in our device (`qvm-blk-cost` under
//!    callgrind, difference of two request counts).
//!
//! 7. Lab: virtio-wl frames to weston (headless): fps and host CPU per frame at 1 MiB, 1080p
//!    and 4K, zero-copy buffers beside the copy path (same client, frames drawn in guest
//!    memory and copied into the shared buffer), in the same boot.
//!
//! 8. Host, no guest: instructions per committed frame in our virtio-wl device at 1 MiB and
//!    31.6 MiB frames (`qvm-wl-cost` under callgrind, a headless weston as the compositor).
//!
//!    Issue 7: the same in-guest, for an ordinary wl_shm client through `qvm-wl-proxy`: a
//!    cursor blink and a full-screen scroll at 1080p, damage-only copies beside whole-frame
//!    copies (two proxies in the same boot): bytes the proxy copies per frame, host (virtio-wl
//!    thread) and guest (vCPU threads) CPU per frame. `--wl-proxy-only` runs just these.
//!
//! 10. Host, no VM: the same proxy workloads with `qvm-wl-proxy --upstream socket:` and a
//!     headless weston: proxy, client and weston CPU per frame, bytes copied per frame.
//!
//! 9. Lab: the qvm desktop's `qvm run VM -- true`, cold (VM stopped: boot + agent + command) and
//!    warm (VM running), beside a QEMU script (microvm + `vhost-vsock-device` started in the
//!    background, `qvm-run --cid` retried until the agent answers, then once more), same kernel,
//!    initramfs, memory and vCPUs, interleaved in one lab script.
//!
//! Usage: qvm-bench [--runs N] [--skip-lab] [--skip-host] [--skip-blk] [--skip-blk-cost] [--skip-net]
//!              [--skip-fs] [--skip-wl] [--wl-proxy-only] [--skip-wl-cost] [--skip-wl-proxy-host]
//!              [--skip-desktop]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{
    self, guest_initramfs, guest_kernel, qvm_cli_binary, qvm_run_binary, tiny, tiny_elf, vm_toml,
    vmm_binary,
};
use qvm_tests::lab;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=hello";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// A bash script that runs `cmd`, and prints `MARK <ms since exec> <guest uptime>` when the
/// guest's marker line appears and `RC <code>` at the end.
fn timed_boot_script(cmd: &str) -> String {
    format!(
        r#"exec bash -c '
t0=${{EPOCHREALTIME/./}}
{cmd} </dev/null 2>&1 | while IFS= read -r line; do
  case "$line" in *{marker}*)
    t1=${{EPOCHREALTIME/./}}
    up=${{line#*uptime=}}; up=${{up%% *}}
    echo "MARK $(( (t1 - t0) / 1000 )) $up";;
  esac
done
echo "RC ${{PIPESTATUS[0]}}"'"#,
        cmd = cmd.replace('\'', r"'\''"),
        marker = fixtures::USERSPACE_MARKER
    )
}

struct Sample {
    wall_ms: f64,
    uptime_s: f64,
}

fn parse_sample(out: &str) -> Result<Sample, String> {
    let mark = out
        .lines()
        .find(|l| l.starts_with("MARK "))
        .ok_or_else(|| format!("no marker in output:\n{out}"))?;
    let mut it = mark.split_whitespace().skip(1);
    let wall_ms: f64 = it.next().and_then(|s| s.parse().ok()).ok_or("bad MARK")?;
    let uptime_s: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let rc = out.lines().find(|l| l.starts_with("RC ")).unwrap_or("RC ?");
    if rc != "RC 0" {
        return Err(format!("boot did not end cleanly ({rc}):\n{out}"));
    }
    Ok(Sample { wall_ms, uptime_s })
}

fn lab_boot_bench(runs: usize) -> Result<(), String> {
    let k = guest_kernel();
    let initrd = guest_initramfs();
    let vmm = vmm_binary();
    let share = lab::lab_share_dir();
    let mut rows: Vec<(String, Box<dyn Fn() -> String>)> = Vec::new();
    for (label, kernel) in [("vmlinux (PVH)", &k.vmlinux), ("bzImage", &k.bzimage)] {
        let cfg = share.join(format!(
            "bench-{}.toml",
            label.split(' ').next().unwrap_or("k")
        ));
        std::fs::write(&cfg, vm_toml(kernel, Some(initrd), 1, 256, CMDLINE))
            .map_err(|e| e.to_string())?;
        let cmd = format!("{} --config {}", vmm.display(), cfg.display());
        rows.push((
            format!("qvm-vmm, {label}"),
            Box::new(move || timed_boot_script(&cmd)),
        ));
        let qemu = lab::qemu_microvm_boot_cmd(kernel, initrd, CMDLINE);
        rows.push((
            format!("qemu microvm, {label}"),
            Box::new(move || timed_boot_script(&qemu)),
        ));
    }
    let where_ = match lab::mode() {
        lab::Mode::Lab => "nested KVM lab (L1 = QEMU TCG, L2 on kvm_amd)",
        lab::Mode::Direct => "this host's hardware KVM",
    };
    eprintln!("boot bench: {runs} runs per row in {where_}; starting ...");
    let mut samples: Vec<Vec<Sample>> = rows.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (i, (label, script)) in rows.iter().enumerate() {
            let out = lab::run(&script(), Duration::from_secs(600)).map_err(|e| e.to_string())?;
            let s = parse_sample(&out.output).map_err(|e| format!("{label}: {e}"))?;
            eprintln!(
                "  run {}: {label}: {:.0} ms wall, guest uptime {:.2} s",
                run + 1,
                s.wall_ms,
                s.uptime_s
            );
            samples[i].push(s);
        }
    }
    println!("\nBoot to guest userspace marker ({where_}), 1 vCPU, 256 MiB, same kernel/initrd/cmdline, {runs} runs each, interleaved");
    println!("| VMM, kernel | median wall ms (exec to marker) | min..max ms | median guest uptime at marker s |");
    println!("|---|---|---|---|");
    for ((label, _), s) in rows.iter().zip(samples.iter_mut()) {
        let mut wall: Vec<f64> = s.iter().map(|x| x.wall_ms).collect();
        let mut up: Vec<f64> = s.iter().map(|x| x.uptime_s).collect();
        let (lo, hi) = minmax(&wall);
        println!(
            "| {label} | {:.0} | {lo:.0}..{hi:.0} | {:.2} |",
            median(&mut wall),
            median(&mut up)
        );
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Total RSS and the RSS of the mapping of `guest_bytes` (guest RAM), in KiB, from smaps.
fn rss_kib(pid: u32, guest_bytes: u64) -> Result<(u64, u64), String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| e.to_string())?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut cur_size = 0u64;
    for line in smaps.lines() {
        let field = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            cur_size = field(line);
        } else if line.starts_with("Rss:") {
            let r = field(line);
            total += r;
            if cur_size * 1024 == guest_bytes {
                guest += r;
            }
        }
    }
    Ok((total, guest))
}

fn host_bench(runs: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("qvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let elf = dir.join("tiny.elf");
    std::fs::write(
        &elf,
        tiny_elf(&[tiny::print("up\n"), tiny::halt_forever()].concat()),
    )
    .map_err(|e| e.to_string())?;
    let mem_mib = 128u32;
    let cfg = dir.join("tiny.toml");
    let mut text = vm_toml(&elf, None, 1, mem_mib, "console=ttyS0");
    text.push_str("\n[console]\nmode = \"off\"\n");
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    let vmm = vmm_binary();

    let (mut first_run_ms, mut overhead_kib, mut total_kib) = (Vec::new(), Vec::new(), Vec::new());
    // Per start-up phase: ms since the previous phase (the first since exec).
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let t0 = monotonic_ns();
        let mut child = Command::new(&vmm)
            .args(["--report-boot-time", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut err = BufReader::new(child.stderr.take().ok_or("no stderr")?);
        let mut prev = t0;
        let mut idx = 0;
        let t1 = loop {
            let mut line = String::new();
            if err.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("qvm-vmm exited before its first KVM_RUN".into());
            }
            let t: u64 = line
                .trim()
                .rsplit('=')
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("unexpected qvm-vmm output: {line}"))?;
            let name = line
                .trim()
                .trim_start_matches("qvm-vmm: ")
                .split(" at monotonic_ns")
                .next()
                .unwrap_or("?")
                .trim_start_matches("phase ")
                .to_string();
            let dt = t.saturating_sub(prev) as f64 / 1e6;
            prev = t;
            if phases.len() <= idx {
                phases.push((name.clone(), Vec::new()));
            }
            phases[idx].1.push(dt);
            idx += 1;
            if name.starts_with("first KVM_RUN") {
                break t;
            }
        };
        first_run_ms.push((t1 - t0) as f64 / 1e6);
        std::thread::sleep(Duration::from_millis(100)); // let the vCPU settle into HLT
        let (total, guest) = rss_kib(child.id(), u64::from(mem_mib) << 20)?;
        total_kib.push(total as f64);
        overhead_kib.push((total - guest) as f64);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = child.wait().map_err(|e| e.to_string())?;
        if st.code() != Some(128 + libc::SIGTERM) {
            return Err(format!(
                "qvm-vmm ended with {st} instead of stopping on SIGTERM"
            ));
        }
    }

    // Peer: QEMU microvm, same memory, started paused before its first KVM_RUN.
    let (mut q_ready_ms, mut q_total_kib) = (Vec::new(), Vec::new());
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if qemu_ok {
        for i in 0..runs {
            let pidfile = dir.join(format!("qemu-{i}.pid"));
            let t0 = Instant::now();
            let mut child = Command::new("qemu-system-x86_64")
                // -cpu host makes QEMU 7.2 abort on a software KVM (MSR 0x10a); the CPU
                // model does not matter for a paused VM.
                .args(["-M", "microvm", "-accel", "kvm", "-cpu", "qemu64", "-m"])
                .arg(mem_mib.to_string())
                .args([
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-S",
                    "-display",
                    "none",
                    "-serial",
                    "none",
                    "-pidfile",
                ])
                .arg(&pidfile)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            while !pidfile.exists() {
                if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                    return Err(format!("qemu exited early: {st}"));
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    return Err("qemu did not write its pidfile".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            q_ready_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(100));
            let (total, _) = rss_kib(child.id(), u64::from(mem_mib) << 20)?;
            q_total_kib.push(total as f64);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    println!("\nOn this host's /dev/kvm, tiny guest ({mem_mib} MiB), {runs} runs each");
    println!("| measure | qvm-vmm median | min..max | target | QEMU microvm -S median |");
    println!("|---|---|---|---|---|");
    let (lo, hi) = minmax(&first_run_ms);
    let q = |v: &mut Vec<f64>, scale: f64| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.2}", median(v) / scale)
        }
    };
    println!(
        "| exec to first KVM_RUN, ms | {:.2} | {lo:.2}..{hi:.2} | < 5 | {} (exec to pidfile, paused) |",
        median(&mut first_run_ms),
        q(&mut q_ready_ms, 1.0)
    );
    let (lo, hi) = minmax(&overhead_kib);
    println!(
        "| RSS beyond guest memory, MiB | {:.2} | {:.2}..{:.2} | < 5 | {} (total RSS, guest untouched) |",
        median(&mut overhead_kib) / 1024.0,
        lo / 1024.0,
        hi / 1024.0,
        q(&mut q_total_kib, 1024.0)
    );
    println!(
        "| total RSS, MiB | {:.2} | | | |",
        median(&mut total_kib) / 1024.0
    );
    println!(
        "\nqvm-vmm start-up phases (median ms since the previous phase; the first since exec)"
    );
    println!("| phase | median ms |");
    println!("|---|---|");
    for (name, v) in phases.iter_mut() {
        let label = match name.as_str() {
            "start" => "exec, dynamic loading, CLI and config parsing -> start",
            "vm-created" => "open /dev/kvm, checks, create VM, irqchip, PIT",
            "memory-registered" => "mmap guest RAM + KVM_SET_USER_MEMORY_REGION",
            "kernel-loaded" => "kernel, cmdline, ACPI, boot params",
            "vcpus-configured" => "devices, vCPU create + CPUID/MSR/regs",
            _ => "event loop, vCPU thread spawn -> first KVM_RUN",
        };
        println!("| {label} | {:.2} |", median(v));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Builds the static in-guest disk benchmark and an initramfs holding it and the bench script.
fn blk_bench_initramfs(secs: u32) -> Result<std::path::PathBuf, String> {
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
    let out = Command::new(ws.join("guest-kernel-config/build-initramfs.sh"))
        .env("QVM_INITRAMFS_EXTRA", &extra)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&extra);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .into())
}

/// In-guest disk throughput and IOPS (queue depth 1, O_DIRECT) on a virtio-blk disk backed by
/// the same raw image, qvm-vmm beside QEMU microvm's virtio-blk-device, runs interleaved.
fn blk_bench(runs: usize) -> Result<(), String> {
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
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run qvm.script=/blk-bench.sh";
    let cfg = share.join("blk-bench.toml");
    let mut text = vm_toml(kernel, Some(&initrd), 1, 256, cmdline);
    text.push_str(&fixtures::disk_toml(&img, false, None));
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    let qvm = format!(
        "{} --config {} </dev/null 2>&1",
        vmm_binary().display(),
        cfg.display()
    );
    let qemu = format!(
        "{} -drive id=d0,file={},format=raw,if=none -device virtio-blk-device,drive=d0 2>&1",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, cmdline),
        lab::shell_quote(&img.to_string_lossy())
    );
    let jobs = ["seqread", "seqwrite", "randread", "randwrite"];
    // results[vmm][job] = (MB/s samples, IOPS samples)
    let mut results: Vec<Vec<(Vec<f64>, Vec<f64>)>> = vec![vec![(Vec::new(), Vec::new()); 4]; 2];
    eprintln!("blk bench: {runs} runs per VMM, {SECS} s per job");
    for run in 0..runs {
        for (v, cmd) in [&qvm, &qemu].iter().enumerate() {
            let out = lab::run(&format!("timeout 600 {cmd}"), Duration::from_secs(700))
                .map_err(|e| e.to_string())?;
            for line in out
                .output
                .lines()
                .filter_map(|l| l.trim().strip_prefix("RESULT "))
            {
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
                return Err(format!(
                    "run {}: missing RESULT lines from {}:\n{}",
                    run + 1,
                    ["qvm-vmm", "qemu"][v],
                    out.output
                ));
            }
            eprintln!("  run {}: {} done", run + 1, ["qvm-vmm", "qemu microvm"][v]);
        }
    }
    println!("\nIn-guest disk I/O on virtio-blk, 256 MiB raw image, O_DIRECT, queue depth 1, {SECS} s per job, median of {runs} runs");
    println!("| job | qvm-vmm MB/s | qvm-vmm IOPS | QEMU microvm MB/s | QEMU microvm IOPS |");
    println!("|---|---|---|---|---|");
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

/// Instructions (user space, as callgrind counts them) per virtio-blk request of our device:
/// `qvm-blk-cost` run for two request counts, the difference divided by the count difference.
fn blk_cost_bench() -> Result<(), String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cost = exe.with_file_name("qvm-blk-cost");
    if !cost.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p qvm-benches",
            cost.display()
        ));
    }
    let img = std::env::temp_dir().join(format!("qvm-blk-cost-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .map_err(|e| e.to_string())?;
    let collected = |kind: &str, n: u64| -> Result<f64, String> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&cost)
            .args([kind, &n.to_string()])
            .arg(&img)
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("qvm-blk-cost {kind} {n} failed: {err}"));
        }
        err.lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no 'Collected' line from callgrind: {err}"))
    };
    println!("\nvirtio-blk device cost on the host, no guest (callgrind, user-space instructions)");
    println!("| request | instructions per request |");
    println!("|---|---|");
    let (small, big) = (1_000u64, 11_000u64);
    let mut result = Ok(());
    for kind in ["read", "write", "flush"] {
        match collected(kind, small).and_then(|a| Ok((a, collected(kind, big)?))) {
            Ok((a, b)) => {
                let label = if kind == "flush" {
                    "flush"
                } else {
                    &format!("{kind} 4 KiB")
                };
                println!("| {label} | {:.0} |", (b - a) / (big - small) as f64);
            }
            Err(e) => result = Err(e),
        }
    }
    let _ = std::fs::remove_file(&img);
    result
}

/// Guest<->host throughput over virtio-net (TCP through a tap in a network namespace) and
/// vsock, measured in the guest with qvm-vsock's checked transfers, qvm-vmm beside QEMU microvm.
/// The project's initramfs with `script` added as `/<name>` (cached by content like any
/// initramfs), for a guest booted with `qvm.mode=run qvm.script=/<name>`.
fn initramfs_with_script(name: &str, script: &str) -> Result<std::path::PathBuf, String> {
    let extra = std::env::temp_dir().join(format!("qvm-bench-extra-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&extra).map_err(|e| e.to_string())?;
    std::fs::write(extra.join(name), script).map_err(|e| e.to_string())?;
    let out = Command::new(fixtures::workspace().join("guest-kernel-config/build-initramfs.sh"))
        .env("QVM_INITRAMFS_EXTRA", &extra)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&extra);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(std::path::PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    ))
}

fn net_bench(runs: usize) -> Result<(), String> {
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

/// In-guest virtio-fs throughput and metadata rate on a share served by one virtiofsd binary,
/// started by the lab script with the same options for both VMMs (those qvm-vmm uses when it
/// starts virtiofsd itself); qvm-vmm gets only `tag` + `socket`. Runs interleaved.
fn fs_bench(runs: usize) -> Result<(), String> {
    // Sized for the nested lab (measured 2026-11: ~6 MB/s write, ~15 MB/s read, ~13 files/s
    // create+stat+unlink): about 7 s of dd and 20-25 s of metadata per boot.
    const MIB: u64 = 32;
    const FILES: u64 = 300;
    const DIR: &str = "/tmp/qvm-fs-bench";
    // busybox date has no %N: time with /proc/uptime (10 ms). `read` is a builtin (no fork);
    // the metadata loops use only builtins (`echo >`, `[ -f ]`) so they time the share, not
    // fork+exec; the unlink phase is one `rm` (readdir, then lstat + unlink per file).
    let script = format!(
        r#"mkdir -p /mnt/s
mount -t virtiofs share /mnt/s || {{ echo "BENCH-ERROR mount failed"; exit 1; }}
cd /mnt/s || exit 1
read t0 x </proc/uptime
dd if=/dev/zero of=seq bs=1M count={MIB} conv=fsync 2>/tmp/dd.err || {{ cat /tmp/dd.err; echo "BENCH-ERROR write failed"; exit 1; }}
read t1 x </proc/uptime
[ "$(stat -c %s seq)" = {bytes} ] || echo "BENCH-ERROR written size $(stat -c %s seq)"
echo "BENCH seq-write {bytes} $t0 $t1"
sync; echo 3 >/proc/sys/vm/drop_caches
read t0 x </proc/uptime
dd if=seq of=/dev/null bs=1M 2>/tmp/dd.err || {{ cat /tmp/dd.err; echo "BENCH-ERROR read failed"; exit 1; }}
read t1 x </proc/uptime
grep -q "^{MIB}+0 records in" /tmp/dd.err || echo "BENCH-ERROR short read: $(cat /tmp/dd.err)"
echo "BENCH seq-read {bytes} $t0 $t1"
rm seq
mkdir m && cd m || exit 1
read t0 x </proc/uptime
i=0; while [ $i -lt {FILES} ]; do echo x >f$i || break; i=$((i+1)); done
read t1 x </proc/uptime
[ $i = {FILES} ] || echo "BENCH-ERROR created only $i files"
echo "BENCH create {FILES} $t0 $t1"
sync; echo 3 >/proc/sys/vm/drop_caches
read t0 x </proc/uptime
i=0; while [ $i -lt {FILES} ]; do [ -f f$i ] || break; i=$((i+1)); done
read t1 x </proc/uptime
[ $i = {FILES} ] || echo "BENCH-ERROR f$i missing"
echo "BENCH stat {FILES} $t0 $t1"
read t0 x </proc/uptime
rm -f f*
read t1 x </proc/uptime
[ -z "$(ls)" ] || echo "BENCH-ERROR files left after rm"
echo "BENCH unlink {FILES} $t0 $t1"
cd / && umount /mnt/s
exit 0
"#,
        bytes = MIB << 20,
    );
    let initrd = initramfs_with_script("fs-bench.sh", &script)?;
    let virtiofsd = fixtures::virtiofsd_binary().display().to_string();
    let kernel = &guest_kernel().vmlinux;
    let share = lab::lab_share_dir();
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run qvm.script=/fs-bench.sh";
    let cfg = share.join("fs-bench.toml");
    let mut text = vm_toml(kernel, Some(&initrd), 1, 256, cmdline);
    text.push_str(&format!(
        "\n[[fs]]\ntag = \"share\"\nsocket = \"{DIR}/share.sock\"\n"
    ));
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    let qvm = format!(
        "{} --config {} </dev/null 2>&1",
        vmm_binary().display(),
        cfg.display()
    );
    // vhost-user needs the guest RAM in shared memory: a memfd backend of the -m size (the
    // second -machine merges with the helper's -M microvm).
    let qemu = format!(
        "{} -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
         -chardev socket,id=fs0,path={DIR}/share.sock -device vhost-user-fs-device,chardev=fs0,tag=share \
         </dev/null 2>&1",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, cmdline),
    );
    // A fresh virtiofsd per boot (it exits when its frontend disconnects), with the options
    // vmm/src/virtiofsd.rs uses.
    let wrap = |cmd: &str| {
        format!(
            "t={DIR}; rm -rf $t; mkdir -p $t/share\n\
             sandbox=; [ \"$(id -u)\" = 0 ] || sandbox=--sandbox=none\n\
             {vfs} --socket-path=$t/share.sock --shared-dir=$t/share --cache=auto --log-level=error $sandbox >$t/virtiofsd.log 2>&1 &\n\
             vfs=$!\n\
             i=0; until [ -S $t/share.sock ]; do i=$((i+1)); if [ $i -gt 500 ]; then echo \"virtiofsd did not start\"; cat $t/virtiofsd.log; exit 1; fi; sleep 0.02; done\n\
             timeout 600 sh -c {}\n\
             echo \"VMM-EXIT $?\"\n\
             kill $vfs 2>/dev/null; wait $vfs\n\
             cat $t/virtiofsd.log; rm -rf $t\n",
            lab::shell_quote(cmd),
            vfs = lab::shell_quote(&virtiofsd),
        )
    };
    let jobs = ["seq-write", "seq-read", "create", "stat", "unlink"];
    // results[vmm][job]: MB/s for the sequential jobs, files/s for the rest; plus the
    // create+stat+unlink total in files/s at index jobs.len().
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); jobs.len() + 1]; 2];
    eprintln!(
        "virtio-fs bench: {runs} runs per VMM, {MIB} MiB sequential, {FILES} files ({virtiofsd})"
    );
    for run in 0..runs {
        for (v, cmd) in [&qvm, &qemu].iter().enumerate() {
            let name = ["qvm-vmm", "qemu microvm"][v];
            let out = lab::run(&wrap(cmd), Duration::from_secs(700)).map_err(|e| e.to_string())?;
            let fail = |what: &str| format!("run {}: {name}: {what}:\n{}", run + 1, out.output);
            if out.output.contains("BENCH-ERROR") || !out.output.contains("VMM-EXIT 0") {
                return Err(fail("the guest or the VMM reported an error"));
            }
            let mut meta_secs = 0.0;
            for (j, job) in jobs.iter().enumerate() {
                let f: Vec<f64> = out
                    .output
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("BENCH {job} ")))
                    .map(|l| {
                        l.split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let (amount, secs) = match f[..] {
                    [amount, t0, t1] if t1 > t0 => (amount, t1 - t0),
                    _ => return Err(fail(&format!("no good BENCH {job} line"))),
                };
                if j < 2 {
                    results[v][j].push(amount / secs / 1e6);
                } else {
                    results[v][j].push(amount / secs);
                    meta_secs += secs;
                }
            }
            results[v][jobs.len()].push(FILES as f64 / meta_secs);
            eprintln!(
                "  run {}: {name}: write {:.1} MB/s, read {:.1} MB/s, create+stat+unlink {:.0} files/s",
                run + 1,
                results[v][0][run],
                results[v][1][run],
                results[v][jobs.len()][run]
            );
        }
    }
    println!("\nIn-guest virtio-fs (same virtiofsd --cache=auto, host dir on L1 tmpfs), median of {runs} runs; guest clock /proc/uptime (10 ms)");
    println!("| measure | qvm-vmm | QEMU microvm |");
    println!("|---|---|---|");
    let names = [
        format!("sequential write, dd {MIB} MiB bs=1M conv=fsync, MB/s"),
        format!("sequential read, dd {MIB} MiB bs=1M after drop_caches, MB/s"),
        format!("create {FILES} small files (echo x >f), files/s"),
        format!("stat {FILES} files after drop_caches ([ -f ]), files/s"),
        format!("unlink {FILES} files (one rm: readdir, lstat + unlink), files/s"),
        format!("create + stat + unlink {FILES} files, files/s"),
    ];
    for (j, name) in names.iter().enumerate() {
        let prec = if j < 2 { 1 } else { 0 };
        println!(
            "| {name} | {:.prec$} | {:.prec$} |",
            median(&mut results[0][j]),
            median(&mut results[1][j])
        );
    }
    Ok(())
}

/// The wl bench's sampler (bash, run in L1 beside the VMM): see the comment in the script.
const WL_SAMPLER: &str = r#"cat >$rt/sample.sh <<'SAMPLER'
vmm=$1; log=$2; sock=$3; bin=$4
wltid=
cpu() {
  dev=0; all=0
  for t in /proc/$vmm/task/*; do
    read -r ns rest 2>/dev/null <$t/schedstat || continue
    all=$((all + ns))
    if [ -z "$wltid" ]; then
      read -r c 2>/dev/null <$t/comm
      [ "$c" = virtio-wl ] && wltid=${t##*/}
    fi
    [ "${t##*/}" = "$wltid" ] && dev=$ns
  done
}
exec 3<$log
buf=
while kill -0 $vmm 2>/dev/null; do
  if IFS= read -r line <&3; then
    line=$buf$line; buf=
    line=${line%$'\r'}
    case "$line" in
    WLB-*|QVM-WL-*)
      cpu
      m=$($bin ctl --api-sock $sock get /metrics 2>/dev/null | tr -d ' \n' | grep -o '"wayland":{[^}]*}')
      sent=$(echo "$m" | sed -n 's/.*"bytes_sent":\([0-9]*\).*/\1/p')
      recv=$(echo "$m" | sed -n 's/.*"bytes_received":\([0-9]*\).*/\1/p')
      echo "$line CPU $dev $all $((${sent:-0} + ${recv:-0}))" ;;
    esac
  else
    buf=$buf$line
    sleep 0.02
  fi
done
SAMPLER
"#;

/// One virtio-wl bench case.
struct WlCase {
    name: &'static str,
    w: u32,
    h: u32,
    frames: u32,
    /// "" = the demo on /dev/wl0 itself; "damage" / "whole" = an ordinary wl_shm client
    /// (`--transport socket`) through the guest's qvm-wl-proxy in that copy mode.
    via: &'static str,
    /// More demo arguments.
    args: &'static str,
}

const fn wl_case(
    name: &'static str,
    w: u32,
    h: u32,
    frames: u32,
    via: &'static str,
    args: &'static str,
) -> WlCase {
    WlCase {
        name,
        w,
        h,
        frames,
        via,
        args,
    }
}

const WL_CASES: &[WlCase] = &[
    wl_case("1mib", 512, 512, 20, "", ""),
    wl_case("1080p", 1920, 1080, 16, "", ""),
    wl_case("1080p-copy", 1920, 1080, 16, "", "--copy-path"),
    wl_case("4k", 3840, 2160, 8, "", ""),
    wl_case("4k-copy", 3840, 2160, 8, "", "--copy-path"),
    // Issue 7: the proxy's damage-only copies beside whole-frame copies, 1080p.
    wl_case(
        "blink-damage",
        1920,
        1080,
        24,
        "damage",
        "--scene blink --warmup 3 --hold 5",
    ),
    wl_case(
        "blink-whole",
        1920,
        1080,
        24,
        "whole",
        "--scene blink --warmup 3 --hold 5",
    ),
    wl_case(
        "scroll-damage",
        1920,
        1080,
        16,
        "damage",
        "--scene scroll --warmup 3 --hold 5",
    ),
    wl_case(
        "scroll-whole",
        1920,
        1080,
        16,
        "whole",
        "--scene scroll --warmup 3 --hold 5",
    ),
];

/// virtio-wl in the lab: `qvm-wl-demo` in the guest draws and commits frames to weston
/// (headless, pixman) in L1. Per case: frames per second as the guest saw them, and host CPU
/// per committed frame of the VMM's virtio-wl worker thread and of the whole VMM process
/// (vCPU threads included, so the guest's drawing and copying show up there), read from
/// /proc/<pid>/task/*/schedstat around each case. The copy path is the same client drawing
/// into guest memory and copying each whole frame into the shared buffer.
fn wl_bench(runs: usize, proxy_only: bool) -> Result<(), String> {
    let cases: Vec<&WlCase> = WL_CASES
        .iter()
        .filter(|c| !proxy_only || !c.via.is_empty())
        .collect();
    // The guest's Wayland proxy, once per copy mode, on its own socket.
    let mut guest = String::from(
        "export XDG_RUNTIME_DIR=/tmp\n\
         qvm-wl-proxy --socket /tmp/wlp-damage --copy damage >/tmp/wlp-damage.log 2>&1 &\n\
         qvm-wl-proxy --socket /tmp/wlp-whole --copy whole >/tmp/wlp-whole.log 2>&1 &\n\
         sleep 1\nfor spec in",
    );
    for c in &cases {
        guest.push_str(&format!(
            " \"{}:{}:{}:{}:{}:{}\"",
            c.name, c.w, c.h, c.frames, c.via, c.args
        ));
    }
    // The demo prints QVM-WL-READY once its first frame is committed and QVM-WL-HOLD after the
    // last frame's callback: the host samples CPU at both, so buffer set-up and teardown (memfd,
    // KVM slot, munmap) are not counted per frame.
    guest.push_str(
        r#"; do
  IFS=: read name w h n via args <<SPEC
$spec
SPEC
  echo "WLB-BEGIN $name"
  if [ -n "$via" ]; then
    WAYLAND_DISPLAY=/tmp/wlp-$via qvm-wl-demo --transport socket --width $w --height $h --frames $n --hold 2 $args 2>&1
  else
    qvm-wl-demo --width $w --height $h --frames $n --hold 2 $args 2>&1
  fi
  echo "WLB-END $name rc=$?"
  sleep 1
  # The proxy's line for that client: bytes it copied, its CPU time.
  [ -n "$via" ] && echo "WLB-PROXY $name $(tail -n 1 /tmp/wlp-$via.log)"
done
# The host's sampler lags behind the console: let it read the last lines while the VMM lives.
sleep 15
exit 0
"#,
    );
    let initrd = initramfs_with_script("wl-bench.sh", &guest)?;
    let kernel = &guest_kernel().vmlinux;
    let share = lab::lab_share_dir();
    let rt = "/tmp/qvm-wl-bench";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run \
                   qvm.script=/wl-bench.sh";
    let cfg = share.join("wl-bench.toml");
    let mut text = vm_toml(kernel, Some(&initrd), 1, 384, cmdline);
    text.push_str(&format!("\n[wayland]\nsocket = \"{rt}/wl-bench\"\n"));
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    // CPU ns of the VMM's virtio-wl thread and of all its threads, at each WLB- marker.
    let script = format!(
        r#"rt={rt}; rm -rf $rt; mkdir -p $rt; chmod 700 $rt; export XDG_RUNTIME_DIR=$rt
cat >$rt/weston.ini <<'INI'
{ini}INI
weston --config=$rt/weston.ini --backend=headless-backend.so --socket=wl-bench --width=3840 \
  --height=2160 --use-pixman --idle-time=0 >$rt/weston.log 2>&1 &
weston=$!
i=0; until [ -S $rt/wl-bench ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
log=$rt/vmm.log
{vmm} --config {cfg} --api-sock $rt/api.sock </dev/null >$log 2>&1 &
vmm=$!
# At each marker line the VMM prints: CPU ns of the wl thread and of the whole process, and
# the bytes the device moved through its queues (Wayland protocol both ways: frame data never
# travels there). bash builtins only between markers (a fork costs ~100 ms under TCG): the
# log is followed through an open fd, partial lines are kept until their newline arrives.
{sampler}bash $rt/sample.sh $vmm $log $rt/api.sock {vmm}
wait $vmm; echo "VMM-EXIT $?"
kill $weston 2>/dev/null
grep -v '^WLB-' $log | tail -n 20
"#,
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        sampler = WL_SAMPLER,
        ini = qvm_tests::wayland::WESTON_INI,
    );
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    // name -> (fps, wl thread ns/frame, process ns/frame, device bytes/frame)
    let mut res: std::collections::BTreeMap<&str, Samples> = Default::default();
    // name -> (proxy bytes copied per steady frame, proxy CPU us per frame incl. set-up)
    let mut proxy: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    // name -> the guest's own busy CPU ms per frame (/proc/stat in the guest)
    let mut guest_busy: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    // (wl thread ns, process ns, device bytes) at the end of a sampled line.
    let cpu = |l: &str| -> Option<(f64, f64, f64)> {
        let mut it = l.rsplit(' ');
        let bytes = it.next()?.parse().ok()?;
        let all = it.next()?.parse().ok()?;
        let dev = it.next()?.parse().ok()?;
        Some((dev, all, bytes))
    };
    let kv = |l: &str, k: &str| -> Option<f64> {
        l.split(' ')
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    for run in 0..runs {
        let out = lab::run(&script, Duration::from_secs(1500)).map_err(|e| e.to_string())?;
        let out = out.output;
        let mut case: Option<&WlCase> = None;
        let mut start = None;
        let mut warm_busy: Option<f64> = None;
        let mut got = 0;
        for line in out.lines().map(str::trim_end) {
            let Some((kind, rest)) = line.split_once(' ') else {
                continue;
            };
            match kind {
                "WLB-BEGIN" => {
                    let name = rest.split(' ').next().unwrap_or_default();
                    case = cases.iter().copied().find(|c| c.name == name);
                    start = None;
                }
                // Proxy cases measure from the warm-up marker (past each buffer's first,
                // whole copy); the others from the first frame.
                "QVM-WL-READY" if case.is_some_and(|c| c.via.is_empty()) => start = cpu(line),
                "QVM-WL-WARM" => {
                    start = cpu(line);
                    warm_busy = kv(rest, "busy_ms");
                }
                "QVM-WL-HOLD" => {
                    let (Some(c), Some(b), Some(e)) = (case, start, cpu(line)) else {
                        continue;
                    };
                    let first = if c.via.is_empty() { 1 } else { 4 };
                    // Frames first..N-1 were committed between the two samples.
                    let frames = f64::from(c.frames - first);
                    if let (Some(w), Some(h)) = (warm_busy.take(), kv(rest, "busy_ms")) {
                        guest_busy.entry(c.name).or_default().push((h - w) / frames);
                    }
                    let r = res.entry(c.name).or_default();
                    r.1.push((e.0 - b.0) / frames);
                    r.2.push((e.1 - b.1) / frames);
                    r.3.push((e.2 - b.2) / frames);
                    got += 1;
                }
                "QVM-WL-DONE" => {
                    if let (Some(c), Some(fps)) = (case, kv(rest, "fps")) {
                        res.entry(c.name).or_default().0.push(fps);
                    }
                }
                "WLB-PROXY" => {
                    if let (Some(c), Some(b), Some(u), Some(s)) = (
                        case,
                        kv(rest, "bytes_copied_after_warmup"),
                        kv(rest, "user_us"),
                        kv(rest, "sys_us"),
                    ) {
                        let p = proxy.entry(c.name).or_default();
                        p.0.push(b / f64::from(c.frames - 4));
                        p.1.push((u + s) / f64::from(c.frames));
                    }
                }
                "WLB-END" if !rest.contains("rc=0") => {
                    return Err(format!("wl bench case failed: {line}\n{out}"));
                }
                _ => {}
            }
        }
        if got < cases.len() {
            return Err(format!("wl bench: run {run} measured {got} cases:\n{out}"));
        }
    }
    println!(
        "\nvirtio-wl (lab, weston headless/pixman in L1, qvm-wl-demo in the guest; median of {runs})"
    );
    println!(
        "{:<12} {:>10} {:>8} {:>20} {:>22} {:>18}",
        "case", "frame", "fps", "wl thread us/frame", "VMM process ms/frame", "queue bytes/frame"
    );
    for c in &cases {
        let (name, w, h) = (c.name, c.w, c.h);
        let Some((fps, dev, all, bytes)) = res.get_mut(name) else {
            continue;
        };
        println!(
            "{:<12} {:>10} {:>8.2} {:>20.0} {:>22.1} {:>18.0}",
            name,
            format!("{:.1} MiB", f64::from(w * h * 4) / 1048576.0),
            median(fps),
            median(dev) / 1e3,
            median(all) / 1e6,
            median(bytes)
        );
    }
    if !proxy.is_empty() {
        println!(
            "\nqvm-wl-proxy in the guest (issue 7): an ordinary wl_shm client, 1080p, its pool mirrored \
             into host memory; per frame after warm-up. Host = the VMM's virtio-wl thread; guest = \
             the VMM's other threads (vCPUs: client + proxy + guest kernel)."
        );
        println!(
            "{:<14} {:>20} {:>16} {:>20} {:>16} {:>22}",
            "case",
            "proxy bytes/frame",
            "host us/frame",
            "VMM vCPU ms/frame",
            "guest ms/frame",
            "proxy CPU us/frame*"
        );
        for c in cases.iter().filter(|c| !c.via.is_empty()) {
            let (Some((_, dev, all, _)), Some((copied, pcpu))) =
                (res.get(c.name), proxy.get_mut(c.name))
            else {
                continue;
            };
            let mut vcpu: Vec<f64> = all.iter().zip(dev.iter()).map(|(a, d)| a - d).collect();
            let mut dev = dev.clone();
            let mut busy = guest_busy.get(c.name).cloned().unwrap_or_default();
            println!(
                "{:<14} {:>20.0} {:>16.0} {:>20.2} {:>16.1} {:>22.0}",
                c.name,
                median(copied),
                median(&mut dev) / 1e3,
                median(&mut vcpu) / 1e6,
                median(&mut busy),
                median(pcpu)
            );
        }
        println!("(*) the proxy process's own user+sys time over the whole client, set-up included, / frames");
    }
    let small = res.get_mut("1mib").map(|r| median(&mut r.1));
    let big = res.get_mut("4k").map(|r| median(&mut r.1));
    if let (Some(small), Some(big)) = (small, big) {
        println!(
            "wl thread CPU per frame, 31.6 MiB / 1 MiB frames = {:.2} (lab times stretch with TCG load; \
             the callgrind count above is the deterministic figure)",
            big / small
        );
    }
    Ok(())
}

/// A headless weston (pixman, animations off) on `rt/socket` for the host-side benches,
/// started with `rt` as its private XDG_RUNTIME_DIR (created 0700) and waited for.
fn start_host_weston(
    rt: &Path,
    socket: &str,
    width: u32,
    height: u32,
) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(rt).map_err(|e| format!("create {}: {e}", rt.display()))?;
    let _ = Command::new("chmod").arg("700").arg(rt).status();
    let ini = rt.join("weston.ini");
    std::fs::write(&ini, qvm_tests::wayland::WESTON_INI).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(rt.join("weston.log")).map_err(|e| e.to_string())?;
    let mut weston = Command::new("weston")
        .arg(format!("--config={}", ini.display()))
        .args([
            "--backend=headless-backend.so".to_string(),
            format!("--socket={socket}"),
            format!("--width={width}"),
            format!("--height={height}"),
            "--use-pixman".to_string(),
            "--idle-time=0".to_string(),
        ])
        .env("XDG_RUNTIME_DIR", rt)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start weston: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt.join(socket).exists() {
        let exited = weston.try_wait().map_err(|e| e.to_string())?;
        if exited.is_some() || Instant::now() >= deadline {
            let _ = weston.kill();
            let _ = weston.wait();
            let log = std::fs::read_to_string(rt.join("weston.log")).unwrap_or_default();
            return Err(format!("weston never opened {socket}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(weston)
}

/// virtio-wl's host CPU per committed frame, deterministic: `qvm-wl-cost` (the guest's demo
/// client on the device's protocol engine in-process, talking to a headless weston started
/// here) under callgrind, counting only the device's instructions (`qvm_virtio_wl::*`), at two
/// frame counts; at 1 MiB and 31.6 MiB frames. Equal counts mean no per-frame work scales with
/// the buffer: nothing in the device touches pixels.
fn wl_cost_bench() -> Result<(), String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    if Command::new("weston").arg("--version").output().is_err() {
        return Err("weston is not installed (apt-get install weston)".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cost = exe.with_file_name("qvm-wl-cost");
    if !cost.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p qvm-benches",
            cost.display()
        ));
    }
    let rt = std::env::temp_dir().join(format!("qvm-wl-cost-{}", std::process::id()));
    let mut weston = start_host_weston(&rt, "wl-cost", 3840, 2160)?;
    let collected = |w: u32, h: u32, frames: u32| -> Result<f64, String> {
        let out = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=qvm_virtio_wl::*",
            ])
            .arg(&cost)
            .args([w.to_string(), h.to_string(), frames.to_string()])
            .env("XDG_RUNTIME_DIR", &rt)
            .env("WAYLAND_DISPLAY", "wl-cost")
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("qvm-wl-cost {w}x{h} {frames} failed: {err}"));
        }
        err.lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no 'Collected' line from callgrind: {err}"))
    };
    let (few, many) = (3u32, 13u32);
    let mut per_frame = Vec::new();
    let mut result = Ok(());
    for (w, h) in [(512u32, 512u32), (3840, 2160)] {
        match collected(w, h, few).and_then(|a| Ok((a, collected(w, h, many)?))) {
            Ok((a, b)) => per_frame.push((w, h, (b - a) / f64::from(many - few))),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = weston.kill();
    let _ = weston.wait();
    let _ = std::fs::remove_dir_all(&rt);
    result?;
    println!("\nvirtio-wl device cost per committed frame on the host (callgrind, device instructions only)");
    println!("| frame | buffer | instructions per frame |");
    println!("|---|---|---|");
    for (w, h, n) in &per_frame {
        println!(
            "| {w}x{h} | {:.1} MiB | {n:.0} |",
            f64::from(w * h * 4) / 1048576.0
        );
    }
    if let [(_, _, small), (_, _, big)] = per_frame[..] {
        println!(
            "zero copy: 31.6 MiB frames / 1 MiB frames = {:.3} (target < 1.5)",
            big / small
        );
    }
    Ok(())
}

/// Issue 7 on the host, no VM: `qvm-wl-proxy --upstream socket:` between `qvm-wl-demo
/// --transport socket` (an ordinary wl_shm client) and a headless weston at 1920x1080, for a
/// cursor blink and a full-screen scroll, damage-only copies beside whole-frame copies (two
/// proxies, runs interleaved). Per frame: the proxy's CPU (its child's user+sys for that
/// client), bytes it copied, the client's CPU and weston's. Each figure is the difference of a
/// 20-frame and an 80-frame client over 60 frames, so set-up is not counted.
fn wl_proxy_host_bench(runs: usize) -> Result<(), String> {
    if Command::new("weston").arg("--version").output().is_err() {
        return Err("weston is not installed (apt-get install weston)".into());
    }
    let demo = fixtures::qvm_wl_demo_binary();
    let proxy_bin = fixtures::qvm_wl_proxy_binary();
    let rt = std::env::temp_dir().join(format!("qvm-wl-proxy-bench-{}", std::process::id()));
    let mut children = Vec::new();
    let weston = start_host_weston(&rt, "wl-host", 1920, 1080)?;
    let weston_pid = weston.id();
    children.push(weston);
    // One proxy per copy mode; their stats lines come through a channel.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for mode in ["damage", "whole"] {
        let mut p = Command::new(&proxy_bin)
            .arg("--socket")
            .arg(rt.join(format!("p-{mode}")))
            .arg("--upstream")
            .arg(format!("socket:{}", rt.join("wl-host").display()))
            .args(["--copy", mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start qvm-wl-proxy: {e}"))?;
        let out = p.stdout.take().ok_or("no proxy stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        children.push(p);
    }
    // The proxies bind their sockets after start-up: a client must not race them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["damage", "whole"]
        .iter()
        .any(|m| !rt.join(format!("p-{m}")).exists())
    {
        if Instant::now() >= deadline {
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err("qvm-wl-proxy never opened its socket".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let weston_ticks = || -> f64 {
        std::fs::read_to_string(format!("/proc/{weston_pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit(')').next()?.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf has no preconditions.
    let tick_us = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let kv = |l: &str, k: &str| -> Option<f64> {
        l.split(' ')
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    // (proxy us, bytes, client us, weston us) for one client of `frames` frames.
    let one = |scene: &str, mode: &str, frames: u32| -> Result<[f64; 4], String> {
        while rx.try_recv().is_ok() {}
        let w0 = weston_ticks();
        let out = Command::new(&demo)
            .args([
                "--transport",
                "socket",
                "--width",
                "1920",
                "--height",
                "1080",
            ])
            .args(["--frames", &frames.to_string(), "--scene", scene])
            .env("XDG_RUNTIME_DIR", &rt)
            .env("WAYLAND_DISPLAY", rt.join(format!("p-{mode}")))
            .output()
            .map_err(|e| e.to_string())?;
        let w1 = weston_ticks();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let done = stdout
            .lines()
            .find(|l| l.starts_with("QVM-WL-DONE"))
            .ok_or_else(|| {
                format!(
                    "demo {scene}/{mode} failed: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let stats = loop {
            let l = rx
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "no stats line from qvm-wl-proxy".to_string())?;
            if l.starts_with("QVM-WL-PROXY-STATS") {
                break l;
            }
        };
        let proxy_us =
            kv(&stats, "user_us").unwrap_or(f64::NAN) + kv(&stats, "sys_us").unwrap_or(f64::NAN);
        Ok([
            proxy_us,
            kv(&stats, "bytes_copied").unwrap_or(f64::NAN),
            kv(done, "cpu_us").unwrap_or(f64::NAN),
            (w1 - w0) * tick_us,
        ])
    };
    let (few, many) = (20u32, 80u32);
    let cases = [
        ("blink", "damage"),
        ("blink", "whole"),
        ("scroll", "damage"),
        ("scroll", "whole"),
    ];
    let mut per: Vec<[Vec<f64>; 4]> = (0..cases.len()).map(|_| Default::default()).collect();
    let mut result = Ok(());
    'runs: for _ in 0..runs {
        for (i, (scene, mode)) in cases.iter().enumerate() {
            let r = one(scene, mode, few).and_then(|a| Ok((a, one(scene, mode, many)?)));
            match r {
                Ok((a, b)) => {
                    for k in 0..4 {
                        per[i][k].push((b[k] - a[k]) / f64::from(many - few));
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break 'runs;
                }
            }
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&rt);
    result?;
    println!(
        "\nqvm-wl-proxy on the host (no VM), 1920x1080 wl_shm client -> proxy -> headless weston; \
         per frame, steady state (80-frame minus 20-frame client), median of {runs}"
    );
    println!("| scene | copy | proxy CPU us/frame | bytes copied/frame | client CPU us/frame | weston CPU us/frame |");
    println!("|---|---|---|---|---|---|");
    for (i, (scene, mode)) in cases.iter().enumerate() {
        let m: Vec<f64> = per[i].iter_mut().map(|v| median(v)).collect();
        println!(
            "| {scene} | {mode} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m[0], m[1], m[2], m[3]
        );
    }
    Ok(())
}

/// `qvm run a -- true` on a stopped VM (cold) and on the running VM (warm), beside the same
/// with a QEMU script: microvm with `vhost-vsock-device` launched in the background, then
/// `qvm-run --cid` over the host's AF_VSOCK retried until the agent answers (cold), and once
/// more (warm). One lab script, runs interleaved; wall times from bash's $EPOCHREALTIME.
fn desktop_bench(runs: usize) -> Result<(), String> {
    const MEM_MIB: u32 = 256; // lab::qemu_microvm_boot_cmd's -m; both have 1 vCPU
    const CID: u32 = 3;
    let kernel = &guest_kernel().vmlinux;
    let initrd = guest_initramfs();
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=agent";
    let d = lab::lab_share_dir().join("desktop-bench");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let domains = d.join("domains.toml");
    std::fs::write(
        &domains,
        format!(
            "[[vm]]\nname = \"a\"\nmemory_mib = {MEM_MIB}\nvcpus = 1\nkernel = {:?}\ninitrd = {:?}\ncmdline = {cmdline:?}\n",
            kernel.display().to_string(),
            initrd.display().to_string(),
        ),
    )
    .map_err(|e| e.to_string())?;
    // The runtime dir lives in L1's /tmp: unix sockets on the 9p share do not work.
    let script = format!(
        r#"set -u
modprobe vhost_vsock 2>/dev/null
export XDG_RUNTIME_DIR=/tmp/qvm-desktop-bench-rt QVM_VMM={vmm}
rm -rf $XDG_RUNTIME_DIR; mkdir -p -m 700 $XDG_RUNTIME_DIR
q="{qvm} --domains {domains}"
now() {{ t=${{EPOCHREALTIME/./}}; }}
for i in $(seq {runs}); do
  now; t0=$t; $q run a -- true </dev/null; rc=$?; now
  echo "SAMPLE qvm-cold $rc $(( (t - t0) / 1000 ))"
  now; t0=$t; $q run a -- true </dev/null; rc=$?; now
  echo "SAMPLE qvm-warm $rc $(( (t - t0) / 1000 ))"
  $q stop a >/dev/null 2>&1
  now; t0=$t
  {qemu} -device vhost-vsock-device,guest-cid={cid} </dev/null >/tmp/qvm-desktop-bench-qemu.log 2>&1 & qp=$!
  rc=1; n=0
  while [ $n -lt 2000 ] && [ -d /proc/$qp ]; do
    {run} --cid {cid} -- true </dev/null 2>/dev/null && {{ rc=0; break; }}
    n=$((n + 1))
  done
  now
  echo "SAMPLE qemu-cold $rc $(( (t - t0) / 1000 )) tries=$((n + 1))"
  now; t0=$t; {run} --cid {cid} -- true </dev/null; rc=$?; now
  echo "SAMPLE qemu-warm $rc $(( (t - t0) / 1000 ))"
  kill $qp; wait $qp 2>/dev/null
done
$q list
"#,
        vmm = vmm_binary().display(),
        qvm = qvm_cli_binary().display(),
        run = qvm_run_binary().display(),
        domains = domains.display(),
        qemu = lab::qemu_microvm_boot_cmd(kernel, initrd, cmdline),
        cid = CID,
    );
    // lab::run uses sh; $EPOCHREALTIME is bash's.
    let bash_script = d.join("bench.sh");
    std::fs::write(&bash_script, script).map_err(|e| e.to_string())?;
    eprintln!("desktop bench: {runs} runs each, interleaved, in one lab script");
    let out = lab::run(
        &format!(
            "exec bash {}",
            lab::shell_quote(&bash_script.to_string_lossy())
        ),
        Duration::from_secs(300 + 240 * runs as u64),
    )
    .map_err(|e| e.to_string())?;
    let keys = ["qvm-cold", "qvm-warm", "qemu-cold", "qemu-warm"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    for l in out.output.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&"SAMPLE") || f.len() < 4 {
            continue;
        }
        let Some(k) = keys.iter().position(|k| *k == f[1]) else {
            continue;
        };
        if f[2] != "0" {
            return Err(format!("{} exited {}:\n{}", f[1], f[2], out.output));
        }
        samples[k].push(f[3].parse().map_err(|_| format!("bad line {l:?}"))?);
    }
    if samples.iter().any(|s| s.len() != runs) {
        return Err(format!("missing samples:\n{}", out.output));
    }
    eprintln!("{}", out.output);
    let cell = |v: &mut Vec<f64>| {
        let (lo, hi) = minmax(v);
        format!("{:.0} ({lo:.0}..{hi:.0})", median(v))
    };
    println!(
        "\n`run -- true` wall time in the lab, ms, median (min..max) of {runs}; {MEM_MIB} MiB, 1 vCPU, same kernel and initramfs"
    );
    println!("| | cold (VM stopped) | warm (VM running) |");
    println!("|---|---|---|");
    let (qvm, qemu) = samples.split_at_mut(2);
    println!(
        "| qvm (`qvm run a -- true`) | {} | {} |",
        cell(&mut qvm[0]),
        cell(&mut qvm[1])
    );
    println!(
        "| QEMU script (microvm + vhost-vsock, `qvm-run --cid`) | {} | {} |",
        cell(&mut qemu[0]),
        cell(&mut qemu[1])
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let skip = |f: &str| args.iter().any(|a| a == f);
    let mut failed = false;
    if !skip("--skip-host") {
        if let Err(e) = host_bench(runs.max(10)) {
            eprintln!("host bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-blk-cost") {
        if let Err(e) = blk_cost_bench() {
            eprintln!("blk cost bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-blk") {
        if let Err(e) = blk_bench(runs) {
            eprintln!("blk bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-net") {
        if let Err(e) = net_bench(runs) {
            eprintln!("net bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-fs") {
        if let Err(e) = fs_bench(runs) {
            eprintln!("fs bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-wl-cost") {
        if let Err(e) = wl_cost_bench() {
            eprintln!("wl cost bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-wl-proxy-host") {
        if let Err(e) = wl_proxy_host_bench(runs.min(5)) {
            eprintln!("wl proxy host bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-wl") {
        if let Err(e) = wl_bench(runs.min(3), skip("--wl-proxy-only")) {
            eprintln!("wl bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-desktop") {
        if let Err(e) = desktop_bench(runs.min(3)) {
            eprintln!("desktop bench failed: {e}");
            failed = true;
        }
    }
    if !skip("--skip-lab") {
        if let Err(e) = lab_boot_bench(runs) {
            eprintln!("lab boot bench failed: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
