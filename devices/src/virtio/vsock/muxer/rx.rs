//! The muxer's host -> guest path: what each connection owes the guest (control packets, data
//! read from the host socket within the guest's credit, resets) written into rx buffers.

use std::io::{self, ErrorKind};
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError};

use super::{Muxer, State, CONN_BUF_ALLOC, P_CREDIT_UPDATE, P_REQUEST, P_RESPONSE, P_SHUTDOWN};
use crate::virtio::vsock::packet::*;
use crate::virtio::{bump, GuestMemoryMmap};

/// A failed read into guest memory as an `io::Error`.
fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl Muxer {
    /// Writes pending packets into the guest's rx buffers until either runs out. Returns
    /// whether the used ring changed. When the guest has posted no buffers, the work stays
    /// queued (host sockets are not read meanwhile) until the next call.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, now: Instant) -> bool {
        let mut used = false;
        let mut idle_rounds = 0;
        while self.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the driver adds some. A broken avail
                // index makes this say "more" forever without anything to pop.
                match queue.enable_notification(mem) {
                    Ok(true) if idle_rounds < 2 => {
                        idle_rounds += 1;
                        continue;
                    }
                    _ => break,
                }
            };
            idle_rounds = 0;
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_BUF_SIZE) {
                Ok(mut pkt) if pkt.data_slice().is_some() => match self.fill_rx(&mut pkt, now) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all (a socket read came back empty).
                        queue.go_to_previous_position();
                        break;
                    }
                },
                _ => {
                    // Malformed, or no room for data: the guest gets the buffer back empty.
                    bump(&self.stats.malformed_packets, 1);
                    0
                }
            };
            match queue.add_used(mem, head, len) {
                Ok(()) => used = true,
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
        }
        used
    }

    /// Writes the next pending packet into `pkt`; returns the used length.
    fn fill_rx<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        _now: Instant,
    ) -> Option<u32> {
        if let Some(hdr) = self.resets.pop_front() {
            return self.emit(pkt, &hdr);
        }
        // Each connection is tried at most once per packet.
        for _ in 0..self.rx_ready.len() {
            let token = self.rx_ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            if !conn.in_rx_queue {
                continue;
            }
            conn.in_rx_queue = false;
            let out = self.produce(token, pkt);
            self.enqueue_rx(token);
            self.touch(token);
            if out.is_some() {
                return out;
            }
        }
        None
    }

    fn emit<B: BitmapSlice>(&self, pkt: &mut VsockPacket<'_, B>, hdr: &Header) -> Option<u32> {
        if pkt.set_header_from_raw(&hdr.to_bytes()).is_err() {
            bump(&self.stats.malformed_packets, 1);
            return Some(0);
        }
        bump(&self.stats.rx_packets, 1);
        bump(&self.stats.rx_bytes, u64::from(hdr.len));
        if hdr.op == OP_RST {
            bump(&self.stats.resets_sent, 1);
        }
        Some(HEADER_SIZE as u32 + hdr.len)
    }

    /// The next packet connection `token` owes the guest, written into `pkt`.
    fn produce<B: BitmapSlice>(&mut self, token: u32, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&token)?;
        let key = conn.key?;
        let mut hdr = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: TYPE_STREAM,
            buf_alloc: CONN_BUF_ALLOC,
            ..Header::default()
        };

        if conn.state != State::Resetting {
            if conn.pending & P_REQUEST != 0 {
                conn.pending &= !P_REQUEST;
                conn.announced = true;
                hdr.op = OP_REQUEST;
            } else if conn.pending & P_RESPONSE != 0 {
                conn.pending &= !P_RESPONSE;
                hdr.op = OP_RESPONSE;
            } else if conn.can_send_data() {
                let cap = pkt
                    .data_slice()
                    .map(|d| d.len())
                    .unwrap_or(0)
                    .min(conn.credit() as usize)
                    .min(MAX_PKT_BUF_SIZE as usize);
                let read = match (pkt.data_slice(), conn.socket.as_ref()) {
                    (Some(d), Some(mut sock)) if cap > 0 => loop {
                        let mut part = match d.subslice(0, cap) {
                            Ok(p) => p,
                            Err(e) => break Err(volatile_to_io(e)),
                        };
                        match sock.read_volatile(&mut part).map_err(volatile_to_io) {
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            r => break r,
                        }
                    },
                    _ => Err(io::Error::from(ErrorKind::WouldBlock)),
                };
                match read {
                    Ok(0) => {
                        // The host peer will send no more (it may still read: a half-close
                        // such as shutdown(SHUT_WR) waits for an answer). Tell the guest; the
                        // connection ends when the guest is done sending too, or resets.
                        conn.host_readable = false;
                        conn.state = State::PeerClosed;
                        conn.pending |= P_SHUTDOWN;
                    }
                    Ok(n) => {
                        hdr.op = OP_RW;
                        hdr.len = n as u32;
                        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => conn.host_readable = false,
                    Err(_) => {
                        // The host peer died mid-stream.
                        self.kill(token, true);
                    }
                }
            }
        }

        // `kill` may have removed the connection or turned it into Resetting.
        let conn = self.conns.get_mut(&token)?;
        if conn.state == State::Resetting {
            hdr.op = OP_RST;
            hdr.len = 0;
            self.remove(token);
            return self.emit(pkt, &hdr);
        }
        if hdr.op == 0 {
            if conn.pending & P_CREDIT_UPDATE != 0 {
                hdr.op = OP_CREDIT_UPDATE;
            } else if conn.pending & P_SHUTDOWN != 0 {
                conn.pending &= !P_SHUTDOWN;
                hdr.op = OP_SHUTDOWN;
                hdr.flags = SHUTDOWN_SEND;
            } else {
                return None;
            }
        }
        // Every header carries our credit.
        conn.pending &= !P_CREDIT_UPDATE;
        hdr.fwd_cnt = conn.fwd_cnt;
        conn.last_fwd_cnt_sent = conn.fwd_cnt;
        self.emit(pkt, &hdr)
    }
}
