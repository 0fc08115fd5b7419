//! Every host path a VM needs, collected from its config, and how it appears in the jail:
//! bind-mounted at the same absolute path, read-only unless the VM writes to it.
//!
//! Files are bound one by one (a decoy next to a disk image stays outside). Directories are
//! bound only where the VMM or virtiofsd creates files: the vsock socket's directory, a
//! virtiofsd socket's directory, the API socket's directory, and virtio-fs shared
//! directories. Such a directory must not be a shared one like /tmp (sticky bit): the VM would
//! see everything in it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use qvm_config::{ConsoleMode, VmConfig};

use crate::error::JailError;

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPath {
    /// Where the VMM looks for it (absolute, lexically normalized), inside and outside.
    pub path: PathBuf,
    /// A directory (bound as one) rather than a file, device node or socket.
    pub dir: bool,
    pub writable: bool,
    /// Read-only whatever else asks for it (kernel, initrd, config, libraries, binaries).
    pub force_ro: bool,
    /// Created by the jailer, owned by the VM, when missing (the console file).
    pub create: bool,
    /// For messages: `[[disk]] #1`, `kernel`, ...
    pub what: String,
}

/// Everything the jail needs.
#[derive(Debug, Default)]
pub struct Plan {
    /// Sorted by path: parents before what lies inside them.
    pub mounts: Vec<JailPath>,
    /// Directories to create in the jail so `..` components resolve as they do outside.
    pub dirs: Vec<PathBuf>,
    /// The config uses [[net]] taps: /dev/net/tun goes in.
    pub tun: bool,
    /// The environment the VMM gets (everything else is cleared).
    pub env: Vec<(String, String)>,
}

/// `p` without `.` and `..` (resolved lexically; never above `/`), and the directories a
/// lookup of the literal `p` walks through before each `..`.
pub fn normalize(p: &Path) -> (PathBuf, Vec<PathBuf>) {
    let mut out = PathBuf::from("/");
    let mut dirs = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if out != Path::new("/") {
                    dirs.push(out.clone());
                }
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (out, dirs)
}

struct Collector {
    mounts: BTreeMap<PathBuf, JailPath>,
    dirs: Vec<PathBuf>,
}

impl Collector {
    fn add(&mut self, what: impl Into<String>, p: &Path, dir: bool, writable: bool, ro: bool) {
        self.add_full(what.into(), p, dir, writable, ro, false);
    }

    fn add_full(
        &mut self,
        what: String,
        p: &Path,
        dir: bool,
        writable: bool,
        ro: bool,
        create: bool,
    ) {
        let (path, dirs) = normalize(p);
        self.dirs.extend(dirs);
        let e = self.mounts.entry(path.clone()).or_insert(JailPath {
            path,
            dir,
            writable: false,
            force_ro: false,
            create,
            what,
        });
        e.writable |= writable;
        e.force_ro |= ro;
        if e.force_ro {
            e.writable = false;
        }
    }
}

/// The directory holding socket `sock`, to be bound read-write: it must exist and not be a
/// shared directory like /tmp.
fn socket_dir(what: &str, sock: &Path) -> Result<PathBuf, JailError> {
    let dir = sock
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(dir).map_err(|e| {
        JailError::bad_path(what, sock, format!("its directory {}: {e}", dir.display()))
    })?;
    if dir == Path::new("/") || meta.mode() & libc::S_ISVTX != 0 {
        return Err(JailError::bad_path(
            what,
            sock,
            format!(
                "the jail would get all of {} read-write; put the socket in a directory of \
                 this VM's own, e.g. /run/qvm/<id>/",
                dir.display()
            ),
        ));
    }
    Ok(dir.to_path_buf())
}

