//! The [`qvm_devices::virtio::VirtioDevice`] (through [`VirtioDeviceBase`]) and its worker
//! thread.
//!
//! The worker owns a fresh [`WlState`] per activation and waits on one epoll, the state's
//! ([`run_epoll_loop`]): the two queue notify eventfds, a stop eventfd, and the host fds of
//! the vfds (sockets, pipes). Reset stops and joins it; the state is dropped in the worker
//! thread on its way out, so every vfd is closed and every buffer unmapped when reset returns
//! (or the device is dropped).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use qvm_devices::virtio::{
    run_epoll_loop, signal_used, split_queues, ActivateError, Activation, EpollWorker,
    GuestMemoryMmap, Interrupt, ShmRegion, VirtioCommon, VirtioDeviceBase, WorkerStop,
    WorkerThread, TYPE_WL, VIRTIO_F_VERSION_1,
};
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::mapper::GuestMapper;
use crate::protocol::{F_SEND_FENCES, F_TRANS_FLAGS, F_USE_SHMEM, NAME_LEN, PAGE_SIZE};
use crate::state::{WlState, VFD_TOKEN};
use crate::{WlConfig, WlError, WlMetrics, IN_QUEUE, NUM_QUEUES, OUT_QUEUE, QUEUE_SIZE};

const TOKEN_IN: u64 = 0;
const TOKEN_OUT: u64 = 1;
const TOKEN_STOP: u64 = 2;
/// The worker thread's name, and the prefix of its log lines.
const NAME: &str = "virtio-wl";

/// The virtio-wl device.
pub struct VirtioWl {
    /// No config space (reads are zeros, writes ignored); shm region 0 is the mapper's window.
    common: VirtioCommon,
    cfg: Arc<WlConfig>,
    mapper: Arc<dyn GuestMapper>,
    metrics: Arc<WlMetrics>,
    /// Stopped and joined by a reset, or when the device is dropped (WorkerThread's Drop).
    worker: Option<WorkerThread<()>>,
}

impl std::fmt::Debug for VirtioWl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioWl")
            .field("cfg", &self.cfg)
            .field("window", &self.mapper.window())
            .field("active", &self.common.is_active())
            .finish()
    }
}

impl VirtioWl {
    /// Checks `cfg` and the mapper's window. The sockets need not exist yet: NEW_CTX connects
    /// when the guest asks.
    pub fn new(cfg: WlConfig, mapper: Arc<dyn GuestMapper>) -> Result<VirtioWl, WlError> {
        use std::os::unix::ffi::OsStrExt;
        let paths = cfg.socket.iter().chain(cfg.named.iter().map(|(_, p)| p));
        for p in paths {
            let b = p.as_os_str().as_bytes();
            if b.is_empty() || b.len() > 107 || b.contains(&0) {
                return Err(WlError::SocketPath(p.clone(), b.len()));
            }
        }
        for (i, (name, _)) in cfg.named.iter().enumerate() {
            if name.is_empty() || name.len() >= NAME_LEN || name.contains('\0') {
                return Err(WlError::SocketName(name.clone()));
            }
            if cfg.named[..i].iter().any(|(n, _)| n == name) {
                return Err(WlError::DuplicateName(name.clone()));
            }
        }
        if let Some(p) = &cfg.policy {
            if !crate::WlPolicy::valid_name(&p.name) {
                return Err(WlError::PolicyName(p.name.clone()));
            }
        }
        if cfg.max_vfds == 0 {
            return Err(WlError::MaxVfds);
        }
        if cfg.max_buffer_bytes < PAGE_SIZE {
            return Err(WlError::MaxBufferBytes(cfg.max_buffer_bytes));
        }
        let (base, len) = mapper.window();
        if len == 0
            || !base.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || base.checked_add(len).is_none()
        {
            return Err(WlError::Window { base, len });
        }
        let metrics = Arc::new(WlMetrics::default());
        let common = VirtioCommon::new(
            NAME,
            TYPE_WL,
            VIRTIO_F_VERSION_1 | F_TRANS_FLAGS | F_SEND_FENCES | F_USE_SHMEM,
            &[QUEUE_SIZE; NUM_QUEUES],
        )
        .with_shm(vec![ShmRegion {
            id: 0,
            addr: base,
            len,
        }])
        .with_metrics(metrics.clone());
        Ok(VirtioWl {
            common,
            cfg: Arc::new(cfg),
            mapper,
            metrics,
            worker: None,
        })
    }

