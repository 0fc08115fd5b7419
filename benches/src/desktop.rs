//! README section (9), `--skip-desktop`: the qvm desktop's `qvm run a -- true` wall time in the
//! lab, cold (VM stopped: boot, agent, command) and warm (VM running), beside the same VM
//! jailed by qvm-jailer (`jail = { uid, gid }`, as root in L1: what the sandbox costs) and a
//! QEMU script (microvm with `vhost-vsock-device` in the background, `qvm-run --cid` retried
//! until the agent answers, then once more); same kernel, initramfs, memory and vCPUs, runs
//! interleaved in one lab script.

use std::time::Duration;

use qvm_tests::fixtures::{
    guest_initramfs, guest_kernel, qvm_cli_binary, qvm_jailer_binary, qvm_run_binary, vmm_binary,
};
use qvm_tests::lab;

use crate::common::{guest_cmdline, lab_output, median, minmax, table};

/// `qvm run a -- true` on a stopped VM (cold) and on the running VM (warm), beside the same
/// with a QEMU script: microvm with `vhost-vsock-device` launched in the background, then
/// `qvm-run --cid` over the host's AF_VSOCK retried until the agent answers (cold), and once
/// more (warm). One lab script, runs interleaved; wall times from bash's $EPOCHREALTIME.
pub fn bench(runs: usize) -> Result<(), String> {
    const MEM_MIB: u32 = 256; // lab::qemu_microvm_boot_cmd's -m; both have 1 vCPU
    const CID: u32 = 3;
    /// The jailed VM's uid and gid (no account needed).
    const JAIL_UID: u32 = 4244;
    let kernel = &guest_kernel().vmlinux;
    let initrd = guest_initramfs();
    let cmdline = guest_cmdline("agent");
    let d = lab::lab_share_dir().join("desktop-bench");
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    let domains = d.join("domains.toml");
    // `a` runs as the user (here root), `j` the same VM through qvm-jailer.
    let vm = |name: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nmemory_mib = {MEM_MIB}\nvcpus = 1\nkernel = {:?}\ninitrd = {:?}\ncmdline = {cmdline:?}\n",
            kernel.display().to_string(),
            initrd.display().to_string(),
        )
    };
    std::fs::write(
        &domains,
        format!(
            "{}{}jail = {{ uid = {JAIL_UID}, gid = {JAIL_UID}, jail_base = \"/tmp/qvm-bench-jail\", cgroup_base = \"/sys/fs/cgroup/qvm-bench\" }}\n",
            vm("a"),
            vm("j"),
        ),
    )
    .map_err(|e| e.to_string())?;
    // The runtime dir lives in L1's /tmp: unix sockets on the 9p share do not work.
    let script = format!(
        r#"set -u
modprobe vhost_vsock 2>/dev/null
export XDG_RUNTIME_DIR=/tmp/qvm-desktop-bench-rt QVM_VMM={vmm} QVM_JAILER={jailer}
rm -rf $XDG_RUNTIME_DIR; mkdir -p -m 755 $XDG_RUNTIME_DIR
q="{qvm} --domains {domains}"
now() {{ t=${{EPOCHREALTIME/./}}; }}
for i in $(seq {runs}); do
  now; t0=$t; $q run a -- true </dev/null; rc=$?; now
  echo "SAMPLE qvm-cold $rc $(( (t - t0) / 1000 ))"
  now; t0=$t; $q run a -- true </dev/null; rc=$?; now
  echo "SAMPLE qvm-warm $rc $(( (t - t0) / 1000 ))"
  $q stop a >/dev/null 2>&1
  now; t0=$t; $q run j -- true </dev/null; rc=$?; now
  echo "SAMPLE jailed-cold $rc $(( (t - t0) / 1000 ))"
  now; t0=$t; $q run j -- true </dev/null; rc=$?; now
  echo "SAMPLE jailed-warm $rc $(( (t - t0) / 1000 ))"
  $q stop j >/dev/null 2>&1
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
        jailer = qvm_jailer_binary().display(),
        domains = domains.display(),
        qemu = lab::qemu_microvm_boot_cmd(kernel, initrd, &cmdline),
        cid = CID,
    );
    // lab::run uses sh; $EPOCHREALTIME is bash's.
    let bash_script = d.join("bench.sh");
    std::fs::write(&bash_script, script).map_err(|e| e.to_string())?;
    eprintln!("desktop bench: {runs} runs each, interleaved, in one lab script");
    let out = lab_output(
        &format!(
            "exec bash {}",
            lab::shell_quote(&bash_script.to_string_lossy())
        ),
        Duration::from_secs(300 + 360 * runs as u64),
    )?;
    let keys = [
        "qvm-cold",
        "qvm-warm",
        "jailed-cold",
        "jailed-warm",
        "qemu-cold",
        "qemu-warm",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&"SAMPLE") || f.len() < 4 {
            continue;
        }
        let Some(k) = keys.iter().position(|k| *k == f[1]) else {
            continue;
        };
        if f[2] != "0" {
            return Err(format!("{} exited {}:\n{}", f[1], f[2], out));
        }
        samples[k].push(f[3].parse().map_err(|_| format!("bad line {l:?}"))?);
    }
    if samples.iter().any(|s| s.len() != runs) {
        return Err(format!("missing samples:\n{}", out));
    }
    eprintln!("{}", out);
    let cell = |v: &mut Vec<f64>| {
        let (lo, hi) = minmax(v);
        format!("{:.0} ({lo:.0}..{hi:.0})", median(v))
    };
    table(
        &format!("`run -- true` wall time in the lab, ms, median (min..max) of {runs}; {MEM_MIB} MiB, 1 vCPU, same kernel and initramfs"),
        "| | cold (VM stopped) | warm (VM running) |",
    );
    let labels = [
        "qvm (`qvm run a -- true`)",
        "qvm, jailed by qvm-jailer (`jail = { uid, gid }`)",
        "QEMU script (microvm + vhost-vsock, `qvm-run --cid`)",
    ];
    // samples: cold and warm of each, in the order of `keys`.
    for (label, s) in labels.iter().zip(samples.chunks_mut(2)) {
        println!("| {label} | {} | {} |", cell(&mut s[0]), cell(&mut s[1]));
    }
    // Issue 17's bar: the sandbox costs at most 10% cold and 5% warm.
    let mut cost = |jailed: usize, plain: usize| {
        let (j, p) = (median(&mut samples[jailed]), median(&mut samples[plain]));
        100.0 * (j - p) / p
    };
    println!(
        "\nthe jail's cost (medians): cold {:+.1}%, warm {:+.1}%",
        cost(2, 0),
        cost(3, 1)
    );
    Ok(())
}
