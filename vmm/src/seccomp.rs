//! seccomp filters, one per kind of thread, each an allowlist (seccompiler BPF). A thread
//! installs its own filter before it touches anything a guest or an API client controls:
//! vCPU threads before their first KVM_RUN, device workers when they start, the API threads
//! when they start, the main thread before its event loop.
//!
//! Filters stack: a thread inherits the filter of the thread that created it, and adds its own.
//! Device workers are started by a vCPU thread (the driver's DRIVER_OK write activates the
//! device), so the vCPU filter must allow what the workers need; the workers' own filter then
//! narrows them to that (no KVM_RUN, no thread creation).
//!
//! `--seccomp=enforce` (the default): a forbidden syscall raises SIGSYS, whose handler writes one
//! line naming the thread kind and the syscall, and exits the process with status 159 (128 +
//! SIGSYS). `log`: forbidden syscalls are allowed and logged by the kernel (audit, `dmesg`).
//! `off`: no filters.
//!
//! One exception to "forbidden kills": opening files. Libraries open files lazily, on paths no
//! code of ours chooses: glibc's malloc reads /proc/sys/vm/overcommit_memory the first time a
//! thread's heap shrinks, Rust's panic handler opens the binary for a backtrace. Such an open
//! must not take a user's VM down, so on the main, vCPU and device threads `open` and `openat`
//! fail with EACCES (the `no_open` filter, stacked like `no_clone3`) and the library takes its
//! fallback. A compromised thread gets the same nothing from a refused open as from a kill.
//! (crosvm's device policies make the same choice: `openat: return ENOENT`.) The API threads,
//! which read files to check a config, open them read-only; an open for writing kills.
//!
//! [`init`] also settles, before any thread exists, what glibc would otherwise look up lazily
//! (see [`MALLOC_ARENAS`]).
//!
//! Landlock (landlock.rs) is applied by the main thread after the config is read, before any
//! other thread exists and long before the main thread's own filter: no filter allows the
//! landlock syscalls, so a compromised thread cannot stack or query rulesets.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

include!(concat!(env!("OUT_DIR"), "/syscalls.rs"));

/// Exit status after a forbidden syscall: 128 + SIGSYS, as if SIGSYS had killed us.
pub const FORBIDDEN_EXIT: i32 = 128 + libc::SIGSYS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompLevel {
    /// No filters.
    Off,
    /// Filters that allow and log (audit) what they would forbid.
    Log,
    /// Filters that kill the process on a forbidden syscall.
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: console, signals, API commands, stop.
    Main = 1,
    /// KVM_RUN and exit dispatch (and device activation).
    Vcpu = 2,
    /// A virtio device's worker or a vhost-user supervisor.
    Device = 3,
    /// The API server and its handler threads.
    Api = 4,
}

