//! Host -> client: each event's ids translated back, server-created objects adopted, globals
//! outside the proxy's protocol set hidden, and the events that carry fds (keymaps, clipboard
//! sends) given local ones.

use std::os::fd::OwnedFd;

use super::decode::{decode, header, put_u32, str_of, Wire};
use super::fds::{copy_keymap, spawn_copy};
use super::{Conn, Outbox, ProxyError, SERVER_ID_START};
use crate::transport::MAX_FDS;

impl Conn<'_> {
    pub(super) fn pump_events(&mut self) -> Result<(), ProxyError> {
        let mut out = Outbox::default();
        let mut off = 0;
        loop {
            let rest = &self.uin[off..];
            let Some((obj, op, size)) = header(rest).map_err(ProxyError::Host)? else {
                break;
            };
            let msg = rest[..size].to_vec();
            if !self.event(obj, op, msg, &mut out)? {
                break;
            }
            off += size;
            self.stats.events += 1;
            if out.fds.len() + 2 >= MAX_FDS {
                out.flush(self.client.as_mut())?;
            }
        }
        self.uin.drain(..off);
        out.flush(self.client.as_mut())?;
        Ok(())
    }

    /// Handles one event; Ok(false) if its fds have not arrived yet.
    fn event(
        &mut self,
        hobj: u32,
        op: u16,
        mut msg: Vec<u8>,
        out: &mut Outbox,
    ) -> Result<bool, ProxyError> {
        let protos = self.protos;
        let Some(obj) = self.objs.get(&hobj) else {
            // An object the proxy never saw: nothing the client could take it for.
            if self.opts.verbose {
                eprintln!("qvm-wl-proxy: dropping an event for unknown object {hobj}");
            }
            return Ok(true);
        };
        let spec = protos.get(obj.iface);
        let Some(m) = spec.events.get(op as usize) else {
            return Err(ProxyError::Host(format!("{}: no event {op}", spec.name)));
        };
        if self.ufds.len() < m.fd_count() {
            return Ok(false);
        }
        let mut fds_in: Vec<OwnedFd> = (0..m.fd_count())
            .filter_map(|_| self.ufds.pop_front())
            .collect();
        let Some(cobj) = obj.client else {
            // For one of the proxy's own objects (an old pool twin): swallowed.
            return Ok(true);
        };
        put_u32(&mut msg, 0, cobj);
        let mut uints: Vec<u32> = Vec::new();
        let mut strings: Vec<String> = Vec::new();
        let mut uint_pos: Vec<usize> = Vec::new();
        let mut patches: Vec<(usize, u32)> = Vec::new();
        {
            let Some((wire, _)) = decode(&msg, &m.args) else {
                return Err(ProxyError::Host(format!(
                    "{}.{}: message too short",
                    spec.name, m.name
                )));
            };
            for w in wire {
                match w {
                    Wire::Word { pos, v } => {
                        uint_pos.push(pos);
                        uints.push(v);
                    }
                    Wire::Str(b) => strings.push(str_of(b).unwrap_or_default().to_string()),
                    Wire::Array | Wire::Fd => {}
                    Wire::Object { pos, id } => {
                        if id != 0 {
                            match self.objs.get(&id).and_then(|o| o.client) {
                                Some(c) => patches.push((pos, c)),
                                // An object the client cannot know: the event is meaningless
                                // to it (e.g. about a proxy-internal object).
                                None => return Ok(true),
                            }
                        }
                    }
                    Wire::NewId { id, iface, .. } => {
                        let Some(iface) = protos.lookup(iface) else {
                            return Err(ProxyError::Host(format!(
                                "{}.{}: new object of unknown interface",
                                spec.name, m.name
                            )));
                        };
                        if id < SERVER_ID_START {
                            return Err(ProxyError::Host(format!(
                                "{}.{}: new id {id} not server-allocated",
                                spec.name, m.name
                            )));
                        }
                        self.map_object(id, id, iface);
                    }
                }
            }
        }
        for (pos, v) in patches {
            put_u32(&mut msg, pos, v);
        }
        let name = (spec.name.as_str(), m.name.as_str());
        let mut fds_out: Vec<OwnedFd> = Vec::new();
        match name {
            ("wl_display", "delete_id") => {
                let host = uints.first().copied().unwrap_or(0);
                let Some(o) = self.objs.remove(&host) else {
                    return Ok(true);
                };
                self.host_free.push(host);
                let Some(c) = o.client else {
                    return Ok(true); // the proxy's own object
                };
                if self.c2h.get(&c) == Some(&host) {
                    self.c2h.remove(&c);
                }
                if let Some(&pos) = uint_pos.first() {
                    put_u32(&mut msg, pos, c);
                }
            }
            ("wl_registry", "global") => {
                let gname = uints.first().copied().unwrap_or(0);
                let version = uints.get(1).copied().unwrap_or(0);
                let iface = strings.first().map(String::as_str).unwrap_or("");
                match protos.lookup(iface) {
                    Some(i) => {
                        // Pass the host's version through, capped at what the proxy's XML
                        // describes (newer messages could carry fds it cannot find).
                        let ours = protos.get(i).version;
                        if let (true, Some(&pos)) = (version > ours, uint_pos.get(1)) {
                            put_u32(&mut msg, pos, ours);
                        }
                        self.announced.insert(gname);
                    }
                    None => {
                        if self.opts.verbose {
                            eprintln!("qvm-wl-proxy: hiding global {iface} v{version} (not in the proxy's protocol set)");
                        }
                        self.hidden.insert(gname);
                        self.stats.globals_hidden += 1;
                        return Ok(true);
                    }
                }
            }
            ("wl_registry", "global_remove") => {
                let gname = uints.first().copied().unwrap_or(0);
                if self.hidden.remove(&gname) {
                    return Ok(true);
                }
                self.announced.remove(&gname);
            }
            ("wl_keyboard", "keymap") => {
                let size = uints.get(1).copied().unwrap_or(0) as usize;
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Host("keymap without fd".into()))?;
                fds_out.push(copy_keymap(&fd, size)?);
            }
            ("wl_data_source", "send") | ("zwp_primary_selection_source_v1", "send") => {
                let host_w = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Host("send without fd".into()))?;
                let (r, w) = qvm_wl_fd::pipe()?;
                spawn_copy(r, host_w);
                fds_out.push(w);
            }
            _ => {
                if !fds_in.is_empty() {
                    return Err(ProxyError::Host(format!(
                        "{}.{} carries an fd the proxy cannot relay",
                        name.0, name.1
                    )));
                }
            }
        }
        if name.0 == "wl_display" && name.1 == "error" && self.opts.verbose {
            eprintln!(
                "qvm-wl-proxy: compositor error for the client: {:?}",
                strings.first()
            );
        }
        out.bytes.extend_from_slice(&msg);
        out.fds.extend(fds_out);
        Ok(true)
    }
}
