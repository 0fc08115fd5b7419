//! The per-VM Wayland policy: the device sees every byte between a guest's Wayland client and
//! the compositor, so it is where a VM is tagged and contained.
//!
//! Each context (NEW_CTX) gets a [`CtxPolicy`] that reassembles both byte streams into whole
//! Wayland messages (`u32 object; u32 size << 16 | opcode; args`), tracks the few object ids it
//! needs (registries, shells, toplevels, data devices) and rewrites or drops messages:
//!
//! - **Tags.** `xdg_toplevel.set_title(s)` (and `zxdg_toplevel_v6`, `wl_shell_surface`) becomes
//!   `"[<name>] " + s`; `set_app_id(s)` (`wl_shell_surface.set_class`) becomes
//!   `"qvm.<name>." + s`. A rewritten message stays within 4096 bytes (libwayland's message
//!   limit; or the original size if that was larger): the guest's string is cut at a UTF-8
//!   boundary if needed.
//! - **Globals.** `wl_registry.global` events for interfaces not on the allowlist
//!   ([`DEFAULT_ALLOWED_GLOBALS`] plus the VM's `allow_globals`) are dropped, and so is their
//!   `global_remove`. A `wl_registry.bind` of a name the guest was never shown (hidden, never
//!   announced, or announced for another interface) is not forwarded: the context is hung up.
//! - **Clipboard** (`clipboard = gated`, the default): the guest does not see the host's
//!   selection until the host allows one paste ([`PasteGate`]). The compositor creates a
//!   selection's `wl_data_offer` with `wl_data_device.data_offer(new_id)` *before* it sends
//!   `selection(id)`, so the device cannot decide at creation time; it holds back the
//!   `data_offer` event and the offer's own events (mime types) until the offer's fate is
//!   known: `selection(id)` with the gate open releases them in order, right before the
//!   selection; otherwise the guest gets `selection(null)` and never learns the offer exists.
//!   The newest such gated offer per data device is kept alive: if the host allows a paste
//!   later, it is delivered (`data_offer`, its mime types, `selection`) in front of the next
//!   bytes the compositor sends to that context (the key press that pastes, at the latest).
//!   Superseded gated offers are destroyed on the guest's behalf (`wl_data_offer.destroy`
//!   prepended to its next request). A guest request on an offer it was never shown hangs up
//!   the context. Drag and drop into the VM is off in gated mode (`enter` carries a null
//!   offer); the primary selection (middle click) never reaches the guest in gated mode (the
//!   one-shot paste is for the clipboard only). The guest's own selection (guest -> host copy)
//!   is untouched, but the guest sees its own selection as null, like any other.
//!
//! Ids the compositor allocates (>= 0xff000000) are only tracked for data offers. Messages for
//! untracked objects pass untouched (their size is in the header). Tracked ids are forgotten at
//! `wl_display.delete_id`, which the guest must receive before it may reuse an id.
//!
//! Violations (a malformed stream: size < 8, not a multiple of 4, object 0, bad arguments in a
//! message we inspect; a refused bind; a touched hidden offer) make the device hang up the
//! context: the client dies, the VM lives.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::WlMetrics;

/// How long an `allow_paste` stays valid if no selection reaches the guest.
pub const PASTE_WINDOW: Duration = Duration::from_secs(30);
/// libwayland's largest message: rewritten messages stay within it.
pub const MAX_MESSAGE: usize = 4096;
/// The header's 16-bit size field: no message is larger.
const MAX_WIRE_MESSAGE: usize = 0xfffc;
/// Bytes of events held back per offer (mime types); beyond it the offer is hidden for good.
const MAX_OFFER_BYTES: usize = 16 << 10;
/// Offers tracked per context (pending, held, or waiting for their destroy to be sent).
const MAX_OFFERS: usize = 256;
/// Ids at and above this are allocated by the compositor.
const SERVER_ID_BASE: u32 = 0xff00_0000;
const DISPLAY: u32 = 1;

