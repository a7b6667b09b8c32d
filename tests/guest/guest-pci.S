/*
 * cprd-guest-pci: the test guest with a PCI device, for the VFIO lab
 * (tests/vfio-lab). It does what cprd-guest does (the RAM block at 0x8000,
 * one serial line a second, see README.md) and, when it finds QEMU's
 * pci-testdev (1b36:0005) or edu (1234:11e8) on bus 0, uses it through BAR0
 * every line and says how that went at the end of the line:
 *
 *   cprd-guest: pci 00:03.0 1b36:0005 bar0 febff000 cmd 0007
 *   cprd-guest: line 3 counter 36 testdev 2 cmd 0007 ok
 *
 *   cprd-guest: pci 00:03.0 1234:11e8 bar0 fea00000 cmd 0007 id 010000ed
 *   cprd-guest: line 3 counter 36 edu dma 2 ok
 *
 * pci-testdev: at boot the guest turns on memory decoding and bus mastering
 * in the command register and selects the device's test 0 by writing 0 to
 * BAR0+0 (which zeroes that test's counter, BAR0+12). Every line it writes
 * 0xFA to BAR0+2048 (the counter counts such writes), reads the counter and
 * the test's name (BAR0+16, "mmio...") back, and reads the command
 * register. The line says "ok" when the counter equals the writes done since
 * boot, the name is there and bus mastering is still on. A reset of the
 * device deselects the test (reads give 0) and clears the command register,
 * so a device that was reset under a running guest shows "BAD" from then on.
 *
 * edu: every line is one DMA round trip with values that change each time:
 * 256 bytes from guest RAM (0x9000) to the device's buffer (device address
 * 0x40000), then back to another place in RAM (0xA000), compared with what
 * was sent; plus the liveness register (BAR0+4 reads back the inverse of
 * what was written).
 *
 * BAR0 lies above 1 MiB, so the guest reaches it in unreal mode (FS with a
 * 4 GiB limit), entered again with interrupts off before each access.
 *
 * The boot sector loads the rest (stage 2, up to stage2_sectors sectors,
 * linked at 0x1000) with int 13h and jumps there; guest-pci.ld lays the
 * image out. Without a device the guest behaves like cprd-guest.
 */

	.code16

	.include	"guest-defs.inc"

	.equ	STAGE2_ADDR,	0x1000		/* below the stack (0x7C00 down) and the block */
	.globl	stage2_sectors			/* guest-pci.ld checks stage 2 fits */
	.equ	stage2_sectors,	16

	/* The device's part of the RAM block (README.md). */
	.equ	BLK_DEV_ID,	BLK + 0x20	/* u32: vendor | device << 16, 0 if none */
	.equ	BLK_DEV_BAR0,	BLK + 0x24	/* u32: BAR0's address */
	.equ	BLK_DEV_OK,	BLK + 0x28	/* u32: lines whose device check passed */
	.equ	BLK_DEV_BAD,	BLK + 0x2C	/* u32: lines whose device check failed */
	.equ	BLK_DEV_WRITES,	BLK + 0x30	/* u32: testdev: counted writes done */
	.equ	BLK_DEV_VALUE,	BLK + 0x34	/* u32: testdev: counter read; edu: first dword sent */
	.equ	BLK_DEV_BDF,	BLK + 0x38	/* u16: bus << 8 | device << 3 | function */
	.equ	BLK_DEV_CMD,	BLK + 0x3A	/* u16: PCI command register, last read */
	.equ	BLK_DEV_KIND,	BLK + 0x3C	/* u8: 0 none, 1 pci-testdev, 2 edu */
	.equ	BLK_DEV_LASTOK,	BLK + 0x3D	/* u8: 1 when the last check passed */
	.equ	BLK_END,	BLK + 0x40

	.equ	KIND_TESTDEV,	1
	.equ	KIND_EDU,	2

	.equ	PCI_ADDR,	0xCF8		/* configuration mechanism #1 */
	.equ	PCI_DATA,	0xCFC
	.equ	PCI_ID,		0x00
	.equ	PCI_COMMAND,	0x04
	.equ	PCI_BAR0,	0x10
	.equ	CMD_MEM,	0x0002
	.equ	CMD_MASTER,	0x0004
	.equ	ID_TESTDEV,	0x00051B36	/* device << 16 | vendor */
	.equ	ID_EDU,		0x11E81234

	/* pci-testdev (QEMU hw/misc/pci-testdev.c): test 0 is mmio-no-eventfd. */
	.equ	TD_SELECT,	0		/* write the test's number: selects it, zeroes its count */
	.equ	TD_COUNT,	12		/* u32: counted writes */
	.equ	TD_NAME,	16		/* the test's name, "mmio-no-eventfd" */
	.equ	TD_NAME_MMIO,	0x6F696D6D	/* "mmio" read as a little-endian u32 */
	.equ	TD_KICK,	2048		/* test 0's offset: a write of TD_MATCH counts */
	.equ	TD_MATCH,	0xFA

	/* edu (QEMU hw/misc/edu.c, docs/specs/edu.rst). */
	.equ	EDU_LIVENESS,	0x04
	.equ	EDU_DMA_SRC,	0x80
	.equ	EDU_DMA_DST,	0x88
	.equ	EDU_DMA_COUNT,	0x90
	.equ	EDU_DMA_CMD,	0x98		/* bit 0 start (clear when done), bit 1 device to RAM */
	.equ	EDU_BUF,	0x40000		/* the device's buffer, as a DMA address */
	.equ	DMA_SRC,	0x9000		/* guest RAM, under the 28-bit DMA mask */
	.equ	DMA_DST,	0xA000
	.equ	DMA_LEN,	256
	.equ	DMA_WAIT_TICKS,	40		/* edu finishes a DMA 100 ms after it starts */

	.equ	GDT_FLAT,	0x08		/* the data descriptor, for unreal mode */

