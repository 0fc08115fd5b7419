//! virtio-blk tests: requests driven through [`Disk`] over a driver-side ring in plain guest
//! memory, the device through its worker thread, and the fuzz harness on random inputs.

use super::fuzz::fuzz_blk_request;
use super::*;
use crate::virtio::testing::{
    self, fuzz::memory as fuzz_memory, guest_bytes, pattern, wait_for, CountingInterrupt, Rng,
    SplitRing, TempDir, TestQueue,
};
use crate::virtio::{ActiveQueue, GuestMemoryMmap, VirtioDevice};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 8 << 20;
const DISK_SIZE: u64 = 4 << 20;
const NSECTORS: u64 = DISK_SIZE / SECTOR_SIZE;
const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x10_1000;
const INDIRECT: u64 = 0x10_2000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x40_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// (address, length, flags) of one descriptor.
type Desc = (u64, u32, u16);
/// (sector, num_sectors, flags) of a discard/write-zeroes segment.
type Segment = (u64, u32, u32);

/// A temporary directory holding one image file, removed on drop.
struct TempImage {
    dir: TempDir,
    path: PathBuf,
}

impl TempImage {
    fn new(size: u64) -> TempImage {
        let dir = TempDir::new("qvm-blk-test");
        let path = dir.join("disk.img");
        File::create(&path).unwrap().set_len(size).unwrap();
        TempImage { dir, path }
    }

    fn cfg(&self, read_only: bool) -> BlockConfig {
        BlockConfig {
            path: self.path.clone(),
            read_only,
            id: None,
            direct_io: false,
        }
    }

    fn contents(&self) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(&self.path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    fn fill(&self, byte: u8) {
        let mut f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all(&vec![byte; DISK_SIZE as usize]).unwrap();
        f.sync_all().unwrap();
    }
}

fn memory() -> GuestMemoryMmap {
    testing::memory(MEM_SIZE)
}

/// The driver side: builds chains in a [`TestQueue`] at guest address 0 and runs the disk
/// over them.
struct Driver {
    q: TestQueue,
    mem: GuestMemoryMmap,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap) -> Driver {
        Driver {
            q: TestQueue::new(mem, 0, QUEUE_SIZE),
            mem: mem.clone(),
        }
    }

    /// Runs the device and returns the used elements added since the last call.
    fn run(&mut self, disk: &mut Disk) -> Vec<(u32, u32)> {
        process_queue(disk, &mut self.q.queue, &self.mem);
        self.q.used()
    }

    /// Submits one chain and returns (used length, status byte at STATUS).
    fn submit(&mut self, disk: &mut Disk, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.q.add(descs);
        let used = self.run(disk);
        assert_eq!(used.len(), 1, "one chain in, one chain out");
        assert_eq!(used[0].0, u32::from(head));
        (used[0].1, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    /// A request with the header at HDR and a 1-byte status at STATUS.
    fn request(
        &mut self,
        disk: &mut Disk,
        req_type: u32,
        sector: u64,
        data: &[(u64, u32, u16)],
    ) -> (u32, u8) {
        write_header(&self.mem, HDR, req_type, sector);
        let mut descs = vec![(HDR, HEADER_SIZE, R)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, W));
        self.submit(disk, &descs)
    }

    /// A known-good read, to check the device still works after a bad request.
    fn assert_still_works(&mut self, disk: &mut Disk) {
        assert_eq!(
            self.request(disk, VIRTIO_BLK_T_IN, 1, &[(DATA2, 512, W)]),
            (513, OK)
        );
    }
}

fn write_header(mem: &GuestMemoryMmap, at: u64, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn write_segment(mem: &GuestMemoryMmap, at: u64, sector: u64, num: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(at)).unwrap();
}

fn setup(read_only: bool) -> (TempImage, Disk, GuestMemoryMmap) {
    let img = TempImage::new(DISK_SIZE);
    let disk = Disk::open(&img.cfg(read_only)).unwrap();
    (img, disk, memory())
}

#[test]
fn read_write_round_trip() {
    let (img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    let data = pattern(4096, 7);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_OUT, 10, &[(DATA, 4096, R)]),
        (1, OK)
    );
    assert_eq!(&img.contents()[10 * 512..10 * 512 + 4096], &data[..]);

    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_IN, 10, &[(DATA2, 4096, W)]),
        (4097, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA2, 4096), data);

    // Data put in the file behind the device's back reads back through it.
    let other = pattern(1024, 99);
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &other, 100 * 512).unwrap();
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_IN, 100, &[(DATA2, 1024, W)]),
        (1025, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA2, 1024), other);

    // The last sector is reachable.
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_OUT, NSECTORS - 1, &[(DATA, 512, R)]),
        (1, OK)
    );
    let s = disk.stats().snapshot();
    assert_eq!(s.requests, 4);
    assert_eq!(s.bytes_written, 4096 + 512);
    assert_eq!(s.bytes_read, 4096 + 1024);
    assert_eq!(s.errors, 0);
}

