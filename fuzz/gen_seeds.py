#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the vsock_tx, mmio_registers, fuse_standby and
vm_config_toml targets to corpus/<target>/seed-* (the only corpus files git keeps; libFuzzer
names what it finds by hash). Run from fuzz/: python3 gen_seeds.py

The layouts are documented at the top of each fuzz_targets/<target>.rs."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
QUEUE_SIZE = 16
NEXT, WRITE, INDIRECT = 1, 2, 4


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def addr(off):
    """Address selector of payload offset `off` (guest address 0x1000 + off)."""
    assert 0 <= off < 0x20000
    return off


def length(n):
    """Length selector of n bytes."""
    if n <= 0x7FF:
        return n
    assert n <= 0x1FFFF
    return 0x8000_0000 | n


def ring(descs, heads):
    """descs: up to 16 (payload offset, len, flags, next); heads: avail head indices."""
    out = b""
    for i in range(QUEUE_SIZE):
        off, n, flags, nxt = descs[i] if i < len(descs) else (0, 0, 0, 0)
        out += struct.pack("<IIBB", addr(off), length(n), flags, nxt)
    hb = bytes(heads) + bytes(QUEUE_SIZE - len(heads))
    return out + hb


class Payload:
    def __init__(self):
        self.buf = bytearray()

    def put(self, off, data):
        if len(self.buf) < off + len(data):
            self.buf.extend(bytes(off + len(data) - len(self.buf)))
        self.buf[off : off + len(data)] = data
        return off


# --- vsock_tx ------------------------------------------------------------------------------

REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7
CID, HOST = 3, 2
HOST_PORT = 1 << 30
HEADER = 44


def vhdr(op, src_port, dst_port, length=0, flags=0, buf_alloc=256 * 1024, fwd_cnt=0,
         src=CID, dst=HOST, type_=1):
    return struct.pack("<QQIIIHHIII", src, dst, src_port, dst_port, length, type_, op, flags,
                       buf_alloc, fwd_cnt)


def vsock_input(ctrl, tx_packets, split, n_rx=8, step=0, line=b"", actions=b"", events=b"",
                tx_descs=None, payload=None):
    """tx_packets: list of bytes (header + payload), each in its own one-descriptor chain at
    0x100-aligned offsets. Or tx_descs (with payload, a Payload) gives the descriptors; chains
    then start at every descriptor no other one's `next` names."""
    p = payload or Payload()
    if tx_descs is None:
        tx_descs = []
        off = 0
        for pkt in tx_packets:
            p.put(off, pkt)
            tx_descs.append((off, len(pkt), 0, 0))
            off += (len(pkt) + 0xFF) & ~0xFF
    reached = {d[3] for d in tx_descs if d[2] & NEXT}
    heads = [i for i in range(len(tx_descs)) if i not in reached]
    rx_descs = [(0x10000 + i * 0x800, 0x7FF, WRITE, 0) for i in range(QUEUE_SIZE)]
    out = bytes([ctrl, len(heads), split, n_rx, step])
    out += ring(tx_descs, heads) + ring(rx_descs, list(range(QUEUE_SIZE)))
    out += line.ljust(24, b"\0")[:24] + actions.ljust(4, b"\0") + events.ljust(4, b"\0")
    return out + bytes(p.buf)


