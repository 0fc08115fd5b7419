//! What an ordinary user's VM keeps to itself, checked as that user (uid 4300) in the lab: a
//! VMM it starts (with umask 0, the worst it could inherit) makes its API and vsock sockets
//! and its console file 0600, leaves no descriptor to a child it execs, is not readable by the user's other
//! processes through /proc, and refuses a second local user (uid 4301) on its API even when
//! that user can reach the socket (the vsock socket's refusal needs an active vsock device, so
//! it is a unit test: devices' `another_user_cannot_reach_the_guest`). Root's `qvm start`
//! neither works in a runtime directory another user planted nor follows links planted in it.
//! And the lab lets an ordinary user make the user namespaces the sandbox
//! runs VMs in.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use qvm_tests::fixtures::{
    guest_initramfs, guest_kernel, qvm_cli_binary, tiny, tiny_elf, virtiofsd_binary, vm_toml,
    vmm_binary,
};
use qvm_tests::lab::{self, as_uid, as_user, shell_quote, OTHER_UID, USER_UID};
use qvm_tests::util::{field, share_dir, WAITFOR_IN_LOG};
use qvm_tests::vm::ScriptVm;

const TIMEOUT: Duration = Duration::from_secs(300);

/// The sandbox runs VMs in user namespaces an ordinary user makes: L1 must let it. (L1 used to
/// chroot into the host's root, and the kernel refuses user namespaces to a chrooted process;
/// it now moves the host root over / first.)
#[test]
fn an_ordinary_user_can_make_user_namespaces() {
    let out = lab::run_or_panic(
        &as_user(
            r#"echo "uid=$(id -u) groups=$(id -G) caps=$(grep CapEff /proc/self/status | cut -f2)"
unshare -Urmnp --fork sh -c 'echo "inside=$(id -u)"' 2>&1"#,
        ),
        TIMEOUT,
    );
    assert_eq!(out.code, 0, "{}", out.output);
    let who = field(&out.output, "uid=");
    assert!(who.starts_with(&format!("{USER_UID} ")), "{}", out.output);
    assert!(who.ends_with("caps=0000000000000000"), "{}", out.output);
    assert!(!who.contains("groups=0"), "in root's group: {}", out.output);
    assert_eq!(field(&out.output, "inside="), "0", "{}", out.output);
}

