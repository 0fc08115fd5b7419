// SPDX-License-Identifier: GPL-2.0
/*
 * virtio_wl.c - guest driver for the virtio Wayland device (virtio device id 63).
 *
 * The device forwards Wayland connections, shared memory and pipes between guest and host.
 * Every object the two sides share is a "vfd" with a 32-bit id: the guest allocates ids
 * 1..0x7ff, the host ids from 0x40000000. User space sees /dev/wl0 (creates vfds) and one
 * anonymous-inode file per vfd (send/receive bytes and vfds, read/write, poll, mmap).
 *
 * Queues: 0 "in" carries host messages (VFD_NEW, VFD_RECV, VFD_HUP) into buffers the driver
 * keeps posted; 1 "out" carries guest requests, each a readable command descriptor followed
 * by a writable response descriptor. The host is not trusted: every length, count, id, page
 * frame number and size it sends is checked before use.
 *
 * Written for qvm from the protocol description; see README.md next to this file.
 */

#include <linux/anon_inodes.h>
#include <linux/completion.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/ioport.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/scatterlist.h>
#include <linux/semaphore.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#ifdef CONFIG_X86
#include <asm/processor.h>
#endif

#include "virtio_wl.h"

#define VIRTIO_ID_WL			63

/* Feature bits. SEND_FENCES (2) is deliberately not negotiated. */
#define VIRTIO_WL_F_TRANS_FLAGS		1
#define VIRTIO_WL_F_SEND_FENCES		2
#define VIRTIO_WL_F_USE_SHMEM		3

/* Commands, responses and errors (virtio_wl_ctrl_hdr.type). */
#define VIRTIO_WL_CMD_VFD_NEW		0x100
#define VIRTIO_WL_CMD_VFD_CLOSE		0x101
#define VIRTIO_WL_CMD_VFD_SEND		0x102
#define VIRTIO_WL_CMD_VFD_RECV		0x103
#define VIRTIO_WL_CMD_VFD_NEW_CTX	0x104
#define VIRTIO_WL_CMD_VFD_NEW_PIPE	0x105
#define VIRTIO_WL_CMD_VFD_HUP		0x106
#define VIRTIO_WL_CMD_VFD_NEW_DMABUF	0x107
#define VIRTIO_WL_CMD_VFD_DMABUF_SYNC	0x108
#define VIRTIO_WL_CMD_VFD_SEND_FOREIGN_ID 0x109
#define VIRTIO_WL_CMD_VFD_NEW_CTX_NAMED	0x10a
#define VIRTIO_WL_RESP_OK		0x1000
#define VIRTIO_WL_RESP_VFD_NEW		0x1001
#define VIRTIO_WL_RESP_VFD_NEW_DMABUF	0x1002
#define VIRTIO_WL_RESP_ERR		0x1100
#define VIRTIO_WL_RESP_OUT_OF_MEMORY	0x1101
#define VIRTIO_WL_RESP_INVALID_ID	0x1102
#define VIRTIO_WL_RESP_INVALID_TYPE	0x1103
#define VIRTIO_WL_RESP_INVALID_FLAGS	0x1104
#define VIRTIO_WL_RESP_INVALID_CMD	0x1105

/* vfd flags (meaning with VIRTIO_WL_F_TRANS_FLAGS). */
#define VIRTIO_WL_VFD_WRITE		0x1
#define VIRTIO_WL_VFD_READ		0x2
#define VIRTIO_WL_VFD_FENCE		0x8

struct virtio_wl_ctrl_hdr {
	__le32 type;
	__le32 flags;
};

/* VFD_CLOSE, VFD_HUP */
struct virtio_wl_ctrl_vfd {
	struct virtio_wl_ctrl_hdr hdr;
	__le32 vfd_id;
};

/* VFD_NEW*, NEW_CTX*, NEW_PIPE requests; RESP_VFD_NEW; host VFD_NEW messages */
struct virtio_wl_ctrl_vfd_new {
	struct virtio_wl_ctrl_hdr hdr;
	__le32 vfd_id;
	__le32 flags;
	__le64 pfn;
	__le32 size;
	union {
		struct {
			__le32 width;
			__le32 height;
			__le32 format;
			__le32 stride0;
			__le32 stride1;
			__le32 stride2;
			__le32 offset0;
			__le32 offset1;
			__le32 offset2;
		} dmabuf;
		char name[32];
	};
};

/* VFD_SEND (guest to host), VFD_RECV (host to guest): then vfd_count ids, then bytes */
struct virtio_wl_ctrl_vfd_xfer {
	struct virtio_wl_ctrl_hdr hdr;
	__le32 vfd_id;
	__le32 vfd_count;
};

static_assert(sizeof(struct virtio_wl_ctrl_hdr) == 8);
static_assert(sizeof(struct virtio_wl_ctrl_vfd) == 12);
static_assert(offsetof(struct virtio_wl_ctrl_vfd_new, pfn) == 16);
static_assert(offsetof(struct virtio_wl_ctrl_vfd_new, size) == 24);
static_assert(offsetof(struct virtio_wl_ctrl_vfd_new, name) == 28);
static_assert(sizeof(struct virtio_wl_ctrl_vfd_new) == 64);
static_assert(sizeof(struct virtio_wl_ctrl_vfd_xfer) == 16);
static_assert(VIRTWL_IOCTL_NEW == 0xc0307700);
static_assert(VIRTWL_IOCTL_SEND == 0x80747701);
static_assert(VIRTWL_IOCTL_RECV == 0x40747702);
static_assert(VIRTWL_IOCTL_DMABUF_SYNC == 0x80047703);

/* A VFD_NEW message or response must reach at least up to and including .size. */
#define VIRTWL_VFD_NEW_MIN_LEN		offsetof(struct virtio_wl_ctrl_vfd_new, name)

#define VIRTWL_GUEST_ID_MIN		1
#define VIRTWL_GUEST_ID_MAX		0x7ff
#define VIRTWL_HOST_ID_MIN		0x40000000u
/* idr ids are ints */
#define VIRTWL_HOST_ID_MAX		(INT_MAX - 1)

#define VIRTWL_IN_BUFS			32
#define VIRTWL_IN_BUF_SIZE		4096
/* Largest VFD_SEND command: header, ids and bytes. */
#define VIRTWL_MAX_SEND_CMD		16384
/* Bytes the host may queue on one vfd that nobody reads before more are dropped. */
#define VIRTWL_RX_MAX_QUEUED		(16u << 20)

struct virtwl_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct virtqueue *in_vq;
	struct virtqueue *out_vq;
	bool trans_flags;
	bool use_shmem;
	struct virtio_shm_region shm;
	struct resource *shm_res;
	int index;
	char name[16];
	struct miscdevice misc;

	/* in queue: the buffers and the vring, used by probe and in_work */
	spinlock_t in_lock;
	void *in_bufs[VIRTWL_IN_BUFS];
	unsigned int in_nbufs;
	struct work_struct in_work;

	/* out queue: the vring and .removed (irq-safe) */
	spinlock_t out_lock;
	struct semaphore out_slots;	/* requests that may be in flight */

	/* vfds by id; .removed is written with both locks held */
	struct mutex vfds_lock;
	struct idr vfds;
	bool removed;
};