#[test]
fn multi_descriptor_requests() {
    let (img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    let data = pattern(4096, 3);
    // Scatter the data over three buffers of different sizes.
    mem.write_slice(&data[..512], GuestAddress(DATA + 0x10000))
        .unwrap();
    mem.write_slice(&data[512..1536], GuestAddress(DATA))
        .unwrap();
    mem.write_slice(&data[1536..], GuestAddress(DATA + 0x30000))
        .unwrap();
    let out = [
        (DATA + 0x10000, 512, R),
        (DATA, 1024, R),
        (DATA + 0x30000, 2560, R),
    ];
    assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_OUT, 3, &out), (1, OK));
    assert_eq!(&img.contents()[3 * 512..3 * 512 + 4096], &data[..]);

    let inn = [(DATA2 + 0x8000, 2048, W), (DATA2, 2048, W)];
    assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_IN, 3, &inn), (4097, OK));
    assert_eq!(guest_bytes(&mem, DATA2 + 0x8000, 2048), &data[..2048]);
    assert_eq!(guest_bytes(&mem, DATA2, 2048), &data[2048..]);

    // Zero-length data descriptors are skipped.
    let inn = [(DATA2, 0, W), (DATA2, 512, W)];
    assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_IN, 3, &inn), (513, OK));
}

#[test]
fn indirect_descriptors() {
    let (_img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    let data = pattern(1024, 5);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 20);
    let table = [
        Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        Descriptor::new(DATA, 1024, VRING_DESC_F_NEXT as u16, 2),
        Descriptor::new(STATUS, 1, W, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let indirect = VRING_DESC_F_INDIRECT as u16;
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    drv.q.add_raw(&[(INDIRECT, 48, indirect, 0)]);
    assert_eq!(drv.run(&mut disk)[0].1, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_IN, 20, &[(DATA2, 1024, W)]),
        (1025, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA2, 1024), data);

    // An indirect descriptor inside an indirect table is refused (len 0).
    mem.write_obj(
        Descriptor::new(INDIRECT, 48, VRING_DESC_F_NEXT as u16 | indirect, 2),
        GuestAddress(INDIRECT + 16),
    )
    .unwrap();
    drv.q.add_raw(&[(INDIRECT, 48, indirect, 0)]);
    assert_eq!(drv.run(&mut disk)[0].1, 0);
    assert_eq!(disk.stats().snapshot().invalid_chains, 1);
    drv.assert_still_works(&mut disk);
}

#[test]
fn flush() {
    let (_img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
    // Data descriptors on a flush are ignored, never touched.
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[(u64::MAX - 4, 100, W)]),
        (1, OK)
    );
}

#[test]
fn get_id() {
    for id in ["abc", "01234567890123456789"] {
        let img = TempImage::new(DISK_SIZE);
        let mut cfg = img.cfg(false);
        cfg.id = Some(id.to_string());
        let mut disk = Disk::open(&cfg).unwrap();
        let mem = memory();
        let mut drv = Driver::new(&mem);
        mem.write_slice(&[0xee; 32], GuestAddress(DATA2)).unwrap();
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA2, 20, W)]),
            (21, OK)
        );
        let mut want = id.as_bytes().to_vec();
        want.resize(20, 0);
        assert_eq!(guest_bytes(&mem, DATA2, 20), want);
        // Nothing past the buffer.
        assert_eq!(guest_bytes(&mem, DATA2 + 20, 12), vec![0xee; 12]);

        // A shorter buffer gets a prefix; a longer one only 20 bytes.
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 2, W)]),
            (3, OK)
        );
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 512, W)]),
            (21, OK)
        );
        // The id buffer must be device-writable.
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, R)]),
            (1, IOERR)
        );
    }
    // No id: 20 NUL bytes.
    let (_img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    mem.write_slice(&[0xee; 20], GuestAddress(DATA2)).unwrap();
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA2, 20, W)]),
        (21, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA2, 20), vec![0; 20]);
}

