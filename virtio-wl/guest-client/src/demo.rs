//! The `qvm-wl-demo` client: one xdg toplevel showing [`crate::pattern`] frames.
//!
//! This file is the Wayland connection and the little state the demo tracks ([`Client`]);
//! `demo/options.rs` is its command line ([`Options`]) and `demo/run.rs` what a run does
//! ([`run`]): bind the globals, open the toplevel, draw and present the frames, hold, and
//! serve or read the clipboard.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::protocol::*;
use crate::transport::{Transport, MAX_FDS};
use crate::wire::{self, Event, Message, WireError, MAX_MESSAGE_LEN};

mod options;
mod run;

pub use options::{Options, Scene, USAGE};
pub use run::{run, run_with, Report, CURSOR, TEXT_MIMES, WARM_PAUSE_SECS};

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
