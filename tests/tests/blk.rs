//! virtio-blk (over virtio-mmio) against the real Linux driver, in the lab: root filesystem on
//! /dev/vda, a 64 MiB random-data round trip on a second disk checked in the guest and on the
//! host, durability across a SIGKILL of the VMM, and a read-only disk.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qvm_tests::fixtures::{
    disk_toml, guest_kernel, guest_rootfs, private_copy, script_disk, sparse_image, vm_toml,
    vmm_binary,
};
use qvm_tests::lab::{self, shell_quote};
use qvm_tests::util::{share_dir, vmm_apart, vmm_foreground};
use qvm_tests::vm::vmm_command;

const TIMEOUT: Duration = Duration::from_secs(900);
const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet root=/dev/vda rw init=/init";

/// A VM booting from a private copy of the rootfs (vda), with `disks` after it and the guest
/// script on the last disk (read-only). Returns the config path.
fn vm(dir: &Path, script: &str, disks: &[(PathBuf, bool, Option<&str>)]) -> PathBuf {
    let root = dir.join("root.ext4");
    private_copy(guest_rootfs(), &root);
    let script_img = dir.join("script.img");
    script_disk(&script_img, script);
    let script_dev = format!("/dev/vd{}", (b'a' + 1 + disks.len() as u8) as char);
    let cmdline = format!("{CMDLINE} qvm.mode=run qvm.script={script_dev}");
    let mut text = vm_toml(&guest_kernel().vmlinux, None, 1, 256, &cmdline);
    text.push_str(&disk_toml(&root, false, Some("qvm-root")));
    for (p, ro, id) in disks {
        text.push_str(&disk_toml(p, *ro, *id));
    }
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    let cfg = dir.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn run_vm(cfg: &Path) -> lab::CmdOutput {
    let script = vmm_apart(&vmm_command(cfg, 800));
    lab::run_or_panic(&script, TIMEOUT)
}

/// Like `qvm_tests::util::field`, but only lines that start with `key` in their first column
/// count (no `trim_start`): kept local so these tests match exactly what they always did.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
        .trim()
}

#[test]
fn root_on_vda_and_64mib_round_trip_on_a_second_disk() {
    let d = share_dir("blk-roundtrip");
    let data = d.join("data.img");
    sparse_image(&data, 256 << 20);
    let cfg = vm(
        &d,
        r#"set -e
echo "ROOT $(awk '$5 == "/" {print $3}' /proc/self/mountinfo) $(cat /sys/block/vda/dev)"
echo "SERIALS $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)"
mke2fs -q /dev/vdb >/dev/null 2>&1 || mke2fs /dev/vdb >/dev/null
mkdir -p /mnt/data
mount -t ext4 /dev/vdb /mnt/data
dd if=/dev/urandom of=/mnt/data/blob bs=1M count=64 2>/dev/null
sync
echo "WROTE $(sha256sum /mnt/data/blob | cut -d' ' -f1)"
umount /mnt/data
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/vdb /mnt/data
echo "READ $(sha256sum /mnt/data/blob | cut -d' ' -f1)"
umount /mnt/data
"#,
        &[(data.clone(), false, Some("qvm-data"))],
    );
    let r = run_vm(&cfg);
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(r.output.contains("QVM-SCRIPT-EXIT 0"), "{}", r.output);
    let root: Vec<&str> = field(&r.output, "ROOT ").split(' ').collect();
    assert_eq!(root.len(), 2, "{}", r.output);
    assert_eq!(root[0], root[1], "/ is not on /dev/vda: {}", r.output);
    assert_eq!(field(&r.output, "SERIALS "), "qvm-root qvm-data");
    let wrote = field(&r.output, "WROTE ").to_string();
    assert_eq!(wrote.len(), 64, "{}", r.output);
    assert_eq!(
        field(&r.output, "READ "),
        wrote,
        "guest read back other data"
    );
    // And the host sees the same bytes in the image.
    let host = lab::run(
        &format!(
            "debugfs -R 'dump /blob /tmp/blob' {} >/dev/null 2>&1 && sha256sum /tmp/blob | cut -d' ' -f1; rm -f /tmp/blob",
            shell_quote(&data.to_string_lossy())
        ),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        host.output.trim(),
        wrote,
        "host image disagrees: {}",
        host.output
    );
}