/*
 * A vfd. References: one for its idr entry (dropped when it is closed), one per file, one
 * held by the rx entry that carries it to user space, plus temporary ones.
 */
struct virtwl_vfd {
	struct kref ref;
	struct virtwl_dev *wl;
	u32 id;
	u32 flags;		/* as the host reported them */
	bool writable;		/* POLLOUT */
	bool host_known;	/* the host has it: close it there */
	u64 pfn;		/* absolute page frame number of the memory */
	u64 size;		/* page-rounded bytes that mmap may map; 0: none */

	spinlock_t lock;	/* the fields below */
	struct list_head rx;	/* struct virtwl_rx, oldest first */
	size_t rx_bytes;
	bool hup;
	bool closed;		/* out of the idr; closed on the host */
	bool attached;		/* carried by a queued rx entry */
	bool installed;		/* has a file */

	wait_queue_head_t wq;
	struct mutex rx_mutex;	/* one reader at a time; entries stay put under it */
	struct list_head close_node;
};

/* Bytes and vfds the host sent to one vfd (one VFD_RECV). */
struct virtwl_rx {
	struct list_head node;
	unsigned int nvfds;	/* vfds not yet handed out: they come with the first bytes */
	struct virtwl_vfd *vfds[VIRTWL_SEND_MAX_ALLOCS];
	size_t len;
	size_t off;
	u8 data[];
};

/* One guest request on the out queue. */
struct virtwl_req {
	struct completion done;
	bool answered;		/* under out_lock */
	bool abandoned;		/* nobody waits: the callback frees it */
	unsigned int resp_len;
	size_t cmd_len;
	struct virtio_wl_ctrl_vfd_new resp ____cacheline_aligned;
	u8 cmd[] ____cacheline_aligned;
};

static DEFINE_IDA(virtwl_ida);
static const struct file_operations virtwl_vfd_fops;

static void virtwl_dev_free(struct kref *ref)
{
	struct virtwl_dev *wl = container_of(ref, struct virtwl_dev, ref);

	idr_destroy(&wl->vfds);
	put_device(&wl->vdev->dev);
	kfree(wl);
}

/* ---- the out queue ---- */

static struct virtwl_req *virtwl_req_alloc(size_t cmd_len)
{
	struct virtwl_req *req = kzalloc(struct_size(req, cmd, cmd_len), GFP_KERNEL);

	if (!req)
		return NULL;
	init_completion(&req->done);
	req->cmd_len = cmd_len;
	return req;
}

/* Called with out_lock held. */
static void virtwl_req_finish(struct virtwl_dev *wl, struct virtwl_req *req, unsigned int len)
{
	req->resp_len = min_t(unsigned int, len, sizeof(req->resp));
	up(&wl->out_slots);
	if (req->abandoned) {
		kfree(req);
		return;
	}
	req->answered = true;
	complete(&req->done);
}

static void virtwl_out_cb(struct virtqueue *vq)
{
	struct virtwl_dev *wl = vq->vdev->priv;
	struct virtwl_req *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&wl->out_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len)))
			virtwl_req_finish(wl, req, len);
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&wl->out_lock, flags);
}

enum virtwl_wait {
	VIRTWL_NO_WAIT,		/* fire and forget, ignore the answer */
	VIRTWL_WAIT,		/* uninterruptible */
	VIRTWL_WAIT_KILLABLE,
};

static int virtwl_resp_errno(u32 type)
{
	switch (type) {
	case VIRTIO_WL_RESP_OK:
	case VIRTIO_WL_RESP_VFD_NEW:
		return 0;
	case VIRTIO_WL_RESP_ERR:
		return -ENODEV;
	case VIRTIO_WL_RESP_OUT_OF_MEMORY:
		return -ENOMEM;
	case VIRTIO_WL_RESP_INVALID_ID:
		return -ENOENT;
	case VIRTIO_WL_RESP_INVALID_TYPE:
		return -EINVAL;
	case VIRTIO_WL_RESP_INVALID_FLAGS:
		return -EPERM;
	case VIRTIO_WL_RESP_INVALID_CMD:
		return -ENOTTY;
	default:
		return -EIO;
	}
}

/*
 * Sends @req and, unless @wait is VIRTWL_NO_WAIT, waits for the answer, copies it to @resp
 * (zero-filled past what the device wrote) and returns the response's errno. Always
 * consumes @req. -ENODEV once the device is gone; -EINTR if killed while waiting (the
 * request still reaches the host).
 */
static int virtwl_req_submit(struct virtwl_dev *wl, struct virtwl_req *req,
			     enum virtwl_wait wait, struct virtio_wl_ctrl_vfd_new *resp)
{
	struct scatterlist out_sg, in_sg, *sgs[2] = { &out_sg, &in_sg };
	unsigned long flags;
	int ret;

	if (wait == VIRTWL_WAIT_KILLABLE) {
		if (down_killable(&wl->out_slots)) {
			kfree(req);
			return -EINTR;
		}
	} else {
		down(&wl->out_slots);
	}
	req->abandoned = wait == VIRTWL_NO_WAIT;
	sg_init_one(&out_sg, req->cmd, req->cmd_len);
	sg_init_one(&in_sg, &req->resp, sizeof(req->resp));

	spin_lock_irqsave(&wl->out_lock, flags);
	if (wl->removed)
		ret = -ENODEV;
	else
		ret = virtqueue_add_sgs(wl->out_vq, sgs, 1, 1, req, GFP_ATOMIC);
	if (!ret)
		virtqueue_kick(wl->out_vq);
	spin_unlock_irqrestore(&wl->out_lock, flags);
	if (ret) {
		up(&wl->out_slots);
		kfree(req);
		return ret;
	}
	if (wait == VIRTWL_NO_WAIT)
		return 0;

	if (wait == VIRTWL_WAIT_KILLABLE) {
		if (wait_for_completion_killable(&req->done)) {
			spin_lock_irqsave(&wl->out_lock, flags);
			if (!req->answered) {
				req->abandoned = true;
				req = NULL;
			}
			spin_unlock_irqrestore(&wl->out_lock, flags);
			if (!req)
				return -EINTR;
		}
	} else {
		wait_for_completion(&req->done);
	}

	if (req->resp_len < sizeof(struct virtio_wl_ctrl_hdr)) {
		/* detached at removal, or a device that wrote nothing */
		ret = -ENODEV;
	} else {
		ret = virtwl_resp_errno(le32_to_cpu(req->resp.hdr.type));
		if (ret == -EIO)
			dev_warn_ratelimited(&wl->vdev->dev, "unknown response type %#x\n",
					     le32_to_cpu(req->resp.hdr.type));
	}
	if (resp) {
		memset(resp, 0, sizeof(*resp));
		memcpy(resp, &req->resp, req->resp_len);
	}
	kfree(req);
	return ret;
}

static void virtwl_send_close(struct virtwl_dev *wl, u32 id)
{
	struct virtio_wl_ctrl_vfd *cmd;
	struct virtwl_req *req;

	req = virtwl_req_alloc(sizeof(*cmd));
	if (!req)
		return;
	cmd = (struct virtio_wl_ctrl_vfd *)req->cmd;
	cmd->hdr.type = cpu_to_le32(VIRTIO_WL_CMD_VFD_CLOSE);
	cmd->vfd_id = cpu_to_le32(id);
	virtwl_req_submit(wl, req, VIRTWL_NO_WAIT, NULL);
}