#[test]
fn discard_and_write_zeroes() {
    let (img, mut disk, mem) = setup(false);
    img.fill(0xaa);
    let blocks_before = std::fs::metadata(&img.path).unwrap().blocks();
    let mut drv = Driver::new(&mem);
    let seg = |sector, num, flags| {
        write_segment(&mem, DATA, sector, num, flags);
    };

    seg(8, 256, 0);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]),
        (1, OK)
    );
    let c = img.contents();
    assert!(c[8 * 512..264 * 512].iter().all(|&b| b == 0));
    assert!(c[..8 * 512].iter().all(|&b| b == 0xaa));
    assert!(c[264 * 512..].iter().all(|&b| b == 0xaa));
    let blocks_after = std::fs::metadata(&img.path).unwrap().blocks();
    assert!(
        blocks_after < blocks_before,
        "{blocks_after} < {blocks_before}"
    );

    // WRITE_ZEROES without and with UNMAP.
    seg(1000, 3, 0);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
        (1, OK)
    );
    seg(2000, 17, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
        (1, OK)
    );
    let c = img.contents();
    assert!(c[1000 * 512..1003 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[999 * 512 + 511], 0xaa);
    assert_eq!(c[1003 * 512], 0xaa);
    assert!(c[2000 * 512..2017 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[2017 * 512], 0xaa);

    // The write-zeroes fallback (pwrite of zeros) gives the same result.
    disk.no_punch_hole = true;
    disk.no_zero_range = true;
    seg(3000, 5, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
        (1, OK)
    );
    let c = img.contents();
    assert!(c[3000 * 512..3005 * 512].iter().all(|&b| b == 0));
    assert_eq!(c[3005 * 512], 0xaa);

    // The segment may straddle descriptors.
    write_segment(&mem, DATA2, 4000, 1, 0);
    mem.write_slice(
        &guest_bytes(&mem, DATA2 + 10, 6),
        GuestAddress(DATA + 0x100),
    )
    .unwrap();
    let split = [(DATA2, 10, R), (DATA + 0x100, 6, R)];
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &split),
        (1, OK)
    );
    assert!(img.contents()[4000 * 512..4001 * 512]
        .iter()
        .all(|&b| b == 0));

    // Refusals: unmap on discard and unknown flags are UNSUPP; past the end, too many
    // sectors or segments, wrong direction are IOERR.
    let cases: [(u32, Segment, u32, u8); 6] = [
        (VIRTIO_BLK_T_DISCARD, (0, 1, 1), 16, UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, (0, 1, 2), 16, UNSUPP),
        (VIRTIO_BLK_T_DISCARD, (NSECTORS - 1, 2, 0), 16, IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, (u64::MAX, 1, 0), 16, IOERR),
        (VIRTIO_BLK_T_DISCARD, (0, 1, 0), 32, IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, (0, 1, 0), 8, IOERR),
    ];
    let before = img.contents();
    for (t, (sector, num, flags), len, want) in cases {
        write_segment(&mem, DATA, sector, num, flags);
        write_segment(&mem, DATA + 16, 0, 1, 0);
        assert_eq!(
            drv.request(&mut disk, t, 0, &[(DATA, len, R)]),
            (1, want),
            "{t} {sector} {num} {flags} {len}"
        );
    }
    write_segment(&mem, DATA, 0, 1, 0);
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, W)]),
        (1, IOERR)
    );
    assert_eq!(img.contents(), before);
    drv.assert_still_works(&mut disk);
}