def vsock_seeds():
    hello = b"hello, host"
    write("vsock_tx", "guest-connect-data-shutdown", vsock_input(
        2, [vhdr(REQUEST, 5000, 1024),
            vhdr(RW, 5000, 1024, len(hello)) + hello,
            vhdr(CREDIT_REQUEST, 5000, 1024),
            vhdr(SHUTDOWN, 5000, 1024, flags=3)],
        split=2, actions=bytes([0x19]), events=bytes([1])))
    write("vsock_tx", "host-connect-accept-data", vsock_input(
        3, [vhdr(RESPONSE, 52, HOST_PORT),
            vhdr(RW, 52, HOST_PORT, 4) + b"data",
            vhdr(CREDIT_UPDATE, 52, HOST_PORT, fwd_cnt=100),
            vhdr(SHUTDOWN, 52, HOST_PORT, flags=2)],
        split=3, line=b"CONNECT 52\n", actions=bytes([0x31]), events=bytes([0x11])))
    write("vsock_tx", "host-connect-timeout", vsock_input(
        1, [], split=0, step=60, line=b"CONNECT 7\r\nearly data"))
    write("vsock_tx", "stray-packets-get-rst", vsock_input(
        0, [vhdr(REQUEST, 6000, 2000),                     # nothing listens: RST
            vhdr(RW, 6001, 1024, 3) + b"abc",              # no connection: RST
            vhdr(REQUEST, 1, 1024, src=4),                 # wrong source CID: dropped
            vhdr(REQUEST, 2, 1024, type_=2),               # not a stream: RST
            vhdr(42, 3, 1024),                             # unknown op: RST
            vhdr(RST, 4, 1024)],                           # RST for nothing: ignored
        split=6))
    # A connect, then one packet whose header and payload are split over 4 descriptors.
    pl = Payload()
    conn = vhdr(REQUEST, 5000, 1024)
    pl.put(0x800, conn)
    descs = [(0x800, len(conn), 0, 0)]
    pkt = vhdr(RW, 5000, 1024, 300) + bytes(range(256)) + bytes(44)
    pieces = [(0, 10), (0x100, 34), (0x200, 200), (0x400, 100)]
    at = 0
    for i, (off, n) in enumerate(pieces):
        pl.put(off, pkt[at:at + n])
        at += n
        descs.append((off, n, NEXT if i + 1 < len(pieces) else 0, i + 2))
    write("vsock_tx", "split-descriptors",
          vsock_input(2, [], split=1, tx_descs=descs, payload=pl, actions=bytes([8])))
    # The host peer does not read: 6 x 64 KiB fill the socket, the rest waits in the
    # connection's buffer until the peer reads and the socket is writable again. The RW
    # descriptors overlap (their payload is whatever memory holds).
    pl = Payload()
    conn = vhdr(REQUEST, 7000, 1024)
    pl.put(0x0, conn)
    descs = [(0x0, len(conn), 0, 0)]
    for i in range(6):
        pl.put(0x100 * (i + 1), vhdr(RW, 7000, 1024, 0x10000))
        descs.append((0x100 * (i + 1), HEADER + 0x10000, 0, 0))
    write("vsock_tx", "slow-host-reader", vsock_input(
        2, [], split=7, tx_descs=descs, payload=pl, actions=bytes([8]), events=bytes([3])))
    # 9 x 64 KiB: more than the 256 KiB the device buffers: the connection is reset.
    descs = descs[:1]
    for i in range(9):
        pl.put(0x100 * (i + 1), vhdr(RW, 7000, 1024, 0x10000))
        descs.append((0x100 * (i + 1), HEADER + 0x10000, 0, 0))
    write("vsock_tx", "credit-exceeded", vsock_input(0, [], split=10, tx_descs=descs, payload=pl))
    # Malformed chains: a write-only descriptor, a len past 64 KiB, a short chain.
    bad = vsock_input(0, [vhdr(RW, 1, 1024, 0x20000), vhdr(RW, 1, 1024, 100),
                          vhdr(REQUEST, 1, 1024)], split=3)
    bad = bytearray(bad)
    # Descriptor 2 write-only.
    bad[5 + 2 * 10 + 8] = WRITE
    write("vsock_tx", "malformed-chains", bytes(bad))


# --- mmio_registers ------------------------------------------------------------------------

REG = dict(MAGIC=0x0, VERSION=0x4, DEVICE_ID=0x8, DEVICE_FEATURES=0x10, DEVICE_FEATURES_SEL=0x14,
           DRIVER_FEATURES=0x20, DRIVER_FEATURES_SEL=0x24, QUEUE_SEL=0x30, QUEUE_NUM_MAX=0x34,
           QUEUE_NUM=0x38, QUEUE_READY=0x44, QUEUE_NOTIFY=0x50, INTERRUPT_STATUS=0x60,
           INTERRUPT_ACK=0x64, STATUS=0x70, DESC_LOW=0x80, DESC_HIGH=0x84, DRIVER_LOW=0x90,
           DRIVER_HIGH=0x94, DEVICE_LOW=0xA0, DEVICE_HIGH=0xA4, SHM_SEL=0xAC, SHM_LEN_LOW=0xB0,
           SHM_LEN_HIGH=0xB4, SHM_BASE_LOW=0xB8, SHM_BASE_HIGH=0xBC, QUEUE_RESET=0xC0,
           CONFIG_GENERATION=0xFC, CONFIG=0x100)