/* ---- vfds ---- */

static struct virtwl_vfd *virtwl_vfd_alloc(struct virtwl_dev *wl)
{
	struct virtwl_vfd *vfd = kzalloc(sizeof(*vfd), GFP_KERNEL);

	if (!vfd)
		return NULL;
	kref_init(&vfd->ref);
	kref_get(&wl->ref);
	vfd->wl = wl;
	spin_lock_init(&vfd->lock);
	INIT_LIST_HEAD(&vfd->rx);
	INIT_LIST_HEAD(&vfd->close_node);
	init_waitqueue_head(&vfd->wq);
	mutex_init(&vfd->rx_mutex);
	return vfd;
}

static void virtwl_vfd_free(struct kref *ref)
{
	struct virtwl_vfd *vfd = container_of(ref, struct virtwl_vfd, ref);
	struct virtwl_dev *wl = vfd->wl;

	/* queues are purged when a vfd is closed and no reader can be left */
	WARN_ON(!list_empty(&vfd->rx));
	mutex_destroy(&vfd->rx_mutex);
	kfree(vfd);
	kref_put(&wl->ref, virtwl_dev_free);
}

static void virtwl_vfd_put(struct virtwl_vfd *vfd)
{
	kref_put(&vfd->ref, virtwl_vfd_free);
}

/* The vfd with @id, with a reference, or NULL. */
static struct virtwl_vfd *virtwl_vfd_get(struct virtwl_dev *wl, u32 id)
{
	struct virtwl_vfd *vfd = NULL;

	if (id > INT_MAX)
		return NULL;
	mutex_lock(&wl->vfds_lock);
	vfd = idr_find(&wl->vfds, id);
	if (vfd)
		kref_get(&vfd->ref);
	mutex_unlock(&wl->vfds_lock);
	return vfd;
}

/* Hands the vfds @rx still carries (with their references) to @todo, frees @rx. */
static void virtwl_rx_drop(struct virtwl_rx *rx, struct list_head *todo)
{
	unsigned int i;

	for (i = 0; i < rx->nvfds; i++)
		list_add_tail(&rx->vfds[i]->close_node, todo);
	kfree(rx);
}

/*
 * Takes @vfd out of service: out of the idr, closed on the host, its queue emptied (the
 * vfds queued entries carry are added to @todo), readers woken with end-of-stream.
 * Lock order: rx_mutex, vfds_lock, lock. The caller must not hold any vfd's rx_mutex.
 */
static void virtwl_vfd_shutdown(struct virtwl_vfd *vfd, struct list_head *todo)
{
	struct virtwl_dev *wl = vfd->wl;
	struct virtwl_rx *rx, *tmp;
	LIST_HEAD(entries);
	bool was_open;

	mutex_lock(&vfd->rx_mutex);	/* no reader is inside an entry */
	mutex_lock(&wl->vfds_lock);
	spin_lock(&vfd->lock);
	was_open = !vfd->closed;
	vfd->closed = true;
	vfd->hup = true;
	list_splice_init(&vfd->rx, &entries);
	vfd->rx_bytes = 0;
	spin_unlock(&vfd->lock);
	if (was_open && idr_find(&wl->vfds, vfd->id) == vfd)
		idr_remove(&wl->vfds, vfd->id);
	else
		was_open = false;	/* never made it into the idr */
	mutex_unlock(&wl->vfds_lock);
	mutex_unlock(&vfd->rx_mutex);

	wake_up_interruptible_poll(&vfd->wq, EPOLLIN | EPOLLHUP);
	list_for_each_entry_safe(rx, tmp, &entries, node)
		virtwl_rx_drop(rx, todo);
	if (was_open) {
		if (vfd->host_known)
			virtwl_send_close(wl, vfd->id);
		virtwl_vfd_put(vfd);	/* the idr's reference */
	}
}

/*
 * Closes every vfd on @todo and drops the reference each one came with. Works through the
 * list instead of recursing: a closed vfd's queue can carry further vfds to close.
 */
static void virtwl_vfd_close_list(struct list_head *todo)
{
	struct virtwl_vfd *vfd;

	while (!list_empty(todo)) {
		vfd = list_first_entry(todo, struct virtwl_vfd, close_node);
		list_del_init(&vfd->close_node);
		virtwl_vfd_shutdown(vfd, todo);
		virtwl_vfd_put(vfd);
	}
}

/* Device gone: every vfd ends, open files see end-of-stream, the others are freed. */
static void virtwl_close_all(struct virtwl_dev *wl)
{
	struct virtwl_vfd *vfd;
	LIST_HEAD(todo);
	int id;

	for (;;) {
		id = 0;
		mutex_lock(&wl->vfds_lock);
		vfd = idr_get_next(&wl->vfds, &id);
		if (vfd)
			kref_get(&vfd->ref);
		mutex_unlock(&wl->vfds_lock);
		if (!vfd)
			break;
		list_add(&vfd->close_node, &todo);
		virtwl_vfd_close_list(&todo);
	}
}

/* Closes @vfd for good, consuming the caller's reference. */
static void virtwl_vfd_close(struct virtwl_vfd *vfd)
{
	LIST_HEAD(todo);

	list_add(&vfd->close_node, &todo);
	virtwl_vfd_close_list(&todo);
}

/*
 * Checks the memory the host offers for a vfd and turns it into an absolute page frame
 * number: @pfn is guest-physical, or with USE_SHMEM a page offset into region 0.
 */
static int virtwl_vfd_set_mem(struct virtwl_dev *wl, struct virtwl_vfd *vfd, u64 pfn, u32 size)
{
	u64 len = PAGE_ALIGN((u64)size);
	u64 addr;

	if (!len)
		return -EIO;
	if (wl->use_shmem) {
		if (pfn > (wl->shm.len >> PAGE_SHIFT) ||
		    len > wl->shm.len - (pfn << PAGE_SHIFT))
			return -EIO;
		addr = wl->shm.addr + (pfn << PAGE_SHIFT);
	} else {
		if (pfn > (PHYS_ADDR_MAX >> PAGE_SHIFT))
			return -EIO;
		addr = pfn << PAGE_SHIFT;
		if (addr + len < addr || addr + len - 1 > PHYS_ADDR_MAX)
			return -EIO;
#ifdef CONFIG_X86
		if (boot_cpu_data.x86_phys_bits < 64 &&
		    addr + len > BIT_ULL(boot_cpu_data.x86_phys_bits))
			return -EIO;
#endif
		/* the host must not hand out the guest's own RAM */
		if (region_intersects(addr, len, IORESOURCE_SYSTEM_RAM, IORES_DESC_NONE) !=
		    REGION_DISJOINT)
			return -EIO;
	}
	vfd->pfn = PHYS_PFN(addr);
	vfd->size = len;
	return 0;
}

/* ---- host messages (the in queue) ---- */

