/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * hvprobe: the ioctl ABI of /dev/hvprobe, shared by the kernel module and
 * the hvprobe command-line tool. Every structure is laid out with explicit
 * padding so that its size and offsets are the same for both.
 *
 * Fields marked "in" are read by the module, "out" are written by it.
 */
#ifndef HVPROBE_ABI_H
#define HVPROBE_ABI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HVPROBE_ABI_VERSION	7
#define HVPROBE_DEVICE		"/dev/hvprobe"

#define HVPROBE_PAGE_BYTES	4096
#define HVPROBE_SINTS		16
#define HVPROBE_SLOT_BYTES	256
#define HVPROBE_VECTORS		256
/* The hypercall buffer of each CPU: this many physically contiguous pages. */
#define HVPROBE_BUF_PAGES	4
#define HVPROBE_BUF_BYTES	(HVPROBE_BUF_PAGES * HVPROBE_PAGE_BYTES)
/* At most this many input bytes are copied in, output bytes returned. */
#define HVPROBE_IO_MAX		256
#define HVPROBE_XMM_REGS	6
#define HVPROBE_XMM_BYTES	16
/* Vectors an IPI may carry: below 32 are exceptions. */
#define HVPROBE_IPI_MIN_VECTOR	32
#define HVPROBE_ONLINE_WORDS	16	/* CPUs 0..1023 in info.online */

struct hvprobe_info {
	__u32 abi_version;		/* out: HVPROBE_ABI_VERSION */
	__u32 nr_cpu_ids;		/* out */
	__u32 hypercall_page;		/* out: 1 when hv_hypercall_pg is set */
	__u32 x2apic;			/* out: 1 when the APIC is in x2APIC mode */
	__u32 irq_probes;		/* out: HVPROBE_PROBE_* of registered kprobes */
	__u32 pad;
	__u64 online[HVPROBE_ONLINE_WORDS];	/* out: bit n = CPU n online */
};

#define HVPROBE_PROBE_COMMON	(1U << 0)	/* __common_interrupt */
#define HVPROBE_PROBE_SPURIOUS	(1U << 1)	/* __spurious_interrupt */

struct hvprobe_cpuid {
	__u32 cpu;			/* in */
	__u32 leaf;			/* in: EAX */
	__u32 subleaf;			/* in: ECX */
	__u32 eax, ebx, ecx, edx;	/* out */
	__u32 pad;
};

struct hvprobe_msr {
	__u32 cpu;			/* in */
	__u32 msr;			/* in: ECX */
	__u64 value;			/* in (write) or out (read; 0 on #GP) */
	__u32 gp;			/* out: 1 when the access raised #GP */
	__u32 pad;
};

/* synic-setup: write these registers without their enable bit. */
#define HVPROBE_SYNIC_NO_SCONTROL	(1U << 0)
#define HVPROBE_SYNIC_NO_SIEF		(1U << 1)
#define HVPROBE_SYNIC_NO_SIM		(1U << 2)
/*
 * The pages at sief_gpa and sim_gpa, which the kernel must not own (kept from
 * it with memmap=), instead of pages the module allocates: to put a SynIC's
 * pages where no allocator would, such as the last page of RAM.
 */
#define HVPROBE_SYNIC_AT_GPA		(1U << 3)
#define HVPROBE_SYNIC_FLAGS		0xfU

/* Bits of hvprobe_synic.faults: which writes raised #GP. */
#define HVPROBE_FAULT_SCONTROL		(1U << 0)
#define HVPROBE_FAULT_SIEFP		(1U << 1)
#define HVPROBE_FAULT_SIMP		(1U << 2)
#define HVPROBE_FAULT_SINT(n)		(1U << (3 + (n)))

struct hvprobe_synic {
	__u32 cpu;			/* in */
	__u32 flags;			/* in: HVPROBE_SYNIC_* (setup only) */
	__u64 sief_gpa;			/* out: the SIEF page (0 after teardown); in with AT_GPA */
	__u64 sim_gpa;			/* out: the SIM page (0 after teardown); in with AT_GPA */
	__u64 scontrol;			/* out: the values written */
	__u64 siefp;
	__u64 simp;
	__u32 faults;			/* out: HVPROBE_FAULT_* */
	__u32 pad;
};

#define HVPROBE_SINT_MASKED	(1ULL << 16)
#define HVPROBE_SINT_AUTO_EOI	(1ULL << 17)
#define HVPROBE_SINT_POLLING	(1ULL << 18)

struct hvprobe_sint {
	__u32 cpu;			/* in */
	__u32 sint;			/* in: 0..15 */
	__u64 value;			/* in: written to SINTx as is */
	__u32 gp;			/* out */
	__u32 pad;
};

#define HVPROBE_SLOT_SIEF	0
#define HVPROBE_SLOT_SIM	1

