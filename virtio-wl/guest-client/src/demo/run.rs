//! What one run of the demo does: bind the globals, open an xdg toplevel, draw and present
//! the frames of its scene, hold the last one, and own or read the clipboard; or, with
//! `--list-globals` / `--bind-name`, only talk to the registry.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{io_err, Client, Error, Iface, Options, Scene, REGISTRY_ID, ROUNDTRIP_TIMEOUT};
use crate::pattern;
use crate::protocol::*;
use crate::transport::{self, Alloc, Transport};
use crate::wire::Message;

/// Where the blinking cursor is.
pub const CURSOR: (u32, u32, u32, u32) = (100, 100, 2, 20);

/// The mime types we offer and accept for text.
pub const TEXT_MIMES: [&str; 2] = ["text/plain;charset=utf-8", "text/plain"];

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub frames: u32,
    pub secs: f64,
}

impl Report {
    pub fn fps(&self) -> f64 {
        if self.secs > 0.0 {
            self.frames as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Run the demo: connect, show `opts.frames` frames, hold, handle the clipboard options.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let t = transport::open(opts.transport.as_deref(), opts.ctx_name.as_deref())
        .map_err(io_err("open transport"))?;
    run_with(t, opts)
}

pub fn run_with(t: Box<dyn Transport>, opts: &Options) -> Result<Report, Error> {
    let mut c = Client::new(t);
    let out = io::stdout();

    // Globals.
    let reg = c.new_id(Iface::Registry);
    debug_assert_eq!(reg, REGISTRY_ID);
    c.send(Message::new(DISPLAY_ID, wl_display::req::GET_REGISTRY).object(reg))?;
    c.roundtrip()?;
    if opts.list_globals || opts.bind_name.is_some() {
        return registry_only(&mut c, opts);
    }
    let (compositor, compositor_v) = c.bind(
        wl_compositor::NAME,
        wl_compositor::VERSION,
        Iface::Compositor,
    )?;
    let (shm, _) = c.bind(wl_shm::NAME, wl_shm::VERSION, Iface::Shm)?;
    let (wm_base, _) = c.bind(xdg_wm_base::NAME, xdg_wm_base::VERSION, Iface::WmBase)?;
    let clipboard = opts.set_selection.is_some() || opts.get_selection;
    let data_device = if clipboard {
        if c.global(wl_seat::NAME).is_none() {
            return Err(Error::Other(
                "compositor advertises no wl_seat: the clipboard (wl_data_device) needs one".into(),
            ));
        }
        let (seat, _) = c.bind(wl_seat::NAME, wl_seat::VERSION, Iface::Seat)?;
        let (ddm, _) = c.bind(
            wl_data_device_manager::NAME,
            wl_data_device_manager::VERSION,
            Iface::DataDeviceManager,
        )?;
        let dd = c.new_id(Iface::DataDevice);
        c.send(
            Message::new(ddm, wl_data_device_manager::req::GET_DATA_DEVICE)
                .object(dd)
                .object(seat),
        )?;
        Some((ddm, dd))
    } else {
        None
    };
    c.roundtrip()?;
    if !c.formats.contains(&wl_shm::FORMAT_XRGB8888) {
        return Err(Error::Other("wl_shm does not offer XRGB8888".into()));
    }

    // Toplevel.
    let surface = c.new_id(Iface::Surface);
    c.send(Message::new(compositor, wl_compositor::req::CREATE_SURFACE).object(surface))?;
    let xdg_surf = c.new_id(Iface::XdgSurface);
    c.send(
        Message::new(wm_base, xdg_wm_base::req::GET_XDG_SURFACE)
            .object(xdg_surf)
            .object(surface),
    )?;
    let toplevel = c.new_id(Iface::Toplevel);
    c.send(Message::new(xdg_surf, xdg_surface::req::GET_TOPLEVEL).object(toplevel))?;
    c.send(Message::new(toplevel, xdg_toplevel::req::SET_TITLE).string(&opts.title))?;
    c.send(Message::new(toplevel, xdg_toplevel::req::SET_APP_ID).string("qvm-wl-demo"))?;
    c.send(Message::new(surface, wl_surface::req::COMMIT))?;
    c.wait("the first xdg_surface.configure", ROUNDTRIP_TIMEOUT, |c| {
        c.configured
    })?;

    // Two XRGB8888 buffers in one allocation / pool.
    let (w, h) = (opts.width, opts.height);
    let stride = w as usize * 4;
    let frame_bytes = stride * h as usize;
    let pool_size = i32::try_from(2 * frame_bytes)
        .map_err(|_| Error::Other("window too large for one wl_shm pool".into()))?;
    let mut alloc: Alloc =
        c.t.alloc(2 * frame_bytes)
            .map_err(io_err("allocate buffers"))?;
    let pool = c.new_id(Iface::ShmPool);
    c.send(
        Message::new(shm, wl_shm::req::CREATE_POOL)
            .object(pool)
            .fd(alloc.fd())
            .int(pool_size),
    )?;
    let mut buffers = [0u32; 2];
    for (i, b) in buffers.iter_mut().enumerate() {
        *b = c.new_id(Iface::Buffer(i));
        c.send(
            Message::new(pool, wl_shm_pool::req::CREATE_BUFFER)
                .object(*b)
                .int((i * frame_bytes) as i32)
                .int(w as i32)
                .int(h as i32)
                .int(stride as i32)
                .uint(wl_shm::FORMAT_XRGB8888),
        )?;
    }
    // The buffers keep the pool's memory alive.
    c.send(Message::new(pool, wl_shm_pool::req::DESTROY))?;
    c.objects.remove(&pool);
    c.buffer_busy = vec![false; 2];
    let mut heap = if opts.copy_path {
        vec![0u8; frame_bytes]
    } else {
        Vec::new()
    };

    let mut drawn = [false; 2];
    let start = Instant::now();
    for frame in 0..opts.frames {
        c.wait("a wl_buffer.release", ROUNDTRIP_TIMEOUT, |c| {
            c.buffer_busy.contains(&false)
        })?;
        let i = c
            .buffer_busy
            .iter()
            .position(|b| !b)
            .ok_or_else(|| Error::Other("no released buffer after the wait".into()))?;
        let dst = &mut alloc.as_mut_slice()[i * frame_bytes..][..frame_bytes];
        // The rectangle this frame changed (buffer coordinates).
        let mut rect = (0, 0, w, h);
        match opts.scene {
            Scene::Pattern if opts.copy_path => {
                pattern::draw(&mut heap, w, h, stride, frame);
                dst.copy_from_slice(&heap);
            }
            Scene::Pattern => pattern::draw(dst, w, h, stride, frame),
            Scene::Blink => {
                if !drawn[i] {
                    fill_rows(dst, stride, w, 0, h, |_| 0xff20_3040);
                    drawn[i] = true;
                } else {
                    rect = CURSOR;
                }
                let on = frame % 2 == 0;
                let (cx, cy, cw, ch) = CURSOR;
                for y in cy..(cy + ch).min(h) {
                    let row = &mut dst[y as usize * stride..][..w as usize * 4];
                    for x in cx..(cx + cw).min(w) {
                        let px = if on { 0xffff_ffffu32 } else { 0xff20_3040 };
                        row[x as usize * 4..][..4].copy_from_slice(&px.to_le_bytes());
                    }
                }
            }
            Scene::Scroll => {
                // Text-like stripes moving up 8 rows per frame.
                fill_rows(dst, stride, w, 0, h, |y| {
                    let line = (y + frame * 8) / 16;
                    if (y + frame * 8) % 16 < 12 && line % 3 != 0 {
                        0xffe0_e0e0
                    } else {
                        0xff10_1010
                    }
                });
            }
        }
        c.buffer_busy[i] = true;
        c.send(
            Message::new(surface, wl_surface::req::ATTACH)
                .object(buffers[i])
                .int(0)
                .int(0),
        )?;
        let damage = if compositor_v >= 4 {
            wl_surface::req::DAMAGE_BUFFER
        } else {
            wl_surface::req::DAMAGE
        };
        // wl_surface.damage is in surface coordinates, the same here (scale 1).
        c.send(
            Message::new(surface, damage)
                .int(rect.0 as i32)
                .int(rect.1 as i32)
                .int(rect.2 as i32)
                .int(rect.3 as i32),
        )?;
        let cb = c.new_id(Iface::Callback);
        c.send(Message::new(surface, wl_surface::req::FRAME).object(cb))?;
        c.send(Message::new(surface, wl_surface::req::COMMIT))?;
        c.flush()?;
        if frame == 0 {
            let _ = writeln!(out.lock(), "QVM-WL-READY");
        }
        if opts.warmup > 0 && frame == opts.warmup {
            // Then idle for a moment, so a sampler that lags behind our output (the bench's)
            // reads the host's counters while nothing runs.
            let _ = writeln!(out.lock(), "QVM-WL-WARM frame={frame} {}", busy_field());
            std::thread::sleep(Duration::from_secs(WARM_PAUSE_SECS));
        }
        c.wait("a frame callback", ROUNDTRIP_TIMEOUT, |c| {
            c.take_callback(cb)
        })?;
        if c.closed {
            break;
        }
    }
    let report = Report {
        frames: opts.frames,
        secs: start.elapsed().as_secs_f64(),
    };
    let busy = if opts.warmup > 0 {
        format!(" {}", busy_field())
    } else {
        String::new()
    };
    let _ = writeln!(
        out.lock(),
        "QVM-WL-HOLD frame={} secs={}{busy}",
        opts.frames - 1,
        opts.hold
    );

    // Clipboard: own the selection for the hold period / fetch the current one.
    if let (Some(text), Some((ddm, dd))) = (&opts.set_selection, data_device) {
        c.selection_text = Some(text.clone());
        let source = c.new_id(Iface::DataSource);
        c.send(Message::new(ddm, wl_data_device_manager::req::CREATE_DATA_SOURCE).object(source))?;
        for mime in TEXT_MIMES {
            c.send(Message::new(source, wl_data_source::req::OFFER).string(mime))?;
        }
        let serial = c.last_serial;
        c.send(
            Message::new(dd, wl_data_device::req::SET_SELECTION)
                .object(source)
                .uint(serial),
        )?;
        c.roundtrip()?;
        if c.source_cancelled {
            return Err(Error::Other(
                "the compositor cancelled our selection".into(),
            ));
        }
        let _ = writeln!(out.lock(), "QVM-WL-SELECTION-SET");
    }
    let hold_until = Instant::now() + Duration::from_secs_f64(opts.hold);
    if opts.get_selection {
        let deadline = hold_until.max(Instant::now() + Duration::from_secs_f64(opts.wait));
        match get_selection(&mut c, deadline)? {
            Some(text) => {
                let _ = writeln!(out.lock(), "QVM-WL-SELECTION {text}");
            }
            None => {
                let _ = writeln!(out.lock(), "QVM-WL-SELECTION-NONE");
            }
        }
    }
    while !c.closed {
        let now = Instant::now();
        if now >= hold_until {
            break;
        }
        c.dispatch(hold_until - now)?;
    }
    c.flush()?;
    Ok(report)
}

/// Seconds `--warmup` idles after its marker.
pub const WARM_PAUSE_SECS: u64 = 5;

/// `busy_ms=N`: CPU time the whole machine spent not idle (every process and the kernel, from
/// /proc/stat), for `--warmup` markers: in a guest, the guest's CPU.
fn busy_field() -> String {
    let ms = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(busy * 1000 / hz)
    });
    format!("busy_ms={}", ms.unwrap_or(0))
}