/// Globals a guest sees unless the VM's config adds more: the core, xdg-shell and the
/// extensions ordinary apps use. Everything else is hidden: screen capture
/// (`zwlr_screencopy_manager_v1`, `ext_image_copy_capture*`, `weston_screenshooter`,
/// `weston_capture_v1`), input injection (`zwp_virtual_keyboard_manager_v1`,
/// `zwlr_virtual_pointer_manager_v1`, `zwp_input_method_manager_v2`), clipboard snooping
/// (`zwlr_data_control_manager_v1`, `ext_data_control_manager_v1`), desktop-shell roles
/// (`zwlr_layer_shell_v1`, `weston_desktop_shell`), window lists (`zwlr_foreign_toplevel_*`,
/// `ext_foreign_toplevel_list_v1`), output/gamma control, session lock, shortcut inhibitors,
/// dmabuf (no virtio-gpu here), compositor debugging (`weston_debug_v1`), ...
pub const DEFAULT_ALLOWED_GLOBALS: &[&str] = &[
    "wl_compositor",
    "wl_subcompositor",
    "wl_shm",
    "wl_seat",
    "wl_output",
    "wl_data_device_manager",
    "xdg_wm_base",
    "zxdg_shell_v6",
    "wl_shell",
    "wp_viewporter",
    "wp_presentation",
    "zxdg_decoration_manager_v1",
    "zwp_primary_selection_device_manager_v1",
    "zwp_text_input_manager_v3",
    "wp_fractional_scale_manager_v1",
    "xdg_activation_v1",
    "zxdg_output_manager_v1",
    "wp_single_pixel_buffer_manager_v1",
    "zwp_pointer_constraints_v1",
    "zwp_relative_pointer_manager_v1",
    "zwp_pointer_gestures_v1",
    "wp_cursor_shape_manager_v1",
    "zwp_idle_inhibit_manager_v1",
    "zwp_input_timestamps_manager_v1",
    "wp_content_type_manager_v1",
    "wp_tearing_control_manager_v1",
    "wp_alpha_modifier_v1",
    "xdg_wm_dialog_v1",
    "xdg_toplevel_icon_manager_v1",
    "zwp_tablet_manager_v2",
];

/// Whether the guest may read the host's clipboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clipboard {
    /// Only after the host allows one paste ([`PasteGate::allow`]).
    #[default]
    Gated,
    /// Always (no gating).
    Open,
}

/// The one-shot "paste allowed" flag, shared between the device and whoever the host user
/// talks to (the VMM's API: `PUT /actions {"action": "allow_paste"}`). Armed by [`allow`],
/// consumed by the next clipboard selection delivered to the guest, or expired after
/// [`PASTE_WINDOW`]. Its deadline is an atomic, so the per-message check is one load.
///
/// [`allow`]: PasteGate::allow
#[derive(Clone, Default)]
pub struct PasteGate(Arc<AtomicU64>);

/// Nanoseconds since the first use, plus one (0 means "not armed").
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

impl PasteGate {
    /// Lets one selection through within `window`.
    pub fn allow(&self, window: Duration) {
        self.0.store(
            now_ns().saturating_add(window.as_nanos() as u64),
            Ordering::SeqCst,
        );
    }

    /// Whether a paste is allowed now (not consumed).
    pub fn armed(&self) -> bool {
        let d = self.0.load(Ordering::SeqCst);
        d != 0 && now_ns() < d
    }

    /// Consumes the flag: true if a paste was allowed.
    pub fn take(&self) -> bool {
        let d = self.0.swap(0, Ordering::SeqCst);
        d != 0 && now_ns() < d
    }
}

impl std::fmt::Debug for PasteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasteGate(armed: {})", self.armed())
    }
}

impl PartialEq for PasteGate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for PasteGate {}

/// The policy of one VM (the device's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WlPolicy {
    /// The VM's label in titles and app ids: 1 to 32 printable characters, no `]`.
    pub name: String,
    /// Globals allowed on top of [`DEFAULT_ALLOWED_GLOBALS`].
    pub allow_globals: Vec<String>,
    pub clipboard: Clipboard,
    pub paste: PasteGate,
}

impl WlPolicy {
    pub fn new(name: &str) -> WlPolicy {
        WlPolicy {
            name: name.into(),
            allow_globals: Vec::new(),
            clipboard: Clipboard::Gated,
            paste: PasteGate::default(),
        }
    }