/// A program name as Command would find it: a path as is, a bare name on `path_var`.
pub fn resolve_program(name: &Path, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if name.components().count() > 1 || name.is_absolute() {
        return Some(name.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Every path VM `cfg` (read from `config_path`, absolute) needs, for executable `exec`
/// (whose libraries and those of any virtiofsd come from `libs_of`). `vmm_args` are the
/// extra qvm-vmm arguments (an `--api-sock` among them gets its directory).
pub fn collect(
    cfg: &VmConfig,
    config_path: &Path,
    exec: &Path,
    vmm_args: &[String],
    env_in: &dyn Fn(&str) -> Option<String>,
    libs_of: &dyn Fn(&Path) -> Result<Vec<PathBuf>, JailError>,
) -> Result<Plan, JailError> {
    let mut c = Collector {
        mounts: BTreeMap::new(),
        dirs: Vec::new(),
    };
    let mut env = Vec::new();
    c.add("--config", config_path, false, false, true);
    c.add("--exec-file", exec, false, false, true);
    for lib in libs_of(exec)? {
        c.add("library", &lib, false, false, true);
    }
    c.add("[boot] kernel", &cfg.boot.kernel, false, false, true);
    if let Some(i) = &cfg.boot.initrd {
        c.add("[boot] initrd", i, false, false, true);
    }
    for (i, d) in cfg.disks.iter().enumerate() {
        let what = format!("[[disk]] #{} path", i + 1);
        if !d.path.exists() {
            return Err(JailError::bad_path(&what, &d.path, "no such file"));
        }
        c.add(what, &d.path, false, !d.read_only, false);
    }
    if cfg.console.mode == ConsoleMode::File {
        if let Some(p) = &cfg.console.path {
            let parent = p.parent().unwrap_or(Path::new("/"));
            if !p.exists() && !parent.is_dir() {
                return Err(JailError::bad_path(
                    "[console] path",
                    p,
                    format!("its directory {} does not exist", parent.display()),
                ));
            }
            c.add_full("[console] path".into(), p, false, true, false, !p.exists());
        }
    }
    if let Some(v) = &cfg.vsock {
        let dir = socket_dir("[vsock] socket", &v.socket)?;
        c.add("[vsock] socket directory", &dir, true, true, false);
    }
    for (i, f) in cfg.filesystems.iter().enumerate() {
        let what = format!("[[fs]] #{}", i + 1);
        match &f.shared_dir {
            None => c.add(format!("{what} socket"), &f.socket, false, false, false),
            Some(shared) => {
                let dir = socket_dir(&format!("{what} socket"), &f.socket)?;
                c.add(format!("{what} socket directory"), &dir, true, true, false);
                c.add(
                    format!("{what} shared_dir"),
                    shared,
                    true,
                    !f.read_only,
                    false,
                );
                // The VMM starts virtiofsd: its binary and libraries go in too.
                let name = f
                    .virtiofsd
                    .clone()
                    .or_else(|| env_in("QVM_VIRTIOFSD").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from("virtiofsd"));
                let path_var = env_in("PATH");
                let bin = resolve_program(&name, path_var.as_deref().map(OsStr::new))
                    .filter(|p| p.is_file())
                    .ok_or_else(|| {
                        JailError::bad_path(
                            format!("{what} virtiofsd"),
                            &name,
                            "not found; install it or set virtiofsd = \"<path>\" in [[fs]]",
                        )
                    })?;
                c.add(format!("{what} virtiofsd"), &bin, false, false, true);
                for lib in libs_of(&bin)? {
                    c.add("library", &lib, false, false, true);
                }
                if f.virtiofsd.is_none() {
                    env.push(("QVM_VIRTIOFSD".into(), bin.display().to_string()));
                }
            }
        }
    }
    if let Some(w) = &cfg.wayland {
        // The sockets themselves, not $XDG_RUNTIME_DIR: the VM reaches its compositor and
        // nothing else the user runs.
        let socks = w
            .socket
            .iter()
            .map(|s| ("[wayland] socket".to_string(), s))
            .chain(
                w.named
                    .iter()
                    .map(|n| (format!("[[wayland.named]] {}", n.name), &n.socket)),
            );
        for (what, s) in socks {
            let is_sock = std::fs::metadata(s).is_ok_and(|m| m.file_type().is_socket());
            if !is_sock {
                return Err(JailError::bad_path(
                    &what,
                    s,
                    "no compositor listens there; start it first",
                ));
            }
            c.add(what, s, false, false, false);
        }
        if let Some(dir) = env_in("XDG_RUNTIME_DIR") {
            env.push(("XDG_RUNTIME_DIR".into(), dir));
        }
    }
    if let Some(sock) = api_sock(vmm_args) {
        let sock = if sock.is_relative() {
            // The VMM runs in / inside the jail.
            return Err(JailError::bad_path(
                "--api-sock",
                &sock,
                "use an absolute path in a jail",
            ));
        } else {
            sock
        };
        let dir = socket_dir("--api-sock", &sock)?;
        c.add("--api-sock directory", &dir, true, true, false);
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        if let Some(fd) = n.fd {
            return Err(JailError::NetFd { index: i + 1, fd });
        }
    }
    // Debug builds pass the test hooks through (QVM_TEST_FORBIDDEN, QVM_TEST_LANDLOCK).
    if cfg!(debug_assertions) {
        for k in ["QVM_TEST_FORBIDDEN", "QVM_TEST_LANDLOCK"] {
            if let Some(v) = env_in(k) {
                env.push((k.into(), v));
            }
        }
    }
    let mut dirs = c.dirs;
    dirs.sort();
    dirs.dedup();
    Ok(Plan {
        mounts: c.mounts.into_values().collect(),
        dirs,
        tun: !cfg.nets.is_empty(),
        env,
    })
}

/// The value of `--api-sock` among qvm-vmm's arguments.
pub fn api_sock(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--api-sock" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--api-sock=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The shared libraries in `ldd` output (and the dynamic loader); empty for a static binary.
pub fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.contains("not a dynamic executable")
            || line == "statically linked"
        {
            continue;
        }
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                return Err(format!("library {} not found", name.trim()));
            }
            let path = rest.split(" (").next().unwrap_or("").trim();
            if path.starts_with('/') {
                libs.push(PathBuf::from(path));
            }
        } else {
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`, or the vDSO (no path).
            let path = line.split(" (").next().unwrap_or("").trim();
            if path.starts_with('/') {
                libs.push(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

/// The ELF program interpreter (dynamic loader) `exe` names, None for a static binary.
pub fn interpreter(exe: &Path) -> Result<Option<PathBuf>, String> {
    // The header, program headers and interpreter path sit at the start: a debug qvm-vmm is
    // hundreds of MiB, so read only that much.
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(exe).map_err(|e| e.to_string())?,
            64 << 10,
        ),
        &mut data,
    )
    .map_err(|e| e.to_string())?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if data.get(..5) != Some(b"\x7fELF\x02".as_slice()) || data.get(5) != Some(&1) {
        return Err("not a little-endian 64-bit ELF executable".into());
    }
    let bad = || "truncated ELF header".to_string();
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(bad)? == 3 {
            // PT_INTERP: a NUL-terminated path.
            let off = u64_at(ph + 8).ok_or_else(bad)? as usize;
            let len = u64_at(ph + 32).ok_or_else(bad)? as usize;
            let raw = data.get(off..off + len).ok_or_else(bad)?;
            let path = raw.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(PathBuf::from(
                String::from_utf8_lossy(path).into_owned(),
            )));
        }
    }
    Ok(None)
}

/// Why `interp` may not be run by root: it, or a directory above it, is not root's alone.
/// `exe` names its own loader, and a config chooses `exe` (`[[fs]] virtiofsd = ...`): a
/// loader someone else can write is their program.
pub fn untrusted_loader(interp: &Path) -> Option<String> {
    let real = match std::fs::canonicalize(interp) {
        Ok(p) => p,
        Err(e) => return Some(format!("its loader {}: {e}", interp.display())),
    };
    for p in real.ancestors() {
        let m = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", p.display())),
        };
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Some(format!(
                "its loader {} is not root's alone ({} belongs to uid {}, mode {:o}); \
                 the jailer runs only a loader that root owns and no one else can write",
                interp.display(),
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    None
}

/// The libraries `exe` loads (and its loader), as `ldd` lists them; none for a static binary.
/// Runs the loader's `--list` directly rather than the `ldd` script (one exec instead of a
/// shell and then the loader), as the VM's `uid`:`gid` with no supplementary groups, never as
/// root, and only a loader root owns and no one else can write ([`untrusted_loader`]). A
/// static qvm-vmm would need none of this; the jailer supports both, so the default dynamic
/// build is what runs.
pub fn libraries_as(uid: u32, gid: u32) -> impl Fn(&Path) -> Result<Vec<PathBuf>, JailError> {
    move |exe| libraries(exe, uid, gid)
}

fn libraries(exe: &Path, uid: u32, gid: u32) -> Result<Vec<PathBuf>, JailError> {
    let err = |reason: String| JailError::Ldd {
        exe: exe.to_path_buf(),
        reason,
    };
    let Some(interp) = interpreter(exe).map_err(err)? else {
        return Ok(Vec::new());
    };
    if let Some(why) = untrusted_loader(&interp) {
        return Err(err(why));
    }
    let mut cmd = Command::new(&interp);
    cmd.arg("--list").arg(exe).env_clear();
    // std clears the supplementary groups when it drops from root to `uid`.
    use std::os::unix::process::CommandExt;
    cmd.uid(uid).gid(gid);
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot run its loader {}: {e}", interp.display())))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(err(text.trim().replace('\n', "; ")));
    }
    let mut libs = parse_ldd(&text).map_err(err)?;
    if !libs.contains(&interp) {
        libs.push(interp);
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffc1d9f2000)\n\
        \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c0a1000)\n\
        \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1bec0000)\n\
        \t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c0f0000)\n";

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        assert_eq!(
            parse_ldd(LDD).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.contains("libfoo.so.1 not found"), "{e}");
    }

    #[test]
    fn ldd_of_a_real_binary() {
        assert_eq!(
            interpreter(Path::new("/bin/sh")).unwrap(),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert!(interpreter(Path::new("/etc/hostname")).is_err());
        let libs = libraries(Path::new("/bin/sh"), 65534, 65534).unwrap();
        assert!(
            libs.contains(&PathBuf::from("/lib64/ld-linux-x86-64.so.2")),
            "{libs:?}"
        );
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }

    /// A config names the binary (`[[fs]] virtiofsd = ...`) and the binary names its loader:
    /// a loader someone else can write is refused, never run as root.
    #[test]
    fn a_loader_someone_else_can_write_is_never_run() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        // A copy of /bin/sh whose PT_INTERP names a script of ours, path of the same length.
        let real = b"/lib64/ld-linux-x86-64.so.2";
        let base = format!("{}/", dir.display());
        assert!(base.len() < real.len(), "temp dir path too long: {base}");
        let evil = format!("{base}{}", "e".repeat(real.len() - base.len()));
        let marker = dir.join("ran");
        std::fs::write(&evil, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut elf = std::fs::read("/bin/sh").unwrap();
        let at = elf
            .windows(real.len())
            .position(|w| w == real)
            .expect("/bin/sh names ld-linux-x86-64.so.2");
        elf[at..at + real.len()].copy_from_slice(evil.as_bytes());
        let exe = dir.join("virtiofsd");
        std::fs::write(&exe, elf).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(interpreter(&exe).unwrap(), Some(PathBuf::from(&evil)));
        let e = libraries(&exe, 65534, 65534).unwrap_err().to_string();
        assert!(e.contains("not root's alone"), "{e}");
        assert!(!marker.exists(), "the loader ran");
        assert_eq!(
            untrusted_loader(Path::new("/lib64/ld-linux-x86-64.so.2")),
            None
        );
    }

    #[test]
    fn normalize_resolves_dots_and_keeps_walked_dirs() {
        assert_eq!(normalize(Path::new("/a/./b")).0, PathBuf::from("/a/b"));
        let (p, d) = normalize(Path::new("/a/b/../c"));
        assert_eq!(p, PathBuf::from("/a/c"));
        assert_eq!(d, vec![PathBuf::from("/a/b")]);
        assert_eq!(normalize(Path::new("/../../etc")).0, PathBuf::from("/etc"));
        assert_eq!(
            api_sock(&["--api-sock".into(), "/r/a.sock".into()]),
            Some("/r/a.sock".into())
        );
        assert_eq!(api_sock(&["--api-sock=/x".into()]), Some("/x".into()));
        assert_eq!(api_sock(&["--seccomp".into(), "off".into()]), None);
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("qvm-jailer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn no_libs(_: &Path) -> Result<Vec<PathBuf>, JailError> {
        Ok(vec![PathBuf::from("/lib/libc.so.6")])
    }

    fn plan(d: &Path, extra: &str, args: &[String]) -> Result<Plan, JailError> {
        let cfg_path = d.join("vm.toml");
        std::fs::write(d.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(d.join("initrd"), b"initrd").unwrap();
        std::fs::write(
            &cfg_path,
            format!(
                "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"vmlinux\"\ninitrd = \"initrd\"\n{extra}"
            ),
        )
        .unwrap();
        let cfg = VmConfig::from_file(&cfg_path)?;
        collect(
            &cfg,
            &cfg_path,
            Path::new("/usr/bin/qvm-vmm"),
            args,
            &|_| None,
            &no_libs,
        )
    }

    #[test]
    fn paths_come_from_the_config_with_their_access() {
        let d = scratch("collect");
        let d = &d.0;
        std::fs::write(d.join("root.img"), [0u8; 4096]).unwrap();
        std::fs::write(d.join("data.img"), [0u8; 4096]).unwrap();
        std::fs::write(d.join("other-vm.img"), [0u8; 4096]).unwrap();
        std::fs::create_dir(d.join("sock")).unwrap();
        let extra = format!(
            "[[disk]]\npath = \"root.img\"\nread_only = true\n[[disk]]\npath = \"data.img\"\n\
             [console]\nmode = \"file\"\npath = \"console.log\"\n\
             [vsock]\nguest_cid = 3\nsocket = \"{}/sock/v.sock\"\n[[net]]\ntap = \"tap0\"\n",
            d.display()
        );
        let p = plan(
            d,
            &extra,
            &[
                "--api-sock".into(),
                d.join("sock/api.sock").display().to_string(),
            ],
        )
        .unwrap();
        let get = |name: &str| {
            p.mounts
                .iter()
                .find(|m| m.path == d.join(name))
                .unwrap_or_else(|| panic!("{name} missing from {:#?}", p.mounts))
        };
        assert!(!get("vm.toml").writable && get("vm.toml").force_ro);
        assert!(!get("vmlinux").writable && !get("initrd").writable);
        assert!(!get("root.img").writable);
        assert!(get("data.img").writable);
        let con = get("console.log");
        assert!(con.writable && con.create);
        let sock = get("sock");
        assert!(sock.dir && sock.writable);
        assert!(p
            .mounts
            .iter()
            .any(|m| m.path == Path::new("/usr/bin/qvm-vmm") && m.force_ro));
        assert!(p
            .mounts
            .iter()
            .any(|m| m.path == Path::new("/lib/libc.so.6") && !m.writable));
        // The decoy next to the disks stays out, and no directory of the VM's files goes in
        // except the socket directory.
        assert!(!p
            .mounts
            .iter()
            .any(|m| m.path == d.join("other-vm.img") || m.path == *d));
        assert!(p.tun);
        assert!(p.env.is_empty());
        // Sorted: parents first.
        let paths: Vec<_> = p.mounts.iter().map(|m| m.path.clone()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
    }

    #[test]
    fn a_kernel_also_named_as_a_writable_disk_stays_read_only() {
        let d = scratch("ro");
        let p = plan(&d.0, "[[disk]]\npath = \"vmlinux\"\n", &[]).unwrap();
        let k = p
            .mounts
            .iter()
            .find(|m| m.path == d.0.join("vmlinux"))
            .unwrap();
        assert!(!k.writable);
    }

    #[test]
    fn shared_socket_directories_and_inherited_fds_are_refused() {
        let d = scratch("refuse");
        let shared = d.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = plan(
            &d.0,
            &format!(
                "[vsock]\nguest_cid = 3\nsocket = \"{}/v.sock\"\n",
                shared.display()
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("would get all of") && e.contains("read-write"),
            "{e}"
        );
        let e = plan(&d.0, "[[net]]\nfd = 2\n", &[])
            .unwrap_err()
            .to_string();
        // stdio is refused by the config check already; either way one clear line.
        assert!(e.contains("fd = 2"), "{e}");
        let e = plan(&d.0, "", &["--api-sock".into(), "rel.sock".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute path"), "{e}");
    }
}
