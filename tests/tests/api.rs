//! A real Linux guest configured and driven only through the REST API, in the lab: configure,
//! start, pause (the guest prints nothing and its clock stops), resume, metrics that move with
//! the guest's disk I/O, and a graceful shutdown through the ACPI power button.

use std::time::Duration;

use qvm_tests::fixtures::{guest_initramfs, guest_kernel, script_disk, sparse_image, vmm_binary};
use qvm_tests::lab;
use qvm_tests::util::{field, share_dir};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(900);

fn metric(m: &Value, disk: &str, key: &str) -> u64 {
    m["devices"][disk][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no devices.{disk}.{key} in {m}"))
}

#[test]
fn api_only_guest_pauses_with_its_clock_and_reports_io() {
    let d = share_dir("api");
    let script = d.join("script.img");
    script_disk(
        &script,
        r#"echo "GUEST-READY $(nproc)"
i=0; while [ $i -lt 24 ]; do echo "TICK $(cut -d' ' -f1 /proc/uptime)"; sleep 0.25; i=$((i+1)); done
# Wait for the host to have paused and resumed us (it creates nothing we can see: count on time).
i=0; while [ $i -lt 40 ]; do echo "TICK $(cut -d' ' -f1 /proc/uptime)"; sleep 0.25; i=$((i+1)); [ -e /tmp/never ] && break; done
dd if=/dev/urandom of=/dev/vdb bs=64k count=32 conv=fsync 2>/dev/null
dd if=/dev/vdb of=/dev/null bs=64k count=32 2>/dev/null
echo "IO-DONE"
while :; do echo "TICK $(cut -d' ' -f1 /proc/uptime)"; sleep 0.25; done
"#,
    );
    let data = d.join("data.img");
    sparse_image(&data, 8 << 20);
    let boot = serde_json::json!({
        "kernel": guest_kernel().vmlinux,
        "initrd": guest_initramfs(),
        "cmdline": "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet qvm.mode=run qvm.script=/dev/vda",
    });
    let script_disk_json = serde_json::json!({ "path": script, "read_only": true });
    let data_disk_json = serde_json::json!({ "path": data });
    let t = "/tmp/qvm-api-test";
    let host = format!(
        r#"set -u
t={t}
rm -rf $t; mkdir -p $t
sock=$t/api.sock
timeout 800 {vmm} --api-sock $sock </dev/null >$t/vmm.log 2>$t/vmm.log.vmm &
vmm=$!
ctl() {{ {vmm} ctl --api-sock $sock "$@"; }}
i=0; until [ -S $sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "STATE-EMPTY $(ctl get /vm | grep -o '"state":"[a-z_]*"')"
ctl put /vm/machine '{{"vcpus": 2, "memory_mib": 256}}' && echo "PUT machine"
ctl put /vm/boot {boot} && echo "PUT boot"
ctl put /vm/console '{{"mode": "file", "path": "'$t/console'"}}' && echo "PUT console"
ctl put /vm/disks/script {script_disk} && echo "PUT script"
ctl put /vm/disks/data {data_disk} && echo "PUT data"
echo "STATE-CONFIGURED $(ctl get /vm | grep -o '"state":"[a-z_]*"')"
ctl action start && echo "STARTED"
waitfor() {{
  i=0; until grep -q "$1" $t/console 2>/dev/null; do
    i=$((i+1)); [ $i -gt 3000 ] && {{ echo "TIMEOUT waiting for $1"; return 1; }}
    kill -0 $vmm 2>/dev/null || {{ echo "VMM died waiting for $1"; return 1; }}
    sleep 0.2
  done
}}
ticks() {{ grep -c TICK $t/console; }}
if waitfor GUEST-READY && waitfor TICK; then
  echo "METRICS-BEFORE $(ctl get /metrics)"
  ctl action pause && echo "PAUSED"
  echo "STATE-PAUSED $(ctl get /vm | grep -o '"state":"[a-z_]*"')"
  n1=$(ticks); last=$(grep TICK $t/console | tail -1 | cut -d' ' -f2)
  sleep 4
  n2=$(ticks)
  echo "TICKS-WHILE-PAUSED $((n2 - n1))"
  ctl action resume && echo "RESUMED"
  i=0; until [ $(ticks) -gt $n2 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
  next=$(grep TICK $t/console | sed -n "$((n2 + 1))p" | cut -d' ' -f2)
  echo "UPTIME-ACROSS-PAUSE $last $next"
  waitfor IO-DONE && echo "METRICS-AFTER $(ctl get /metrics)"
  ctl put /actions '{{"action": "shutdown", "timeout_s": 120}}' && echo "SHUTDOWN-SENT"
fi
wait $vmm
echo "VMM-EXIT $?"
cat $t/vmm.log
echo "--- qvm-vmm"; cat $t/vmm.log.vmm
head -c 3000 $t/console
"#,
        vmm = vmm_binary().display(),
        boot = lab::shell_quote(&boot.to_string()),
        script_disk = lab::shell_quote(&script_disk_json.to_string()),
        data_disk = lab::shell_quote(&data_disk_json.to_string()),
    );
    let r = lab::run_or_panic(&host, TIMEOUT);
    let out = &r.output;
    assert_eq!(
        field(out, "STATE-EMPTY "),
        r#""state":"not_configured""#,
        "{out}"
    );
    assert_eq!(
        field(out, "STATE-CONFIGURED "),
        r#""state":"configured""#,
        "{out}"
    );
    assert!(out.contains("STARTED"), "{out}");
    assert_eq!(field(out, "GUEST-READY "), "2", "{out}");
    assert_eq!(field(out, "STATE-PAUSED "), r#""state":"paused""#, "{out}");
    assert_eq!(
        field(out, "TICKS-WHILE-PAUSED "),
        "0",
        "the guest ran while paused: {out}"
    );
    let across: Vec<f64> = field(out, "UPTIME-ACROSS-PAUSE ")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or_else(|_| panic!("{x}: {out}")))
        .collect();
    assert_eq!(across.len(), 2, "{out}");
    // The host paused for 4 s; the guest's clock must not have seen it (ticks are 0.25 s apart;
    // allow for a slow nested guest).
    assert!(
        across[1] - across[0] < 2.0,
        "the guest clock ran on while paused: {across:?}\n{out}"
    );
    let before: Value = serde_json::from_str(field(out, "METRICS-BEFORE ")).expect("metrics JSON");
    let after: Value = serde_json::from_str(field(out, "METRICS-AFTER ")).expect("metrics JSON");
    assert!(
        metric(&after, "disk:data", "bytes_written")
            >= metric(&before, "disk:data", "bytes_written") + (2 << 20),
        "{before}\n{after}"
    );
    assert!(
        metric(&after, "disk:data", "requests") > metric(&before, "disk:data", "requests"),
        "{before}\n{after}"
    );
    assert!(
        after["vcpu_exits"]["mmio"].as_u64() > before["vcpu_exits"]["mmio"].as_u64(),
        "{before}\n{after}"
    );
    // shutdown presses the ACPI power button (GED -> PNP0C0C -> KEY_POWER); the guest's init
    // sees the event and powers off by itself, long before the forced stop.
    assert!(out.contains("SHUTDOWN-SENT"), "{out}");
    assert!(
        out.contains("qvm-init: power button pressed"),
        "the guest did not see the power button: {out}"
    );
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    assert!(out.contains("qvm-vmm: guest powered off"), "{out}");
    assert!(!out.contains("did not power off"), "{out}");
    println!("{out}");
}
