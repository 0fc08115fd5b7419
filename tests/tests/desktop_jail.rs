//! `qvm` with a jailed VM, in the lab as root in L1: a domain with `jail = { uid, gid }` starts
//! through qvm-jailer (the VMM runs as that uid), `qvm run` reaches its agent, `qvm stop`
//! shuts it down, and nothing is left (no VMM, no sockets, no jail directory).

use std::time::Duration;

use qvm_tests::fixtures::{
    guest_initramfs, guest_kernel, qvm_cli_binary, qvm_jailer_binary, vmm_binary,
};
use qvm_tests::lab;
use qvm_tests::util::{field, share_dir};

const TIMEOUT: Duration = Duration::from_secs(600);
const UID: u32 = 4243;

#[test]
fn a_jailed_domain_starts_runs_and_stops() {
    let d = share_dir("desktop-jail");
    let domains = format!(
        "[[vm]]\nname = \"j\"\nlabel = \"orange\"\nmemory_mib = 192\n\
         kernel = {:?}\ninitrd = {:?}\n\
         cmdline = \"console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=agent\"\n\
         jail = {{ uid = {UID}, gid = {UID}, jail_base = \"/tmp/qvm-jail\", cgroup_base = \"/sys/fs/cgroup/qvm\" }}\n",
        guest_kernel().bzimage.display().to_string(),
        guest_initramfs().display().to_string(),
    );
    let domains_path = d.join("domains.toml");
    std::fs::write(&domains_path, domains).unwrap();
    let script = format!(
        r#"set -u
export XDG_RUNTIME_DIR=/tmp/qvm-desktop-jrt QVM_VMM={vmm} QVM_JAILER={jailer}
rt=$XDG_RUNTIME_DIR/qvm
rm -rf $XDG_RUNTIME_DIR; mkdir -p -m 755 $XDG_RUNTIME_DIR
q="{qvm} --domains {domains}"
$q start j; echo "START $?"
vpid=""
for p in /proc/[0-9]*; do
  tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q "^{vmm} --config $rt/j/vm.toml" && vpid=${{p#/proc/}}
done
echo "VMM-UID $(awk '/^Uid:/ {{print $2}}' /proc/$vpid/status 2>/dev/null)"
out=$($q run j -- uname -r); echo "RUN $? $out"
echo "LIST"; $q list
$q stop j; echo "STOP $?"
echo "STATUS $($q status j)"
echo "VMM-LEFT $(ls -d /proc/$vpid 2>/dev/null | wc -l)"
echo "SOCKETS $(find $XDG_RUNTIME_DIR -type s | wc -l)"
[ -e /tmp/qvm-jail/j ] && echo JAIL-DIR-LEFT || echo JAIL-DIR-GONE
echo "== console"; tail -n 8 $rt/j/console.log; echo "== vmm.log"; tail -n 8 $rt/j/vmm.log
"#,
        vmm = vmm_binary().display(),
        jailer = qvm_jailer_binary().display(),
        qvm = qvm_cli_binary().display(),
        domains = domains_path.display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert_eq!(field(out, "START "), "0", "{out}");
    assert_eq!(field(out, "VMM-UID "), UID.to_string(), "{out}");
    let run = field(out, "RUN ");
    assert!(run.starts_with("0 6."), "{out}");
    assert!(out.contains("j: stopped"), "{out}");
    assert_eq!(field(out, "STOP "), "0", "{out}");
    assert!(field(out, "STATUS ").contains("stopped"), "{out}");
    assert_eq!(field(out, "VMM-LEFT "), "0", "{out}");
    assert_eq!(field(out, "SOCKETS "), "0", "{out}");
    assert!(out.contains("JAIL-DIR-GONE"), "{out}");
}
