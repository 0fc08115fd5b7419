//! From a validated config to a running VM, and back to an exit status.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use qvm_devices::legacy::{
    acpi_pm, i8042, pvpanic, serial, AcpiPm, LogCap, PvPanic, Serial, SerialInput, I8042,
};
use qvm_devices::virtio::block::{Block, BlockConfig};
use qvm_devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use qvm_devices::virtio::net::{Net, NetConfig, TapSource};
use qvm_devices::virtio::vhost_user::fs::{VhostUserFs, VhostUserFsConfig};
use qvm_devices::virtio::vsock::{Vsock, VsockConfig};
use qvm_devices::virtio::VirtioDevice;
use qvm_devices::{Bus, ExitSignal, GuestExit};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, acpi, layout, regs, Entry, EntryMode};
use crate::console::{ConsoleInput, RawTerminal, StopCause, StopWatcher};
use crate::control::{ControlChannel, Controller};
use crate::vcpu::{self, ExitCounters, PauseGate, VcpuShared};
use qvm_config::{ConsoleMode, VmConfig};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "cannot open /dev/kvm: {0}; load the kvm module and make sure this user may open /dev/kvm"
    )]
    OpenKvm(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0}, which qvm needs")]
    MissingCap(&'static str),
    #[error("[machine] vcpus = {got}: this host's KVM allows at most {max}; lower vcpus")]
    TooManyVcpus { got: u8, max: usize },
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Memory(u64, String),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("[console] path = {0:?}: cannot open it for writing: {1}")]
    ConsoleFile(std::path::PathBuf, std::io::Error),
    #[error(
        "[boot] cmdline with acpi=off needs {len} bytes once the {devices} virtio_mmio.device= \
         entries are added; Linux takes at most {max}: shorten it or drop acpi=off",
        max = qvm_config::MAX_CMDLINE_LEN - 1
    )]
    CmdlineWithDevices { len: usize, devices: usize },
    #[error("[[net]] #{0}: {1}")]
    Net(usize, String),
    #[error("[[fs]] #{0}: {1}")]
    Fs(usize, String),
    #[error("[vsock]: {0}")]
    Vsock(String),
    #[error("[wayland]: {0}")]
    Wayland(String),
    #[error("[[disk]] #{0}: {1}")]
    Disk(usize, String),
    #[error("device setup: {0}")]
    Device(String),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
}

