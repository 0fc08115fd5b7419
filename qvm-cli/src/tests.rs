//! Domains file parsing, validation and the derived vm.toml.

use std::path::{Path, PathBuf};

use qvm_config::VmConfig;

use crate::domains::{valid_name, Domains, DomainsError, APPS_DISK_ID, APPS_HOME_TAG};
use crate::runtime::VmPaths;
use crate::units;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"\x7fELF not really").unwrap();
        std::fs::write(dir.path().join("initrd.cpio"), b"070701").unwrap();
        std::fs::write(dir.path().join("a.img"), vec![0u8; 4096]).unwrap();
        Fixture { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("domains.toml")
    }
    fn parse(&self, text: &str) -> Result<Domains, DomainsError> {
        Domains::parse(text, &self.path())
    }
}

const THREE: &str = r#"
[[vm]]
name = "a"
label = "red"
memory_mib = 256
kernel = "vmlinux"
initrd = "initrd.cpio"
cmdline = "console=ttyS0 qvm.mode=agent"
disks = [{ path = "a.img", read_only = true, id = "data" }]
tap = "qvm-a"
mac = "52:54:00:00:00:0a"

[[vm]]
name = "b"
colour = "green"
memory_mib = 128
vcpus = 2
kernel = "vmlinux"
shares = [{ tag = "docs", path = "/srv/docs", read_only = true }]
wayland = { clipboard = "open" }

[[vm]]
name = "c"
memory_mib = 64
kernel = "/abs/vmlinux"
cid = 42
"#;

#[test]
fn three_vms_parse_with_paths_resolved_and_cids_assigned() {
    let f = Fixture::new();
    let d = f.parse(THREE).unwrap();
    assert_eq!(d.vms.len(), 3);
    let a = d.get("a").unwrap();
    assert_eq!(a.kernel, f.dir.path().join("vmlinux"));
    assert_eq!(a.disks[0].path, f.dir.path().join("a.img"));
    assert_eq!(a.label(), "red");
    assert_eq!(a.cid, Some(3));
    let b = d.get("b").unwrap();
    assert_eq!(b.label(), "green");
    assert_eq!(b.vcpus, 2);
    assert_eq!(b.cid, Some(4));
    let c = d.get("c").unwrap();
    assert_eq!(c.kernel, PathBuf::from("/abs/vmlinux"));
    assert_eq!(c.cid, Some(42));
    assert_eq!(c.label(), "-");
}

#[test]
fn derived_vm_toml_round_trips_through_the_vmm_parser() {
    let f = Fixture::new();
    let d = f.parse(THREE).unwrap();
    let rt = f.dir.path().join("run");
    let a = d.get("a").unwrap();
    let paths = VmPaths::new(&rt, "a");
    std::fs::create_dir_all(&paths.dir).unwrap();
    let cfg = a.checked_config(&paths).unwrap();
    assert_eq!(cfg.machine.memory_mib, 256);
    assert_eq!(cfg.boot.initrd, Some(f.dir.path().join("initrd.cpio")));
    assert_eq!(cfg.nets.len(), 1);
    assert_eq!(cfg.nets[0].tap.as_deref(), Some("qvm-a"));
    let vsock = cfg.vsock.as_ref().unwrap();
    assert_eq!(vsock.guest_cid, 3);
    assert_eq!(vsock.socket, rt.join("a/vsock.sock"));
    let text = crate::domains::to_toml(&cfg);
    let back = VmConfig::parse(&text, Path::new("vm.toml"), Path::new("/")).unwrap();
    assert_eq!(back, cfg);

    let b = d.get("b").unwrap();
    let cfg = b.vm_config(&VmPaths::new(&rt, "b"));
    assert_eq!(cfg.filesystems[0].tag, "docs");
    assert_eq!(
        cfg.filesystems[0].shared_dir,
        Some(PathBuf::from("/srv/docs"))
    );
    assert_eq!(cfg.filesystems[0].socket, rt.join("b/fs-docs.sock"));
    let wl = cfg.wayland.as_ref().unwrap();
    assert_eq!(wl.name.as_deref(), Some("b"));
    assert!(cfg.boot.cmdline.contains("qvm.mode=agent"));
}