    /// Whether `name` can label a VM.
    pub fn valid_name(name: &str) -> bool {
        let n = name.chars().count();
        (1..=32).contains(&n) && !name.contains(']') && !name.chars().any(char::is_control)
    }
}

/// What the contexts of one device share.
#[derive(Debug)]
pub struct Rules {
    title_tag: Vec<u8>,
    app_id_tag: Vec<u8>,
    allowed: HashSet<String>,
    clipboard: Clipboard,
    paste: PasteGate,
}

impl Rules {
    pub fn new(p: &WlPolicy) -> Rules {
        let mut allowed: HashSet<String> = DEFAULT_ALLOWED_GLOBALS
            .iter()
            .map(|s| s.to_string())
            .collect();
        allowed.extend(p.allow_globals.iter().cloned());
        Rules {
            title_tag: format!("[{}] ", p.name).into_bytes(),
            app_id_tag: format!("qvm.{}.", p.name).into_bytes(),
            allowed,
            clipboard: p.clipboard,
            paste: p.paste.clone(),
        }
    }
}

/// Why a context is hung up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("malformed Wayland stream from the {0}: {1}")]
    Malformed(&'static str, String),
    #[error("the guest bound global name {name} ({interface:?}), which it was never offered")]
    RefusedBind { name: u32, interface: String },
    #[error("the guest used data offer {0:#x}, which it was never shown")]
    HiddenOffer(u32),
    #[error("too much state: {0}")]
    Overflow(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Registry,
    XdgWmBase,
    XdgSurface,
    XdgToplevel,
    ZxdgShell,
    ZxdgSurface,
    ZxdgToplevel,
    WlShell,
    WlShellSurface,
    DataDeviceManager,
    DataDevice,
    PrimaryManager,
    PrimaryDevice,
}

impl Kind {
    /// The globals whose objects we follow.
    fn of_global(interface: &[u8]) -> Option<Kind> {
        Some(match interface {
            b"xdg_wm_base" => Kind::XdgWmBase,
            b"zxdg_shell_v6" => Kind::ZxdgShell,
            b"wl_shell" => Kind::WlShell,
            b"wl_data_device_manager" => Kind::DataDeviceManager,
            b"zwp_primary_selection_device_manager_v1" => Kind::PrimaryManager,
            _ => return None,
        })
    }
}

#[derive(Debug)]
enum OfferState {
    /// Created, fate unknown: its events are held back.
    Pending(Vec<u8>),
    /// The gated selection of its device: could still be released by a paste.
    Held(Vec<u8>),
    /// Hidden for good; its destroy is sent with the guest's next request.
    Dead,
}

#[derive(Debug)]
struct Offer {
    device: u32,
    primary: bool,
    state: OfferState,
}

/// One context's view of the protocol.
#[derive(Debug)]
pub struct CtxPolicy {
    rules: Arc<Rules>,
    /// Partial messages: guest -> compositor, compositor -> guest.
    out_partial: Vec<u8>,
    in_partial: Vec<u8>,
    objects: HashMap<u32, Kind>,
    /// Globals shown to the guest: name -> interface.
    shown: HashMap<u32, Vec<u8>>,
    hidden: HashSet<u32>,
    offers: HashMap<u32, Offer>,
    /// fds of guest sends whose bytes are all still partial (they go with the next bytes).
    pub held_fds: Vec<std::os::fd::OwnedFd>,
    /// Host vfds announced to the guest whose VFD_RECV had no whole message yet.
    pub held_ids: Vec<u32>,
}

/// A view of one whole message.
struct Msg<'a> {
    bytes: &'a [u8],
    object: u32,
    opcode: u16,
}

