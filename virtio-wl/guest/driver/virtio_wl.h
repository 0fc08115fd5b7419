/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * virtio_wl.h - user-space interface of the qvm virtio-wl guest driver (/dev/wl0).
 *
 * The ioctl numbers and struct layouts are the ABI that existing virtio-wl clients
 * (sommelier, wayland-proxy-virtwl) were built against; they must not change.
 */
#ifndef _UAPI_LINUX_VIRTIO_WL_H
#define _UAPI_LINUX_VIRTIO_WL_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* At most this many fds travel with one SEND or RECV. */
#define VIRTWL_SEND_MAX_ALLOCS 28

/* Values of virtwl_ioctl_new.type. */
enum virtwl_ioctl_new_type {
	VIRTWL_IOCTL_NEW_CTX = 0,	/* a connection to the host compositor */
	VIRTWL_IOCTL_NEW_ALLOC = 1,	/* shared memory of .size bytes (page-rounded) */
	VIRTWL_IOCTL_NEW_PIPE_READ = 2,	/* a pipe the guest reads from */
	VIRTWL_IOCTL_NEW_PIPE_WRITE = 3,	/* a pipe the guest writes to */
	VIRTWL_IOCTL_NEW_DMABUF = 4,	/* not supported by this driver */
	VIRTWL_IOCTL_NEW_CTX_NAMED = 5,	/* a connection to the compositor .name */
};

struct virtwl_ioctl_new {
	__u32 type;	/* enum virtwl_ioctl_new_type */
	__s32 fd;	/* out: the new vfd's file descriptor (O_CLOEXEC) */
	__u32 flags;	/* reserved, 0 */
	union {
		__u32 size;	/* ALLOC: in: bytes wanted, out: page-rounded size */
		struct {
			__u32 width;
			__u32 height;
			__u32 format;
			__u32 stride0;
			__u32 stride1;
			__u32 stride2;
			__u32 offset0;
			__u32 offset1;
			__u32 offset2;
		} dmabuf;
		char name[32];	/* CTX_NAMED: NUL-terminated */
	};
};

/* Argument of SEND and RECV on a vfd. Unused fds are -1. */
struct virtwl_ioctl_txn {
	__s32 fds[VIRTWL_SEND_MAX_ALLOCS];
	__u32 len;	/* SEND: bytes in data; RECV: in: room in data, out: bytes received */
	__u8 data[];
};

struct virtwl_ioctl_dmabuf_sync {
	__u32 flags;
};

#define VIRTWL_IOCTL_BASE 'w'
/* On /dev/wl0: 0xc0307700 */
#define VIRTWL_IOCTL_NEW _IOWR(VIRTWL_IOCTL_BASE, 0x00, struct virtwl_ioctl_new)
/*
 * On a vfd. The direction bits are the reverse of what the transfers do (SEND reads from
 * user memory but is encoded _IOR); the numbers are ABI, keep them: 0x80747701, 0x40747702.
 */
#define VIRTWL_IOCTL_SEND _IOR(VIRTWL_IOCTL_BASE, 0x01, struct virtwl_ioctl_txn)
#define VIRTWL_IOCTL_RECV _IOW(VIRTWL_IOCTL_BASE, 0x02, struct virtwl_ioctl_txn)
/* 0x80047703; dmabuf vfds are not supported, so this always fails. */
#define VIRTWL_IOCTL_DMABUF_SYNC _IOR(VIRTWL_IOCTL_BASE, 0x03, struct virtwl_ioctl_dmabuf_sync)

#endif /* _UAPI_LINUX_VIRTIO_WL_H */
