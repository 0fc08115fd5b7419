//! The policy engine's unit tests: one context's [`CtxPolicy`] fed byte streams from both
//! sides, as the device feeds it.

use super::*;
use crate::test_msgs::{bind, global, msg, string_arg, words};

struct T {
    p: CtxPolicy,
    m: WlMetrics,
    gate: PasteGate,
}

impl T {
    fn new(clipboard: Clipboard, allow: &[&str]) -> T {
        let mut pol = WlPolicy::new("work");
        pol.clipboard = clipboard;
        pol.allow_globals = allow.iter().map(|s| s.to_string()).collect();
        let gate = pol.paste.clone();
        T {
            p: CtxPolicy::new(Arc::new(Rules::new(&pol))),
            m: WlMetrics::default(),
            gate,
        }
    }
    fn up(&mut self, b: &[u8]) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        self.p
            .guest_to_compositor(b, &mut out, &self.m)
            .map(|_| out)
    }
    fn down(&mut self, b: &[u8]) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        self.p
            .compositor_to_guest(b, &mut out, &self.m)
            .map(|_| out)
    }
    /// A context past [`T::setup`]'s registry handshake.
    fn ready(clipboard: Clipboard, allow: &[&str]) -> T {
        let mut t = T::new(clipboard, allow);
        t.setup();
        t
    }
    /// get_registry(2); globals 1..: wl_compositor, xdg_wm_base, wl_seat,
    /// wl_data_device_manager, weston_screenshooter, zwp_primary_selection...; binds.
    fn setup(&mut self) {
        let r = self.up(&msg(1, 1, &words(&[2]))).unwrap();
        assert_eq!(r.len(), 12);
        let mut ev = Vec::new();
        for (n, i) in [
            (1, "wl_compositor"),
            (2, "xdg_wm_base"),
            (3, "wl_seat"),
            (4, "wl_data_device_manager"),
            (5, "weston_screenshooter"),
            (6, "zwp_primary_selection_device_manager_v1"),
        ] {
            ev.extend(global(2, n, i, 3));
        }
        let shown = self.down(&ev).unwrap();
        let hidden = self.m.globals_hidden.load(Ordering::Relaxed) as usize;
        let one = global(2, 5, "weston_screenshooter", 3).len();
        assert_eq!(shown.len(), ev.len() - hidden * one);
        let mut up = bind(2, 2, "xdg_wm_base", 3, 3);
        up.extend(bind(2, 4, "wl_data_device_manager", 3, 4));
        up.extend(bind(2, 6, "zwp_primary_selection_device_manager_v1", 1, 5));
        up.extend(bind(2, 3, "wl_seat", 7, 6));
        // get_xdg_surface(7, surface 20), get_toplevel(8), get_data_device(9, seat 6),
        // primary get_device(10, seat 6).
        up.extend(msg(3, 2, &words(&[7, 20])));
        up.extend(msg(7, 1, &words(&[8])));
        up.extend(msg(4, 1, &words(&[9, 6])));
        up.extend(msg(5, 1, &words(&[10, 6])));
        assert_eq!(self.up(&up).unwrap(), up);
    }
}

#[test]
fn titles_and_app_ids_are_tagged_byte_exact() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    let out = t.up(&msg(8, 2, &string_arg(b"hello"))).unwrap();
    // "[work] hello" = 12 bytes + NUL = 13, padded to 16.
    let mut want = words(&[8, (28 << 16) | 2, 13]);
    want.extend_from_slice(b"[work] hello\0\0\0\0");
    assert_eq!(out, want);
    let out = t.up(&msg(8, 3, &string_arg(b"org.x"))).unwrap();
    // "qvm.work.org.x" = 14 + NUL = 15 -> 16.
    let mut want = words(&[8, (28 << 16) | 3, 15]);
    want.extend_from_slice(b"qvm.work.org.x\0\0");
    assert_eq!(out, want);
    // An empty title gets the tag alone; other toplevel requests pass untouched.
    let out = t.up(&msg(8, 2, &string_arg(b""))).unwrap();
    assert_eq!(&out[8..], &[&[8u8, 0, 0, 0][..], b"[work] \0"].concat()[..]);
    let min = msg(8, 8, &words(&[10, 10]));
    assert_eq!(t.up(&min).unwrap(), min);
    assert_eq!(t.m.titles_tagged.load(Ordering::Relaxed), 3);
}