static void virtwl_in_vfd_new(struct virtwl_dev *wl, const void *buf, size_t len)
{
	const struct virtio_wl_ctrl_vfd_new *msg = buf;
	struct virtwl_vfd *vfd;
	u32 id, flags, size;
	int ret;

	if (len < VIRTWL_VFD_NEW_MIN_LEN) {
		dev_warn_ratelimited(&wl->vdev->dev, "short VFD_NEW (%zu bytes)\n", len);
		return;
	}
	id = le32_to_cpu(msg->vfd_id);
	flags = le32_to_cpu(msg->flags);
	size = le32_to_cpu(msg->size);
	if (id < VIRTWL_HOST_ID_MIN || id > VIRTWL_HOST_ID_MAX) {
		dev_warn_ratelimited(&wl->vdev->dev, "VFD_NEW with a bad id %#x\n", id);
		return;
	}
	vfd = virtwl_vfd_alloc(wl);
	if (!vfd)
		return;
	vfd->id = id;
	vfd->flags = flags;
	vfd->host_known = true;
	vfd->writable = wl->trans_flags ? !!(flags & VIRTIO_WL_VFD_WRITE) : true;
	if (size && virtwl_vfd_set_mem(wl, vfd, le64_to_cpu(msg->pfn), size)) {
		dev_warn_ratelimited(&wl->vdev->dev,
				     "VFD_NEW %#x: memory pfn %#llx size %u is not usable\n",
				     id, le64_to_cpu(msg->pfn), size);
		vfd->size = 0;
		vfd->pfn = 0;
	}

	mutex_lock(&wl->vfds_lock);
	ret = wl->removed ? -ENODEV : idr_alloc(&wl->vfds, vfd, id, id + 1, GFP_KERNEL);
	mutex_unlock(&wl->vfds_lock);
	if (ret < 0) {
		if (ret == -ENOSPC)
			dev_warn_ratelimited(&wl->vdev->dev, "VFD_NEW for vfd %#x in use\n", id);
		vfd->host_known = false;	/* not ours to close */
		virtwl_vfd_put(vfd);
	}
	/* on success the reference belongs to the idr */
}

static void virtwl_in_vfd_recv(struct virtwl_dev *wl, const void *buf, size_t len)
{
	const struct virtio_wl_ctrl_vfd_xfer *msg = buf;
	const __le32 *ids = buf + sizeof(*msg);
	struct virtwl_vfd *target, *vfd;
	struct virtwl_rx *rx;
	size_t data_len;
	u32 id, count, i;
	LIST_HEAD(todo);
	bool queued = false;

	if (len < sizeof(*msg)) {
		dev_warn_ratelimited(&wl->vdev->dev, "short VFD_RECV (%zu bytes)\n", len);
		return;
	}
	id = le32_to_cpu(msg->vfd_id);
	count = le32_to_cpu(msg->vfd_count);
	if (count > VIRTWL_SEND_MAX_ALLOCS || count > (len - sizeof(*msg)) / sizeof(__le32)) {
		dev_warn_ratelimited(&wl->vdev->dev, "VFD_RECV with a bad vfd count %u\n", count);
		return;
	}
	data_len = len - sizeof(*msg) - count * sizeof(__le32);

	target = virtwl_vfd_get(wl, id);
	if (!target) {
		dev_warn_ratelimited(&wl->vdev->dev, "VFD_RECV for unknown vfd %#x\n", id);
		return;
	}
	rx = kmalloc(struct_size(rx, data, data_len), GFP_KERNEL);
	if (!rx)
		goto out;
	rx->nvfds = 0;
	rx->len = data_len;
	rx->off = 0;
	memcpy(rx->data, (const u8 *)(ids + count), data_len);

	for (i = 0; i < count; i++) {
		bool ok;

		vfd = virtwl_vfd_get(wl, le32_to_cpu(ids[i]));
		if (!vfd) {
			dev_warn_ratelimited(&wl->vdev->dev, "VFD_RECV carries unknown vfd %#x\n",
					     le32_to_cpu(ids[i]));
			continue;
		}
		/* only a host vfd nobody has yet, once, and not inside itself */
		spin_lock(&vfd->lock);
		ok = vfd->id >= VIRTWL_HOST_ID_MIN && !vfd->installed && !vfd->attached &&
		     !vfd->closed && vfd != target;
		if (ok)
			vfd->attached = true;
		spin_unlock(&vfd->lock);
		if (!ok) {
			dev_warn_ratelimited(&wl->vdev->dev,
					     "VFD_RECV carries vfd %#x that cannot be passed\n",
					     vfd->id);
			virtwl_vfd_put(vfd);
			continue;
		}
		rx->vfds[rx->nvfds++] = vfd;
	}
	if (!rx->nvfds && !data_len) {
		kfree(rx);
		goto out;
	}

	spin_lock(&target->lock);
	if (!target->closed && target->rx_bytes + data_len <= VIRTWL_RX_MAX_QUEUED) {
		list_add_tail(&rx->node, &target->rx);
		target->rx_bytes += data_len;
		queued = true;
	}
	spin_unlock(&target->lock);
	if (queued) {
		wake_up_interruptible_poll(&target->wq, EPOLLIN | EPOLLRDNORM);
	} else {
		if (!target->closed)
			dev_warn_ratelimited(&wl->vdev->dev,
					     "vfd %#x: too much unread data, dropping %zu bytes\n",
					     id, data_len);
		virtwl_rx_drop(rx, &todo);
		virtwl_vfd_close_list(&todo);
	}
out:
	virtwl_vfd_put(target);
}

static void virtwl_in_vfd_hup(struct virtwl_dev *wl, const void *buf, size_t len)
{
	const struct virtio_wl_ctrl_vfd *msg = buf;
	struct virtwl_vfd *vfd;

	if (len < sizeof(*msg)) {
		dev_warn_ratelimited(&wl->vdev->dev, "short VFD_HUP (%zu bytes)\n", len);
		return;
	}
	vfd = virtwl_vfd_get(wl, le32_to_cpu(msg->vfd_id));
	if (!vfd) {
		dev_warn_ratelimited(&wl->vdev->dev, "VFD_HUP for unknown vfd %#x\n",
				     le32_to_cpu(msg->vfd_id));
		return;
	}
	spin_lock(&vfd->lock);
	vfd->hup = true;
	spin_unlock(&vfd->lock);
	wake_up_interruptible_poll(&vfd->wq, EPOLLHUP);
	virtwl_vfd_put(vfd);
}

static void virtwl_in_handle(struct virtwl_dev *wl, const void *buf, size_t len)
{
	const struct virtio_wl_ctrl_hdr *hdr = buf;
	u32 type;

	if (len < sizeof(*hdr)) {
		dev_warn_ratelimited(&wl->vdev->dev, "short message (%zu bytes)\n", len);
		return;
	}
	type = le32_to_cpu(hdr->type);
	switch (type) {
	case VIRTIO_WL_CMD_VFD_NEW:
		virtwl_in_vfd_new(wl, buf, len);
		break;
	case VIRTIO_WL_CMD_VFD_RECV:
		virtwl_in_vfd_recv(wl, buf, len);
		break;
	case VIRTIO_WL_CMD_VFD_HUP:
		virtwl_in_vfd_hup(wl, buf, len);
		break;
	default:
		dev_warn_ratelimited(&wl->vdev->dev, "unexpected message type %#x\n", type);
	}
}