impl ThreadKind {
    /// Every kind, in the order of their filters.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} seccomp filter: {source} (the kernel needs CONFIG_SECCOMP_FILTER; or run with --seccomp=off)")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

struct Filters {
    level: SeccompLevel,
    /// clone3 fails with ENOSYS (glibc then uses clone, whose flags a filter can check).
    no_clone3: BpfProgram,
    /// open and openat fail with EACCES (main, vCPU and device threads; see the module docs).
    no_open: BpfProgram,
    main: BpfProgram,
    vcpu: BpfProgram,
    device: BpfProgram,
    api: BpfProgram,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

thread_local! {
    /// This thread's kind, for the SIGSYS handler (0: none yet).
    static KIND: Cell<u8> = const { Cell::new(0) };
}

/// Most malloc arenas the process uses (glibc's `M_ARENA_MAX`). Setting any limit keeps glibc
/// from counting CPUs when a thread first needs a new arena past the eighth, which it does by
/// opening /sys/devices/system/cpu/online (glibc 2.36, `__get_nprocs` in `arena_get2`). Under a
/// filter without `openat` (a new device worker's first allocation, in std's thread start,
/// runs under the vCPU filter it inherited) that open was a seccomp kill at boot of VMs with
/// enough threads (issue 15, `tests/seccomp_process.rs`); the `no_open` filter now refuses it
/// instead, and with this limit glibc does not even ask. Four arenas serve our threads well:
/// most allocate only while they set up, and the data paths do not allocate per request;
/// fewer arenas also keep the VMM's own memory small.
pub const MALLOC_ARENAS: libc::c_int = 4;

/// What the process must settle while no thread and no filter exists yet, so that nothing a
/// library does lazily later needs a syscall the filters forbid.
fn prepare_process() {
    // SAFETY: mallopt only sets an allocator parameter; it has no memory-safety preconditions.
    // It returns 0 on failure, which leaves glibc's default (and the risk described above).
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } == 0 {
        eprintln!("qvm-vmm: warning: mallopt(M_ARENA_MAX) failed; a thread's first allocation may be killed by seccomp");
    }
}

/// Builds every filter and installs the SIGSYS handler. Call once, early, on the main thread,
/// before any other thread exists; [`apply`] is a no-op before (and with `Off`).
pub fn init(level: SeccompLevel) -> Result<(), SeccompError> {
    prepare_process();
    if level == SeccompLevel::Off {
        return Ok(());
    }
    let build = |kind: ThreadKind| -> Result<BpfProgram, SeccompError> {
        let mismatch = match level {
            SeccompLevel::Enforce => SeccompAction::Trap,
            _ => SeccompAction::Log,
        };
        let filter = SeccompFilter::new(rules(kind), mismatch, SeccompAction::Allow, arch())
            .map_err(|source| SeccompError::Build {
                kind: kind.name(),
                source,
            })?;
        filter.try_into().map_err(|source| SeccompError::Build {
            kind: kind.name(),
            source,
        })
    };
    // Each refuses some syscalls with an errno (logs them with `log`) and allows the rest; the
    // kind filters allow these syscalls, so the refusal is what a thread gets (the kernel
    // takes the strictest answer of all the filters a thread has).
    let refuse = |name: &'static str, syscalls: &[libc::c_long], errno: i32| {
        let refused = match level {
            SeccompLevel::Enforce => SeccompAction::Errno(errno as u32),
            _ => SeccompAction::Log,
        };
        SeccompFilter::new(
            syscalls.iter().map(|&s| (s, Vec::new())).collect(),
            SeccompAction::Allow,
            refused,
            arch(),
        )
        .and_then(|f| f.try_into())
        .map_err(|source| SeccompError::Build { kind: name, source })
    };
    let filters = Filters {
        level,
        no_clone3: refuse("clone3", &[libc::SYS_clone3], libc::ENOSYS)?,
        no_open: refuse("open", OPENS, libc::EACCES)?,
        main: build(ThreadKind::Main)?,
        vcpu: build(ThreadKind::Vcpu)?,
        device: build(ThreadKind::Device)?,
        api: build(ThreadKind::Api)?,
    };
    if level == SeccompLevel::Enforce {
        install_sigsys_handler()?;
    }
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Installs `kind`'s filter on the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(f) = FILTERS.get() else {
        #[cfg(debug_assertions)]
        test_hook(kind);
        return Ok(());
    };
    let prog = match kind {
        ThreadKind::Main => &f.main,
        ThreadKind::Vcpu => &f.vcpu,
        ThreadKind::Device => &f.device,
        ThreadKind::Api => &f.api,
    };
    KIND.with(|k| k.set(kind as u8));
    let no_open = (kind != ThreadKind::Api).then_some(&f.no_open);
    for p in [Some(&f.no_clone3), no_open, Some(prog)]
        .into_iter()
        .flatten()
    {
        seccompiler::apply_filter(p).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    #[cfg(debug_assertions)]
    test_hook(kind);
    let _ = f.level;
    Ok(())
}

/// [`apply`], or exit: a thread that should be jailed must not run unjailed.
pub fn apply_or_exit(kind: ThreadKind) {
    if let Err(e) = apply(kind) {
        eprintln!("qvm-vmm: {e}");
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) };
    }
}