SIZE_IDX = {1: 0, 2: 1, 4: 2, 8: 3}


def op(kind, off, value=0):
    return struct.pack("<BHQ", kind, off, value)


def rd(reg, size=4):
    return op(0 | SIZE_IDX[size] << 2, REG[reg] if isinstance(reg, str) else reg)


def wr(reg, value, size=4):
    return op(1 | SIZE_IDX[size] << 2, REG[reg] if isinstance(reg, str) else reg, value)


def poke(addr, value):
    assert addr % 8 == 0 and addr < 0x20000
    return op(2, addr // 8, value)


def device(action):
    """0 queue interrupt, 1 config interrupt, 2 process queues, 3 transport reset."""
    return op(3 | action << 2, 0)


def desc_pokes(table, i, addr, n, flags, nxt):
    return poke(table + 16 * i, addr) + poke(table + 16 * i + 8, n | flags << 32 | nxt << 48)


def negotiate(low=(1 << 29) | (1 << 28), high=1):
    return (wr("STATUS", 1) + rd("STATUS") + wr("STATUS", 3)
            + wr("DEVICE_FEATURES_SEL", 0) + rd("DEVICE_FEATURES")
            + wr("DEVICE_FEATURES_SEL", 1) + rd("DEVICE_FEATURES")
            + wr("DRIVER_FEATURES_SEL", 0) + wr("DRIVER_FEATURES", low)
            + wr("DRIVER_FEATURES_SEL", 1) + wr("DRIVER_FEATURES", high)
            + wr("STATUS", 11) + rd("STATUS"))


def program_queue(q, size, desc, avail, used):
    return (wr("QUEUE_SEL", q) + rd("QUEUE_NUM_MAX") + wr("QUEUE_NUM", size)
            + wr("DESC_LOW", desc) + wr("DESC_HIGH", 0)
            + wr("DRIVER_LOW", avail) + wr("DRIVER_HIGH", 0)
            + wr("DEVICE_LOW", used) + wr("DEVICE_HIGH", 0)
            + wr("QUEUE_READY", 1) + rd("QUEUE_READY"))


def mmio_seeds():
    q0 = (0x1000, 0x1100, 0x1200)
    q1 = (0x2000, 0x2100, 0x2200)
    # Chains: q0 = [read 0x3000/16 -> write 0x3100/32], q1 = [write 0x4000/8].
    rings = (desc_pokes(q0[0], 0, 0x3000, 16, 1, 1) + desc_pokes(q0[0], 1, 0x3100, 32, 2, 0)
             + poke(q0[1], 1 << 16)            # flags 0, idx 1, ring[0] = 0
             + desc_pokes(q1[0], 0, 0x4000, 8, 2, 0)
             + poke(q1[1], 1 << 16))
    full = (negotiate() + program_queue(0, 16, *q0) + program_queue(1, 8, *q1) + rings
            + wr("STATUS", 15) + rd("STATUS") + rd("INTERRUPT_STATUS")
            + wr("INTERRUPT_ACK", 1) + wr("QUEUE_NOTIFY", 0)
            + poke(q0[1], 2 << 16) + device(2) + device(1) + rd("CONFIG_GENERATION")
            + rd("INTERRUPT_STATUS") + wr("INTERRUPT_ACK", 3))
    write("mmio_registers", "full-init-and-io", bytes([0]) + full + wr("STATUS", 0))
    # The used ring of queue 1 is outside guest memory: DEVICE_NEEDS_RESET; then FAILED,
    # a reset and a clean start.
    bad = (negotiate() + program_queue(0, 16, *q0) + program_queue(1, 8, 0x2000, 0x2100, 0x1FFF0)
           + wr("STATUS", 15) + rd("STATUS") + wr("STATUS", 1) + wr("STATUS", 0xFF)
           + wr("STATUS", 0) + negotiate() + program_queue(0, 16, *q0)
           + program_queue(1, 8, *q1) + rings + wr("STATUS", 15) + device(2))
    write("mmio_registers", "bad-queue-then-reset", bytes([0]) + bad)
    # The device refuses activation.
    write("mmio_registers", "activation-fails", bytes([1]) + negotiate()
          + program_queue(0, 16, *q0) + program_queue(1, 8, *q1) + wr("STATUS", 15)
          + rd("STATUS") + device(3) + rd("STATUS"))
    # Out-of-order status, features without VERSION_1, queue writes after DRIVER_OK.
    odd = (wr("STATUS", 4) + wr("STATUS", 1) + wr("STATUS", 3) + wr("DRIVER_FEATURES", 1 << 29)
           + wr("STATUS", 11) + rd("STATUS") + wr("STATUS", 0) + negotiate()
           + program_queue(0, 16, *q0) + program_queue(1, 8, *q1) + wr("STATUS", 15)
           + wr("QUEUE_SEL", 0) + wr("QUEUE_NUM", 4) + wr("DESC_LOW", 0x8000)
           + wr("QUEUE_READY", 0) + wr("QUEUE_SEL", 7) + rd("QUEUE_NUM_MAX")
           + wr("STATUS", 0x8F) + device(0) + wr("STATUS", 0))
    write("mmio_registers", "state-machine-abuse", bytes([0]) + odd)
    # Sizes other than 4, misaligned offsets, config space, shared memory, far offsets.
    sizes = b"".join(rd(r, s) for r in ("MAGIC", "STATUS", 0x101, "CONFIG") for s in (1, 2, 8))
    sizes += wr("STATUS", 1, 1) + wr("STATUS", 1, 8) + wr(0x71, 1) + rd(0x72)
    sizes += wr("CONFIG", 0x1122334455667788, 8) + wr(0x10E, 0xAABBCCDD) + rd(0x10C) + rd(0x10E, 8)
    sizes += wr("SHM_SEL", 0) + rd("SHM_LEN_LOW") + rd("SHM_LEN_HIGH") + rd("SHM_BASE_LOW")
    sizes += rd("SHM_BASE_HIGH") + wr("SHM_SEL", 1) + rd("SHM_LEN_LOW")
    sizes += rd(0xFFC) + rd(0x1000) + op(0, 0xF000) + op(1 | 2 << 2, 0xFFFF, 7)
    sizes += op(0x10 | 3 << 5, REG["STATUS"]) + op(0x11 | 6 << 5, REG["CONFIG"], 0x0102030405060708)
    write("mmio_registers", "access-sizes-config-shm", bytes([2]) + sizes)
    # Queue max size 1 and 2, an indirect descriptor and event idx.
    ind = (negotiate(low=(1 << 29) | (1 << 28)) + program_queue(0, 1, *q0) + program_queue(1, 2, *q1)
           + desc_pokes(q0[0], 0, 0x5000, 32, 4, 0)           # indirect table of 2
           + desc_pokes(0x5000, 0, 0x3000, 8, 1, 1) + desc_pokes(0x5000, 1, 0x3100, 8, 2, 0)
           + poke(q0[1], 1 << 16) + poke(q0[1] + 8, 0)
           + wr("STATUS", 15) + device(2) + rd("INTERRUPT_STATUS"))
    write("mmio_registers", "indirect-event-idx", bytes([4]) + ind)


# --- fuse_standby --------------------------------------------------------------------------

def fuse_in(opcode, unique, nodeid=1, extra=b""):
    body = struct.pack("<IIQQIIII", 40 + len(extra), opcode, unique, nodeid, 0, 0, 1, 0) + extra
    return body


def fuse_input(ctrl, errno, descs, heads, payload):
    return bytes([ctrl, len(heads)]) + struct.pack("<I", errno - 1) + ring(descs, heads) + bytes(
        payload.buf)


def fuse_seeds():
    ENOTCONN = 107
    p = Payload()
    p.put(0x000, fuse_in(1, 0x1111, extra=b"file.txt\0"))       # LOOKUP
    p.put(0x200, fuse_in(3, 0x2222))                           # GETATTR
    p.put(0x400, fuse_in(15, 0x3333, extra=bytes(24)))         # READ
    descs = [
        (0x000, 49, NEXT, 1), (0x100, 144, WRITE, 0),             # 0: request -> reply
        (0x200, 4, NEXT, 3), (0x204, 4, NEXT, 4), (0x208, 32, NEXT, 5),
        (0x300, 8, WRITE | NEXT, 6), (0x308, 8, WRITE, 0),       # 2: split both ways
        (0x400, 64, NEXT, 8), (0x500, 8, WRITE, 0),              # 7: reply does not fit
        (0x600, 8, WRITE | NEXT, 10), (0x000, 40, 0, 0),         # 9: readable after writable
    ]
    write("fuse_standby", "requests", fuse_input(0, ENOTCONN, descs, [0, 2, 7, 9], p))
    write("fuse_standby", "standby-queue1", fuse_input(2 | 1, ENOTCONN, descs, [0, 2, 7, 9], p))
    write("fuse_standby", "standby-hiprio", fuse_input(1, ENOTCONN, descs, [0, 2], p))
    # An indirect table at 0x800 (two descriptors: request, reply).
    q = Payload()
    q.put(0x000, fuse_in(1, 0x4444, extra=b"x\0"))
    q.put(0x800, struct.pack("<QIHH", 0x1000, 42, NEXT, 1) + struct.pack("<QIHH", 0x1100, 16, WRITE, 0))
    write("fuse_standby", "indirect", fuse_input(0, 5, [(0x800, 32, INDIRECT, 0)], [0], q))


# --- vm_config_toml --------------------------------------------------------------------------

def config_seeds():
    t = "vm_config_toml"
    write(t, "minimal.toml", b"""[machine]
memory_mib = 256

[boot]
kernel = "/etc/passwd"
""")
    write(t, "hello.toml", b"""[machine]
vcpus = 2
memory_mib = 256

[boot]
kernel = "guest/vmlinux"
cmdline = "console=ttyS0 reboot=k panic=-1 root=/dev/vda ro init=/init"

[console]
mode = "stdio"

[[disk]]
path = "guest/rootfs.ext4"
id = "qvm-root"
read_only = true
""")
    write(t, "everything.toml", b"""[machine]
vcpus = 4
memory_mib = 512

[boot]
kernel = "/etc/passwd"
initrd = "/etc/hostname"
cmdline = "console=ttyS0 quiet"

[console]
mode = "file"
path = "/tmp/console.log"

[[disk]]
path = "/etc/passwd"
id = "d1"
direct_io = true

[[disk]]
path = "/etc/group"

[[net]]
tap = "tap0"
mac = "52:54:00:12:34:56"

[[net]]
fd = 3

[vsock]
guest_cid = 3
socket = "/tmp/v.sock"

[[fs]]
tag = "share"
socket = "/tmp/fs.sock"
shared_dir = "/tmp"
read_only = true
virtiofsd = "virtiofsd"
""")
    write(t, "bad-values.toml", b"""[machine]
vcpus = 0
memory_mib = 16
bogus = 1

[boot]
kernel = "rel/ative"
cmdline = "\u00e9"
""")
    write(t, "body.json", b"""{"machine":{"vcpus":2,"memory_mib":256},"boot":{"kernel":"/etc/passwd",\
"initrd":null,"cmdline":"console=ttyS0"},"console":{"mode":"off","path":null},\
"disk":[{"path":"/etc/passwd","read_only":true,"id":"root","direct_io":false}],\
"net":[{"tap":"tap0","fd":null,"mac":"52:54:00:00:00:01"}],\
"vsock":{"guest_cid":3,"socket":"/tmp/v.sock"},\
"fs":[{"tag":"t","socket":"/tmp/fs.sock","shared_dir":null,"read_only":false,"virtiofsd":null}]}
""")
    write(t, "minimal.json", b'{"machine":{"memory_mib":64},"boot":{"kernel":"/etc/passwd"}}')


if __name__ == "__main__":
    config_seeds()
    fuse_seeds()
    vsock_seeds()
    mmio_seeds()
