//! The `qvm-wl-demo` client: one xdg toplevel showing [`crate::pattern`] frames.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::pattern;
use crate::protocol::*;
use crate::transport::{self, Alloc, Transport, MAX_FDS};
use crate::wire::{self, Event, Message, WireError, MAX_MESSAGE_LEN};

/// Command line of `qvm-wl-demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub title: String,
    pub hold: f64,
    pub copy_path: bool,
    pub transport: Option<String>,
    pub ctx_name: Option<String>,
    pub set_selection: Option<String>,
    pub get_selection: bool,
    /// How long `--get-selection` waits for a selection and its data, in seconds.
    pub wait: f64,
    /// Print the registry's globals (`QVM-WL-GLOBAL <interface> <version> <name>`) and exit.
    pub list_globals: bool,
    /// Bind global name N as `interface` (default `weston_screenshooter`), version 1, then
    /// round-trip and exit: `QVM-WL-BIND ok`, or the error (a refused bind hangs up).
    pub bind_name: Option<(u32, String)>,
    /// What each frame changes (the proxy bench's workloads).
    pub scene: Scene,
    /// Print `QVM-WL-WARM frame=K` once frame K is committed (0 = never): the bench measures
    /// from there, past the first uses of each buffer.
    pub warmup: u32,
}

/// What each frame draws and damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// Every pixel changes (the pattern the screenshot checks verify); full damage.
    Pattern,
    /// A text cursor blinks: a 2×20 rectangle toggles; only it is damaged (the first use of
    /// each buffer draws and damages everything).
    Blink,
    /// The content scrolls by 8 rows: every row is redrawn; full damage.
    Scroll,
}

/// Where the blinking cursor is.
pub const CURSOR: (u32, u32, u32, u32) = (100, 100, 2, 20);

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 320,
            height: 240,
            frames: 60,
            title: "qvm-wl-demo".into(),
            hold: 0.0,
            copy_path: false,
            transport: None,
            ctx_name: None,
            set_selection: None,
            get_selection: false,
            wait: 10.0,
            list_globals: false,
            bind_name: None,
            scene: Scene::Pattern,
            warmup: 0,
        }
    }
}

pub const USAGE: &str = "usage: qvm-wl-demo [--width W] [--height H] [--frames N] [--title T] \
[--hold SECS] [--copy-path] [--transport wl0|socket|socket+wl0] [--ctx-name NAME] \
[--set-selection TEXT] [--get-selection] [--wait SECS] [--list-globals] [--bind-name N[:INTERFACE]] \
[--scene pattern|blink|scroll] [--warmup K]";

impl Options {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        fn num<T: std::str::FromStr>(s: String, flag: &str) -> Result<T, String> {
            s.parse().map_err(|_| format!("{flag}: bad value {s:?}"))
        }
        let mut o = Options::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let mut value = || v_or(&inline, &mut it, &flag);
            match flag.as_str() {
                "--width" => o.width = num(value()?, &flag)?,
                "--height" => o.height = num(value()?, &flag)?,
                "--frames" => o.frames = num(value()?, &flag)?,
                "--title" => o.title = value()?,
                "--hold" => o.hold = num(value()?, &flag)?,
                "--transport" => o.transport = Some(value()?),
                "--ctx-name" => o.ctx_name = Some(value()?),
                "--set-selection" => o.set_selection = Some(value()?),
                "--copy-path" => o.copy_path = true,
                "--warmup" => o.warmup = num(value()?, &flag)?,
                "--scene" => {
                    o.scene = match value()?.as_str() {
                        "pattern" => Scene::Pattern,
                        "blink" => Scene::Blink,
                        "scroll" => Scene::Scroll,
                        other => {
                            return Err(format!("--scene {other:?}: use pattern, blink or scroll"))
                        }
                    }
                }
                "--get-selection" => o.get_selection = true,
                "--wait" => o.wait = num(value()?, &flag)?,
                "--list-globals" => o.list_globals = true,
                "--bind-name" => {
                    let v = value()?;
                    let (n, iface) = v.split_once(':').unwrap_or((&v, "weston_screenshooter"));
                    if iface.is_empty() {
                        return Err("--bind-name N:INTERFACE needs an interface".into());
                    }
                    o.bind_name = Some((num(n.to_string(), &flag)?, iface.to_string()));
                }
                "-h" | "--help" => return Err(USAGE.into()),
                _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
            }
        }
        if o.width == 0 || o.height == 0 || o.width > 8192 || o.height > 8192 {
            return Err("width and height must be 1..=8192".into());
        }
        if o.frames == 0 {
            return Err("--frames must be at least 1".into());
        }
        if !(o.wait >= 0.0 && o.wait.is_finite()) {
            return Err("--wait must be a non-negative number of seconds".into());
        }
        if !(o.hold >= 0.0 && o.hold.is_finite()) {
            return Err("--hold must be a non-negative number of seconds".into());
        }
        if let Some(t) = &o.transport {
            if t != "wl0" && t != "socket" && t != "socket+wl0" {
                return Err(format!(
                    "--transport must be wl0, socket or socket+wl0, not {t:?}"
                ));
            }
        }
        Ok(o)
    }
}

