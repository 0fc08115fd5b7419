//! Proves the lab harness (qvm_tests::lab): command round trips, nested KVM inside L1, the
//! shared directory, concurrency, and that nested KVM really boots a Linux guest.

use std::fs;
use std::time::{Duration, Instant};

use qvm_tests::lab::{self, Mode};

const T: Duration = Duration::from_secs(120);

fn run(script: &str) -> lab::CmdOutput {
    lab::run_or_panic(script, T)
}

#[test]
fn echo_round_trip_and_exit_code() {
    let out = run("echo hello from the lab");
    assert_eq!(out.code, 0, "{}", out.output);
    assert_eq!(out.output, "hello from the lab\n");

    let out = run("echo to-stderr >&2; exit 7");
    assert_eq!(out.code, 7);
    assert_eq!(out.output, "to-stderr\n");
}

#[test]
fn kvm_is_real_inside() {
    let out = run(
        "test -c /dev/kvm && echo kvm-ok; grep -c svm /proc/cpuinfo || grep -c vmx /proc/cpuinfo",
    );
    assert_eq!(out.code, 0, "{}", out.output);
    let mut lines = out.output.lines();
    assert_eq!(lines.next(), Some("kvm-ok"), "{}", out.output);
    let n: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("cpu flag count");
    assert!(n > 0, "{}", out.output);
    if lab::mode() == Mode::Lab {
        let out = run(
            "test -d /sys/module/kvm_amd && echo amd; test -e /sys/module/kvm_pvm || echo no-pvm",
        );
        assert_eq!(out.output, "amd\nno-pvm\n");
    }
}

#[test]
fn share_dir_both_ways() {
    let dir = lab::lab_share_dir().join("share-test");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("from-host"), "written by the host\n").unwrap();
    let d = lab::shell_quote(dir.to_str().unwrap());
    let out = run(&format!(
        "cat {d}/from-host && echo 'written in the lab' > {d}/from-lab"
    ));
    assert_eq!(out.code, 0, "{}", out.output);
    assert_eq!(out.output, "written by the host\n");
    assert_eq!(
        fs::read_to_string(dir.join("from-lab")).unwrap(),
        "written in the lab\n"
    );
}

/// Held by the test that freezes L1 and by the one that runs commands beside `lab::run`'s turn:
/// a frozen L1 stops every command, not just its own.
static FREEZE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn concurrent_runs_complete() {
    let _freeze = FREEZE.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                lab::run_concurrent(&format!("sleep 2; echo done {i}"), T)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(
            (out.code, out.output.as_str()),
            (0, format!("done {i}\n").as_str())
        );
    }
    eprintln!(
        "two concurrent 'sleep 2' runs took {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn timeout_is_an_error() {
    let err = lab::run(
        "echo started; sleep 61; echo not reached",
        Duration::from_secs(3),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, lab::LabError::Timeout { .. }), "{msg}");
    assert!(msg.contains("started"), "{msg}");
    if lab::mode() == lab::Mode::Lab {
        // L1 reports what it was doing: the script's sleep among its tasks, with a kernel stack.
        assert!(msg.contains("QVM-LAB-DIAG-BEGIN"), "{msg}");
        assert!(msg.contains(" S hrtimer_nanosleep sleep"), "{msg}");
        assert!(msg.contains("share: "), "{msg}");
        // and QEMU's monitor where L1's vCPU was
        assert!(msg.contains("sample 3: RIP="), "{msg}");
    }
    // the timed-out script and its children were killed
    assert_gone("sleep 61");
}

/// No process in the lab matches `pattern` (`pgrep -f`) a second after a command was killed.
fn assert_gone(pattern: &str) {
    let out = run(&format!("sleep 1; pgrep -f '{pattern}' || echo none"));
    assert_eq!(out.output, "none\n", "{pattern} still runs");
}

