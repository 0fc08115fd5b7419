//! Issue 7 in the lab: unmodified Debian applications in a VM show up on the host's weston and
//! take the host's keyboard. The guest boots our kernel and initramfs, enters the project-built
//! Debian image (read-only disk, `qvm-enter-rootfs`), starts `qvm-wl-proxy` on its
//! `wayland-0`, and runs weston-terminal (libwayland + cairo) and zenity (GTK 3). In L1, weston
//! runs on its x11 backend inside Xvfb (so it has a seat and a keyboard); xdotool types into
//! weston's window; the text must reach the guest apps: a shell command the terminal's shell
//! runs, and the line zenity's entry prints. weston's protocol log shows their titles tagged
//! with the VM's name. A client allocating its buffers from /dev/wl0 passes through the proxy
//! without a copy. Through the `qvm` desktop CLI, a domains file's `apps = { image, home }`
//! gives a VM the image and a home that outlives it.

use std::time::Duration;

use qvm_tests::fixtures::{
    debian_rootfs, disk_toml, guest_initramfs, guest_kernel, qvm_cli_binary, qvm_run_binary,
    virtiofsd_binary, vm_toml, vmm_binary,
};
use qvm_tests::lab;
use qvm_tests::util::{field, share_dir};
use qvm_tests::vm::{
    apps_and_wayland, domain, start_vmm, write_domains, ScriptVm, HOST_VIEW, STOP_VMM_AND_SHOW_LOGS,
};
use qvm_tests::wayland::{host_desktop, start_weston, start_weston_x11, WAIT_FOCUS};

const TIMEOUT: Duration = Duration::from_secs(1200);