/* Posts an in buffer. Called with in_lock held. */
static int virtwl_in_post(struct virtwl_dev *wl, void *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, VIRTWL_IN_BUF_SIZE);
	return virtqueue_add_inbuf(wl->in_vq, &sg, 1, buf, GFP_ATOMIC);
}

static void virtwl_in_cb(struct virtqueue *vq)
{
	struct virtwl_dev *wl = vq->vdev->priv;

	if (!READ_ONCE(wl->removed))
		schedule_work(&wl->in_work);
}

static void virtwl_in_work(struct work_struct *work)
{
	struct virtwl_dev *wl = container_of(work, struct virtwl_dev, in_work);
	struct virtqueue *vq = wl->in_vq;
	unsigned int len;
	bool again;
	void *buf;

	do {
		if (READ_ONCE(wl->removed))
			return;
		spin_lock(&wl->in_lock);
		buf = virtqueue_get_buf(vq, &len);
		if (!buf)
			again = !virtqueue_enable_cb(vq);
		else
			virtqueue_disable_cb(vq);
		spin_unlock(&wl->in_lock);
		if (!buf)
			continue;

		virtwl_in_handle(wl, buf, min_t(size_t, len, VIRTWL_IN_BUF_SIZE));

		spin_lock(&wl->in_lock);
		if (virtwl_in_post(wl, buf))
			dev_err_ratelimited(&wl->vdev->dev, "cannot repost an in buffer\n");
		virtqueue_kick(vq);
		spin_unlock(&wl->in_lock);
		again = true;
	} while (again);
}

/* ---- vfd files ---- */

/* 0: something is queued; 1: end of stream; both with rx_mutex held. <0: error, not held. */
static int virtwl_vfd_lock_rx(struct virtwl_vfd *vfd, bool nonblock)
{
	int ret;

	for (;;) {
		if (mutex_lock_interruptible(&vfd->rx_mutex))
			return -ERESTARTSYS;
		spin_lock(&vfd->lock);
		if (!list_empty(&vfd->rx))
			ret = 0;
		else if (vfd->hup)
			ret = 1;
		else
			ret = -EAGAIN;
		spin_unlock(&vfd->lock);
		if (ret >= 0)
			return ret;
		mutex_unlock(&vfd->rx_mutex);
		if (nonblock)
			return -EAGAIN;
		ret = wait_event_interruptible(vfd->wq, ({
			bool ready;

			spin_lock(&vfd->lock);
			ready = !list_empty(&vfd->rx) || vfd->hup;
			spin_unlock(&vfd->lock);
			ready;
		}));
		if (ret)
			return ret;
	}
}

static struct virtwl_rx *virtwl_rx_first(struct virtwl_vfd *vfd)
{
	struct virtwl_rx *rx;

	spin_lock(&vfd->lock);
	rx = list_first_entry_or_null(&vfd->rx, struct virtwl_rx, node);
	spin_unlock(&vfd->lock);
	return rx;
}

static struct virtwl_rx *virtwl_rx_next(struct virtwl_vfd *vfd, struct virtwl_rx *rx)
{
	struct virtwl_rx *next = NULL;

	spin_lock(&vfd->lock);
	if (!list_is_last(&rx->node, &vfd->rx))
		next = list_next_entry(rx, node);
	spin_unlock(&vfd->lock);
	return next;
}

/*
 * Copies up to @len queued bytes to @ubuf without consuming them: the head entry's, then
 * those of following entries that carry no vfds. rx_mutex held.
 */
static ssize_t virtwl_rx_copy(struct virtwl_vfd *vfd, u8 __user *ubuf, size_t len)
{
	struct virtwl_rx *rx = virtwl_rx_first(vfd);
	size_t done = 0;

	while (rx && done < len) {
		size_t avail = rx->len - rx->off;
		size_t n = min(avail, len - done);

		if (copy_to_user(ubuf + done, rx->data + rx->off, n))
			return -EFAULT;
		done += n;
		if (n < avail)
			break;
		rx = virtwl_rx_next(vfd, rx);
		if (rx && rx->nvfds)
			break;
	}
	return done;
}

/* Consumes @n bytes copied by virtwl_rx_copy and frees the entries used up. rx_mutex held. */
static void virtwl_rx_consume(struct virtwl_vfd *vfd, size_t n)
{
	struct virtwl_rx *rx;
	size_t take;

	spin_lock(&vfd->lock);
	while ((rx = list_first_entry_or_null(&vfd->rx, struct virtwl_rx, node))) {
		take = min(n, rx->len - rx->off);
		rx->off += take;
		n -= take;
		vfd->rx_bytes -= take;
		if (rx->off < rx->len || rx->nvfds)
			break;
		list_del(&rx->node);
		kfree(rx);
	}
	spin_unlock(&vfd->lock);
}

static int virtwl_vfd_send(struct virtwl_vfd *vfd, const s32 *fds, const u8 __user *data,
			   size_t len)
{
	struct virtwl_dev *wl = vfd->wl;
	struct file *files[VIRTWL_SEND_MAX_ALLOCS];
	struct virtio_wl_ctrl_vfd_xfer *cmd;
	unsigned int nfiles = 0, i;
	struct virtwl_req *req;
	__le32 *ids;
	int ret;

	for (i = 0; fds && i < VIRTWL_SEND_MAX_ALLOCS; i++) {
		struct file *f;

		if (fds[i] == -1)
			continue;
		f = fget(fds[i]);
		if (!f) {
			ret = -EBADF;
			goto out;
		}
		if (f->f_op != &virtwl_vfd_fops ||
		    ((struct virtwl_vfd *)f->private_data)->wl != wl) {
			fput(f);
			ret = -EINVAL;
			goto out;
		}
		files[nfiles++] = f;
	}
	if (len > VIRTWL_MAX_SEND_CMD - sizeof(*cmd) - nfiles * sizeof(__le32)) {
		ret = -EMSGSIZE;
		goto out;
	}
	req = virtwl_req_alloc(sizeof(*cmd) + nfiles * sizeof(__le32) + len);
	if (!req) {
		ret = -ENOMEM;
		goto out;
	}
	cmd = (struct virtio_wl_ctrl_vfd_xfer *)req->cmd;
	ids = (__le32 *)(cmd + 1);
	cmd->hdr.type = cpu_to_le32(VIRTIO_WL_CMD_VFD_SEND);
	cmd->vfd_id = cpu_to_le32(vfd->id);
	cmd->vfd_count = cpu_to_le32(nfiles);
	for (i = 0; i < nfiles; i++)
		ids[i] = cpu_to_le32(((struct virtwl_vfd *)files[i]->private_data)->id);
	if (copy_from_user(ids + nfiles, data, len)) {
		kfree(req);
		ret = -EFAULT;
		goto out;
	}
	/* the files stay open until the host has taken the vfds */
	ret = virtwl_req_submit(wl, req, VIRTWL_WAIT_KILLABLE, NULL);
out:
	for (i = 0; i < nfiles; i++)
		fput(files[i]);
	return ret;
}

