// SPDX-License-Identifier: GPL-2.0
/*
 * hvprobe: lets a test drive the Hyper-V guest interface from user space.
 *
 * Through /dev/hvprobe (ioctls in hvprobe_abi.h), on a chosen CPU: CPUID,
 * MSR reads and writes that report #GP instead of oopsing, SynIC set-up with
 * pages this module owns, raw hypercalls (VMCALL, VMMCALL or the kernel's
 * hypercall page; memory, fast and XMM fast forms) that report #UD instead of
 * oopsing, reads of SIEF and SIM slots, interrupt counts per CPU and vector,
 * and IPIs with any vector, to check those counts without a hypervisor.
 *
 * Interrupts are counted by kprobes on __common_interrupt and
 * __spurious_interrupt, whose second argument (RSI at entry) is the vector.
 * A vector no Linux driver owns still reaches __common_interrupt, which
 * acknowledges it and prints a rate-limited "No irq handler for vector".
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/gfp.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/workqueue.h>
#include <asm/apic.h>
#include <asm/asm.h>
#include <asm/fpu/api.h>
#include <asm/io.h>
#include <asm/msr.h>
#include <asm/mshyperv.h>
#include <asm/nospec-branch.h>
#include <asm/processor.h>
#if __has_include(<asm/cpuid/api.h>)
#include <asm/cpuid/api.h>	/* cpuid_count() from 6.15 on */
#endif

#include "hvprobe_abi.h"

/* The 64-bit MSR accessors took a q for quadword in 6.16 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
#define hvprobe_rdmsr_safe(msr, p)	rdmsrq_safe(msr, p)
#define hvprobe_wrmsr_safe(msr, val)	wrmsrq_safe(msr, val)
#else
#define hvprobe_rdmsr_safe(msr, p)	rdmsrl_safe(msr, p)
#define hvprobe_wrmsr_safe(msr, val)	wrmsrl_safe(msr, val)
#endif

/*
 * fn(arg) on @cpu, or -ENODEV if it is offline: what work_on_cpu_safe() did
 * before the kernels that dropped it.
 */
static long hvprobe_work_on_cpu(int cpu, long (*fn)(void *), void *arg);

/*
 * The kernel's hypercall page.  From 6.17 on the kernel reaches it through
 * a static call and no longer exports its pointer: the module then makes
 * page-mode calls through that static call, which puts the control word and
 * the two parameters in RCX, RDX and R8 as the page wants, once the
 * hypercall MSR says the kernel enabled the page.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
#define HVPROBE_MSR_HYPERCALL	0x40000001
#define HVPROBE_PAGE_STATIC_CALL	((void *)1)

static void *hvprobe_hypercall_page(void)
{
	u64 msr;

	if (hvprobe_rdmsr_safe(HVPROBE_MSR_HYPERCALL, &msr) || !(msr & 1))
		return NULL;
	return HVPROBE_PAGE_STATIC_CALL;
}
#else
static void *hvprobe_hypercall_page(void)
{
	return READ_ONCE(hv_hypercall_pg);
}
#endif

/* apic_read() became a static call, which modules cannot reach */
static u32 hvprobe_apic_read(u32 reg)
{
	return x2apic_enabled() ? native_apic_msr_read(reg) : native_apic_mem_read(reg);
}

static long hvprobe_work_on_cpu(int cpu, long (*fn)(void *), void *arg)
{
	long ret = -ENODEV;

	cpus_read_lock();
	if (cpu_online(cpu))
		ret = work_on_cpu(cpu, fn, arg);
	cpus_read_unlock();
	return ret;
}

#define HVPROBE_MSR_SCONTROL	0x40000080
#define HVPROBE_MSR_SIEFP	0x40000082
#define HVPROBE_MSR_SIMP	0x40000083
#define HVPROBE_MSR_SINT0	0x40000090
#define HVPROBE_ENABLE		1ULL

/* What one CPU owns: its hypercall buffer and, after set-up, its SynIC pages. */
struct hvprobe_cpu {
	struct mutex lock;	/* the buffer, and the SynIC pages' lifetime */
	struct page *buffer;	/* HVPROBE_BUF_PAGES contiguous pages */
	void *sief;
	void *sim;
	u64 sief_gpa, sim_gpa;
	bool sief_sim_mapped;	/* memremap()ed pages the kernel does not own */
};

static struct hvprobe_cpu *hvprobe_cpus;
static DEFINE_PER_CPU(u64 [HVPROBE_VECTORS], hvprobe_irq_counts);
static DEFINE_PER_CPU(u64 [HVPROBE_VECTORS], hvprobe_in_service_counts);
static u32 hvprobe_probes_registered;

/* Interrupt counting. */

/*
 * Whether the APIC has @vector in service: the handler runs before Linux's
 * EOI, so this tells an interrupt acknowledged with auto-EOI from another.
 */
static bool hvprobe_vector_in_service(u8 vector)
{
	return hvprobe_apic_read(APIC_ISR + (vector / 32) * 0x10) & BIT(vector % 32);
}

static int hvprobe_count_vector(struct kprobe *p, struct pt_regs *regs)
{
	u8 vector = regs->si;

	this_cpu_inc(hvprobe_irq_counts[vector]);
	if (hvprobe_vector_in_service(vector))
		this_cpu_inc(hvprobe_in_service_counts[vector]);
	return 0;
}

static struct kprobe hvprobe_kprobes[] = {
	{ .symbol_name = "__common_interrupt", .pre_handler = hvprobe_count_vector },
	{ .symbol_name = "__spurious_interrupt", .pre_handler = hvprobe_count_vector },
};

static void hvprobe_register_probes(void)
{
	int i, err;

	for (i = 0; i < ARRAY_SIZE(hvprobe_kprobes); i++) {
		err = register_kprobe(&hvprobe_kprobes[i]);
		if (err)
			pr_warn("cannot probe %s (%d): its vectors are not counted\n",
				hvprobe_kprobes[i].symbol_name, err);
		else
			hvprobe_probes_registered |= 1U << i;
	}
}

