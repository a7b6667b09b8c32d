/*
 * cprd-guest: the test guest that cprd's tests boot under real QEMU.
 *
 * A single 512-byte boot sector, 16-bit real mode, booted by SeaBIOS from a
 * raw disk image. It shows that it is alive, and that it kept running across
 * a QEMU upgrade, in two places a test can look at from outside:
 *
 *   guest RAM at 0x8000 (= memfd offset 0x8000 on a pc machine):
 *     0x8000  8 bytes  magic "CPRDGST1", written after the counters are zeroed
 *     0x8008  u64 LE   BIOS timer ticks seen since boot (18.2 Hz)
 *     0x8010  u64 LE   serial lines completely written, the boot line included
 *     0x8018  u32      private: last BDA tick count seen
 *     0x801C  u32      private: low half of 0x8008 when the last line ended
 *
 *   COM1: "cprd-guest: booted\n" once, then about once a second (every 18
 *   ticks) "cprd-guest: line N counter C\n" in decimal, where N is the
 *   line's 1-based position in the output (the boot line is line 1, so after
 *   line N is out, 0x8010 holds N) and C is the value of 0x8008.
 *
 * Between timer ticks it sleeps in hlt, so an idle guest costs no host CPU
 * under TCG. The serial port is driven directly (port 0x3F8, polling the
 * LSR), not through int 14h, so nothing depends on the BIOS serial code.
 *
 * Assembled by GNU as directly (no C preprocessor), linked by guest.ld. The
 * code is in guest-defs.inc and guest-io.inc, which guest-pci.S (the guest
 * with a PCI device) shares: this file only puts it together.
 */

	.code16
	.text
	.globl	_start

	.include	"guest-defs.inc"

_start:
	boot_entry
	movw	$(BLK_BASE_END - BLK) / 4, %cx
	call	guest_init
main_loop:
	call	line_wait
	call	line_begin
	call	line_end
	jmp	main_loop

	.include	"guest-io.inc"
