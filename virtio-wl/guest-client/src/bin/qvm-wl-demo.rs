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
            let (user_us, sys_us) = qvm_wl_client::cpu_us();
            println!(
                "QVM-WL-DONE frames={} secs={:.6} cpu_us={} fps={:.3}",
                r.frames,
                r.secs,
                user_us + sys_us,
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