/* ---- stage 1: the boot sector ------------------------------------------------ */

	.section .boot, "ax"
	.globl	_start
_start:
	boot_entry
	sti
	/* Sectors 2.. of the boot disk (DL, from the BIOS) to STAGE2_ADDR. */
	movw	$STAGE2_ADDR, %bx
	movw	$(0x0200 | stage2_sectors), %ax	/* AH 2: read; AL: how many */
	movw	$0x0002, %cx			/* cylinder 0, sector 2 */
	xorb	%dh, %dh			/* head 0 */
	int	$0x13
	jc	1f
	jmp	stage2
1:	movw	$msg_noload, %si	/* no stage 2, so no putc: straight to the port */
	movw	$COM1, %dx
2:	lodsb
	testb	%al, %al
	jz	3f
	outb	%al, %dx
	jmp	2b
3:	hlt
	jmp	3b
msg_noload:	.asciz	"cprd-guest: cannot load stage 2\n"

/* ---- stage 2 ------------------------------------------------------------------- */

	.text
stage2:
	movw	$(BLK_END - BLK) / 4, %cx	/* as cprd-guest, with the device's part */
	call	guest_init
	call	pci_find
main_loop:
	call	line_wait
	call	dev_step
	call	line_begin		/* cprd-guest's line, then the device's result */
	call	dev_result
	call	line_end
	jmp	main_loop

/* The end of a progress line with a device (see the header), or nothing. */
dev_result:
	cmpb	$KIND_TESTDEV, BLK_DEV_KIND
	jne	1f
	movw	$msg_testdev, %si
	call	puts
	movl	BLK_DEV_VALUE, %eax
	xorl	%ebx, %ebx
	call	put_u64
	movw	$msg_cmd, %si
	call	puts
	movzwl	BLK_DEV_CMD, %eax
	movb	$4, %cl
	call	put_hex
	jmp	2f
