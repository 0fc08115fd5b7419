//! The VMs lab tests boot, built in one place: [`ScriptVm`] writes a `vm.toml` for a guest that
//! runs a shell script as its init's job (`qvm.mode=run`), and [`start_vmm`] /
//! [`STOP_VMM_AND_SHOW_LOGS`] are the host side that runs it in a lab script.

use std::path::{Path, PathBuf};

use crate::fixtures::{
    disk_toml, guest_initramfs, guest_kernel, guest_rootfs, private_copy, script_disk, vm_toml,
    vmm_binary,
};
use crate::util::{share_dir, WAITFOR_IN_LOG};

/// The kernel command line every test guest starts from: the console on the first UART only,
/// quiet, and a panic or a reboot ends the VMM.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet";

/// Where the guest's userspace comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// Our initramfs; the script disk is /dev/vda.
    Initramfs,
    /// A private copy of the project's ext4 root filesystem on /dev/vda (read-write, serial
    /// `qvm-root`), our `/init` on it; the script disk is /dev/vdb.
    Disk,
}

/// A lab test VM whose guest runs `script` (our `/init`, `qvm.mode=run`: it prints
/// `QVM-SCRIPT-EXIT <code>` and powers off when the script ends). The script is on a small
/// read-only disk with serial `qvm-script`; more disks and config tables follow it.
#[derive(Debug, Clone)]
pub struct ScriptVm {
    dir: PathBuf,
    script: String,
    root: Root,
    vcpus: u8,
    memory_mib: u32,
    cmdline: String,
    disks: Vec<(PathBuf, bool, Option<String>)>,
    tables: String,
}

impl ScriptVm {
    /// A guest on our kernel and initramfs, 1 vCPU and 256 MiB, its files in the test's share
    /// directory `name` (see [`share_dir`]).
    pub fn new(name: &str, script: &str) -> Self {
        ScriptVm {
            dir: share_dir(name),
            script: script.to_string(),
            root: Root::Initramfs,
            vcpus: 1,
            memory_mib: 256,
            cmdline: String::new(),
            disks: Vec::new(),
            tables: String::new(),
        }
    }

