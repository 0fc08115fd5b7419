//! The config file's parsing and checks, through [`VmConfig::parse`] and [`VmConfig::validate`].

use super::*;

fn parse(text: &str) -> Result<VmConfig, ConfigError> {
    VmConfig::parse(text, Path::new("vm.toml"), Path::new("/base"))
}

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() {
    let c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"k/vmlinux\"\n").unwrap();
    assert_eq!(c.machine.vcpus, 1);
    assert_eq!(c.boot.kernel, PathBuf::from("/base/k/vmlinux"));
    assert_eq!(c.boot.cmdline, DEFAULT_CMDLINE);
    assert_eq!(c.console.mode, ConsoleMode::Stdio);
    assert_eq!(c.memory_bytes(), 128 << 20);
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let e = parse("[machine]\nmemory_mib = 128\nvcpu = 2\n[boot]\nkernel = \"k\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("vm.toml:3: unknown field `vcpu`"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn value_checks() {
    let mut c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n").unwrap();
    c.validate(Some(1024)).unwrap();
    c.machine.memory_mib = 4096;
    assert!(matches!(
        c.validate(Some(1024)),
        Err(ConfigError::MemoryTooLarge { .. })
    ));
    c.machine.memory_mib = 0;
    assert!(matches!(
        c.validate(None),
        Err(ConfigError::MemoryTooSmall(0))
    ));
    c.machine.memory_mib = 64;
    c.machine.vcpus = 0;
    assert!(matches!(c.validate(None), Err(ConfigError::NoVcpus)));
    c.machine.vcpus = 255;
    assert!(matches!(
        c.validate(None),
        Err(ConfigError::TooManyVcpus { .. })
    ));
    c.machine.vcpus = 2;
    c.boot.cmdline = "x".repeat(MAX_CMDLINE_LEN);
    assert!(matches!(
        c.validate(None),
        Err(ConfigError::CmdlineTooLong(_))
    ));
    c.boot.cmdline = "console=ttyS0 é".into();
    assert!(matches!(
        c.validate(None),
        Err(ConfigError::CmdlineNotAscii)
    ));
    c.boot.cmdline = DEFAULT_CMDLINE.into();
    c.console.mode = ConsoleMode::File;
    assert!(matches!(
        c.validate(None),
        Err(ConfigError::ConsoleFileWithoutPath)
    ));
    c.boot.kernel = "/nonexistent/vmlinux".into();
    let e = c.validate(None).unwrap_err().to_string();
    assert!(
        e.starts_with("[boot] kernel = \"/nonexistent/vmlinux\": no such file"),
        "{e}"
    );
}

fn with(extra: &str) -> Result<(), String> {
    let c = parse(&format!(
        "[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n{extra}"
    ))
    .map_err(|e| e.to_string())?;
    c.validate(Some(1024)).map_err(|e| e.to_string())
}

#[test]
fn net_checks() {
    with("[[net]]\ntap = \"tap0\"\nmac = \"52:54:00:12:34:56\"\n").unwrap();
    let e = with("[[net]]\nmac = \"52:54:00:12:34:56\"\n").unwrap_err();
    assert!(e.starts_with("[[net]] #1: set exactly one of tap"), "{e}");
    let e = with("[[net]]\ntap = \"a-very-long-tap-name\"\n").unwrap_err();
    assert!(e.contains("not an interface name"), "{e}");
    let e = with("[[net]]\ntap = \"t0\"\nmac = \"53:54:00:12:34:56\"\n").unwrap_err();
    assert!(e.contains("multicast"), "{e}");
    let e = with("[[net]]\ntap = \"t0\"\nmac = \"52:54:00:12:34\"\n").unwrap_err();
    assert!(e.contains("not a MAC address like"), "{e}");
    let e = with("[[net]]\ntap = \"t0\"\n[[net]]\ntap = \"t0\"\n").unwrap_err();
    assert!(
        e.starts_with("[[net]] #2: tap = \"t0\": [[net]] #1 uses it"),
        "{e}"
    );
    let e = with("[[net]]\nfd = 1000\n").unwrap_err();
    assert!(e.contains("fd = 1000: not an open file descriptor"), "{e}");
}