/// Test builds only: `QVM_TEST_FORBIDDEN=<kind>:<what>` makes the first thread of that kind
/// attempt a forbidden syscall right after installing its filter (`execve`, `shadow` (open
/// /etc/shadow), `ptrace`, `inet` (socket(AF_INET)), `kill` (kill(1, 0))), so tests can check
/// the wall holds.
#[cfg(debug_assertions)]
fn test_hook(kind: ThreadKind) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    let Ok(spec) = std::env::var("QVM_TEST_FORBIDDEN") else {
        return;
    };
    let Some((k, what)) = spec.split_once(':') else {
        return;
    };
    if k != kind.name() || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    eprintln!("qvm-vmm: test hook: {k} thread tries {what}");
    // SAFETY: each call passes valid pointers (or none); the point is that the filter stops it.
    unsafe {
        match what {
            "execve" => {
                let sh = c"/bin/sh";
                let argv = [sh.as_ptr(), std::ptr::null()];
                libc::execve(sh.as_ptr(), argv.as_ptr(), std::ptr::null());
            }
            "shadow" => {
                // Refused with EACCES where the no_open filter applies (the VMM goes on),
                // a kill where only the kind filter decides.
                let fd = libc::open(c"/etc/shadow".as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    eprintln!("qvm-vmm: test hook: shadow was refused: {e}");
                    return;
                }
                libc::close(fd);
            }
            "ptrace" => {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            }
            "inet" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "kill" => {
                // Signal 0 to init: would tell whether it may signal a process not its own.
                libc::kill(1, 0);
            }
            _ => {}
        }
    }
    eprintln!("qvm-vmm: test hook: {what} was NOT stopped");
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn syscall_name(nr: u32) -> &'static str {
    SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .map(|i| SYSCALL_NAMES[i].1)
        .unwrap_or("unknown")
}

// --- the SIGSYS handler: async-signal-safe, no allocation ---------------------------------

struct Buf {
    b: [u8; 160],
    n: usize,
}

impl Buf {
    fn push(&mut self, s: &[u8]) {
        for &c in s {
            if self.n < self.b.len() {
                self.b[self.n] = c;
                self.n += 1;
            }
        }
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS from seccomp, si_syscall sits
    // after si_addr (an int) in the _sigsys union member.
    let nr = unsafe {
        let base = (info as *const u8).add(16);
        let addr_sz = std::mem::size_of::<*mut libc::c_void>();
        std::ptr::read_unaligned(base.add(addr_sz) as *const i32)
    };
    let kind = KIND.with(|k| k.get());
    let kind = match kind {
        1 => "main",
        2 => "vcpu",
        3 => "device",
        4 => "api",
        // A thread that has not installed its own filter yet runs under its creator's.
        _ => "new (not yet filtered)",
    };
    let mut b = Buf { b: [0; 160], n: 0 };
    b.push(b"qvm-vmm: seccomp: a ");
    b.push(kind.as_bytes());
    b.push(b" thread made the forbidden syscall ");
    b.push(syscall_name(nr as u32).as_bytes());
    b.push(b" (#");
    b.push_num(nr as u64);
    b.push(b"); stopping\n");
    // SAFETY: write and _exit are async-signal-safe; both are allowed by every filter.
    unsafe {
        libc::write(2, b.b.as_ptr() as *const libc::c_void, b.n);
        libc::_exit(FORBIDDEN_EXIT);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

// --- the rules ---------------------------------------------------------------------------

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(r: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        r.insert(s, Vec::new());
    }
}

fn cond(arg: u8, op: Op, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5; ours are literals.
    SeccompCondition::new(arg, Len::Dword, op, value).expect("valid seccomp condition")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("a rule with conditions")
}

/// `syscall` allowed when argument `arg` equals one of `values`.
fn allow_arg_in(r: &mut Rules, syscall: libc::c_long, arg: u8, values: &[u64]) {
    let rules = values
        .iter()
        .map(|&v| rule(vec![cond(arg, Op::Eq, v)]))
        .collect();
    r.insert(syscall, rules);
}

/// What every thread needs: memory (never executable), futexes, time, epoll, eventfds, plain
/// fd I/O, and threads (not processes).
fn base() -> Rules {
    use libc::*;
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            SYS_read,
            SYS_write,
            SYS_readv,
            SYS_writev,
            SYS_close,
            SYS_lseek,
            SYS_fstat,
            SYS_newfstatat,
            SYS_statx,
            SYS_futex,
            SYS_munmap,
            SYS_madvise,
            SYS_mremap,
            SYS_brk,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sigaltstack,
            SYS_exit,
            SYS_exit_group,
            SYS_sched_yield,
            SYS_sched_getaffinity,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_gettid,
            SYS_getpid,
            SYS_getrandom,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_eventfd2,
            SYS_fcntl,
            SYS_poll,
            SYS_ppoll,
            SYS_restart_syscall,
            SYS_set_robust_list,
            SYS_rseq,
        ],
    );
    // Memory may be mapped or re-protected, never executable.
    let no_exec = vec![rule(vec![cond(2, Op::MaskedEq(PROT_EXEC as u64), 0)])];
    r.insert(SYS_mmap, no_exec.clone());
    r.insert(SYS_mprotect, no_exec);
    // Thread names, and adding filters (a thread stacks its own on the one it inherited; more
    // filters can only forbid more).
    allow_arg_in(
        &mut r,
        SYS_prctl,
        0,
        &[
            PR_SET_NAME as u64,
            PR_GET_NAME as u64,
            PR_SET_NO_NEW_PRIVS as u64,
        ],
    );
    allow_arg_in(&mut r, SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER as u64]);
    // Signals to our own threads only (pthread_kill, abort).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { getpid() } as u64;
    allow_arg_in(&mut r, SYS_tgkill, 0, &[pid]);
    r
}

