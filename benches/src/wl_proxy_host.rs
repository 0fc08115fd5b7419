//! README section (10), host part, `--skip-wl-proxy-host`: `qvm-wl-proxy` on the host with no
//! VM, an ordinary wl_shm client at 1080p (a cursor blink, a full-screen scroll) through the
//! proxy to a headless weston; damage-only copies beside whole-frame copies: proxy, client and
//! weston CPU per frame and bytes copied per frame. The in-guest part is in `wl`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures;

use crate::common::{kv, median, per_unit, require_tool, start_host_weston, stop, table};

/// Issue 7 on the host, no VM: `qvm-wl-proxy --upstream socket:` between `qvm-wl-demo
/// --transport socket` (an ordinary wl_shm client) and a headless weston at 1920x1080, for a
/// cursor blink and a full-screen scroll, damage-only copies beside whole-frame copies (two
/// proxies, runs interleaved). Per frame: the proxy's CPU (its child's user+sys for that
/// client), bytes it copied, the client's CPU and weston's. Each figure is the difference of a
/// 20-frame and an 80-frame client over 60 frames, so set-up is not counted.
pub fn bench(runs: usize) -> Result<(), String> {
    require_tool("weston")?;
    let demo = fixtures::qvm_wl_demo_binary();
    let proxy_bin = fixtures::qvm_wl_proxy_binary();
    let rt = std::env::temp_dir().join(format!("qvm-wl-proxy-bench-{}", std::process::id()));
    let mut children = Vec::new();
    let weston = start_host_weston(&rt, "wl-host", 1920, 1080)?;
    let weston_pid = weston.id();
    children.push(weston);
    // One proxy per copy mode; their stats lines come through a channel.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for mode in ["damage", "whole"] {
        let mut p = Command::new(&proxy_bin)
            .arg("--socket")
            .arg(rt.join(format!("p-{mode}")))
            .arg("--upstream")
            .arg(format!("socket:{}", rt.join("wl-host").display()))
            .args(["--copy", mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start qvm-wl-proxy: {e}"))?;
        let out = p.stdout.take().ok_or("no proxy stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        children.push(p);
    }
    // The proxies bind their sockets after start-up: a client must not race them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["damage", "whole"]
        .iter()
        .any(|m| !rt.join(format!("p-{m}")).exists())
    {
        if Instant::now() >= deadline {
            children.iter_mut().for_each(stop);
            return Err("qvm-wl-proxy never opened its socket".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let weston_ticks = || -> f64 {
        std::fs::read_to_string(format!("/proc/{weston_pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit(')').next()?.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf has no preconditions.
    let tick_us = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // (proxy us, bytes, client us, weston us) for one client of `frames` frames.
    let one = |scene: &str, mode: &str, frames: u32| -> Result<[f64; 4], String> {
        while rx.try_recv().is_ok() {}
        let w0 = weston_ticks();
        let out = Command::new(&demo)
            .args([
                "--transport",
                "socket",
                "--width",
                "1920",
                "--height",
                "1080",
            ])
            .args(["--frames", &frames.to_string(), "--scene", scene])
            .env("XDG_RUNTIME_DIR", &rt)
            .env("WAYLAND_DISPLAY", rt.join(format!("p-{mode}")))
            .output()
            .map_err(|e| e.to_string())?;
        let w1 = weston_ticks();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let done = stdout
            .lines()
            .find(|l| l.starts_with("QVM-WL-DONE"))
            .ok_or_else(|| {
                format!(
                    "demo {scene}/{mode} failed: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let stats = loop {
            let l = rx
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "no stats line from qvm-wl-proxy".to_string())?;
            if l.starts_with("QVM-WL-PROXY-STATS") {
                break l;
            }
        };
        let proxy_us =
            kv(&stats, "user_us").unwrap_or(f64::NAN) + kv(&stats, "sys_us").unwrap_or(f64::NAN);
        Ok([
            proxy_us,
            kv(&stats, "bytes_copied").unwrap_or(f64::NAN),
            kv(done, "cpu_us").unwrap_or(f64::NAN),
            (w1 - w0) * tick_us,
        ])
    };
    let cases = [
        ("blink", "damage"),
        ("blink", "whole"),
        ("scroll", "damage"),
        ("scroll", "whole"),
    ];
    let mut per: Vec<[Vec<f64>; 4]> = (0..cases.len()).map(|_| Default::default()).collect();
    // The first failure ends the runs; the children are stopped either way.
    let result = (|| {
        for _ in 0..runs {
            for (i, (scene, mode)) in cases.iter().enumerate() {
                let m = per_unit(20, 80, |frames| one(scene, mode, frames))?;
                for (samples, x) in per[i].iter_mut().zip(m) {
                    samples.push(x);
                }
            }
        }
        Ok::<(), String>(())
    })();
    children.iter_mut().for_each(stop);
    let _ = std::fs::remove_dir_all(&rt);
    result?;
    table(
        &format!(
            "qvm-wl-proxy on the host (no VM), 1920x1080 wl_shm client -> proxy -> headless weston; \
             per frame, steady state (80-frame minus 20-frame client), median of {runs}"
        ),
        "| scene | copy | proxy CPU us/frame | bytes copied/frame | client CPU us/frame | weston CPU us/frame |",
    );
    for (i, (scene, mode)) in cases.iter().enumerate() {
        let m: Vec<f64> = per[i].iter_mut().map(|v| median(v)).collect();
        println!(
            "| {scene} | {mode} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m[0], m[1], m[2], m[3]
        );
    }
    Ok(())
}