#[test]
fn vsock_checks() {
    with("[vsock]\nguest_cid = 3\nsocket = \"/tmp/vm.vsock\"\n").unwrap();
    let e = with("[vsock]\nguest_cid = 2\nsocket = \"/tmp/vm.vsock\"\n").unwrap_err();
    assert!(e.starts_with("[vsock] guest_cid = 2: CIDs 0-2"), "{e}");
    let e = with("[vsock]\nguest_cid = 3\nsocket = \"/nonexistent/dir/v.sock\"\n").unwrap_err();
    assert!(
        e.contains("the directory /nonexistent/dir does not exist"),
        "{e}"
    );
    let c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"k\"\n[vsock]\nguest_cid = 3\nsocket = \"v.sock\"\n").unwrap();
    assert_eq!(c.vsock.unwrap().socket, PathBuf::from("/base/v.sock"));
}

#[test]
fn fs_checks() {
    let e =
        with("[[fs]]\ntag = \"\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\n").unwrap_err();
    assert!(
        e.starts_with("[[fs]] #1: tag = \"\": use 1 to 36 bytes"),
        "{e}"
    );
    with("[[fs]]\ntag = \"home\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\nread_only = true\n").unwrap();
    let e = with("[[fs]]\ntag = \"a\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\n[[fs]]\ntag = \"a\"\nsocket = \"/tmp/y.sock\"\nshared_dir = \"/tmp\"\n").unwrap_err();
    assert!(e.contains("tags must be unique"), "{e}");
    let e = with("[[fs]]\ntag = \"a\"\nsocket = \"/nonexistent/x.sock\"\n").unwrap_err();
    assert!(e.contains("no virtiofsd listens there"), "{e}");
    let e =
        with("[[fs]]\ntag = \"a\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/nonexistent/dir\"\n")
            .unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn wayland_policy_keys_and_the_name_default() {
    let base =
        "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"/bin/sh\"\n[wayland]\nsocket = \"/w\"\n";
    let at = |file: &str, extra: &str| {
        VmConfig::parse(&format!("{base}{extra}"), Path::new(file), Path::new("/b"))
            .and_then(|c| c.validate(None).map(|_| c))
            .map(|c| c.wayland.unwrap())
    };
    let w = at("/etc/qvm/work.toml", "").unwrap();
    assert_eq!(w.name.as_deref(), Some("work"));
    assert!(w.allow_globals.is_empty());
    assert_eq!(w.clipboard, WaylandClipboard::Gated);
    // A file name that cannot label windows leaves the default ("vm") to the device.
    assert_eq!(at("/x/a]b.toml", "").unwrap().name, None);
    let w = at(
        "vm.toml",
        "name = \"banking\"\nallow_globals = [\"weston_screenshooter\"]\nclipboard = \"open\"\n",
    )
    .unwrap();
    assert_eq!(w.name.as_deref(), Some("banking"));
    assert_eq!(w.allow_globals, ["weston_screenshooter"]);
    assert_eq!(w.clipboard, WaylandClipboard::Open);
    for bad in [
        "name = \"\"",
        "name = \"a]\"",
        "name = \"123456789012345678901234567890123\"",
        "allow_globals = [\"a b\"]",
        "clipboard = \"shared\"",
    ] {
        assert!(at("vm.toml", bad).is_err(), "{bad}");
    }
}

/// An entry with two faults reports the one it always reported first: the host checks and the
/// checks across entries did not move behind the section's value checks.
#[test]
fn the_first_of_two_faults_is_the_same_as_before_the_split() {
    let e = with("[[net]]\ntap = \"t0\"\n[[net]]\ntap = \"t0\"\nmac = \"52:54\"\n").unwrap_err();
    assert!(
        e.starts_with("[[net]] #2: tap = \"t0\": [[net]] #1 uses it"),
        "{e}"
    );
    let e = with("[[net]]\nfd = 1000\nmac = \"52:54\"\n").unwrap_err();
    assert!(e.contains("fd = 1000: not an open file descriptor"), "{e}");
    let long = format!("/nonexistent/{}", "v".repeat(100));
    let e = with(&format!("[vsock]\nguest_cid = 3\nsocket = \"{long}\"\n")).unwrap_err();
    assert!(
        e.contains("the directory /nonexistent does not exist"),
        "{e}"
    );
    let e = with("[[disk]]\npath = \"/nonexistent/d.img\"\nid = \"a b\"\n").unwrap_err();
    assert!(e.contains("no such file"), "{e}");
    let e = with("[[fs]]\ntag = \"a\"\nsocket = \"/nonexistent/x.sock\"\nread_only = true\n")
        .unwrap_err();
    assert!(e.contains("read_only and virtiofsd only apply"), "{e}");
}

/// The sections' own validate() looks at values only: no files, no fds, no other entries.
#[test]
fn section_checks_are_value_checks() {
    let m = MachineConfig {
        vcpus: 1,
        memory_mib: 4096,
    };
    assert!(m.validate(None).is_ok());
    assert!(matches!(
        m.validate(Some(1024)),
        Err(ConfigError::MemoryTooLarge { host: 1024, .. })
    ));
    let b = BootConfig {
        kernel: "/nonexistent/vmlinux".into(),
        initrd: None,
        cmdline: DEFAULT_CMDLINE.into(),
    };
    assert!(b.validate().is_ok());
    assert!(b.check_files().is_err());
    let d = DiskConfig {
        path: "/nonexistent/d.img".into(),
        read_only: false,
        id: Some("a b".into()),
        direct_io: false,
    };
    let e = d.validate(1).unwrap_err();
    assert_eq!(e.section(), Some(Section::Disk(1)));
    assert_eq!(
        e.detail(),
        "id = \"a b\": use printable ASCII without spaces"
    );
    assert!(d
        .check_host(1)
        .unwrap_err()
        .to_string()
        .contains("no such file"));
    let n = NetConfig {
        tap: None,
        fd: Some(1000),
        mac: Some("53:54:00:12:34:56".into()),
    };
    // fd 1000 is not open and the MAC is multicast, but both are the whole config's checks.
    assert!(n.validate(0).is_ok());
    assert!(n.check_host(0).is_err());
    let n = NetConfig { fd: Some(2), ..n };
    assert!(n.validate(0).unwrap_err().to_string().contains("fd = 2"));
    let v = VsockConfig {
        guest_cid: 3,
        socket: "/nonexistent/dir/v.sock".into(),
    };
    assert!(v.validate().is_ok());
    assert!(v.check_host().is_err());
    let f = FsConfig {
        tag: "home".into(),
        socket: "/nonexistent/x.sock".into(),
        shared_dir: None,
        read_only: true,
        virtiofsd: None,
    };
    assert!(f.validate(0).is_ok());
    assert!(f.check_host(0).is_err());
    let c = ConsoleConfig {
        mode: ConsoleMode::Off,
        path: Some("/c".into()),
        ..ConsoleConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(ConfigError::ConsolePathWithoutFile)
    ));
}