static void hvprobe_unregister_probes(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(hvprobe_kprobes); i++)
		if (hvprobe_probes_registered & (1U << i))
			unregister_kprobe(&hvprobe_kprobes[i]);
	hvprobe_probes_registered = 0;
}

/* Running an operation on a chosen CPU. */

static int hvprobe_check_cpu(u32 cpu)
{
	if (cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -EINVAL;
	return 0;
}

static int hvprobe_on_cpu(u32 cpu, smp_call_func_t fn, void *arg)
{
	int err = hvprobe_check_cpu(cpu);

	return err ? err : smp_call_function_single(cpu, fn, arg, 1);
}

/* MSR writes, in order, on the current CPU; a #GP sets that write's fault bit. */
struct hvprobe_msr_write {
	u32 msr;
	u64 value;
	u32 fault_bit;
};

struct hvprobe_msr_batch {
	struct hvprobe_msr_write writes[3 + HVPROBE_SINTS];
	unsigned int count;
	u32 faults;
};

static void hvprobe_batch_add(struct hvprobe_msr_batch *batch, u32 msr, u64 value,
			      u32 fault_bit)
{
	struct hvprobe_msr_write *w = &batch->writes[batch->count++];

	w->msr = msr;
	w->value = value;
	w->fault_bit = fault_bit;
}

static void hvprobe_batch_run(void *arg)
{
	struct hvprobe_msr_batch *batch = arg;
	unsigned int i;

	for (i = 0; i < batch->count; i++)
		if (hvprobe_wrmsr_safe(batch->writes[i].msr, batch->writes[i].value))
			batch->faults |= batch->writes[i].fault_bit;
}

/* CPUID and single MSR accesses. */

static void hvprobe_cpuid_fn(void *arg)
{
	struct hvprobe_cpuid *c = arg;

	cpuid_count(c->leaf, c->subleaf, &c->eax, &c->ebx, &c->ecx, &c->edx);
}

static int hvprobe_cpuid(struct hvprobe_cpuid *c)
{
	return hvprobe_on_cpu(c->cpu, hvprobe_cpuid_fn, c);
}

static void hvprobe_rdmsr_fn(void *arg)
{
	struct hvprobe_msr *m = arg;
	u64 value;

	m->gp = hvprobe_rdmsr_safe(m->msr, &value) ? 1 : 0;
	m->value = m->gp ? 0 : value;
}

static void hvprobe_wrmsr_fn(void *arg)
{
	struct hvprobe_msr *m = arg;

	m->gp = hvprobe_wrmsr_safe(m->msr, m->value) ? 1 : 0;
}

static int hvprobe_msr(struct hvprobe_msr *m, bool write)
{
	return hvprobe_on_cpu(m->cpu, write ? hvprobe_wrmsr_fn : hvprobe_rdmsr_fn, m);
}

/* SynIC. */

static void hvprobe_synic_free(struct hvprobe_cpu *pc)
{
	if (pc->sief_sim_mapped) {
		memunmap(pc->sief);
		memunmap(pc->sim);
	} else {
		free_page((unsigned long)pc->sief);
		free_page((unsigned long)pc->sim);
	}
	pc->sief = NULL;
	pc->sim = NULL;
	pc->sief_gpa = 0;
	pc->sim_gpa = 0;
	pc->sief_sim_mapped = false;
}

/* A page the caller names must be whole and outside the kernel's RAM. */
static void *hvprobe_map_page(u64 gpa)
{
	if (!gpa || !PAGE_ALIGNED(gpa) ||
	    region_intersects(gpa, PAGE_SIZE, IORESOURCE_SYSTEM_RAM,
			      IORES_DESC_NONE) != REGION_DISJOINT)
		return NULL;
	return memremap(gpa, PAGE_SIZE, MEMREMAP_WB);
}

static int hvprobe_synic_map(struct hvprobe_cpu *pc, u64 sief_gpa, u64 sim_gpa)
{
	if (sief_gpa == sim_gpa)
		return -EADDRNOTAVAIL;
	pc->sief = hvprobe_map_page(sief_gpa);
	pc->sim = hvprobe_map_page(sim_gpa);
	if (!pc->sief || !pc->sim) {
		if (pc->sief)
			memunmap(pc->sief);
		if (pc->sim)
			memunmap(pc->sim);
		pc->sief = NULL;
		pc->sim = NULL;
		return -EADDRNOTAVAIL;
	}
	pc->sief_gpa = sief_gpa;
	pc->sim_gpa = sim_gpa;
	pc->sief_sim_mapped = true;
	return 0;
}

static int hvprobe_synic_alloc(struct hvprobe_cpu *pc, const struct hvprobe_synic *s)
{
	bool at_gpa = s->flags & HVPROBE_SYNIC_AT_GPA;

	/*
	 * Moving the pages needs a teardown first: the MSRs may still point at
	 * the old ones, which must not be freed while the hypervisor can write.
	 */
	if (pc->sief && (pc->sief_sim_mapped != at_gpa ||
			 (at_gpa && (pc->sief_gpa != s->sief_gpa ||
				     pc->sim_gpa != s->sim_gpa))))
		return -EBUSY;
	if (!pc->sief && at_gpa) {
		int err = hvprobe_synic_map(pc, s->sief_gpa, s->sim_gpa);

		if (err)
			return err;
	}
	if (!pc->sief) {
		pc->sief = (void *)get_zeroed_page(GFP_KERNEL);
		pc->sim = (void *)get_zeroed_page(GFP_KERNEL);
		if (!pc->sief || !pc->sim) {
			free_page((unsigned long)pc->sief);
			free_page((unsigned long)pc->sim);
			pc->sief = NULL;
			pc->sim = NULL;
			return -ENOMEM;
		}
		pc->sief_gpa = virt_to_phys(pc->sief);
		pc->sim_gpa = virt_to_phys(pc->sim);
	}
	memset(pc->sief, 0, PAGE_SIZE);
	memset(pc->sim, 0, PAGE_SIZE);
	return 0;
}

static int hvprobe_synic_setup(struct hvprobe_synic *s)
{
	struct hvprobe_msr_batch batch = {};
	struct hvprobe_cpu *pc;
	int err;

	if (s->flags & ~HVPROBE_SYNIC_FLAGS)
		return -EINVAL;
	err = hvprobe_check_cpu(s->cpu);
	if (err)
		return err;
	pc = &hvprobe_cpus[s->cpu];
	mutex_lock(&pc->lock);
	err = hvprobe_synic_alloc(pc, s);
	if (err)
		goto out;
	s->sief_gpa = pc->sief_gpa;
	s->sim_gpa = pc->sim_gpa;
	s->siefp = s->sief_gpa | (s->flags & HVPROBE_SYNIC_NO_SIEF ? 0 : HVPROBE_ENABLE);
	s->simp = s->sim_gpa | (s->flags & HVPROBE_SYNIC_NO_SIM ? 0 : HVPROBE_ENABLE);
	s->scontrol = s->flags & HVPROBE_SYNIC_NO_SCONTROL ? 0 : HVPROBE_ENABLE;
	hvprobe_batch_add(&batch, HVPROBE_MSR_SIEFP, s->siefp, HVPROBE_FAULT_SIEFP);
	hvprobe_batch_add(&batch, HVPROBE_MSR_SIMP, s->simp, HVPROBE_FAULT_SIMP);
	hvprobe_batch_add(&batch, HVPROBE_MSR_SCONTROL, s->scontrol, HVPROBE_FAULT_SCONTROL);
	err = smp_call_function_single(s->cpu, hvprobe_batch_run, &batch, 1);
	s->faults = batch.faults;
out:
	mutex_unlock(&pc->lock);
	return err;
}

/* Masks every SINT and disables SCONTROL, SIEFP and SIMP on @cpu. */
static int hvprobe_synic_disable(u32 cpu, u32 *faults)
{
	struct hvprobe_msr_batch batch = {};
	unsigned int sint;
	int err;

	for (sint = 0; sint < HVPROBE_SINTS; sint++)
		hvprobe_batch_add(&batch, HVPROBE_MSR_SINT0 + sint, HVPROBE_SINT_MASKED,
				  HVPROBE_FAULT_SINT(sint));
	hvprobe_batch_add(&batch, HVPROBE_MSR_SCONTROL, 0, HVPROBE_FAULT_SCONTROL);
	hvprobe_batch_add(&batch, HVPROBE_MSR_SIEFP, 0, HVPROBE_FAULT_SIEFP);
	hvprobe_batch_add(&batch, HVPROBE_MSR_SIMP, 0, HVPROBE_FAULT_SIMP);
	err = smp_call_function_single(cpu, hvprobe_batch_run, &batch, 1);
	*faults = batch.faults;
	return err;
}

static int hvprobe_synic_teardown(struct hvprobe_synic *s)
{
	struct hvprobe_cpu *pc;
	int err;

	if (s->flags)
		return -EINVAL;
	err = hvprobe_check_cpu(s->cpu);
	if (err)
		return err;
	pc = &hvprobe_cpus[s->cpu];
	mutex_lock(&pc->lock);
	err = hvprobe_synic_disable(s->cpu, &s->faults);
	if (!err)
		hvprobe_synic_free(pc);
	mutex_unlock(&pc->lock);
	s->sief_gpa = 0;
	s->sim_gpa = 0;
	s->scontrol = 0;
	s->siefp = 0;
	s->simp = 0;
	return err;
}

static void hvprobe_sint_fn(void *arg)
{
	struct hvprobe_sint *s = arg;

	s->gp = hvprobe_wrmsr_safe(HVPROBE_MSR_SINT0 + s->sint, s->value) ? 1 : 0;
}

static int hvprobe_sint(struct hvprobe_sint *s)
{
	if (s->sint >= HVPROBE_SINTS)
		return -EINVAL;
	return hvprobe_on_cpu(s->cpu, hvprobe_sint_fn, s);
}

static int hvprobe_slot(struct hvprobe_slot *s)
{
	struct hvprobe_cpu *pc;
	u64 *slot, word;
	unsigned int i;
	void *page;
	int err = 0;

	if (s->cpu >= nr_cpu_ids || s->sint >= HVPROBE_SINTS || s->clear > 1 ||
	    (s->page != HVPROBE_SLOT_SIEF && s->page != HVPROBE_SLOT_SIM))
		return -EINVAL;
	pc = &hvprobe_cpus[s->cpu];
	mutex_lock(&pc->lock);
	page = s->page == HVPROBE_SLOT_SIEF ? pc->sief : pc->sim;
	if (!page) {
		err = -ENXIO;
		goto out;
	}
	slot = page + s->sint * HVPROBE_SLOT_BYTES;
	/* Word by word, atomically, so that no flag set meanwhile is lost. */
	for (i = 0; i < HVPROBE_SLOT_BYTES / sizeof(u64); i++) {
		word = s->clear ? xchg(&slot[i], 0) : READ_ONCE(slot[i]);
		memcpy(&s->data[i * sizeof(u64)], &word, sizeof(u64));
	}
out:
	mutex_unlock(&pc->lock);
	return err;
}

static int hvprobe_pages(struct hvprobe_pages *p)
{
	struct hvprobe_cpu *pc;

	if (p->cpu >= nr_cpu_ids)
		return -EINVAL;
	pc = &hvprobe_cpus[p->cpu];
	mutex_lock(&pc->lock);
	p->synic = pc->sief ? 1 : 0;
	p->sief_gpa = pc->sief_gpa;
	p->sim_gpa = pc->sim_gpa;
	mutex_unlock(&pc->lock);
	p->buffer_gpa = page_to_phys(pc->buffer);
	p->buffer_bytes = HVPROBE_BUF_BYTES;
	return 0;
}

/* Interrupts. */

static long hvprobe_fence_fn(void *arg)
{
	return 0;
}

static int hvprobe_irqs(struct hvprobe_irqs *q)
{
	unsigned int v;

	if (q->cpu >= nr_cpu_ids || !cpu_possible(q->cpu) || q->flags & ~HVPROBE_IRQS_NO_FENCE)
		return -EINVAL;
	/*
	 * A fence first: the CPU runs a work item, which it can only do with
	 * interrupts on, so an interrupt already pending in its APIC (one a
	 * hypercall just asserted, say) has been taken and is counted below.
	 * This CPU, with interrupts on here, has taken its own already.
	 */
	migrate_disable();
	if (!(q->flags & HVPROBE_IRQS_NO_FENCE) && q->cpu != smp_processor_id() &&
	    cpu_online(q->cpu))
		hvprobe_work_on_cpu(q->cpu, hvprobe_fence_fn, NULL);
	migrate_enable();
	for (v = 0; v < HVPROBE_VECTORS; v++) {
		q->counts[v] = READ_ONCE(per_cpu(hvprobe_irq_counts, q->cpu)[v]);
		q->in_service[v] =
			READ_ONCE(per_cpu(hvprobe_in_service_counts, q->cpu)[v]);
	}
	return 0;
}

static void hvprobe_ipi_fn(void *arg)
{
	struct hvprobe_ipi *ipi = arg;

	apic->send_IPI(ipi->to_cpu, ipi->vector);
}

static int hvprobe_ipi(struct hvprobe_ipi *ipi)
{
	int err = hvprobe_check_cpu(ipi->to_cpu);

	if (err)
		return err;
	if (ipi->vector < HVPROBE_IPI_MIN_VECTOR || ipi->vector >= HVPROBE_VECTORS)
		return -EINVAL;
	return hvprobe_on_cpu(ipi->from_cpu, hvprobe_ipi_fn, ipi);
}

/* Port I/O. */

static void hvprobe_port_fn(void *arg)
{
	struct hvprobe_port *p = arg;

	if (p->write)
		outl(p->value, p->port);
	else
		p->value = inl(p->port);
}

static int hvprobe_port(struct hvprobe_port *p)
{
	if (p->port > 0xfffc)
		return -EINVAL;
	return hvprobe_on_cpu(p->cpu, hvprobe_port_fn, p);
}

/* Hypercalls. */

/*
 * The instruction either completes (done = 1) or faults; the exception table
 * entry then resumes at 2: with the vector in RAX (EX_TYPE_FAULT).
 */
#define HVPROBE_TRAPPING(insn)		\
	"1: " insn "\n\t"		\
	"movl $1, %[done]\n"		\
	"2:\n\t"			\
	_ASM_EXTABLE_FAULT(1b, 2b)

struct hvprobe_regs {
	u64 rax;
	u64 rcx;
	u64 rdx;
	u64 r8;
};

/* Returns -1 when the instruction completed, else the exception vector. */
static int hvprobe_vmcall(struct hvprobe_regs *r)
{
	register u64 r8 asm("r8") = r->r8;
	u64 rax = 0, rcx = r->rcx, rdx = r->rdx;
	u32 done = 0;

	asm volatile(HVPROBE_TRAPPING("vmcall")
		     : "+a" (rax), "+c" (rcx), "+d" (rdx), "+r" (r8), [done] "+r" (done)
		     :
		     : "cc", "memory");
	r->rax = rax;
	return done ? -1 : (int)rax;
}

static int hvprobe_vmmcall(struct hvprobe_regs *r)
{
	register u64 r8 asm("r8") = r->r8;
	u64 rax = 0, rcx = r->rcx, rdx = r->rdx;
	u32 done = 0;

	asm volatile(HVPROBE_TRAPPING("vmmcall")
		     : "+a" (rax), "+c" (rcx), "+d" (rdx), "+r" (r8), [done] "+r" (done)
		     :
		     : "cc", "memory");
	r->rax = rax;
	return done ? -1 : (int)rax;
}

/* The hypercall page is a function: it may clobber what the C ABI allows. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
static int hvprobe_page_call(struct hvprobe_regs *r, void *page)
{
	r->rax = static_call_mod(hv_hypercall)(r->rcx, r->rdx, r->r8);
	return -1;
}
#else
static int hvprobe_page_call(struct hvprobe_regs *r, void *page)
{
	register u64 r8 asm("r8") = r->r8;
	u64 rax, rcx = r->rcx, rdx = r->rdx;

	asm volatile(CALL_NOSPEC
		     : "=a" (rax), ASM_CALL_CONSTRAINT, "+c" (rcx), "+d" (rdx), "+r" (r8)
		     : THUNK_TARGET(page)
		     : "cc", "memory", "r9", "r10", "r11");
	r->rax = rax;
	return -1;
}
#endif

static void hvprobe_load_xmm(u8 (*xmm)[HVPROBE_XMM_BYTES])
{
	asm volatile("movdqu 0x00(%0), %%xmm0\n\t"
		     "movdqu 0x10(%0), %%xmm1\n\t"
		     "movdqu 0x20(%0), %%xmm2\n\t"
		     "movdqu 0x30(%0), %%xmm3\n\t"
		     "movdqu 0x40(%0), %%xmm4\n\t"
		     "movdqu 0x50(%0), %%xmm5\n\t"
		     : : "r" (xmm) : "memory");
}

static void hvprobe_store_xmm(u8 (*xmm)[HVPROBE_XMM_BYTES])
{
	asm volatile("movdqu %%xmm0, 0x00(%0)\n\t"
		     "movdqu %%xmm1, 0x10(%0)\n\t"
		     "movdqu %%xmm2, 0x20(%0)\n\t"
		     "movdqu %%xmm3, 0x30(%0)\n\t"
		     "movdqu %%xmm4, 0x40(%0)\n\t"
		     "movdqu %%xmm5, 0x50(%0)\n\t"
		     : : "r" (xmm) : "memory");
}

struct hvprobe_hcall_job {
	struct hvprobe_hypercall *hc;
	struct hvprobe_regs regs;
	void *page;
	int trap;
};

static int hvprobe_issue_insn(u32 insn, struct hvprobe_regs *regs, void *page)
{
	switch (insn) {
	case HVPROBE_INSN_VMCALL:
		return hvprobe_vmcall(regs);
	case HVPROBE_INSN_VMMCALL:
		return hvprobe_vmmcall(regs);
	default:
		return hvprobe_page_call(regs, page);
	}
}

static int hvprobe_issue(struct hvprobe_hcall_job *job)
{
	return hvprobe_issue_insn(job->hc->insn, &job->regs, job->page);
}

/*
 * The instruction, hc->repeat times back to back for benchmarks (stopping
 * at a fault), timed without the work item and buffer set-up around it.
 */
static void hvprobe_issue_timed(struct hvprobe_hcall_job *job)
{
	u32 i, n = max(job->hc->repeat, 1U);
	u64 start = ktime_get_ns();

	for (i = 0; i < n; i++) {
		job->trap = hvprobe_issue(job);
		if (job->trap >= 0)
			break;
	}
	job->hc->elapsed_ns = ktime_get_ns() - start;
}

/* Runs in a kworker bound to the target CPU (process context, for the FPU). */
static long hvprobe_hypercall_fn(void *arg)
{
	struct hvprobe_hcall_job *job = arg;
	struct hvprobe_hypercall *hc = job->hc;

	if (!(hc->flags & HVPROBE_HC_FAST)) {
		hvprobe_issue_timed(job);
		return 0;
	}
	kernel_fpu_begin();
	hvprobe_load_xmm(hc->xmm_in);
	hvprobe_issue_timed(job);
	hvprobe_store_xmm(hc->xmm_out);
	kernel_fpu_end();
	return 0;
}

static int hvprobe_hypercall_check(const struct hvprobe_hypercall *hc)
{
	if (hc->flags & ~HVPROBE_HC_FLAGS || hc->insn > HVPROBE_INSN_PAGE ||
	    hc->in_len > HVPROBE_IO_MAX || hc->out_len > HVPROBE_IO_MAX ||
	    hc->in_offset > HVPROBE_BUF_BYTES - hc->in_len ||
	    hc->out_offset > HVPROBE_BUF_BYTES - hc->out_len || hc->out_fill > 0xff ||
	    hc->repeat > HVPROBE_REPEAT_MAX)
		return -EINVAL;
	if ((hc->flags & HVPROBE_HC_FAST) &&
	    (hc->flags & (HVPROBE_HC_IN_GPA | HVPROBE_HC_OUT_GPA)))
		return -EINVAL;
	return hvprobe_check_cpu(hc->cpu);
}

/*
 * The output area: out_len bytes at out_offset, or at out_gpa when that lies
 * in the buffer (clipped to its end); none when out_gpa lies elsewhere.
 */
static u32 hvprobe_output_area(const struct hvprobe_hypercall *hc, u64 gpa, u64 *offset)
{
	*offset = hc->out_offset;
	if (!(hc->flags & HVPROBE_HC_OUT_GPA))
		return hc->out_len;
	if (hc->out_gpa < gpa || hc->out_gpa - gpa >= HVPROBE_BUF_BYTES)
		return 0;
	*offset = hc->out_gpa - gpa;
	return min_t(u64, hc->out_len, HVPROBE_BUF_BYTES - *offset);
}

/* Fills the buffer: zeros, the output area with out_fill, then the input. */
static void hvprobe_hypercall_prepare(struct hvprobe_hypercall *hc, u8 *buf, u64 gpa,
				      struct hvprobe_regs *regs)
{
	u64 out_offset;
	u32 out_len = hvprobe_output_area(hc, gpa, &out_offset);

	memset(buf, 0, HVPROBE_BUF_BYTES);
	memset(buf + out_offset, hc->out_fill, out_len);
	memcpy(buf + hc->in_offset, hc->input, hc->in_len);
	regs->rcx = hc->control;
	if (hc->flags & HVPROBE_HC_FAST) {
		regs->rdx = hc->rdx;
		regs->r8 = hc->r8;
		return;
	}
	regs->rdx = hc->flags & HVPROBE_HC_IN_GPA ? hc->in_gpa : gpa + hc->in_offset;
	regs->r8 = hc->flags & HVPROBE_HC_OUT_GPA ? hc->out_gpa : gpa + hc->out_offset;
}

static void hvprobe_hypercall_output(struct hvprobe_hypercall *hc, const u8 *buf, u64 gpa)
{
	u64 offset;

	hc->output_len = hvprobe_output_area(hc, gpa, &offset);
	hc->output_gpa = hc->output_len ? gpa + offset : 0;
	memcpy(hc->output, buf + offset, hc->output_len);
}

static int hvprobe_hypercall(struct hvprobe_hypercall *hc)
{
	struct hvprobe_hcall_job job = { .hc = hc };
	struct hvprobe_cpu *pc;
	long err;
	u64 gpa;
	u8 *buf;

	err = hvprobe_hypercall_check(hc);
	if (err)
		return err;
	if (hc->insn == HVPROBE_INSN_PAGE) {
		job.page = hvprobe_hypercall_page();
		if (!job.page)
			return -ENODEV;
	}
	memset(hc->xmm_out, 0, sizeof(hc->xmm_out));
	memset(hc->output, 0, sizeof(hc->output));
	pc = &hvprobe_cpus[hc->cpu];
	buf = page_address(pc->buffer);
	gpa = page_to_phys(pc->buffer);
	mutex_lock(&pc->lock);
	hvprobe_hypercall_prepare(hc, buf, gpa, &job.regs);
	/* A caller already on that CPU (cases pins itself) needs no worker */
	migrate_disable();
	if (hc->cpu == smp_processor_id()) {
		err = hvprobe_hypercall_fn(&job);
		migrate_enable();
	} else {
		migrate_enable();
		err = hvprobe_work_on_cpu(hc->cpu, hvprobe_hypercall_fn, &job);
	}
	if (!err) {
		hc->rax = job.trap < 0 ? job.regs.rax : 0;
		hc->trap = job.trap;
		hc->used_rdx = job.regs.rdx;
		hc->used_r8 = job.regs.r8;
		hvprobe_hypercall_output(hc, buf, gpa);
	}
	mutex_unlock(&pc->lock);
	return err;
}

/* Races: several CPUs making the same call at once. */

#define HVPROBE_RACE_OUT_OFFSET	2048	/* in the same page as the input */
#define HVPROBE_RACE_IRQ_WAIT_NS	(1000 * NSEC_PER_MSEC)

struct hvprobe_race_run {
	struct hvprobe_race *r;
	void *page;
	u8 *slot;			/* the target's SIEF slot */
	atomic_t arrived;
	atomic_t generation;
	unsigned int parties;
	u32 cpu[HVPROBE_RACE_CPUS];
	u32 newly[HVPROBE_RACE_CPUS];	/* this round's answers */
	u32 status[HVPROBE_RACE_CPUS];	/* and first failing statuses (0x10000 + vector: a fault) */
	u32 errors[HVPROBE_RACE_CPUS];	/* and how many of the calls failed */
	u64 irq_base;
	u32 rounds_signalled;		/* rounds in which a call newly set the flag */
	unsigned int callers;		/* parties that call; a toggler comes after them */
	unsigned int calls_per_round;	/* each caller's, back to back */
	atomic_t callers_done;		/* this round's callers whose call returned */
	struct completion done[HVPROBE_RACE_CPUS];
};

/* All parties arrive before any leaves; spins, with interrupts enabled. */
static void hvprobe_race_barrier(struct hvprobe_race_run *run)
{
	int generation = atomic_read(&run->generation);

	if (atomic_inc_return(&run->arrived) == run->parties) {
		atomic_set(&run->arrived, 0);
		atomic_inc(&run->generation);
		return;
	}
	while (atomic_read(&run->generation) == generation)
		cpu_relax();
}

static u64 hvprobe_race_irqs(struct hvprobe_race_run *run)
{
	return READ_ONCE(per_cpu(hvprobe_irq_counts, run->r->target_cpu)[run->r->vector]);
}

/*
 * The first party, between rounds: the round's answers, then the flag, which
 * is cleared for the next round; when it was set, the interrupt due for it.
 */
static void hvprobe_race_settle(struct hvprobe_race_run *run)
{
	struct hvprobe_race *r = run->r;
	u32 i, newly = 0;
	u64 deadline;

	atomic_set(&run->callers_done, 0);
	for (i = 0; i < run->callers; i++) {
		newly += run->newly[i];
		if (run->errors[i] && !r->errors)
			r->first_error = run->status[i];
		r->errors += run->errors[i];
	}
	r->newly += newly;
	if ((r->flags & HVPROBE_RACE_NEWLY_OUTPUT) && newly != 1)
		r->bad_rounds++;
	if (!test_and_clear_bit(r->flag, (unsigned long *)run->slot)) {
		r->flag_missing++;
		return;
	}
	run->rounds_signalled++;
	deadline = ktime_get_ns() + HVPROBE_RACE_IRQ_WAIT_NS;
	while (hvprobe_race_irqs(run) - run->irq_base < run->rounds_signalled) {
		if (ktime_get_ns() > deadline) {
			r->irq_timeouts++;
			break;
		}
		usleep_range(5, 20);
	}
}

struct hvprobe_race_party {
	struct hvprobe_race_run *run;
	unsigned int index;
};

/*
 * The toggler, on the target CPU while the callers' calls run: sets and clears
 * the flag's neighbour in the same word, with atomic operations, and counts
 * the times the bit was not as it left it: a host that sets the flag by
 * reading and writing the word back undoes such a change.
 */
static void hvprobe_race_toggle(struct hvprobe_race_run *run)
{
	struct hvprobe_race *r = run->r;
	unsigned long *word = (unsigned long *)run->slot;
	unsigned int neighbour = r->flag ^ 1;

	do {
		if (test_and_set_bit(neighbour, word))
			r->neighbour_lost++;
		if (!test_and_clear_bit(neighbour, word))
			r->neighbour_lost++;
		r->neighbour_toggles++;
	} while (atomic_read(&run->callers_done) < run->callers);
}

static int hvprobe_race_fn(void *arg)
{
	struct hvprobe_race_party *party = arg;
	struct hvprobe_race_run *run = party->run;
	struct hvprobe_race *r = run->r;
	unsigned int i = party->index, round, call;
	struct hvprobe_cpu *pc = &hvprobe_cpus[run->cpu[i]];
	u8 *buf = page_address(pc->buffer);
	u64 gpa = page_to_phys(pc->buffer);
	struct hvprobe_regs regs;
	u32 status;
	int trap;

	if (i == run->callers) {
		for (round = 0; round < r->rounds; round++) {
			hvprobe_race_barrier(run);
			hvprobe_race_toggle(run);
			hvprobe_race_barrier(run);
			hvprobe_race_barrier(run);
		}
		complete(&run->done[i]);
		return 0;
	}
	memset(buf, 0, HVPROBE_PAGE_BYTES);
	memcpy(buf, r->input, r->in_len);
	for (round = 0; round < r->rounds; round++) {
		hvprobe_race_barrier(run);
		run->status[i] = 0;
		run->errors[i] = 0;
		run->newly[i] = 0;
		/* A round's calls back to back: still one flag, so one NewlySignaled */
		for (call = 0; call < run->calls_per_round; call++) {
			buf[HVPROBE_RACE_OUT_OFFSET] = 0;
			regs = (struct hvprobe_regs) {
				.rcx = r->control,
				.rdx = gpa,
				.r8 = gpa + HVPROBE_RACE_OUT_OFFSET,
			};
			trap = hvprobe_issue_insn(r->insn, &regs, run->page);
			status = trap >= 0 ? 0x10000 + trap : regs.rax & 0xffff;
			if (status && !run->errors[i]++)
				run->status[i] = status;
			run->newly[i] += !status && buf[HVPROBE_RACE_OUT_OFFSET] == 1;
		}
		atomic_inc(&run->callers_done);
		hvprobe_race_barrier(run);
		if (i == 0)
			hvprobe_race_settle(run);
		hvprobe_race_barrier(run);
	}
	complete(&run->done[i]);
	return 0;
}

static int hvprobe_race_check(const struct hvprobe_race *r, struct hvprobe_race_run *run)
{
	u32 cpu;

	if (!r->rounds || r->rounds > HVPROBE_RACE_ROUNDS_MAX || r->in_len > HVPROBE_IO_MAX ||
	    r->in_len > HVPROBE_RACE_OUT_OFFSET || r->sint >= HVPROBE_SINTS ||
	    r->flag >= HVPROBE_SLOT_BYTES * 8 || r->vector >= HVPROBE_VECTORS ||
	    r->insn > HVPROBE_INSN_PAGE ||
	    r->flags & ~(HVPROBE_RACE_NEWLY_OUTPUT | HVPROBE_RACE_NEIGHBOUR) || !r->cpus ||
	    r->calls_per_round > HVPROBE_RACE_CALLS_MAX ||
	    r->target_cpu >= 32 || hvprobe_check_cpu(r->target_cpu))
		return -EINVAL;
	for (cpu = 0; cpu < 32; cpu++) {
		if (!(r->cpus & BIT(cpu)))
			continue;
		if (run->parties == HVPROBE_RACE_CPUS || hvprobe_check_cpu(cpu))
			return -EINVAL;
		run->cpu[run->parties++] = cpu;
	}
	run->callers = run->parties;
	run->calls_per_round = max(r->calls_per_round, 1U);
	if (r->flags & HVPROBE_RACE_NEIGHBOUR) {
		/* The toggler runs on the target, which then makes no call */
		if (r->cpus & BIT(r->target_cpu) || run->parties == HVPROBE_RACE_CPUS)
			return -EINVAL;
		run->cpu[run->parties++] = r->target_cpu;
	}
	return 0;
}

static int hvprobe_race(struct hvprobe_race *r)
{
	struct hvprobe_race_party party[HVPROBE_RACE_CPUS];
	struct task_struct *tasks[HVPROBE_RACE_CPUS];
	struct hvprobe_race_run *run;
	unsigned int i;
	u32 locks;
	int err;

	run = kzalloc(sizeof(*run), GFP_KERNEL);
	if (!run)
		return -ENOMEM;
	run->r = r;
	err = hvprobe_race_check(r, run);
	if (err)
		goto out_free;
	run->page = hvprobe_hypercall_page();
	if (r->insn == HVPROBE_INSN_PAGE && !run->page) {
		err = -ENODEV;
		goto out_free;
	}
	r->calls = r->newly = r->bad_rounds = r->errors = r->first_error = 0;
	r->flag_missing = r->irqs = r->irq_timeouts = 0;
	r->neighbour_toggles = r->neighbour_lost = 0;
	locks = r->cpus | BIT(r->target_cpu);
	/* The buffers of the calling CPUs and the target's SIEF page, in CPU order */
	for (i = 0; i < 32; i++)
		if (locks & BIT(i))
			mutex_lock(&hvprobe_cpus[i].lock);
	if (!hvprobe_cpus[r->target_cpu].sief) {
		err = -ENXIO;
		goto out_unlock;
	}
	run->slot = hvprobe_cpus[r->target_cpu].sief + r->sint * HVPROBE_SLOT_BYTES;
	clear_bit(r->flag, (unsigned long *)run->slot);
	clear_bit(r->flag ^ 1, (unsigned long *)run->slot);
	run->irq_base = hvprobe_race_irqs(run);
	for (i = 0; i < run->parties; i++) {
		init_completion(&run->done[i]);
		party[i] = (struct hvprobe_race_party) { .run = run, .index = i };
	}
	/* All threads exist before any runs: one missing would hang the barrier */
	for (i = 0; i < run->parties; i++) {
		tasks[i] = kthread_create_on_cpu(hvprobe_race_fn, &party[i], run->cpu[i],
						 "hvprobe-race/%u");
		if (IS_ERR(tasks[i])) {
			err = PTR_ERR(tasks[i]);
			/* Never woken, so stopping them runs none of their rounds */
			while (i--)
				kthread_stop(tasks[i]);
			goto out_unlock;
		}
	}
	for (i = 0; i < run->parties; i++)
		wake_up_process(tasks[i]);
	for (i = 0; i < run->parties; i++)
		wait_for_completion(&run->done[i]);
	r->calls = r->rounds * run->callers * run->calls_per_round;
	r->irqs = hvprobe_race_irqs(run) - run->irq_base;
out_unlock:
	for (i = 0; i < 32; i++)
		if (locks & BIT(i))
			mutex_unlock(&hvprobe_cpus[i].lock);
out_free:
	kfree(run);
	return err;
}

static void hvprobe_info(struct hvprobe_info *info)
{
	unsigned int cpu;

	memset(info, 0, sizeof(*info));
	info->abi_version = HVPROBE_ABI_VERSION;
	info->nr_cpu_ids = nr_cpu_ids;
	info->hypercall_page = hvprobe_hypercall_page() ? 1 : 0;
	info->x2apic = x2apic_mode ? 1 : 0;
	info->irq_probes = hvprobe_probes_registered;
	for_each_online_cpu(cpu)
		if (cpu < HVPROBE_ONLINE_WORDS * 64)
			info->online[cpu / 64] |= 1ULL << (cpu % 64);
}

/* The device. */

union hvprobe_args {
	struct hvprobe_info info;
	struct hvprobe_cpuid cpuid;
	struct hvprobe_msr msr;
	struct hvprobe_synic synic;
	struct hvprobe_sint sint;
	struct hvprobe_slot slot;
	struct hvprobe_pages pages;
	struct hvprobe_irqs irqs;
	struct hvprobe_ipi ipi;
	struct hvprobe_hypercall hypercall;
	struct hvprobe_port port;
	struct hvprobe_race race;
};

static int hvprobe_dispatch(unsigned int cmd, union hvprobe_args *a)
{
	switch (cmd) {
	case HVPROBE_IOC_INFO:
		hvprobe_info(&a->info);
		return 0;
	case HVPROBE_IOC_CPUID:
		return hvprobe_cpuid(&a->cpuid);
	case HVPROBE_IOC_RDMSR:
		return hvprobe_msr(&a->msr, false);
	case HVPROBE_IOC_WRMSR:
		return hvprobe_msr(&a->msr, true);
	case HVPROBE_IOC_SYNIC_SETUP:
		return hvprobe_synic_setup(&a->synic);
	case HVPROBE_IOC_SYNIC_TEARDOWN:
		return hvprobe_synic_teardown(&a->synic);
	case HVPROBE_IOC_SINT:
		return hvprobe_sint(&a->sint);
	case HVPROBE_IOC_SLOT:
		return hvprobe_slot(&a->slot);
	case HVPROBE_IOC_PAGES:
		return hvprobe_pages(&a->pages);
	case HVPROBE_IOC_IRQS:
		return hvprobe_irqs(&a->irqs);
	case HVPROBE_IOC_IPI:
		return hvprobe_ipi(&a->ipi);
	case HVPROBE_IOC_HYPERCALL:
		return hvprobe_hypercall(&a->hypercall);
	case HVPROBE_IOC_PORT:
		return hvprobe_port(&a->port);
	case HVPROBE_IOC_RACE:
		return hvprobe_race(&a->race);
	default:
		return -ENOTTY;
	}
}

static long hvprobe_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	size_t size = _IOC_SIZE(cmd);
	union hvprobe_args *a;
	long err;

	if (_IOC_TYPE(cmd) != HVPROBE_IOC_MAGIC || size > sizeof(*a))
		return -ENOTTY;
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	err = -EFAULT;
	if ((_IOC_DIR(cmd) & _IOC_WRITE) && copy_from_user(a, uarg, size))
		goto out;
	err = hvprobe_dispatch(cmd, a);
	if (!err && (_IOC_DIR(cmd) & _IOC_READ) && copy_to_user(uarg, a, size))
		err = -EFAULT;
out:
	kfree(a);
	return err;
}

