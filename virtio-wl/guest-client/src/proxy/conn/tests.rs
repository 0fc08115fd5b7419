//! The proxy connection against scripted peers on socket pairs: hostile byte streams from
//! both sides, and the primary selection relayed both ways.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::decode::{header, str_of, Args};
use super::*;
use crate::transport::SocketTransport;

/// A tiny deterministic generator (no extra crates).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

fn msg(obj: u32, op: u16, args: &[u32]) -> Vec<u8> {
    let size = 8 + 4 * args.len() as u32;
    let mut v = Vec::new();
    v.extend_from_slice(&obj.to_ne_bytes());
    v.extend_from_slice(&((size << 16) | u32::from(op)).to_ne_bytes());
    for a in args {
        v.extend_from_slice(&a.to_ne_bytes());
    }
    v
}

/// Relays between an app's socket and a compositor's (both socket pairs) until one ends.
fn relay(protos: &Protocols, app: UnixStream, comp: UnixStream) -> Result<(), ProxyError> {
    Conn::new(
        protos,
        Options::default(),
        Box::new(SocketTransport::from_stream(app)),
        Box::new(SocketTransport::from_stream(comp)),
    )
    .unwrap()
    .run()
}

/// Hostile streams from both sides end the connection with an error or cleanly, never a
/// panic: random bytes, and plausible messages with random ids, opcodes and arguments.
#[test]
fn hostile_streams_never_panic() {
    let protos = Protocols::builtin().unwrap();
    let mut rng = Rng(7);
    for round in 0..300 {
        let (c_app, c_proxy) = UnixStream::pair().unwrap();
        let (u_proxy, u_comp) = UnixStream::pair().unwrap();
        let mut bytes_c = Vec::new();
        let mut bytes_u = Vec::new();
        // A sane start: get_registry, then noise.
        bytes_c.extend(msg(1, 1, &[2]));
        for _ in 0..(rng.next() % 20) {
            let obj = rng.next() % 6;
            let op = (rng.next() % 4) as u16;
            let args: Vec<u32> = (0..rng.next() % 6).map(|_| rng.next() % 8).collect();
            if round % 3 == 0 {
                bytes_c.extend((0..rng.next() % 40).map(|_| rng.next() as u8));
            } else {
                bytes_c.extend(msg(obj, op, &args));
            }
            let ev: Vec<u32> = (0..rng.next() % 6).map(|_| rng.next() % 8).collect();
            bytes_u.extend(msg(rng.next() % 4, (rng.next() % 3) as u16, &ev));
        }
        let protos = &protos;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let _ = relay(protos, c_proxy, u_proxy);
            });
            let mut c_app = c_app;
            let mut u_comp = u_comp;
            let _ = c_app.write_all(&bytes_c);
            let _ = u_comp.write_all(&bytes_u);
            drop(c_app);
            drop(u_comp);
            h.join().expect("the proxy connection panicked");
        });
    }
}

/// One end of a scripted conversation: the app in front of the proxy, or the compositor
/// behind it.
struct Peer {
    t: SocketTransport,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

/// An argument for [`wire`].
enum A<'a> {
    U(u32),
    S(&'a str),
}

/// A message with string arguments (NUL-terminated, padded).
fn wire(obj: u32, op: u16, args: &[A]) -> Vec<u8> {
    let mut body = Vec::new();
    for a in args {
        match a {
            A::U(v) => body.extend_from_slice(&v.to_ne_bytes()),
            A::S(s) => {
                body.extend_from_slice(&(s.len() as u32 + 1).to_ne_bytes());
                body.extend_from_slice(s.as_bytes());
                body.push(0);
                while body.len() % 4 != 0 {
                    body.push(0);
                }
            }
        }
    }
    let mut v = obj.to_ne_bytes().to_vec();
    v.extend_from_slice(&(((8 + body.len() as u32) << 16) | u32::from(op)).to_ne_bytes());
    v.extend(body);
    v
}

/// Reads a message's arguments in order.
struct Rd<'a>(Args<'a>);
impl Rd<'_> {
    fn u(&mut self) -> u32 {
        self.0.u32().expect("a u32 argument")
    }
    fn s(&mut self) -> String {
        str_of(self.0.blob().expect("a string argument"))
            .expect("a NUL-terminated string")
            .to_string()
    }
}

impl Peer {
    fn new(sock: UnixStream) -> Peer {
        Peer {
            t: SocketTransport::from_stream(sock),
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    fn send(&mut self, m: &[u8], fds: &[RawFd]) {
        self.t.send(m, fds).expect("send");
    }

    /// The next whole message: (object, opcode, the message), waiting up to 10 s.
    fn next(&mut self) -> (u32, u16, Vec<u8>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some((obj, op, size)) = header(&self.buf).expect("a sane header") {
                let m: Vec<u8> = self.buf.drain(..size).collect();
                return (obj, op, m);
            }
            assert!(std::time::Instant::now() < deadline, "no message in 10 s");
            let mut pfd = libc::pollfd {
                fd: self.t.poll_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            assert!(
                self.t.recv(&mut self.buf, &mut self.fds).expect("recv"),
                "the proxy hung up"
            );
        }
    }

    /// Skips messages until one for `op` (on `obj`, if given) comes; returns it.
    fn until(&mut self, obj: Option<u32>, op: u16) -> (u32, Vec<u8>) {
        loop {
            let (o, p, m) = self.next();
            if p == op && obj.is_none_or(|want| want == o) {
                return (o, m);
            }
        }
    }
}

fn args(m: &[u8]) -> Rd<'_> {
    Rd(Args { msg: m, pos: 8 })
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s).unwrap();
    s
}