#[test]
fn a_console_log_limit_is_1_mib_or_more_and_16_mib_unless_given() {
    let base = "[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n";
    let c = parse(base).unwrap();
    assert_eq!(c.console.limit_bytes(), 16 << 20);
    let c = parse(&format!("{base}[console]\nlimit_mib = 1\n")).unwrap();
    c.validate(Some(1024)).unwrap();
    assert_eq!(c.console.limit_bytes(), 1 << 20);
    for bad in [0, MAX_CONSOLE_LIMIT_MIB + 1] {
        let c = parse(&format!("{base}[console]\nlimit_mib = {bad}\n")).unwrap();
        let e = c.validate(Some(1024)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("[console] limit_mib = {bad}: give 1 to")),
            "{e}"
        );
    }
}

#[test]
fn limits_are_named_for_what_they_are() {
    // The cmdline limit leaves room for the terminating NUL: 2047 bytes pass, 2048 do not,
    // and the message names the largest that passes.
    let mut c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n").unwrap();
    c.boot.cmdline = "x".repeat(MAX_CMDLINE_LEN - 1);
    c.validate(Some(1024)).unwrap();
    c.boot.cmdline.push('x');
    let e = c.validate(Some(1024)).unwrap_err().to_string();
    assert!(e.contains("Linux takes at most 2047,"), "{e}");
    // Above qvm's own limit, without knowing the host (the API): not "this host's RAM".
    let m = MachineConfig {
        vcpus: 1,
        memory_mib: MAX_MEMORY_MIB + 1,
    };
    let e = m.validate(None).unwrap_err().to_string();
    assert!(e.contains("more than the 1048576 MiB qvm supports"), "{e}");
    let e = m.validate(Some(4096)).unwrap_err().to_string();
    assert!(e.contains("more than this host's 4096 MiB of RAM"), "{e}");
}
