//! README section (1), `--skip-host`: on this host's /dev/kvm with a tiny guest (128 MiB, prints
//! and halts), qvm-vmm's exec-to-first-`KVM_RUN` time, its start-up phases
//! (`--report-boot-time`) and its RSS beyond guest memory, beside QEMU microvm started paused
//! (`-S`) with the same memory (exec to its pidfile, total RSS). No lab, no guest kernel.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{tiny, tiny_elf, vm_toml, vmm_binary};

use crate::common::{median, minmax, require_tool, stop, table};

/// CLOCK_MONOTONIC in ns, the clock of qvm-vmm's `--report-boot-time` lines.
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

/// Starts `cmd` with no stdin, no stdout and `stderr` as given.
fn spawn(cmd: &mut Command, stderr: Stdio) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| e.to_string())
}

/// `runs` starts of qvm-vmm, then `runs` of QEMU (when installed), then the tables.
pub fn bench(runs: usize) -> Result<(), String> {
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
        let mut child = spawn(
            Command::new(&vmm)
                .args(["--report-boot-time", "--config"])
                .arg(&cfg),
            Stdio::piped(),
        )?;
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
    let qemu_ok = require_tool("qemu-system-x86_64").is_ok();
    if qemu_ok {
        for i in 0..runs {
            let pidfile = dir.join(format!("qemu-{i}.pid"));
            let t0 = Instant::now();
            let mut child = spawn(
                Command::new("qemu-system-x86_64")
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
                    .arg(&pidfile),
                Stdio::null(),
            )?;
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
            stop(&mut child);
        }
    }

    table(
        &format!("On this host's /dev/kvm, tiny guest ({mem_mib} MiB), {runs} runs each"),
        "| measure | qvm-vmm median | min..max | target | QEMU microvm -S median |",
    );
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
    table(
        "qvm-vmm start-up phases (median ms since the previous phase; the first since exec)",
        "| phase | median ms |",
    );
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