impl VmError {
    /// Errors the user fixes in vm.toml exit with 2, like config errors.
    pub fn is_config_error(&self) -> bool {
        match self {
            VmError::TooManyVcpus { .. }
            | VmError::ConsoleFile(..)
            | VmError::Disk(..)
            | VmError::Vsock(..)
            | VmError::Wayland(..)
            | VmError::Net(..)
            | VmError::Fs(..)
            | VmError::CmdlineWithDevices { .. } => true,
            VmError::Boot(b) => !matches!(
                b,
                boot::BootError::WriteCmdline
                    | boot::BootError::WriteBootParams
                    | boot::BootError::WriteBootTables
                    | boot::BootError::Msrs
                    | boot::BootError::WriteAcpi
            ),
            _ => false,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// How a VM run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Guest(GuestExit),
    Signal(i32),
    /// Stopped through the API.
    Stopped,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub report_first_run: bool,
}

/// With `--report-boot-time`, prints CLOCK_MONOTONIC at a start-up phase to stderr.
fn phase(opts: &RunOptions, name: &str) {
    if opts.report_first_run {
        eprintln!(
            "qvm-vmm: phase {name} at monotonic_ns={}",
            vcpu::monotonic_ns()
        );
    }
}

struct Devices {
    pio: Bus,
    serial: Arc<Mutex<Serial>>,
    serial_input: Arc<SerialInput>,
    /// Written to press the ACPI power button (an irqfd on its GED's GSI).
    power_button: EventFd,
}

/// The size of the file `fd` is open on, if it is a regular file (a log a guest could grow).
fn regular_file_size(fd: BorrowedFd<'_>) -> Option<u64> {
    let f = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let m = f.metadata().ok()?;
    m.file_type().is_file().then_some(m.len())
}

/// The console's writer `w`: capped at `limit` bytes when it is a regular file holding `size`
/// bytes (a terminal or a pipe fills no disk).
fn capped(w: impl Write + Send + 'static, size: Option<u64>, limit: u64) -> serial::ConsoleOut {
    match size {
        Some(size) => Box::new(LogCap::new(w, size, limit)),
        None => Box::new(w),
    }
}

fn create_devices(vm: &VmFd, cfg: &VmConfig, exit: &Arc<ExitSignal>) -> Result<Devices, VmError> {
    let dev_err = |e: std::io::Error| VmError::Device(e.to_string());
    let limit = cfg.console.limit_bytes();
    let out: serial::ConsoleOut = match cfg.console.mode {
        ConsoleMode::Stdio => {
            let size = regular_file_size(std::io::stdout().as_fd());
            capped(std::io::stdout(), size, limit)
        }
        ConsoleMode::Off => Box::new(std::io::sink()),
        ConsoleMode::File => {
            let path = cfg.console.path.clone().unwrap_or_default();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| VmError::ConsoleFile(path, e))?;
            let size = regular_file_size(f.as_fd());
            capped(f, size, limit)
        }
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(dev_err)?;
    vm.register_irqfd(&irq, serial::COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let power_button = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(dev_err)?;
    vm.register_irqfd(&power_button, layout::POWER_BUTTON_GSI)
        .map_err(kvm_err("register power button irqfd"))?;
    let serial_input = SerialInput::new().map_err(dev_err)?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, serial_input.clone(), out)));

    let mut pio = Bus::new();
    let bus_err = |e: qvm_devices::BusError| VmError::Device(e.to_string());
    pio.insert(serial.clone(), serial::COM1_PORT, serial::COM1_PORT_LEN)
        .map_err(bus_err)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        i8042::I8042_PORT,
        i8042::I8042_PORT_LEN,
    )
    .map_err(bus_err)?;
    pio.insert(
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        acpi_pm::ACPI_PM_PORT,
        acpi_pm::ACPI_PM_PORT_LEN,
    )
    .map_err(bus_err)?;
    pio.insert(
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        pvpanic::PVPANIC_PORT,
        pvpanic::PVPANIC_PORT_LEN,
    )
    .map_err(bus_err)?;
    Ok(Devices {
        pio,
        serial,
        serial_input,
        power_button,
    })
}

/// The virtio devices of `cfg` in slot order: disks, network interfaces, vsock, virtio-fs
/// shares, then virtio-wl. Each comes with its name in metrics: `disk0` (or `disk:<id>`),
/// `net0`, `vsock`, `fs:<tag>`, `wayland`.
fn virtio_devices(cfg: &VmConfig, kvm: &Kvm, vm: &Arc<VmFd>) -> Result<Vec<NamedDevice>, VmError> {
    let mut devices: Vec<NamedDevice> = Vec::new();
    for (i, disk) in cfg.disks.iter().enumerate() {
        let block = Block::new(BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: disk.id.clone(),
            direct_io: disk.direct_io,
        })
        .map_err(|e| VmError::Disk(i + 1, e.to_string()))?;
        let name = match &disk.id {
            Some(id) => format!("disk:{id}"),
            None => format!("disk{i}"),
        };
        devices.push((name, Box::new(block)));
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        let tap = match (&n.tap, n.fd) {
            (Some(name), _) => TapSource::Name(name.clone()),
            (None, Some(fd)) => TapSource::Fd(fd),
            (None, None) => return Err(VmError::Net(i + 1, "no tap or fd".into())),
        };
        let net = Net::new(NetConfig {
            tap,
            mac: n.mac_bytes(),
        })
        .map_err(|e| VmError::Net(i + 1, e.to_string()))?;
        devices.push((format!("net{i}"), Box::new(net)));
    }
    if let Some(v) = &cfg.vsock {
        let vsock = Vsock::new(VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.socket.clone(),
        })
        .map_err(|e| VmError::Vsock(e.to_string()))?;
        devices.push(("vsock".to_string(), Box::new(vsock)));
    }
    for (i, f) in cfg.filesystems.iter().enumerate() {
        let fs = VhostUserFs::new(VhostUserFsConfig::new(f.socket.clone(), f.tag.clone()))
            .map_err(|e| VmError::Fs(i + 1, e.to_string()))?;
        devices.push((format!("fs:{}", f.tag), Box::new(fs)));
    }
    if let Some(w) = &cfg.wayland {
        devices.push(("wayland".to_string(), wayland_device(cfg, w, kvm, vm)?));
    }
    Ok(devices)
}

