//! What a VMM process under seccomp does that no line of ours asks for: glibc opens files
//! lazily. Issue 15's kill at boot ("a unfiltered thread made the forbidden syscall openat"):
//! glibc's malloc gives a thread its own arena on its first allocation, and when the process
//! reaches its ninth arena glibc counts CPUs by *opening* /sys/devices/system/cpu/online
//! (glibc 2.36, `__get_nprocs` in `arena_get2`); the first time a thread's heap shrinks it reads
//! /proc/sys/vm/overcommit_memory. A VM with apps, a home share and `[wayland]` runs enough
//! threads for the first, and a new device worker (whose first allocation, in std's thread
//! start, comes before its own filter, under the vCPU filter it inherited) was killed by it.
//!
//! The test runs itself again as a child that starts up as `qvm-vmm` does (`seccomp::init`):
//! - `arenas`: puts the vCPU filter on one thread and starts 16 threads from it that all
//!   allocate at once before installing the device filter, as device workers do, then free
//!   large buffers (heap shrinks). The child must survive, and use at most
//!   `seccomp::MALLOC_ARENAS` arenas (counted from glibc's `malloc_stats`), which proves glibc
//!   never had to count CPUs. Without the `no_open` filter the child dies with status 159;
//!   without the arena limit it uses more arenas.
//! - `open`: threads of each kind open a file: main, vCPU and device threads get EACCES and go
//!   on; an API thread may open read-only, and opening for writing kills the process.
//!
//! No libtest harness: the child must control every thread of its process.

// An integration test is a crate of its own: clippy's allow-unwrap-in-tests covers its #[test]
// functions but not the helpers beside them, which may unwrap just the same.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::process::Command;
use std::sync::{Arc, Barrier};

use qvm_vmm::seccomp::{self, SeccompLevel, ThreadKind, FORBIDDEN_EXIT, MALLOC_ARENAS};

const THREADS: usize = 16;
const CHILD_ENV: &str = "QVM_TEST_SECCOMP_CHILD";

fn arenas() {
    seccomp::init(SeccompLevel::Enforce).expect("seccomp init");
    // The vCPU thread's position: filtered, starting device workers.
    let starter = std::thread::spawn(|| {
        seccomp::apply(ThreadKind::Vcpu).expect("vcpu filter");
        let go = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let go = go.clone();
                std::thread::spawn(move || {
                    go.wait();
                    // The first allocations of this thread, all at once: each wants an arena.
                    let small: Vec<u8> = vec![i as u8; 4096];
                    seccomp::apply(ThreadKind::Device).expect("device filter");
                    go.wait();
                    // Buffers below the mmap threshold, freed: the thread's heap grows and
                    // shrinks.
                    let mut sum = 0u64;
                    for round in 0..8 {
                        let bufs: Vec<Vec<u8>> =
                            (0..16).map(|_| vec![round as u8; 100 << 10]).collect();
                        sum += bufs.iter().map(|b| b[0] as u64).sum::<u64>();
                    }
                    sum + small[0] as u64
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum::<u64>()
    });
    let sum = starter.join().unwrap();
    println!("CHILD-OK {sum}");
    // One "Arena N:" block per arena, on stderr.
    // SAFETY: malloc_stats only prints glibc's counters.
    unsafe { libc::malloc_stats() };
}

/// Opens `path` with `flags`; the errno on failure.
fn open(path: &str, flags: i32) -> Result<(), i32> {
    let p = CString::new(path).unwrap();
    // SAFETY: a valid NUL-terminated path; the descriptor is closed at once.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

fn opens() {
    seccomp::init(SeccompLevel::Enforce).expect("seccomp init");
    let file = std::env::current_exe().unwrap();
    let file = file.to_str().unwrap().to_string();
    for kind in [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Main] {
        let f = file.clone();
        let r = std::thread::spawn(move || {
            seccomp::apply(kind).expect("filter");
            open(&f, libc::O_RDONLY)
        })
        .join()
        .unwrap();
        println!("OPEN {} {r:?}", kind.name());
    }
    let f = file.clone();
    let r = std::thread::spawn(move || {
        seccomp::apply(ThreadKind::Api).expect("filter");
        let read = open(&f, libc::O_RDONLY);
        println!("OPEN api-read {read:?}");
        // A kill: the process ends here.
        let write = open("/dev/null", libc::O_WRONLY);
        println!("OPEN api-write {write:?} (NOT stopped)");
    })
    .join();
    println!("API-THREAD-ENDED {}", r.is_ok());
}

fn run_child(mode: &str) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, mode)
        .output()
        .expect("running the child");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("arenas") => return arenas(),
        Ok("open") => return opens(),
        _ => {}
    }
    // Several rounds: which thread reaches the ninth arena first, or shrinks its heap first,
    // is a race.
    for round in 0..5 {
        let (status, stdout, stderr) = run_child("arenas");
        assert!(
            status.success() && stdout.contains("CHILD-OK"),
            "round {round}: a VMM-like process with {THREADS} new threads under seccomp died \
             ({status}; {FORBIDDEN_EXIT} is a seccomp kill):\nstdout: {stdout}\nstderr: {stderr}"
        );
        let arenas = stderr.lines().filter(|l| l.starts_with("Arena ")).count();
        assert!(
            (1..=MALLOC_ARENAS as usize).contains(&arenas),
            "round {round}: {arenas} malloc arenas, want at most {MALLOC_ARENAS}:\n{stderr}"
        );
    }
    println!("seccomp_process: {THREADS} threads allocating under filters, 5 rounds: ok");

    let (status, stdout, stderr) = run_child("open");
    let eacces = format!("Err({})", libc::EACCES);
    for kind in ["vcpu", "device", "main"] {
        assert!(
            stdout.contains(&format!("OPEN {kind} {eacces}")),
            "{kind}: {stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("OPEN api-read Ok(())"),
        "{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("NOT stopped"), "{stdout}\n{stderr}");
    assert_eq!(status.code(), Some(FORBIDDEN_EXIT), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("a api thread made the forbidden syscall openat ("),
        "{stderr}"
    );
    println!(
        "seccomp_process: opens refused with EACCES (main, vcpu, device), api write killed: ok"
    );
    // The line libtest prints, so that tests/run.sh counts this harness-less binary too.
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