    /// The counters (shared with the worker).
    pub fn stats(&self) -> &WlMetrics {
        &self.metrics
    }

    /// The one-shot paste permission of this device's policy (None without a policy).
    pub fn paste_gate(&self) -> Option<crate::PasteGate> {
        self.cfg.policy.as_ref().map(|p| p.paste.clone())
    }

    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }
}

impl VirtioDeviceBase for VirtioWl {
    qvm_devices::virtio_common_accessors!(common);

    fn stop(&mut self) {
        // The worker drops its state on the way out: every vfd closed, every buffer unmapped.
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let ([inq, outq], notify) = split_queues(act.queues)?;
        let stop = WorkerStop::new().map_err(ActivateError::Worker)?;
        let mut state = WlState::new(
            self.cfg.clone(),
            self.mapper.clone(),
            self.metrics.clone(),
            self.common.acked_features(),
        )
        .map_err(ActivateError::Worker)?;
        // The worker's end of the stop eventfd lives until the state is dropped (see
        // run_epoll_loop), so the state's bounded waits may poll its number.
        state.set_stop_fd(Some(stop.worker_fd().as_raw_fd()));
        for (fd, token) in [
            (notify[IN_QUEUE].as_raw_fd(), TOKEN_IN),
            (notify[OUT_QUEUE].as_raw_fd(), TOKEN_OUT),
            (stop.worker_fd().as_raw_fd(), TOKEN_STOP),
        ] {
            state
                .epoll()
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(ActivateError::Worker)?;
        }
        let mut worker = Worker {
            state,
            mem: act.mem,
            inq,
            outq,
            notify,
            interrupt: act.interrupt,
            out: false,
            ready: Vec::with_capacity(64),
        };
        let thread = stop
            .spawn(NAME, move |stop| {
                // Chains made available before activation (or a kick that raced it).
                worker.round(true, &[]);
                run_epoll_loop(worker, stop);
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some(thread);
        Ok(())
    }
}

struct Worker {
    state: WlState,
    mem: GuestMemoryMmap,
    inq: Queue,
    outq: Queue,
    notify: [EventFd; NUM_QUEUES],
    interrupt: Arc<dyn Interrupt>,
    /// Events of the current wait: the out queue was kicked; vfds whose host fd is ready.
    out: bool,
    ready: Vec<u32>,
}

impl EpollWorker for Worker {
    const STOP_TOKEN: u64 = TOKEN_STOP;

    fn epoll(&self) -> &Epoll {
        self.state.epoll()
    }

    fn event(&mut self, ev: &EpollEvent) {
        match ev.data() {
            TOKEN_IN => {
                // More in buffers: delivered by the round. (EAGAIN is fine.)
                let _ = self.notify[IN_QUEUE].read();
            }
            TOKEN_OUT => {
                let _ = self.notify[OUT_QUEUE].read();
                self.out = true;
            }
            t if t & VFD_TOKEN != 0 => self.ready.push(t as u32),
            _ => {}
        }
    }

    fn after_events(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        let out = std::mem::replace(&mut self.out, false);
        self.round(out, &ready);
        self.ready = ready;
        self.ready.clear();
    }
}

impl Worker {
    /// One pass: requests, then host fds that are ready (while the guest keeps up), then
    /// delivery, backpressure, and the interrupt.
    fn round(&mut self, out: bool, ready: &[u32]) {
        let mut used = false;
        if out {
            used |= self.state.process_out(&mut self.outq, &self.mem);
        }
        for &id in ready {
            if !self.state.may_read(&self.inq, &self.mem) {
                // Not watched any more after sync_interest below; level-triggered epoll
                // reports it again once reading resumes.
                break;
            }
            self.state.handle_vfd_event(id);
            used |= self.state.deliver(&mut self.inq, &self.mem);
        }
        used |= self.state.deliver(&mut self.inq, &self.mem);
        let read = self.state.may_read(&self.inq, &self.mem);
        self.state.sync_interest(read);
        if used {
            signal_used(self.interrupt.as_ref(), NAME);
        }
    }
}