#[test]
fn a_user_s_vmm_keeps_to_itself() {
    let share = share_dir("user-hygiene");
    let elf = share.join("up.elf");
    let code = [tiny::print("QVM-TINY-UP\n"), tiny::halt_forever()].concat();
    std::fs::write(&elf, tiny_elf(&code)).unwrap();
    let d = "/tmp/qvm-user";
    let kernel = format!("{d}/up.elf");
    let mut cfg = vm_toml(std::path::Path::new(&kernel), None, 1, 64, "console=ttyS0");
    // A vsock device, for its socket's mode (a tiny guest never activates it), and a console
    // file the VMM creates itself.
    cfg.push_str(&format!(
        "\n[vsock]\nguest_cid = 3\nsocket = \"{d}/rt/vsock.sock\"\n\
         \n[console]\nmode = \"file\"\npath = \"{d}/rt/console.log\"\n"
    ));
    std::fs::write(share.join("vm.toml"), cfg).unwrap();
    let vmm = vmm_binary().display().to_string();
    let start = format!(
        "umask 0; exec {vmm} --config {d}/vm.toml --api-sock {d}/rt/api.sock \
         </dev/null >/dev/null 2>{d}/rt/console.log.vmm"
    );
    // What another process of the same user tries: the VMM's environment, its descriptors.
    let same_user = r#"p=$(cat /tmp/qvm-user/pid)
if cat /proc/$p/environ >/dev/null 2>&1; then echo "SAME-USER-ENVIRON readable"; else echo "SAME-USER-ENVIRON denied"; fi
if ls /proc/$p/fd >/dev/null 2>&1; then echo "SAME-USER-FDS readable"; else echo "SAME-USER-FDS denied"; fi
"#;
    let api_version = |sock: &str| format!("{vmm} ctl --api-sock {sock} get /version");
    let script = format!(
        r#"set -u
d={d}
rm -rf $d; mkdir -m 0755 $d
cp {share}/up.elf {share}/vm.toml $d/ && chmod 0644 $d/up.elf $d/vm.toml
install -d -o {USER_UID} -g {USER_UID} -m 0700 $d/rt
sh -c {start_as_user} &
vmm=$!
echo $vmm > $d/pid
log=$d/rt/console.log
{WAITFOR_IN_LOG}
waitfor QVM-TINY-UP
i=0; until [ -S $d/rt/api.sock ] || [ $i -gt 300 ]; do i=$((i+1)); sleep 0.1; done
echo "VMM-UID $(awk '/^Uid:/{{print $2}}' /proc/$vmm/status)"
echo "MODES $(stat -c %a $d/rt/api.sock $d/rt/vsock.sock $d/rt/console.log | tr '\n' ' ')"
n=0
for f in /proc/$vmm/fdinfo/*; do
  fd=${{f##*/}}; [ "$fd" -le 2 ] && continue
  fl=$(awk '/^flags:/{{print $2}}' $f 2>/dev/null); [ -n "$fl" ] || continue
  if [ $(( fl & 02000000 )) -eq 0 ]; then n=$((n+1)); echo "INHERITABLE $fd $(readlink /proc/$vmm/fd/$fd)"; fi
done
echo "INHERITABLE-FDS $n"
sh -c {same_user_as_user}
if sh -c {owner_api} >/dev/null 2>&1; then echo "OWNER-API answered"; else echo "OWNER-API refused"; fi
# Another local user who can reach the sockets (modes loosened, as a mistake might leave them).
chmod 0755 $d/rt; chmod 0666 $d/rt/api.sock $d/rt/vsock.sock
if sh -c {other_api} >/dev/null 2>&1; then echo "OTHER-USER-API answered"; else echo "OTHER-USER-API refused"; fi
kill $vmm; wait $vmm
echo "VMM-EXIT $?"
echo "--- console"; cat $log; echo "--- qvm-vmm"; cat $log.vmm
"#,
        share = share.display(),
        start_as_user = shell_quote(&as_user(&start)),
        same_user_as_user = shell_quote(&as_user(same_user)),
        owner_api = shell_quote(&as_user(&api_version(&format!("{d}/rt/api.sock")))),
        other_api = shell_quote(&as_uid(
            OTHER_UID,
            &api_version(&format!("{d}/rt/api.sock"))
        )),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert_eq!(field(out, "VMM-UID "), USER_UID.to_string(), "{out}");
    assert_eq!(field(out, "MODES "), "600 600 600", "{out}");
    assert_eq!(field(out, "INHERITABLE-FDS "), "0", "{out}");
    assert_eq!(field(out, "SAME-USER-ENVIRON "), "denied", "{out}");
    assert_eq!(field(out, "SAME-USER-FDS "), "denied", "{out}");
    assert_eq!(field(out, "OWNER-API "), "answered", "{out}");
    assert_eq!(field(out, "OTHER-USER-API "), "refused", "{out}");
}