struct hvprobe_slot {
	__u32 cpu;			/* in */
	__u32 sint;			/* in: 0..15 */
	__u32 page;			/* in: HVPROBE_SLOT_SIEF or _SIM */
	__u32 clear;			/* in: 1 = zero the slot while reading it */
	__u8 data[HVPROBE_SLOT_BYTES];	/* out */
};

struct hvprobe_pages {
	__u32 cpu;			/* in */
	__u32 synic;			/* out: 1 when synic-setup made the pages */
	__u64 sief_gpa;			/* out: 0 when not set up */
	__u64 sim_gpa;
	__u64 buffer_gpa;		/* out: the hypercall buffer */
	__u32 buffer_bytes;		/* out: HVPROBE_BUF_BYTES */
	__u32 pad;
};

/*
 * The counts are read after a fence on @cpu (a work item run there), so that
 * an interrupt already pending in its APIC is counted; NO_FENCE reads them as
 * they are.
 */
#define HVPROBE_IRQS_NO_FENCE	(1U << 0)

struct hvprobe_irqs {
	__u32 cpu;			/* in */
	__u32 flags;			/* in: HVPROBE_IRQS_* */
	__u64 counts[HVPROBE_VECTORS];	/* out: interrupts taken, per vector */
	/*
	 * out: of those, the ones whose vector was already in service in the
	 * local APIC's ISR when its handler was entered; an interrupt that
	 * the APIC acknowledged with auto-EOI (Hyper-V SINTs) is not.
	 */
	__u64 in_service[HVPROBE_VECTORS];
};

/*
 * One 32-bit OUT or IN, from the kernel on one CPU: a process's own port
 * access goes through the TSS I/O bitmap, which not every (nested)
 * emulation checks right.
 */
struct hvprobe_port {
	__u32 cpu;			/* in */
	__u32 port;			/* in: 0..0xfffc */
	__u32 value;			/* in for OUT, out for IN */
	__u32 write;			/* in: 1 OUT, 0 IN */
};

struct hvprobe_ipi {
	__u32 from_cpu;			/* in: the CPU that sends */
	__u32 to_cpu;			/* in: the CPU that receives */
	__u32 vector;			/* in: 32..255 */
	__u32 pad;
};

#define HVPROBE_INSN_VMCALL	0	/* 0f 01 c1 */
#define HVPROBE_INSN_VMMCALL	1	/* 0f 01 d9 */
#define HVPROBE_INSN_PAGE	2	/* call hv_hypercall_pg */

#define HVPROBE_HC_FAST		(1U << 0)	/* RDX, R8 from rdx, r8; XMM0..5 */
#define HVPROBE_HC_IN_GPA	(1U << 1)	/* memory form: RDX = in_gpa */
#define HVPROBE_HC_OUT_GPA	(1U << 2)	/* memory form: R8 = out_gpa */
#define HVPROBE_HC_FLAGS	0x7U
#define HVPROBE_REPEAT_MAX	100000

struct hvprobe_hypercall {
	/* in */
	__u32 cpu;
	__u32 flags;			/* HVPROBE_HC_* */
	__u32 insn;			/* HVPROBE_INSN_* */
	__u32 in_offset;		/* input bytes go here in the buffer */
	__u32 out_offset;		/* the output area starts here... */
	__u32 in_len;			/* <= HVPROBE_IO_MAX */
	__u32 out_len;			/* <= HVPROBE_IO_MAX */
	__u32 out_fill;			/* byte written over the output area first */
	__u32 repeat;			/* 0 or 1: once; else back to back, timed */
	__u32 pad;
	/* ...or at out_gpa, with HVPROBE_HC_OUT_GPA, if that is in the buffer */
	__u64 control;			/* RCX */
	__u64 in_gpa;			/* with HVPROBE_HC_IN_GPA */
	__u64 out_gpa;			/* with HVPROBE_HC_OUT_GPA */
	__u64 rdx;			/* fast form */
	__u64 r8;			/* fast form */
	__u8 xmm_in[HVPROBE_XMM_REGS][HVPROBE_XMM_BYTES];	/* fast form */
	__u8 input[HVPROBE_IO_MAX];
	/* out */
	__u64 rax;			/* valid when trap < 0 */
	__u64 used_rdx;			/* what RDX and R8 held */
	__u64 used_r8;
	__s32 trap;			/* -1, or the exception vector (6 = #UD) */
	__u32 output_len;		/* bytes valid in output */
	__u64 elapsed_ns;		/* all the repeats, the instruction alone */
	__u64 output_gpa;		/* where output was read from */
	__u8 xmm_out[HVPROBE_XMM_REGS][HVPROBE_XMM_BYTES];	/* fast form */
	__u8 output[HVPROBE_IO_MAX];
};

