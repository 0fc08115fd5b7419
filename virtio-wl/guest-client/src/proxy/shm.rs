//! wl_shm mirroring: a client's pool lives in guest memory the host cannot see, so each pool
//! gets a host-allocated twin (a virtio-wl vfd) and, at each commit, the rectangles the client
//! damaged are copied from the client's pool into the twin.
//!
//! A buffer's twin must also catch up with what changed while it was not attached: clients
//! double-buffer and repair a buffer with the damage of the frames it missed. So each surface
//! keeps, per buffer it has shown, the damage committed since that buffer was last copied
//! ([`SurfaceDamage`]); a buffer never copied on a surface is copied whole.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use crate::transport::Alloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    fn union(self, o: Rect) -> Rect {
        let x0 = self.x.min(o.x);
        let y0 = self.y.min(o.y);
        let x1 = (self.x.saturating_add(self.w)).max(o.x.saturating_add(o.w));
        let y1 = (self.y.saturating_add(self.h)).max(o.y.saturating_add(o.h));
        Rect {
            x: x0,
            y: y0,
            w: x1.saturating_sub(x0),
            h: y1.saturating_sub(y0),
        }
    }

    fn contains(self, o: Rect) -> bool {
        o.x >= self.x
            && o.y >= self.y
            && o.x.saturating_add(o.w) <= self.x.saturating_add(self.w)
            && o.y.saturating_add(o.h) <= self.y.saturating_add(self.h)
    }

    /// Clipped to a `w` × `h` buffer; None if nothing is left.
    fn clip(self, w: i32, h: i32) -> Option<Rect> {
        let x0 = self.x.clamp(0, w);
        let y0 = self.y.clamp(0, h);
        let x1 = self.x.saturating_add(self.w).clamp(0, w);
        let y1 = self.y.saturating_add(self.h).clamp(0, h);
        (x1 > x0 && y1 > y0).then_some(Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }
}

/// Rectangles to copy, merged into their bounding box past a few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Region {
    Full,
    Rects(Vec<Rect>),
}

const MAX_RECTS: usize = 16;

impl Region {
    pub fn empty() -> Region {
        Region::Rects(Vec::new())
    }

    pub fn add(&mut self, r: Rect) {
        if r.w <= 0 || r.h <= 0 {
            return;
        }
        if let Region::Rects(v) = self {
            if v.iter().any(|o| o.contains(r)) {
                return;
            }
            v.retain(|o| !r.contains(*o));
            if v.len() >= MAX_RECTS {
                let bbox = v.iter().fold(r, |acc, x| acc.union(*x));
                v.clear();
                v.push(bbox);
            } else {
                v.push(r);
            }
        }
    }

    pub fn merge(&mut self, o: &Region) {
        match o {
            Region::Full => *self = Region::Full,
            Region::Rects(v) => v.iter().for_each(|r| self.add(*r)),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Region::Rects(v) if v.is_empty())
    }
}

/// A read-only shared mapping of a client's pool fd.
pub struct ClientMap {
    fd: OwnedFd,
    ptr: *const u8,
    len: usize,
}

impl ClientMap {
    /// Maps `len` bytes of the client's pool; the file must be at least that long (a shorter
    /// one would fault when read).
    pub fn new(fd: OwnedFd, len: usize) -> io::Result<ClientMap> {
        let mut m = ClientMap {
            fd,
            ptr: std::ptr::null(),
            len: 0,
        };
        m.remap(len)?;
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Maps the pool again at its new size (wl_shm_pool.resize).
    pub fn remap(&mut self, len: usize) -> io::Result<()> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty pool"));
        }
        // SAFETY: stat is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes only into the struct we own.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pool of {len} bytes on a {}-byte file", st.st_size),
            ));
        }
        // SAFETY: a fresh read-only shared mapping of the client's fd; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.unmap();
        self.ptr = ptr.cast();
        self.len = len;
        Ok(())
    }

    fn unmap(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
            self.ptr = std::ptr::null();
            self.len = 0;
        }
    }

    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: ptr/len is our live mapping. The client may write it concurrently; we only
        // copy bytes out (a torn frame is the client's own doing).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ClientMap {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// A client pool and its host twin.
pub struct Pool {
    /// Host id of the wl_shm the pool was created from (to create a larger twin on resize).
    pub shm_host: u32,
    pub client: Rc<RefCell<ClientMap>>,
    pub twin: Rc<RefCell<Alloc>>,
}

impl Pool {
    /// A pool mapped as `client` and mirrored into `twin`, neither shared with a buffer yet.
    pub fn new(shm_host: u32, client: ClientMap, twin: Alloc) -> Pool {
        Pool {
            shm_host,
            client: Rc::new(RefCell::new(client)),
            twin: Rc::new(RefCell::new(twin)),
        }
    }
}

