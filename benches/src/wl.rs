//! README section (7), `--skip-wl`: virtio-wl frames to weston (headless, pixman) in the lab:
//! frames per second and host CPU per frame at 1 MiB, 1080p and 4K, zero-copy buffers beside
//! the copy path (the same client drawing in guest memory and copying each frame into the
//! shared buffer), in one boot. There is no QEMU peer (QEMU has no virtio-wl).
//!
//! Issue 7, the in-guest part of section (10): an ordinary wl_shm client through
//! `qvm-wl-proxy`, a cursor blink and a full-screen scroll at 1080p, damage-only copies beside
//! whole-frame copies (two proxies in the same boot): bytes the proxy copies per frame, host
//! (virtio-wl thread) and guest (vCPU threads) CPU per frame. `--wl-proxy-only` runs just these.

use std::time::Duration;

use qvm_tests::fixtures::{guest_kernel, vmm_binary};

use crate::common::{initramfs_with_script, kv, lab_config, lab_output, median, script_cmdline};

/// The wl bench's sampler (bash, run in L1 beside the VMM): see the comment in the script.
const WL_SAMPLER: &str = r#"cat >$rt/sample.sh <<'SAMPLER'
vmm=$1; log=$2; sock=$3; bin=$4
wltid=
cpu() {
  dev=0; all=0
  for t in /proc/$vmm/task/*; do
    read -r ns rest 2>/dev/null <$t/schedstat || continue
    all=$((all + ns))
    if [ -z "$wltid" ]; then
      read -r c 2>/dev/null <$t/comm
      [ "$c" = virtio-wl ] && wltid=${t##*/}
    fi
    [ "${t##*/}" = "$wltid" ] && dev=$ns
  done
}
exec 3<$log
buf=
while kill -0 $vmm 2>/dev/null; do
  if IFS= read -r line <&3; then
    line=$buf$line; buf=
    line=${line%$'\r'}
    case "$line" in
    WLB-*|QVM-WL-*)
      cpu
      m=$($bin ctl --api-sock $sock get /metrics 2>/dev/null | tr -d ' \n' | grep -o '"wayland":{[^}]*}')
      sent=$(echo "$m" | sed -n 's/.*"bytes_sent":\([0-9]*\).*/\1/p')
      recv=$(echo "$m" | sed -n 's/.*"bytes_received":\([0-9]*\).*/\1/p')
      echo "$line CPU $dev $all $((${sent:-0} + ${recv:-0}))" ;;
    esac
  else
    buf=$buf$line
    sleep 0.02
  fi
done
SAMPLER
"#;

/// One virtio-wl bench case.
struct WlCase {
    name: &'static str,
    w: u32,
    h: u32,
    frames: u32,
    /// "" = the demo on /dev/wl0 itself; "damage" / "whole" = an ordinary wl_shm client
    /// (`--transport socket`) through the guest's qvm-wl-proxy in that copy mode.
    via: &'static str,
    /// More demo arguments.
    args: &'static str,
}

/// The proxy cases' demo arguments: a cursor blink, a full-screen scroll, past 3 warm-up frames.
const BLINK: &str = "--scene blink --warmup 3 --hold 5";
const SCROLL: &str = "--scene scroll --warmup 3 --hold 5";

/// In the order they run and print; `--wl-proxy-only` keeps those with a `via`.
#[rustfmt::skip]
const WL_CASES: &[WlCase] = &[
    WlCase { name: "1mib", w: 512, h: 512, frames: 20, via: "", args: "" },
    WlCase { name: "1080p", w: 1920, h: 1080, frames: 16, via: "", args: "" },
    WlCase { name: "1080p-copy", w: 1920, h: 1080, frames: 16, via: "", args: "--copy-path" },
    WlCase { name: "4k", w: 3840, h: 2160, frames: 8, via: "", args: "" },
    WlCase { name: "4k-copy", w: 3840, h: 2160, frames: 8, via: "", args: "--copy-path" },
    // Issue 7: the proxy's damage-only copies beside whole-frame copies, 1080p.
    WlCase { name: "blink-damage", w: 1920, h: 1080, frames: 24, via: "damage", args: BLINK },
    WlCase { name: "blink-whole", w: 1920, h: 1080, frames: 24, via: "whole", args: BLINK },
    WlCase { name: "scroll-damage", w: 1920, h: 1080, frames: 16, via: "damage", args: SCROLL },
    WlCase { name: "scroll-whole", w: 1920, h: 1080, frames: 16, via: "whole", args: SCROLL },
];

