// SPDX-License-Identifier: GPL-2.0
/*
 * wltest - a small smoke test of /dev/wl0 for a guest that has a virtio-wl device.
 *
 * Build: gcc -static -O2 -Wall -Wextra -I. -o wltest wltest.c   (or: make wltest)
 * Run:   wltest [--ctx] [--named NAME]
 *
 * Checks: NEW ALLOC 8192 (size, mmap, a pattern written and read back, out-of-range mmap
 * refused), NEW PIPE_READ (non-blocking RECV has nothing yet, poll), NEW PIPE_WRITE (write),
 * NEW DMABUF (refused), a bad CTX_NAMED name (refused); with --ctx / --named also NEW_CTX.
 * Prints one "wltest: ok ..." line per check, "WLTEST-PASS" at the end, or "WLTEST-FAIL ..."
 * and exits 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtio_wl.h"

static void fail(const char *what)
{
	printf("WLTEST-FAIL %s: %s\n", what, strerror(errno));
	exit(1);
}

/* A fresh write pipe or ctx vfd must poll writable at once. */
static void need_writable(int fd, const char *what)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };

	if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLOUT)) {
		errno = EINVAL;
		fail(what);
	}
}

static int wl_new(int wl, struct virtwl_ioctl_new *n)
{
	n->fd = -1;
	n->flags = 0;
	return ioctl(wl, VIRTWL_IOCTL_NEW, n);
}

static void test_alloc(int wl)
{
	struct virtwl_ioctl_new n = { .type = VIRTWL_IOCTL_NEW_ALLOC, .size = 8000 };
	uint8_t *p;
	size_t i;

	if (wl_new(wl, &n))
		fail("NEW ALLOC 8000");
	if (n.size != 8192 || n.fd < 0) {
		errno = EINVAL;
		fail("NEW ALLOC: size not page-rounded or no fd");
	}
	if (!(fcntl(n.fd, F_GETFD) & FD_CLOEXEC)) {
		errno = EINVAL;
		fail("NEW ALLOC: fd without O_CLOEXEC");
	}
	p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, n.fd, 0);
	if (p == MAP_FAILED)
		fail("mmap 8192");
	for (i = 0; i < 8192; i++)
		p[i] = (uint8_t)(i * 7 + 3);
	for (i = 0; i < 8192; i++) {
		if (p[i] != (uint8_t)(i * 7 + 3)) {
			errno = EIO;
			fail("pattern read back");
		}
	}
	munmap(p, 8192);
	/* the same memory through a second mapping at page offset 1 */
	p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, n.fd, 4096);
	if (p == MAP_FAILED)
		fail("mmap at offset 4096");
	if (p[0] != (uint8_t)(4096 * 7 + 3) || p[4095] != (uint8_t)(8191 * 7 + 3)) {
		errno = EIO;
		fail("pattern through the second mapping");
	}
	munmap(p, 4096);
	if (mmap(NULL, 8192, PROT_READ, MAP_SHARED, n.fd, 4096) != MAP_FAILED) {
		errno = 0;
		fail("mmap past the end was allowed");
	}
	close(n.fd);
	printf("wltest: ok alloc 8192, mmap, pattern, bounds\n");
}

static void test_pipes(int wl)
{
	struct virtwl_ioctl_new n = { .type = VIRTWL_IOCTL_NEW_PIPE_READ };
	struct {
		struct virtwl_ioctl_txn txn;
		uint8_t data[64];
	} rx;
	struct pollfd pfd;

	if (wl_new(wl, &n))
		fail("NEW PIPE_READ");
	memset(&rx, 0, sizeof(rx));
	rx.txn.len = sizeof(rx.data);
	fcntl(n.fd, F_SETFL, O_NONBLOCK);
	if (ioctl(n.fd, VIRTWL_IOCTL_RECV, &rx) == 0 || errno != EAGAIN)
		fail("RECV on an empty read pipe should be EAGAIN");
	pfd.fd = n.fd;
	pfd.events = POLLIN | POLLOUT;
	if (poll(&pfd, 1, 0) < 0)
		fail("poll read pipe");
	if (pfd.revents & (POLLIN | POLLOUT)) {
		errno = EINVAL;
		fail("empty read pipe polls readable or writable");
	}
	close(n.fd);
	printf("wltest: ok pipe read (RECV EAGAIN, poll %#x)\n", pfd.revents);

	n.type = VIRTWL_IOCTL_NEW_PIPE_WRITE;
	if (wl_new(wl, &n))
		fail("NEW PIPE_WRITE");
	need_writable(n.fd, "write pipe does not poll writable");
	if (write(n.fd, "hello", 5) != 5)
		fail("write to the write pipe");
	{
		static char big[40000];
		ssize_t w = write(n.fd, big, sizeof(big));

		/* one VFD_SEND carries at most 16 KiB: a short write, not an error */
		if (w <= 0 || w > (ssize_t)sizeof(big))
			fail("big write to the write pipe");
		printf("wltest: ok pipe write (40000-byte write took %zd)\n", w);
	}
	close(n.fd);

	memset(&n, 0, sizeof(n));
	n.type = VIRTWL_IOCTL_NEW_DMABUF;
	if (wl_new(wl, &n) == 0 || errno != EOPNOTSUPP)
		fail("NEW DMABUF should be EOPNOTSUPP");
	memset(&n, 0, sizeof(n));
	n.type = VIRTWL_IOCTL_NEW_CTX_NAMED;
	memset(n.name, 'x', sizeof(n.name));
	if (wl_new(wl, &n) == 0 || errno != EINVAL)
		fail("NEW CTX_NAMED with an unterminated name should be EINVAL");
	printf("wltest: ok dmabuf and bad name refused\n");
}

static void test_ctx(int wl, const char *name)
{
	struct virtwl_ioctl_new n = { .type = VIRTWL_IOCTL_NEW_CTX };

	if (name) {
		n.type = VIRTWL_IOCTL_NEW_CTX_NAMED;
		snprintf(n.name, sizeof(n.name), "%s", name);
	}
	if (wl_new(wl, &n))
		fail("NEW CTX");
	need_writable(n.fd, "ctx does not poll writable");
	close(n.fd);
	printf("wltest: ok ctx%s%s\n", name ? " " : "", name ? name : "");
}

int main(int argc, char **argv)
{
	const char *named = NULL;
	int ctx = 0, wl, i;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ctx")) {
			ctx = 1;
		} else if (!strcmp(argv[i], "--named") && i + 1 < argc) {
			named = argv[++i];
		} else {
			fprintf(stderr, "usage: %s [--ctx] [--named NAME]\n", argv[0]);
			return 2;
		}
	}
	wl = open("/dev/wl0", O_RDWR | O_CLOEXEC);
	if (wl < 0)
		fail("open /dev/wl0");
	test_alloc(wl);
	test_pipes(wl);
	if (ctx)
		test_ctx(wl, NULL);
	if (named)
		test_ctx(wl, named);
	close(wl);
	printf("WLTEST-PASS\n");
	return 0;
}
