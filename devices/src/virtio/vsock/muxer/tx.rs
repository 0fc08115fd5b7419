//! The muxer's guest -> host path: the tx queue's packets, acted on per connection (connect
//! requests to `<uds_path>_<port>`, data forwarded to the host socket or buffered within the
//! credit we gave, shutdowns, resets).

use std::io::ErrorKind;
use std::net::Shutdown;
use std::os::unix::io::AsRawFd;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::{
    known_op, Conn, ConnKey, Muxer, State, CONN_BUF_ALLOC, MAX_CONNECTIONS, P_CREDIT_UPDATE,
    P_RESPONSE,
};
use crate::virtio::vsock::packet::*;
use crate::virtio::vsock::unix::{connect_nonblocking, port_path, send_bytes, send_volatile};
use crate::virtio::{bump, GuestMemoryMmap};

impl Muxer {
    /// Takes every available tx chain (at most one queue's worth) and acts on its packet.
    /// Returns whether the used ring changed.
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, now: Instant) -> bool {
        let mut used = false;
        for _ in 0..queue.size() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, &mut chain, &mut self.tx_scratch) {
                Ok(hdr) => {
                    let len = (hdr.len as usize).min(self.tx_scratch.len());
                    let mut data = std::mem::take(&mut self.tx_scratch);
                    {
                        let slice = VolatileSlice::from(&mut data[..len]);
                        self.handle_guest_packet(&hdr, (len > 0).then_some(&slice), now);
                    }
                    self.tx_scratch = data;
                }
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
        }
        used
    }

    /// Acts on one packet from the guest.
    pub fn handle_guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
        now: Instant,
    ) {
        if hdr.src_cid != self.guest_cid {
            bump(&self.stats.dropped_packets, 1);
            return;
        }
        bump(&self.stats.tx_packets, 1);
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM || !known_op(hdr.op) {
            if hdr.op != OP_RST {
                self.queue_reset_reply(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(&token) = self.by_key.get(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.queue_reset_reply(hdr),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.state == State::Resetting {
            if hdr.op == OP_RST {
                // It knows: no need to tell it.
                self.remove(token);
            }
            return;
        }
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        let state = conn.state;
        match (hdr.op, state) {
            (OP_RST, _) => self.kill(token, false),
            (OP_RESPONSE, State::Connecting) => self.host_connect_accepted(token),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => conn.pending |= P_CREDIT_UPDATE,
            (OP_SHUTDOWN, State::Established | State::PeerClosed) => {
                self.guest_shutdown(token, hdr.flags, now)
            }
            (OP_RW, State::Established | State::PeerClosed) => {
                self.guest_data(token, hdr.len, data, now)
            }
            // REQUEST or RESPONSE on a live connection, data before the handshake is done.
            _ => self.kill(token, true),
        }
        self.enqueue_rx(token);
        self.touch(token);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            bump(&self.stats.guest_connect_failures, 1);
            self.queue_reset_reply(hdr);
            return;
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let sock = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(_) => {
                bump(&self.stats.guest_connect_failures, 1);
                self.queue_reset_reply(hdr);
                return;
            }
        };
        let token = self.alloc_token();
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let mut conn = Conn::new(sock, State::Established);
        conn.key = Some(key);
        conn.announced = true;
        conn.counted_open = true;
        conn.pending = P_RESPONSE;
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        bump(&self.stats.connections_opened, 1);
        self.conns.insert(token, conn);
        self.by_key.insert(key, token);
        self.enqueue_rx(token);
        self.touch(token);
    }

    /// The guest accepted a host-initiated connection: tell the host peer.
    fn host_connect_accepted(&mut self, token: u32) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (Some(sock), Some(key)) = (conn.socket.as_ref(), conn.key) else {
            return;
        };
        let reply = format!("OK {}\n", key.local_port);
        // Nothing was written to this socket yet: a short line always fits its buffer.
        let ok =
            matches!(send_bytes(sock.as_raw_fd(), reply.as_bytes()), Ok(n) if n == reply.len());
        if !ok {
            self.kill(token, true);
            return;
        }
        conn.state = State::Established;
        conn.deadline = None;
        conn.counted_open = true;
        bump(&self.stats.connections_opened, 1);
    }

    fn guest_shutdown(&mut self, token: u32, flags: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if flags & SHUTDOWN_RCV != 0 && !conn.guest_shut_rcv {
            conn.guest_shut_rcv = true;
            if let Some(s) = conn.socket.as_ref() {
                let _ = s.shutdown(Shutdown::Read);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            conn.guest_shut_send = true;
        }
        self.after_forward(token, now);
    }

    fn guest_data<B: BitmapSlice>(
        &mut self,
        token: u32,
        len: u32,
        data: Option<&VolatileSlice<'_, B>>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.guest_shut_send {
            // Data after the guest said it would send no more.
            self.kill(token, true);
            return;
        }
        let (Some(data), Some(fd)) = (data, conn.socket.as_ref().map(|s| s.as_raw_fd())) else {
            return;
        };
        // from_tx_virtq_chain made the slice exactly `len` long; be sure anyway.
        let len = (len as usize).min(data.len());
        bump(&self.stats.tx_bytes, len as u64);
        let mut written = 0usize;
        if conn.tx_buf.is_empty() {
            while written < len {
                let part = match data.subslice(written, len - written) {
                    Ok(p) => p,
                    Err(_) => break,
                };
                match send_volatile(fd, &part) {
                    Ok(0) => break,
                    Ok(n) => {
                        written += n;
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill(token, true);
                        return;
                    }
                }
            }
        }
        let rest = len - written;
        if rest > 0 {
            if conn.tx_buf.len() + rest > CONN_BUF_ALLOC as usize {
                // The guest sent more than the credit we gave it.
                bump(&self.stats.dropped_packets, 1);
                self.kill(token, true);
                return;
            }
            let mut tmp = vec![0u8; rest];
            let copied = data
                .subslice(written, rest)
                .map(|s| s.copy_to(&mut tmp[..]))
                .unwrap_or(0);
            tmp.truncate(copied);
            conn.tx_buf.extend(tmp);
        }
        self.after_forward(token, now);
    }
}