#[test]
fn a_long_title_is_cut_to_the_message_limit_at_a_char_boundary() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    // The largest title libwayland sends: 4096 - 12 - NUL, ending in 'é' (2 bytes).
    let mut s = vec![b'a'; 4096 - 12 - 1 - 2];
    s.extend_from_slice("é".as_bytes());
    let m = msg(8, 2, &string_arg(&s));
    assert_eq!(m.len(), 4096);
    let out = t.up(&m).unwrap();
    assert_eq!(out.len(), 4096);
    let (_, op, size) = header(&out);
    assert_eq!((op, size), (2, 4096));
    let len = u32::from_le_bytes(out[8..12].try_into().unwrap()) as usize;
    let text = &out[12..12 + len - 1];
    assert_eq!(out[12 + len - 1], 0);
    let text = std::str::from_utf8(text).expect("cut at a char boundary");
    assert!(text.starts_with("[work] aaa"));
    assert!(!text.contains('é'));
    assert!(out[12 + len..].iter().all(|&b| b == 0));
}

#[test]
fn messages_are_reassembled_across_sends() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    let mut all = msg(8, 2, &string_arg(b"split title"));
    all.extend(msg(20, 6, &[]));
    let mut got = Vec::new();
    for chunk in all.chunks(3) {
        got.extend(t.up(chunk).unwrap());
    }
    assert_eq!(t.p.partial(), (0, 0));
    let mut want = msg(8, 2, &string_arg(b"[work] split title"));
    want.extend(msg(20, 6, &[]));
    assert_eq!(got, want);
    // Events too: a global split in two.
    let g = global(2, 40, "wl_output", 4);
    assert!(t.down(&g[..5]).unwrap().is_empty());
    assert_eq!(t.p.partial(), (0, 5));
    assert_eq!(t.down(&g[5..]).unwrap(), g);
}

#[test]
fn malformed_streams_are_violations() {
    for bad in [
        msg(0, 0, &[]),                             // object 0
        words(&[5, 4 << 16]),                       // size < 8
        words(&[5, (10 << 16) | 1, 0]),             // not a multiple of 4
        msg(8, 2, &words(&[100])),                  // string overruns
        msg(8, 2, &[2, 0, 0, 0, b'a', b'b', 0, 0]), // no NUL
        msg(2, 0, &words(&[1])),                    // truncated bind
    ] {
        let mut t = T::ready(Clipboard::Gated, &[]);
        assert!(
            matches!(t.up(&bad), Err(Violation::Malformed("guest", _))),
            "{bad:?}"
        );
        let mut t = T::ready(Clipboard::Gated, &[]);
        if bad[0] == 0 || bad[4..8] != msg(0, 0, &[])[4..8] {
            // Header-level garbage is caught from the compositor too.
            let r = t.down(&bad);
            assert!(r.is_ok() || matches!(r, Err(Violation::Malformed("compositor", _))));
        }
    }
    let mut t = T::new(Clipboard::Gated, &[]);
    assert!(t.down(&words(&[2, 3 << 16])).is_err());
}

#[test]
fn hidden_globals_are_dropped_and_cannot_be_bound() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    assert_eq!(t.m.globals_hidden.load(Ordering::Relaxed), 1);
    // global_remove of a hidden name is dropped; of a shown one passes.
    assert!(t.down(&msg(2, 1, &words(&[5]))).unwrap().is_empty());
    let rm = msg(2, 1, &words(&[1]));
    assert_eq!(t.down(&rm).unwrap(), rm);
    // Binding the hidden name, a never-announced one, or a shown name under another
    // interface: refused.
    for b in [
        bind(2, 5, "weston_screenshooter", 1, 30),
        bind(2, 99, "wl_compositor", 1, 30),
        bind(2, 3, "xdg_wm_base", 1, 30),
    ] {
        let mut t2 = T::ready(Clipboard::Gated, &[]);
        assert!(matches!(t2.up(&b), Err(Violation::RefusedBind { .. })));
        assert_eq!(t2.m.binds_refused.load(Ordering::Relaxed), 1);
    }
    // Allowed by config: shown and bindable.
    let mut t = T::ready(Clipboard::Gated, &["weston_screenshooter"]);
    assert_eq!(t.m.globals_hidden.load(Ordering::Relaxed), 0);
    let b = bind(2, 5, "weston_screenshooter", 1, 30);
    assert_eq!(t.up(&b).unwrap(), b);
}