1:	cmpb	$KIND_EDU, BLK_DEV_KIND
	jne	4f
	movw	$msg_edu, %si
	call	puts
	movl	BLK_DEV_OK, %eax	/* this round's number: every round counts once */
	addl	BLK_DEV_BAD, %eax
	xorl	%ebx, %ebx
	call	put_u64
2:	movw	$msg_ok, %si
	cmpb	$1, BLK_DEV_LASTOK
	je	3f
	movw	$msg_bad, %si
3:	call	puts
4:	ret

/* ---- PCI configuration space ------------------------------------------------ */

/* Point the configuration address at register %bl of function %cx (BDF). Clobbers %eax, %dx. */
pci_select:
	movzwl	%cx, %eax
	shll	$8, %eax
	movb	%bl, %al
	andb	$0xFC, %al
	orl	$0x80000000, %eax
	movw	$PCI_ADDR, %dx
	outl	%eax, %dx
	ret

/* %eax = the dword at register %bl of function %cx. Clobbers %dx. */
pci_read32:
	call	pci_select
	movw	$PCI_DATA, %dx
	inl	%dx, %eax
	ret

/* Write %edi to the dword at register %bl of function %cx. Clobbers %eax, %dx. */
pci_write32:
	call	pci_select
	movl	%edi, %eax
	movw	$PCI_DATA, %dx
	outl	%eax, %dx
	ret

/*
 * Look for pci-testdev or edu on bus 0 (function 0 of each slot). If there
 * is one: note it in the block, turn on memory decoding and bus mastering,
 * print the "pci" line and get the device ready. Otherwise print nothing.
 */
pci_find:
	xorw	%cx, %cx
1:	movb	$PCI_ID, %bl
	call	pci_read32
	movb	$KIND_TESTDEV, %bh
	cmpl	$ID_TESTDEV, %eax
	je	2f
	movb	$KIND_EDU, %bh
	cmpl	$ID_EDU, %eax
	je	2f
	addw	$8, %cx			/* the next slot */
	cmpw	$32 * 8, %cx
	jb	1b
	ret
2:	movl	%eax, BLK_DEV_ID
	movb	%bh, BLK_DEV_KIND
	movw	%cx, BLK_DEV_BDF
	movb	$PCI_BAR0, %bl
	call	pci_read32
	andl	$0xFFFFFFF0, %eax	/* a 32-bit memory BAR: the flags go */
	movl	%eax, BLK_DEV_BAR0
	movb	$PCI_COMMAND, %bl
	call	pci_read32
	movzwl	%ax, %edi		/* the status half is write-1-to-clear: write 0s */
	orw	$CMD_MEM | CMD_MASTER, %di
	call	pci_write32
	call	pci_read32
	movw	%ax, BLK_DEV_CMD

	/* "cprd-guest: pci BB:DD.F VVVV:DDDD bar0 XXXXXXXX cmd XXXX" */
	movw	$msg_pci, %si
	call	puts
	movzwl	BLK_DEV_BDF, %eax
	shrl	$8, %eax
	movb	$2, %cl
	call	put_hex
	movb	$':', %al
	call	putc
	movzwl	BLK_DEV_BDF, %eax
	shrl	$3, %eax
	andb	$0x1F, %al
	movb	$2, %cl
	call	put_hex
	movb	$'.', %al
	call	putc
	movzwl	BLK_DEV_BDF, %eax
	andb	$7, %al
	movb	$1, %cl
	call	put_hex
	movb	$' ', %al
	call	putc
	movzwl	BLK_DEV_ID, %eax
	movb	$4, %cl
	call	put_hex
	movb	$':', %al
	call	putc
	movzwl	BLK_DEV_ID + 2, %eax
	call	put_hex
	movw	$msg_bar0, %si
	call	puts
	movl	BLK_DEV_BAR0, %eax
	movb	$8, %cl
	call	put_hex
	movw	$msg_cmd, %si
	call	puts
	movzwl	BLK_DEV_CMD, %eax
	movb	$4, %cl
	call	put_hex

	cmpb	$KIND_EDU, BLK_DEV_KIND
	je	3f
	movb	$TD_SELECT, %al		/* pci-testdev: select test 0 */
	xorl	%esi, %esi
	call	mmio_wr8
	jmp	4f
