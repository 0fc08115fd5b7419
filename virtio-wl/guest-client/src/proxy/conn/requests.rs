//! Client -> host: each request's ids translated to the host's, new objects given host ids,
//! and the requests that carry or imply memory and fds (pools, buffers, surface commits,
//! clipboard receives) handled on the way.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use super::decode::{decode, header, put_u32, Wire};
use super::fds::{dup_fd, is_virtwl_vfd, spawn_copy};
use super::{
    client_err, Conn, Obj, Outbox, ProxyError, SERVER_ID_START, UPSTREAM_CHUNK, WARMUP_COMMITS,
};
use crate::proxy::shm::{self, Buffer, ClientMap, Pool, Rect, SurfaceDamage};
use crate::transport::MAX_FDS;

impl Conn<'_> {
    pub(super) fn pump_requests(&mut self) -> Result<(), ProxyError> {
        let mut out = Outbox::default();
        let mut off = 0;
        loop {
            let rest = &self.cin[off..];
            let Some((obj, op, size)) = header(rest).map_err(ProxyError::Client)? else {
                break;
            };
            let msg = rest[..size].to_vec();
            if !self.request(obj, op, msg, &mut out)? {
                break; // its fds have not arrived yet
            }
            off += size;
            self.stats.requests += 1;
        }
        self.cin.drain(..off);
        Ok(out.flush(self.up.as_mut())?)
    }

    /// Queues a message for upstream, flushing first if it would not fit in the chunk.
    fn queue_up(
        &mut self,
        out: &mut Outbox,
        msg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), ProxyError> {
        if out.bytes.len() + msg.len() > UPSTREAM_CHUNK || out.fds.len() + fds.len() > MAX_FDS {
            out.flush(self.up.as_mut())?;
        }
        out.bytes.extend_from_slice(msg);
        out.fds.extend(fds);
        Ok(())
    }

    /// Handles one request; Ok(false) if it must wait for more fds.
    fn request(
        &mut self,
        cobj: u32,
        op: u16,
        mut msg: Vec<u8>,
        out: &mut Outbox,
    ) -> Result<bool, ProxyError> {
        let Some(&hobj) = self.c2h.get(&cobj) else {
            return client_err(format!("request to unknown object {cobj}"));
        };
        let Some(obj) = self.objs.get(&hobj) else {
            return client_err(format!("request to unknown object {cobj}"));
        };
        let iface = obj.iface;
        let protos = self.protos;
        let spec = protos.get(iface);
        let Some(m) = spec.requests.get(op as usize) else {
            return client_err(format!("{}: no request {op}", spec.name));
        };
        if self.cfds.len() < m.fd_count() {
            return Ok(false);
        }
        put_u32(&mut msg, 0, hobj);
        let mut fds_in: Vec<OwnedFd> = Vec::new();
        // Decoded values the special cases below need.
        let mut uints: Vec<u32> = Vec::new();
        let mut new_ids: Vec<(u32, u32)> = Vec::new(); // (client, host)
        let mut objects: Vec<u32> = Vec::new(); // client ids of object args
        let mut patches: Vec<(usize, u32)> = Vec::new();
        {
            let Some((wire, end)) = decode(&msg, &m.args) else {
                return client_err(format!("{}.{}: message too short", spec.name, m.name));
            };
            if end != msg.len() {
                return client_err(format!(
                    "{}.{}: {} stray bytes",
                    spec.name,
                    m.name,
                    msg.len() - end
                ));
            }
            for w in wire {
                match w {
                    Wire::Word { v, .. } => uints.push(v),
                    Wire::Str(_) | Wire::Array => {}
                    Wire::Object { pos, id } => {
                        objects.push(id);
                        if id != 0 {
                            let Some(&h) = self.c2h.get(&id) else {
                                return client_err(format!(
                                    "{}.{}: unknown object {id}",
                                    spec.name, m.name
                                ));
                            };
                            patches.push((pos, h));
                        }
                    }
                    Wire::NewId { pos, id, iface } => {
                        if id == 0 || id >= SERVER_ID_START || self.c2h.contains_key(&id) {
                            return client_err(format!(
                                "{}.{}: bad new id {id}",
                                spec.name, m.name
                            ));
                        }
                        let Some(new_iface) = protos.lookup(iface) else {
                            return client_err(format!(
                                "{}.{}: interface {iface} is not relayed",
                                spec.name, m.name
                            ));
                        };
                        let h = self.alloc_host_id();
                        self.map_object(id, h, new_iface);
                        patches.push((pos, h));
                        new_ids.push((id, h));
                    }
                    Wire::Fd => {
                        // Checked above: enough fds are queued.
                        if let Some(fd) = self.cfds.pop_front() {
                            fds_in.push(fd);
                        }
                    }
                }
            }
        }
        for (pos, v) in patches {
            put_u32(&mut msg, pos, v);
        }
        let name = (spec.name.as_str(), m.name.as_str());
        // The new object's client id, for requests that create one.
        let new_cid = new_ids.first().map(|n| n.0).unwrap_or(0);
        let fds_out = match name {
            ("wl_registry", "bind") => {
                let gname = uints.first().copied().unwrap_or(0);
                if !self.announced.contains(&gname) {
                    return client_err(format!("bind of global {gname}, which was not announced"));
                }
                Vec::new()
            }
            ("wl_shm", "create_pool") => {
                let cid = new_cid;
                let size = uints.first().copied().unwrap_or(0) as i32;
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Client("create_pool without fd".into()))?;
                vec![self.create_pool(hobj, cid, fd, size)?]
            }
            ("wl_shm_pool", "resize") => {
                let size = uints.first().copied().unwrap_or(0) as i32;
                if self.resize_pool(cobj, size, out)? {
                    // The proxy replaced the host pool with a larger one: nothing to forward.
                    return Ok(true);
                }
                Vec::new()
            }
            ("wl_shm_pool", "create_buffer") => {
                let cid = new_cid;
                if let Some(pool) = self.pools.get(&cobj) {
                    let [offset, width, height, stride, format] = uints[..] else {
                        return client_err("create_buffer: bad arguments");
                    };
                    let b = Buffer {
                        client: pool.client.clone(),
                        twin: pool.twin.clone(),
                        offset: offset as i32 as usize,
                        width: width as i32,
                        height: height as i32,
                        stride: stride as i32 as usize,
                        bpp: shm::bytes_per_pixel(format),
                    };
                    // Out-of-bounds buffers are forwarded: the compositor reports the error.
                    if (offset as i32) >= 0 && (stride as i32) >= 0 {
                        self.buffers.insert(cid, b);
                    }
                }
                Vec::new()
            }
            ("wl_shm_pool", "destroy") => {
                self.pools.remove(&cobj);
                Vec::new()
            }
            ("wl_buffer", "destroy") => {
                self.buffers.remove(&cobj);
                for s in self.surfaces.values_mut() {
                    s.forget_buffer(cobj);
                }
                Vec::new()
            }
            ("wl_compositor", "create_surface") => {
                self.surfaces.insert(new_cid, SurfaceDamage::new());
                Vec::new()
            }
            ("wl_surface", _) => {
                self.surface_request(cobj, m.name.as_str(), &objects, &uints);
                Vec::new()
            }
            ("wp_viewporter", "get_viewport") => {
                let surface = objects.first().copied().unwrap_or(0);
                self.viewports.insert(new_cid, surface);
                if let Some(s) = self.surfaces.get_mut(&surface) {
                    s.has_viewport = true;
                }
                Vec::new()
            }
            ("wp_viewport", "destroy") => {
                if let Some(surface) = self.viewports.remove(&cobj) {
                    if let Some(s) = self.surfaces.get_mut(&surface) {
                        s.has_viewport = false;
                    }
                }
                Vec::new()
            }
            ("wl_data_offer", "receive") | ("zwp_primary_selection_offer_v1", "receive") => {
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Client("receive without fd".into()))?;
                vec![self.receive_pipe(fd)?]
            }
            _ => {
                if !fds_in.is_empty() {
                    return client_err(format!(
                        "{}.{} carries an fd the proxy cannot relay",
                        name.0, name.1
                    ));
                }
                Vec::new()
            }
        };
        let is_commit = name == ("wl_surface", "commit");
        if is_commit {
            self.commit(cobj);
        }
        self.queue_up(out, &msg, fds_out)?;
        Ok(true)
    }

    fn surface_request(&mut self, cobj: u32, req: &str, objects: &[u32], uints: &[u32]) {
        let Some(s) = self.surfaces.get_mut(&cobj) else {
            return;
        };
        let rect = |u: &[u32]| -> Option<Rect> {
            let [x, y, w, h] = u[..] else { return None };
            Some(Rect {
                x: x as i32,
                y: y as i32,
                w: w as i32,
                h: h as i32,
            })
        };
        match req {
            "attach" => {
                let b = objects.first().copied().unwrap_or(0);
                s.pending_attach = Some((b != 0).then_some(b));
            }
            "damage" => s.surface_damage.extend(rect(uints)),
            "damage_buffer" => s.buffer_damage.extend(rect(uints)),
            "set_buffer_scale" => s.pending_scale = uints.first().map(|v| *v as i32),
            "set_buffer_transform" => s.pending_transform = uints.first().map(|v| *v as i32),
            "destroy" => {
                self.surfaces.remove(&cobj);
            }
            _ => {}
        }
    }

    /// At a surface commit: copy what the client damaged into the attached buffer's twin.
    fn commit(&mut self, surface: u32) {
        let Some(s) = self.surfaces.get_mut(&surface) else {
            return;
        };
        let buffers = &self.buffers;
        let Some((buf, region)) = s.commit(|b| buffers.contains_key(&b), self.opts.copy_whole)
        else {
            return;
        };
        if let Some(b) = self.buffers.get(&buf) {
            let n = b.copy(&region) as u64;
            self.stats.bytes_copied += n;
            self.stats.commits_copied += 1;
            if self.stats.commits_copied > WARMUP_COMMITS {
                self.stats.bytes_copied_after_warmup += n;
            }
        }
    }

    /// wl_shm.create_pool: returns the fd to send in the client's fd's place.
    fn create_pool(
        &mut self,
        shm_host: u32,
        cid: u32,
        fd: OwnedFd,
        size: i32,
    ) -> Result<OwnedFd, ProxyError> {
        if is_virtwl_vfd(&fd) {
            // Host memory already: the compositor reads it directly.
            self.stats.pools_passed_through += 1;
            return Ok(fd);
        }
        let Ok(size) = usize::try_from(size) else {
            return client_err(format!("create_pool with size {size}"));
        };
        let client = ClientMap::new(fd, size)
            .map_err(|e| ProxyError::Client(format!("create_pool: {e}")))?;
        let twin = self.up.alloc(size)?;
        let send = dup_fd(twin.fd())?;
        self.pools.insert(cid, Pool::new(shm_host, client, twin));
        self.stats.pools_mirrored += 1;
        Ok(send)
    }

    /// wl_shm_pool.resize of a mirrored pool. Ok(true) if the proxy replaced the host pool
    /// (the twin is too small to grow in place).
    fn resize_pool(&mut self, cobj: u32, size: i32, out: &mut Outbox) -> Result<bool, ProxyError> {
        let Some(pool) = self.pools.get(&cobj) else {
            return Ok(false);
        };
        let Ok(size) = usize::try_from(size) else {
            return client_err(format!("resize to {size}"));
        };
        if size < pool.client.borrow().len() {
            return client_err("wl_shm_pool.resize cannot shrink a pool");
        }
        // Buffers made before keep the old mapping (their Rc); new ones get the new one.
        let fd = dup_fd(pool.client.borrow().raw_fd())?;
        let client =
            ClientMap::new(fd, size).map_err(|e| ProxyError::Client(format!("resize: {e}")))?;
        let shm_host = pool.shm_host;
        let fits = size <= pool.twin.borrow().len();
        if fits {
            let twin = pool.twin.clone();
            self.pools.insert(
                cobj,
                Pool {
                    shm_host,
                    client: Rc::new(RefCell::new(client)),
                    twin,
                },
            );
            return Ok(false);
        }
        // A new twin and a new host pool in the old one's place; the old host pool is
        // destroyed (its buffers live on in the compositor).
        let twin = self.up.alloc(size)?;
        let send = dup_fd(twin.fd())?;
        let Some(&old_host) = self.c2h.get(&cobj) else {
            return client_err("resize of an unknown pool");
        };
        let Some(iface) = self.objs.get(&old_host).map(|o| o.iface) else {
            return client_err("resize of an unknown pool");
        };
        let new_host = self.alloc_host_id();
        self.objs.insert(
            old_host,
            Obj {
                iface,
                client: None,
            },
        );
        self.map_object(cobj, new_host, iface);
        // wl_shm.create_pool(new_host, fd, size), then wl_shm_pool.destroy(old_host).
        let mut create = Vec::with_capacity(16);
        create.extend_from_slice(&shm_host.to_ne_bytes());
        create.extend_from_slice(&(16u32 << 16).to_ne_bytes());
        create.extend_from_slice(&new_host.to_ne_bytes());
        create.extend_from_slice(&(size as u32).to_ne_bytes());
        self.queue_up(out, &create, vec![send])?;
        let mut destroy = Vec::with_capacity(8);
        destroy.extend_from_slice(&old_host.to_ne_bytes());
        destroy.extend_from_slice(&((8u32 << 16) | 1).to_ne_bytes());
        self.queue_up(out, &destroy, Vec::new())?;
        self.pools.insert(cobj, Pool::new(shm_host, client, twin));
        Ok(true)
    }

    /// `*.receive(mime, fd)`: the host compositor writes into a host pipe; a relay thread
    /// copies into the client's write end. Returns the fd to send upstream.
    fn receive_pipe(&mut self, client_w: OwnedFd) -> Result<OwnedFd, ProxyError> {
        let ends = self.up.pipe_read()?;
        let send = dup_fd(ends.fd_to_send())?;
        let local = ends.local;
        drop(ends.remote);
        spawn_copy(local, client_w);
        Ok(send)
    }
}
