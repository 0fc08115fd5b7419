//! The host side: what the compositor sends on a context (bytes, through the context's
//! policy, and fds, each adopted as a new host vfd) and what the host ends of pipes read or
//! report, queued for the guest as VFD_NEW, VFD_RECV and VFD_HUP.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::{WlState, MAX_SNAPSHOT_BYTES};
use crate::policy::Violation;
use crate::protocol::*;
use crate::sys;
use crate::vfd::{PipeDir, Vfd, VfdKind};

impl WlState {
    /// Handles epoll readiness of vfd `id`: at most one read, whose result is queued.
    pub fn handle_vfd_event(&mut self, id: u32) {
        let mut buf = [0u8; IN_BUFFER_SIZE];
        let outcome = match self.vfds.get(&id) {
            None => return,
            Some(vfd) if vfd.hup => return,
            Some(vfd) => read_vfd(vfd, &mut buf),
        };
        match outcome {
            Outcome::Nothing => {}
            Outcome::Hup => self.hang_up(id),
            Outcome::Failed(e) => {
                self.log(format_args!("vfd {id:#x}: read failed, hanging up: {e}"));
                self.hang_up(id);
            }
            Outcome::Truncated => {
                // More than 28 fds: the Wayland stream cannot be kept consistent. The fds
                // that did arrive were dropped (closed) in read_vfd.
                self.log(format_args!(
                    "ctx {id:#x}: the compositor sent more than {MAX_SEND_VFDS} fds in one message; hanging up"
                ));
                self.count(&self.metrics.errors, 1);
                self.hang_up(id);
            }
            Outcome::Data { len, fds } => {
                self.count(&self.metrics.bytes_received, len as u64);
                self.count(&self.metrics.fds_received, fds.len() as u64);
                let filtered = match self.policies.get_mut(&id) {
                    None => None,
                    Some(pol) => {
                        let mut out = Vec::with_capacity(len);
                        match pol.compositor_to_guest(&buf[..len], &mut out, &self.metrics) {
                            Ok(()) => Some(out),
                            Err(v) => {
                                drop(fds);
                                self.violation(id, v);
                                self.update_gauges();
                                return;
                            }
                        }
                    }
                };
                let mut ids = Vec::with_capacity(fds.len());
                for fd in fds {
                    if let Some(new) = self.adopt(id, fd) {
                        ids.push(new);
                    }
                }
                match filtered {
                    None => self.push(id, None, encode_recv(id, &ids, &buf[..len])),
                    Some(out) => self.push_filtered(id, ids, &out),
                }
            }
        }
        self.update_gauges();
    }

    /// Queues what the policy let through: fds go with the first whole bytes (held if there
    /// are none yet), bytes in VFD_RECVs that fit an in-queue buffer.
    fn push_filtered(&mut self, id: u32, ids: Vec<u32>, out: &[u8]) {
        let Some(pol) = self.policies.get_mut(&id) else {
            return;
        };
        pol.held_ids.extend(ids);
        if out.is_empty() {
            if pol.held_ids.len() > MAX_SEND_VFDS {
                self.violation(id, Violation::Overflow("fds waiting for a partial message"));
            }
            return;
        }
        let mut ids = std::mem::take(&mut pol.held_ids);
        if ids.len() > MAX_SEND_VFDS {
            self.violation(id, Violation::Overflow("fds waiting for a partial message"));
            return;
        }
        let mut rest = out;
        while !rest.is_empty() {
            let room = IN_BUFFER_SIZE - SEND_HDR_SIZE - 4 * ids.len();
            let (chunk, more) = rest.split_at(rest.len().min(room));
            self.push(id, None, encode_recv(id, &ids, chunk));
            ids.clear();
            rest = more;
        }
    }

