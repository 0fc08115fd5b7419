//! The jail must fail loudly if it has a hole. Each test runs `qvm-jailer` as root inside the
//! lab (L1 has cgroup2 at /sys/fs/cgroup and a real /dev/kvm), with the VM's writable files in
//! L1's /tmp owned by the VM's uid, and checks from outside what the jailed VMM can see and
//! hold: its root directory, its ids and capabilities, its cgroup and namespaces; that limits
//! are refused or enforced; and that Landlock denies files outside the VM's.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{
    disk_toml, guest_initramfs, guest_kernel, script_disk, tiny, tiny_elf, vm_toml, vmm_binary,
    workspace, USERSPACE_MARKER,
};
use qvm_tests::lab::{self, CmdOutput};
use qvm_tests::util::share_dir;

const UID: u32 = 4242;
const TIMEOUT: Duration = Duration::from_secs(600);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet";
const CGROUP_BASE: &str = "/sys/fs/cgroup/qvm";
/// L1's root is read-only; its /tmp is not.
const JAIL_BASE: &str = "/tmp/qvm-jail";

/// qvm-jailer, built next to qvm-vmm (cargo does not build another package's binaries).
fn jailer_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = vmm_binary().parent().unwrap().to_path_buf();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace()).args([
            "build",
            "--quiet",
            "-p",
            "qvm-jailer",
            "--bin",
            "qvm-jailer",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building qvm-jailer failed"
        );
        dir.join("qvm-jailer")
    })
    .clone()
}

/// Shell lines that create `/tmp/qvm-jt-<name>/` in L1 with `vm.toml` (text `toml`), a decoy
/// file next to it, all owned by the VM's uid. `$D` names the directory afterwards.
fn setup(name: &str, toml: &str) -> String {
    format!(
        "set -u\nD=/tmp/qvm-jt-{name}\nrm -rf $D && mkdir -p $D\n\
         cat > $D/vm.toml <<'QVM_EOF'\n{toml}QVM_EOF\n\
         echo another-vms-secret > $D/other-vm.img\n\
         chown -R {UID}:{UID} $D\n\
         J={jailer}\n",
        jailer = jailer_binary().display()
    )
}

fn jailer_args(id: &str) -> String {
    format!("--id {id} --uid {UID} --gid {UID} --jail-base {JAIL_BASE} --cgroup-base {CGROUP_BASE} --config $D/vm.toml")
}

fn hello_toml(mode: &str, extra: &str) -> String {
    let mut t = vm_toml(
        &guest_kernel().bzimage,
        Some(guest_initramfs()),
        1,
        256,
        &format!("{CMDLINE} qvm.mode={mode}"),
    );
    t.push_str(extra);
    t
}

fn run(name: &str, script: &str) -> CmdOutput {
    let start = Instant::now();
    let r = lab::run(script, TIMEOUT).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: lab script took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    r
}

fn line_with<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[test]
fn a_jailed_vm_boots_to_userspace_and_powers_off() {
    let script = setup("hello", &hello_toml("hello", ""))
        + &format!(
            "timeout 500 $J {} </dev/null 2>&1; echo \"JAILER-EXIT $?\"\n\
             [ -e {CGROUP_BASE}/hello ] && echo CGROUP-LEFT || echo CGROUP-GONE\n\
             [ -e {JAIL_BASE}/hello ] && echo JAIL-DIR-LEFT || echo JAIL-DIR-GONE\n",
            jailer_args("hello")
        );
    let r = run("hello", &script);
    let out = &r.output;
    assert!(out.contains("JAILER-EXIT 0"), "{out}");
    assert!(out.contains(USERSPACE_MARKER), "{out}");
    assert!(out.contains("Hello from a qvm guest: Linux 6.12"), "{out}");
    assert!(out.contains("qvm-vmm: guest powered off"), "{out}");
    assert!(out.contains("qvm-jailer: VM hello runs as pid"), "{out}");
    assert!(
        out.contains("CGROUP-GONE"),
        "the jailer left its cgroup: {out}"
    );
    assert!(
        out.contains("JAIL-DIR-GONE"),
        "the jailer left its jail dir: {out}"
    );
}

