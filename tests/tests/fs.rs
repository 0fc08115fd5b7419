//! virtio-fs through vhost-user, served by a virtiofsd that qvm-vmm starts, against the real
//! Linux driver, in the lab: file operations, a 64 MiB file checked on the host, a host-side
//! change seen by the guest, a read-only share, virtiofsd killed under a read loop (the guest
//! gets ENOTCONN, not a hang), and virtiofsd restarted on the same socket (a remount works).

use std::time::Duration;

use qvm_tests::fixtures::virtiofsd_binary;
use qvm_tests::lab;
use qvm_tests::util::field;
use qvm_tests::vm::{start_vmm, ScriptVm};

const TIMEOUT: Duration = Duration::from_secs(1200);

#[test]
fn virtiofs_files_host_changes_read_only_share_and_backend_death() {
    let vm = ScriptVm::on_root_disk(
        "fs",
        r#"mkdir -p /mnt/s /mnt/ro
mount -t virtiofs share /mnt/s || echo "MOUNT failed"
mount -t virtiofs ro /mnt/ro || echo "MOUNT-RO failed"
echo "HOSTFILE $(cat /mnt/s/hostfile)"
cd /mnt/s
echo hello > a && mv a b && ln -s b c && chmod 600 b && echo "OPS $(cat c) $(stat -c %a b) $(readlink c)"
mkdir d && touch d/x && rm d/x && rmdir d && echo "DIRS ok"
rm b c
dd if=/dev/urandom of=big bs=1M count=64 2>/dev/null && sync
echo "BIG $(sha256sum big | cut -d' ' -f1)"
echo "RO-READ $(cat /mnt/ro/readme)"
if touch /mnt/ro/x 2>/dev/null; then echo "RO-WRITE allowed"; else echo "RO-WRITE refused"; fi
echo "GUEST-WAITING"
i=0; until [ -e /mnt/s/host-late ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "SAW-HOST-CHANGE $(cat /mnt/s/host-late 2>/dev/null)"
(while :; do cat /mnt/s/big >/dev/null 2>/tmp/read-err || { echo "READ-ERROR $(cat /tmp/read-err)"; break; }; done; touch /tmp/read-done) &
echo "READ-LOOP"
# The host kills virtiofsd now: the VMM answers the share's requests with ENOTCONN, so the
# read loop ends with an error (instead of hanging), and the rest of the guest keeps working.
waitfile() {
  i=0; until [ -e "$1" ]; do i=$((i+1)); [ $i -gt 3000 ] && { echo "GUEST-TIMEOUT $1"; return 1; }; sleep 0.1; done
}
waitfile /tmp/read-done
dd if=/dev/urandom of=/root/after bs=64k count=16 conv=fsync 2>/dev/null
echo "STILL-ALIVE $(cat /proc/uptime | cut -d' ' -f1)"
# The host restarts virtiofsd on the same socket and says so through the read-only share.
waitfile /mnt/ro/backend-back
cd /
umount /mnt/s || umount -l /mnt/s
mount -t virtiofs share /mnt/s && echo "REMOUNT $(cat /mnt/s/hostfile) $(sha256sum /mnt/s/big | cut -d' ' -f1)"
echo after-restart > /mnt/s/from-guest-2 && sync
stty "$(stty -g)" 2>/dev/null
poweroff -n -f
"#,
    );
    let t = "/tmp/qvm-fs-test";
    let cfg = vm.toml(&format!(
        "\n[[fs]]\ntag = \"share\"\nsocket = \"{t}/share.sock\"\nshared_dir = \"{t}/share\"\nvirtiofsd = {:?}\n\
         \n[[fs]]\ntag = \"ro\"\nsocket = \"{t}/ro.sock\"\nshared_dir = \"{t}/ro\"\nread_only = true\nvirtiofsd = {:?}\n",
        virtiofsd_binary().display().to_string(),
        virtiofsd_binary().display().to_string()
    ))
    .write();
    let script = format!(
        r#"set -u
t={t}
rm -rf $t; mkdir -p $t/share $t/ro
echo from-the-host > $t/share/hostfile
echo read-me > $t/ro/readme
{start_vmm}waitfor GUEST-WAITING && echo "changed-later" > $t/share/host-late
echo "HOST-BIG $(sha256sum $t/share/big 2>/dev/null | cut -d' ' -f1)"
echo "HOST-RO-UNCHANGED $(ls $t/ro | tr '\n' ' ')"
if waitfor READ-LOOP; then
  sleep 1
  # virtiofsd's namespace sandbox forks: kill every process of it (the pattern is built here
  # so this script's own command line cannot match it).
  pat="socket-path=$t/share"; pat="$pat.sock"
  pids=$(pgrep -f "$pat" | tr '\n' ' ')
  kill -9 $pids && echo "KILLED-VIRTIOFSD $pids"
  if waitfor "share.sock is gone" && waitfor READ-ERROR; then
    # Restarted on the same socket, as an admin (or a supervisor) would.
    {virtiofsd} --socket-path=$t/share.sock --shared-dir=$t/share --cache=auto --log-level=error >$t/virtiofsd2.log 2>&1 &
    v2=$!
    waitfor "share.sock is back" && touch $t/ro/backend-back
  else
    echo "DIAG processes:"; ps -ef | grep -e virtiofsd -e qvm-vmm | grep -v grep
    for p in $(pgrep -P $vmm); do echo "DIAG fds of $p:"; ls -l /proc/$p/fd; done
  fi
fi
wait $vmm
echo "VMM-EXIT $?"
[ -n "${{v2:-}}" ] && kill $v2 2>/dev/null
echo "HOST-SAW-GUEST-WRITE $(cat $t/share/from-guest-2 2>/dev/null)"
cat $t/virtiofsd2.log 2>/dev/null
cat $log
echo "--- qvm-vmm"; cat $log.vmm
"#,
        start_vmm = start_vmm(&cfg, "$t/log", 1000, "", "/dev/null"),
        virtiofsd = virtiofsd_binary().display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    assert!(
        !out.contains("MOUNT failed") && !out.contains("MOUNT-RO failed"),
        "{out}"
    );
    assert_eq!(field(out, "HOSTFILE "), "from-the-host", "{out}");
    assert_eq!(field(out, "OPS "), "hello 600 b", "{out}");
    assert_eq!(field(out, "DIRS "), "ok", "{out}");
    let big = field(out, "BIG ");
    assert_eq!(big.len(), 64, "{out}");
    assert_eq!(field(out, "HOST-BIG "), big, "{out}");
    assert_eq!(field(out, "RO-READ "), "read-me", "{out}");
    assert_eq!(field(out, "RO-WRITE "), "refused", "{out}");
    assert_eq!(field(out, "HOST-RO-UNCHANGED "), "readme", "{out}");
    assert_eq!(field(out, "SAW-HOST-CHANGE "), "changed-later", "{out}");
    assert!(out.contains("KILLED-VIRTIOFSD"), "{out}");
    assert!(
        out.contains("vhost-user backend on /tmp/qvm-fs-test/share.sock is gone"),
        "the VMM did not report the dead backend: {out}"
    );
    let err = field(out, "READ-ERROR ");
    assert!(
        err.contains("not connected"),
        "the guest should see ENOTCONN on the dead share: {out}"
    );
    assert!(
        out.contains("STILL-ALIVE"),
        "the guest did not survive: {out}"
    );
    assert!(
        out.contains("vhost-user backend on /tmp/qvm-fs-test/share.sock is back"),
        "the VMM did not reconnect to the restarted virtiofsd: {out}"
    );
    assert_eq!(
        field(out, "REMOUNT "),
        format!("from-the-host {big}"),
        "the share did not work again after a remount: {out}"
    );
    assert_eq!(
        field(out, "HOST-SAW-GUEST-WRITE "),
        "after-restart",
        "{out}"
    );
    // Shown with --nocapture: the timings and the VMM's log lines, for the notes.
    println!("{out}");
}