/// Creating threads (never processes): clone with CLONE_THREAD; clone3 hides its flags from
/// seccomp, so it is allowed here but fails with ENOSYS through the `no_clone3` filter (the
/// stricter result wins), and glibc falls back to clone.
fn threads(r: &mut Rules) {
    r.insert(libc::SYS_clone3, Vec::new());
    r.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Op::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )])],
    );
}

/// Unix-domain sockets only (vsock's host side, vhost-user, the API).
fn unix_sockets(r: &mut Rules) {
    use libc::*;
    allow_arg_in(r, SYS_socket, 0, &[AF_UNIX as u64]);
    allow(
        r,
        &[
            SYS_connect,
            SYS_accept4,
            SYS_sendmsg,
            SYS_recvmsg,
            SYS_sendto,
            SYS_recvfrom,
            SYS_shutdown,
            SYS_getsockopt,
            SYS_setsockopt,
            SYS_getsockname,
            SYS_getpeername,
        ],
    );
}

// ioctl request numbers.
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const TUNGETVNETHDRSZ: u64 = 0x8004_54d7;
const KVM_RUN: u64 = 0xae80;
const KVM_GET_CLOCK: u64 = 0x8030_ae7c;
const KVM_SET_CLOCK: u64 = 0x4030_ae7b;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;

/// virtio-wl: host buffers (memfds, sealed, mapped and handed to KVM as memory slots) and
/// pipes. The slot ioctl is allowed wherever a device may be reset or dropped (device workers,
/// vCPUs that reset it, the main thread at exit); the ioctl filter lists it per thread kind.
fn wayland(r: &mut Rules) {
    allow(
        r,
        &[libc::SYS_memfd_create, libc::SYS_ftruncate, libc::SYS_pipe2],
    );
}

/// What the device workers do: positional file I/O (disks), tap and unix-socket I/O.
fn device_io(r: &mut Rules) {
    use libc::*;
    allow(
        r,
        &[
            SYS_pread64,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_preadv2,
            SYS_pwritev2,
            SYS_fsync,
            SYS_fdatasync,
            SYS_fallocate,
            SYS_timerfd_create,
            SYS_timerfd_settime,
        ],
    );
    unix_sockets(r);
}

/// The file opens the `no_open` filter refuses with EACCES.
const OPENS: &[libc::c_long] = &[libc::SYS_open, libc::SYS_openat];