static long virtwl_ioctl_send(struct virtwl_vfd *vfd, struct virtwl_ioctl_txn __user *utxn)
{
	struct virtwl_ioctl_txn txn;

	if (copy_from_user(&txn, utxn, sizeof(txn)))
		return -EFAULT;
	return virtwl_vfd_send(vfd, txn.fds, (u8 __user *)utxn + sizeof(txn), txn.len);
}

static long virtwl_ioctl_recv(struct virtwl_vfd *vfd, struct virtwl_ioctl_txn __user *utxn,
			      bool nonblock)
{
	struct file *files[VIRTWL_SEND_MAX_ALLOCS];
	struct virtwl_ioctl_txn txn;
	unsigned int nvfds = 0, made = 0, i;
	struct virtwl_rx *rx = NULL;
	LIST_HEAD(todo);
	ssize_t n = 0;
	int ret;

	if (copy_from_user(&txn, utxn, sizeof(txn)))
		return -EFAULT;
	for (i = 0; i < VIRTWL_SEND_MAX_ALLOCS; i++)
		txn.fds[i] = -1;

	ret = virtwl_vfd_lock_rx(vfd, nonblock);
	if (ret < 0)
		return ret;
	if (ret == 0) {
		rx = virtwl_rx_first(vfd);
		nvfds = rx->nvfds;
	}
	for (i = 0; i < nvfds; i++) {
		ret = get_unused_fd_flags(O_CLOEXEC);
		if (ret < 0)
			goto err_fds;
		txn.fds[i] = ret;
	}
	for (made = 0; made < nvfds; made++) {
		files[made] = anon_inode_getfile("[virtwl_vfd]", &virtwl_vfd_fops,
						 rx->vfds[made], O_RDWR);
		if (IS_ERR(files[made])) {
			ret = PTR_ERR(files[made]);
			goto err_files;
		}
	}
	if (rx) {
		n = virtwl_rx_copy(vfd, (u8 __user *)utxn + sizeof(txn), txn.len);
		if (n < 0) {
			ret = n;
			goto err_files;
		}
	}
	txn.len = n;
	if (copy_to_user(utxn, &txn, sizeof(txn))) {
		ret = -EFAULT;
		goto err_files;
	}

	for (i = 0; i < nvfds; i++) {
		struct virtwl_vfd *v = rx->vfds[i];

		spin_lock(&v->lock);
		v->installed = true;
		v->attached = false;
		spin_unlock(&v->lock);
		fd_install(txn.fds[i], files[i]);	/* the file owns the entry's reference */
	}
	if (rx) {
		rx->nvfds = 0;
		virtwl_rx_consume(vfd, n);
	}
	mutex_unlock(&vfd->rx_mutex);
	return 0;

err_files:
	/*
	 * Rare (no memory, bad user pointer): the vfds of this entry are lost. Files already
	 * made close theirs on release; the others are closed here.
	 */
	for (i = 0; i < made; i++)
		fput(files[i]);
	for (i = made; i < nvfds; i++)
		list_add_tail(&rx->vfds[i]->close_node, &todo);
	if (rx) {
		rx->nvfds = 0;
		virtwl_rx_consume(vfd, 0);
	}
	i = nvfds;
err_fds:
	while (i--)
		put_unused_fd(txn.fds[i]);
	mutex_unlock(&vfd->rx_mutex);
	virtwl_vfd_close_list(&todo);
	return ret;
}

static long virtwl_vfd_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct virtwl_vfd *vfd = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VIRTWL_IOCTL_SEND:
		return virtwl_ioctl_send(vfd, uarg);
	case VIRTWL_IOCTL_RECV:
		return virtwl_ioctl_recv(vfd, uarg, file->f_flags & O_NONBLOCK);
	case VIRTWL_IOCTL_DMABUF_SYNC:
		return -EINVAL;		/* no vfd of this driver is a dmabuf */
	default:
		return -ENOTTY;
	}
}

static ssize_t virtwl_vfd_read(struct file *file, char __user *buf, size_t len, loff_t *ppos)
{
	struct virtwl_vfd *vfd = file->private_data;
	struct virtwl_rx *rx;
	LIST_HEAD(todo);
	ssize_t n;
	int ret;

	if (!len)
		return 0;
	do {
		ret = virtwl_vfd_lock_rx(vfd, file->f_flags & O_NONBLOCK);
		if (ret < 0)
			return ret;
		if (ret == 1) {
			mutex_unlock(&vfd->rx_mutex);
			return 0;
		}
		/* read() cannot pass vfds: the ones queued with these bytes are closed */
		rx = virtwl_rx_first(vfd);
		while (rx->nvfds)
			list_add_tail(&rx->vfds[--rx->nvfds]->close_node, &todo);
		n = virtwl_rx_copy(vfd, (u8 __user *)buf, len);
		if (n >= 0)
			virtwl_rx_consume(vfd, n);
		mutex_unlock(&vfd->rx_mutex);
		virtwl_vfd_close_list(&todo);
	} while (n == 0);	/* an entry with vfds and no bytes: wait for more */
	return n;
}

static ssize_t virtwl_vfd_write(struct file *file, const char __user *buf, size_t len,
				loff_t *ppos)
{
	struct virtwl_vfd *vfd = file->private_data;
	int ret;

	if (!len)
		return 0;
	/* more than one VFD_SEND holds is a short write, as on a pipe */
	len = min(len, VIRTWL_MAX_SEND_CMD - sizeof(struct virtio_wl_ctrl_vfd_xfer));
	ret = virtwl_vfd_send(vfd, NULL, (const u8 __user *)buf, len);
	return ret ? ret : len;
}

static __poll_t virtwl_vfd_poll(struct file *file, poll_table *wait)
{
	struct virtwl_vfd *vfd = file->private_data;
	__poll_t mask = 0;

	poll_wait(file, &vfd->wq, wait);
	spin_lock(&vfd->lock);
	if (!list_empty(&vfd->rx))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (vfd->hup)
		mask |= EPOLLHUP;
	spin_unlock(&vfd->lock);
	if (vfd->writable)
		mask |= EPOLLOUT | EPOLLWRNORM;
	return mask;
}

static int virtwl_vfd_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct virtwl_vfd *vfd = file->private_data;
	unsigned long npages = vfd->size >> PAGE_SHIFT;

	if (!npages)
		return -ENODEV;
	if (vma->vm_pgoff >= npages || vma_pages(vma) > npages - vma->vm_pgoff)
		return -EINVAL;
	/* the host maps this memory as normal RAM: keep the default (cached) protection */
	return io_remap_pfn_range(vma, vma->vm_start, vfd->pfn + vma->vm_pgoff,
				  vma->vm_end - vma->vm_start, vma->vm_page_prot);
}

static int virtwl_vfd_release(struct inode *inode, struct file *file)
{
	virtwl_vfd_close(file->private_data);	/* the file's reference */
	return 0;
}

static const struct file_operations virtwl_vfd_fops = {
	.owner = THIS_MODULE,
	.read = virtwl_vfd_read,
	.write = virtwl_vfd_write,
	.poll = virtwl_vfd_poll,
	.unlocked_ioctl = virtwl_vfd_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = virtwl_vfd_mmap,
	.release = virtwl_vfd_release,
	.llseek = noop_llseek,
};