3:	movw	$msg_id, %si		/* edu: its id register, 010000ed */
	call	puts
	xorl	%esi, %esi
	call	mmio_rd32
	movb	$8, %cl
	call	put_hex
4:	movb	$'\n', %al
	call	putc
	jmp	line_done

/* ---- the device, every line ------------------------------------------------- */

/* One check of the device, if there is one; its result in the block. */
dev_step:
	movb	BLK_DEV_KIND, %al
	cmpb	$KIND_TESTDEV, %al
	je	testdev_step
	cmpb	$KIND_EDU, %al
	je	edu_step
	ret

/* Count one more write, read the counter, the test's name and the command register. */
testdev_step:
	pushal
	movb	$TD_MATCH, %al
	movl	$TD_KICK, %esi
	call	mmio_wr8
	incl	BLK_DEV_WRITES
	movl	$TD_COUNT, %esi
	call	mmio_rd32
	movl	%eax, BLK_DEV_VALUE
	movl	$TD_NAME, %esi
	call	mmio_rd32
	movl	%eax, %edi
	movw	BLK_DEV_BDF, %cx
	movb	$PCI_COMMAND, %bl
	call	pci_read32
	movw	%ax, BLK_DEV_CMD
	movl	BLK_DEV_VALUE, %edx
	cmpl	BLK_DEV_WRITES, %edx
	jne	dev_bad
	cmpl	$TD_NAME_MMIO, %edi
	jne	dev_bad
	testb	$CMD_MASTER, %al
	jz	dev_bad
	jmp	dev_ok

/* One DMA round trip, RAM -> device -> RAM, with this round's values. */
edu_step:
	pushal
	movl	BLK_DEV_OK, %edx	/* the round: 1, 2, ... */
	addl	BLK_DEV_BAD, %edx
	incl	%edx
	movl	%edx, %eax		/* liveness: it answers with the inverse */
	movl	$EDU_LIVENESS, %esi
	call	mmio_wr32
	call	mmio_rd32
	notl	%eax
	cmpl	%edx, %eax
	jne	dev_bad
	imull	$0x9E3779B1, %edx, %eax	/* dword i of round r: r * 0x9E3779B1 + i */
	movl	%eax, BLK_DEV_VALUE
	movw	$DMA_SRC, %di
	movw	$DMA_LEN / 4, %cx
1:	stosl
	incl	%eax
	loop	1b
	xorl	%eax, %eax		/* the destination starts out zeroed */
	movw	$DMA_DST, %di
	movw	$DMA_LEN / 4, %cx
	rep stosl
	movl	$DMA_SRC, %eax
	movl	$EDU_BUF, %edx
	movb	$1, %bl			/* start, RAM to device */
	call	edu_dma
	jc	dev_bad
	movl	$EDU_BUF, %eax
	movl	$DMA_DST, %edx
	movb	$3, %bl			/* start, device to RAM */
	call	edu_dma
	jc	dev_bad
	movw	$DMA_SRC, %si
	movw	$DMA_DST, %di
	movw	$DMA_LEN / 4, %cx
	repe cmpsl
	jne	dev_bad
	/* fall through */

/* The ends of testdev_step and edu_step, which pushed the registers. */
dev_ok:
	incl	BLK_DEV_OK
	movb	$1, BLK_DEV_LASTOK
	popal
	ret
dev_bad:
	incl	BLK_DEV_BAD
	movb	$0, BLK_DEV_LASTOK
	popal
	ret

