//! The Debian application image (guest/build-debian-rootfs.sh), in the lab: our
//! kernel and busybox initramfs boot with the image as a second, read-only disk, and the guest
//! script enters it with `qvm-enter-rootfs /dev/vdb -- sh -c ...`. Inside, Debian 12's weston,
//! weston-terminal and zenity (GTK3) find all their libraries, fonts and writable HOME and
//! XDG_RUNTIME_DIR; a headless weston started in the guest serves zenity and weston-terminal as
//! real Wayland clients; our qvm-wl-proxy is in PATH.

use std::time::{Duration, Instant};

use qvm_tests::fixtures::debian_rootfs;
use qvm_tests::lab;
use qvm_tests::util::{field, vmm_apart};
use qvm_tests::vm::{vmm_command, ScriptVm};

const TIMEOUT: Duration = Duration::from_secs(900);

/// Runs inside the Debian root (dash; no single quotes: it is passed as `sh -c '...'`).
const IN_DEBIAN: &str = r##"
up() { cut -d" " -f1 /proc/uptime; }
echo "T-ENTERED $(up)"
echo "DEBIAN-VERSION $(cat /etc/debian_version)"
if touch /usr/.qvm-probe 2>/dev/null; then echo "ROOT-READONLY no"; else echo "ROOT-READONLY yes"; fi
for d in "$HOME" "$XDG_RUNTIME_DIR" /tmp /var/tmp; do
  if echo x >"$d/.qvm-probe"; then echo "WRITABLE $d"; fi
done
echo "HOME-IS $HOME"
echo "XDG-IS $XDG_RUNTIME_DIR $(stat -c %a "$XDG_RUNTIME_DIR")"
echo "PROXY $(command -v qvm-wl-proxy)"
echo "TERMINAL-HELP $(weston-terminal --help 2>&1 | head -n 1)"
echo "LDD-MISSING $(ldd /usr/bin/weston-terminal | grep -c "not found")"
echo "T-LDD $(up)"
echo "FONTS $(fc-list | grep -c DejaVu)"
echo "T-CHECKS $(up)"
weston --backend=headless-backend.so --shell=kiosk-shell.so --socket=wl-test --use-pixman \
  --idle-time=0 >/tmp/weston.log 2>&1 &
w=$!
i=0; until [ -S "$XDG_RUNTIME_DIR/wl-test" ]; do
  i=$((i+1)); if [ $i -gt 600 ]; then echo "WESTON did not start"; cat /tmp/weston.log; break; fi
  sleep 0.1
done
echo "T-WESTON $(up)"
export WAYLAND_DISPLAY=wl-test
v=$(zenity --version 2>/tmp/zenity.err)
echo "ZENITY $v"
sed "s/^/ZENITY-STDERR /" /tmp/zenity.err | head -n 5
echo "T-ZENITY $(up)"
printf "#!/bin/sh\necho started >/tmp/term-shell\nexec sleep 1000\n" >/tmp/term-shell.sh
chmod +x /tmp/term-shell.sh
weston-terminal --shell=/tmp/term-shell.sh 2>/tmp/term.err &
t=$!
i=0; until [ -s /tmp/term-shell ]; do
  i=$((i+1)); if [ $i -gt 600 ] || ! kill -0 $t 2>/dev/null; then cat /tmp/term.err; break; fi
  sleep 0.1
done
echo "TERMINAL-SHELL $(cat /tmp/term-shell 2>/dev/null)"
echo "T-TERMINAL $(up)"
kill $t $w 2>/dev/null
wait $w
"##;

#[test]
fn weston_terminal_and_zenity_run_in_the_debian_image() {
    let cfg = ScriptVm::new(
        "debian",
        &format!(
            "qvm-enter-rootfs /dev/vdb -- sh -c '{IN_DEBIAN}'\necho \"ENTER-EXIT $?\"\n\
             echo \"REENTER $(qvm-enter-rootfs /dev/vdb -- cat /etc/debian_version)\"\n\
             echo \"BUSYBOX-ROOT $(awk '$2 == \"/rootfs\" {{print $1, $4}}' /proc/mounts | cut -d, -f1)\"\n"
        ),
    )
    .memory_mib(512)
    .disk(debian_rootfs(), true, Some("qvm-debian"))
    .write();
    let started = Instant::now();
    let r = lab::run_or_panic(&vmm_apart(&vmm_command(&cfg, 800)), TIMEOUT);
    let out = &r.output;
    eprintln!("guest run: {:.1} s wall", started.elapsed().as_secs_f64());
    for l in out.lines().filter(|l| l.contains("ZENITY-STDERR")) {
        eprintln!("  {}", l.trim());
    }
    for l in out.lines().filter(|l| l.trim_start().starts_with("T-")) {
        eprintln!("  {}", l.trim());
    }
    assert_eq!(r.code, 0, "{out}");
    assert!(out.contains("QVM-SCRIPT-EXIT 0"), "{out}");
    assert_eq!(field(out, "ENTER-EXIT "), "0", "{out}");
    assert!(!out.contains("qvm-enter-rootfs:"), "{out}");
    assert_eq!(field(out, "BUSYBOX-ROOT "), "/dev/vdb ro", "{out}");
    let version = field(out, "DEBIAN-VERSION ");
    assert!(version.starts_with("12."), "not bookworm: {version}\n{out}");
    assert_eq!(
        field(out, "REENTER "),
        version,
        "a second entry failed:\n{out}"
    );
    assert_eq!(field(out, "ROOT-READONLY "), "yes", "{out}");
    for d in ["/root", "/run/user/0", "/tmp", "/var/tmp"] {
        assert!(
            out.lines().any(|l| l.trim() == format!("WRITABLE {d}")),
            "{d} is not writable:\n{out}"
        );
    }
    assert_eq!(field(out, "HOME-IS "), "/root", "{out}");
    assert_eq!(field(out, "XDG-IS "), "/run/user/0 700", "{out}");
    assert_eq!(field(out, "PROXY "), "/run/qvm/bin/qvm-wl-proxy", "{out}");
    assert!(
        field(out, "TERMINAL-HELP ").starts_with("Usage: weston-terminal"),
        "{out}"
    );
    assert_eq!(field(out, "LDD-MISSING "), "0", "{out}");
    let fonts: u32 = field(out, "FONTS ").parse().unwrap();
    assert!(fonts > 0, "fc-list shows no DejaVu font:\n{out}");
    let zenity = field(out, "ZENITY ");
    assert!(
        zenity.starts_with("3.") && zenity.split('.').all(|p| p.parse::<u32>().is_ok()),
        "zenity --version: {zenity:?}\n{out}"
    );
    assert_eq!(
        field(out, "TERMINAL-SHELL "),
        "started",
        "weston-terminal did not start its shell:\n{out}"
    );
}