#[test]
fn vmm_validation_errors_name_the_vm_and_the_key() {
    let f = Fixture::new();
    let d = f
        .parse("[[vm]]\nname = \"x\"\nmemory_mib = 8\nkernel = \"vmlinux\"\n")
        .unwrap();
    let e = d
        .get("x")
        .unwrap()
        .checked_config(&VmPaths::new(f.dir.path(), "x"))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DomainsError::Vm { .. }), "{msg}");
    assert!(
        msg.starts_with("[[vm]] x: [machine] memory_mib = 8"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");

    let d = f
        .parse("[[vm]]\nname = \"y\"\nmemory_mib = 64\nkernel = \"missing\"\n")
        .unwrap();
    let msg = d
        .get("y")
        .unwrap()
        .checked_config(&VmPaths::new(f.dir.path(), "y"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[boot] kernel"), "{msg}");
}

#[test]
fn structural_errors_are_typed_and_say_what_to_fix() {
    let f = Fixture::new();
    let vm = |name: &str, extra: &str| {
        format!("[[vm]]\nname = \"{name}\"\nmemory_mib = 64\nkernel = \"vmlinux\"\n{extra}\n")
    };
    assert!(matches!(f.parse(""), Err(DomainsError::Empty { .. })));
    assert!(matches!(
        f.parse(&vm("Bad Name", "")),
        Err(DomainsError::BadName { .. })
    ));
    assert!(matches!(
        f.parse(&format!("{}{}", vm("a", ""), vm("a", ""))),
        Err(DomainsError::DuplicateName { .. })
    ));
    assert!(matches!(
        f.parse(&format!("{}{}", vm("a", "cid = 9"), vm("b", "cid = 9"))),
        Err(DomainsError::DuplicateCid { cid: 9, .. })
    ));
    assert!(matches!(
        f.parse(&vm("a", "cid = 2")),
        Err(DomainsError::BadCid { cid: 2, .. })
    ));
    assert!(matches!(
        f.parse(&vm("a", "mac = \"52:54:00:00:00:01\"")),
        Err(DomainsError::MacWithoutTap { .. })
    ));
    assert!(matches!(
        f.parse(&vm(
            "a",
            "shares = [{ tag = \"t\", path = \"/x\" }, { tag = \"t\", path = \"/y\" }]"
        )),
        Err(DomainsError::DuplicateShare { .. })
    ));
    match f.parse(&vm("a", "colour = \"red\"\nmemroy = 3")) {
        Err(DomainsError::Parse { message, .. }) => {
            assert!(message.contains("memroy"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let d = f.parse(&vm("a", "")).unwrap();
    let msg = d.get("zz").unwrap_err().to_string();
    assert!(
        msg.contains("no VM named \"zz\"") && msg.contains("declared: a"),
        "{msg}"
    );
}

#[test]
fn names() {
    for ok in ["a", "work", "vm-1", "a_b", "0day"] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in ["", "-a", "A", "a b", "a/b", "..", &"x".repeat(33)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn units_start_and_stop_through_qvm() {
    let f = Fixture::new();
    let d = f.parse(THREE).unwrap();
    let a = d.get("a").unwrap();
    let text = units::unit(
        a,
        &VmPaths::new(Path::new("/run/user/1000/qvm"), "a"),
        Path::new("/usr/bin/qvm"),
        &f.path(),
    );
    assert_eq!(units::unit_name(a), "qvm-a.service");
    assert!(text.contains("PIDFile=/run/user/1000/qvm/a/pid"), "{text}");
    assert!(
        text.contains(" start a\n") && text.contains(" stop a\n"),
        "{text}"
    );
    assert!(text.contains("Type=forking"), "{text}");
}

#[test]
fn jailed_vms_start_through_qvm_jailer() {
    let f = Fixture::new();
    let d = f
        .parse(
            "[[vm]]\nname = \"j\"\nmemory_mib = 64\nkernel = \"vmlinux\"\n\
             jail = { uid = 2001, gid = 2002, jail_base = \"/tmp/jb\" }\n\
             [[vm]]\nname = \"p\"\nmemory_mib = 64\nkernel = \"vmlinux\"\n",
        )
        .unwrap();
    let rt = Path::new("/r");
    let j = d.get("j").unwrap();
    let (bin, args) = crate::vm::vmm_command(j, &VmPaths::new(rt, "j"), Path::new("/r/j/vm.toml"));
    assert!(bin.ends_with("qvm-jailer"), "{bin:?}");
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let joined = args.join(" ");
    assert!(
        joined.starts_with("--id j --uid 2001 --gid 2002 --jail-base /tmp/jb"),
        "{joined}"
    );
    assert!(
        joined.ends_with("--config /r/j/vm.toml -- --api-sock /r/j/api.sock"),
        "{joined}"
    );
    let p = d.get("p").unwrap();
    let (bin, args) = crate::vm::vmm_command(p, &VmPaths::new(rt, "p"), Path::new("/r/p/vm.toml"));
    assert!(bin.ends_with("qvm-vmm"), "{bin:?}");
    assert_eq!(args.len(), 4);
    assert!(matches!(
        f.parse("[[vm]]\nname = \"r\"\nmemory_mib = 64\nkernel = \"vmlinux\"\njail = { uid = 0, gid = 0 }\n"),
        Err(DomainsError::JailRoot { .. })
    ));
}

#[test]
fn tap_commands_give_each_tap_to_its_user() {
    let f = Fixture::new();
    let d = f
        .parse(
            "[[vm]]\nname = \"a\"\nmemory_mib = 64\nkernel = \"vmlinux\"\ntap = \"qvm-a\"\n\
             [[vm]]\nname = \"b\"\nmemory_mib = 64\nkernel = \"vmlinux\"\n\
             [[vm]]\nname = \"j\"\nmemory_mib = 64\nkernel = \"vmlinux\"\ntap = \"qvm-j\"\n\
             jail = { uid = 2001, gid = 2001 }\n",
        )
        .unwrap();
    let text = units::tap_commands(&d.vms, "me");
    assert_eq!(
        text,
        "# a\nip tuntap add qvm-a mode tap user me\nip link set qvm-a up\n\
         # j\nip tuntap add qvm-j mode tap user 2001\nip link set qvm-j up\n"
    );
}

#[test]
fn apps_become_a_read_only_disk_a_home_share_and_the_command_line() {
    let f = Fixture::new();
    let text = "[[vm]]\nname = \"w\"\nmemory_mib = 256\nkernel = \"vmlinux\"\n\
                disks = [{ path = \"w.img\" }]\n\
                apps = { image = \"debian.ext4\", home = \"homes/w\" }\n\
                [[vm]]\nname = \"n\"\nmemory_mib = 256\nkernel = \"vmlinux\"\n\
                apps = { image = \"/srv/debian.ext4\" }\n";
    let d = f.parse(text).unwrap();
    let rt = f.dir.path().join("run");
    let cfg = d.get("w").unwrap().vm_config(&VmPaths::new(&rt, "w"));
    // After the VM's own disks, found by the guest through its serial.
    assert_eq!(cfg.disks.len(), 2);
    assert_eq!(cfg.disks[1].path, f.dir.path().join("debian.ext4"));
    assert!(cfg.disks[1].read_only);
    assert_eq!(cfg.disks[1].id.as_deref(), Some(APPS_DISK_ID));
    assert_eq!(cfg.filesystems.len(), 1);
    assert_eq!(cfg.filesystems[0].tag, APPS_HOME_TAG);
    assert_eq!(
        cfg.filesystems[0].shared_dir,
        Some(f.dir.path().join("homes/w"))
    );
    assert!(!cfg.filesystems[0].read_only);
    assert!(
        cfg.boot
            .cmdline
            .ends_with("qvm.mode=agent qvm.apps=id:qvm-apps qvm.home=qvm-home"),
        "{}",
        cfg.boot.cmdline
    );
    // No home: a tmpfs in the guest, no share.
    let cfg = d.get("n").unwrap().vm_config(&VmPaths::new(&rt, "n"));
    assert!(cfg.filesystems.is_empty());
    assert!(cfg.boot.cmdline.ends_with(" qvm.apps=id:qvm-apps"));

    // The home directory is made on first start, 0700.
    for file in ["vmlinux", "w.img", "debian.ext4"] {
        std::fs::write(f.dir.path().join(file), [0u8; 4096]).unwrap();
    }
    let paths = VmPaths::new(&rt, "w");
    crate::vm::write_config(d.get("w").unwrap(), &paths).unwrap();
    let home = std::fs::metadata(f.dir.path().join("homes/w")).unwrap();
    assert!(home.is_dir());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&home.permissions()) & 0o777,
        0o700
    );
}

#[test]
fn apps_names_are_reserved() {
    let f = Fixture::new();
    let e = f
        .parse(
            "[[vm]]\nname = \"w\"\nmemory_mib = 256\nkernel = \"vmlinux\"\n\
             shares = [{ tag = \"qvm-home\", path = \"/srv\" }]\n\
             apps = { image = \"debian.ext4\" }\n",
        )
        .unwrap_err();
    assert!(e.to_string().contains("reserved for apps.home"), "{e}");
    let e = f
        .parse(
            "[[vm]]\nname = \"w\"\nmemory_mib = 256\nkernel = \"vmlinux\"\n\
             disks = [{ path = \"x.img\", id = \"qvm-apps\" }]\n\
             apps = { image = \"debian.ext4\" }\n",
        )
        .unwrap_err();
    assert!(e.to_string().contains("reserved for apps.image"), "{e}");
}
