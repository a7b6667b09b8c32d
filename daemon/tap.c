/* tap devices for a VM's NICs (see tap.h): made with ioctls on /dev/net/tun
 * and attached to a bridge with the bridge ioctls, all on the calling
 * process's network namespace. Nothing here logs: a failure is a negative
 * errno and a sentence for the caller to log or return. */
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/if_arp.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "macro.h"
#include "util.h"

/* No IFF_VNET_HDR: a QEMU that opens a tap with a virtio-net header resets
 * the header's length and the offloads of the device at start (net/tap.c,
 * "it might have been modified by another instance of qemu"). During an
 * upgrade the new QEMU starts while the old one still runs the guest with
 * its own settings, and every packet in between is read or written with the
 * wrong header: the guest lost 4 to 10 pings in a row at each upgrade. A tap
 * without the header has nothing to reset, at the price of checksum and
 * segmentation offloads (see docs/design.md, "Taps across an upgrade"). */
#define TAP_FLAGS (IFF_TAP | IFF_NO_PI)

bool tap_ifname_valid(const char *name) {
	size_t n = strnlen(name, IFNAMSIZ);
	if (n == 0 || n >= IFNAMSIZ || streq(name, ".") || streq(name, ".."))
		return false;
	for (const char *p = name; *p; p++)
		/* The kernel refuses / : and white space; % would be expanded
		 * to a number when a device is created. */
		if (*p <= ' ' || *p > '~' || *p == '/' || *p == ':' || *p == '%')
			return false;
	return true;
}

int tap_name(const char *vm, unsigned index, char buf[static IFNAMSIZ]) {
	static const char base32[] = "abcdefghijklmnopqrstuvwxyz234567";
	if (!vm || !*vm || index >= TAP_PER_VM_MAX)
		return -EINVAL;
	int n = snprintf(buf, IFNAMSIZ, "cprd-%s-%u", vm, index);
	if (n > 0 && n < IFNAMSIZ)
		return 0;
	uint64_t h = fnv1a64(FNV1A64_OFFSET, vm, strlen(vm));
	char hash[6];
	for (size_t i = 0; i < 5; i++)
		hash[i] = base32[(h >> (5 * i)) & 31];
	hash[5] = '\0';
	/* 5 + 2 + 1 + 5 + 2 = 15 characters. */
	snprintf(buf, IFNAMSIZ, "cprd-%.2s~%s-%u", vm, hash, index);
	return 0;
}

void tap_derive_mac(const char *vm, unsigned index, uint8_t mac[static 6]) {
	uint32_t group = index / 8;
	uint8_t g[4] = {group, group >> 8, group >> 16, group >> 24};
	uint64_t h = fnv1a64(FNV1A64_OFFSET, vm, strlen(vm) + 1); /* the NUL ends the name */
	h = fnv1a64(h, g, sizeof(g));
	uint32_t v = (uint32_t)(h ^ (h >> 32)) & 0x1fffff; /* 21 bits */
	mac[0] = 0x52; /* 0x52: locally administered (0x02), unicast (0x01 clear) */
	mac[1] = 0x54;
	mac[2] = 0x00;
	mac[3] = v >> 13;
	mac[4] = (v >> 5) & 0xff;
	mac[5] = ((v & 0x1f) << 3) | (index & 7);
}

static int hexdigit(char c) {
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int tap_mac_parse(const char *s, uint8_t mac[static 6], const char **why) {
	const char *dummy;
	why = why ? why : &dummy;
	for (size_t i = 0; i < 6; i++) {
		const char *p = s + 3 * i;
		int hi = hexdigit(p[0]), lo = hi < 0 ? -1 : hexdigit(p[1]);
		if (hi < 0 || lo < 0 || p[2] != (i < 5 ? ':' : '\0')) {
			*why = "is not six pairs of hex digits separated by colons, such as 52:54:00:12:34:56";
			return -EINVAL;
		}
		mac[i] = (uint8_t)(hi << 4 | lo);
	}
	if (mac[0] & 0x01) {
		*why = "is a multicast address (the low bit of its first byte is set); a NIC needs a unicast one";
		return -EADDRNOTAVAIL;
	}
	if (!(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5])) {
		*why = "is all zeros";
		return -EADDRNOTAVAIL;
	}
	return 0;
}

void tap_mac_format(const uint8_t mac[static 6], char buf[static TAP_MAC_STRLEN]) {
	snprintf(buf, TAP_MAC_STRLEN, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
		 mac[4], mac[5]);
}

/* A socket to aim interface ioctls at; any family reaches dev_ioctl. */
static int ioctl_socket(void) {
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	return fd < 0 ? negative_errno() : fd;
}

static void ifreq_name(struct ifreq *ifr, const char *name) {
	memset(ifr, 0, sizeof(*ifr));
	snprintf(ifr->ifr_name, IFNAMSIZ, "%s", name);
}

/* 1 when name is a bridge, 0 when it is another kind of interface,
 * -ENODEV when there is none of that name, another negative errno when
 * the kernel would not say. */
