//! virtio-wl end to end, in the lab: weston (headless backend, pixman renderer) runs in L1, our
//! VMM connects the guest's Wayland contexts to it, the guest's `qvm-wl-demo` allocates its
//! buffers from /dev/wl0 (host memory), draws a known pattern and commits frames. The test then
//! takes a screenshot from weston and checks every pixel of the guest's window against the
//! pattern: the compositor read the guest's pixels from the very memfds the guest drew into.

use std::path::Path;
use std::time::Duration;

use qvm_tests::fixtures::{qvm_wl_check_binary, qvm_wl_demo_binary, vmm_binary};
use qvm_tests::lab;
use qvm_tests::util::field;
use qvm_tests::vm::{start_vmm, ScriptVm, STOP_VMM_AND_SHOW_LOGS, WAIT_VMM_AND_SHOW_LOGS};
use qvm_tests::wayland::{host_desktop, start_weston, start_weston_x11};

const TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn guest_window_reaches_weston_pixel_exact() {
    let (w, h, frames) = (320u32, 240u32, 12u32);
    let rt = "/tmp/qvm-wl-test";
    let vm = ScriptVm::new(
        "wl",
        &format!(
            r#"if [ -e /dev/wl0 ]; then echo "WL-DEV present"; else echo "WL-DEV missing"; fi
qvm-wl-demo --width {w} --height {h} --frames {frames} --hold 600 &
while :; do sleep 1000; done
"#
        ),
    )
    .toml(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"));
    let shots = vm.dir().join("shots");
    let cfg = vm.write();
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = format!(
        r#"{desktop}{vmm}
if waitfor QVM-WL-HOLD; then
  cd {shots} && WAYLAND_DISPLAY=wl-qvm timeout 180 weston-screenshooter
  png=$(ls {shots}/*.png | head -n1)
  echo "CHECK $({check} "$png" --width {w} --height {h} --frame {last} 2>&1 | tail -n 3 | tr '\n' ' ')"
  grep -i "virtio-wl\|wl0" $log $log.vmm | head -n 5
fi
{STOP_VMM_AND_SHOW_LOGS}
kill $weston 2>/dev/null
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        desktop = host_desktop(rt, &start_weston(640, 480), false),
        vmm = start_vmm(&cfg, "$rt/console.log", 800, "", "/dev/null"),
        check = qvm_wl_check_binary().display(),
        shots = shots.display(),
        last = frames - 1,
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
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
    let rt = "/tmp/qvm-wl-clip";
    let cfg = ScriptVm::new(
        "wl-clip",
        r#"# The host's selection was set before the VM started.
out=$(qvm-wl-demo --frames 1 --title guest-reader --get-selection --wait 300 2>&1)
rc=$?
echo "GUEST-GOT $(echo "$out" | grep QVM-WL-SELECTION) rc=$rc"
[ $rc = 0 ] || echo "GUEST-READER-LOG $out"
# Now the guest owns one; the host reads it after QVM-WL-SELECTION-SET.
qvm-wl-demo --frames 1 --hold 900 --title guest-owner --set-selection guest-to-host-42 &
while :; do sleep 1000; done
"#,
    )
    // The host -> guest direction needs an open clipboard (gated is the default; see
    // clipboard_is_gated_until_the_host_allows_a_paste).
    .toml(&format!(
        "\n[wayland]\nsocket = \"{rt}/wl-qvm\"\nclipboard = \"open\"\n"
    ))
    .write();
    let script = format!(
        r#"{desktop}{demo} --transport socket --frames 1 --hold 900 --title host-owner --set-selection host-to-guest-7 >$rt/owner.log 2>&1 &
owner=$!
i=0; until grep -q QVM-WL-SELECTION-SET $rt/owner.log; do
  i=$((i+1)); [ $i -gt 600 ] && {{ echo "HOST-OWNER did not set its selection"; cat $rt/owner.log; break; }}
  sleep 0.2
done
{vmm}
# waitfor that also gives up on a guest client's error.
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
{STOP_VMM_AND_SHOW_LOGS}
kill $owner $weston $xvfb 2>/dev/null
echo "--- owner"; cat $rt/owner.log
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        desktop = host_desktop(rt, &start_weston_x11(800, 600), false),
        vmm = start_vmm(&cfg, "$rt/console.log", 900, "", "/dev/null"),
        demo = qvm_wl_demo_binary().display(),
    );
    // Above the sum of the script's own bounds (2 + 10 + 10 + 7 minutes), so a stuck step
    // still ends the script and prints the logs.
    let r = lab::run_or_panic(&script, Duration::from_secs(2400));
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
    let rt = "/tmp/qvm-wl-hostile";
    let cfg = ScriptVm::new(
        "wl-hostile",
        r#"qvm-wl-demo --hostile
echo "HOSTILE-EXIT $?"
qvm-wl-demo --width 64 --height 64 --frames 3 >/tmp/after 2>&1
echo "AFTER-EXIT $? $(grep QVM-WL-DONE /tmp/after)"
"#,
    )
    .toml(&format!(
        "\n[wayland]\nsocket = \"{rt}/wl-qvm\"\nmax_vfds = 40\nmax_buffer_mib = 16\n"
    ))
    .write();
    let script = format!(
        r#"{desktop}{vmm}
{WAIT_VMM_AND_SHOW_LOGS}
kill $weston 2>/dev/null
"#,
        desktop = host_desktop(rt, &start_weston(640, 480), false),
        vmm = start_vmm(&cfg, "$rt/console.log", 600, "", "/dev/null"),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
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
    let rt = "/tmp/qvm-wl-policy";
    // The VM's label comes from the file name: the test copies this one to work.toml.
    let template = ScriptVm::new(
        "wl-policy",
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
    )
    .toml(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"))
    .write();
    let script = format!(
        r#"{desktop}{demo} --transport socket --list-globals >$rt/host-globals 2>&1
sed -n 's/^QVM-WL-GLOBAL /HOST-GLOBAL /p' $rt/host-globals
n=$(awk '$2 == "weston_screenshooter" {{print $4}}' $rt/host-globals)
echo "HOST-SCREENSHOOTER-NAME $n"
# The guest learns the name from its kernel command line.
sed "s|qvm.script=/dev/vda|qvm.script=/dev/vda qvmwlbind=$n|" {template} >$rt/work.toml
{start_vmm}
waitfor GUEST-DONE
echo "METRICS $({vmm} ctl --api-sock $rt/api.sock get /metrics | tr -d ' \n')"
sleep 1
{STOP_VMM_AND_SHOW_LOGS}
kill $proto $weston $xvfb 2>/dev/null
grep -o 'set_title("[^"]*")\|set_app_id("[^"]*")' $rt/proto.log | sed 's/^/PROTO /'
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        desktop = host_desktop(rt, &start_weston_x11(800, 600), true),
        start_vmm = start_vmm(
            Path::new("$rt/work.toml"),
            "$rt/console.log",
            600,
            "--api-sock $rt/api.sock",
            "/dev/null"
        ),
        vmm = vmm_binary().display(),
        template = template.display(),
        demo = qvm_wl_demo_binary().display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
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
    let rt = "/tmp/qvm-wl-gate";
    let cfg = ScriptVm::new(
        "wl-gate",
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
    )
    .toml(&format!("\n[wayland]\nsocket = \"{rt}/wl-qvm\"\n"))
    .write();
    let script = format!(
        r#"{desktop}{demo} --transport socket --frames 1 --hold 900 --title host-owner --set-selection host-secret-9 >$rt/owner.log 2>&1 &
owner=$!
i=0; until grep -q QVM-WL-SELECTION-SET $rt/owner.log; do
  i=$((i+1)); [ $i -gt 600 ] && {{ echo "HOST-OWNER did not set its selection"; cat $rt/owner.log; break; }}
  sleep 0.2
done
# The guest's console input: the host's go after allow_paste (kept open on fd 3).
mkfifo $rt/in.fifo
{start_vmm}
exec 3>$rt/in.fifo
if waitfor GUEST-ASK-PASTE; then
  echo "ALLOW $({vmm} ctl --api-sock $rt/api.sock action allow_paste 2>&1 | tr -d '\n')"
  echo allowed >&3
  waitfor GUEST-DONE
  echo "METRICS $({vmm} ctl --api-sock $rt/api.sock get /metrics | tr -d ' \n')"
fi
{STOP_VMM_AND_SHOW_LOGS}
kill $owner $weston $xvfb 2>/dev/null
echo "--- owner"; cat $rt/owner.log
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        desktop = host_desktop(rt, &start_weston_x11(800, 600), false),
        start_vmm = start_vmm(
            &cfg,
            "$rt/console.log",
            900,
            "--api-sock $rt/api.sock",
            "$rt/in.fifo"
        ),
        vmm = vmm_binary().display(),
        demo = qvm_wl_demo_binary().display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    assert!(field(out, "GUEST-FIRST ").starts_with("none"), "{out}");
    assert_eq!(field(out, "GUEST-SECOND "), "got", "{out}");
    assert!(field(out, "GUEST-THIRD ").starts_with("none"), "{out}");
    let metrics = field(out, "METRICS ");
    assert!(metrics.contains("\"pastes_allowed\":1"), "{metrics}");
    assert!(!metrics.contains("\"selections_gated\":0"), "{metrics}");
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}