/// Fills rows `y0..y1` of an XRGB buffer, each with one colour.
fn fill_rows(buf: &mut [u8], stride: usize, w: u32, y0: u32, y1: u32, colour: impl Fn(u32) -> u32) {
    for y in y0..y1 {
        let px = colour(y).to_le_bytes();
        let row = &mut buf[y as usize * stride..][..w as usize * 4];
        for p in row.chunks_exact_mut(4) {
            p.copy_from_slice(&px);
        }
    }
}

/// `--list-globals` / `--bind-name`: no window.
fn registry_only(c: &mut Client, opts: &Options) -> Result<Report, Error> {
    let out = io::stdout();
    if opts.list_globals {
        for g in &c.globals {
            let _ = writeln!(
                out.lock(),
                "QVM-WL-GLOBAL {} {} {}",
                g.interface,
                g.version,
                g.name
            );
        }
    }
    if let Some((name, iface)) = &opts.bind_name {
        let id = c.new_id(Iface::Callback);
        c.send(
            Message::new(REGISTRY_ID, wl_registry::req::BIND)
                .uint(*name)
                .string(iface)
                .uint(1)
                .object(id),
        )?;
        c.roundtrip()?;
        let _ = writeln!(out.lock(), "QVM-WL-BIND ok");
    }
    Ok(Report {
        frames: 0,
        secs: 0.0,
    })
}