/// The virtio-wl device, its buffers mapped by KVM memory slots in a window above RAM.
fn wayland_device(
    cfg: &VmConfig,
    w: &qvm_config::WaylandConfig,
    kvm: &Kvm,
    vm: &Arc<VmFd>,
) -> Result<Box<dyn VirtioDevice>, VmError> {
    use crate::wl_mapper::{self, KvmMapper, FIRST_SLOT};
    let max_buffer_bytes = w.max_buffer_mib << 20;
    let (base, len) = wl_mapper::window(cfg.memory_bytes(), max_buffer_bytes);
    let bits = guest_phys_bits(kvm);
    if base + len > 1u64 << bits {
        return Err(VmError::Wayland(format!(
            "guest RAM plus a {} MiB buffer window ends at {:#x}, beyond this CPU's {bits}-bit \
             guest-physical address space; lower max_buffer_mib or memory_mib",
            len >> 20,
            base + len
        )));
    }
    let slots_end = u32::try_from(kvm.get_nr_memslots())
        .unwrap_or(u32::MAX)
        .min(FIRST_SLOT + w.max_vfds + 8);
    let mapper = Arc::new(KvmMapper::new(vm.clone(), base, len, slots_end));
    let wl = qvm_virtio_wl::VirtioWl::new(
        qvm_virtio_wl::WlConfig {
            socket: w.socket.clone(),
            named: w
                .named
                .iter()
                .map(|n| (n.name.clone(), n.socket.clone()))
                .collect(),
            max_buffer_bytes,
            max_vfds: w.max_vfds,
            policy: Some(qvm_virtio_wl::WlPolicy {
                name: w
                    .name
                    .clone()
                    .unwrap_or_else(|| qvm_config::DEFAULT_WL_VM_NAME.into()),
                allow_globals: w.allow_globals.clone(),
                clipboard: match w.clipboard {
                    qvm_config::WaylandClipboard::Gated => qvm_virtio_wl::Clipboard::Gated,
                    qvm_config::WaylandClipboard::Open => qvm_virtio_wl::Clipboard::Open,
                },
                paste: qvm_virtio_wl::PasteGate::default(),
            }),
        },
        mapper,
    )
    .map_err(|e| VmError::Wayland(e.to_string()))?;
    // `allow_paste` (API) reaches the device through this gate.
    crate::control::set_paste_gate(wl.paste_gate());
    Ok(Box::new(wl))
}

/// The guest's physical address width (CPUID 0x8000_0008 EAX[7:0]; 36 if KVM does not say).
fn guest_phys_bits(kvm: &Kvm) -> u32 {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0x8000_0008)
                .map(|e| e.eax & 0xff)
        })
        .filter(|&b| (32..=52).contains(&b))
        .unwrap_or(36)
}

/// Number of virtio devices `cfg` asks for (their slots are 0..n).
fn virtio_device_count(cfg: &VmConfig) -> usize {
    cfg.virtio_device_count()
}