/// virtio-wl in the lab: `qvm-wl-demo` in the guest draws and commits frames to weston
/// (headless, pixman) in L1. Per case: frames per second as the guest saw them, and host CPU
/// per committed frame of the VMM's virtio-wl worker thread and of the whole VMM process
/// (vCPU threads included, so the guest's drawing and copying show up there), read from
/// /proc/<pid>/task/*/schedstat around each case. The copy path is the same client drawing
/// into guest memory and copying each whole frame into the shared buffer.
pub fn bench(runs: usize, proxy_only: bool) -> Result<(), String> {
    let cases: Vec<&WlCase> = WL_CASES
        .iter()
        .filter(|c| !proxy_only || !c.via.is_empty())
        .collect();
    // The guest's Wayland proxy, once per copy mode, on its own socket.
    let mut guest = String::from(
        "export XDG_RUNTIME_DIR=/tmp\n\
         qvm-wl-proxy --socket /tmp/wlp-damage --copy damage >/tmp/wlp-damage.log 2>&1 &\n\
         qvm-wl-proxy --socket /tmp/wlp-whole --copy whole >/tmp/wlp-whole.log 2>&1 &\n\
         sleep 1\nfor spec in",
    );
    for c in &cases {
        guest.push_str(&format!(
            " \"{}:{}:{}:{}:{}:{}\"",
            c.name, c.w, c.h, c.frames, c.via, c.args
        ));
    }
    // The demo prints QVM-WL-READY once its first frame is committed and QVM-WL-HOLD after the
    // last frame's callback: the host samples CPU at both, so buffer set-up and teardown (memfd,
    // KVM slot, munmap) are not counted per frame.
    guest.push_str(
        r#"; do
  IFS=: read name w h n via args <<SPEC
$spec
SPEC
  echo "WLB-BEGIN $name"
  if [ -n "$via" ]; then
    WAYLAND_DISPLAY=/tmp/wlp-$via qvm-wl-demo --transport socket --width $w --height $h --frames $n --hold 2 $args 2>&1
  else
    qvm-wl-demo --width $w --height $h --frames $n --hold 2 $args 2>&1
  fi
  echo "WLB-END $name rc=$?"
  sleep 1
  # The proxy's line for that client: bytes it copied, its CPU time.
  [ -n "$via" ] && echo "WLB-PROXY $name $(tail -n 1 /tmp/wlp-$via.log)"
done
# The host's sampler lags behind the console: let it read the last lines while the VMM lives.
sleep 15
exit 0
"#,
    );
    let initrd = initramfs_with_script("wl-bench.sh", &guest)?;
    let kernel = &guest_kernel().vmlinux;
    let rt = "/tmp/qvm-wl-bench";
    let cmdline = script_cmdline("wl-bench.sh");
    let wayland = format!("\n[wayland]\nsocket = \"{rt}/wl-bench\"\n");
    let cfg = lab_config("wl-bench.toml", kernel, &initrd, 384, &cmdline, &wayland)?;
    // CPU ns of the VMM's virtio-wl thread and of all its threads, at each WLB- marker.
    let script = format!(
        r#"rt={rt}; rm -rf $rt; mkdir -p $rt; chmod 700 $rt; export XDG_RUNTIME_DIR=$rt
cat >$rt/weston.ini <<'INI'
{ini}INI
weston --config=$rt/weston.ini --backend=headless-backend.so --socket=wl-bench --width=3840 \
  --height=2160 --use-pixman --idle-time=0 >$rt/weston.log 2>&1 &
weston=$!
i=0; until [ -S $rt/wl-bench ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
log=$rt/vmm.log
{vmm} --config {cfg} --api-sock $rt/api.sock </dev/null >$log 2>&1 &
vmm=$!
# At each marker line the VMM prints: CPU ns of the wl thread and of the whole process, and
# the bytes the device moved through its queues (Wayland protocol both ways: frame data never
# travels there). bash builtins only between markers (a fork costs ~100 ms under TCG): the
# log is followed through an open fd, partial lines are kept until their newline arrives.
{sampler}bash $rt/sample.sh $vmm $log $rt/api.sock {vmm}
wait $vmm; echo "VMM-EXIT $?"
kill $weston 2>/dev/null
grep -v '^WLB-' $log | tail -n 20
"#,
        vmm = vmm_binary().display(),
        cfg = cfg.display(),
        sampler = WL_SAMPLER,
        ini = qvm_tests::wayland::WESTON_INI,
    );
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    // name -> (fps, wl thread ns/frame, process ns/frame, device bytes/frame)
    let mut res: std::collections::BTreeMap<&str, Samples> = Default::default();
    // name -> (proxy bytes copied per steady frame, proxy CPU us per frame incl. set-up)
    let mut proxy: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    // name -> the guest's own busy CPU ms per frame (/proc/stat in the guest)
    let mut guest_busy: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    // (wl thread ns, process ns, device bytes) at the end of a sampled line.
    let cpu = |l: &str| -> Option<(f64, f64, f64)> {
        let mut it = l.rsplit(' ');
        let bytes = it.next()?.parse().ok()?;
        let all = it.next()?.parse().ok()?;
        let dev = it.next()?.parse().ok()?;
        Some((dev, all, bytes))
    };
    for run in 0..runs {
        let out = lab_output(&script, Duration::from_secs(1500))?;
        let mut case: Option<&WlCase> = None;
        let mut start = None;
        let mut warm_busy: Option<f64> = None;
        let mut got = 0;
        for line in out.lines().map(str::trim_end) {
            let Some((kind, rest)) = line.split_once(' ') else {
                continue;
            };
            match kind {
                "WLB-BEGIN" => {
                    let name = rest.split(' ').next().unwrap_or_default();
                    case = cases.iter().copied().find(|c| c.name == name);
                    start = None;
                }
                // Proxy cases measure from the warm-up marker (past each buffer's first,
                // whole copy); the others from the first frame.
                "QVM-WL-READY" if case.is_some_and(|c| c.via.is_empty()) => start = cpu(line),
                "QVM-WL-WARM" => {
                    start = cpu(line);
                    warm_busy = kv(rest, "busy_ms");
                }
                "QVM-WL-HOLD" => {
                    let (Some(c), Some(b), Some(e)) = (case, start, cpu(line)) else {
                        continue;
                    };
                    let first = if c.via.is_empty() { 1 } else { 4 };
                    // Frames first..N-1 were committed between the two samples.
                    let frames = f64::from(c.frames - first);
                    if let (Some(w), Some(h)) = (warm_busy.take(), kv(rest, "busy_ms")) {
                        guest_busy.entry(c.name).or_default().push((h - w) / frames);
                    }
                    let r = res.entry(c.name).or_default();
                    r.1.push((e.0 - b.0) / frames);
                    r.2.push((e.1 - b.1) / frames);
                    r.3.push((e.2 - b.2) / frames);
                    got += 1;
                }
                "QVM-WL-DONE" => {
                    if let (Some(c), Some(fps)) = (case, kv(rest, "fps")) {
                        res.entry(c.name).or_default().0.push(fps);
                    }
                }
                "WLB-PROXY" => {
                    if let (Some(c), Some(b), Some(u), Some(s)) = (
                        case,
                        kv(rest, "bytes_copied_after_warmup"),
                        kv(rest, "user_us"),
                        kv(rest, "sys_us"),
                    ) {
                        let p = proxy.entry(c.name).or_default();
                        p.0.push(b / f64::from(c.frames - 4));
                        p.1.push((u + s) / f64::from(c.frames));
                    }
                }
                "WLB-END" if !rest.contains("rc=0") => {
                    return Err(format!("wl bench case failed: {line}\n{out}"));
                }
                _ => {}
            }
        }
        if got < cases.len() {
            return Err(format!("wl bench: run {run} measured {got} cases:\n{out}"));
        }
    }
    println!(
        "\nvirtio-wl (lab, weston headless/pixman in L1, qvm-wl-demo in the guest; median of {runs})"
    );
    println!(
        "{:<12} {:>10} {:>8} {:>20} {:>22} {:>18}",
        "case", "frame", "fps", "wl thread us/frame", "VMM process ms/frame", "queue bytes/frame"
    );
    for c in &cases {
        let (name, w, h) = (c.name, c.w, c.h);
        let Some((fps, dev, all, bytes)) = res.get_mut(name) else {
            continue;
        };
        println!(
            "{:<12} {:>10} {:>8.2} {:>20.0} {:>22.1} {:>18.0}",
            name,
            format!("{:.1} MiB", f64::from(w * h * 4) / 1048576.0),
            median(fps),
            median(dev) / 1e3,
            median(all) / 1e6,
            median(bytes)
        );
    }
    if !proxy.is_empty() {
        println!(
            "\nqvm-wl-proxy in the guest (issue 7): an ordinary wl_shm client, 1080p, its pool mirrored \
             into host memory; per frame after warm-up. Host = the VMM's virtio-wl thread; guest = \
             the VMM's other threads (vCPUs: client + proxy + guest kernel)."
        );
        println!(
            "{:<14} {:>20} {:>16} {:>20} {:>16} {:>22}",
            "case",
            "proxy bytes/frame",
            "host us/frame",
            "VMM vCPU ms/frame",
            "guest ms/frame",
            "proxy CPU us/frame*"
        );
        for c in cases.iter().filter(|c| !c.via.is_empty()) {
            let (Some((_, dev, all, _)), Some((copied, pcpu))) =
                (res.get(c.name), proxy.get_mut(c.name))
            else {
                continue;
            };
            let mut vcpu: Vec<f64> = all.iter().zip(dev.iter()).map(|(a, d)| a - d).collect();
            let mut dev = dev.clone();
            let mut busy = guest_busy.get(c.name).cloned().unwrap_or_default();
            println!(
                "{:<14} {:>20.0} {:>16.0} {:>20.2} {:>16.1} {:>22.0}",
                c.name,
                median(copied),
                median(&mut dev) / 1e3,
                median(&mut vcpu) / 1e6,
                median(&mut busy),
                median(pcpu)
            );
        }
        println!("(*) the proxy process's own user+sys time over the whole client, set-up included, / frames");
    }
    let small = res.get_mut("1mib").map(|r| median(&mut r.1));
    let big = res.get_mut("4k").map(|r| median(&mut r.1));
    if let (Some(small), Some(big)) = (small, big) {
        println!(
            "wl thread CPU per frame, 31.6 MiB / 1 MiB frames = {:.2} (lab times stretch with TCG load; \
             the callgrind count above is the deterministic figure)",
            big / small
        );
    }
    Ok(())
}
