//! README section (4), `--skip-blk-cost`: on the host with no guest, the user-space instructions
//! our virtio-blk device spends per request (4 KiB read, 4 KiB write, flush): `qvm-blk-cost`
//! (`src/bin`) under callgrind at two request counts, the difference over the count difference.
//! A deterministic figure for our device alone; its QEMU peer is the in-guest bench in `blk`.

use std::process::Command;

/// Instructions (user space, as callgrind counts them) per virtio-blk request of our device:
/// `qvm-blk-cost` run for two request counts, the difference divided by the count difference.
pub fn bench() -> Result<(), String> {
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