/// The case the lab's report exists for: L1 itself stops (here QEMU's `stop` pauses its vCPU)
/// while a command runs. The lab notices L1's heartbeat has stopped, long before the command's
/// timeout, says so, and shows where L1's vCPU was.
#[test]
fn a_frozen_l1_is_reported_as_such() {
    if lab::mode() != lab::Mode::Lab {
        return;
    }
    let _freeze = FREEZE.lock().unwrap_or_else(|e| e.into_inner());
    // One beat (60 s) and a margin; the default is four beats. Restored however this ends.
    struct Silence;
    impl Drop for Silence {
        fn drop(&mut self) {
            lab::set_l1_silence(Duration::from_secs(240));
        }
    }
    let _silence = Silence;
    lab::set_l1_silence(Duration::from_secs(75));
    // Freeze L1 only once the command is running (it holds lab::run's turn then, so no other
    // test's command is in L1), and let it go again once the report is in.
    let marker = lab::lab_share_dir().join("frozen-started");
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "touch {}; echo frozen-started; sleep 600",
        lab::shell_quote(&marker.to_string_lossy())
    );
    let t = std::thread::spawn(move || lab::run(&script, Duration::from_secs(900)));
    let wait = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            wait.elapsed() < Duration::from_secs(300),
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab::l1_monitor("stop").expect("QEMU monitor: stop");
    let started = std::time::Instant::now();
    let err = t.join().expect("runner thread").unwrap_err();
    lab::l1_monitor("cont").expect("QEMU monitor: cont");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, lab::LabError::L1Stuck { .. }), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(200), "{msg}");
    assert!(msg.contains("frozen-started"), "{msg}");
    assert!(msg.contains("L1 did not report within"), "{msg}");
    assert!(msg.contains("sample 3: RIP="), "{msg}");
    assert!(msg.contains("info lapic:"), "{msg}");
    // L1 runs on afterwards, and the frozen command was killed
    assert_gone("sleep 600");
}

/// Peer check: QEMU's microvm on the lab's KVM boots the project's guest kernel and initramfs
/// to the same userspace marker qvm's tests look for, and powers off (ACPI GED) to exit QEMU.
#[test]
fn nested_kvm_boots_linux_in_qemu_microvm() {
    let kernel = &qvm_tests::fixtures::guest_kernel().bzimage;
    let initrd = qvm_tests::fixtures::guest_initramfs();
    let dir = lab::lab_share_dir().join("microvm");
    fs::create_dir_all(&dir).unwrap();
    // `quiet`: every console byte is a port-I/O exit from L2 to the TCG-emulated L1 hypervisor;
    // the early boot messages alone cost ~8 s of L2 time without it.
    let qemu = lab::qemu_microvm_boot_cmd(
        kernel,
        initrd,
        "console=ttyS0 panic=-1 reboot=t quiet qvm.mode=hello",
    );
    let script = format!(
        "s=$(date +%s%N); timeout 300 {qemu} > {log} 2>&1 < /dev/null; rc=$?; e=$(date +%s%N)\n\
         echo \"rc=$rc ms=$(( (e - s) / 1000000 ))\"; exit $rc",
        log = lab::shell_quote(dir.join("l2.log").to_str().unwrap())
    );
    let out = lab::run_or_panic(&script, Duration::from_secs(400));
    let log = fs::read_to_string(dir.join("l2.log")).unwrap_or_default();
    assert_eq!(out.code, 0, "{}\nL2 console:\n{log}", out.output);
    eprintln!(
        "qemu microvm boot: {}",
        out.output.lines().next().unwrap_or("")
    );
    assert!(
        log.contains(qvm_tests::fixtures::USERSPACE_MARKER),
        "L2 console:\n{log}"
    );
    assert!(log.contains("Hello from a qvm guest"), "L2 console:\n{log}");
}

/// Timing probe (run with `--ignored --nocapture`): L1 boot and trivial `run` round trips.
#[test]
#[ignore]
fn lab_timings() {
    let t = Instant::now();
    run("true");
    eprintln!(
        "first run (includes L1 boot): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            run("true");
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "trivial run: min {:.3} s, median {:.3} s, max {:.3} s",
        v[0], v[3], v[6]
    );
}