fn v_or(
    inline: &Option<String>,
    it: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<String, String> {
    match inline {
        Some(v) => Ok(v.clone()),
        None => it.next().ok_or_else(|| format!("{flag} needs a value")),
    }
}

/// Why the demo failed.
#[derive(Debug)]
pub enum Error {
    Io(String, io::Error),
    Wire(WireError),
    /// `wl_display.error`.
    Protocol {
        object: u32,
        interface: String,
        code: u32,
        message: String,
    },
    /// The compositor hung up.
    Disconnected,
    Timeout(String),
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Wire(e) => write!(f, "{e}"),
            Error::Protocol {
                object,
                interface,
                code,
                message,
            } => write!(
                f,
                "wayland protocol error on {interface}@{object} code {code}: {message}"
            ),
            Error::Disconnected => write!(f, "compositor closed the connection"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Wire(e)
    }
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::Io(what.to_string(), e)
}

/// Client-side object kinds, for dispatching events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Iface {
    Display,
    Registry,
    Callback,
    Compositor,
    Shm,
    ShmPool,
    Buffer(usize),
    Surface,
    WmBase,
    XdgSurface,
    Toplevel,
    Seat,
    DataDeviceManager,
    DataDevice,
    DataOffer,
    DataSource,
}

impl Iface {
    fn name(self) -> &'static str {
        match self {
            Iface::Display => "wl_display",
            Iface::Registry => "wl_registry",
            Iface::Callback => "wl_callback",
            Iface::Compositor => "wl_compositor",
            Iface::Shm => "wl_shm",
            Iface::ShmPool => "wl_shm_pool",
            Iface::Buffer(_) => "wl_buffer",
            Iface::Surface => "wl_surface",
            Iface::WmBase => "xdg_wm_base",
            Iface::XdgSurface => "xdg_surface",
            Iface::Toplevel => "xdg_toplevel",
            Iface::Seat => "wl_seat",
            Iface::DataDeviceManager => "wl_data_device_manager",
            Iface::DataDevice => "wl_data_device",
            Iface::DataOffer => "wl_data_offer",
            Iface::DataSource => "wl_data_source",
        }
    }
}

#[derive(Debug, Clone)]
struct Global {
    name: u32,
    interface: String,
    version: u32,
}

/// The mime types we offer and accept for text.
pub const TEXT_MIMES: [&str; 2] = ["text/plain;charset=utf-8", "text/plain"];

/// Requests are batched into chunks of at most this many bytes (one virtio buffer).
const MAX_CHUNK: usize = MAX_MESSAGE_LEN;
const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection plus the little state the demo tracks.
pub struct Client {
    t: Box<dyn Transport>,
    inbuf: Vec<u8>,
    infds: VecDeque<OwnedFd>,
    out: Vec<u8>,
    outfds: Vec<RawFd>,
    next_id: u32,
    objects: HashMap<u32, Iface>,
    globals: Vec<Global>,
    done_callbacks: Vec<u32>,
    formats: Vec<u32>,
    buffer_busy: Vec<bool>,
    configured: bool,
    closed: bool,
    last_serial: u32,
    toplevel_size: (i32, i32),
    offers: HashMap<u32, Vec<String>>,
    selection: Option<Option<u32>>,
    selection_text: Option<String>,
    source_cancelled: bool,
    verbose: bool,
}

impl Client {
    pub fn new(t: Box<dyn Transport>) -> Self {
        let mut objects = HashMap::new();
        objects.insert(DISPLAY_ID, Iface::Display);
        Client {
            t,
            inbuf: Vec::new(),
            infds: VecDeque::new(),
            out: Vec::new(),
            outfds: Vec::new(),
            next_id: DISPLAY_ID + 1,
            objects,
            globals: Vec::new(),
            done_callbacks: Vec::new(),
            formats: Vec::new(),
            buffer_busy: Vec::new(),
            configured: false,
            closed: false,
            last_serial: 0,
            toplevel_size: (0, 0),
            offers: HashMap::new(),
            selection: None,
            selection_text: None,
            source_cancelled: false,
            verbose: std::env::var_os("QVM_WL_DEBUG").is_some(),
        }
    }