#[test]
fn read_only_disk_refuses_writes() {
    let img = TempImage::new(DISK_SIZE);
    img.fill(0x55);
    let before = img.contents();
    let block = Block::new(img.cfg(true)).unwrap();
    let f = block.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    drop(block);

    let mut disk = Disk::open(&img.cfg(true)).unwrap();
    assert!(disk.read_only());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_OUT, 0, &[(DATA, 4096, R)]),
        (1, IOERR)
    );
    write_segment(&mem, DATA2, 0, 8, 0);
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        assert_eq!(drv.request(&mut disk, t, 0, &[(DATA2, 16, R)]), (1, IOERR));
    }
    assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
    assert_eq!(
        drv.request(&mut disk, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]),
        (513, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA, 512), vec![0x55; 512]);
    assert_eq!(img.contents(), before);
    assert_eq!(disk.stats().snapshot().errors, 3);
}

/// Each bad request gets its status (or len 0 without one), and a good request after it
/// still works.
#[test]
fn hostile_requests() {
    let (img, mut disk, mem) = setup(false);
    img.fill(0x11);
    let before = img.contents();
    let mut drv = Driver::new(&mem);
    let mem_end = MEM_SIZE as u64;
    let t_in = VIRTIO_BLK_T_IN;
    let t_out = VIRTIO_BLK_T_OUT;

    // Header problems (status is fine): IOERR.
    write_header(&mem, HDR, t_in, 0);
    let bad_headers: [&[(u64, u32, u16)]; 5] = [
        &[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)],
        &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)],
        &[(mem_end - 8, 16, R), (DATA, 512, W), (STATUS, 1, W)],
        &[(u64::MAX - 7, 16, R), (DATA, 512, W), (STATUS, 1, W)],
        &[(STATUS, 1, W)],
    ];
    for chain in bad_headers {
        assert_eq!(drv.submit(&mut disk, chain), (1, IOERR), "{chain:?}");
        drv.assert_still_works(&mut disk);
    }

    // Request problems: (type, sector, data) -> status.
    let big = SIZE_MAX + 512;
    let cases: Vec<(u32, u64, Vec<Desc>, u8)> = vec![
        // data direction
        (t_in, 0, vec![(DATA, 512, R)], IOERR),
        (t_out, 0, vec![(DATA, 512, W)], IOERR),
        (t_in, 0, vec![(DATA, 512, W), (DATA2, 512, R)], IOERR),
        // beyond the end, and overflow
        (t_in, NSECTORS, vec![(DATA, 512, W)], IOERR),
        (t_in, NSECTORS - 1, vec![(DATA, 1024, W)], IOERR),
        (t_out, NSECTORS, vec![(DATA, 512, R)], IOERR),
        (t_in, u64::MAX, vec![(DATA, 512, W)], IOERR),
        (t_in, u64::MAX - 1, vec![(DATA, 1024, W)], IOERR),
        (t_out, u64::MAX >> 9, vec![(DATA, 512, R)], IOERR),
        (t_out, (u64::MAX >> 9) + 1, vec![(DATA, 512, R)], IOERR),
        // not a multiple of 512
        (t_in, 0, vec![(DATA, 100, W)], IOERR),
        (t_out, 0, vec![(DATA, 256, R), (DATA2, 512, R)], IOERR),
        // outside guest memory
        (t_in, 0, vec![(mem_end - 256, 512, W)], IOERR),
        (t_in, 0, vec![(mem_end, 512, W)], IOERR),
        (t_out, 0, vec![(u64::MAX - 255, 512, R)], IOERR),
        // larger than size_max
        (t_in, 0, vec![(DATA, big, W)], IOERR),
        (t_out, 0, vec![(DATA, big, R)], IOERR),
        // unsupported types
        (99, 0, vec![(DATA, 512, W)], UNSUPP),
        (VIRTIO_BLK_T_SCSI_CMD, 0, vec![], UNSUPP),
        (VIRTIO_BLK_T_SECURE_ERASE, 0, vec![(DATA, 16, R)], UNSUPP),
        (u32::MAX, 0, vec![(u64::MAX, 512, R)], UNSUPP),
    ];
    let mut errors = 0;
    for (t, sector, data, want) in cases {
        mem.write_slice(&[0x77; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(
            drv.request(&mut disk, t, sector, &data),
            (1, want),
            "type {t} sector {sector} data {data:?}"
        );
        errors += 1;
        // Failed reads do not write the guest's buffer either.
        assert_eq!(guest_bytes(&mem, DATA, 1024), vec![0x77; 1024]);
        drv.assert_still_works(&mut disk);
    }
    // size_max itself is fine.
    assert_eq!(
        drv.request(&mut disk, t_in, 0, &[(DATA, SIZE_MAX, W)]),
        (SIZE_MAX + 1, OK)
    );
    // Too many segments.
    let segs: Vec<(u64, u32, u16)> = (0..=SEG_MAX as u64)
        .map(|i| (DATA + 512 * i, 512, W))
        .collect();
    assert_eq!(drv.request(&mut disk, t_in, 0, &segs), (1, IOERR));
    errors += 1;
    drv.assert_still_works(&mut disk);

    // No status byte: used length 0, nothing written, counted.
    write_header(&mem, HDR, t_in, 0);
    let no_status: [&[(u64, u32, u16)]; 5] = [
        &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)],
        &[(HDR, 16, R), (DATA, 512, R)],
        &[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)],
        &[(HDR, 16, R), (DATA, 512, W), (mem_end, 1, W)],
        &[(HDR, 16, R), (DATA, 512, W), (u64::MAX, 2, W)],
    ];
    for (i, chain) in no_status.iter().enumerate() {
        mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(drv.submit(&mut disk, chain), (0, 0xff), "{chain:?}");
        assert_eq!(guest_bytes(&mem, DATA, 512), vec![0x77; 512]);
        assert_eq!(disk.stats().snapshot().invalid_chains, i as u64 + 1);
        drv.assert_still_works(&mut disk);
    }

    // A chain whose next pointers loop: 0 -> 1 -> 0.
    let next = VRING_DESC_F_NEXT as u16;
    drv.q
        .add_raw(&[(HDR, 16, next, 1), (STATUS, 1, W | next, 0)]);
    let used = drv.run(&mut disk);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0);
    // A chain that points at itself, and one whose next index is past the queue.
    drv.q.add_raw(&[(HDR, 16, next, 0)]);
    drv.q.add_raw(&[(HDR, 16, next, QUEUE_SIZE + 5)]);
    let used = drv.run(&mut disk);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
    assert_eq!(disk.stats().snapshot().invalid_chains, 8);
    drv.assert_still_works(&mut disk);

    let s = disk.stats().snapshot();
    assert_eq!(s.errors, errors + 5);
    assert_eq!(img.contents(), before, "no bad request wrote the disk");
}

