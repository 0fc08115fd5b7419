//! Host-side CPU cost of our virtio-wl device per committed frame, with no guest: the same
//! `qvm-wl-demo` client code the guest runs, whose /dev/wl0 is replaced by the device's
//! protocol engine (`WlState`) in this process, talking to a real compositor. Buffers are the
//! device's own memfds (the client maps a dup of each, as the guest maps the KVM slot), so
//! the frame path is exactly the device's: VFD_SEND of the frame's requests, the compositor's
//! events read back as VFD_RECV messages, the policy's tracking both ways.
//!
//! Run it under `valgrind --tool=callgrind --toggle-collect='qvm_virtio_wl::state::*'`, so
//! only the device's instructions count (not the client drawing), with two frame counts: the
//! difference divided by the difference in frames is the device's cost of one frame.
//! `qvm-bench` does this at 1 MiB and 31.6 MiB frames.
//!
//! Usage: WAYLAND_DISPLAY=... qvm-wl-cost <width> <height> <frames>

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::Arc;

use qvm_virtio_wl::protocol::{
    CMD_VFD_HUP, CMD_VFD_NEW, CMD_VFD_NEW_CTX, CMD_VFD_RECV, CMD_VFD_SEND, F_TRANS_FLAGS,
    F_USE_SHMEM, RESP_OK, RESP_VFD_NEW,
};
use qvm_virtio_wl::state::WlState;
use qvm_virtio_wl::vfd::VfdKind;
use qvm_virtio_wl::{FakeMapper, WlConfig, WlMetrics, WlPolicy};
use qvm_wl_client::demo::{self, Options};
use qvm_wl_client::transport::{Alloc, PipeEnds, Transport, MAX_FDS};

const CTX: u32 = 1;

