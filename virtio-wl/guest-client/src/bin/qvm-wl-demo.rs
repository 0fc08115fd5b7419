//! qvm-wl-demo: shows pattern frames in one xdg toplevel through /dev/wl0 (virtio-wl)
//! or a plain Wayland socket. See `qvm_wl_client::demo`. `--hostile` (alone) runs the misuse
//! cases of `qvm_wl_client::hostile` instead.

use std::process::ExitCode;

use qvm_wl_client::demo::{self, Options};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--hostile") {
        return match qvm_wl_client::hostile::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qvm-wl-demo: error: --hostile: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qvm-wl-demo: {e}");
            return ExitCode::from(2);
        }
    };
    match demo::run(&opts) {
        Ok(r) => {
            // The process's CPU time (the proxy bench's client cost).
            // SAFETY: getrusage into a zeroed struct we own.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            println!(
                "QVM-WL-DONE frames={} secs={:.6} cpu_us={} fps={:.3}",
                r.frames,
                r.secs,
                us(ru.ru_utime) + us(ru.ru_stime),
                r.fps()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qvm-wl-demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}