#[test]
fn the_jailed_vmm_sees_only_its_files_and_holds_no_privileges() {
    // A guest that stays up (a read-only script disk), so the VMM can be inspected from outside.
    let share = share_dir("jail-inspect");
    let disk = share.join("script.img");
    script_disk(&disk, "echo GUEST-UP\nsleep 120\n");
    // Another VM's disk next to this one's: must stay outside.
    std::fs::write(share.join("decoy-vm2.img"), b"not yours").unwrap();
    let toml = hello_toml("run qvm.script=/dev/vda", &disk_toml(&disk, true, None));
    let kernel = guest_kernel().bzimage.display().to_string();
    let decoy = share.join("decoy-vm2.img").display().to_string();
    let script = setup("inspect", &toml)
        + &format!(
            "$J {args} </dev/null >$D/out 2>&1 &\n\
             JP=$!\n\
             i=0\n\
             while ! grep -q GUEST-UP $D/out; do\n\
               sleep 1; i=$((i+1))\n\
               if [ $i -gt 400 ] || ! kill -0 $JP 2>/dev/null; then echo NO-GUEST; cat $D/out; kill $JP; exit 1; fi\n\
             done\n\
             P=$(sed -n 's/.*runs as pid \\([0-9]*\\).*/\\1/p' $D/out)\n\
             echo \"VMM-PID $P\"\n\
             R=/proc/$P/root/\n\
             echo \"ROOT-LIST $(ls -A $R | tr '\\n' ' ')\"\n\
             for f in /home /root/.bashrc /etc /etc/shadow /etc/passwd /usr/bin/sh /proc /sys $D/other-vm.img {decoy} {jail_base}; do\n\
               if [ -e \"$R${{f#/}}\" ]; then echo \"VISIBLE $f\"; else echo \"ABSENT $f\"; fi\n\
             done\n\
             [ -f \"$R.{kernel}\" ] && echo KERNEL-VISIBLE\n\
             [ -f \"$R.{disk}\" ] && echo DISK-VISIBLE\n\
             echo \"FILE-COUNT $(find $R ! -type d | wc -l)\"\n\
             find $R ! -type d | sed \"s|^$R|  in jail: /|\"\n\
             grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/$P/status\n\
             echo \"CGROUP $(cat /proc/$P/cgroup)\"\n\
             for ns in mnt pid ipc uts net; do echo \"NS $ns $(readlink /proc/$P/ns/$ns) $(readlink /proc/self/ns/$ns)\"; done\n\
             echo \"MEMORY-MAX $(cat {CGROUP_BASE}/inspect/memory.max) PIDS-MAX $(cat {CGROUP_BASE}/inspect/pids.max)\"\n\
             kill -TERM $JP\n\
             wait $JP; echo \"JAILER-EXIT $?\"\n\
             [ -e {CGROUP_BASE}/inspect ] && echo CGROUP-LEFT || echo CGROUP-GONE\n\
             tail -3 $D/out\n",
            args = jailer_args("inspect"),
            jail_base = JAIL_BASE,
            disk = disk.display(),
        );
    let r = run("inspect", &script);
    let out = &r.output;
    eprintln!("{out}");
    assert_eq!(r.code, 0, "{out}");
    // The root shows the VM's files and nothing else.
    for f in [
        "/home",
        "/etc",
        "/etc/shadow",
        "/etc/passwd",
        "/usr/bin/sh",
        "/proc",
        "/sys",
        "/tmp/qvm-jt-inspect/other-vm.img",
        &decoy,
        JAIL_BASE,
    ] {
        assert!(
            out.contains(&format!("ABSENT {f}\n")),
            "{f} is visible in the jail:\n{out}"
        );
    }
    assert!(!out.contains("VISIBLE /"), "{out}");
    assert!(
        out.contains("KERNEL-VISIBLE") && out.contains("DISK-VISIBLE"),
        "{out}"
    );
    assert!(out.contains("ABSENT /root/.bashrc\n"), "{out}");
    // Every file in the jail is one the VM needs: its config, kernel, initrd and disk, the
    // VMM and its libraries, three device nodes. Nothing else (no /etc, no other VM's files).
    let files: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("  in jail: "))
        .collect();
    let count: usize = line_with(out, "FILE-COUNT ")[11..].trim().parse().unwrap();
    assert_eq!(files.len(), count, "{out}");
    let vmm = vmm_binary().display().to_string();
    let initrd = guest_initramfs().display().to_string();
    let disk_s = disk.display().to_string();
    let expected = [
        "/dev/kvm",
        "/dev/null",
        "/dev/urandom",
        "/tmp/qvm-jt-inspect/vm.toml",
        kernel.as_str(),
        initrd.as_str(),
        disk_s.as_str(),
        vmm.as_str(),
    ];
    for f in &files {
        let lib = f.starts_with("/lib/") || f.starts_with("/lib64/") || f.starts_with("/usr/lib");
        assert!(
            expected.contains(f) || (lib && f.contains(".so")),
            "unexpected file in the jail: {f}\n{out}"
        );
    }
    for f in expected {
        assert!(files.contains(&f), "{f} missing from the jail:\n{out}");
    }
    eprintln!("{count} files visible in the jail");
    // Its own uid, no capabilities, no way to gain any, seccomp filtering.
    let field = |k: &str| {
        line_with(out, &format!("{k}:"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid"), format!("{UID} {UID} {UID} {UID}"), "{out}");
    assert_eq!(field("Gid"), format!("{UID} {UID} {UID} {UID}"), "{out}");
    assert_eq!(field("Groups"), "", "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}: {out}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "{out}");
    assert_eq!(field("Seccomp"), "2", "{out}");
    assert_eq!(line_with(out, "CGROUP "), "CGROUP 0::/qvm/inspect", "{out}");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let l = line_with(out, &format!("NS {ns} "));
        let v: Vec<&str> = l.split_whitespace().collect();
        assert_ne!(v[2], v[3], "the VMM shares L1's {ns} namespace: {l}");
    }
    let net = line_with(out, "NS net ");
    let v: Vec<&str> = net.split_whitespace().collect();
    assert_eq!(v[2], v[3], "no --netns: L1's network namespace: {net}");
    // auto = 256 MiB guest + 64 MiB.
    assert!(
        out.contains(&format!("MEMORY-MAX {} PIDS-MAX 68", 320u64 << 20)),
        "{out}"
    );
    // SIGTERM to the jailer reaches the VMM, which stops (128 + 15), and the cgroup goes.
    assert!(out.contains("JAILER-EXIT 143"), "{out}");
    assert!(out.contains("CGROUP-GONE"), "{out}");
}

#[test]
fn memory_max_below_guest_memory_is_refused_at_start() {
    let script = setup("mem", &hello_toml("hello", ""))
        + &format!(
            "$J {} --memory-max 64M </dev/null 2>&1; echo \"JAILER-EXIT $?\"\n\
             [ -e {CGROUP_BASE}/mem ] && echo CGROUP-LEFT || echo NO-CGROUP\n",
            jailer_args("mem")
        );
    let r = run("mem", &script);
    let out = &r.output;
    assert!(out.contains("JAILER-EXIT 2"), "{out}");
    assert!(
        out.contains(
            "qvm-jailer: error: --memory-max 64 MiB is less than the VM's 256 MiB of guest \
             memory plus 64 MiB overhead; use at least 320 MiB or --memory-max auto"
        ),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("error")).count(),
        1,
        "{out}"
    );
    assert!(out.contains("NO-CGROUP"), "{out}");
    assert!(!out.contains("runs as pid"), "{out}");
}

#[test]
fn a_pids_limit_stops_a_fork_bomb_in_the_jail() {
    // The jailer itself, exec'd in the jail as the helper, forks up to 200 sleeping children
    // (debug builds only); pids.max 16 must stop it long before.
    let script = setup("bomb", &hello_toml("hello", ""))
        + &format!(
            "timeout 120 $J {} --pids-max 16 --exec-file $J -- --test-fork-bomb 200 </dev/null 2>&1\n\
             echo \"JAILER-EXIT $?\"\n\
             [ -e {CGROUP_BASE}/bomb ] && echo CGROUP-LEFT || echo CGROUP-GONE\n\
             /bin/true && echo HOST-CAN-FORK\n",
            jailer_args("bomb")
        );
    let r = run("bomb", &script);
    let out = &r.output;
    assert!(out.contains("JAILER-EXIT 0"), "{out}");
    let forked = line_with(out, "fork bomb: pid");
    assert!(
        forked.starts_with("fork bomb: pid 1 "),
        "the helper is pid 1 of its namespace: {forked}"
    );
    let n: usize = forked
        .split_whitespace()
        .nth(5)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{forked}"));
    assert!(n < 16, "{n} forks got through a pids.max of 16: {out}");
    assert!(out.contains("failed: EAGAIN"), "{out}");
    assert!(
        out.contains("qvm-jailer: the VM hit its pids limit (pids.max 16)"),
        "the cgroup, not something else, must have stopped it: {out}"
    );
    assert!(out.contains("CGROUP-GONE"), "{out}");
    assert!(out.contains("HOST-CAN-FORK"), "{out}");
}

/// `kill -9` of the jailer takes the VMM with it (PDEATHSIG, set after the uid change): no VM
/// outlives the process that was meant to stop it.
#[test]
fn killing_the_jailer_kills_the_vmm() {
    let dir = share_dir("jail-orphan");
    let k = dir.join("up.elf");
    std::fs::write(
        &k,
        tiny_elf(&[tiny::print("TINY-UP\n"), tiny::halt_forever()].concat()),
    )
    .unwrap();
    let script = setup("orphan", &vm_toml(&k, None, 1, 64, "console=ttyS0"))
        + &format!(
            r#"$J {args} </dev/null >$D/out 2>&1 &
j=$!
i=0; until grep -q TINY-UP $D/out; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.1; done
vmm=$(sed -n 's/.*runs as pid \([0-9]*\).*/\1/p' $D/out)
live() {{ [ -n "$vmm" ] && [ -d /proc/$vmm ] && ! grep -q '^State:.*Z' /proc/$vmm/status 2>/dev/null; }}
live && echo "VMM-BEFORE alive" || echo "VMM-BEFORE gone"
kill -9 $j
i=0; while live && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
live && echo "VMM-AFTER alive" || echo "VMM-AFTER gone"
live && kill -9 $vmm
cat $D/out
# A jailer killed with SIGKILL leaves its cgroup and jail directory: clear them for a rerun.
rmdir {CGROUP_BASE}/orphan 2>/dev/null; rm -rf {JAIL_BASE}/orphan
"#,
            args = jailer_args("orphan")
        );
    let r = run("orphan", &script);
    let out = &r.output;
    assert!(out.contains("VMM-BEFORE alive"), "{out}");
    assert!(out.contains("VMM-AFTER gone"), "{out}");
}

/// A tiny guest (no Linux) that powers off at once. Its kernel stays in the lab's 9p share:
/// unjailed Landlock must cope with a file system that drops unused inodes at once.
fn tiny_vm(name: &str) -> String {
    let dir = share_dir(&format!("jail-{name}"));
    let k = dir.join("poweroff.elf");
    let mut code = tiny::print("TINY-UP\n");
    code.extend(tiny::acpi_poweroff());
    code.extend(tiny::halt_forever());
    std::fs::write(&k, tiny_elf(&code)).unwrap();
    vm_toml(&k, None, 1, 64, "console=ttyS0")
}

fn landlock_in_l1() -> Option<String> {
    let r = run(
        "lsm",
        "[ -r /sys/kernel/security/lsm ] || mount -t securityfs securityfs /sys/kernel/security 2>/dev/null\n\
         cat /sys/kernel/security/lsm; echo",
    );
    let lsm = r.output.trim().to_string();
    if lsm.split(',').any(|l| l == "landlock") {
        None
    } else {
        Some(format!("L1's kernel has no Landlock (lsm: {lsm:?})"))
    }
}

#[test]
fn landlock_denies_files_outside_the_vms_own() {
    if let Some(why) = landlock_in_l1() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let script = setup("landlock", &tiny_vm("landlock"))
        + &format!(
            "QVM_TEST_LANDLOCK=/etc/hostname timeout 120 {vmm} --config $D/vm.toml --seccomp off </dev/null 2>&1\n\
             echo \"VMM-EXIT $?\"\n\
             QVM_TEST_LANDLOCK=/etc/hostname timeout 120 {vmm} --config $D/vm.toml --seccomp off --landlock off </dev/null 2>&1\n\
             echo \"VMM-EXIT $?\"\n\
             QVM_TEST_LANDLOCK=$D/vm.toml timeout 120 $J {args} -- --seccomp off </dev/null 2>&1\n\
             echo \"JAILER-EXIT $?\"\n",
            vmm = vmm_binary().display(),
            args = jailer_args("landlock"),
        );
    let r = run("landlock", &script);
    let out = &r.output;
    // Unjailed, Landlock alone: /etc/hostname exists and is readable, yet EACCES.
    assert!(
        out.contains("test hook: landlock: open /etc/hostname failed: EACCES"),
        "{out}"
    );
    // The control: without Landlock the same open goes through.
    assert!(
        out.contains("test hook: landlock: open /etc/hostname succeeded: NOT stopped"),
        "{out}"
    );
    // Jailed: the config file is in the jail (the VMM read it) but not in the ruleset.
    assert!(
        out.contains("vm.toml failed: EACCES"),
        "Landlock inside the jail: {out}"
    );
    assert_eq!(out.matches("VMM-EXIT 0").count(), 2, "{out}");
    assert!(out.contains("JAILER-EXIT 0"), "{out}");
}

#[test]
fn jailed_and_plain_startup_times() {
    // Tiny guest, 3 runs each, jailed and not, in one lab run (lab timings are noisy).
    let vmm = vmm_binary().display().to_string();
    let script = setup("timing", &tiny_vm("timing"))
        + &format!(
            "ms() {{ echo $(( $(date +%s%N) / 1000000 )); }}\n\
             for i in 1 2 3; do\n\
               t0=$(ms); {vmm} --config $D/vm.toml </dev/null >/dev/null 2>&1 || echo PLAIN-FAILED\n\
               t1=$(ms); $J {args} </dev/null >/dev/null 2>&1 || echo JAILED-FAILED\n\
               t2=$(ms); echo \"RUN plain $((t1 - t0)) jailed $((t2 - t1))\"\n\
             done\n",
            args = jailer_args("timing"),
        );
    let r = run("timing", &script);
    let out = &r.output;
    assert!(!out.contains("FAILED"), "{out}");
    let mut plain = Vec::new();
    let mut jailed = Vec::new();
    for l in out.lines().filter(|l| l.starts_with("RUN ")) {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        plain.push(v[0]);
        jailed.push(v[1]);
    }
    assert_eq!(plain.len(), 3, "{out}");
    plain.sort();
    jailed.sort();
    eprintln!(
        "tiny guest start-to-exit in the lab (TCG L1), medians of 3: plain {} ms, jailed {} ms",
        plain[1], jailed[1]
    );
}