impl<'a> Msg<'a> {
    fn word(&self, at: usize) -> Option<u32> {
        let b = self.bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
    /// Argument `i` (counting u32 words after the header) when every earlier one is a word.
    fn arg(&self, i: usize) -> Option<u32> {
        self.word(8 + 4 * i)
    }
    /// A string at byte offset `at`: (content without NUL, offset after it). None: null.
    fn string(&self, at: usize) -> Result<(Option<&'a [u8]>, usize), String> {
        let len = self.word(at).ok_or("truncated string length")? as usize;
        if len == 0 {
            return Ok((None, at + 4));
        }
        let end = at + 4 + len;
        let padded = at + 4 + len.div_ceil(4) * 4;
        if padded > self.bytes.len() {
            return Err(format!("string of {len} bytes overruns its message"));
        }
        if self.bytes[end - 1] != 0 {
            return Err("string without its NUL".into());
        }
        Ok((Some(&self.bytes[at + 4..end - 1]), padded))
    }
}

/// A message header's (object, opcode, size); callers have checked `b` holds 8 bytes.
fn header(b: &[u8]) -> (u32, u16, usize) {
    let le_u32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let (object, w) = (le_u32(0), le_u32(4));
    (object, (w & 0xffff) as u16, (w >> 16) as usize)
}

fn push_msg(out: &mut Vec<u8>, object: u32, opcode: u16, args: &[u32]) {
    let size = 8 + 4 * args.len() as u32;
    out.extend_from_slice(&object.to_le_bytes());
    out.extend_from_slice(&((size << 16) | u32::from(opcode)).to_le_bytes());
    for a in args {
        out.extend_from_slice(&a.to_le_bytes());
    }
}

/// `msg` (a one-string-argument request) with `tag` put in front of its string, within
/// `max(MAX_MESSAGE, msg.len())` bytes.
fn tag_string(msg: &Msg<'_>, tag: &[u8]) -> Result<Vec<u8>, String> {
    let (s, end) = msg.string(8)?;
    if end != msg.bytes.len() {
        return Err("trailing bytes after the string".into());
    }
    let Some(s) = s else {
        // A null string is a protocol error the compositor reports; leave it to it.
        return Ok(msg.bytes.to_vec());
    };
    let max = MAX_MESSAGE.max(msg.bytes.len());
    // header + length word + tag + s + NUL, padded.
    let room = max - 12 - 1 - tag.len();
    let mut cut = s.len().min(room);
    while cut > 0 && cut < s.len() && s[cut] & 0xc0 == 0x80 {
        cut -= 1;
    }
    let s = &s[..cut];
    let len = tag.len() + s.len() + 1;
    let size = 12 + len.div_ceil(4) * 4;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&msg.object.to_le_bytes());
    out.extend_from_slice(&(((size as u32) << 16) | u32::from(msg.opcode)).to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(tag);
    out.extend_from_slice(s);
    out.resize(size, 0);
    Ok(out)
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Which direction a stream goes, for messages.
#[derive(Clone, Copy)]
enum Dir {
    Guest,
    Compositor,
}

impl CtxPolicy {
    pub fn new(rules: Arc<Rules>) -> CtxPolicy {
        CtxPolicy {
            rules,
            out_partial: Vec::new(),
            in_partial: Vec::new(),
            objects: HashMap::new(),
            shown: HashMap::new(),
            hidden: HashSet::new(),
            offers: HashMap::new(),
            held_fds: Vec::new(),
            held_ids: Vec::new(),
        }
    }

    fn gated(&self) -> bool {
        self.rules.clipboard == Clipboard::Gated
    }

    /// Guest bytes of one VFD_SEND: appends what goes to the compositor (whole messages,
    /// rewritten) to `out`, keeping a trailing partial message for the next call.
    pub fn guest_to_compositor(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        m: &WlMetrics,
    ) -> Result<(), Violation> {
        // Destroys of offers the guest never saw go first (a message boundary: `out` only
        // ever holds whole messages).
        self.flush_destroys(out);
        self.stream(Dir::Guest, data, out, m)
    }

    /// Compositor bytes of one recvmsg: appends what the guest gets (whole messages,
    /// filtered) to `out`.
    pub fn compositor_to_guest(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        m: &WlMetrics,
    ) -> Result<(), Violation> {
        self.stream(Dir::Compositor, data, out, m)
    }

    /// Bytes of a partial message kept (guest -> compositor, compositor -> guest).
    pub fn partial(&self) -> (usize, usize) {
        (self.out_partial.len(), self.in_partial.len())
    }

    fn stream(
        &mut self,
        dir: Dir,
        data: &[u8],
        out: &mut Vec<u8>,
        m: &WlMetrics,
    ) -> Result<(), Violation> {
        let from = match dir {
            Dir::Guest => "guest",
            Dir::Compositor => "compositor",
        };
        let mut buf = std::mem::take(match dir {
            Dir::Guest => &mut self.out_partial,
            Dir::Compositor => &mut self.in_partial,
        });
        let joined = !buf.is_empty();
        if joined {
            buf.extend_from_slice(data);
        }
        let src: &[u8] = if joined { &buf } else { data };
        let mut pos = 0;
        let mut result = Ok(());
        while src.len() - pos >= 8 {
            let (object, opcode, size) = header(&src[pos..]);
            if object == 0 {
                result = Err(Violation::Malformed(from, "a message for object 0".into()));
                break;
            }
            if size < 8 || size % 4 != 0 {
                result = Err(Violation::Malformed(
                    from,
                    format!("a message of {size} bytes (object {object}, opcode {opcode})"),
                ));
                break;
            }
            if src.len() - pos < size {
                break;
            }
            let msg = Msg {
                bytes: &src[pos..pos + size],
                object,
                opcode,
            };
            let r = match dir {
                Dir::Guest => self.request(&msg, out, m),
                Dir::Compositor => {
                    // A paste allowed after the selection was gated: deliver the held offer
                    // before the next event (the key press that pastes, at the latest), unless
                    // this is the offer machinery itself (a new selection supersedes it).
                    if !self.offers.is_empty()
                        && self.rules.paste.armed()
                        && !self.offer_related(&msg)
                    {
                        self.release_held(out, m);
                    }
                    self.event(&msg, out, m)
                }
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            pos += size;
        }
        debug_assert!(src.len() - pos < MAX_WIRE_MESSAGE + 8);
        let rest = if result.is_err() {
            // The context is hung up: nothing of it is kept.
            Vec::new()
        } else if joined {
            buf.drain(..pos);
            buf
        } else {
            buf.extend_from_slice(&data[pos..]);
            buf
        };
        match dir {
            Dir::Guest => self.out_partial = rest,
            Dir::Compositor => self.in_partial = rest,
        }
        result
    }

    fn track(&mut self, id: Option<u32>, kind: Kind) {
        if let Some(id) = id.filter(|&i| i != 0 && i < SERVER_ID_BASE) {
            self.objects.insert(id, kind);
        }
    }

    fn request(
        &mut self,
        msg: &Msg<'_>,
        out: &mut Vec<u8>,
        m: &WlMetrics,
    ) -> Result<(), Violation> {
        let bad = |e: String| Violation::Malformed("guest", e);
        if self.offers.contains_key(&msg.object) {
            return Err(Violation::HiddenOffer(msg.object));
        }
        let kind = self.objects.get(&msg.object).copied();
        match (msg.object, kind, msg.opcode) {
            // wl_display.get_registry(new_id)
            (DISPLAY, _, 1) => self.track(msg.arg(0), Kind::Registry),
            // wl_registry.bind(name, interface, version, new_id)
            (_, Some(Kind::Registry), 0) => {
                let name = msg.arg(0).ok_or_else(|| bad("truncated bind".into()))?;
                let (iface, end) = msg.string(12).map_err(bad)?;
                let iface = iface.unwrap_or_default();
                let id = msg.word(end + 4);
                if id.is_none() {
                    return Err(bad("truncated bind".into()));
                }
                if self.shown.get(&name).map(Vec::as_slice) != Some(iface) {
                    count(&m.binds_refused);
                    return Err(Violation::RefusedBind {
                        name,
                        interface: String::from_utf8_lossy(iface).into_owned(),
                    });
                }
                if let Some(k) = Kind::of_global(iface) {
                    self.track(id, k);
                }
            }
            // get_xdg_surface(new_id, surface)
            (_, Some(Kind::XdgWmBase), 2) => self.track(msg.arg(0), Kind::XdgSurface),
            (_, Some(Kind::ZxdgShell), 2) => self.track(msg.arg(0), Kind::ZxdgSurface),
            // get_toplevel(new_id)
            (_, Some(Kind::XdgSurface), 1) => self.track(msg.arg(0), Kind::XdgToplevel),
            (_, Some(Kind::ZxdgSurface), 1) => self.track(msg.arg(0), Kind::ZxdgToplevel),
            // wl_shell.get_shell_surface(new_id, surface)
            (_, Some(Kind::WlShell), 0) => self.track(msg.arg(0), Kind::WlShellSurface),
            // get_data_device(new_id, seat) / get_device(new_id, seat)
            (_, Some(Kind::DataDeviceManager), 1) => self.track(msg.arg(0), Kind::DataDevice),
            (_, Some(Kind::PrimaryManager), 1) => self.track(msg.arg(0), Kind::PrimaryDevice),
            // set_title
            (_, Some(Kind::XdgToplevel | Kind::ZxdgToplevel), 2)
            | (_, Some(Kind::WlShellSurface), 8) => {
                out.extend_from_slice(&tag_string(msg, &self.rules.title_tag).map_err(bad)?);
                count(&m.titles_tagged);
                return Ok(());
            }
            // set_app_id / set_class
            (_, Some(Kind::XdgToplevel | Kind::ZxdgToplevel), 3)
            | (_, Some(Kind::WlShellSurface), 9) => {
                out.extend_from_slice(&tag_string(msg, &self.rules.app_id_tag).map_err(bad)?);
                count(&m.titles_tagged);
                return Ok(());
            }
            _ => {}
        }
        out.extend_from_slice(msg.bytes);
        Ok(())
    }

    fn event(&mut self, msg: &Msg<'_>, out: &mut Vec<u8>, m: &WlMetrics) -> Result<(), Violation> {
        let bad = |e: String| Violation::Malformed("compositor", e);
        if let Some(o) = self.offers.get_mut(&msg.object) {
            match &mut o.state {
                OfferState::Pending(buf) | OfferState::Held(buf) => {
                    if buf.len() + msg.bytes.len() > MAX_OFFER_BYTES {
                        self.kill_offer(msg.object);
                    } else {
                        buf.extend_from_slice(msg.bytes);
                    }
                }
                OfferState::Dead => {}
            }
            return Ok(());
        }
        let kind = self.objects.get(&msg.object).copied();
        let gated = self.gated();
        match (msg.object, kind, msg.opcode) {
            // wl_display.delete_id(id): the guest may reuse it from now on.
            (DISPLAY, _, 1) => {
                if let Some(id) = msg.arg(0) {
                    self.objects.remove(&id);
                }
            }
            // wl_registry.global(name, interface, version)
            (_, Some(Kind::Registry), 0) => {
                let name = msg.arg(0).ok_or_else(|| bad("truncated global".into()))?;
                let (iface, _) = msg.string(12).map_err(bad)?;
                let iface = iface.unwrap_or_default();
                let allowed =
                    std::str::from_utf8(iface).is_ok_and(|s| self.rules.allowed.contains(s));
                if !allowed {
                    self.hidden.insert(name);
                    count(&m.globals_hidden);
                    return Ok(());
                }
                self.hidden.remove(&name);
                self.shown.insert(name, iface.to_vec());
            }
            // wl_registry.global_remove(name)
            (_, Some(Kind::Registry), 1)
                if msg.arg(0).is_some_and(|n| self.hidden.contains(&n)) =>
            {
                return Ok(());
            }
            // data_offer(new_id): held back until we know what it is for.
            (_, Some(Kind::DataDevice), 0) | (_, Some(Kind::PrimaryDevice), 0) if gated => {
                let id = msg
                    .arg(0)
                    .ok_or_else(|| bad("truncated data_offer".into()))?;
                if self.offers.len() >= MAX_OFFERS {
                    return Err(Violation::Overflow("data offers"));
                }
                self.offers.insert(
                    id,
                    Offer {
                        device: msg.object,
                        primary: kind == Some(Kind::PrimaryDevice),
                        state: OfferState::Pending(msg.bytes.to_vec()),
                    },
                );
                return Ok(());
            }
            // wl_data_device.enter(serial, surface, x, y, id): no drag and drop in.
            (_, Some(Kind::DataDevice), 1) if gated => {
                let id = msg.arg(4).ok_or_else(|| bad("truncated enter".into()))?;
                if msg.bytes.len() != 28 {
                    return Err(bad("enter of the wrong size".into()));
                }
                if id != 0 {
                    self.kill_offer(id);
                    let mut b = msg.bytes.to_vec();
                    b[24..28].copy_from_slice(&0u32.to_le_bytes());
                    out.extend_from_slice(&b);
                    return Ok(());
                }
            }
            // selection(id)
            (_, Some(Kind::DataDevice), 5) | (_, Some(Kind::PrimaryDevice), 1) if gated => {
                let id = msg
                    .arg(0)
                    .ok_or_else(|| bad("truncated selection".into()))?;
                if msg.bytes.len() != 12 {
                    return Err(bad("selection of the wrong size".into()));
                }
                self.selection(msg, id, out, m);
                return Ok(());
            }
            _ => {}
        }
        out.extend_from_slice(msg.bytes);
        Ok(())
    }

    fn selection(&mut self, msg: &Msg<'_>, id: u32, out: &mut Vec<u8>, m: &WlMetrics) {
        let device = msg.object;
        // Whatever this device held before is superseded.
        let old: Vec<u32> = self
            .offers
            .iter()
            .filter(|(&o, r)| {
                o != id && r.device == device && matches!(r.state, OfferState::Held(_))
            })
            .map(|(&o, _)| o)
            .collect();
        for o in old {
            self.kill_offer(o);
        }
        if id == 0 {
            out.extend_from_slice(msg.bytes);
            return;
        }
        let pending = matches!(
            self.offers.get(&id),
            Some(Offer {
                state: OfferState::Pending(_),
                device: d,
                ..
            }) if *d == device
        );
        let primary = self.offers.get(&id).is_some_and(|o| o.primary);
        if pending && !primary && self.rules.paste.take() {
            if let Some(Offer {
                state: OfferState::Pending(buf),
                ..
            }) = self.offers.remove(&id)
            {
                out.extend_from_slice(&buf);
            }
            out.extend_from_slice(msg.bytes);
            count(&m.pastes_allowed);
            return;
        }
        count(&m.selections_gated);
        if pending && !primary {
            if let Some(o) = self.offers.get_mut(&id) {
                if let OfferState::Pending(buf) = std::mem::replace(&mut o.state, OfferState::Dead)
                {
                    o.state = OfferState::Held(buf);
                }
            }
        } else {
            self.kill_offer(id);
        }
        push_msg(out, device, msg.opcode, &[0]);
    }

    /// Hides an offer for good (its destroy goes out with the guest's next request).
    fn kill_offer(&mut self, id: u32) {
        if let Some(o) = self.offers.get_mut(&id) {
            o.state = OfferState::Dead;
        }
    }

    fn flush_destroys(&mut self, out: &mut Vec<u8>) {
        if !self
            .offers
            .values()
            .any(|o| matches!(o.state, OfferState::Dead))
        {
            return;
        }
        self.offers.retain(|&id, o| {
            if !matches!(o.state, OfferState::Dead) {
                return true;
            }
            // wl_data_offer.destroy = 2, zwp_primary_selection_offer_v1.destroy = 1.
            push_msg(out, id, if o.primary { 1 } else { 2 }, &[]);
            false
        });
    }

    fn offer_related(&self, msg: &Msg<'_>) -> bool {
        self.offers.contains_key(&msg.object)
            || matches!(
                self.objects.get(&msg.object),
                Some(Kind::DataDevice | Kind::PrimaryDevice)
            )
    }

    /// A paste was allowed after the selection was gated: deliver the held offer now.
    fn release_held(&mut self, out: &mut Vec<u8>, m: &WlMetrics) {
        let Some(&id) = self
            .offers
            .iter()
            .find(|(_, o)| matches!(o.state, OfferState::Held(_)))
            .map(|(id, _)| id)
        else {
            return;
        };
        if !self.rules.paste.take() {
            return;
        }
        if let Some(Offer {
            state: OfferState::Held(buf),
            device,
            ..
        }) = self.offers.remove(&id)
        {
            out.extend_from_slice(&buf);
            // wl_data_device.selection(id)
            push_msg(out, device, 5, &[id]);
            count(&m.pastes_allowed);
        }
    }
}

#[cfg(test)]
mod tests;
