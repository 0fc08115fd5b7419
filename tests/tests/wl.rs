//! virtio-wl end to end, in the lab: weston (headless backend, pixman renderer) runs in L1, our
//! VMM connects the guest's Wayland contexts to it, the guest's `qvm-wl-demo` allocates its
//! buffers from /dev/wl0 (host memory), draws a known pattern and commits frames. The test then
//! takes a screenshot from weston and checks every pixel of the guest's window against the
//! pattern: the compositor read the guest's pixels from the very memfds the guest drew into.

use std::time::Duration;

use qvm_tests::fixtures::{
    disk_toml, guest_initramfs, guest_kernel, qvm_wl_check_binary, qvm_wl_demo_binary, script_disk,
    vm_toml, vmm_binary,
};
use qvm_tests::lab;
use qvm_tests::util::{field, share_dir, WAITFOR_IN_LOG};
use qvm_tests::wayland::{start_weston, start_weston_x11};

const TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn guest_window_reaches_weston_pixel_exact() {
    let (w, h, frames) = (320u32, 240u32, 12u32);
    let d = share_dir("wl");
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        &format!(
            r#"if [ -e /dev/wl0 ]; then echo "WL-DEV present"; else echo "WL-DEV missing"; fi
qvm-wl-demo --width {w} --height {h} --frames {frames} --hold 600 &
while :; do sleep 1000; done
"#
        ),
    );
    let rt = "/tmp/qvm-wl-test";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=run qvm.script=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        256,
        cmdline,
    );
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    text.push_str(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let shots = d.join("shots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = format!(
        r#"set -u
rt={rt}
rm -rf $rt; mkdir -p $rt; chmod 700 $rt
log=$rt/vmm.log
{weston}
timeout 800 {vmm} --config {cfg} </dev/null >$log 2>$log.vmm &
vmm=$!
{WAITFOR_IN_LOG}
if waitfor QVM-WL-HOLD; then
  cd {shots} && WAYLAND_DISPLAY=wl-qvm timeout 60 weston-screenshooter
  png=$(ls {shots}/*.png | head -n1)
  echo "CHECK $({check} "$png" --width {w} --height {h} --frame {last} 2>&1 | tail -n 3 | tr '\n' ' ')"
  grep -i "virtio-wl\|wl0" $log | head -n 5
fi
kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
kill $weston 2>/dev/null
cat $log
echo "--- qvm-vmm"; cat $log.vmm
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        weston = start_weston(640, 480),
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        check = qvm_wl_check_binary().display(),
        shots = shots.display(),
        last = frames - 1,
    );
    let r = lab::run(&script, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = &r.output;
    assert_eq!(field(out, "WL-DEV "), "present", "{out}");
    assert!(
        field(out, "CHECK ").contains("QVM-WL-CHECK ok"),
        "the screenshot does not show the guest's pattern:\n{out}"
    );
    eprintln!("{}", field(out, "CHECK "));
    // SIGTERM from the test, not a crash: 128 + 15.
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}

/// The clipboard crosses the VM boundary both ways through virtio-wl pipes, one step at a
/// time: the host owns a selection before the VM starts and a guest client reads it; then a
/// guest client owns one and a host client reads it. weston's x11 backend (under Xvfb) is used
/// because the headless one has no seat.
///
/// Only one reader is ever up: weston answers a receive only on the newest offer of a source
/// (`data_offer_receive`: `offer == offer->source->offer`, else it closes the fd), and every
/// client that takes keyboard focus gets a new offer. A reader whose window appeared while
/// another was between its offer and its receive made that one read EOF and nothing: the
/// empty host read the earlier version of this test saw, with guest readers polling beside it.
#[test]
fn clipboard_both_ways_over_pipes() {
    let d = share_dir("wl-clip");
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        r#"# The host's selection was set before the VM started.
out=$(qvm-wl-demo --frames 1 --title guest-reader --get-selection --wait 300 2>&1)
rc=$?
echo "GUEST-GOT $(echo "$out" | grep QVM-WL-SELECTION) rc=$rc"
[ $rc = 0 ] || echo "GUEST-READER-LOG $out"
# Now the guest owns one; the host reads it after QVM-WL-SELECTION-SET.
qvm-wl-demo --frames 1 --hold 900 --title guest-owner --set-selection guest-to-host-42 &
while :; do sleep 1000; done
"#,
    );
    let rt = "/tmp/qvm-wl-clip";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=run qvm.script=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        256,
        cmdline,
    );
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    // The host -> guest direction needs an open clipboard (gated is the default; see
    // clipboard_is_gated_until_the_host_allows_a_paste).
    text.push_str(&format!(
        "\n[wayland]\nsocket = \"{rt}/wl-qvm\"\nclipboard = \"open\"\n"
    ));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        r#"set -u
rt={rt}
rm -rf $rt; mkdir -p $rt; chmod 700 $rt
{weston}
export WAYLAND_DISPLAY=wl-qvm
{demo} --transport socket --frames 1 --hold 900 --title host-owner --set-selection host-to-guest-7 >$rt/owner.log 2>&1 &
owner=$!
i=0; until grep -q QVM-WL-SELECTION-SET $rt/owner.log; do
  i=$((i+1)); [ $i -gt 600 ] && {{ echo "HOST-OWNER did not set its selection"; cat $rt/owner.log; break; }}
  sleep 0.2
done
log=$rt/vmm.log
timeout 900 {vmm} --config {cfg} </dev/null >$log 2>$log.vmm &
vmm=$!
waitfor() {{
  i=0; until grep -q "$1" $log; do
    i=$((i+1)); [ $i -gt 3000 ] && {{ echo "TIMEOUT waiting for $1"; return 1; }}
    kill -0 $vmm 2>/dev/null || {{ echo "VMM died waiting for $1"; return 1; }}
    grep -q "qvm-wl-demo: error" $log && {{ echo "GUEST-ERROR waiting for $1"; return 1; }}
    sleep 0.2
  done
}}
if waitfor GUEST-GOT && waitfor QVM-WL-SELECTION-SET; then
  echo "HOST-GOT $(timeout 400 {demo} --transport socket --frames 1 --title host-reader --get-selection --wait 300 2>&1 | grep QVM-WL-SELECTION)"
fi
kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
kill $owner $weston $xvfb 2>/dev/null
cat $log
echo "--- qvm-vmm"; cat $log.vmm
echo "--- owner"; cat $rt/owner.log
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        weston = start_weston_x11(800, 600),
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        demo = qvm_wl_demo_binary().display(),
    );
    // Above the sum of the script's own bounds (2 + 10 + 10 + 7 minutes), so a stuck step
    // still ends the script and prints the logs.
    let r = lab::run(&script, Duration::from_secs(2400)).unwrap_or_else(|e| panic!("{e}"));
    let out = &r.output;
    assert_eq!(
        field(out, "GUEST-GOT "),
        "QVM-WL-SELECTION host-to-guest-7 rc=0",
        "{out}"
    );
    assert_eq!(
        field(out, "HOST-GOT "),
        "QVM-WL-SELECTION guest-to-host-42",
        "{out}"
    );
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}

/// A hostile guest through the real driver: huge and zero sizes, unknown and unterminated
/// context names, unsupported types, more objects and memory than the VM's `[wayland]` limits,
/// a foreign fd in a SEND, garbage to the compositor. Every misuse gets an error (the limits
/// answer, not the host), and the VMM then still serves a normal client.
#[test]
fn hostile_guest_gets_errors_and_the_vmm_lives() {
    let d = share_dir("wl-hostile");
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        r#"qvm-wl-demo --hostile
echo "HOSTILE-EXIT $?"
qvm-wl-demo --width 64 --height 64 --frames 3 >/tmp/after 2>&1
echo "AFTER-EXIT $? $(grep QVM-WL-DONE /tmp/after)"
"#,
    );
    let rt = "/tmp/qvm-wl-hostile";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=run qvm.script=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        256,
        cmdline,
    );
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    text.push_str(&format!(
        "\n[wayland]\nsocket = \"{rt}/wl-qvm\"\nmax_vfds = 40\nmax_buffer_mib = 16\n"
    ));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        r#"set -u
rt={rt}
rm -rf $rt; mkdir -p $rt; chmod 700 $rt
{weston}
timeout 600 {vmm} --config {cfg} </dev/null >$rt/vmm.log 2>$rt/vmm.log.vmm
echo "VMM-EXIT $?"
kill $weston 2>/dev/null
cat $rt/vmm.log
echo "--- qvm-vmm"; cat $rt/vmm.log.vmm
"#,
        weston = start_weston(640, 480),
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
    );
    let r = lab::run(&script, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = &r.output;
    let case = |name: &str| field(out, &format!("QVM-WL-HOSTILE {name} ")).to_string();
    const ENOMEM: &str = "err=12";
    assert_eq!(case("huge-alloc"), ENOMEM, "{out}");
    assert!(case("zero-alloc").starts_with("err="), "{out}");
    assert_eq!(case("unknown-named"), "err=19", "{out}");
    assert_eq!(case("unterminated-name"), "err=22", "{out}");
    assert!(case("dmabuf").starts_with("err="), "{out}");
    assert!(case("bad-type").starts_with("err="), "{out}");
    assert_eq!(case("vfd-limit"), format!("count=40 {ENOMEM}"), "{out}");
    assert_eq!(case("buffer-limit"), format!("count=4 {ENOMEM}"), "{out}");
    assert!(case("send-foreign-fd").starts_with("err="), "{out}");
    assert_eq!(case("send-garbage"), "ok", "{out}");
    assert!(case("compositor-reaction").starts_with("poll=1 "), "{out}");
    assert_eq!(field(out, "HOSTILE-EXIT "), "0", "{out}");
    assert!(
        field(out, "AFTER-EXIT ").starts_with("0 QVM-WL-DONE frames=3"),
        "{out}"
    );
    assert_eq!(field(out, "VMM-EXIT "), "0", "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// The host side of the policy: the guest's title and app id reach weston tagged with the VM's
/// name (the config file's stem, `work`), seen in weston's own protocol log (`weston --debug`
/// plus `weston-debug proto`, which prints every request with its arguments); the guest's
/// registry lacks `weston_screenshooter` (weston --debug offers it; a host client sees it);
/// binding it by its numeric name anyway gets the guest's connection hung up, counted in the
/// metrics, and the VMM serves the next client.
#[test]
fn policy_tags_titles_hides_globals_and_refuses_hidden_binds() {
    let d = share_dir("wl-policy");
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        r#"qvm-wl-demo --list-globals >/tmp/g 2>&1
echo "LIST-EXIT $?"
sed -n 's/^QVM-WL-GLOBAL /GUEST-GLOBAL /p' /tmp/g
n=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^qvmwlbind=//p')
qvm-wl-demo --bind-name "$n:weston_screenshooter" >/tmp/b 2>&1
echo "BIND-EXIT $? $(tr '\n' ' ' </tmp/b)"
qvm-wl-demo --frames 2 --title hello >/tmp/t 2>&1
echo "TITLE-EXIT $? $(grep QVM-WL-DONE /tmp/t)"
echo "GUEST-DONE"
while :; do sleep 1000; done
"#,
    );
    let rt = "/tmp/qvm-wl-policy";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=run qvm.script=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        256,
        cmdline,
    );
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    text.push_str(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"));
    // The VM's label comes from the file name.
    let template = d.join("template.toml");
    std::fs::write(&template, text).unwrap();
    let script = format!(
        r#"set -u
rt={rt}
rm -rf $rt; mkdir -p $rt; chmod 700 $rt
{weston}
export WAYLAND_DISPLAY=wl-qvm
timeout 300 weston-debug proto >$rt/proto.log 2>&1 &
proto=$!
{demo} --transport socket --list-globals >$rt/host-globals 2>&1
sed -n 's/^QVM-WL-GLOBAL /HOST-GLOBAL /p' $rt/host-globals
n=$(awk '$2 == "weston_screenshooter" {{print $4}}' $rt/host-globals)
echo "HOST-SCREENSHOOTER-NAME $n"
# The guest learns the name from its kernel command line.
sed "s|qvm.script=/dev/vda|qvm.script=/dev/vda qvmwlbind=$n|" {template} >$rt/work.toml
log=$rt/vmm.log
timeout 600 {vmm} --config $rt/work.toml --api-sock $rt/api.sock </dev/null >$log 2>$log.vmm &
vmm=$!
i=0; until grep -q GUEST-DONE $log; do
  i=$((i+1)); [ $i -gt 1500 ] && {{ echo "TIMEOUT waiting for the guest"; break; }}
  kill -0 $vmm 2>/dev/null || {{ echo "VMM died"; break; }}
  sleep 0.2
done
echo "METRICS $({vmm} ctl --api-sock $rt/api.sock get /metrics | tr -d ' \n')"
sleep 1
kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
kill $proto $weston $xvfb 2>/dev/null
grep -o 'set_title("[^"]*")\|set_app_id("[^"]*")' $rt/proto.log | sed 's/^/PROTO /'
cat $log
echo "--- qvm-vmm"; cat $log.vmm
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        weston = start_weston_x11(800, 600),
        vmm = vmm_binary().display(),
        template = template.display(),
        demo = qvm_wl_demo_binary().display(),
    );
    let r = lab::run(&script, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = &r.output;
    let globals = |prefix: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    let host = globals("HOST-GLOBAL ");
    let guest = globals("GUEST-GLOBAL ");
    assert!(host.iter().any(|g| g == "weston_screenshooter"), "{out}");
    assert_eq!(field(out, "LIST-EXIT "), "0", "{out}");
    for g in [
        "wl_compositor",
        "wl_shm",
        "xdg_wm_base",
        "wl_seat",
        "wl_data_device_manager",
    ] {
        assert!(guest.iter().any(|x| x == g), "guest lacks {g}:\n{out}");
    }
    for g in [
        "weston_screenshooter",
        "weston_debug_v1",
        "weston_desktop_shell",
    ] {
        assert!(!guest.iter().any(|x| x == g), "guest sees {g}:\n{out}");
    }
    assert!(guest.len() < host.len(), "{out}");
    // The refused bind: the client sees its connection end, the VMM lives.
    let bind = field(out, "BIND-EXIT ");
    assert!(
        bind.starts_with('1'),
        "the bind was not refused: {bind}\n{out}"
    );
    assert!(!bind.contains("QVM-WL-BIND ok"), "{out}");
    assert!(
        out.contains("bound global name") && out.contains("weston_screenshooter"),
        "no refusal in the VMM log:\n{out}"
    );
    assert!(
        field(out, "TITLE-EXIT ").starts_with("0 QVM-WL-DONE"),
        "{out}"
    );
    let metrics = field(out, "METRICS ");
    assert!(metrics.contains("\"binds_refused\":1"), "{metrics}");
    assert!(metrics.contains("\"policy_hangups\":1"), "{metrics}");
    // weston saw the tagged strings only.
    let proto: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PROTO "))
        .collect();
    assert!(
        proto.contains(&"set_title(\"[work] hello\")"),
        "{proto:?}\n{out}"
    );
    assert!(
        proto.contains(&"set_app_id(\"qvm.work.qvm-wl-demo\")"),
        "{proto:?}\n{out}"
    );
    assert!(!proto.contains(&"set_title(\"hello\")"), "{proto:?}");
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}

/// The host clipboard reaches the guest only after `allow_paste`, once: the guest reads
/// nothing while the host owns a selection (it is told the selection is empty), then the
/// text after `qvm-vmm ctl action allow_paste`, then nothing again. The guest waits for the
/// host's go on its serial console (the VMM's stdin) between the first and the second read,
/// so no step depends on how long the other side takes.
#[test]
fn clipboard_is_gated_until_the_host_allows_a_paste() {
    let d = share_dir("wl-gate");
    let script_img = d.join("script.img");
    script_disk(
        &script_img,
        r#"get() {
  out=$(timeout 300 qvm-wl-demo --frames 1 --title guest-reader --get-selection --wait 240 2>&1 | tr '\n' ' ')
  case "$out" in *host-secret-9*) echo "GUEST-$1 got" ;; *) echo "GUEST-$1 none: $out" ;; esac
}
# The host owns its selection before the VMM starts; when it sees GUEST-ASK-PASTE it allows
# the paste and then writes a line to this console.
get FIRST
echo "GUEST-ASK-PASTE"
read -r go
echo "GUEST-GO $go"
get SECOND
get THIRD
echo "GUEST-DONE"
while :; do sleep 1000; done
"#,
    );
    let rt = "/tmp/qvm-wl-gate";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=run qvm.script=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        256,
        cmdline,
    );
    text.push_str(&disk_toml(&script_img, true, Some("qvm-script")));
    text.push_str(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        r#"set -u
rt={rt}
rm -rf $rt; mkdir -p $rt; chmod 700 $rt
{weston}
export WAYLAND_DISPLAY=wl-qvm
{demo} --transport socket --frames 1 --hold 900 --title host-owner --set-selection host-secret-9 >$rt/owner.log 2>&1 &
owner=$!
i=0; until grep -q QVM-WL-SELECTION-SET $rt/owner.log; do
  i=$((i+1)); [ $i -gt 600 ] && {{ echo "HOST-OWNER did not set its selection"; cat $rt/owner.log; break; }}
  sleep 0.2
done
log=$rt/vmm.log
# The guest's console input: the host's go after allow_paste (kept open on fd 3).
mkfifo $rt/in.fifo
timeout 900 {vmm} --config {cfg} --api-sock $rt/api.sock <$rt/in.fifo >$log 2>$log.vmm &
vmm=$!
exec 3>$rt/in.fifo
waitfor() {{
  i=0; until grep -q "$1" $log; do
    i=$((i+1)); [ $i -gt 1500 ] && {{ echo "TIMEOUT waiting for $1"; return 1; }}
    kill -0 $vmm 2>/dev/null || {{ echo "VMM died waiting for $1"; return 1; }}
    sleep 0.2
  done
}}
if waitfor GUEST-ASK-PASTE; then
  echo "ALLOW $({vmm} ctl --api-sock $rt/api.sock action allow_paste 2>&1 | tr -d '\n')"
  echo allowed >&3
  waitfor GUEST-DONE
  echo "METRICS $({vmm} ctl --api-sock $rt/api.sock get /metrics | tr -d ' \n')"
fi
kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
kill $owner $weston $xvfb 2>/dev/null
cat $log
echo "--- qvm-vmm"; cat $log.vmm
echo "--- owner"; cat $rt/owner.log
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        weston = start_weston_x11(800, 600),
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        demo = qvm_wl_demo_binary().display(),
    );
    let r = lab::run(&script, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = &r.output;
    assert!(field(out, "GUEST-FIRST ").starts_with("none"), "{out}");
    assert_eq!(field(out, "GUEST-SECOND "), "got", "{out}");
    assert!(field(out, "GUEST-THIRD ").starts_with("none"), "{out}");
    let metrics = field(out, "METRICS ");
    assert!(metrics.contains("\"pastes_allowed\":1"), "{metrics}");
    assert!(!metrics.contains("\"selections_gated\":0"), "{metrics}");
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}