#[test]
fn avail_head_out_of_range_is_skipped() {
    let (_img, mut disk, mem) = setup(false);
    let mut drv = Driver::new(&mem);
    // An avail entry naming descriptor 300 of a 256-entry table.
    drv.q.publish(300);
    assert!(drv.run(&mut disk).is_empty());
    assert_eq!(disk.stats().snapshot().invalid_chains, 1);
    drv.assert_still_works(&mut disk);
}

#[test]
fn config_space_layout() {
    use std::mem::offset_of;
    type C = virtio_blk_config;
    let img = TempImage::new(DISK_SIZE);
    let block = Block::new(img.cfg(false)).unwrap();
    let read32 = |off: usize| {
        let mut b = [0u8; 4];
        block.read_config(off as u64, &mut b);
        u32::from_le_bytes(b)
    };
    let mut cap = [0u8; 8];
    block.read_config(offset_of!(C, capacity) as u64, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), NSECTORS);
    assert_eq!(block.capacity_sectors(), NSECTORS);
    assert_eq!(read32(offset_of!(C, size_max)), SIZE_MAX);
    assert_eq!(read32(offset_of!(C, seg_max)), SEG_MAX);
    assert_eq!(read32(offset_of!(C, blk_size)), 512);
    assert_eq!(
        read32(offset_of!(C, max_discard_sectors)),
        MAX_DISCARD_SECTORS
    );
    assert_eq!(read32(offset_of!(C, max_discard_seg)), 1);
    assert_eq!(
        read32(offset_of!(C, discard_sector_alignment)),
        DISCARD_SECTOR_ALIGNMENT
    );
    assert_eq!(
        read32(offset_of!(C, max_write_zeroes_sectors)),
        MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(read32(offset_of!(C, max_write_zeroes_seg)), 1);
    let mut b = [0u8; 1];
    block.read_config(offset_of!(C, write_zeroes_may_unmap) as u64, &mut b);
    assert_eq!(b[0], 1);
    assert_eq!(offset_of!(C, max_secure_erase_sectors), CONFIG_SIZE);
    // Partly and wholly out of range, and offsets that overflow.
    let mut b = [0xffu8; 8];
    block.read_config(CONFIG_SIZE as u64 - 4, &mut b);
    assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0]);
    let mut b = [0xffu8; 4];
    block.read_config(u64::MAX - 1, &mut b);
    assert_eq!(b, [0; 4]);
    // Config writes are ignored.
    let mut block = block;
    block.write_config(0, &[1, 2, 3, 4]);
    assert_eq!(block.capacity_sectors(), NSECTORS);

    assert_eq!(block.device_type(), TYPE_BLOCK);
    assert_eq!(block.queue_max_sizes(), &[256]);
    let f = block.features();
    for bit in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        32,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn open_errors_name_the_path_and_the_fix() {
    let img = TempImage::new(DISK_SIZE);
    let msg = |cfg: BlockConfig| Block::new(cfg).unwrap_err().to_string();

    let mut cfg = img.cfg(false);
    cfg.path = img.dir.join("missing.img");
    let m = msg(cfg);
    assert!(
        m.contains("missing.img") && m.contains("does not exist"),
        "{m}"
    );

    let mut cfg = img.cfg(false);
    cfg.path = img.dir.path().to_path_buf();
    let m = msg(cfg);
    assert!(m.contains("is a directory"), "{m}");

    let mut cfg = img.cfg(false);
    cfg.id = Some("x".repeat(21));
    let m = msg(cfg);
    assert!(m.contains("21 bytes") && m.contains("at most 20"), "{m}");

    let odd = img.dir.join("odd.img");
    File::create(&odd).unwrap().set_len(1000).unwrap();
    let mut cfg = img.cfg(false);
    cfg.path = odd;
    let m = msg(cfg);
    assert!(
        m.contains("odd.img") && m.contains("truncate -s 1024"),
        "{m}"
    );

    // Two writers on one image: the second is refused; readers share.
    let _first = Block::new(img.cfg(false)).unwrap();
    let m = msg(img.cfg(false));
    assert!(m.contains("locked"), "{m}");
    drop(_first);
    let _r1 = Block::new(img.cfg(true)).unwrap();
    let _r2 = Block::new(img.cfg(true)).unwrap();

    // A file we may not write (unless we are root, who may).
    let ro = img.dir.join("ro.img");
    File::create(&ro).unwrap().set_len(4096).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&ro, perms).unwrap();
    let mut cfg = img.cfg(false);
    cfg.path = ro;
    if let Err(e) = Block::new(cfg) {
        let m = e.to_string();
        assert!(
            m.contains("permission denied") && m.contains("read_only"),
            "{m}"
        );
    }
}

