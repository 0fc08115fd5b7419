//! What several benches share, so each bench module holds only its own workload: sample
//! statistics and Markdown tables; for the lab benches, the guest command line, the VM config,
//! the project's initramfs with a bench script added and the interleaved qvm-vmm / QEMU runs;
//! for the host benches, callgrind counts of the `src/bin` helpers and a headless weston.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{self, vm_toml, vmm_binary};
use qvm_tests::lab;

/// The median of `v` (sorted in place), NaN when it is empty.
pub fn median(v: &mut [f64]) -> f64 {
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

/// The smallest and the largest of `v`.
pub fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// Prints a blank line, `title`, then a Markdown table's `header` row and its `|---|` row.
pub fn table(title: &str, header: &str) {
    println!("\n{title}");
    println!("{header}");
    println!("{}", rule(header));
}

/// The `|---|` row under a Markdown `header` row: one `---` a column.
fn rule(header: &str) -> String {
    format!("{}|", "|---".repeat(header.matches('|').count() - 1))
}

/// One Markdown row per name: the median of qvm-vmm's samples (`results[0][row]`) beside
/// QEMU's (`results[1][row]`), with `decimals(row)` decimals.
pub fn vmm_rows(
    names: &[impl Display],
    results: &mut [Vec<Vec<f64>>],
    decimals: impl Fn(usize) -> usize,
) {
    for (j, name) in names.iter().enumerate() {
        let prec = decimals(j);
        println!(
            "| {name} | {:.prec$} | {:.prec$} |",
            median(&mut results[0][j]),
            median(&mut results[1][j])
        );
    }
}

/// The number after `key=` in a line of `key=value` words.
pub fn kv(line: &str, key: &str) -> Option<f64> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The kernel command line of a bench guest (one quiet serial console, reboot on panic) with
/// the project's init in `mode`.
pub fn guest_cmdline(mode: &str) -> String {
    format!("console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode={mode}")
}

/// [`guest_cmdline`] for a guest that runs `/<script>` of its initramfs and powers off.
pub fn script_cmdline(script: &str) -> String {
    guest_cmdline(&format!("run qvm.script=/{script}"))
}

/// Writes a 1-vCPU VM config `name` into the lab share (kernel, initrd, memory, command line,
/// then `extra` sections) and returns its path.
pub fn lab_config(
    name: &str,
    kernel: &Path,
    initrd: &Path,
    mem_mib: u32,
    cmdline: &str,
    extra: &str,
) -> Result<PathBuf, String> {
    let cfg = lab::lab_share_dir().join(name);
    let mut text = vm_toml(kernel, Some(initrd), 1, mem_mib, cmdline);
    text.push_str(extra);
    std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The shell command that boots qvm-vmm on `cfg`.
pub fn vmm_cmd(cfg: &Path) -> String {
    format!("{} --config {}", vmm_binary().display(), cfg.display())
}

/// The lab's (or, on hardware KVM, this host's) output of `script`.
pub fn lab_output(script: &str, timeout: Duration) -> Result<String, String> {
    Ok(lab::run(script, timeout).map_err(|e| e.to_string())?.output)
}

/// The two VMMs a lab bench sets side by side, in the order of its columns.
pub const VMMS: [&str; 2] = ["qvm-vmm", "qemu microvm"];

/// Runs `scripts` (qvm-vmm's, then QEMU's) in the lab `runs` times, interleaved, each within
/// 700 s (the scripts' own `timeout 600` and a margin), and hands each output to
/// `take(run, vmm, output)`, `vmm` indexing [`VMMS`]. What `take` returns is printed as
/// `  run N: <it>`; its error ends the bench as `run N: <error>`.
pub fn interleaved(
    runs: usize,
    scripts: [String; 2],
    mut take: impl FnMut(usize, usize, &str) -> Result<String, String>,
) -> Result<(), String> {
    for run in 0..runs {
        for (v, script) in scripts.iter().enumerate() {
            let out = lab_output(script, Duration::from_secs(700))?;
            let progress = take(run, v, &out).map_err(|e| format!("run {}: {e}", run + 1))?;
            eprintln!("  run {}: {progress}", run + 1);
        }
    }
    Ok(())
}

/// The rest of the first `BENCH <job> ...` line a bench guest printed.
pub fn bench_line<'a>(output: &'a str, job: &str) -> Option<&'a str> {
    let prefix = format!("BENCH {job} ");
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
}

/// The project's initramfs with the contents of the directory `extra` added to its root
/// (cached by content like any initramfs); `extra` is removed afterwards.
pub fn initramfs_with_extra(extra: &Path) -> Result<PathBuf, String> {
    let out = Command::new(fixtures::workspace().join("guest/build-initramfs.sh"))
        .env("QVM_INITRAMFS_EXTRA", extra)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(extra);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    ))
}