/// Starts virtiofsd for every `[[fs]]` with a shared_dir; they stop when the result is dropped.
/// Starts virtiofsd for each `[[fs]]` with a `shared_dir`. Call before Landlock applies (the
/// daemons sandbox themselves, in their own namespaces, and must not inherit our ruleset).
pub fn start_virtiofsd(cfg: &VmConfig) -> Result<Vec<crate::virtiofsd::Virtiofsd>, VmError> {
    let mut started = Vec::new();
    for (i, fs) in cfg.filesystems.iter().enumerate() {
        if let Some(dir) = &fs.shared_dir {
            started.push(
                crate::virtiofsd::Virtiofsd::start(fs, dir)
                    .map_err(|e| VmError::Fs(i + 1, e.to_string()))?,
            );
        }
    }
    Ok(started)
}

/// Puts the virtio devices on virtio-mmio transports, wires their queue notifications to KVM
/// ioeventfds and their interrupts to irqfds, and returns the MMIO bus holding them. Slots
/// match what `acpi_config` and `guest_cmdline` announced.
fn create_virtio_devices(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
) -> Result<(Bus, DeviceMetricsList), VmError> {
    let mut bus = Bus::new();
    let mut metrics = Vec::new();
    for (i, (name, device)) in virtio_devices(cfg, kvm, vm)?.into_iter().enumerate() {
        let (addr, gsi) = layout::virtio_mmio_slot(i);
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| VmError::Device(e.to_string()))?;
        vm.register_irqfd(&irq, gsi)
            .map_err(kvm_err("register virtio irqfd"))?;
        let transport = MmioTransport::new(device, mem.clone(), irq)
            .map_err(|e| VmError::Device(e.to_string()))?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(addr + NOTIFY_REG_OFFSET),
                q as u32,
            )
            .map_err(kvm_err("register virtio ioeventfd"))?;
        }
        if let Some(m) = transport.metrics() {
            metrics.push((name, m));
        }
        bus.insert(
            Arc::new(Mutex::new(transport)),
            addr,
            layout::VIRTIO_MMIO_SIZE,
        )
        .map_err(|e| VmError::Device(e.to_string()))?;
    }
    Ok((bus, metrics))
}

/// A virtio device and its name in metrics.
type NamedDevice = (String, Box<dyn VirtioDevice>);

/// Named device counters, for the API's metrics.
type DeviceMetricsList = Vec<(String, Arc<dyn qvm_devices::virtio::DeviceMetrics>)>;

/// The command line the guest gets. virtio-mmio devices are announced in the ACPI DSDT, which
/// is the only way their interrupts reach a kernel running on our hardware-reduced ACPI (it sets
/// up no legacy ISA IRQs, so `virtio_mmio.device=...:5` would name an IRQ that does not exist).
/// A guest booted with `acpi=off` ignores the DSDT and uses the 8259 PIC, where GSI n is IRQ n:
/// for it we append `virtio_mmio.device=` entries instead (before any `--` that starts init's
/// arguments).
fn guest_cmdline(user: &str, virtio_devices: usize) -> Result<String, VmError> {
    if virtio_devices == 0 || !user.split_whitespace().any(|w| w == "acpi=off") {
        return Ok(user.to_string());
    }
    let devices: Vec<String> = (0..virtio_devices)
        .map(|i| {
            let (addr, gsi) = layout::virtio_mmio_slot(i);
            format!(
                "virtio_mmio.device={}K@{addr:#x}:{gsi}",
                layout::VIRTIO_MMIO_SIZE / 1024
            )
        })
        .collect();
    let devices = devices.join(" ");
    let full = match user.find(" -- ") {
        Some(at) => format!("{} {devices}{}", &user[..at], &user[at..]),
        None => format!("{} {devices}", user.trim_end()),
    };
    if full.len() >= qvm_config::MAX_CMDLINE_LEN {
        return Err(VmError::CmdlineWithDevices {
            len: full.len(),
            devices: virtio_devices,
        });
    }
    Ok(full)
}

