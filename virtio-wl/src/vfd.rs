//! Virtual file descriptors: what a vfd id stands for on the host.
//!
//! A vfd holds host fds only. Shared memory is a memfd (ours) or a compositor's shm fd, mapped
//! into the guest by the [`crate::GuestMapper`]; its contents are never read or written here.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use crate::protocol::{VFD_CONTROL, VFD_MAP, VFD_READ, VFD_WRITE};

/// Which way a pipe carries data, as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeDir {
    /// The guest reads (VFD_READ): the host keeps the read end and forwards what arrives.
    Read,
    /// The guest writes (VFD_WRITE): the host keeps the write end and writes VFD_SEND bytes.
    Write,
}

impl PipeDir {
    pub fn flag(self) -> u32 {
        match self {
            PipeDir::Read => VFD_READ,
            PipeDir::Write => VFD_WRITE,
        }
    }
}

#[derive(Debug)]
pub enum VfdKind {
    /// Shared memory mapped at guest-physical `gpa`, `size` bytes (a page multiple).
    Shm { fd: OwnedFd, gpa: u64, size: u64 },
    /// A connection to the compositor.
    Ctx { sock: UnixStream },
    /// A pipe. `remote` is the end meant for the compositor, until it has been sent (pipes
    /// received from the compositor have none).
    Pipe {
        local: OwnedFd,
        remote: Option<OwnedFd>,
        dir: PipeDir,
    },
}

#[derive(Debug)]
pub struct Vfd {
    pub kind: VfdKind,
    /// VFD_HUP was queued for it: it is no longer watched or read.
    pub hup: bool,
    /// Registered in the worker's epoll now.
    pub watched: bool,
}

impl Vfd {
    pub fn new(kind: VfdKind) -> Vfd {
        Vfd {
            kind,
            hup: false,
            watched: false,
        }
    }

    /// The flags the guest is told (VFD_NEW), per the TRANS_FLAGS feature. As crosvm: without
    /// TRANS_FLAGS, pipes carry no flags.
    pub fn flags(&self, trans_flags: bool) -> u32 {
        match (&self.kind, trans_flags) {
            (VfdKind::Shm { .. }, true) => 0,
            (VfdKind::Shm { .. }, false) => VFD_WRITE | VFD_MAP,
            (VfdKind::Ctx { .. }, true) => VFD_READ | VFD_WRITE,
            (VfdKind::Ctx { .. }, false) => VFD_CONTROL,
            (VfdKind::Pipe { dir, .. }, true) => dir.flag(),
            (VfdKind::Pipe { .. }, false) => 0,
        }
    }

    /// The fd that travels to the compositor when this vfd is listed in a VFD_SEND: the
    /// memfd, the socket, or the pipe's remote end (None once that was sent, or for a pipe
    /// the compositor gave us).
    pub fn send_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            VfdKind::Shm { fd, .. } => Some(fd.as_fd()),
            VfdKind::Ctx { sock } => Some(sock.as_fd()),
            VfdKind::Pipe { remote, .. } => remote.as_ref().map(|r| r.as_fd()),
        }
    }

    /// The fd the worker watches and for what: sockets and guest-read pipes for input;
    /// guest-written pipes only for hang-up/error (always reported by epoll).
    pub fn watch(&self) -> Option<(BorrowedFd<'_>, EventSet)> {
        match &self.kind {
            VfdKind::Shm { .. } => None,
            VfdKind::Ctx { sock } => Some((sock.as_fd(), EventSet::IN)),
            VfdKind::Pipe {
                local,
                dir: PipeDir::Read,
                ..
            } => Some((local.as_fd(), EventSet::IN)),
            VfdKind::Pipe {
                local,
                dir: PipeDir::Write,
                ..
            } => Some((local.as_fd(), EventSet::empty())),
        }
    }

    /// Guest-physical address and size of a shared-memory vfd.
    pub fn shm(&self) -> Option<(u64, u64)> {
        match &self.kind {
            VfdKind::Shm { gpa, size, .. } => Some((*gpa, *size)),
            _ => None,
        }
    }
}
