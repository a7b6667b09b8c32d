/* tap: the tap devices behind a VM's NICs, made with plain ioctls on
 * /dev/net/tun and a socket (no netlink), and the pure parts around them:
 * interface names, a VM's tap names and its NICs' MAC addresses. */
#pragma once

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* At most this many NICs per VM: a tap name has room for one digit, and a
 * derived MAC keeps the index in its low three bits. */
#define TAP_PER_VM_MAX 8

/* "52:54:00:ab:cd:ef" and its NUL. */
#define TAP_MAC_STRLEN 18

/* Whether the kernel would take name for a network interface: 1 to 15
 * characters, printable ASCII, none of / : % and never . or .. (a bridge
 * named in a spec must pass this). */
bool tap_ifname_valid(const char *name);

/* The tap device name of NIC index of VM vm, fixed for the VM's lifetime:
 * "cprd-<vm>-<index>" when that fits IFNAMSIZ, else "cprd-<2 chars of
 * vm>~<5 characters of a hash of the whole name>-<index>". The '~' cannot
 * occur in a VM name, so the two forms never meet; two VM names with the
 * same short form would need the same 25-bit hash, and tap_open refuses a
 * name already in use rather than share it. Pure. 0, or -EINVAL when vm is
 * empty or index >= TAP_PER_VM_MAX. */
int tap_name(const char *vm, unsigned index, char buf[static IFNAMSIZ]);

/* Creates the tap device ifname (IFF_TAP|IFF_NO_PI, no virtio-net header:
 * see tap.c; not
 * persistent: it goes away when its last fd is closed), sets its own MAC
 * to guest_mac with the first byte fe when guest_mac is not NULL (so a
 * bridge, which takes the lowest MAC of its ports, never takes the tap's),
 * attaches it to bridge and brings it up. Returns the fd (close-on-exec,
 * blocking: QEMU makes it non-blocking itself), which the caller owns. On
 * failure nothing is left behind and why holds a sentence naming the
 * problem; the errno tells its kind:
 *   -ENODEV   the bridge does not exist ("bridge br9 does not exist")
 *   -ENOTDIR  it is not a bridge
 *   -EEXIST   an interface of that name exists already
 *   -EINVAL   a name the kernel would refuse
 *   other     the kernel refused a step (named in why) */
int tap_open(const char *ifname, const char *bridge, const uint8_t guest_mac[6], char *why,
	     size_t size);

/* Whether fd is a tap device (IFF_TAP, IFF_NO_PI, no IFF_VNET_HDR) named
 * ifname: what a tap fd taken back from a QEMU (pidfd_getfd) must be
 * before cprd holds it again. 0; -EBADFD when fd is no tun/tap fd or is
 * not attached to a device; -ESTALE when it is a tap of another name or
 * other flags. */
int tap_check(int fd, const char *ifname);

/* Whether name is a bridge in cprd's network namespace (the kernel's
 * bridge driver, asked through SIOCETHTOOL). */
bool tap_bridge_exists(const char *name);

/* A stable MAC for NIC index of VM vm: 52:54:00 (locally administered,
 * unicast), then 21 bits of a hash of the VM's name and index / 8, then
 * index % 8 in the low three bits, so the NICs of one VM never share one.
 * Pure. */
void tap_derive_mac(const char *vm, unsigned index, uint8_t mac[static 6]);

/* Parses "xx:xx:xx:xx:xx:xx" (hex digits, either case). -EINVAL on bad
 * syntax; -EADDRNOTAVAIL for an address no NIC may have: all zeros, or
 * multicast (broadcast included). why, when not NULL, gets the reason as
 * the end of a sentence ("is a multicast address"). */
int tap_mac_parse(const char *s, uint8_t mac[static 6], const char **why);
/* "52:54:00:ab:cd:ef", lower case. */
void tap_mac_format(const uint8_t mac[static 6], char buf[static TAP_MAC_STRLEN]);