/*
 * One edu DMA of DMA_LEN bytes from %eax to %edx with command %bl; waits
 * (asleep between ticks) until the device clears the start bit. CF set
 * when it did not within DMA_WAIT_TICKS. Preserves the registers.
 */
edu_dma:
	pushal
	movl	$EDU_DMA_SRC, %esi
	call	mmio_wr32
	movl	%edx, %eax
	movl	$EDU_DMA_DST, %esi
	call	mmio_wr32
	movl	$DMA_LEN, %eax
	movl	$EDU_DMA_COUNT, %esi
	call	mmio_wr32
	movzbl	%bl, %eax
	movl	$EDU_DMA_CMD, %esi
	call	mmio_wr32
	movw	$DMA_WAIT_TICKS, %cx
1:	call	mmio_rd32
	testb	$1, %al
	jz	2f
	sti
	hlt
	call	tick_update
	loop	1b
	popal
	stc
	ret
2:	popal
	clc
	ret

/* ---- BAR0 in unreal mode ---------------------------------------------------- */

/*
 * Give FS base 0 and a 4 GiB limit: switch to protected mode, load FS from
 * the flat descriptor, switch back (FS keeps the limit), load FS with 0
 * (only its base changes). Call with interrupts off. Preserves registers.
 */
unreal:
	pushl	%eax
	lgdt	gdt_ptr
	movl	%cr0, %eax
	orb	$1, %al
	movl	%eax, %cr0
	jmp	1f
1:	movw	$GDT_FLAT, %ax
	movw	%ax, %fs
	movl	%cr0, %eax
	andb	$0xFE, %al
	movl	%eax, %cr0
	jmp	2f
2:	xorw	%ax, %ax
	movw	%ax, %fs
	popl	%eax
	ret

/*
 * BAR0 + %esi: read a u32 into %eax, or write %eax (u32) or %al (u8).
 * Interrupts are off for the access: a BIOS handler that switches modes
 * may give FS back its 64 KiB limit. Preserve the other registers.
 */
mmio_rd32:
	pushl	%ebx
	pushfw
	cli
	call	unreal
	movl	BLK_DEV_BAR0, %ebx
	movl	%fs:(%ebx,%esi), %eax
	popfw
	popl	%ebx
	ret

mmio_wr32:
	pushl	%ebx
	pushfw
	cli
	call	unreal
	movl	BLK_DEV_BAR0, %ebx
	movl	%eax, %fs:(%ebx,%esi)
	popfw
	popl	%ebx
	ret

mmio_wr8:
	pushl	%ebx
	pushfw
	cli
	call	unreal
	movl	BLK_DEV_BAR0, %ebx
	movb	%al, %fs:(%ebx,%esi)
	popfw
	popl	%ebx
	ret

/* Print the low %cl hex digits of %eax (lower case). Preserves the registers. */
put_hex:
	pushal
	movl	%eax, %edx
	movzbw	%cl, %cx
1:	movl	%edx, %eax
	pushw	%cx
	decw	%cx
	shlw	$2, %cx			/* this digit's shift: 4 * (digits left - 1) */
	shrl	%cl, %eax
	popw	%cx
	andb	$0x0F, %al
	addb	$'0', %al
	cmpb	$'9', %al
	jbe	2f
	addb	$'a' - '9' - 1, %al
2:	call	putc
	loop	1b
	popal
	ret

	.include	"guest-io.inc"

	.balign	8
gdt:		.quad	0
		.quad	0x00CF92000000FFFF	/* GDT_FLAT: data, base 0, 4 GiB, writable */
gdt_ptr:	.word	gdt_ptr - gdt - 1
		.long	gdt

msg_pci:	.asciz	"cprd-guest: pci "
msg_bar0:	.asciz	" bar0 "
msg_cmd:	.asciz	" cmd "
msg_id:		.asciz	" id "
msg_testdev:	.asciz	" testdev "
msg_edu:	.asciz	" edu dma "
msg_ok:		.asciz	" ok"
msg_bad:	.asciz	" BAD"
