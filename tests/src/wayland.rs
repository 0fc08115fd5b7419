//! Shell snippets for lab tests and benches that need a compositor in L1 (weston from the
//! host's packages, which L1 sees through its 9p root).

/// weston's configuration for every test and bench: desktop shell with every animation, the
/// panel and the lock screen off, and a flat background (also read by the guest-client tests).
pub const WESTON_INI: &str = include_str!("../assets/weston.ini");

/// Shell that starts weston in L1 on `$rt/wl-qvm` and waits for its socket; sets `$weston`.
/// Desktop shell with every animation and the panel off, so a screenshot shows the guest's
/// pixels unblended (kiosk-shell fullscreens the window, and weston 10's headless backend then
/// never sends a smaller buffer its frame callbacks).
pub fn start_weston(width: u32, height: u32) -> String {
    start_weston_on("--backend=headless-backend.so", width, height)
}

/// [`start_weston`] with another backend (the x11 one gives clients a seat, so a clipboard).
pub fn start_weston_on(backend: &str, width: u32, height: u32) -> String {
    format!(
        r#"export XDG_RUNTIME_DIR=$rt
cat >$rt/weston.ini <<'INI'
{ini}INI
weston --config=$rt/weston.ini {backend} --socket=wl-qvm \
  --width={width} --height={height} --use-pixman --debug --idle-time=0 >$rt/weston.log 2>&1 &
weston=$!
i=0; until [ -S $rt/wl-qvm ]; do
  i=$((i+1)); [ $i -gt 600 ] && {{ echo "WESTON did not start"; cat $rt/weston.log; break; }}
  sleep 0.1
done
"#,
        ini = WESTON_INI
    )
}

/// Shell that starts Xvfb and weston's x11 backend on it (a seat, so a clipboard); `$xvfb` and
/// `$weston` are set.
pub fn start_weston_x11(width: u32, height: u32) -> String {
    format!(
        r#"Xvfb -displayfd 1 -nolisten tcp -screen 0 1024x768x24 >$rt/xdisplay 2>$rt/xvfb.log &
xvfb=$!
i=0; until [ -s $rt/xdisplay ]; do i=$((i+1)); [ $i -gt 600 ] && {{ echo "XVFB did not start"; cat $rt/xvfb.log; break; }}; sleep 0.1; done
export DISPLAY=:$(cat $rt/xdisplay)
{weston}
unset DISPLAY
"#,
        weston = start_weston_on("--backend=x11-backend.so", width, height)
    )
}

/// Shell that defines `wait_focus TITLE`: waits (0.5 s polls, up to 10 minutes) until weston
/// has given keyboard focus to the client whose toplevel set the title TITLE, as weston's
/// protocol log `$rt/proto.log` (`weston-debug proto`, weston started with `--debug`) shows:
/// `client 0x... rq xdg_toplevel@N.set_title("TITLE")`, then `client 0x... ev
/// wl_keyboard@M.enter(`. Typing before that is what lost keys to a window not yet mapped;
/// typing after it reaches the app, so tests type once. Prints `TIMEOUT ...` and returns 1
/// when it gives up.
pub const WAIT_FOCUS: &str = r#"wait_focus() {
  i=0
  while :; do
    c=$(grep -F ".set_title(\"$1\")" $rt/proto.log | head -n 1 | sed -n 's/.*\] client \(0x[0-9a-f]*\) rq .*/\1/p')
    [ -n "$c" ] && grep -q "client $c ev wl_keyboard@[0-9]*\.enter(" $rt/proto.log && return 0
    i=$((i+1)); [ $i -gt 1200 ] && { echo "TIMEOUT waiting for keyboard focus on $1"; return 1; }
    sleep 0.5
  done
}"#;

/// Shell that opens a lab script with a host desktop: `set -u`, a fresh private runtime
/// directory `$rt` (= `rt`), the compositor that `weston` starts (one of the `start_weston*`
/// snippets), `WAYLAND_DISPLAY` exported for host clients and, with `protocol_log`, weston's
/// protocol log in `$rt/proto.log` (`weston-debug proto`, pid in `$proto`).
pub fn host_desktop(rt: &str, weston: &str, protocol_log: bool) -> String {
    let mut s = format!(
        "set -u\nrt={rt}\nrm -rf $rt; mkdir -p $rt; chmod 700 $rt\n{weston}export WAYLAND_DISPLAY=wl-qvm\n"
    );
    if protocol_log {
        s.push_str("timeout 3600 weston-debug proto >$rt/proto.log 2>&1 &\nproto=$!\n");
    }
    s
}
