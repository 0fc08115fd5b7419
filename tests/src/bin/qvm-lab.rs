//! `qvm-lab -- CMD [ARGS...]`: runs one command where a real KVM is (directly on a
//! hardware-KVM host, else inside the nested-KVM lab), streaming its output as it runs and
//! exiting with its exit code. The README's example uses it to boot the example VM.

use std::io::{Read, Write};
use std::time::Duration;

use qvm_tests::lab;

fn main() {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: qvm-lab -- COMMAND [ARGS...]");
        std::process::exit(2);
    }
    let command = args
        .iter()
        .map(|a| lab::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    if lab::mode() == lab::Mode::Lab {
        eprintln!(
            "qvm-lab: this host's /dev/kvm cannot boot Linux; running inside the nested-KVM lab \
             (QEMU TCG L1 with kvm_amd). Booting L1 takes ~15 s."
        );
    }
    let log = lab::lab_share_dir().join(format!("qvm-lab-{}.log", std::process::id()));
    let script = format!(
        "exec {command} </dev/null >{log} 2>&1",
        log = lab::shell_quote(&log.to_string_lossy())
    );
    let runner = std::thread::spawn(move || lab::run(&script, Duration::from_secs(3600)));
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let mut pump = |printed: &mut usize| {
        if let Ok(mut f) = std::fs::File::open(&log) {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() && buf.len() > *printed {
                let _ = stdout.write_all(&buf[*printed..]);
                let _ = stdout.flush();
                *printed = buf.len();
            }
        }
    };
    while !runner.is_finished() {
        pump(&mut printed);
        std::thread::sleep(Duration::from_millis(100));
    }
    pump(&mut printed);
    match runner.join() {
        Ok(Ok(out)) => std::process::exit(out.code),
        Ok(Err(e)) => {
            eprintln!("qvm-lab: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("qvm-lab: the lab runner thread panicked");
            std::process::exit(1);
        }
    }
}
