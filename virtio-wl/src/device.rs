//! The [`VirtioDevice`] and its worker thread.
//!
//! The worker owns a fresh [`WlState`] per activation and waits on one epoll: the two queue
//! notify eventfds, a stop eventfd, and the host fds of the vfds (sockets, pipes). Reset stops
//! and joins it; dropping the state closes every vfd and unmaps every buffer.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use qvm_devices::virtio::{
    ActivateError, ActiveQueue, DeviceMetrics, GuestMemoryMmap, Interrupt, InterruptKind,
    ShmRegion, VirtioDevice, TYPE_WL, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mapper::GuestMapper;
use crate::protocol::{F_SEND_FENCES, F_TRANS_FLAGS, F_USE_SHMEM, NAME_LEN, PAGE_SIZE};
use crate::state::{WlState, VFD_TOKEN};
use crate::{WlConfig, WlError, WlMetrics, IN_QUEUE, NUM_QUEUES, OUT_QUEUE, QUEUE_SIZE};

const TOKEN_IN: u64 = 0;
const TOKEN_OUT: u64 = 1;
const TOKEN_STOP: u64 = 2;

struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// The virtio-wl device.
pub struct VirtioWl {
    cfg: Arc<WlConfig>,
    mapper: Arc<dyn GuestMapper>,
    metrics: Arc<WlMetrics>,
    features: u64,
    acked: u64,
    queue_sizes: [u16; NUM_QUEUES],
    worker: Option<WorkerHandle>,
}

impl std::fmt::Debug for VirtioWl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioWl")
            .field("cfg", &self.cfg)
            .field("window", &self.mapper.window())
            .field("active", &self.worker.is_some())
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
        Ok(VirtioWl {
            cfg: Arc::new(cfg),
            mapper,
            metrics: Arc::new(WlMetrics::default()),
            features: VIRTIO_F_VERSION_1 | F_TRANS_FLAGS | F_SEND_FENCES | F_USE_SHMEM,
            acked: 0,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
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
        self.worker.is_some()
    }
}

impl VirtioDevice for VirtioWl {
    fn device_type(&self) -> u32 {
        TYPE_WL
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Other("virtio-wl is already active".into()));
        }
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: NUM_QUEUES,
            });
        }
        let mut qs = Vec::with_capacity(NUM_QUEUES);
        let mut notify = Vec::with_capacity(NUM_QUEUES);
        for (i, q) in queues.into_iter().enumerate() {
            if !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(i));
            }
            qs.push(q.queue);
            notify.push(q.notify);
        }
        let (Ok([inq, outq]), Ok(notify)) = (
            <[Queue; NUM_QUEUES]>::try_from(qs),
            <[EventFd; NUM_QUEUES]>::try_from(notify),
        ) else {
            return Err(ActivateError::QueueCount {
                got: 0,
                want: NUM_QUEUES,
            });
        };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let stop_worker = stop.try_clone().map_err(ActivateError::Worker)?;
        let mut state = WlState::new(
            self.cfg.clone(),
            self.mapper.clone(),
            self.metrics.clone(),
            self.acked,
        )
        .map_err(ActivateError::Worker)?;
        state.set_stop_fd(Some(stop_worker.as_raw_fd()));
        for (fd, token) in [
            (notify[IN_QUEUE].as_raw_fd(), TOKEN_IN),
            (notify[OUT_QUEUE].as_raw_fd(), TOKEN_OUT),
            (stop_worker.as_raw_fd(), TOKEN_STOP),
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
        let worker = Worker {
            state,
            mem,
            inq,
            outq,
            notify,
            stop: stop_worker,
            interrupt,
        };
        let thread = std::thread::Builder::new()
            .name("virtio-wl".into())
            .spawn(move || {
                qvm_devices::sandbox::worker_started();
                worker.run();
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some(WorkerHandle { stop, thread });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some(w) = self.worker.take() else {
            return false;
        };
        // A full non-blocking eventfd still wakes the worker; ignore the error.
        let _ = w.stop.write(1);
        if w.thread.join().is_err() {
            eprintln!("virtio-wl: worker thread panicked");
        }
        // The worker dropped its state on the way out: every vfd closed, every buffer unmapped.
        self.acked = 0;
        true
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        let (addr, len) = self.mapper.window();
        vec![ShmRegion { id: 0, addr, len }]
    }

    fn metrics(&self) -> Option<Arc<dyn DeviceMetrics>> {
        Some(self.metrics.clone())
    }
}

impl Drop for VirtioWl {
    fn drop(&mut self) {
        self.reset();
    }
}

struct Worker {
    state: WlState,
    mem: GuestMemoryMmap,
    inq: Queue,
    outq: Queue,
    notify: [EventFd; NUM_QUEUES],
    /// Held so the fd the state polls in bounded waits stays open.
    #[allow(dead_code)]
    stop: EventFd,
    interrupt: Arc<dyn Interrupt>,
}

impl Worker {
    fn run(mut self) {
        // Chains made available before activation (or a kick that raced it).
        self.round(true, &[]);
        let mut events = vec![EpollEvent::default(); 64];
        let mut ready = Vec::with_capacity(64);
        loop {
            let n = match self.state.epoll().wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("virtio-wl: epoll_wait failed, stopping: {e}");
                    return;
                }
            };
            let mut out = false;
            ready.clear();
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_IN => {
                        // More in buffers: delivered below. (EAGAIN is fine.)
                        let _ = self.notify[IN_QUEUE].read();
                    }
                    TOKEN_OUT => {
                        let _ = self.notify[OUT_QUEUE].read();
                        out = true;
                    }
                    t if t & VFD_TOKEN != 0 => ready.push(t as u32),
                    _ => {}
                }
            }
            self.round(out, &ready);
        }
    }

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
            if let Err(e) = self.interrupt.trigger(InterruptKind::Queue) {
                eprintln!("virtio-wl: cannot raise the queue interrupt: {e}");
            }
        }
    }
}