#[test]
fn fsynced_data_survives_a_sigkill_of_the_vmm() {
    let d = share_dir("blk-durable");
    let data = d.join("data.img");
    sparse_image(&data, 64 << 20);
    let cfg = vm(
        &d,
        r#"set -e
mke2fs -q /dev/vdb >/dev/null 2>&1 || mke2fs /dev/vdb >/dev/null
mkdir -p /mnt/data
mount -t ext4 /dev/vdb /mnt/data
dd if=/dev/urandom of=/mnt/data/durable bs=64k count=64 conv=fsync 2>/dev/null
sync
echo "FSYNCED $(sha256sum /mnt/data/durable | cut -d' ' -f1)"
sleep 100000
"#,
        &[(data.clone(), false, None)],
    );
    let script = format!(
        r#"log=$(mktemp)
{vmm} --config {cfg} </dev/null >"$log" 2>"$log.vmm" &
pid=$!
i=0; while ! grep -q FSYNCED "$log"; do
  i=$((i+1)); [ $i -gt 2400 ] && {{ cat "$log" "$log.vmm"; exit 90; }}
  kill -0 $pid 2>/dev/null || {{ cat "$log" "$log.vmm"; exit 91; }}
  sleep 0.25
done
kill -9 $pid; wait $pid
echo "KILLED $?"
grep FSYNCED "$log"
debugfs -R 'dump /durable /tmp/durable' {img} >/dev/null 2>&1
echo "HOST $(sha256sum /tmp/durable | cut -d' ' -f1)"
rm -f /tmp/durable "$log" "$log.vmm"
"#,
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        img = shell_quote(&data.to_string_lossy())
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(field(&r.output, "KILLED "), "137", "{}", r.output);
    let guest = field(&r.output, "FSYNCED ");
    assert_eq!(guest.len(), 64, "{}", r.output);
    assert_eq!(field(&r.output, "HOST "), guest, "{}", r.output);
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let d = share_dir("blk-ro");
    let data = d.join("ro.img");
    let pattern: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&data, &pattern).unwrap();
    let cfg = vm(
        &d,
        r#"echo "RO $(blockdev --getro /dev/vdb)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/tmp/dd.err; then echo "DD ok"; else echo "DD refused: $(cat /tmp/dd.err)"; fi
echo "SUM $(dd if=/dev/vdb bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)"
"#,
        &[(data.clone(), true, None)],
    );
    let r = run_vm(&cfg);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(field(&r.output, "RO "), "1", "{}", r.output);
    assert!(
        field(&r.output, "DD ").starts_with("refused"),
        "{}",
        r.output
    );
    assert_eq!(
        std::fs::read(&data).unwrap(),
        pattern,
        "read-only image changed"
    );
    // The guest read the image's real content.
    let host = lab::run(
        &format!(
            "sha256sum {} | cut -d' ' -f1",
            shell_quote(&data.to_string_lossy())
        ),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(field(&r.output, "SUM "), host.output.trim(), "{}", r.output);
}

/// Announcing devices on the command line (`acpi=off`: the DSDT is ignored), discard punching
/// a hole in the image, and a driver unbind/bind (device reset, then re-activation) after which
/// the disk still reads and writes the right data.
#[test]
fn acpi_off_cmdline_devices_discard_and_driver_reload() {
    let d = share_dir("blk-reload");
    // The data image lives in L1's /tmp (tmpfs punches holes; the 9p share may not).
    let img = "/tmp/qvm-blk-reload.img";
    let root = d.join("root.ext4");
    private_copy(guest_rootfs(), &root);
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        r#"echo "ROOT $(awk '$5 == "/" {print $3}' /proc/self/mountinfo) $(cat /sys/block/vda/dev)"
echo "CMDLINE-DEVICES $(grep -o 'virtio_mmio.device=[^ ]*' /proc/cmdline | wc -l)"
data() { for b in /sys/block/vd*; do [ "$(cat $b/serial)" = qvm-data ] && echo /dev/${b##*/}; done; }
dev=$(data)
echo "BEFORE $(dd if=$dev bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
blkdiscard -o 0 -l 1048576 $dev && echo "DISCARD ok"
vdev=$(basename $(readlink /sys/block/${dev#/dev/}/device))
echo $vdev > /sys/bus/virtio/drivers/virtio_blk/unbind
echo "UNBOUND $(data | wc -l)"
echo $vdev > /sys/bus/virtio/drivers/virtio_blk/bind
dev=$(data)
echo "REBOUND $dev"
echo "AFTER $(dd if=$dev bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/w bs=4k count=16 2>/dev/null
dd if=/tmp/w of=$dev bs=4k seek=512 conv=fsync 2>/dev/null
echo "WROTE $(sha256sum /tmp/w | cut -d' ' -f1)"
"#,
    );
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet acpi=off \
                   root=/dev/vda rw init=/init qvm.mode=run qvm.script=/dev/vdc";
    let mut text = vm_toml(&guest_kernel().vmlinux, None, 1, 256, cmdline);
    text.push_str(&disk_toml(&root, false, Some("qvm-root")));
    text.push_str(&disk_toml(Path::new(img), false, Some("qvm-data")));
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        r#"dd if=/dev/urandom of={img} bs=1M count=8 2>/dev/null
echo "HOST-BEFORE $(dd if={img} bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
{vmm}echo "HOST-HOLE-NONZERO $(dd if={img} bs=1M count=1 2>/dev/null | tr -d '\000' | wc -c)"
echo "HOST-AFTER $(dd if={img} bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "HOST-WROTE $(dd if={img} bs=4k skip=512 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)"
rm -f {img}
"#,
        vmm = vmm_foreground(&vmm_command(&cfg, 800)),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    assert!(out.contains("QVM-SCRIPT-EXIT 0"), "{out}");
    let root: Vec<&str> = field(out, "ROOT ").split(' ').collect();
    assert_eq!(root.first(), root.get(1), "/ is not on /dev/vda: {out}");
    assert_eq!(field(out, "CMDLINE-DEVICES "), "3", "{out}");
    let before = field(out, "HOST-BEFORE ");
    assert_eq!(field(out, "BEFORE "), before, "{out}");
    assert_eq!(field(out, "DISCARD "), "ok", "{out}");
    assert_eq!(
        field(out, "UNBOUND "),
        "0",
        "disk still there after unbind: {out}"
    );
    assert!(field(out, "REBOUND ").starts_with("/dev/vd"), "{out}");
    assert_eq!(
        field(out, "AFTER "),
        before,
        "data changed across reload: {out}"
    );
    assert_eq!(field(out, "HOST-AFTER "), before, "{out}");
    assert_eq!(
        field(out, "HOST-HOLE-NONZERO "),
        "0",
        "discard left data: {out}"
    );
    assert_eq!(field(out, "HOST-WROTE "), field(out, "WROTE "), "{out}");
}