/*
 * A race: the CPUs in @cpus make the same memory-form call (@control, @input)
 * at once, released together by a barrier, @rounds times. After each round
 * the first of them checks that flag @flag of SINT @sint is set in
 * @target_cpu's SIEF page and clears it for the next round, and, when it was
 * set, waits for the one interrupt on @vector at @target_cpu that is due.
 */
#define HVPROBE_RACE_CPUS	8
#define HVPROBE_RACE_ROUNDS_MAX	5000
#define HVPROBE_RACE_CALLS_MAX	1000	/* calls per caller per round */
/* The call writes NewlySignaled (a byte) at its output: one per round is due */
#define HVPROBE_RACE_NEWLY_OUTPUT	(1U << 0)
#define HVPROBE_RACE_NEIGHBOUR		(1U << 1)	/* target CPU toggles flag ^ 1 meanwhile */

struct hvprobe_race {
	__u32 cpus;			/* in: bit n = CPU n calls; at most HVPROBE_RACE_CPUS bits */
	__u32 rounds;			/* in: 1..HVPROBE_RACE_ROUNDS_MAX */
	__u32 target_cpu;		/* in: whose SIEF slot holds the flag; below 32 */
	__u32 sint;			/* in */
	__u32 flag;			/* in: bit number within the slot */
	__u32 vector;			/* in: counted on target_cpu */
	__u32 insn;			/* in: HVPROBE_INSN_* */
	__u32 in_len;			/* in: <= HVPROBE_IO_MAX */
	__u32 flags;			/* in: HVPROBE_RACE_* */
	__u32 calls_per_round;		/* in: each caller's calls, back to back; 0 means 1 */
	__u64 control;			/* in: RCX, memory form */
	__u8 input[HVPROBE_IO_MAX];	/* in */
	__u32 calls;			/* out: calls made */
	__u32 newly;			/* out: answers with NewlySignaled = 1 */
	__u32 bad_rounds;		/* out: rounds without exactly one of those (NEWLY_OUTPUT) */
	__u32 errors;			/* out: answers other than SUCCESS, or faults */
	__u32 first_error;		/* out: the status (or 0x10000 + vector) of the first */
	__u32 flag_missing;		/* out: rounds after which the flag was clear */
	__u32 irqs;			/* out: interrupts on vector at target_cpu meanwhile */
	__u32 irq_timeouts;		/* out: rounds whose interrupt did not come in time */
	__u32 neighbour_toggles;	/* out: set-and-clear pairs of flag ^ 1 (NEIGHBOUR) */
	__u32 neighbour_lost;		/* out: of those, ones that found the bit changed under them */
	__u32 pad2;
};

#define HVPROBE_IOC_MAGIC	0xb7

#define HVPROBE_IOC_INFO	_IOR(HVPROBE_IOC_MAGIC, 0x00, struct hvprobe_info)
#define HVPROBE_IOC_CPUID	_IOWR(HVPROBE_IOC_MAGIC, 0x01, struct hvprobe_cpuid)
#define HVPROBE_IOC_RDMSR	_IOWR(HVPROBE_IOC_MAGIC, 0x02, struct hvprobe_msr)
#define HVPROBE_IOC_WRMSR	_IOWR(HVPROBE_IOC_MAGIC, 0x03, struct hvprobe_msr)
#define HVPROBE_IOC_SYNIC_SETUP	_IOWR(HVPROBE_IOC_MAGIC, 0x04, struct hvprobe_synic)
#define HVPROBE_IOC_SYNIC_TEARDOWN _IOWR(HVPROBE_IOC_MAGIC, 0x05, struct hvprobe_synic)
#define HVPROBE_IOC_SINT	_IOWR(HVPROBE_IOC_MAGIC, 0x06, struct hvprobe_sint)
#define HVPROBE_IOC_SLOT	_IOWR(HVPROBE_IOC_MAGIC, 0x07, struct hvprobe_slot)
#define HVPROBE_IOC_PAGES	_IOWR(HVPROBE_IOC_MAGIC, 0x08, struct hvprobe_pages)
#define HVPROBE_IOC_IRQS	_IOWR(HVPROBE_IOC_MAGIC, 0x09, struct hvprobe_irqs)
#define HVPROBE_IOC_IPI		_IOW(HVPROBE_IOC_MAGIC, 0x0a, struct hvprobe_ipi)
#define HVPROBE_IOC_HYPERCALL	_IOWR(HVPROBE_IOC_MAGIC, 0x0b, struct hvprobe_hypercall)
#define HVPROBE_IOC_PORT	_IOWR(HVPROBE_IOC_MAGIC, 0x0c, struct hvprobe_port)
#define HVPROBE_IOC_RACE	_IOWR(HVPROBE_IOC_MAGIC, 0x0d, struct hvprobe_race)

#endif /* HVPROBE_ABI_H */