static int bridge_probe(int sock, const char *name) {
	struct ethtool_drvinfo info = {.cmd = ETHTOOL_GDRVINFO};
	struct ifreq ifr;
	ifreq_name(&ifr, name);
	if (ioctl(sock, SIOCGIFINDEX, &ifr) < 0)
		return negative_errno();
	ifreq_name(&ifr, name);
	ifr.ifr_data = (void *)&info;
	if (ioctl(sock, SIOCETHTOOL, &ifr) < 0)
		/* A device without ethtool operations is no bridge. */
		return errno == EOPNOTSUPP ? 0 : negative_errno();
	return streq(info.driver, "bridge");
}

bool tap_bridge_exists(const char *name) {
	if (!tap_ifname_valid(name))
		return false;
	_cleanup_close_ int sock = ioctl_socket();
	return sock >= 0 && bridge_probe(sock, name) == 1;
}

int tap_open(const char *ifname, const char *bridge, const uint8_t guest_mac[6], char *why,
	     size_t size) {
	struct ifreq ifr;
	int r;

	if (!tap_ifname_valid(ifname))
		return why_err(-EINVAL, why, size, "'%.40s' is not a valid interface name", ifname);
	if (!tap_ifname_valid(bridge))
		return why_err(-EINVAL, why, size, "'%.40s' is not a valid interface name", bridge);

	_cleanup_close_ int sock = ioctl_socket();
	if (sock < 0)
		return why_err(sock, why, size, "cannot open a socket for interface ioctls: %s",
			    strerror(-sock));
	r = bridge_probe(sock, bridge);
	if (r == -ENODEV)
		return why_err(r, why, size, "bridge %s does not exist", bridge);
	if (r < 0)
		return why_err(r, why, size, "cannot tell whether %s is a bridge: %s", bridge, strerror(-r));
	if (r == 0)
		return why_err(-ENOTDIR, why, size, "%s is not a bridge", bridge);

	/* TUNSETIFF would attach to a persistent tap of that name, and the
	 * name of any other device is not ours to take. */
	ifreq_name(&ifr, ifname);
	if (ioctl(sock, SIOCGIFINDEX, &ifr) == 0)
		return why_err(-EEXIST, why, size, "an interface named %s exists already", ifname);

	_cleanup_close_ int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return why_err(negative_errno(), why, size, "cannot open /dev/net/tun: %m");
	/* Not persistent: closing the last fd (cprd's and every QEMU's)
	 * removes the device, and with it its place on the bridge.
	 * IFF_TUN_EXCL: a device of that name made since we looked is an
	 * error (EBUSY), never one to attach to. */
	ifreq_name(&ifr, ifname);
	ifr.ifr_flags = (short)(TAP_FLAGS | IFF_TUN_EXCL); /* 0x8000 is the sign bit: the same bits */
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		r = negative_errno();
		if (r == -EBUSY)
			return why_err(-EEXIST, why, size, "cannot create tap %s: an interface of that name exists already",
				    ifname);
		return why_err(r, why, size, "cannot create tap %s: %s", ifname, strerror(-r));
	}
	if ((r = tap_check(fd, ifname)) < 0)
		return why_err(r, why, size, "tap %s is not what was asked for after TUNSETIFF", ifname);

	if (guest_mac) {
		ifreq_name(&ifr, ifname);
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		memcpy(ifr.ifr_hwaddr.sa_data, guest_mac, 6);
		ifr.ifr_hwaddr.sa_data[0] = (char)0xfe;
		if (ioctl(sock, SIOCSIFHWADDR, &ifr) < 0)
			return why_err(negative_errno(), why, size, "cannot set the MAC address of tap %s: %m",
				    ifname);
	}

	ifreq_name(&ifr, bridge);
	ifr.ifr_ifindex = (int)if_nametoindex(ifname);
	if (ifr.ifr_ifindex == 0)
		return why_err(negative_errno(), why, size, "tap %s vanished after it was made: %m", ifname);
	if (ioctl(sock, SIOCBRADDIF, &ifr) < 0)
		return why_err(negative_errno(), why, size, "cannot attach tap %s to bridge %s: %m", ifname,
			    bridge);

	ifreq_name(&ifr, ifname);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
		return why_err(negative_errno(), why, size, "cannot read the flags of tap %s: %m", ifname);
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)
		return why_err(negative_errno(), why, size, "cannot bring tap %s up: %m", ifname);
	return TAKE_FD(fd);
}

int tap_check(int fd, const char *ifname) {
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	if (ioctl(fd, TUNGETIFF, &ifr) < 0)
		return -EBADFD;
	if (strncmp(ifr.ifr_name, ifname, IFNAMSIZ) != 0)
		return -ESTALE;
	if ((ifr.ifr_flags & (TAP_FLAGS | IFF_TUN | IFF_PERSIST)) != TAP_FLAGS)
		return -ESTALE;
	return 0;
}