/// Waits for the selection the compositor announces when this client gets keyboard focus
/// (exactly one `wl_data_device.selection`), and reads it through a pipe if it offers text.
/// None: the compositor said there is no selection (`selection(null)`; a gated VM is told so
/// too), which ends the wait at once instead of at the deadline.
fn get_selection(c: &mut Client, deadline: Instant) -> Result<Option<String>, Error> {
    let (offer, mime) = loop {
        match c.selection {
            Some(Some(offer)) => {
                let mimes = c.offers.get(&offer).cloned().unwrap_or_default();
                match TEXT_MIMES.iter().find(|m| mimes.iter().any(|x| x == *m)) {
                    Some(m) => break (offer, *m),
                    None => {
                        return Err(Error::Other(format!(
                            "the selection offers no text type (offers {mimes:?})"
                        )))
                    }
                }
            }
            Some(None) => return Ok(None),
            None => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout(
                "a selection (wl_data_device.selection needs keyboard focus)".into(),
            ));
        }
        c.dispatch(deadline - now)?;
    };
    let pipe = c.t.pipe_read().map_err(io_err("create clipboard pipe"))?;
    c.send(
        Message::new(offer, wl_data_offer::req::RECEIVE)
            .string(mime)
            .fd(pipe.fd_to_send()),
    )?;
    drop(pipe.remote);
    let fd = pipe.local.as_raw_fd();
    let mut data = Vec::new();
    loop {
        // Keep serving the connection too: the selection may be our own source.
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: c.t.poll_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout("the selection data".into()));
        }
        let ms = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io("poll".into(), e));
        }
        if pfds[1].revents != 0 {
            c.dispatch(Duration::ZERO)?;
        }
        if pfds[0].revents != 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a live buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io("read selection".into(), e));
            }
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n as usize]);
        }
    }
    c.send(Message::new(offer, wl_data_offer::req::DESTROY))?;
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}