fn le(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// A 64-byte `virtio_wl_ctrl_vfd_new` request.
fn vfd_new(cmd: u32, id: u32, size: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(64);
    le(&mut r, cmd);
    le(&mut r, 0);
    le(&mut r, id);
    le(&mut r, 0);
    r.extend_from_slice(&0u64.to_le_bytes());
    le(&mut r, size);
    r.resize(64, 0);
    r
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the state keeps open; the result is checked.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// /dev/wl0 for the demo client, served by the device's engine in this process.
struct DeviceTransport {
    st: WlState,
    next_id: u32,
    /// The client's fd for an allocation (a dup of the memfd) -> its vfd id.
    ids: HashMap<RawFd, u32>,
}

impl DeviceTransport {
    fn new(socket: std::path::PathBuf) -> io::Result<Self> {
        let cfg = WlConfig {
            socket: Some(socket),
            named: Vec::new(),
            max_buffer_bytes: 1 << 30,
            max_vfds: 64,
            policy: Some(WlPolicy::new("bench")),
        };
        let mapper = Arc::new(FakeMapper::new(1 << 32, 2 << 30));
        let mut st = WlState::new(
            Arc::new(cfg),
            mapper,
            Arc::new(WlMetrics::default()),
            F_TRANS_FLAGS | F_USE_SHMEM,
        )?;
        let resp = st.execute(&vfd_new(CMD_VFD_NEW_CTX, CTX, 0)).encode();
        if u32_at(&resp, 0) != Some(RESP_VFD_NEW) {
            return Err(io::Error::other(format!(
                "NEW_CTX answered {:#x}",
                u32_at(&resp, 0).unwrap_or(0)
            )));
        }
        Ok(DeviceTransport {
            st,
            next_id: CTX + 1,
            ids: HashMap::new(),
        })
    }

    fn vfd_fd(&self, id: u32) -> io::Result<OwnedFd> {
        let fd = match self.st.vfd(id).map(|v| &v.kind) {
            Some(VfdKind::Shm { fd, .. }) => fd.as_raw_fd(),
            Some(VfdKind::Pipe { local, .. }) => local.as_raw_fd(),
            _ => {
                return Err(io::Error::other(format!(
                    "vfd {id:#x} has no fd to hand over"
                )))
            }
        };
        dup(fd)
    }
}

impl Transport for DeviceTransport {
    fn name(&self) -> &'static str {
        "virtio-wl engine (in process)"
    }

    fn send(&mut self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut req = Vec::with_capacity(16 + fds.len() * 4 + data.len());
        le(&mut req, CMD_VFD_SEND);
        le(&mut req, 0);
        le(&mut req, CTX);
        le(&mut req, fds.len() as u32);
        for fd in fds {
            let id = self
                .ids
                .get(fd)
                .ok_or_else(|| io::Error::other("only allocations can be sent"))?;
            le(&mut req, *id);
        }
        req.extend_from_slice(data);
        let resp = self.st.execute(&req).encode();
        match u32_at(&resp, 0) {
            Some(RESP_OK) => Ok(()),
            r => Err(io::Error::other(format!("VFD_SEND answered {r:#x?}"))),
        }
    }

    fn recv(&mut self, data: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> io::Result<bool> {
        self.st.handle_vfd_event(CTX);
        while let Some(msg) = self.st.take_pending() {
            match u32_at(&msg, 0) {
                Some(CMD_VFD_RECV) => {
                    let count = u32_at(&msg, 12).unwrap_or(0) as usize;
                    let start = 16 + count.min(MAX_FDS) * 4;
                    for i in 0..count.min(MAX_FDS) {
                        if let Some(id) = u32_at(&msg, 16 + i * 4) {
                            fds.push_back(self.vfd_fd(id)?);
                        }
                    }
                    data.extend_from_slice(msg.get(start..).unwrap_or_default());
                }
                Some(CMD_VFD_HUP) => return Ok(false),
                _ => {} // VFD_NEW: the RECV that follows lists the id.
            }
        }
        Ok(true)
    }

    fn poll_fd(&self) -> RawFd {
        match self.st.vfd(CTX).map(|v| &v.kind) {
            Some(VfdKind::Ctx { sock }) => sock.as_fd().as_raw_fd(),
            _ => -1,
        }
    }

    fn alloc(&mut self, size: usize) -> io::Result<Alloc> {
        let id = self.next_id;
        self.next_id += 1;
        let size = u32::try_from(size).map_err(io::Error::other)?;
        let resp = self.st.execute(&vfd_new(CMD_VFD_NEW, id, size)).encode();
        if u32_at(&resp, 0) != Some(RESP_VFD_NEW) {
            return Err(io::Error::other(format!(
                "VFD_NEW answered {:#x}",
                u32_at(&resp, 0).unwrap_or(0)
            )));
        }
        let len = u32_at(&resp, 24).unwrap_or(size) as usize;
        let fd = self.vfd_fd(id)?;
        let raw = fd.as_raw_fd();
        let a = Alloc::map(fd, len)?;
        self.ids.insert(raw, id);
        Ok(a)
    }

    fn pipe_read(&mut self) -> io::Result<PipeEnds> {
        Err(io::Error::other("pipes are not part of the frame path"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(w), Some(h), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: WAYLAND_DISPLAY=... qvm-wl-cost <width> <height> <frames>");
        return ExitCode::from(2);
    };
    let socket = match qvm_wl_client::transport::wayland_socket_path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qvm-wl-cost: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match Options::parse(
        ["--width", w, "--height", h, "--frames", n]
            .iter()
            .map(|s| s.to_string()),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qvm-wl-cost: {e}");
            return ExitCode::from(2);
        }
    };
    let t = match DeviceTransport::new(socket) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("qvm-wl-cost: {e}");
            return ExitCode::FAILURE;
        }
    };
    match demo::run_with(Box::new(t), &opts) {
        Ok(r) => {
            println!("frames={} secs={:.3}", r.frames, r.secs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qvm-wl-cost: {e}");
            ExitCode::FAILURE
        }
    }
}