/* ---- /dev/wl0 ---- */

static long virtwl_ioctl_new(struct virtwl_dev *wl, struct virtwl_ioctl_new __user *uarg)
{
	struct virtio_wl_ctrl_vfd_new *cmd, resp;
	struct virtwl_ioctl_new args;
	struct virtwl_vfd *vfd;
	struct virtwl_req *req;
	struct file *file;
	u32 type, flags = 0;
	u64 size = 0;
	int fd, ret;

	if (copy_from_user(&args, uarg, sizeof(args)))
		return -EFAULT;

	switch (args.type) {
	case VIRTWL_IOCTL_NEW_CTX:
		type = VIRTIO_WL_CMD_VFD_NEW_CTX;
		if (wl->trans_flags)
			flags = VIRTIO_WL_VFD_READ | VIRTIO_WL_VFD_WRITE;
		break;
	case VIRTWL_IOCTL_NEW_CTX_NAMED:
		if (!memchr(args.name, '\0', sizeof(args.name)))
			return -EINVAL;
		type = VIRTIO_WL_CMD_VFD_NEW_CTX_NAMED;
		if (wl->trans_flags)
			flags = VIRTIO_WL_VFD_READ | VIRTIO_WL_VFD_WRITE;
		break;
	case VIRTWL_IOCTL_NEW_ALLOC:
		size = PAGE_ALIGN((u64)args.size);
		if (!size || size > U32_MAX)
			return -EINVAL;
		type = VIRTIO_WL_CMD_VFD_NEW;
		break;
	case VIRTWL_IOCTL_NEW_PIPE_READ:
		type = VIRTIO_WL_CMD_VFD_NEW_PIPE;
		flags = VIRTIO_WL_VFD_READ;	/* the direction, with or without TRANS_FLAGS */
		break;
	case VIRTWL_IOCTL_NEW_PIPE_WRITE:
		type = VIRTIO_WL_CMD_VFD_NEW_PIPE;
		flags = VIRTIO_WL_VFD_WRITE;
		break;
	case VIRTWL_IOCTL_NEW_DMABUF:
		return -EOPNOTSUPP;
	default:
		return -EINVAL;
	}

	vfd = virtwl_vfd_alloc(wl);	/* our reference */
	if (!vfd)
		return -ENOMEM;
	vfd->flags = flags;
	vfd->writable = args.type == VIRTWL_IOCTL_NEW_CTX ||
			args.type == VIRTWL_IOCTL_NEW_CTX_NAMED ||
			args.type == VIRTWL_IOCTL_NEW_PIPE_WRITE;
	req = virtwl_req_alloc(sizeof(*cmd));
	if (!req) {
		virtwl_vfd_put(vfd);
		return -ENOMEM;
	}

	kref_get(&vfd->ref);		/* the idr's */
	mutex_lock(&wl->vfds_lock);
	ret = wl->removed ? -ENODEV :
	      idr_alloc_cyclic(&wl->vfds, vfd, VIRTWL_GUEST_ID_MIN, VIRTWL_GUEST_ID_MAX + 1,
			       GFP_KERNEL);
	mutex_unlock(&wl->vfds_lock);
	if (ret < 0) {
		kfree(req);
		virtwl_vfd_put(vfd);
		virtwl_vfd_put(vfd);
		return ret == -ENOSPC ? -EMFILE : ret;
	}
	vfd->id = ret;

	cmd = (struct virtio_wl_ctrl_vfd_new *)req->cmd;
	cmd->hdr.type = cpu_to_le32(type);
	cmd->vfd_id = cpu_to_le32(vfd->id);
	cmd->flags = cpu_to_le32(flags);
	cmd->size = cpu_to_le32(size);
	if (type == VIRTIO_WL_CMD_VFD_NEW_CTX_NAMED)
		memcpy(cmd->name, args.name, sizeof(cmd->name));

	/* not interruptible: the id must stay reserved until the host has answered */
	ret = virtwl_req_submit(wl, req, VIRTWL_WAIT, &resp);
	if (ret)
		goto err;
	vfd->host_known = true;		/* from here on, errors close it on the host */
	if (le32_to_cpu(resp.hdr.type) == VIRTIO_WL_RESP_VFD_NEW) {
		if (le32_to_cpu(resp.vfd_id) != vfd->id) {
			dev_warn_ratelimited(&wl->vdev->dev, "VFD_NEW answer for %#x, not %#x\n",
					     le32_to_cpu(resp.vfd_id), vfd->id);
			ret = -EIO;
			goto err;
		}
	} else if (type == VIRTIO_WL_CMD_VFD_NEW) {
		ret = -EIO;	/* an allocation needs its memory */
		goto err;
	}
	if (type == VIRTIO_WL_CMD_VFD_NEW) {
		if (le32_to_cpu(resp.size) < size ||
		    virtwl_vfd_set_mem(wl, vfd, le64_to_cpu(resp.pfn), size)) {
			dev_warn_ratelimited(&wl->vdev->dev,
					     "allocation %#x: pfn %#llx size %u is not usable\n",
					     vfd->id, le64_to_cpu(resp.pfn),
					     le32_to_cpu(resp.size));
			ret = -EIO;
			goto err;
		}
		args.size = size;
	}

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto err;
	}
	file = anon_inode_getfile("[virtwl_vfd]", &virtwl_vfd_fops, vfd, O_RDWR);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		ret = PTR_ERR(file);
		goto err;
	}
	spin_lock(&vfd->lock);
	vfd->installed = true;
	spin_unlock(&vfd->lock);
	args.fd = fd;
	if (copy_to_user(uarg, &args, sizeof(args))) {
		put_unused_fd(fd);
		fput(file);		/* release closes the vfd */
		return -EFAULT;
	}
	fd_install(fd, file);		/* our reference is the file's now */
	return 0;

err:
	virtwl_vfd_close(vfd);		/* our reference; the idr's goes with the close */
	return ret;
}

static int virtwl_dev_open(struct inode *inode, struct file *file)
{
	struct virtwl_dev *wl = container_of(file->private_data, struct virtwl_dev, misc);

	/* misc_open holds the misc lock: remove() has not dropped its reference yet */
	kref_get(&wl->ref);
	file->private_data = wl;
	return 0;
}

static int virtwl_dev_release(struct inode *inode, struct file *file)
{
	struct virtwl_dev *wl = file->private_data;

	kref_put(&wl->ref, virtwl_dev_free);
	return 0;
}

