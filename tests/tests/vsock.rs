//! virtio-vsock with a unix-socket host side, against the real Linux driver, in the lab:
//! 64 MiB each way in both directions of connection set-up (host->guest through the VMM's
//! socket and `CONNECT`, guest->host to `<socket>_<port>`), 50 concurrent connections, a host
//! peer killed mid-stream, a refused port, and `qvm-run` through the guest agent (which also
//! powers the VM off at the end).

use std::time::Duration;

use qvm_tests::fixtures::{qvm_run_binary, qvm_vsock_binary};
use qvm_tests::lab;
use qvm_tests::util::field;
use qvm_tests::vm::{start_vmm, ScriptVm};

const TIMEOUT: Duration = Duration::from_secs(1200);
const MIB64: u64 = 64 << 20;

#[test]
fn vsock_both_ways_parallel_peer_death_and_qvm_run() {
    let vm = ScriptVm::on_root_disk(
        "vsock",
        &format!(
            r#"qvm-agent 2>/dev/null &
qvm-vsock serve vsock:5001 >/tmp/srv.out 2>&1 &
i=0; until grep -q LISTENING /tmp/srv.out; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "GUEST-READY"
echo "G2H-SEND $(qvm-vsock client vsock:2:6000 send {MIB64} 31)"
echo "G2H-RECV $(qvm-vsock client vsock:2:6000 recv {MIB64} 32)"
echo "G2H-PARALLEL $(qvm-vsock client vsock:2:6000 parallel 50 65536)"
echo "GUEST-DONE"
# The host powers us off through qvm-run.
while :; do sleep 1000; done
"#
        ),
    );
    // The vsock socket lives in L1's /tmp: unix sockets on the 9p share do not work.
    let sock = "/tmp/qvm-vsock-test/vm.vsock";
    let cfg = vm
        .toml(&format!("\n[vsock]\nguest_cid = 3\nsocket = \"{sock}\"\n"))
        .write();
    let script = format!(
        r#"set -u
sock={sock}
rm -rf /tmp/qvm-vsock-test; mkdir -p /tmp/qvm-vsock-test
{tool} serve unix:${{sock}}_6000 >/dev/null 2>&1 &
srv=$!
{start_vmm}if waitfor GUEST-READY; then
  echo "H2G-SEND $({tool} client vmm:$sock:5001 send {MIB64} 21)"
  echo "H2G-RECV $({tool} client vmm:$sock:5001 recv {MIB64} 22)"
  echo "H2G-PARALLEL $({tool} client vmm:$sock:5001 parallel 50 65536)"
  {tool} client vmm:$sock:5001 send 4294967296 23 >/dev/null 2>&1 &
  victim=$!
  sleep 3; kill -9 $victim; wait $victim 2>/dev/null
  echo "AFTER-KILL $({tool} client vmm:$sock:5001 send 1048576 24)"
  echo "REFUSED $({tool} client vmm:$sock:5999 send 1 2>&1 | head -n1)"
  out=$({run} --vsock $sock -- sh -c 'echo out-$((6*7)); echo to-stderr >&2; exit 3' 2>/dev/null)
  echo "RUN-CODE $? RUN-OUT $out"
  m=$({run} --vsock $sock -- /no/such/program 2>&1)
  echo "RUN-MISSING code=$? $m"
  waitfor GUEST-DONE
  {run} --vsock $sock -- poweroff -f >/dev/null 2>&1
fi
wait $vmm
echo "VMM-EXIT $?"
kill $srv 2>/dev/null
cat $log
echo "--- qvm-vmm"; cat $log.vmm
"#,
        tool = qvm_vsock_binary().display(),
        run = qvm_run_binary().display(),
        start_vmm = start_vmm(&cfg, "/tmp/qvm-vsock-test/log", 1000, "", "/dev/null"),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    for key in ["H2G-SEND ", "H2G-RECV ", "G2H-SEND ", "G2H-RECV "] {
        assert!(
            field(out, key).split(' ').nth(1) == Some("ok"),
            "{key}: {out}"
        );
    }
    assert_eq!(field(out, "H2G-PARALLEL "), "PARALLEL 50/50", "{out}");
    assert_eq!(field(out, "G2H-PARALLEL "), "PARALLEL 50/50", "{out}");
    assert!(field(out, "AFTER-KILL ").starts_with("SEND ok"), "{out}");
    assert!(field(out, "REFUSED ").contains("refused"), "{out}");
    assert_eq!(field(out, "RUN-CODE "), "3 RUN-OUT out-42", "{out}");
    let missing = field(out, "RUN-MISSING ");
    assert!(
        missing.starts_with("code=127 ") && missing.contains("cannot run"),
        "{out}"
    );
    for key in ["H2G-SEND ", "H2G-RECV ", "G2H-SEND ", "G2H-RECV "] {
        eprintln!(
            "{key}{} MB/s",
            field(out, key).rsplit(' ').next().unwrap_or("?")
        );
    }
}
