//! The out queue: each chain the guest posts is one request (NEW, CLOSE, SEND, NEW_CTX,
//! NEW_CTX_NAMED, NEW_PIPE), executed against the vfd table and answered in its writable
//! descriptors.

use std::os::fd::AsFd;
use std::path::Path;

use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::{WlState, CONNECT_PATIENCE};
use crate::chain::{read_out_chain, scatter};
use crate::policy::{CtxPolicy, Violation};
use crate::protocol::*;
use crate::sys;
use crate::vfd::{PipeDir, Vfd, VfdKind};

impl WlState {
    /// Serves every available out-queue chain; true if any was used.
    pub fn process_out(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let out = read_out_chain(mem, chain);
            let resp = match out.request {
                Ok(req) => self.execute(&req),
                Err(e) => {
                    self.count(&self.metrics.malformed, 1);
                    self.count(&self.metrics.errors, 1);
                    self.log(format_args!("malformed out-queue chain: {e}"));
                    Response::ERR
                }
            };
            // No writable descriptor: the chain is consumed with length 0.
            let len = scatter(mem, &out.writable, &resp.encode());
            if let Err(e) = q.add_used(mem, head, len) {
                self.log(format_args!("cannot return out-queue chain {head}: {e}"));
            }
            used = true;
        }
        used
    }

    /// Executes one request (its bytes gathered from the chain) and says what to answer.
    pub fn execute(&mut self, req: &[u8]) -> Response {
        self.count(&self.metrics.requests, 1);
        let resp = match parse_request(req, self.send_fences) {
            Ok(r) => self.dispatch(r),
            Err(e) => {
                self.log(format_args!("bad request: {e}"));
                Response::Code(e.response())
            }
        };
        if resp.is_error() {
            self.count(&self.metrics.errors, 1);
        }
        self.update_gauges();
        resp
    }

    fn dispatch(&mut self, req: Request<'_>) -> Response {
        match req {
            Request::New { id, flags, size } => self.new_alloc(id, flags, size),
            Request::Close { id } => self.close(id),
            Request::Send {
                id, entries, data, ..
            } => self.send(id, &entries, data),
            Request::NewCtx { id } => {
                let path = self.cfg.socket.clone();
                self.new_ctx(id, path.as_deref())
            }
            Request::NewCtxNamed { id, name } => {
                // "" is the default socket (as crosvm); otherwise a configured name.
                let path = if name.is_empty() {
                    self.cfg.socket.clone()
                } else {
                    self.cfg
                        .named
                        .iter()
                        .find(|(n, _)| n.as_bytes() == name)
                        .map(|(_, p)| p.clone())
                };
                if path.is_none() {
                    let shown = String::from_utf8_lossy(name).into_owned();
                    if let Err(r) = self.check_new_id(id) {
                        return r;
                    }
                    self.log(format_args!("NEW_CTX_NAMED: no socket named {shown:?}"));
                    return Response::ERR;
                }
                self.new_ctx(id, path.as_deref())
            }
            Request::NewPipe { id, flags } => self.new_pipe(id, flags),
            Request::Unsupported(ty) => {
                self.log(format_args!(
                    "unsupported command {ty:#x} (no dmabuf support)"
                ));
                Response::INVALID_CMD
            }
            Request::Unknown(ty) => {
                self.log(format_args!("unknown command {ty:#x}"));
                Response::INVALID_CMD
            }
        }
    }

    fn new_alloc(&mut self, id: u32, flags: u32, size: u32) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        let allowed = if self.trans_flags {
            0
        } else {
            VFD_WRITE | VFD_MAP
        };
        if flags & !allowed != 0 {
            return Response::INVALID_FLAGS;
        }
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let Some(rounded) = self.room_for_bytes(u64::from(size)) else {
            return Response::OUT_OF_MEMORY;
        };
        let fd = match sys::sealed_memfd(rounded) {
            Ok(fd) => fd,
            Err(e) => {
                self.log(format_args!("cannot create a {rounded}-byte memfd: {e}"));
                return Response::OUT_OF_MEMORY;
            }
        };
        let Some(gpa) = self.map(&fd, rounded) else {
            return Response::OUT_OF_MEMORY;
        };
        self.insert(
            id,
            Vfd::new(VfdKind::Shm {
                fd,
                gpa,
                size: rounded,
            }),
        );
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: self.pfn(gpa),
            size: rounded as u32,
        })
    }

    fn new_ctx(&mut self, id: u32, path: Option<&Path>) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let Some(path) = path else {
            self.log(format_args!("NEW_CTX: no compositor socket is configured"));
            return Response::ERR;
        };
        let sock = match sys::connect_unix(path, CONNECT_PATIENCE) {
            Ok(s) => s,
            Err(e) => {
                self.log(format_args!("cannot connect to {}: {e}", path.display()));
                return Response::ERR;
            }
        };
        let vfd = Vfd::new(VfdKind::Ctx { sock });
        let flags = vfd.flags(self.trans_flags);
        self.insert(id, vfd);
        if let Some(r) = &self.rules {
            self.policies.insert(id, CtxPolicy::new(r.clone()));
        }
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: 0,
            size: 0,
        })
    }

    fn new_pipe(&mut self, id: u32, flags: u32) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        let dir = match flags {
            VFD_READ => PipeDir::Read,
            VFD_WRITE => PipeDir::Write,
            _ => return Response::INVALID_FLAGS,
        };
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let (r, w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                self.log(format_args!("cannot create a pipe: {e}"));
                return Response::ERR;
            }
        };
        let (local, remote) = match dir {
            PipeDir::Read => (r, w),
            PipeDir::Write => (w, r),
        };
        // Only our end is non-blocking; the compositor's end keeps its default.
        if let Err(e) = sys::set_nonblocking(local.as_fd()) {
            self.log(format_args!("cannot make a pipe non-blocking: {e}"));
            return Response::ERR;
        }
        self.insert(
            id,
            Vfd::new(VfdKind::Pipe {
                local,
                remote: Some(remote),
                dir,
            }),
        );
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: 0,
            size: 0,
        })
    }

    fn close(&mut self, id: u32) -> Response {
        if !self.vfds.contains_key(&id) {
            return Response::INVALID_ID;
        }
        // Messages about it go too; host vfds they would have announced are closed.
        let mut orphans = Vec::new();
        self.pending.retain(|m| {
            if m.about == id || m.announces == Some(id) {
                orphans.extend(m.announces.filter(|&a| a != id));
                false
            } else {
                true
            }
        });
        self.remove_vfd(id);
        for o in orphans {
            self.remove_vfd(o);
        }
        Response::OK
    }

    fn send(&mut self, id: u32, entries: &[SendEntry], data: &[u8]) -> Response {
        // Resolve the listed vfds to the fds that travel.
        let mut fds = Vec::with_capacity(entries.len());
        for e in entries {
            if e.kind != SEND_KIND_LOCAL {
                // virtgpu resources and fences: there is no virtio-gpu here.
                return Response::INVALID_TYPE;
            }
            let Some(vfd) = u32::try_from(e.id).ok().and_then(|i| self.vfds.get(&i)) else {
                return Response::INVALID_ID;
            };
            let Some(fd) = vfd.send_fd() else {
                return Response::INVALID_TYPE;
            };
            fds.push(fd);
        }
        let Some(target) = self.vfds.get(&id) else {
            return Response::INVALID_ID;
        };
        let result = match &target.kind {
            VfdKind::Ctx { sock } => {
                if data.is_empty() && !fds.is_empty() {
                    // fds travel with a byte on a stream socket.
                    return Response::ERR;
                }
                match self.policies.get_mut(&id) {
                    None => {
                        sys::send_all(sock.as_fd(), data, &fds, self.send_timeout, self.stop_fd)
                    }
                    Some(pol) => {
                        let mut out = Vec::with_capacity(data.len() + 64);
                        let r = pol.guest_to_compositor(data, &mut out, &self.metrics);
                        let r = r.and_then(|()| {
                            if pol.held_fds.len() + fds.len() > MAX_SEND_VFDS {
                                Err(Violation::Overflow("fds waiting for a partial message"))
                            } else {
                                Ok(())
                            }
                        });
                        if let Err(v) = r {
                            drop(fds);
                            self.violation(id, v);
                            return Response::ERR;
                        }
                        if out.is_empty() {
                            // Only part of a message: its fds wait for its bytes (they may
                            // arrive before the bytes, never after).
                            let mut held = Vec::with_capacity(fds.len());
                            for fd in &fds {
                                match fd.try_clone_to_owned() {
                                    Ok(f) => held.push(f),
                                    Err(e) => {
                                        self.log(format_args!("cannot keep an fd: {e}"));
                                        return Response::ERR;
                                    }
                                }
                            }
                            if let Some(pol) = self.policies.get_mut(&id) {
                                pol.held_fds.extend(held);
                            }
                            Ok(())
                        } else {
                            let held = std::mem::take(&mut pol.held_fds);
                            let all: Vec<_> = held
                                .iter()
                                .map(|f| f.as_fd())
                                .chain(fds.iter().copied())
                                .collect();
                            sys::send_all(sock.as_fd(), &out, &all, self.send_timeout, self.stop_fd)
                        }
                    }
                }
            }
            VfdKind::Pipe {
                local,
                dir: PipeDir::Write,
                ..
            } => {
                if !fds.is_empty() {
                    return Response::INVALID_TYPE;
                }
                sys::write_all(local.as_fd(), data, self.send_timeout, self.stop_fd)
            }
            _ => return Response::INVALID_TYPE,
        };
        let nfds = fds.len() as u64;
        drop(fds);
        if let Err(e) = result {
            self.log(format_args!("VFD_SEND to {id:#x} failed: {e}"));
            return Response::ERR;
        }
        self.count(&self.metrics.bytes_sent, data.len() as u64);
        self.count(&self.metrics.fds_sent, nfds);
        // The compositor has its own copy of each sent pipe end now: close ours, so that
        // EOF and hang-up reach the guest's end.
        for e in entries {
            let sent = u32::try_from(e.id).ok().and_then(|i| self.vfds.get_mut(&i));
            if let Some(Vfd {
                kind: VfdKind::Pipe { remote, .. },
                ..
            }) = sent
            {
                *remote = None;
            }
        }
        Response::OK
    }
}