    fn new_id(&mut self, iface: Iface) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.objects.insert(id, iface);
        id
    }

    /// Queue a request; requests carrying fds are flushed at once so the caller may
    /// close the fds afterwards.
    fn send(&mut self, msg: Message) -> Result<(), Error> {
        let (bytes, fds) = msg.finish();
        if self.verbose {
            eprintln!("-> {:?} fds={fds:?}", &bytes[..8.min(bytes.len())]);
        }
        if self.out.len() + bytes.len() > MAX_CHUNK || self.outfds.len() + fds.len() > MAX_FDS {
            self.flush()?;
        }
        self.out.extend_from_slice(&bytes);
        self.outfds.extend_from_slice(&fds);
        if !fds.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.t.send(&self.out, &self.outfds);
        self.out.clear();
        self.outfds.clear();
        r.map_err(io_err("send to compositor"))
    }

    /// Flush, wait up to `timeout` for input, read and dispatch it.
    fn dispatch(&mut self, timeout: Duration) -> Result<(), Error> {
        self.flush()?;
        let mut pfd = libc::pollfd {
            fd: self.t.poll_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Error::Io("poll".into(), e));
        }
        if n == 0 {
            return Ok(());
        }
        if pfd.revents & libc::POLLIN == 0 {
            return Err(Error::Disconnected);
        }
        let open = self
            .t
            .recv(&mut self.inbuf, &mut self.infds)
            .map_err(io_err("receive from compositor"))?;
        while let Some(ev) = wire::take_message(&mut self.inbuf)? {
            self.handle(ev)?;
        }
        if !open {
            return Err(Error::Disconnected);
        }
        Ok(())
    }

    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(what.into()));
            }
            self.dispatch(deadline - now)?;
        }
        Ok(())
    }

    fn take_callback(&mut self, id: u32) -> bool {
        match self.done_callbacks.iter().position(|&c| c == id) {
            Some(i) => {
                self.done_callbacks.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn roundtrip(&mut self) -> Result<(), Error> {
        let cb = self.new_id(Iface::Callback);
        self.send(Message::new(DISPLAY_ID, wl_display::req::SYNC).object(cb))?;
        self.wait("wl_display.sync", ROUNDTRIP_TIMEOUT, |c| {
            c.take_callback(cb)
        })
    }

    fn handle(&mut self, ev: Event) -> Result<(), Error> {
        let Some(&iface) = self.objects.get(&ev.object) else {
            // An event for an object we already destroyed: ignore.
            return Ok(());
        };
        if self.verbose {
            eprintln!("<- {}@{}.{}", iface.name(), ev.object, ev.opcode);
        }
        let mut r = ev.reader();
        match (iface, ev.opcode) {
            (Iface::Display, wl_display::ev::ERROR) => {
                let object = r.uint()?;
                let code = r.uint()?;
                let message = r.string()?.unwrap_or_default();
                let interface = self
                    .objects
                    .get(&object)
                    .map_or("unknown", |i| i.name())
                    .to_string();
                return Err(Error::Protocol {
                    object,
                    interface,
                    code,
                    message,
                });
            }
            (Iface::Display, wl_display::ev::DELETE_ID) => {
                let id = r.uint()?;
                self.objects.remove(&id);
                self.offers.remove(&id);
            }
            (Iface::Registry, wl_registry::ev::GLOBAL) => {
                let name = r.uint()?;
                let interface = r.string()?.unwrap_or_default();
                let version = r.uint()?;
                self.globals.push(Global {
                    name,
                    interface,
                    version,
                });
            }
            (Iface::Registry, wl_registry::ev::GLOBAL_REMOVE) => {
                let name = r.uint()?;
                self.globals.retain(|g| g.name != name);
            }
            (Iface::Callback, wl_callback::ev::DONE) => self.done_callbacks.push(ev.object),
            (Iface::Shm, wl_shm::ev::FORMAT) => self.formats.push(r.uint()?),
            (Iface::Buffer(i), wl_buffer::ev::RELEASE) => self.buffer_busy[i] = false,
            (Iface::WmBase, xdg_wm_base::ev::PING) => {
                let serial = r.uint()?;
                self.send(Message::new(ev.object, xdg_wm_base::req::PONG).uint(serial))?;
            }
            (Iface::XdgSurface, xdg_surface::ev::CONFIGURE) => {
                let serial = r.uint()?;
                self.last_serial = serial;
                self.send(Message::new(ev.object, xdg_surface::req::ACK_CONFIGURE).uint(serial))?;
                self.configured = true;
            }
            (Iface::Toplevel, xdg_toplevel::ev::CONFIGURE) => {
                self.toplevel_size = (r.int()?, r.int()?);
            }
            (Iface::Toplevel, xdg_toplevel::ev::CLOSE) => self.closed = true,
            (Iface::DataDevice, wl_data_device::ev::DATA_OFFER) => {
                let id = r.uint()?;
                self.objects.insert(id, Iface::DataOffer);
                self.offers.insert(id, Vec::new());
            }
            (Iface::DataDevice, wl_data_device::ev::SELECTION) => {
                let id = r.uint()?;
                self.selection = Some((id != 0).then_some(id));
            }
            (Iface::DataOffer, wl_data_offer::ev::OFFER) => {
                let mime = r.string()?.unwrap_or_default();
                self.offers.entry(ev.object).or_default().push(mime);
            }
            (Iface::DataSource, wl_data_source::ev::SEND) => {
                let _mime = r.string()?;
                let fd = self.infds.pop_front().ok_or_else(|| {
                    Error::Other("wl_data_source.send arrived without an fd".into())
                })?;
                let text = self.selection_text.clone().unwrap_or_default();
                if let Err(e) = write_all_fd(fd.as_raw_fd(), text.as_bytes()) {
                    eprintln!("qvm-wl-demo: writing selection: {e}");
                }
            }
            (Iface::DataSource, wl_data_source::ev::CANCELLED) => self.source_cancelled = true,
            _ => {}
        }
        Ok(())
    }

    fn global(&self, interface: &str) -> Option<Global> {
        self.globals
            .iter()
            .find(|g| g.interface == interface)
            .cloned()
    }

    /// Bind `interface` at `min(advertised, supported)`; returns (id, version).
    fn bind(
        &mut self,
        interface: &'static str,
        supported: u32,
        iface: Iface,
    ) -> Result<(u32, u32), Error> {
        let g = self
            .global(interface)
            .ok_or_else(|| Error::Other(format!("compositor does not advertise {interface}")))?;
        let version = g.version.min(supported);
        let id = self.new_id(iface);
        self.send(
            Message::new(REGISTRY_ID, wl_registry::req::BIND)
                .uint(g.name)
                .string(interface)
                .uint(version)
                .object(id),
        )?;
        Ok((id, version))
    }
}

/// The registry is always the first object we create.
const REGISTRY_ID: u32 = DISPLAY_ID + 1;

/// Write everything, at most one page per write: a wl0 pipe vfd turns each write into
/// one VFD_SEND, which the driver caps (EMSGSIZE) well above a page but below large texts.
fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let chunk = data.len().min(4096);
        // SAFETY: writing from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), chunk) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

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
        let i = c.buffer_busy.iter().position(|b| !b).unwrap();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parse_options() {
        let o = parse("--width 640 --height=480 --frames 3 --title hi --hold 2.5 --copy-path --transport socket").unwrap();
        assert_eq!((o.width, o.height, o.frames), (640, 480, 3));
        assert_eq!(o.title, "hi");
        assert_eq!(o.hold, 2.5);
        assert!(o.copy_path);
        assert_eq!(o.transport.as_deref(), Some("socket"));
        assert_eq!(parse("").unwrap(), Options::default());
        assert!(parse("--width").is_err());
        assert!(parse("--width 0").is_err());
        assert!(parse("--frames 0").is_err());
        assert!(parse("--hold -1").is_err());
        assert!(parse("--transport tcp").is_err());
        assert!(parse("--bogus").is_err());
        let o = parse("--list-globals --bind-name 18").unwrap();
        assert!(o.list_globals);
        assert_eq!(o.bind_name, Some((18, "weston_screenshooter".into())));
        let o = parse("--bind-name=7:wl_shm").unwrap();
        assert_eq!(o.bind_name, Some((7, "wl_shm".into())));
        assert!(parse("--bind-name x").is_err());
        assert!(parse("--bind-name 7:").is_err());
        assert_eq!(parse("--get-selection --wait 90").unwrap().wait, 90.0);
        assert!(parse("--wait -1").is_err());
    }
}