#[test]
fn direct_io_with_unaligned_buffers() {
    let img = TempImage::new(DISK_SIZE);
    let mut cfg = img.cfg(false);
    cfg.direct_io = true;
    let mut disk = match Disk::open(&cfg) {
        Ok(d) => d,
        Err(BlockError::DirectIoUnsupported { .. }) => return, // e.g. tmpfs
        Err(e) => panic!("{e}"),
    };
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let data = pattern(1536, 1);
    // 4 KiB aligned, then 512-aligned, then byte-aligned buffers.
    for (n, addr) in [DATA, DATA + 512, DATA + 3].into_iter().enumerate() {
        mem.write_slice(&data, GuestAddress(addr)).unwrap();
        let sector = 8 * n as u64;
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_OUT, sector, &[(addr, 1536, R)]),
            (1, OK)
        );
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_IN, sector, &[(DATA2 + 1, 1536, W)]),
            (1537, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA2 + 1, 1536), data);
    }
    assert_eq!(&img.contents()[8 * 512..8 * 512 + 1536], &data[..]);
}

#[test]
fn worker_thread_serves_kicks() {
    let img = TempImage::new(DISK_SIZE);
    let mut cfg = img.cfg(false);
    cfg.id = Some("worker-test".into());
    let mut block = Block::new(cfg).unwrap();
    assert_eq!(block.name(), "virtio-blk-worker-test");
    assert!(!block.reset(), "not active yet");
    block.ack_features(block.features());

    let mem = memory();
    let mut drv = Driver::new(&mem);
    let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
    let notify = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();

    // Wrong queue count is refused.
    let err = block
        .activate(mem.clone(), irq.clone(), Vec::new())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 1 }));

    let queue = drv.q.new_queue();
    block
        .activate(
            mem.clone(),
            irq.clone(),
            vec![ActiveQueue {
                queue,
                notify: notify.try_clone().unwrap(),
            }],
        )
        .unwrap();
    assert!(block.is_active());

    let data = pattern(2048, 9);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 40);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    drv.q.add(&[(HDR, 16, R), (DATA, 2048, R), (STATUS, 1, W)]);
    notify.write(1).unwrap();
    wait_for("used entry 1", || drv.q.used_idx() == 1);
    wait_for("interrupt 1", || irq.0.load(Ordering::SeqCst) >= 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    assert_eq!(&img.contents()[40 * 512..40 * 512 + 2048], &data[..]);

    // A second kick, for a read. With EVENT_IDX the driver asks for the next interrupt
    // by writing used_event (after the avail ring entries).
    let used_event = drv.q.ring().used_event();
    mem.write_obj(1u16, used_event).unwrap();
    write_header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 40);
    drv.q
        .add(&[(HDR + 0x100, 16, R), (DATA2, 2048, W), (STATUS + 1, 1, W)]);
    notify.write(1).unwrap();
    wait_for("used entry 2", || drv.q.used_idx() == 2);
    wait_for("interrupt 2", || irq.0.load(Ordering::SeqCst) >= 2);
    assert_eq!(guest_bytes(&mem, DATA2, 2048), data);
    let used = drv.q.used_elem(1);
    assert_eq!(used.len(), 2049);

    // used_event left at 1: completing request 3 needs no interrupt.
    write_header(&mem, HDR + 0x200, VIRTIO_BLK_T_FLUSH, 0);
    drv.q.add(&[(HDR + 0x200, 16, R), (STATUS + 2, 1, W)]);
    notify.write(1).unwrap();
    wait_for("used entry 3", || drv.q.used_idx() == 3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(irq.0.load(Ordering::SeqCst), 2);

    assert_eq!(block.stats().snapshot().requests, 3);
    assert!(block.reset());
    assert!(!block.is_active());
    assert!(!block.reset());

    // The disk came back: the device can be activated again, and drop stops it.
    let queue = SplitRing::new(0x8000, 16).queue();
    block
        .activate(
            mem.clone(),
            irq,
            vec![ActiveQueue {
                queue,
                notify: notify.try_clone().unwrap(),
            }],
        )
        .unwrap();
    drop(block);
}