/// Root's `qvm start` (as under sudo) against what another local user (uid 4300) planted: a
/// `/tmp/qvm-0` full of links to a root-only file (root used that directory, and followed
/// the links, truncating the file), a runtime directory of theirs named by
/// `QVM_RUNTIME_DIR`, and links in the VM's own directory (which a jailed VMM owns). Root
/// works in /run/qvm, refuses the foreign directory with one line, replaces the links, and
/// the file keeps its content.
#[test]
fn root_s_qvm_start_follows_no_link_another_user_planted() {
    let share = share_dir("user-planted");
    std::fs::write(
        share.join("up.elf"),
        tiny_elf(&[tiny::print("QVM-TINY-UP\n"), tiny::halt_forever()].concat()),
    )
    .unwrap();
    let domains = share.join("domains.toml");
    std::fs::write(
        &domains,
        format!(
            "[[vm]]\nname = \"t\"\nmemory_mib = 64\nkernel = \"{}/up.elf\"\ncmdline = \"console=ttyS0\"\n",
            share.display()
        ),
    )
    .unwrap();
    let plant_tmp = "mkdir -p /tmp/qvm-0/t && for f in console.log vmm.log pid vm.toml .t.lock; \
                     do ln -s /run/qvm-victim /tmp/qvm-0/t/$f; ln -s /run/qvm-victim /tmp/qvm-0/$f; done";
    let script = format!(
        r#"set -u
unset XDG_RUNTIME_DIR QVM_RUNTIME_DIR
export QVM_VMM={vmm}
q="{qvm} --domains {domains}"
victim=/run/qvm-victim
rm -rf /tmp/qvm-0 /tmp/planted /run/qvm
echo precious > $victim; chmod 600 $victim
sh -c {plant_tmp}
$q start t; echo "START $?"
echo "ROOT-DIR $(stat -c '%U %a' /run/qvm/t 2>&1)"
echo "VICTIM $(cat $victim)"
$q stop t --timeout 2 >/dev/null 2>&1
sh -c {plant_dir}
QVM_RUNTIME_DIR=/tmp/planted $q start t 2>/tmp/planted.err; echo "PLANTED $?"
echo "PLANTED-SAYS $(cat /tmp/planted.err)"
echo "PLANTED-FILES $(find /tmp/planted | wc -l)"
for f in console.log vmm.log vm.toml pid; do rm -f /run/qvm/t/$f; ln -s $victim /run/qvm/t/$f; done
$q start t; echo "START-2 $?"
echo "VICTIM-2 $(cat $victim)"
echo "LINKS-LEFT $(find /run/qvm/t -type l | wc -l)"
$q stop t --timeout 2 >/dev/null 2>&1
"#,
        vmm = vmm_binary().display(),
        qvm = qvm_cli_binary().display(),
        domains = domains.display(),
        plant_tmp = shell_quote(&as_user(plant_tmp)),
        plant_dir = shell_quote(&as_user("mkdir -p /tmp/planted")),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert_eq!(field(out, "START "), "0", "{out}");
    assert_eq!(field(out, "ROOT-DIR "), "root 700", "{out}");
    assert_eq!(field(out, "VICTIM "), "precious", "{out}");
    assert_eq!(field(out, "PLANTED "), "1", "{out}");
    let says = field(out, "PLANTED-SAYS ");
    assert!(
        says.contains("/tmp/planted") && says.contains(&format!("belongs to uid {USER_UID}")),
        "{out}"
    );
    assert_eq!(field(out, "PLANTED-FILES "), "1", "{out}");
    assert_eq!(field(out, "START-2 "), "0", "{out}");
    assert_eq!(field(out, "VICTIM-2 "), "precious", "{out}");
    assert_eq!(field(out, "LINKS-LEFT "), "0", "{out}");
}

/// A user's VM with a share: the user's virtiofsd runs in namespaces of its own (it parses the
/// guest's FUSE traffic, and used to run `--sandbox=none` as the user), files the guest writes
/// belong to the user, and the VMM keeps its Landlock ruleset (it used to skip it for any VM
/// with a share).
#[test]
fn a_user_s_share_is_served_by_a_sandboxed_virtiofsd_and_the_vmm_keeps_landlock() {
    let d = "/tmp/qvm-user-fs";
    let cfg = ScriptVm::new(
        "user-fs",
        r#"mkdir -p /mnt/s
mount -t virtiofs home /mnt/s || echo "MOUNT failed"
echo from-guest > /mnt/s/guest-file && sync && echo "GUEST-WROTE"
echo "GUEST-DONE"
sleep 1000
"#,
    )
    .toml(&format!(
        "\n[[fs]]\ntag = \"home\"\nsocket = \"{d}/rt/home.sock\"\nshared_dir = \"{d}/home\"\n\
         virtiofsd = \"{d}/virtiofsd\"\n"
    ))
    .write();
    // The user cannot read root's cache: the files go where they can.
    let kernel = guest_kernel().vmlinux.display().to_string();
    let initrd = guest_initramfs().display().to_string();
    let vmm = vmm_binary().display().to_string();
    let start = format!(
        "exec {vmm} --config {d}/vm.toml --api-sock {d}/rt/api.sock \
         </dev/null >{d}/rt/console.log 2>{d}/rt/console.log.vmm"
    );
    let script = format!(
        r#"set -u
d={d}
rm -rf $d; mkdir -m 0755 $d
cp {kernel} $d/vmlinux; cp {initrd} $d/initrd; cp {virtiofsd} $d/virtiofsd
sed -e "s#{kernel}#$d/vmlinux#" -e "s#{initrd}#$d/initrd#" {cfg} > $d/vm.toml
chmod 0644 $d/vmlinux $d/initrd $d/vm.toml; chmod 0755 $d/virtiofsd
install -d -o {USER_UID} -g {USER_UID} -m 0700 $d/rt $d/home
sh -c {start_as_user} &
vmm=$!
log=$d/rt/console.log
{WAITFOR_IN_LOG}
if waitfor GUEST-DONE; then
  pat="socket-path=$d/rt"; pat="$pat/home.sock"
  for p in $(pgrep -f "$pat"); do
    echo "VFS $p uid=$(awk '/^Uid:/{{print $2}}' /proc/$p/status) userns=$([ "$(readlink /proc/$p/ns/user)" = "$(readlink /proc/1/ns/user)" ] && echo host || echo own) mntns=$([ "$(readlink /proc/$p/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ] && echo host || echo own)"
  done
  echo "FILE $(stat -c %u $d/home/guest-file 2>&1) $(cat $d/home/guest-file 2>&1)"
fi
echo "LANDLOCK $(grep -c 'landlock ABI' $log.vmm) $(grep -c 'landlock skipped' $log.vmm)"
kill $vmm; wait $vmm
echo "VMM-EXIT $?"
# virtiofsd ends when the VMM disconnects (the VMM signals no process).
pat="socket-path=$d/rt"; pat="$pat/home.sock"
i=0; while pgrep -f "$pat" >/dev/null && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done
echo "VFS-LEFT $(pgrep -f "$pat" | wc -l)"
echo "--- console"; cat $log; echo "--- qvm-vmm"; cat $log.vmm
"#,
        virtiofsd = virtiofsd_binary().display(),
        cfg = cfg.display(),
        start_as_user = shell_quote(&as_user(&start)),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert!(out.contains("GUEST-WROTE"), "{out}");
    let vfs: Vec<&str> = out.lines().filter(|l| l.starts_with("VFS ")).collect();
    assert!(!vfs.is_empty(), "no virtiofsd found: {out}");
    for l in &vfs {
        assert!(l.contains(&format!("uid={USER_UID} ")), "{out}");
        assert!(l.ends_with("userns=own mntns=own"), "{out}");
    }
    assert_eq!(
        field(out, "FILE "),
        format!("{USER_UID} from-guest"),
        "{out}"
    );
    assert_eq!(field(out, "LANDLOCK "), "1 0", "{out}");
    assert_eq!(field(out, "VFS-LEFT "), "0", "{out}");
    // Stopped by our SIGTERM, not by its own filter at the end (no signal syscall is needed).
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
    assert!(!out.contains("forbidden syscall"), "{out}");
}
