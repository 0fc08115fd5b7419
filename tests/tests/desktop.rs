//! The qvm desktop in the lab: three VMs declared in a domains file, two started with
//! `qvm start`, a command run in one with `qvm run` (its escape sequences kept from the host's
//! terminal unless `--raw`), a file copied from one VM into the other's
//! `~/Incoming/<source>/` with `qvm copy --from ... --yes` (and refused without the
//! confirmation) and a host file into `~/Incoming/dom0/`, `qvm status` showing both running
//! and the third stopped, a VMM killed behind qvm's back detected as stale and cleaned, then
//! both stopped with `qvm stop`: no qvm-vmm left, no sockets left.
use std::time::Duration;

use qvm_tests::fixtures::{qvm_cli_binary, vmm_binary};
use qvm_tests::lab;
use qvm_tests::util::{field, share_dir};
use qvm_tests::vm::{domain, write_domains};

const TIMEOUT: Duration = Duration::from_secs(600);

/// The `qvm list` row of `vm` after the line `marker`.
fn row<'a>(out: &'a str, marker: &str, vm: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.starts_with(marker))
        .find(|l| l.split_whitespace().next() == Some(vm))
        .unwrap_or_else(|| panic!("no {vm} row after {marker:?} in:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn three_vms_start_run_copy_status_stop() {
    let d = share_dir("desktop");
    let domains: Vec<String> = [("a", "red"), ("b", "green"), ("c", "blue")]
        .iter()
        .map(|(name, label)| {
            domain(
                name,
                192,
                "agent",
                &format!("label = {label:?}\nvcpus = 1\n"),
            )
        })
        .collect();
    let domains_path = write_domains(&d, &domains);
    // The runtime dir lives in L1's /tmp: unix sockets on the 9p share do not work.
    let script = format!(
        r#"set -u
export XDG_RUNTIME_DIR=/tmp/qvm-desktop-rt QVM_VMM={vmm}
rt=$XDG_RUNTIME_DIR/qvm
rm -rf $XDG_RUNTIME_DIR; mkdir -p -m 700 $XDG_RUNTIME_DIR
q="{qvm} --domains {domains}"
t0=$(date +%s)
# Live (not zombie) qvm-vmm processes of our VMs, from /proc (one grep: forks are slow in L1).
vmms() {{
  n=0
  for f in $(grep -la "$rt/[a-z]*/vm.toml" /proc/[0-9]*/cmdline 2>/dev/null); do
    grep -q '^State:.*Z' ${{f%/cmdline}}/status 2>/dev/null || n=$((n+1))
  done
  echo $n
}}
$q start a; echo "START-A $?"
$q start b; echo "START-B $?"
echo "T+$(( $(date +%s) - t0 ))s after: q start b"
$q start a; echo "START-A-AGAIN $?"
out=$($q run a -- uname -r); echo "RUN-CODE $? UNAME $out"
echo "T+$(( $(date +%s) - t0 ))s after: q run a -- uname -r)"
echo "HOST-UNAME $(uname -r)"
# A guest's output to a terminal cannot drive it (write the clipboard with OSC 52, clear the
# screen): under a pty, qvm run drops the escapes; --raw passes them.
evil='A\033]52;c;ZXZpbA==\007B\033[2JC\n'
script -qec "$q run a -- printf '$evil'" /dev/null </dev/null >/tmp/tty.out; echo "TTY-CODE $?"
echo "TTY-ESC $(tr -cd '\033' </tmp/tty.out | wc -c) TEXT $(tr -d '\r' </tmp/tty.out)"
script -qec "$q run --raw a -- printf '$evil'" /dev/null </dev/null >/tmp/raw.out
echo "RAW-ESC $(tr -cd '\033' </tmp/raw.out | wc -c)"
$q run a -- sh -c 'echo "note from a $((6*7))" > /root/note.txt'; echo "WRITE-CODE $?"
$q copy --from a /root/note.txt b </dev/null >/tmp/noconfirm.out 2>&1
echo "NOCONFIRM-CODE $? $(cat /tmp/noconfirm.out)"
$q copy --from a /root/note.txt b --yes; echo "COPY-CODE $?"
echo "T+$(( $(date +%s) - t0 ))s after: q copy --from a /root/note.txt b --yes"
out=$($q run b -- cat /root/Incoming/a/note.txt); echo "INCOMING-CODE $? $out"
$q copy --from a /root/note.txt b --yes >/tmp/again.out 2>&1; echo "AGAIN-CODE $? $(cat /tmp/again.out)"
$q run b -- sh -c 'exit 7'; echo "EXIT-CODE $?"
echo "from the host" > /tmp/host-note.txt
$q copy /tmp/host-note.txt a --yes >/dev/null; echo "HOSTCOPY-CODE $?"
out=$($q run a -- cat /root/Incoming/dom0/host-note.txt); echo "DOM0-INCOMING $? $out"
echo "LIST-1"; $q list
echo "T+$(( $(date +%s) - t0 ))s after: echo LIST-1"
echo "VMM-PROCS-RUNNING $(vmms)"
$q start c >/dev/null; pid=$(cat $rt/c/pid); kill -9 $pid
echo "T+$(( $(date +%s) - t0 ))s after: q start c >/dev/null"
i=0; while [ -d /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
echo "STALE-BEFORE $(ls $rt/c | tr '\n' ' ')"
echo "STATUS-C $($q status c)"
echo "T+$(( $(date +%s) - t0 ))s after: echo STATUS-C q status c"
echo "STALE-AFTER $(ls $rt/c | tr '\n' ' ')"
$q stop a; echo "STOP-A $?"
echo "T+$(( $(date +%s) - t0 ))s after: q stop a"
$q stop b; echo "STOP-B $?"
echo "T+$(( $(date +%s) - t0 ))s after: q stop b"
$q stop c; echo "STOP-C $?"
echo "LIST-2"; $q list
echo "VMM-PROCS $(vmms)"
echo "SOCKETS $(find $XDG_RUNTIME_DIR -type s | wc -l)"
echo "ELAPSED $(( $(date +%s) - t0 ))"
for v in a b c; do echo "== $v console"; tail -n 5 $rt/$v/console.log; echo "== $v vmm.log"; tail -n 5 $rt/$v/vmm.log; done
"#,
        vmm = vmm_binary().display(),
        qvm = qvm_cli_binary().display(),
        domains = domains_path.display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    for key in [
        "START-A ",
        "START-B ",
        "START-A-AGAIN ",
        "WRITE-CODE ",
        "COPY-CODE ",
    ] {
        assert_eq!(field(out, key), "0", "{key}: {out}");
    }
    assert!(out.contains("a: already running"), "{out}");
    let uname = field(out, "RUN-CODE ");
    assert!(
        uname.starts_with("0 UNAME ") && uname.len() > "0 UNAME ".len(),
        "{out}"
    );
    assert_ne!(
        uname.trim_start_matches("0 UNAME "),
        field(out, "HOST-UNAME "),
        "the guest kernel, not L1's: {out}"
    );
    assert_eq!(field(out, "TTY-CODE "), "0", "{out}");
    assert_eq!(field(out, "TTY-ESC "), "0 TEXT ABC", "{out}");
    assert_eq!(field(out, "RAW-ESC "), "2", "{out}");
    let noconfirm = field(out, "NOCONFIRM-CODE ");
    assert!(
        noconfirm.starts_with("1 ") && noconfirm.contains("--yes"),
        "{out}"
    );
    assert_eq!(field(out, "INCOMING-CODE "), "0 note from a 42", "{out}");
    let again = field(out, "AGAIN-CODE ");
    assert!(
        again.starts_with("1 ") && again.contains("already exists"),
        "{out}"
    );
    assert_eq!(field(out, "EXIT-CODE "), "7", "{out}");
    assert_eq!(field(out, "HOSTCOPY-CODE "), "0", "{out}");
    assert_eq!(field(out, "DOM0-INCOMING "), "0 from the host", "{out}");
    assert_eq!(row(out, "LIST-1", "a")[1], "running", "{out}");
    assert_eq!(row(out, "LIST-1", "b")[1], "running", "{out}");
    assert_eq!(row(out, "LIST-1", "c")[1], "stopped", "{out}");
    assert_eq!(row(out, "LIST-1", "a")[3], "red", "{out}");
    assert_eq!(field(out, "VMM-PROCS-RUNNING "), "2", "{out}");
    assert!(field(out, "STALE-BEFORE ").contains("api.sock"), "{out}");
    let status_c = field(out, "STATUS-C ");
    assert!(
        status_c.contains("stopped") && status_c.contains("stale"),
        "{out}"
    );
    assert!(!field(out, "STALE-AFTER ").contains("api.sock"), "{out}");
    assert_eq!(field(out, "STOP-A "), "0", "{out}");
    assert_eq!(field(out, "STOP-B "), "0", "{out}");
    assert!(
        out.contains("a: stopped") && out.contains("b: stopped"),
        "{out}"
    );
    assert!(out.contains("c: not running"), "{out}");
    for vm in ["a", "b", "c"] {
        assert_eq!(row(out, "LIST-2", vm)[1], "stopped", "{out}");
    }
    assert_eq!(field(out, "VMM-PROCS "), "0", "{out}");
    assert_eq!(field(out, "SOCKETS "), "0", "{out}");
    eprintln!("desktop scenario: {} s in L1", field(out, "ELAPSED "));
}

/// `qvm run` tells "the agent will never come" from "the guest is still booting": a domain
/// whose apps image is not a filesystem boots, its init cannot set the image up and says so
/// on the console (`QVM-AGENT-FAILED`), and `qvm run` fails at once (not after its 600 s
/// timeout) with the guest's reason; a guest that powers off without ever starting an agent
/// (`qvm.mode=hello`) ends the wait as soon as its VMM exits, quoting the VMM's log.
#[test]
fn qvm_run_says_why_an_agent_will_not_come() {
    let d = share_dir("desktop-noagent");
    // 4 MiB of zeros: no ext4 on it, so qvm-enter-rootfs cannot mount it.
    let bad_image = d.join("not-an-image.ext4");
    std::fs::write(&bad_image, vec![0u8; 4 << 20]).unwrap();
    let domains_path = write_domains(
        &d,
        &[
            domain(
                "broken",
                192,
                "agent",
                &format!(
                    "apps = {{ image = {:?} }}\n",
                    bad_image.display().to_string()
                ),
            ),
            domain("gone", 192, "hello", ""),
        ],
    );
    let script = format!(
        r#"set -u
export QVM_RUNTIME_DIR=/tmp/qvm-noagent-rt QVM_VMM={vmm}
rm -rf $QVM_RUNTIME_DIR
q="timeout 900 {qvm} --domains {domains}"
t0=$(date +%s)
out=$($q run --timeout 600 broken -- true 2>&1); rc=$?
echo "BROKEN rc=$rc secs=$(( $(date +%s) - t0 )) $(echo "$out" | tr '\n' ' ')"
$q stop broken >/dev/null 2>&1
t0=$(date +%s)
out=$($q run --timeout 600 gone -- true 2>&1); rc=$?
echo "GONE rc=$rc secs=$(( $(date +%s) - t0 )) $(echo "$out" | tr '\n' ' ')"
"#,
        vmm = vmm_binary().display(),
        qvm = qvm_cli_binary().display(),
        domains = domains_path.display(),
    );
    let r = lab::run_or_panic(&script, Duration::from_secs(1500));
    let out = &r.output;
    eprintln!("{out}");
    let broken = field(out, "BROKEN ");
    assert!(broken.starts_with("rc=1 "), "{out}");
    assert!(
        broken.contains("the guest agent of broken will not start"),
        "{out}"
    );
    assert!(broken.contains("cannot set up the apps image"), "{out}");
    // Well before the 600 s the wait was allowed.
    let secs: u64 = broken
        .split_whitespace()
        .find_map(|w| w.strip_prefix("secs="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(secs < 300, "{out}");
    let gone = field(out, "GONE ");
    assert!(gone.starts_with("rc=1 "), "{out}");
    assert!(
        gone.contains("gone stopped after") && gone.contains("before its agent answered"),
        "{out}"
    );
    assert!(gone.contains("qvm-vmm: guest powered off"), "{out}");
}