/// A buffer in a pool: where its pixels are in the client pool and in the twin.
pub struct Buffer {
    pub client: Rc<RefCell<ClientMap>>,
    pub twin: Rc<RefCell<Alloc>>,
    pub offset: usize,
    pub width: i32,
    pub height: i32,
    pub stride: usize,
    pub bpp: Option<usize>,
}

/// Bytes per pixel of the wl_shm formats in common use; None = copy whole rows.
pub fn bytes_per_pixel(format: u32) -> Option<usize> {
    const ARGB8888: u32 = 0;
    const XRGB8888: u32 = 1;
    const FOURCC_ABGR8888: u32 = 0x3432_4241; // 'AB24'
    const FOURCC_XBGR8888: u32 = 0x3432_4258; // 'XB24'
    const FOURCC_RGB565: u32 = 0x3631_4752; // 'RG16'
    match format {
        ARGB8888 | XRGB8888 | FOURCC_ABGR8888 | FOURCC_XBGR8888 => Some(4),
        FOURCC_RGB565 => Some(2),
        _ => None,
    }
}

impl Buffer {
    /// Whether the buffer lies inside both its pool and the twin (checked before any copy).
    pub fn in_bounds(&self) -> bool {
        let Ok(h) = usize::try_from(self.height) else {
            return false;
        };
        let Some(end) = self
            .stride
            .checked_mul(h)
            .and_then(|n| n.checked_add(self.offset))
        else {
            return false;
        };
        let row = self
            .bpp
            .and_then(|b| usize::try_from(self.width).ok()?.checked_mul(b));
        self.width > 0
            && self.height > 0
            && row.is_none_or(|r| r <= self.stride)
            && end <= self.client.borrow().len()
            && end <= self.twin.borrow().len()
    }

    /// Copies `region` (buffer coordinates) from the client's pool into the twin; returns the
    /// bytes copied.
    pub fn copy(&self, region: &Region) -> usize {
        if !self.in_bounds() {
            return 0;
        }
        let full = Rect {
            x: 0,
            y: 0,
            w: self.width,
            h: self.height,
        };
        let rects: Vec<Rect> = match region {
            Region::Full => vec![full],
            Region::Rects(v) => v
                .iter()
                .filter_map(|r| r.clip(self.width, self.height))
                .collect(),
        };
        let src_map = self.client.borrow();
        let src = src_map.bytes();
        let mut twin = self.twin.borrow_mut();
        let dst = twin.as_mut_slice();
        let mut copied = 0;
        for r in rects {
            let (x0, len) = match self.bpp {
                // A whole-width rect of a packed buffer is one contiguous run.
                Some(b) => (r.x as usize * b, r.w as usize * b),
                None => (0, self.stride),
            };
            if self.bpp.is_some() && r.w == self.width && self.stride == len {
                let start = self.offset + r.y as usize * self.stride;
                let n = r.h as usize * self.stride;
                dst[start..start + n].copy_from_slice(&src[start..start + n]);
                copied += n;
                continue;
            }
            for y in r.y as usize..(r.y + r.h) as usize {
                let start = self.offset + y * self.stride + x0;
                dst[start..start + len].copy_from_slice(&src[start..start + len]);
                copied += len;
            }
        }
        copied
    }
}

/// Per surface: what is pending for the next commit, and per buffer the damage it missed.
#[derive(Default)]
pub struct SurfaceDamage {
    /// Some(None) = a null buffer attached.
    pub pending_attach: Option<Option<u32>>,
    pub current: Option<u32>,
    pub surface_damage: Vec<Rect>,
    pub buffer_damage: Vec<Rect>,
    pub pending_scale: Option<i32>,
    pub scale: i32,
    pub pending_transform: Option<i32>,
    pub transform: i32,
    /// Source/destination rectangles in use: surface damage cannot be mapped to the buffer.
    pub has_viewport: bool,
    /// Damage committed since each buffer (client id) was last copied.
    pub missed: HashMap<u32, Region>,
}

impl SurfaceDamage {
    pub fn new() -> Self {
        SurfaceDamage {
            scale: 1,
            ..Default::default()
        }
    }

