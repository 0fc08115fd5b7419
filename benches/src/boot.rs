//! README section (2), `--skip-lab` leaves it out: boot time to the guest's userspace marker in
//! the nested KVM lab (or on this host's hardware KVM), qvm-vmm beside
//! `qemu-system-x86_64 -M microvm -accel kvm` with the same kernel (PVH vmlinux, then bzImage),
//! initrd and command line, runs interleaved, median of N each. Wall time from exec to the
//! marker comes from bash's $EPOCHREALTIME (no fork, which costs 100+ ms per exec under TCG);
//! the guest's own uptime at the marker is printed beside it.

use std::time::Duration;

use qvm_tests::fixtures::{self, guest_initramfs, guest_kernel};
use qvm_tests::lab;

use crate::common::{guest_cmdline, lab_config, lab_output, median, minmax, table, vmm_cmd};

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

/// One boot: ms from exec to the marker, and the guest's uptime then.
struct Sample {
    wall_ms: f64,
    uptime_s: f64,
}

/// The [`Sample`] of a [`timed_boot_script`]'s output, or why the boot failed.
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

/// Boots each row's VMM and kernel `runs` times, the rows interleaved in every run.
pub fn bench(runs: usize) -> Result<(), String> {
    let k = guest_kernel();
    let initrd = guest_initramfs();
    let cmdline = guest_cmdline("hello");
    // (label, the timed script that boots it)
    let mut rows: Vec<(String, String)> = Vec::new();
    for (label, kernel) in [("vmlinux (PVH)", &k.vmlinux), ("bzImage", &k.bzimage)] {
        let name = format!("bench-{}.toml", label.split(' ').next().unwrap_or("k"));
        let cfg = lab_config(&name, kernel, initrd, 256, &cmdline, "")?;
        rows.push((
            format!("qvm-vmm, {label}"),
            timed_boot_script(&vmm_cmd(&cfg)),
        ));
        let qemu = lab::qemu_microvm_boot_cmd(kernel, initrd, &cmdline);
        rows.push((format!("qemu microvm, {label}"), timed_boot_script(&qemu)));
    }
    let where_ = match lab::mode() {
        lab::Mode::Lab => "nested KVM lab (L1 = QEMU TCG, L2 on kvm_amd)",
        lab::Mode::Direct => "this host's hardware KVM",
    };
    eprintln!("boot bench: {runs} runs per row in {where_}; starting ...");
    let mut samples: Vec<Vec<Sample>> = rows.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (i, (label, script)) in rows.iter().enumerate() {
            let out = lab_output(script, Duration::from_secs(600))?;
            let s = parse_sample(&out).map_err(|e| format!("{label}: {e}"))?;
            eprintln!(
                "  run {}: {label}: {:.0} ms wall, guest uptime {:.2} s",
                run + 1,
                s.wall_ms,
                s.uptime_s
            );
            samples[i].push(s);
        }
    }
    table(
        &format!("Boot to guest userspace marker ({where_}), 1 vCPU, 256 MiB, same kernel/initrd/cmdline, {runs} runs each, interleaved"),
        "| VMM, kernel | median wall ms (exec to marker) | min..max ms | median guest uptime at marker s |",
    );
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