fn pipe() -> (OwnedFd, OwnedFd) {
    qvm_wl_fd::pipe().unwrap()
}

/// Primary selection both ways through the proxy, scripted on both sides (weston 10, the
/// compositor of the end-to-end tests, offers no primary selection): the guest app's source
/// is read by the host through the fd the host sends, and the host's offer is read by the
/// app through the fd the app sends; ids are translated on the way.
#[test]
fn primary_selection_both_ways() {
    const MGR: &str = "zwp_primary_selection_device_manager_v1";
    let protos = Protocols::builtin().unwrap();
    let (c_app, c_proxy) = UnixStream::pair().unwrap();
    let (u_proxy, u_comp) = UnixStream::pair().unwrap();
    let protos = &protos;
    std::thread::scope(|sc| {
        let h = sc.spawn(move || relay(protos, c_proxy, u_proxy));
        let (mut app, mut comp) = (Peer::new(c_app), Peer::new(u_comp));
        // Registry: a seat and the primary selection manager.
        app.send(&wire(1, 1, &[A::U(2)]), &[]);
        let (_, m) = comp.until(Some(1), 1);
        let h_reg = args(&m).u();
        comp.send(&wire(h_reg, 0, &[A::U(1), A::S("wl_seat"), A::U(7)]), &[]);
        comp.send(&wire(h_reg, 0, &[A::U(2), A::S(MGR), A::U(1)]), &[]);
        let (_, m) = app.until(Some(2), 0);
        assert_eq!(args(&m).u(), 1);
        let (_, m) = app.until(Some(2), 0);
        let mut a = args(&m);
        assert_eq!((a.u(), a.s()), (2, MGR.to_string()));
        // Bind both, make a source offering text/plain, a device, and set the selection.
        app.send(
            &wire(2, 0, &[A::U(1), A::S("wl_seat"), A::U(7), A::U(3)]),
            &[],
        );
        app.send(&wire(2, 0, &[A::U(2), A::S(MGR), A::U(1), A::U(4)]), &[]);
        app.send(&wire(4, 0, &[A::U(5)]), &[]); // create_source
        app.send(&wire(5, 0, &[A::S("text/plain")]), &[]); // offer
        app.send(&wire(4, 1, &[A::U(6), A::U(3)]), &[]); // get_device(seat)
        app.send(&wire(6, 0, &[A::U(5), A::U(77)]), &[]); // set_selection
        let (_, m) = comp.until(Some(h_reg), 0);
        let mut a = args(&m);
        let (_, _, _, h_seat) = (a.u(), a.s(), a.u(), a.u());
        let (_, m) = comp.until(Some(h_reg), 0);
        let mut a = args(&m);
        let (_, _, _, h_mgr) = (a.u(), a.s(), a.u(), a.u());
        let (_, m) = comp.until(Some(h_mgr), 0);
        let h_src = args(&m).u();
        let (_, m) = comp.until(Some(h_src), 0);
        assert_eq!(args(&m).s(), "text/plain");
        let (_, m) = comp.until(Some(h_mgr), 1);
        let mut a = args(&m);
        let h_dev = a.u();
        assert_eq!(a.u(), h_seat, "get_device names the host's seat");
        let (_, m) = comp.until(Some(h_dev), 0);
        let mut a = args(&m);
        assert_eq!(
            (a.u(), a.u()),
            (h_src, 77),
            "set_selection names the host's source"
        );

        // Guest -> host: the host asks the guest's source for its data.
        let (r, w) = pipe();
        comp.send(&wire(h_src, 0, &[A::S("text/plain")]), &[w.as_raw_fd()]);
        drop(w);
        let (_, m) = app.until(Some(5), 0);
        assert_eq!(args(&m).s(), "text/plain");
        let fd = app.fds.pop_front().expect("send carries an fd");
        std::fs::File::from(fd).write_all(b"from-guest").unwrap();
        assert_eq!(read_all(r), "from-guest");

        // Host -> guest: a host offer becomes the selection; the app receives it.
        let offer = SERVER_ID_START + 1;
        comp.send(&wire(h_dev, 0, &[A::U(offer)]), &[]); // data_offer
        comp.send(&wire(offer, 0, &[A::S("text/plain")]), &[]); // offer.offer
        comp.send(&wire(h_dev, 1, &[A::U(offer)]), &[]); // selection
        let (_, m) = app.until(Some(6), 0);
        assert_eq!(args(&m).u(), offer);
        let (_, m) = app.until(Some(offer), 0);
        assert_eq!(args(&m).s(), "text/plain");
        let (_, m) = app.until(Some(6), 1);
        assert_eq!(args(&m).u(), offer);
        let (r, w) = pipe();
        app.send(&wire(offer, 0, &[A::S("text/plain")]), &[w.as_raw_fd()]);
        drop(w);
        let (_, m) = comp.until(Some(offer), 0);
        assert_eq!(args(&m).s(), "text/plain");
        let fd = comp.fds.pop_front().expect("receive carries an fd");
        std::fs::File::from(fd).write_all(b"from-host").unwrap();
        assert_eq!(read_all(r), "from-host");

        drop(app);
        drop(comp);
        let _ = h.join().expect("the proxy connection panicked");
    });
}