    /// Like [`ScriptVm::new`], but booting from a private copy of the project's ext4 root
    /// filesystem (for tests that need a real disk root, e.g. to write files that outlive a
    /// read of them).
    pub fn on_root_disk(name: &str, script: &str) -> Self {
        ScriptVm {
            root: Root::Disk,
            ..ScriptVm::new(name, script)
        }
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn vcpus(mut self, n: u8) -> Self {
        self.vcpus = n;
        self
    }

    /// More kernel command line (before `qvm.mode=run`).
    pub fn cmdline(mut self, extra: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(extra);
        self
    }

    /// A disk after the script disk (`/dev/vdb` for the first with the initramfs).
    pub fn disk(mut self, path: &Path, read_only: bool, id: Option<&str>) -> Self {
        self.disks
            .push((path.to_path_buf(), read_only, id.map(str::to_string)));
        self
    }

    /// More config text, appended as it is (`[vsock]`, `[wayland]`, `[[fs]]` ...).
    pub fn toml(mut self, text: &str) -> Self {
        self.tables.push_str(text);
        self
    }

    /// The test's share directory (the same path on the host and in L1).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `script.img` (and `root.ext4`) and `vm.toml` into the share directory; returns
    /// the config's path.
    pub fn write(self) -> PathBuf {
        let script_img = self.dir.join("script.img");
        script_disk(&script_img, &self.script);
        let (initrd, root_args, script_dev) = match self.root {
            Root::Initramfs => (Some(guest_initramfs()), "", "/dev/vda"),
            Root::Disk => (None, " root=/dev/vda rw init=/init", "/dev/vdb"),
        };
        let cmdline = format!(
            "{BASE_CMDLINE}{root_args}{} qvm.mode=run qvm.script={script_dev}",
            self.cmdline
        );
        let mut text = vm_toml(
            &guest_kernel().vmlinux,
            initrd,
            self.vcpus,
            self.memory_mib,
            &cmdline,
        );
        if self.root == Root::Disk {
            let root = self.dir.join("root.ext4");
            private_copy(guest_rootfs(), &root);
            text.push_str(&disk_toml(&root, false, Some("qvm-root")));
        }
        text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
        for (path, read_only, id) in &self.disks {
            text.push_str(&disk_toml(path, *read_only, id.as_deref()));
        }
        text.push_str(&self.tables);
        let cfg = self.dir.join("vm.toml");
        std::fs::write(&cfg, text).expect("write vm.toml");
        cfg
    }
}

/// The command line that runs qvm-vmm on `cfg` under `timeout secs`, stdin from /dev/null.
pub fn vmm_command(cfg: &Path, secs: u32) -> String {
    format!(
        "timeout {secs} {} --config {} </dev/null",
        vmm_binary().display(),
        cfg.display()
    )
}

/// Shell that starts qvm-vmm on `cfg` in the background under `timeout secs`, with `args`
/// after `--config` and stdin from `stdin` (`/dev/null`, or a fifo for console input): the
/// guest's console goes to `$log` (set to `log` here), qvm-vmm's own messages to `$log.vmm`
/// (never the same file: see [`crate::util::vmm_apart`]). Sets `$vmm` and defines `waitfor`.
pub fn start_vmm(cfg: &Path, log: &str, secs: u32, args: &str, stdin: &str) -> String {
    format!(
        "log={log}\ntimeout {secs} {vmm} --config {cfg} {args} <{stdin} >$log 2>$log.vmm &\n\
         vmm=$!\n{WAITFOR_IN_LOG}\n",
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
    )
}

/// Shell that stops the VMM [`start_vmm`] started (SIGTERM; `VMM-EXIT 143` unless it had
/// ended by itself), then prints the guest's console and, after `--- qvm-vmm`, the VMM's own
/// messages.
pub const STOP_VMM_AND_SHOW_LOGS: &str = r#"kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
cat $log
echo "--- qvm-vmm"; cat $log.vmm
"#;

/// Shell for a lab script whose `qvm` step failed or hung (`$vm` is the VM's runtime
/// directory, named after the VM; `$q` runs qvm on its domains file). What the host sees: each VMM thread and
/// where it sleeps, virtiofsd's state and seccomp mode, L1's kernel log (seccomp kills and the
/// OOM killer are logged there), the VM's own logs and its device counters ($QVM_VMM's
/// `ctl get /metrics`, before and after the next step). Then what the guest says of its own
/// processes through a second `qvm run` (the guest kernel has no symbols, so the syscall number
/// a task sleeps in stands for its wchan): a command stuck in state D, or no answer at all. A
/// hang leaves no other trace, since the lab's deadline kills the script.
pub const HOST_VIEW: &str = r#"echo "--- host view of $vm"
for p in $(pgrep -x qvm-vmm); do
  for t in /proc/$p/task/*; do echo "vmm $p thread $(cat $t/comm): $(cut -d' ' -f3 $t/stat) $(cat $t/wchan)"; done
done
for p in $(pgrep -x virtiofsd); do echo "virtiofsd $p: $(grep -E '^(State|Threads|Seccomp):' /proc/$p/status | tr '\n\t' '  ')"; done
echo "--- L1 dmesg"; dmesg | tail -n 8
echo "--- vmm.log"; tail -n 20 $vm/vmm.log
echo "--- console.log"; tail -n 20 $vm/console.log
echo "--- metrics"; timeout 10 $QVM_VMM ctl --api-sock $vm/api.sock get /metrics 2>&1 | head -c 6000; echo
echo "--- a second session: the guest's processes (pid state syscall comm) and interrupts"
timeout 60 $q run --timeout 20 "${vm##*/}" -- sh -c 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(cut -d" " -f3 $p/stat) $(cut -d" " -f1 $p/syscall) $(cat $p/comm)"; done | grep -v " I "; grep -iE "virtio|timer" /proc/interrupts' 2>&1 | tail -n 40
echo "--- metrics after it"; timeout 10 $QVM_VMM ctl --api-sock $vm/api.sock get /metrics 2>&1 | head -c 6000; echo
"#;

/// Shell that waits for the VMM [`start_vmm`] started to end by itself (the guest powered off),
/// then prints `VMM-EXIT` and both logs as [`STOP_VMM_AND_SHOW_LOGS`] does.
pub const WAIT_VMM_AND_SHOW_LOGS: &str = r#"wait $vmm
echo "VMM-EXIT $?"
cat $log
echo "--- qvm-vmm"; cat $log.vmm
"#;

/// One `[[vm]]` entry of a `qvm` domains file: our kernel (vmlinux) and initramfs, booted in
/// `qvm.mode=` `mode` (`agent` for `qvm run`), with `memory_mib` and the extra `key = value`
/// lines in `extra`.
pub fn domain(name: &str, memory_mib: u32, mode: &str, extra: &str) -> String {
    format!(
        "[[vm]]\nname = {name:?}\nmemory_mib = {memory_mib}\nkernel = {kernel:?}\n\
         initrd = {initrd:?}\ncmdline = \"{BASE_CMDLINE} qvm.mode={mode}\"\n{extra}\n",
        kernel = guest_kernel().vmlinux.display().to_string(),
        initrd = guest_initramfs().display().to_string(),
    )
}

/// The [`domain`] lines of a GUI domain: windows to the compositor at `rt/wl-qvm`, the
/// project's Debian apps image and a home at `rt/homes/<name>`.
pub fn apps_and_wayland(rt: &str, name: &str) -> String {
    format!(
        "wayland = {{ socket = \"{rt}/wl-qvm\" }}\napps = {{ image = {image:?}, home = \"{rt}/homes/{name}\" }}\n",
        image = crate::fixtures::debian_rootfs().display().to_string(),
    )
}

/// Writes `domains.toml` (these [`domain`] entries) into the test's share directory `dir`;
/// returns its path.
pub fn write_domains(dir: &Path, entries: &[String]) -> PathBuf {
    let path = dir.join("domains.toml");
    std::fs::write(&path, entries.concat()).expect("write domains.toml");
    path
}
