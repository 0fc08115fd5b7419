//! virtio-net on a tap device against the real Linux driver, in the lab: the tap sits in a
//! network namespace the test creates; ping both ways and 100 MiB TCP transfers both ways with
//! checksums (qvm-vsock's pattern/checksum over TCP on both ends).

use std::time::Duration;

use qvm_tests::fixtures::qvm_vsock_binary;
use qvm_tests::lab;
use qvm_tests::util::{field, vmm_foreground};
use qvm_tests::vm::{vmm_command, ScriptVm};

const TIMEOUT: Duration = Duration::from_secs(1200);
const MIB100: u64 = 100 << 20;

#[test]
fn tap_ping_both_ways_and_100mib_tcp_both_ways() {
    let cfg = ScriptVm::on_root_disk(
        "net-tap",
        &format!(
            r#"ip link set lo up
ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "FEATURES $(cat /sys/class/net/eth0/device/features 2>/dev/null)"
if ping -c 3 -W 10 10.77.0.1 >/dev/null; then echo "GUEST-PING ok"; else echo "GUEST-PING failed"; fi
qvm-vsock client tcp:10.77.0.1:7000 send {MIB100} 11
qvm-vsock client tcp:10.77.0.1:7000 recv {MIB100} 12
# The host pings us while the transfers run (they take far longer than its 3 pings).
sleep 1
"#
        ),
    )
    .toml("\n[[net]]\ntap = \"qvmtap0\"\nmac = \"52:54:00:aa:bb:01\"\n")
    .write();
    let script = format!(
        r#"set -u
ns=qvmnet$$
ip netns add $ns
trap 'ip netns del $ns' EXIT
ip netns exec $ns sh -c '
set -u
ip link set lo up
ip tuntap add qvmtap0 mode tap
ip addr add 10.77.0.1/24 dev qvmtap0
ip link set qvmtap0 up
{tool} serve tcp:7000 >/dev/null 2>&1 &
srv=$!
(i=0; until busybox ping -c 1 -W 1 10.77.0.2 >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 600 ] && exit 1; sleep 0.1; done
 busybox ping -c 3 -W 5 10.77.0.2 >/dev/null && echo "HOST-PING ok") &
pinger=$!
{vmm}kill $pinger 2>/dev/null; wait $pinger 2>/dev/null
kill $srv
'
"#,
        tool = qvm_vsock_binary().display(),
        vmm = vmm_foreground(&vmm_command(&cfg, 1000)),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    assert!(out.contains("QVM-SCRIPT-EXIT 0"), "{out}");
    assert_eq!(field(out, "MAC "), "52:54:00:aa:bb:01", "{out}");
    assert_eq!(field(out, "GUEST-PING "), "ok", "{out}");
    assert_eq!(field(out, "HOST-PING "), "ok", "{out}");
    assert!(field(out, "SEND ").starts_with("ok "), "{out}");
    assert!(field(out, "RECV ").starts_with("ok "), "{out}");
    eprintln!(
        "guest->host {} MB/s, host->guest {} MB/s",
        field(out, "SEND ").rsplit(' ').next().unwrap_or("?"),
        field(out, "RECV ").rsplit(' ').next().unwrap_or("?")
    );
}