    /// Applies a commit: returns the buffer to copy and the region to copy into it (None when
    /// no mirrored content changes), and updates the other buffers' missed damage.
    /// `whole` forces whole-buffer copies (the bench's comparison).
    pub fn commit(
        &mut self,
        is_mirrored: impl Fn(u32) -> bool,
        whole: bool,
    ) -> Option<(u32, Region)> {
        if let Some(s) = self.pending_scale.take() {
            self.scale = s;
        }
        if let Some(t) = self.pending_transform.take() {
            self.transform = t;
        }
        let attach = self.pending_attach.take();
        if let Some(b) = attach {
            self.current = b;
        }
        let mut damage = Region::empty();
        let surface_exact = self.transform == 0 && !self.has_viewport && self.scale >= 1;
        for r in self.surface_damage.drain(..) {
            if surface_exact {
                let s = self.scale;
                damage.add(Rect {
                    x: r.x.saturating_mul(s),
                    y: r.y.saturating_mul(s),
                    w: r.w.saturating_mul(s),
                    h: r.h.saturating_mul(s),
                });
            } else {
                damage = Region::Full;
            }
        }
        for r in self.buffer_damage.drain(..) {
            damage.add(r);
        }
        let buf = self.current.filter(|b| is_mirrored(*b));
        // Content is read at an attach, or when the attached buffer is damaged again.
        let touched = attach.is_some() || !damage.is_empty();
        for (id, missed) in self.missed.iter_mut() {
            if Some(*id) != buf {
                missed.merge(&damage);
            }
        }
        let buf = buf.filter(|_| touched)?;
        let mut region = self.missed.remove(&buf).unwrap_or(Region::Full);
        region.merge(&damage);
        if whole {
            region = Region::Full;
        }
        self.missed.insert(buf, Region::empty());
        Some((buf, region))
    }

    pub fn forget_buffer(&mut self, id: u32) {
        self.missed.remove(&id);
        if self.current == Some(id) {
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: i32, y: i32, w: i32, h: i32) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn first_attach_copies_whole_then_damage_only_and_missed_frames_catch_up() {
        let mut s = SurfaceDamage::new();
        let m = |_| true;
        // Frame 1: buffer A, never seen: whole.
        s.pending_attach = Some(Some(10));
        s.buffer_damage.push(r(0, 0, 5, 5));
        assert_eq!(s.commit(m, false), Some((10, Region::Full)));
        // Frame 2: buffer B, never seen: whole; A misses the damage (1,1,2,2).
        s.pending_attach = Some(Some(11));
        s.surface_damage.push(r(1, 1, 2, 2));
        assert_eq!(s.commit(m, false), Some((11, Region::Full)));
        // Frame 3: A again with damage (7,7,1,1): it gets its own and what it missed.
        s.pending_attach = Some(Some(10));
        s.buffer_damage.push(r(7, 7, 1, 1));
        assert_eq!(
            s.commit(m, false),
            Some((10, Region::Rects(vec![r(1, 1, 2, 2), r(7, 7, 1, 1)])))
        );
        // Frame 4: B again: it missed (7,7,1,1) only.
        s.pending_attach = Some(Some(11));
        s.buffer_damage.push(r(3, 3, 1, 1));
        assert_eq!(
            s.commit(m, false),
            Some((11, Region::Rects(vec![r(7, 7, 1, 1), r(3, 3, 1, 1)])))
        );
        // A commit with no attach and no damage copies nothing.
        assert_eq!(s.commit(m, false), None);
        // Scale 2 doubles surface damage; whole mode copies everything.
        s.pending_scale = Some(2);
        s.pending_attach = Some(Some(10));
        s.surface_damage.push(r(1, 1, 1, 1));
        let (_, reg) = s.commit(m, false).unwrap();
        assert!(matches!(reg, Region::Rects(ref v) if v.contains(&r(2, 2, 2, 2))));
        s.pending_attach = Some(Some(11));
        assert_eq!(s.commit(m, true), Some((11, Region::Full)));
        // A null attach copies nothing; unmirrored buffers are not copied.
        s.pending_attach = Some(None);
        assert_eq!(s.commit(m, false), None);
        s.pending_attach = Some(Some(12));
        assert_eq!(s.commit(|b| b != 12, false), None);
    }

    #[test]
    fn regions_merge_into_a_bounding_box_and_clip() {
        let mut reg = Region::empty();
        for i in 0..20 {
            reg.add(r(i, i, 1, 1));
        }
        let Region::Rects(v) = &reg else { panic!() };
        assert!(v.len() <= MAX_RECTS);
        assert!(v.iter().any(|x| x.x == 0 && x.w >= 16));
        assert_eq!(r(-5, -5, 10, 10).clip(4, 4), Some(r(0, 0, 4, 4)));
        assert_eq!(r(10, 10, 5, 5).clip(4, 4), None);
        assert_eq!(
            r(i32::MAX - 1, 0, i32::MAX, 1).clip(4, 4),
            None,
            "no overflow"
        );
    }
}