fn offer_events(device: u32, offer: u32) -> Vec<u8> {
    let mut e = msg(device, 0, &words(&[offer]));
    e.extend(msg(offer, 0, &string_arg(b"text/plain")));
    e
}

/// The compositor making `offer` the clipboard selection of data device `device`: the offer,
/// its mime type, then `wl_data_device.selection(offer)`.
fn clipboard_selection(device: u32, offer: u32) -> Vec<u8> {
    let mut e = offer_events(device, offer);
    e.extend(msg(device, 5, &words(&[offer])));
    e
}

#[test]
fn selections_are_gated_until_one_paste_is_allowed() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    let x = 0xff00_0001;
    // Default: the offer never shows, the selection is null.
    let ev = clipboard_selection(9, x);
    assert_eq!(t.down(&ev).unwrap(), msg(9, 5, &words(&[0])));
    // The guest guessing the id: hung up.
    assert_eq!(
        t.up(&msg(x, 1, &string_arg(b"text/plain"))),
        Err(Violation::HiddenOffer(x))
    );
    // Allowed once: the next selection comes through whole, in order.
    t.gate.allow(PASTE_WINDOW);
    let y = 0xff00_0002;
    let ev = clipboard_selection(9, y);
    assert_eq!(t.down(&ev).unwrap(), ev);
    assert_eq!(t.m.pastes_allowed.load(Ordering::Relaxed), 1);
    // The superseded x is destroyed on the guest's behalf before its next request.
    let sync = msg(1, 0, &words(&[40]));
    let mut want = msg(x, 2, &[]);
    want.extend(&sync);
    assert_eq!(t.up(&sync).unwrap(), want);
    // Then null again.
    let z = 0xff00_0003;
    let ev = clipboard_selection(9, z);
    assert_eq!(t.down(&ev).unwrap(), msg(9, 5, &words(&[0])));
    assert_eq!(t.m.selections_gated.load(Ordering::Relaxed), 2);
    // The guest's own requests on offers it saw pass.
    let recv = msg(y, 1, &string_arg(b"text/plain"));
    assert_eq!(t.up(&recv).unwrap(), recv);
}

#[test]
fn a_paste_allowed_later_releases_the_held_selection() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    let x = 0xff00_0001;
    let ev = clipboard_selection(9, x);
    assert_eq!(t.down(&ev).unwrap(), msg(9, 5, &words(&[0])));
    t.gate.allow(PASTE_WINDOW);
    // The next compositor bytes (a key press) come after the released selection.
    let key = msg(30, 3, &words(&[1, 2, 3, 1]));
    let mut want = offer_events(9, x);
    want.extend(msg(9, 5, &words(&[x])));
    want.extend(&key);
    assert_eq!(t.down(&key).unwrap(), want);
    assert!(!t.gate.armed());
    // Expired permission: nothing.
    t.gate.allow(Duration::ZERO);
    let y = 0xff00_0002;
    let ev = clipboard_selection(9, y);
    assert_eq!(t.down(&ev).unwrap(), msg(9, 5, &words(&[0])));
}

#[test]
fn primary_selection_and_drag_and_drop_stay_hidden_when_gated() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    t.gate.allow(PASTE_WINDOW);
    let x = 0xff00_0001;
    let mut ev = offer_events(10, x);
    ev.extend(msg(10, 1, &words(&[x])));
    assert_eq!(t.down(&ev).unwrap(), msg(10, 1, &words(&[0])));
    assert!(
        t.gate.armed(),
        "the primary selection does not use the paste"
    );
    let y = 0xff00_0002;
    let mut ev = offer_events(9, y);
    ev.extend(msg(9, 1, &words(&[5, 20, 0, 0, y])));
    assert_eq!(t.down(&ev).unwrap(), msg(9, 1, &words(&[5, 20, 0, 0, 0])));
    // Both are destroyed with the next request: primary offer opcode 1, data offer 2.
    let out = t.up(&msg(1, 0, &words(&[40]))).unwrap();
    assert_eq!(out.len(), 8 + 8 + 12);
}