static const struct file_operations hvprobe_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = hvprobe_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice hvprobe_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hvprobe",
	.fops = &hvprobe_fops,
	.mode = 0600,
};

/* Load and unload. */

static void hvprobe_free_cpus(void)
{
	unsigned int cpu;
	u32 faults;

	for (cpu = 0; cpu < nr_cpu_ids; cpu++) {
		struct hvprobe_cpu *pc = &hvprobe_cpus[cpu];

		if (pc->sief) {
			/* A page the hypervisor may still write is leaked, not freed. */
			if (cpu_online(cpu) && !hvprobe_synic_disable(cpu, &faults))
				hvprobe_synic_free(pc);
			else
				pr_warn("cpu %u offline: its SynIC pages are leaked\n", cpu);
		}
		if (pc->buffer)
			__free_pages(pc->buffer, get_order(HVPROBE_BUF_BYTES));
	}
	kfree(hvprobe_cpus);
	hvprobe_cpus = NULL;
}

static int hvprobe_alloc_cpus(void)
{
	unsigned int cpu;

	hvprobe_cpus = kcalloc(nr_cpu_ids, sizeof(*hvprobe_cpus), GFP_KERNEL);
	if (!hvprobe_cpus)
		return -ENOMEM;
	for (cpu = 0; cpu < nr_cpu_ids; cpu++) {
		struct hvprobe_cpu *pc = &hvprobe_cpus[cpu];

		mutex_init(&pc->lock);
		pc->buffer = alloc_pages(GFP_KERNEL | __GFP_ZERO, get_order(HVPROBE_BUF_BYTES));
		if (!pc->buffer)
			return -ENOMEM;
	}
	return 0;
}

static int __init hvprobe_init(void)
{
	int err;

	err = hvprobe_alloc_cpus();
	if (err)
		goto fail;
	hvprobe_register_probes();
	err = misc_register(&hvprobe_device);
	if (err)
		goto fail_probes;
	return 0;

fail_probes:
	hvprobe_unregister_probes();
fail:
	if (hvprobe_cpus)
		hvprobe_free_cpus();
	return err;
}

static void __exit hvprobe_exit(void)
{
	misc_deregister(&hvprobe_device);
	hvprobe_unregister_probes();
	hvprobe_free_cpus();
}

module_init(hvprobe_init);
module_exit(hvprobe_exit);

MODULE_DESCRIPTION("Test probe for the Hyper-V hypercall and SynIC interfaces");
MODULE_LICENSE("GPL");
