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
 * Assembled by GNU as directly (no C preprocessor), linked by guest.ld.
 */

	.code16
	.text
	.globl	_start

	.equ	BOOT_ADDR,	0x7C00		/* where the BIOS loads the sector */

	.equ	COM1,		0x3F8
	.equ	COM1_LSR,	COM1 + 5
	.equ	LSR_THRE,	0x20		/* transmit holding register empty */

	.equ	BDA_TICKS,	0x46C		/* BIOS data area: u32 ticks since midnight */
	.equ	TICKS_PER_DAY,	0x1800B0	/* SeaBIOS resets BDA_TICKS to 0 here */
	.equ	TICKS_PER_LINE,	18		/* about one second */

	/* The block tests read. Fixed address, see the header and README.md. */
	.equ	BLK,		0x8000
	.equ	BLK_MAGIC,	BLK + 0x00
	.equ	BLK_TICKS,	BLK + 0x08
	.equ	BLK_LINES,	BLK + 0x10
	.equ	BLK_LAST_BDA,	BLK + 0x18
	.equ	BLK_LAST_LINE,	BLK + 0x1C

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
 * Add the ticks the BIOS counted since the last call to the u64 at
 * BLK_TICKS. Counting the difference rather than 1 per wakeup keeps the
 * count right when a wakeup was not the timer or a tick went by unseen.
 * A host reader may see a torn value when the low half carries into the
 * high half, once every 7.5 years of guest time.
 * Preserves all registers.
 */
tick_update:
	pushal
	movl	BDA_TICKS, %eax		/* one 32-bit read: the IRQ 0 handler cannot tear it */
	movl	%eax, %edx
	subl	BLK_LAST_BDA, %edx
	jae	1f
	addl	$TICKS_PER_DAY, %edx	/* the BIOS wrapped the count at midnight */
1:	movl	%eax, BLK_LAST_BDA
	addl	%edx, BLK_TICKS
	adcl	$0, BLK_TICKS + 4
	popal
	ret

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

/* Print the NUL-terminated string at %si. Clobbers %al, %si. */
puts:
1:	lodsb
	testb	%al, %al
	jz	2f
	call	putc
	jmp	1b
2:	ret

/*
 * Print %ebx:%eax in decimal. Divides the 64-bit value by 10 in two 32-bit
 * steps (high half, then the remainder carried into the low half), pushing
 * digits least significant first. Clobbers %eax %ebx %cx %edx %esi %edi.
 */
put_u64:
	movl	$10, %esi
	xorw	%cx, %cx
1:	movl	%eax, %edi
	movl	%ebx, %eax
	xorl	%edx, %edx
	divl	%esi			/* %eax = high / 10, %edx = high % 10 */
	movl	%eax, %ebx
	movl	%edi, %eax
	divl	%esi			/* %edx:%eax / 10; %edx < 10 so it cannot overflow */
	pushw	%dx
	incw	%cx
	movl	%eax, %edx
	orl	%ebx, %edx
	jnz	1b
2:	popw	%ax
	addb	$'0', %al
	call	putc
	loop	2b
	ret

/*
 * Send %al on COM1. If the transmitter is busy (QEMU keeps THRE clear while
 * its chardev backend cannot take more), sleep until the next tick instead
 * of spinning, and keep the tick counter going meanwhile: a stalled console
 * must neither burn host CPU nor make the guest look dead. With no UART at
 * all the port reads 0xFF, THRE looks set and the bytes go nowhere.
 * Preserves all registers.
 */
putc:
	pushw	%dx
	pushw	%ax
1:	movw	$COM1_LSR, %dx
	inb	%dx, %al
	testb	$LSR_THRE, %al
	jnz	2f
	sti
	hlt
	call	tick_update
	jmp	1b
2:	popw	%ax
	movw	$COM1, %dx
	outb	%al, %dx
	popw	%dx
	ret

/* 115200 8N1, FIFOs on, no interrupts: we poll, and the BIOS has no handler. */
serial_init:
	movw	$serial_setup, %si
1:	lodsb
	movw	$COM1, %dx
	addb	%al, %dl		/* COM1 is 0x3F8: adding 0..7 never carries */
	lodsb
	outb	%al, %dx
	cmpw	$serial_setup_end, %si
	jb	1b
	ret

serial_setup:	/* (register offset, value) */
	.byte	1, 0x00			/* IER: no interrupts */
	.byte	3, 0x80			/* LCR: DLAB on, to reach the divisor */
	.byte	0, 0x01			/* DLL: divisor 1 = 115200 baud */
	.byte	1, 0x00			/* DLM */
	.byte	3, 0x03			/* LCR: 8 data bits, no parity, 1 stop, DLAB off */
	.byte	2, 0x07			/* FCR: enable and clear both FIFOs */
	.byte	4, 0x03			/* MCR: DTR, RTS; OUT2 off keeps IRQ 4 quiet */
serial_setup_end:

magic:		.ascii	"CPRDGST1"
msg_booted:	.asciz	"cprd-guest: booted\n"
msg_line:	.asciz	"cprd-guest: line "
msg_counter:	.asciz	" counter "
