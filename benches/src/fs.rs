//! README section (6), `--skip-fs`: virtio-fs in the guest in the lab (sequential write/read
//! MB/s with dd; create, stat and unlink of small files per second with busybox sh builtins),
//! one virtiofsd binary started with the same options for both, qvm-vmm beside QEMU microvm's
//! `vhost-user-fs-device` (memfd RAM), runs interleaved.

use qvm_tests::fixtures::{self, guest_kernel};
use qvm_tests::lab;

use crate::common::{
    bench_line, initramfs_with_script, interleaved, lab_config, script_cmdline, table, vmm_cmd,
    vmm_rows, VMMS,
};

/// In-guest virtio-fs throughput and metadata rate on a share served by one virtiofsd binary,
/// started by the lab script with the same options for both VMMs (those qvm-vmm uses when it
/// starts virtiofsd itself); qvm-vmm gets only `tag` + `socket`. Runs interleaved.
pub fn bench(runs: usize) -> Result<(), String> {
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
    let cmdline = script_cmdline("fs-bench.sh");
    let fs = format!("\n[[fs]]\ntag = \"share\"\nsocket = \"{DIR}/share.sock\"\n");
    let cfg = lab_config("fs-bench.toml", kernel, &initrd, 256, &cmdline, &fs)?;
    let qvm = format!("{} </dev/null 2>&1", vmm_cmd(&cfg));
    // vhost-user needs the guest RAM in shared memory: a memfd backend of the -m size (the
    // second -machine merges with the helper's -M microvm).
    let qemu = format!(
        "{} -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
         -chardev socket,id=fs0,path={DIR}/share.sock -device vhost-user-fs-device,chardev=fs0,tag=share \
         </dev/null 2>&1",
        lab::qemu_microvm_boot_cmd(kernel, &initrd, &cmdline),
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
    interleaved(runs, [wrap(&qvm), wrap(&qemu)], |run, v, out| {
        let name = VMMS[v];
        let fail = |what: &str| format!("{name}: {what}:\n{out}");
        if out.contains("BENCH-ERROR") || !out.contains("VMM-EXIT 0") {
            return Err(fail("the guest or the VMM reported an error"));
        }
        let mut meta_secs = 0.0;
        for (j, job) in jobs.iter().enumerate() {
            let f: Vec<f64> = bench_line(out, job)
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
        Ok(format!(
            "{name}: write {:.1} MB/s, read {:.1} MB/s, create+stat+unlink {:.0} files/s",
            results[v][0][run],
            results[v][1][run],
            results[v][jobs.len()][run]
        ))
    })?;
    table(
        &format!("In-guest virtio-fs (same virtiofsd --cache=auto, host dir on L1 tmpfs), median of {runs} runs; guest clock /proc/uptime (10 ms)"),
        "| measure | qvm-vmm | QEMU microvm |",
    );
    let names = [
        format!("sequential write, dd {MIB} MiB bs=1M conv=fsync, MB/s"),
        format!("sequential read, dd {MIB} MiB bs=1M after drop_caches, MB/s"),
        format!("create {FILES} small files (echo x >f), files/s"),
        format!("stat {FILES} files after drop_caches ([ -f ]), files/s"),
        format!("unlink {FILES} files (one rm: readdir, lstat + unlink), files/s"),
        format!("create + stat + unlink {FILES} files, files/s"),
    ];
    // MB/s with one decimal, files/s with none.
    vmm_rows(&names, &mut results, |j| if j < 2 { 1 } else { 0 });
    Ok(())
}