fn rules(kind: ThreadKind) -> Rules {
    let mut r = base();
    if kind != ThreadKind::Api {
        // Answered by the `no_open` filter (EACCES), stacked on top; see the module docs.
        allow(&mut r, OPENS);
    }
    match kind {
        ThreadKind::Device => {
            device_io(&mut r);
            wayland(&mut r);
            allow_arg_in(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[
                    FIONBIO,
                    FIOCLEX,
                    KVM_SET_USER_MEMORY_REGION,
                    TUNSETOFFLOAD,
                    TUNSETVNETHDRSZ,
                    TUNGETVNETHDRSZ,
                ],
            );
        }
        ThreadKind::Vcpu => {
            // Device activation runs here and starts the workers (see the module docs).
            device_io(&mut r);
            wayland(&mut r);
            threads(&mut r);
            allow_arg_in(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[
                    KVM_RUN,
                    KVM_SET_USER_MEMORY_REGION,
                    FIONBIO,
                    FIOCLEX,
                    TUNSETOFFLOAD,
                    TUNSETVNETHDRSZ,
                    TUNGETVNETHDRSZ,
                ],
            );
        }
        ThreadKind::Main => {
            // Kicks vCPUs out of KVM_RUN; stops virtiofsd at exit; removes the API socket;
            // resets devices (vhost-user messages) at exit; freezes the guest clock on pause.
            device_io(&mut r);
            // No signal to any other process (no kill, no pidfd_send_signal): its virtiofsd
            // children end when the VM disconnects, or with the VMM (parent-death signal);
            // wait4 reaps them.
            allow(
                &mut r,
                &[
                    libc::SYS_wait4,
                    libc::SYS_unlink,
                    libc::SYS_unlinkat,
                    libc::SYS_timerfd_gettime,
                ],
            );
            allow_arg_in(
                &mut r,
                libc::SYS_ioctl,
                1,
                &[
                    FIONBIO,
                    FIOCLEX,
                    TCGETS,
                    TCSETS,
                    TCSETSW,
                    KVM_GET_CLOCK,
                    KVM_SET_CLOCK,
                    KVM_SET_USER_MEMORY_REGION,
                ],
            );
        }
        ThreadKind::Api => {
            // Unix sockets, its handler threads, and reading the files a config names (the
            // draft is checked like a config file before start).
            unix_sockets(&mut r);
            threads(&mut r);
            allow(
                &mut r,
                &[
                    libc::SYS_pread64,
                    libc::SYS_readlink,
                    libc::SYS_getcwd,
                    libc::SYS_sysinfo,
                ],
            );
            // Read-only: never write, create or truncate.
            let write_flags =
                (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
            r.insert(
                libc::SYS_openat,
                vec![rule(vec![cond(2, Op::MaskedEq(write_flags), 0)])],
            );
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &[FIONBIO, FIOCLEX]);
        }
    }
    r
}

/// The syscalls each filter allows (for the notes and tests): (kind, count).
pub fn allowed_counts() -> Vec<(&'static str, usize)> {
    ThreadKind::ALL
        .iter()
        .map(|&k| (k.name(), rules(k).len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds() {
        for kind in ThreadKind::ALL {
            let f = SeccompFilter::new(
                rules(kind),
                SeccompAction::Trap,
                SeccompAction::Allow,
                arch(),
            )
            .unwrap();
            let prog: BpfProgram = f.try_into().unwrap();
            assert!(!prog.is_empty());
        }
    }

    #[test]
    fn dangerous_syscalls_are_in_no_filter() {
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            for s in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_process_vm_readv,
                libc::SYS_init_module,
                libc::SYS_mount,
                libc::SYS_kill,
                libc::SYS_pidfd_open,
                libc::SYS_pidfd_send_signal,
            ] {
                assert!(!r.contains_key(&s), "{} allows syscall {s}", kind.name());
            }
        }
        // Only the API thread opens files (to check a draft config), read-only, never with
        // the legacy open(). The others' kind filters let opens through only to the no_open
        // filter, which refuses each of them (tests/seccomp_process.rs checks the EACCES).
        let api = rules(ThreadKind::Api);
        assert_eq!(
            api[&libc::SYS_openat].len(),
            1,
            "openat read-only, one rule"
        );
        assert!(!api.contains_key(&libc::SYS_open));
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device] {
            let r = rules(kind);
            for s in OPENS {
                assert!(r[s].is_empty(), "{}: {s} left to no_open", kind.name());
            }
        }
        assert!(!OPENS.contains(&libc::SYS_openat2) && !OPENS.contains(&libc::SYS_creat));
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            assert!(!r.contains_key(&libc::SYS_openat2) && !r.contains_key(&libc::SYS_creat));
        }
    }

    #[test]
    fn landlock_syscalls_are_in_no_filter() {
        // landlock.rs runs before any filter is installed; nothing after may call them.
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            for s in [
                libc::SYS_landlock_create_ruleset,
                libc::SYS_landlock_add_rule,
                libc::SYS_landlock_restrict_self,
            ] {
                assert!(!r.contains_key(&s), "{} allows syscall {s}", kind.name());
            }
        }
    }

    #[test]
    fn filters_stay_small() {
        // Printed with --nocapture for the notes; the bound catches an allowlist that grows
        // by accident.
        for (kind, n) in allowed_counts() {
            println!("seccomp filter {kind}: {n} syscalls allowed");
            assert!(n < 80, "{kind} allows {n} syscalls");
        }
    }

    #[test]
    fn syscall_names_come_from_the_header() {
        assert_eq!(syscall_name(59), "execve");
        assert_eq!(syscall_name(101), "ptrace");
        assert_eq!(syscall_name(9999), "unknown");
    }
}