/// The project's initramfs with `script` added as `/<name>`, for a guest booted with
/// [`script_cmdline`]`(name)`.
pub fn initramfs_with_script(name: &str, script: &str) -> Result<PathBuf, String> {
    let extra = std::env::temp_dir().join(format!("qvm-bench-extra-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&extra).map_err(|e| e.to_string())?;
    std::fs::write(extra.join(name), script).map_err(|e| e.to_string())?;
    initramfs_with_extra(&extra)
}

/// Fails with the package to install when `tool --version` does not run.
pub fn require_tool(tool: &str) -> Result<(), String> {
    if Command::new(tool).arg("--version").output().is_err() {
        return Err(format!("{tool} is not installed (apt-get install {tool})"));
    }
    Ok(())
}

/// The path of `src/bin/<name>`, built beside the running `qvm-bench`.
pub fn helper_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name(name);
    if !bin.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p qvm-benches",
            bin.display()
        ));
    }
    Ok(bin)
}

/// `valgrind --tool=callgrind` writing no profile, then `opts`: the caller adds the program,
/// its arguments and environment, and hands it to [`collected`].
pub fn callgrind(opts: &[&str]) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .args(opts);
    cmd
}

/// Runs a [`callgrind`] command and returns the instructions it collected; `what` names the
/// run in errors.
pub fn collected(mut cmd: Command, what: &str) -> Result<f64, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{what} failed: {err}"));
    }
    err.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no 'Collected' line from callgrind: {err}"))
}

/// The cost of one more unit (request, frame): `measure` at `few` units, then at `many`, the
/// difference over `many - few`, so set-up and teardown cancel out.
pub fn per_unit<const N: usize>(
    few: u32,
    many: u32,
    mut measure: impl FnMut(u32) -> Result<[f64; N], String>,
) -> Result<[f64; N], String> {
    let a = measure(few)?;
    let b = measure(many)?;
    Ok(std::array::from_fn(|k| {
        (b[k] - a[k]) / f64::from(many - few)
    }))
}

/// Kills and reaps a child the bench started (errors ignored: it may have exited).
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A headless weston (pixman, animations off) on `rt/socket` for the host-side benches,
/// started with `rt` as its private XDG_RUNTIME_DIR (created 0700) and waited for.
pub fn start_host_weston(
    rt: &Path,
    socket: &str,
    width: u32,
    height: u32,
) -> Result<Child, String> {
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
            stop(&mut weston);
            let log = std::fs::read_to_string(rt.join("weston.log")).unwrap_or_default();
            return Err(format!("weston never opened {socket}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(weston)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_has_one_dash_cell_per_column() {
        assert_eq!(rule("| phase | median ms |"), "|---|---|");
        assert_eq!(
            rule("| | cold (VM stopped) | warm (VM running) |"),
            "|---|---|---|"
        );
    }

    #[test]
    fn cmdlines_are_the_ones_the_benches_always_booted() {
        assert_eq!(
            guest_cmdline("hello"),
            "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=hello"
        );
        assert_eq!(
            script_cmdline("wl-bench.sh"),
            "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run \
             qvm.script=/wl-bench.sh"
        );
    }

    #[test]
    fn per_unit_is_the_difference_over_the_count_difference() {
        let cost = per_unit(20, 80, |n| Ok([100.0 + 3.0 * f64::from(n), 7.0]));
        assert_eq!(cost, Ok([3.0, 0.0]));
        let mut calls = Vec::new();
        let failed = per_unit(1, 2, |n| {
            calls.push(n);
            Err::<[f64; 1], _>(format!("no {n}"))
        });
        assert_eq!((failed, calls), (Err("no 1".to_string()), vec![1]));
    }

    #[test]
    fn kv_and_bench_line_read_the_guests_lines() {
        let line = "QVM-WL-DONE frames=16 fps=12.5 cpu_us=900";
        assert_eq!(kv(line, "fps"), Some(12.5));
        assert_eq!(kv(line, "frames"), Some(16.0));
        assert_eq!(kv(line, "busy_ms"), None);
        let out = "noise\r\n  BENCH seq-read 33554432 1.00 3.00\nBENCH seq-read again\n";
        assert_eq!(bench_line(out, "seq-read"), Some("33554432 1.00 3.00"));
        assert_eq!(bench_line(out, "seq"), None);
    }

    #[test]
    fn median_and_minmax() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
        assert_eq!(minmax(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
    }
}
