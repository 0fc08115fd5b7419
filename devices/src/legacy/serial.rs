//! The 8250/16550 UART (COM1) used as the guest console, on top of vm-superio.
//!
//! Output goes to any writer (the VMM's stdout or a log file). Input is pushed by the event
//! loop with [`Serial::enqueue_input`], which takes only what fits in the UART's receive FIFO;
//! the caller keeps the rest and waits for [`SerialInput::drained`] to become readable, which
//! happens when the guest has read the FIFO empty. No input byte is dropped.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's I/O ports and its ISA interrupt.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART interrupt through an eventfd that the VMM registers as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals the event loop when the guest has emptied the receive FIFO.
pub struct SerialInput {
    drained: EventFd,
}

impl SerialInput {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            drained: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        }))
    }
    pub fn drained(&self) -> &EventFd {
        &self.drained
    }
}

impl SerialEvents for SerialInput {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.drained.write(1);
    }
}

pub type ConsoleOut = Box<dyn Write + Send>;

/// A console log file that stops growing at `limit` bytes: the guest writes every byte of it,
/// and a guest that floods its console must not fill the host's disk (or a tmpfs such as
/// `/run/user`). At the limit it writes one line saying so, warns on stderr, and drops the
/// rest. Bytes already in the file (an appended log) count.
pub struct LogCap<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
    full: bool,
}

impl<W: Write> LogCap<W> {
    /// `inner`, which holds `already` bytes, capped at `limit`.
    pub fn new(inner: W, already: u64, limit: u64) -> LogCap<W> {
        LogCap {
            inner,
            written: already,
            limit,
            full: false,
        }
    }
}

impl<W: Write> Write for LogCap<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.full {
            return Ok(buf.len());
        }
        let room = self.limit.saturating_sub(self.written);
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.inner.write_all(&buf[..take])?;
        self.written += take as u64;
        if take < buf.len() {
            self.full = true;
            // Not eprintln!: it panics if stderr fails (a full disk), and the guest must not
            // be able to make the VMM abort by filling it.
            let _ = writeln!(
                std::io::stderr(),
                "serial: the guest's console log reached its limit of {} MiB ([console] limit_mib); \
                 the rest of its output is dropped",
                self.limit >> 20
            );
            let _ = write!(
                self.inner,
                "\n[qvm-vmm: this console log reached its limit of {} MiB; the rest of the \
                 guest's output is dropped]\n",
                self.limit >> 20
            );
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct Serial {
    inner: vm_superio::Serial<IrqTrigger, Arc<SerialInput>, ConsoleOut>,
    lost_output: bool,
}

impl Serial {
    pub fn new(irq: EventFd, input: Arc<SerialInput>, out: ConsoleOut) -> Self {
        Self {
            inner: vm_superio::Serial::with_events(IrqTrigger(irq), input, out),
            lost_output: false,
        }
    }

    /// Queues as much of `bytes` as the receive FIFO takes; returns how many were taken.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.inner.fifo_capacity() == 0 {
            return 0;
        }
        self.inner.enqueue_raw_bytes(bytes).unwrap_or_default()
    }

    pub fn fifo_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() == 1 && offset < COM1_PORT_LEN {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_PORT_LEN {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            // Console output is best effort (a closed stdout must not stop the guest), but say so once.
            if !self.lost_output {
                eprintln!("qvm-vmm: serial console output failed, dropping it: {e}");
                self.lost_output = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Sink, Arc<SerialInput>, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let irq2 = irq.try_clone().unwrap();
        let sink = Sink::default();
        let input = SerialInput::new().unwrap();
        let s = Serial::new(irq, input.clone(), Box::new(sink.clone()));
        (s, sink, input, irq2)
    }

    #[test]
    fn output_reaches_the_writer() {
        let (mut s, sink, _, _) = serial();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_drain_is_signalled() {
        let (mut s, _, input, irq) = serial();
        s.write(1, &[0x01]); // IER: receive-data interrupt on
        let big = vec![b'x'; 1000];
        let taken = s.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len());
        assert_eq!(s.enqueue_input(&big), 0, "a full FIFO takes nothing");
        assert!(irq.read().unwrap() >= 1);
        for _ in 0..taken {
            let mut d = [0u8];
            s.read(0, &mut d);
            assert_eq!(d[0], b'x');
        }
        assert_eq!(input.drained().read().unwrap(), 1);
        assert_eq!(s.enqueue_input(&big), taken);
    }

    #[test]
    fn odd_sizes_and_offsets_are_harmless() {
        let (mut s, sink, _, _) = serial();
        let mut d = [0u8; 4];
        s.read(0, &mut d);
        assert_eq!(d, [0xff; 4]);
        s.write(0, &[1, 2]);
        s.write(9, &[1]);
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_flooded_log_stops_at_its_limit_with_one_line_saying_so() {
        let sink = Sink::default();
        let mut log = LogCap::new(sink.clone(), 1000, (1 << 20) + 1000);
        for _ in 0..3 {
            log.write_all(&[b'x'; 1 << 19]).unwrap();
        }
        log.write_all(b"more").unwrap();
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got.iter().filter(|&&b| b == b'x').count(), 1 << 20);
        let tail = String::from_utf8_lossy(&got[1 << 20..]).into_owned();
        assert_eq!(
            tail.matches("reached its limit of 1 MiB").count(),
            1,
            "{tail}"
        );
        assert!(!tail.contains("more"));
        // Byte by byte (as vm-superio writes) it is the same.
        let sink = Sink::default();
        let mut log = LogCap::new(sink.clone(), 0, 10);
        for b in b"0123456789abc" {
            log.write_all(&[*b]).unwrap();
        }
        assert!(sink.0.lock().unwrap().starts_with(b"0123456789\n[qvm-vmm"));
    }
}