#[test]
fn open_clipboard_and_guest_selections_pass() {
    let mut t = T::ready(Clipboard::Open, &[]);
    let x = 0xff00_0001;
    let ev = clipboard_selection(9, x);
    assert_eq!(t.down(&ev).unwrap(), ev);
    // Gated: the guest's own selection requests (create_data_source, offer,
    // set_selection) and the compositor's send to its source pass untouched.
    let mut t = T::ready(Clipboard::Gated, &[]);
    let mut up = msg(4, 0, &words(&[11]));
    up.extend(msg(11, 0, &string_arg(b"text/plain")));
    up.extend(msg(9, 1, &words(&[11, 7])));
    assert_eq!(t.up(&up).unwrap(), up);
    let send = msg(11, 1, &string_arg(b"text/plain"));
    assert_eq!(t.down(&send).unwrap(), send);
}

#[test]
fn deleted_ids_are_forgotten() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    // The toplevel (8) is destroyed; id 8 becomes a wl_callback: its messages pass.
    t.up(&msg(8, 0, &[])).unwrap();
    t.down(&msg(1, 1, &words(&[8]))).unwrap();
    let m = msg(8, 2, &words(&[1, 2]));
    assert_eq!(t.up(&m).unwrap(), m);
}

/// Random bytes and mutated sessions, both ways: violations or output, never a panic,
/// and the partial buffers stay below one message.
#[test]
fn random_streams_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut valid = bind(2, 2, "xdg_wm_base", 3, 3);
    valid.extend(msg(3, 2, &words(&[7, 20])));
    valid.extend(msg(7, 1, &words(&[8])));
    valid.extend(msg(8, 2, &string_arg(b"title")));
    valid.extend(clipboard_selection(9, 0xff00_0001));
    for round in 0..3000 {
        let mut t = T::ready(Clipboard::Gated, &[]);
        let mut b = valid.clone();
        for _ in 0..(rnd() % 4) {
            let i = (rnd() as usize) % b.len();
            b[i] = rnd() as u8;
        }
        if round % 3 == 0 {
            b = (0..rnd() % 200).map(|_| rnd() as u8).collect();
        }
        let mut at = 0;
        while at < b.len() {
            let n = 1 + (rnd() as usize) % 64;
            let chunk = &b[at..(at + n).min(b.len())];
            at += n;
            let r = if rnd() % 2 == 0 {
                t.up(chunk)
            } else {
                t.down(chunk)
            };
            if r.is_err() {
                break;
            }
            let (o, i) = t.p.partial();
            assert!(o <= MAX_WIRE_MESSAGE && i <= MAX_WIRE_MESSAGE);
        }
    }
}

/// Cost of the tracking on a frame's requests (attach, damage, frame, commit): run with
/// `cargo test --release -p qvm-virtio-wl policy_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn policy_overhead() {
    let mut t = T::ready(Clipboard::Gated, &[]);
    let mut frame = msg(20, 1, &words(&[30, 0, 0]));
    frame.extend(msg(20, 9, &words(&[0, 0, 64, 64])));
    frame.extend(msg(20, 3, &words(&[31])));
    frame.extend(msg(20, 6, &[]));
    let n = 1_000_000;
    let mut out = Vec::with_capacity(256);
    let start = Instant::now();
    for _ in 0..n {
        out.clear();
        t.p.guest_to_compositor(&frame, &mut out, &t.m).unwrap();
    }
    let up = start.elapsed();
    let ev = msg(31, 0, &words(&[1234]));
    let start = Instant::now();
    for _ in 0..n {
        out.clear();
        t.p.compositor_to_guest(&ev, &mut out, &t.m).unwrap();
    }
    let down = start.elapsed();
    eprintln!(
        "policy: {:.1} ns per frame of 4 requests ({} bytes), {:.1} ns per 12-byte event",
        up.as_nanos() as f64 / n as f64,
        frame.len(),
        down.as_nanos() as f64 / n as f64
    );
}