/// What the guest runs inside the Debian image (dash). The proxy is the guest's compositor;
/// each app waits for the text the host types once, after weston gave the app keyboard focus
/// (`wait_focus`): the terminal's shell writes the typed line to a file, zenity's entry prints
/// what was typed into it. weston.ini's repeat-rate=0 keeps a release that comes late under
/// TCG from repeating a key.
const GUEST_APPS: &str = r#"qvm-wl-proxy >/tmp/proxy.log 2>&1 &
proxy=$!
i=0; until [ -S /run/user/0/wayland-0 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
head -n 1 /tmp/proxy.log
cd /tmp
SHELL=/bin/sh weston-terminal >/tmp/term.log 2>&1 &
term=$!
echo GUEST-TERM-STARTED
# The shell writes the file as it runs the typed line: wait for the whole line.
i=0; until [ -f /tmp/typed ] && [ "$(wc -l </tmp/typed)" -ge 1 ]; do
  i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.5
done
echo "TERM-TYPED $(cat /tmp/typed 2>/dev/null)"
kill $term
wait $term 2>/dev/null
echo GUEST-ZENITY-STARTED
zenity --entry --title=qvm-zenity --text=qvm >/tmp/zenity.out 2>/tmp/zenity.err
echo "ZENITY-RC $? $(cat /tmp/zenity.out)"
echo "--- zenity stderr"; tail -n 5 /tmp/zenity.err
echo "--- weston-terminal log"; tail -n 5 /tmp/term.log
# The proxy prints a client's stats line when it has left: wait for this client's.
before=$(grep -c QVM-WL-PROXY-STATS /tmp/proxy.log)
qvm-wl-demo --transport socket+wl0 --frames 3 --title passthrough >/tmp/pt.log 2>&1
echo "PASSTHROUGH-RC $? $(tail -n 1 /tmp/pt.log)"
i=0; until [ "$(grep -c QVM-WL-PROXY-STATS /tmp/proxy.log)" -gt "$before" ]; do
  i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1
done
echo "PASSTHROUGH-STATS $(grep QVM-WL-PROXY-STATS /tmp/proxy.log | tail -n 1)"
kill $proxy
wait $proxy 2>/dev/null
echo "--- proxy log"; cat /tmp/proxy.log
"#;

#[test]
fn debian_apps_show_on_the_host_and_take_typed_text() {
    let rt = "/tmp/qvm-wl-apps";
    let cfg = ScriptVm::new(
        "wl-apps",
        &format!(
            "qvm-enter-rootfs /dev/vdb -- sh -c '{}'\necho \"GUEST-APPS-EXIT $?\"\n",
            GUEST_APPS.replace('\'', "'\\''")
        ),
    )
    .memory_mib(768)
    .disk(debian_rootfs(), true, Some("debian"))
    .toml(&format!(
        "\n[wayland]\nsocket = \"{rt}/wl-qvm\"\nname = \"work\"\n"
    ))
    .write();
    let script = format!(
        r#"{desktop}xd=:$(cat $rt/xdisplay)
{vmm}
{WAIT_FOCUS}
# The pointer into weston's X window (Xvfb has no window manager: X keyboard focus follows
# it); each app gets its text typed once, after weston gave it keyboard focus.
DISPLAY=$xd xdotool mousemove 400 300
if waitfor GUEST-TERM-STARTED && wait_focus "[work] Wayland Terminal"; then
  DISPLAY=$xd xdotool type --delay 40 'echo qvm-typed-$((6*7)) > /tmp/typed
'
fi
if waitfor GUEST-ZENITY-STARTED && wait_focus "[work] qvm-zenity"; then
  DISPLAY=$xd xdotool type --delay 40 'hello-zenity'
  DISPLAY=$xd xdotool key Return
fi
waitfor GUEST-APPS-EXIT
{STOP_VMM_AND_SHOW_LOGS}
kill $proto 2>/dev/null
echo "TITLE-TERM $(grep -c 'set_title(\"\[work\] Wayland Terminal\")' $rt/proto.log)"
echo "TITLE-ZENITY $(grep -c 'set_title(\"\[work\] qvm-zenity\")' $rt/proto.log)"
echo "APPID-ZENITY $(grep -c 'set_app_id(\"qvm.work.' $rt/proto.log)"
kill $weston $xvfb 2>/dev/null
echo "--- weston log"; tail -n 20 $rt/weston.log
"#,
        desktop = host_desktop(rt, &start_weston_x11(800, 600), true),
        vmm = start_vmm(&cfg, "$rt/console.log", 1100, "", "/dev/null"),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert!(
        out.contains("QVM-WL-PROXY-READY /run/user/0/wayland-0"),
        "{out}"
    );
    assert_eq!(field(out, "TERM-TYPED "), "qvm-typed-42", "{out}");
    assert_eq!(field(out, "ZENITY-RC "), "0 hello-zenity", "{out}");
    assert_eq!(field(out, "GUEST-APPS-EXIT "), "0", "{out}");
    // A client whose buffers are /dev/wl0 allocations goes through the proxy uncopied.
    assert!(
        field(out, "PASSTHROUGH-RC ").starts_with("0 QVM-WL-DONE frames=3"),
        "{out}"
    );
    let pt = field(out, "PASSTHROUGH-STATS ");
    assert!(
        pt.contains("pools_passed_through=1") && pt.contains(" bytes_copied=0 "),
        "{out}"
    );
    // Both windows reached weston, tagged with the VM's name.
    assert_ne!(field(out, "TITLE-TERM "), "0", "{out}");
    assert_ne!(field(out, "TITLE-ZENITY "), "0", "{out}");
    assert_ne!(field(out, "APPID-ZENITY "), "0", "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// The launcher path: an agent VM with `qvm.apps=/dev/vda` runs qvm-agent inside the Debian
/// image with qvm-wl-proxy as its compositor, so `qvm-run -- APP` from the host runs a Debian
/// program whose window reaches the host's weston (here a wl_shm client through the proxy,
/// titled and seen tagged in weston's protocol log).
#[test]
fn qvm_run_starts_apps_from_the_image_on_the_host_compositor() {
    let d = share_dir("wl-apps-run");
    let rt = "/tmp/qvm-wl-apps-run";
    let cmdline = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet \
                   qvm.mode=agent qvm.apps=/dev/vda";
    let mut text = vm_toml(
        &guest_kernel().vmlinux,
        Some(guest_initramfs()),
        1,
        512,
        cmdline,
    );
    text.push_str(&disk_toml(debian_rootfs(), true, Some("debian")));
    text.push_str(&format!(
        "\n[vsock]\nguest_cid = 3\nsocket = \"{rt}/vsock.sock\"\n\
         \n[wayland]\nsocket = \"{rt}/wl-qvm\"\nname = \"apps\"\n"
    ));
    let cfg = d.join("vm.toml");
    std::fs::write(&cfg, text).unwrap();
    let script = format!(
        r#"{desktop}timeout 600 {vmm} --config {cfg} </dev/null >$rt/vmm.log 2>$rt/vmm.log.vmm &
vmm=$!
run() {{ timeout 700 {qvm_run} --vsock $rt/vsock.sock --wait 600 -- "$@"; }}
echo "DEBIAN $(run cat /etc/debian_version)"
echo "ENV $(run sh -c 'echo $XDG_RUNTIME_DIR $GDK_BACKEND')"
echo "DEMO $(run qvm-wl-demo --transport socket --frames 3 --title via-qvm-run 2>&1 | tail -n 1)"
# The proxy prints the demo's stats line once the demo has left (the only Wayland client).
echo "PROXY $(run sh -c 'i=0; until grep -q QVM-WL-PROXY-STATS /tmp/qvm-wl-proxy.log; do
  i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done; grep QVM-WL-PROXY-STATS /tmp/qvm-wl-proxy.log | tail -n 1')"
kill $vmm 2>/dev/null; wait $vmm
echo "VMM-EXIT $?"
kill $proto 2>/dev/null
echo "TITLE $(grep -c 'set_title(\"\[apps\] via-qvm-run\")' $rt/proto.log)"
kill $weston 2>/dev/null
tail -n 20 $rt/vmm.log
echo "--- qvm-vmm"; tail -n 20 $rt/vmm.log.vmm
"#,
        desktop = host_desktop(rt, &start_weston(640, 480), true),
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        qvm_run = qvm_run_binary().display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    assert!(field(out, "DEBIAN ").starts_with("12."), "{out}");
    assert_eq!(field(out, "ENV "), "/run/user/0 wayland", "{out}");
    assert!(
        field(out, "DEMO ").starts_with("QVM-WL-DONE frames=3"),
        "{out}"
    );
    let proxy = field(out, "PROXY ");
    assert!(
        proxy.contains("pools_mirrored=1") && proxy.contains("commits_copied=3"),
        "{out}"
    );
    assert_eq!(field(out, "TITLE "), "1", "{out}");
    assert_eq!(field(out, "VMM-EXIT "), "143", "{out}");
}

/// The domains file's `apps = { image, home }`: `qvm run` starts a Wayland client from the
/// image whose window reaches the host tagged `[work]`, a file written to `~` is in the host's
/// home directory after `qvm stop`, and the next boot of the VM reads it back.
#[test]
fn domains_apps_key_gives_the_image_and_a_home_that_outlives_the_vm() {
    let d = share_dir("wl-apps-domains");
    let rt = "/tmp/qvm-wl-apps-domains";
    let domains_path = write_domains(
        &d,
        &[domain("work", 512, "agent", &apps_and_wayland(rt, "work"))],
    );
    // Every step has a deadline well inside the lab's, so a step that hangs or fails still
    // leaves the VM's logs and the host's view of it (HOST_VIEW) in the output.
    let script = format!(
        r#"{desktop}export QVM_VMM={vmm} QVM_VIRTIOFSD={virtiofsd} QVM_RUNTIME_DIR=$rt/qvm
q="timeout 200 {qvm} --domains {domains}"
vm=$rt/qvm/work
$q run --timeout 150 work -- sh -c 'echo "kept-$((6*7))" > ~/note; echo "HOME=$HOME $(cat /etc/debian_version)"' \
  >$rt/run1.out 2>$rt/run1.err
rc=$?
sed 's/^/RUN1 /' $rt/run1.out; cat $rt/run1.err
[ $rc = 0 ] || {{ echo "RUN1 failed ($rc)"; {host_view}}}
demo=$($q run --timeout 150 work -- qvm-wl-demo --transport socket --frames 3 --title from-domains 2>&1 | tail -n 1)
echo "DEMO $demo"
case "$demo" in QVM-WL-DONE*) ;; *) echo "DEMO failed"; {host_view};; esac
$q stop work; echo "STOP1 $?"
echo "HOST-NOTE $(cat $rt/homes/work/note 2>&1)"
echo "HOST-MODE $(stat -c %a $rt/homes/work)"
echo "RUN2 $($q run --timeout 150 work -- cat /root/note)"
$q stop work; echo "STOP2 $?"
kill $proto 2>/dev/null
echo "TITLE $(grep -c 'set_title(\"\[work\] from-domains\")' $rt/proto.log)"
kill $weston 2>/dev/null
echo "--- console.log"; tail -n 15 $vm/console.log 2>/dev/null
echo "--- vmm.log"; tail -n 15 $vm/vmm.log 2>/dev/null
"#,
        host_view = HOST_VIEW,
        desktop = host_desktop(rt, &start_weston(640, 480), true),
        vmm = vmm_binary().display(),
        virtiofsd = virtiofsd_binary().display(),
        qvm = qvm_cli_binary().display(),
        domains = domains_path.display(),
    );
    let r = lab::run_or_panic(&script, TIMEOUT);
    let out = &r.output;
    eprintln!("{out}");
    let run1 = field(out, "RUN1 ");
    assert!(run1.starts_with("HOME=/root 12."), "{out}");
    assert!(
        field(out, "DEMO ").starts_with("QVM-WL-DONE frames=3"),
        "{out}"
    );
    assert_eq!(field(out, "STOP1 "), "0", "{out}");
    assert_eq!(field(out, "HOST-NOTE "), "kept-42", "{out}");
    assert_eq!(field(out, "HOST-MODE "), "700", "{out}");
    assert_eq!(field(out, "RUN2 "), "kept-42", "{out}");
    assert_eq!(field(out, "STOP2 "), "0", "{out}");
    assert_eq!(field(out, "TITLE "), "1", "{out}");
}
