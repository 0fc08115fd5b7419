//! README section (4), `--skip-blk-cost`: on the host with no guest, the user-space instructions
//! our virtio-blk device spends per request (4 KiB read, 4 KiB write, flush): `qvm-blk-cost`
//! (`src/bin`) under callgrind at two request counts, the difference over the count difference.
//! A deterministic figure for our device alone; its QEMU peer is the in-guest bench in `blk`.

use crate::common::{callgrind, collected, helper_binary, per_unit, require_tool, table};

/// Instructions (user space, as callgrind counts them) per virtio-blk request of our device:
/// `qvm-blk-cost` run for two request counts, the difference divided by the count difference.
pub fn bench() -> Result<(), String> {
    require_tool("valgrind")?;
    let cost = helper_binary("qvm-blk-cost")?;
    let img = std::env::temp_dir().join(format!("qvm-blk-cost-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .map_err(|e| e.to_string())?;
    let instructions = |kind: &str, n: u32| -> Result<[f64; 1], String> {
        let mut cmd = callgrind(&[]);
        cmd.arg(&cost).args([kind, &n.to_string()]).arg(&img);
        Ok([collected(cmd, &format!("qvm-blk-cost {kind} {n}"))?])
    };
    table(
        "virtio-blk device cost on the host, no guest (callgrind, user-space instructions)",
        "| request | instructions per request |",
    );
    let mut result = Ok(());
    for kind in ["read", "write", "flush"] {
        // A failed kind leaves its row out; the others still print.
        match per_unit(1_000, 11_000, |n| instructions(kind, n)) {
            Ok([per_request]) => {
                let label = if kind == "flush" {
                    "flush"
                } else {
                    &format!("{kind} 4 KiB")
                };
                println!("| {label} | {per_request:.0} |");
            }
            Err(e) => result = Err(e),
        }
    }
    let _ = std::fs::remove_file(&img);
    result
}