fn acpi_config(vcpus: u8, virtio_devices: usize) -> acpi::AcpiConfig {
    acpi::AcpiConfig {
        num_cpus: vcpus,
        lapic_addr: layout::LAPIC_ADDR,
        ioapic_id: vcpus,
        ioapic_addr: layout::IOAPIC_ADDR,
        sleep_control_port: acpi_pm::SLEEP_CONTROL_PORT,
        sleep_status_port: acpi_pm::SLEEP_STATUS_PORT,
        reset_port: acpi_pm::RESET_PORT,
        reset_value: acpi_pm::RESET_VALUE,
        pvpanic_port: Some(pvpanic::PVPANIC_PORT as u16),
        power_button_irq: Some(layout::POWER_BUTTON_GSI),
        serial_ports: vec![acpi::SerialPort {
            port: serial::COM1_PORT as u16,
            irq: serial::COM1_IRQ,
        }],
        mmio_devices: (0..virtio_devices)
            .map(|i| {
                let (addr, irq) = layout::virtio_mmio_slot(i);
                acpi::MmioDevice {
                    addr,
                    len: layout::VIRTIO_MMIO_SIZE,
                    irq,
                }
            })
            .collect(),
    }
}

/// A memfd of `size` bytes for guest RAM, sealed against shrinking, growing and further
/// seals: it is shared with vhost-user backends (virtiofsd), and a backend that truncated it
/// would make every VMM access to the lost pages a SIGBUS.
pub fn guest_ram_memfd(size: u64) -> Result<std::fs::File, String> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"qvm-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(size)
        .map_err(|e| format!("sizing the memfd: {e}"))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on a memfd we own.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(format!(
            "sealing the memfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(f)
}

/// Guest RAM, registered with KVM. `shared`: backed by one memfd (mapped MAP_SHARED) so a
/// vhost-user backend such as virtiofsd can map it too; otherwise anonymous private memory.
fn create_memory(vm: &VmFd, mem_size: u64, shared: bool) -> Result<GuestMemoryMmap, VmError> {
    let mem_err = |e: String| VmError::Memory(mem_size >> 20, e);
    let file = if shared {
        // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
        Some(Arc::new(guest_ram_memfd(mem_size).map_err(mem_err)?))
    } else {
        None
    };
    let mut offset = 0u64;
    let ranges: Vec<(GuestAddress, usize, Option<vm_memory::FileOffset>)> =
        layout::ram_ranges(mem_size)
            .into_iter()
            .map(|(a, s)| {
                let fo = file
                    .as_ref()
                    .map(|f| vm_memory::FileOffset::from_arc(f.clone(), offset));
                offset += s;
                (GuestAddress(a), s as usize, fo)
            })
            .collect();
    let mem =
        GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| mem_err(e.to_string()))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VmError::Memory(mem_size >> 20, e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region stays mapped for the VM's lifetime (`mem` outlives every vCPU
        // thread: they are joined before run() returns and drops it).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(mem)
}

fn configure_vcpu(
    vm: &VmFd,
    kvm: &Kvm,
    id: u8,
    count: u8,
    entry: Entry,
) -> Result<kvm_ioctls::VcpuFd, VmError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(kvm_err("create vCPU"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    let cpuid = boot::cpuid::filter(&supported, id, count)
        .map_err(|e| VmError::Device(format!("CPUID table: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
    let msrs = regs::boot_msrs()?;
    let n = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    if n != msrs.as_slice().len() {
        return Err(VmError::Device(format!(
            "KVM accepted only {n} of {} boot MSRs",
            msrs.as_slice().len()
        )));
    }
    fd.set_fpu(&regs::boot_fpu()).map_err(kvm_err("set FPU"))?;
    let mut lapic = fd.get_lapic().map_err(kvm_err("get LAPIC"))?;
    regs::setup_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
    if id == 0 {
        let mut sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
        regs::setup_sregs(&mut sregs, entry.mode);
        fd.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
        fd.set_regs(&regs::boot_regs(entry.mode, entry.addr))
            .map_err(kvm_err("set regs"))?;
    }
    Ok(fd)
}

/// Builds the VM described by `cfg`, runs it until the guest stops or a signal arrives, and
/// tears it down with every thread joined.
/// `virtiofsd` are the backends [`start_virtiofsd`] started for it (before Landlock: they
/// must not inherit the VMM's ruleset), stopped when the VM stops.
pub fn run(
    cfg: &VmConfig,
    opts: &RunOptions,
    virtiofsd: Vec<crate::virtiofsd::Virtiofsd>,
) -> Result<RunOutcome, VmError> {
    run_with_control(cfg, opts, None, virtiofsd)
}

/// [`run`], also serving `control` (the API's pause/resume/stop/status/metrics) from the
/// event loop.
pub fn run_with_control(
    cfg: &VmConfig,
    opts: &RunOptions,
    control: Option<ControlChannel>,
    virtiofsd: Vec<crate::virtiofsd::Virtiofsd>,
) -> Result<RunOutcome, VmError> {
    let _virtiofsd = virtiofsd;
    phase(opts, "start");
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    let vcpus = cfg.vcpus();
    let max = kvm.get_max_vcpus();
    if usize::from(vcpus) > max {
        return Err(VmError::TooManyVcpus { got: vcpus, max });
    }

    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create VM"))?);
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("set identity map address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("create PIT"))?;

    let cmdline = guest_cmdline(&cfg.boot.cmdline, virtio_device_count(cfg))?;
    phase(opts, "vm-created");
    let mem = create_memory(&vm, cfg.memory_bytes(), !cfg.filesystems.is_empty())?;
    phase(opts, "memory-registered");
    let entry = boot::load(
        &mem,
        &boot::BootSpec {
            kernel: &cfg.boot.kernel,
            initrd: cfg.boot.initrd.as_deref(),
            cmdline: &cmdline,
            mem_size: cfg.memory_bytes(),
            acpi: acpi_config(vcpus, virtio_device_count(cfg)),
        },
    )?;
    debug_assert!(matches!(entry.mode, EntryMode::Linux64 | EntryMode::Pvh));
    phase(opts, "kernel-loaded");

    let exit = Arc::new(ExitSignal::new().map_err(|e| VmError::Device(e.to_string()))?);
    let devices = create_devices(&vm, cfg, &exit)?;
    let (mmio, device_metrics) = create_virtio_devices(&kvm, &vm, &mem, cfg)?;

    let mut fds = Vec::with_capacity(usize::from(vcpus));
    for id in 0..vcpus {
        fds.push(configure_vcpu(&vm, &kvm, id, vcpus, entry)?);
    }

    phase(opts, "vcpus-configured");
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
    let watcher = Arc::new(Mutex::new(
        StopWatcher::new(exit.clone()).map_err(|e| VmError::EventLoop(e.to_string()))?,
    ));
    em.add_subscriber(watcher.clone());
    let _raw_terminal = if cfg.console.mode == ConsoleMode::Stdio {
        em.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            libc::STDIN_FILENO,
            devices.serial.clone(),
            devices.serial_input.clone(),
        ))));
        RawTerminal::enable(libc::STDIN_FILENO)
    } else {
        None
    };

    vcpu::install_kick_handler().map_err(VmError::Thread)?;
    let shared = Arc::new(VcpuShared {
        pio: Arc::new(devices.pio),
        mmio: Arc::new(mmio),
        exit: exit.clone(),
        stop: AtomicBool::new(false),
        report_first_run: opts.report_first_run,
        gate: PauseGate::default(),
        exits: ExitCounters::default(),
    });
    let mut handles = Vec::with_capacity(fds.len());
    let mut spawn_err = None;
    for (id, fd) in fds.into_iter().enumerate() {
        match vcpu::spawn(id as u8, fd, shared.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_err = Some(e);
                break;
            }
        }
    }

    let controller = control.map(|chan| {
        use std::os::unix::thread::JoinHandleExt;
        let threads = handles.iter().map(|h| h.as_pthread_t()).collect();
        let c = Arc::new(Mutex::new(Controller::new(
            chan,
            vm.clone(),
            shared.clone(),
            threads,
            device_metrics,
            devices.power_button,
        )));
        em.add_subscriber(c.clone());
        c
    });
    // Everything is set up: from here the main thread only runs the event loop and stops.
    crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Main);
    let loop_result = if spawn_err.is_none() {
        loop {
            if let Err(e) = em.run() {
                break Err(VmError::EventLoop(format!("{e:?}")));
            }
            if let Some(cause) = qvm_devices::bus::lock(&watcher).cause {
                break Ok(cause);
            }
            if let Some(c) = &controller {
                if qvm_devices::bus::lock(c).stop_requested {
                    break Ok(StopCause::Api);
                }
            }
        }
    } else {
        Ok(StopCause::Guest)
    };

    // Stop before the controller's drop lifts a pause, so a paused guest never runs again.
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Release);
    drop(controller);
    drop(em);
    let stuck = vcpu::stop_all(&shared, handles, Duration::from_secs(2));
    if !stuck.is_empty() {
        eprintln!("qvm-vmm: vCPU threads {stuck:?} did not stop; exiting anyway");
    }
    if let Some(e) = spawn_err {
        return Err(VmError::Thread(e));
    }
    drop(mem);
    match loop_result? {
        StopCause::Guest => Ok(RunOutcome::Guest(
            exit.reason().unwrap_or(GuestExit::VcpuFault),
        )),
        StopCause::Signal(s) => Ok(RunOutcome::Signal(s)),
        StopCause::Api => Ok(RunOutcome::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a compromised vhost-user backend would do with the guest RAM it maps: truncate
    /// the memfd (every VMM access to the lost pages would then be a SIGBUS), or drop the seals.
    #[test]
    fn guest_ram_cannot_be_truncated_by_whoever_it_is_shared_with() {
        let f = guest_ram_memfd(4 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 << 20);
        // The backend gets the fd itself (SCM_RIGHTS): the same open file.
        let theirs = f.try_clone().unwrap();
        let e = theirs.set_len(4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        assert!(theirs.set_len(8 << 20).is_err());
        // SAFETY: fcntl(F_GET_SEALS) on a memfd we own.
        let seals = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL
        );
        // The pages stay writable: guest RAM, not a sealed buffer.
        use std::os::unix::fs::FileExt;
        theirs.write_all_at(b"ok", 4096).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4 << 20);
    }

    #[test]
    fn cmdline_is_untouched_with_acpi() {
        let c = "console=ttyS0 root=/dev/vda";
        assert_eq!(guest_cmdline(c, 3).unwrap(), c);
    }

    #[test]
    fn acpi_off_gets_virtio_mmio_devices_before_init_args() {
        let c = guest_cmdline("console=ttyS0 acpi=off -- init-arg", 2).unwrap();
        assert_eq!(
            c,
            "console=ttyS0 acpi=off virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 -- init-arg"
        );
        assert_eq!(guest_cmdline("acpi=off", 0).unwrap(), "acpi=off");
    }

    #[test]
    fn acpi_off_cmdline_that_would_overflow_is_a_config_error() {
        let long = format!("acpi=off {}", "x".repeat(2000));
        let e = guest_cmdline(&long, 16).unwrap_err();
        assert!(e.is_config_error());
        assert!(e.to_string().contains("drop acpi=off"), "{e}");
    }

    /// qvm-config keeps its own copy of the Wayland VM-name rule (so it needs no device crate);
    /// the device's rule and the config's must accept the same names.
    #[test]
    fn config_and_device_agree_on_wayland_vm_names() {
        let e32 = "\u{e9}".repeat(32);
        let e33 = "\u{e9}".repeat(33);
        let x32 = "x".repeat(32);
        let x33 = "x".repeat(33);
        for name in [
            "",
            "vm",
            "work vm",
            "a]b",
            "]",
            "[a",
            "a\nb",
            "tab\t",
            "\u{7f}",
            "\u{85}",
            &x32,
            &x33,
            &e32,
            &e33,
            "\u{1f600}",
        ] {
            assert_eq!(
                qvm_config::valid_wl_vm_name(name),
                qvm_virtio_wl::WlPolicy::valid_name(name),
                "{name:?}"
            );
        }
    }
}