    /// Turns an fd the compositor sent on ctx `ctx` into a host vfd and queues its VFD_NEW;
    /// None (the fd closed) if it is of no use to the guest or over a limit.
    fn adopt(&mut self, ctx: u32, fd: OwnedFd) -> Option<u32> {
        if self.room_for_vfd().is_err() {
            let max = self.cfg.max_vfds;
            self.log(format_args!(
                "ctx {ctx:#x}: vfd limit ({max}) reached; dropping an fd from the compositor"
            ));
            self.count(&self.metrics.errors, 1);
            return None;
        }
        let kind = if let Some(size) = sys::seekable_size(fd.as_fd()) {
            let Some(rounded) = self.room_for_bytes(size) else {
                let max = self.cfg.max_buffer_bytes;
                self.log(format_args!(
                    "ctx {ctx:#x}: dropping a {size}-byte shm fd from the compositor (empty, or over the {max}-byte limit)"
                ));
                self.count(&self.metrics.errors, 1);
                return None;
            };
            // A write-protected file (a keymap, say) cannot back a writable guest mapping:
            // the guest gets a private copy of it (small ones only: such files are data
            // handed over once, not buffers).
            let fd = if sys::write_protected(fd.as_fd()) {
                if size > MAX_SNAPSHOT_BYTES {
                    self.log(format_args!(
                        "ctx {ctx:#x}: dropping a read-only {size}-byte shm fd from the compositor (copies are limited to {MAX_SNAPSHOT_BYTES} bytes)"
                    ));
                    self.count(&self.metrics.errors, 1);
                    return None;
                }
                match sys::snapshot_memfd(fd.as_fd(), size, rounded) {
                    Ok(copy) => copy,
                    Err(e) => {
                        self.log(format_args!(
                            "ctx {ctx:#x}: dropping a read-only shm fd from the compositor: copying it failed: {e}"
                        ));
                        self.count(&self.metrics.errors, 1);
                        return None;
                    }
                }
            } else {
                fd
            };
            let gpa = self.map(&fd, rounded)?;
            VfdKind::Shm {
                fd,
                gpa,
                size: rounded,
            }
        } else if sys::is_fifo(fd.as_fd()) {
            let dir = match sys::access_mode(fd.as_fd()) {
                Ok(libc::O_RDONLY) => PipeDir::Read,
                Ok(libc::O_WRONLY) => PipeDir::Write,
                _ => {
                    self.log(format_args!("ctx {ctx:#x}: dropping a read-write pipe fd"));
                    return None;
                }
            };
            // We are the only user of this end now (the compositor closes its copy).
            if let Err(e) = sys::set_nonblocking(fd.as_fd()) {
                self.log(format_args!("ctx {ctx:#x}: dropping a pipe fd: {e}"));
                return None;
            }
            VfdKind::Pipe {
                local: fd,
                remote: None,
                dir,
            }
        } else {
            self.log(format_args!(
                "ctx {ctx:#x}: dropping an fd that is neither shared memory nor a pipe"
            ));
            return None;
        };
        let id = self.alloc_host_id();
        let vfd = Vfd::new(kind);
        let (pfn, size) = vfd
            .shm()
            .map_or((0, 0), |(gpa, size)| (self.pfn(gpa), size as u32));
        let msg = VfdNew {
            id,
            flags: vfd.flags(self.trans_flags),
            pfn,
            size,
        };
        self.insert(id, vfd);
        self.push(ctx, Some(id), msg.encode(CMD_VFD_NEW));
        Some(id)
    }
}

/// What reading a vfd gave.
enum Outcome {
    Nothing,
    Hup,
    Failed(io::Error),
    Truncated,
    Data { len: usize, fds: Vec<OwnedFd> },
}

/// One read of a watched vfd into `buf` (no state change: the caller acts on the outcome).
fn read_vfd(vfd: &Vfd, buf: &mut [u8]) -> Outcome {
    match &vfd.kind {
        VfdKind::Ctx { sock } => match sys::recv_with_fds(sock.as_fd(), &mut buf[..MAX_RECV_BYTES])
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Nothing,
            Err(e) => Outcome::Failed(e),
            Ok(r) if r.len == 0 && r.fds.is_empty() => Outcome::Hup,
            Ok(r) if r.truncated => Outcome::Truncated,
            Ok(r) => Outcome::Data {
                len: r.len,
                fds: r.fds,
            },
        },
        VfdKind::Pipe {
            local,
            dir: PipeDir::Read,
            ..
        } => match sys::read_some(local.as_fd(), &mut buf[..MAX_PIPE_READ]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Nothing,
            Err(e) => Outcome::Failed(e),
            Ok(0) => Outcome::Hup,
            Ok(len) => Outcome::Data {
                len,
                fds: Vec::new(),
            },
        },
        // Only error/hang-up is watched; check it is real (the event may be stale).
        VfdKind::Pipe {
            local,
            dir: PipeDir::Write,
            ..
        } => {
            if sys::hung_up(local.as_fd()) {
                Outcome::Hup
            } else {
                Outcome::Nothing
            }
        }
        VfdKind::Shm { .. } => Outcome::Nothing,
    }
}
