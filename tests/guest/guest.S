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
 * constants and the tick and serial code are in guest-defs.inc and
 * guest-io.inc, which guest-pci.S (the guest with a PCI device) shares.
 */

	.code16
	.text
	.globl	_start

	.include	"guest-defs.inc"

_start:
	cli
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	$BOOT_ADDR, %sp		/* stack grows down, away from the code */
	ljmp	$0, $1f			/* some BIOSes enter at 07C0:0000; we are linked for CS=0 */
1:	cld

	call	serial_init

	/*
	 * Clear the magic, zero the counters, then write the magic: a reader
	 * who sees the magic sees counters that belong to this boot, even after
	 * a reset that left the previous boot's RAM behind.
	 */
	xorl	%eax, %eax
	movl	%eax, BLK_MAGIC
	movl	%eax, BLK_MAGIC + 4
	movl	%eax, BLK_TICKS
	movl	%eax, BLK_TICKS + 4
	movl	%eax, BLK_LINES
	movl	%eax, BLK_LINES + 4
	movl	%eax, BLK_LAST_LINE
	movl	BDA_TICKS, %eax
	movl	%eax, BLK_LAST_BDA
	movw	$magic, %si
	movw	$BLK_MAGIC, %di
	movw	$8, %cx
	rep movsb

	movw	$msg_booted, %si
	call	puts
	call	line_done

main_loop:
	/*
	 * sti takes effect after the next instruction, so no interrupt can slip
	 * in between and leave us asleep; the timer wakes us every 55 ms.
	 */
	sti
	hlt
	call	tick_update
	movl	BLK_TICKS, %eax
	subl	BLK_LAST_LINE, %eax	/* wraps correctly across the u32 boundary */
	cmpl	$TICKS_PER_LINE, %eax
	jb	main_loop
	call	print_progress
	jmp	main_loop

/*
 * "cprd-guest: line N counter C\n", C read when it is printed. The next
 * line is due 18 ticks after this one ends, so a console that stalled for
 * a while gets one line when it drains, not a burst of overdue ones.
 */
print_progress:
	movw	$msg_line, %si
	call	puts
	movl	BLK_LINES, %eax		/* this line's number is one past the lines done */
	movl	BLK_LINES + 4, %ebx
	addl	$1, %eax
	adcl	$0, %ebx
	call	put_u64
	movw	$msg_counter, %si
	call	puts
	movl	BLK_TICKS, %eax
	movl	BLK_TICKS + 4, %ebx
	call	put_u64
	movb	$'\n', %al
	call	putc
	movl	BLK_TICKS, %eax
	movl	%eax, BLK_LAST_LINE
	/* fall through */

/* Count a line only once its newline is out, so 0x8010 never runs ahead. */
line_done:
	addl	$1, BLK_LINES
	adcl	$0, BLK_LINES + 4
	ret

	.include	"guest-io.inc"

magic:		.ascii	"CPRDGST1"
msg_booted:	.asciz	"cprd-guest: booted\n"
msg_line:	.asciz	"cprd-guest: line "
msg_counter:	.asciz	" counter "