#[test]
fn fuzz_harness_on_random_inputs() {
    let img = TempImage::new(64 * 1024);
    let mut rw = Disk::open(&img.cfg(false)).unwrap();
    let img_ro = TempImage::new(64 * 1024);
    let mut ro = Disk::open(&img_ro.cfg(true)).unwrap();
    let mem = fuzz_memory();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..3000 {
        let len = (rng.next() % 1200) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Bias towards plausible chains: small lengths, in-memory addresses, real types.
        for d in 0..16 {
            let base = 1 + 10 * d;
            if base + 10 > input.len() {
                break;
            }
            if rng.next() & 3 != 0 {
                input[base + 3] &= 0x3f; // payload address
                input[base + 7] = [0x00, 0x40][(rng.next() % 2) as usize];
                input[base + 9] = (d as u8 + 1) % 16;
            }
        }
        let payload = 1 + 160 + (input.first().copied().unwrap_or(0) % 17) as usize;
        let mut at = payload;
        while at + 16 <= input.len() {
            let types = [0u8, 1, 4, 8, 11, 13, 2, 77];
            input[at] = types[(rng.next() % 8) as usize];
            input[at + 1..at + 4].fill(0);
            input[at + 9..at + 16].fill(0);
            at += 16 * (1 + (rng.next() % 4) as usize);
        }
        let disk = if i % 5 == 0 { &mut ro } else { &mut rw };
        fuzz_blk_request(disk, &mem, &input);
    }
    let s = rw.stats().snapshot();
    assert!(s.requests > 1000, "{s:?}");
    // The generator must reach success, errors and invalid chains alike.
    assert!(s.errors > 0 && s.invalid_chains > 0, "{s:?}");
    assert!(s.requests > s.errors + s.invalid_chains, "{s:?}");
}