static long virtwl_dev_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct virtwl_dev *wl = file->private_data;

	switch (cmd) {
	case VIRTWL_IOCTL_NEW:
		return virtwl_ioctl_new(wl, (void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations virtwl_dev_fops = {
	.owner = THIS_MODULE,
	.open = virtwl_dev_open,
	.release = virtwl_dev_release,
	.unlocked_ioctl = virtwl_dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

/* ---- the virtio device ---- */

static int virtwl_validate(struct virtio_device *vdev)
{
	struct virtio_shm_region shm;

	/* without region 0 the page numbers of USE_SHMEM would mean nothing */
	if (virtio_has_feature(vdev, VIRTIO_WL_F_USE_SHMEM) &&
	    !virtio_get_shm_region(vdev, &shm, 0)) {
		dev_warn(&vdev->dev, "USE_SHMEM offered without shared memory region 0\n");
		__virtio_clear_bit(vdev, VIRTIO_WL_F_USE_SHMEM);
	}
	return 0;
}

static void virtwl_free_in_bufs(struct virtwl_dev *wl)
{
	unsigned int i;

	for (i = 0; i < wl->in_nbufs; i++)
		kfree(wl->in_bufs[i]);
	wl->in_nbufs = 0;
}

static int virtwl_probe(struct virtio_device *vdev)
{
	struct virtqueue_info vqs_info[] = {
		{ "in", virtwl_in_cb },
		{ "out", virtwl_out_cb },
	};
	struct virtqueue *vqs[2];
	struct virtwl_dev *wl;
	unsigned int i, nbufs, slots;
	int ret;

	wl = kzalloc(sizeof(*wl), GFP_KERNEL);
	if (!wl)
		return -ENOMEM;
	kref_init(&wl->ref);
	/* warnings may name the device until the last vfd file is gone */
	wl->vdev = vdev;
	get_device(&vdev->dev);
	spin_lock_init(&wl->in_lock);
	spin_lock_init(&wl->out_lock);
	INIT_WORK(&wl->in_work, virtwl_in_work);
	mutex_init(&wl->vfds_lock);
	idr_init(&wl->vfds);
	vdev->priv = wl;
	wl->trans_flags = virtio_has_feature(vdev, VIRTIO_WL_F_TRANS_FLAGS);
	wl->use_shmem = virtio_has_feature(vdev, VIRTIO_WL_F_USE_SHMEM);

	if (wl->use_shmem) {
		if (!virtio_get_shm_region(vdev, &wl->shm, 0) ||
		    !PAGE_ALIGNED(wl->shm.addr) || !PAGE_ALIGNED(wl->shm.len) || !wl->shm.len ||
		    wl->shm.addr + wl->shm.len < wl->shm.addr) {
			dev_err(&vdev->dev, "unusable shared memory region 0\n");
			ret = -EINVAL;
			goto err_free;
		}
		wl->shm_res = request_mem_region(wl->shm.addr, wl->shm.len, dev_name(&vdev->dev));
		if (!wl->shm_res)
			dev_warn(&vdev->dev, "cannot reserve shared memory %#llx+%#llx\n",
				 wl->shm.addr, wl->shm.len);
	}

	ret = virtio_find_vqs(vdev, 2, vqs, vqs_info, NULL);
	if (ret)
		goto err_shm;
	wl->in_vq = vqs[0];
	wl->out_vq = vqs[1];
	/* a request takes at most two descriptors, so this many never overflow the ring */
	slots = max(virtqueue_get_vring_size(wl->out_vq) / 2, 1u);
	sema_init(&wl->out_slots, slots);

	nbufs = min_t(unsigned int, VIRTWL_IN_BUFS, virtqueue_get_vring_size(wl->in_vq));
	for (i = 0; i < nbufs; i++) {
		wl->in_bufs[i] = kmalloc(VIRTWL_IN_BUF_SIZE, GFP_KERNEL);
		if (!wl->in_bufs[i]) {
			ret = -ENOMEM;
			goto err_vqs;
		}
		wl->in_nbufs++;
	}

	ret = ida_alloc(&virtwl_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_vqs;
	wl->index = ret;
	snprintf(wl->name, sizeof(wl->name), "wl%d", wl->index);
	wl->misc.minor = MISC_DYNAMIC_MINOR;
	wl->misc.name = wl->name;
	wl->misc.fops = &virtwl_dev_fops;
	wl->misc.parent = &vdev->dev;

	virtio_device_ready(vdev);
	spin_lock(&wl->in_lock);
	for (i = 0; i < wl->in_nbufs; i++) {
		ret = virtwl_in_post(wl, wl->in_bufs[i]);
		if (ret)
			break;
	}
	virtqueue_kick(wl->in_vq);
	spin_unlock(&wl->in_lock);
	if (ret) {
		dev_err(&vdev->dev, "cannot post in buffers: %d\n", ret);
		goto err_reset;
	}

	ret = misc_register(&wl->misc);
	if (ret)
		goto err_reset;
	dev_info(&vdev->dev, "/dev/%s: %u in buffers, %u requests in flight%s%s\n", wl->name,
		 wl->in_nbufs, slots, wl->trans_flags ? ", trans_flags" : "",
		 wl->use_shmem ? ", shared memory region 0" : "");
	return 0;

err_reset:
	WRITE_ONCE(wl->removed, true);
	virtio_reset_device(vdev);
	cancel_work_sync(&wl->in_work);
	while (virtqueue_detach_unused_buf(wl->in_vq))
		;
	vdev->config->del_vqs(vdev);
	virtwl_free_in_bufs(wl);
	virtwl_close_all(wl);		/* what the host announced meanwhile */
	ida_free(&virtwl_ida, wl->index);
	goto err_shm;
err_vqs:
	vdev->config->del_vqs(vdev);
	virtwl_free_in_bufs(wl);
err_shm:
	if (wl->shm_res)
		release_mem_region(wl->shm.addr, wl->shm.len);
err_free:
	kref_put(&wl->ref, virtwl_dev_free);
	return ret;
}

static void virtwl_remove(struct virtio_device *vdev)
{
	struct virtwl_dev *wl = vdev->priv;
	struct virtwl_req *req;

	misc_deregister(&wl->misc);

	mutex_lock(&wl->vfds_lock);
	spin_lock_irq(&wl->out_lock);
	WRITE_ONCE(wl->removed, true);
	spin_unlock_irq(&wl->out_lock);
	mutex_unlock(&wl->vfds_lock);

	virtio_reset_device(vdev);
	/* fail what the device never answered; frees waiters for request slots */
	spin_lock_irq(&wl->out_lock);
	while ((req = virtqueue_detach_unused_buf(wl->out_vq)))
		virtwl_req_finish(wl, req, 0);
	spin_unlock_irq(&wl->out_lock);
	cancel_work_sync(&wl->in_work);
	while (virtqueue_detach_unused_buf(wl->in_vq))
		;
	vdev->config->del_vqs(vdev);
	virtwl_free_in_bufs(wl);

	virtwl_close_all(wl);

	if (wl->shm_res)
		release_mem_region(wl->shm.addr, wl->shm.len);
	ida_free(&virtwl_ida, wl->index);
	kref_put(&wl->ref, virtwl_dev_free);
}

static const struct virtio_device_id virtwl_id_table[] = {
	{ VIRTIO_ID_WL, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, virtwl_id_table);

static unsigned int virtwl_features[] = {
	VIRTIO_WL_F_TRANS_FLAGS,
	VIRTIO_WL_F_USE_SHMEM,
};

static struct virtio_driver virtwl_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = virtwl_id_table,
	.feature_table = virtwl_features,
	.feature_table_size = ARRAY_SIZE(virtwl_features),
	.validate = virtwl_validate,
	.probe = virtwl_probe,
	.remove = virtwl_remove,
};
module_virtio_driver(virtwl_driver);

MODULE_DESCRIPTION("virtio Wayland (virtio-wl) guest driver");
MODULE_LICENSE("GPL");
