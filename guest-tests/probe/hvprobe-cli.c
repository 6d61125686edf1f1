// SPDX-License-Identifier: GPL-2.0
/*
 * hvprobe: the command-line face of /dev/hvprobe. One call, one JSON object
 * on stdout. Exit status: 0 when the call was carried out (even if it
 * reported #GP or #UD), 1 when the module refused it, 2 on bad usage, 3 when
 * the module is not loaded. See guest-tests/README.md for every command.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "hvprobe_abi.h"

#define EXIT_REFUSED	1
#define EXIT_USAGE	2
#define EXIT_NO_MODULE	3

#define SIEF_FLAGS_PER_SLOT (HVPROBE_SLOT_BYTES * 8)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const char *const usage_text =
	"usage: hvprobe COMMAND [OPTIONS]\n"
	"  info\n"
	"  cpuid [--cpu N] LEAF [SUBLEAF]\n"
	"  rdmsr [--cpu N] MSR\n"
	"  wrmsr [--cpu N] MSR VALUE\n"
	"  synic-setup [--cpu N] [--no-scontrol] [--no-sief] [--no-sim]\n"
	"              [--sief-gpa GPA --sim-gpa GPA]  (pages kept from the kernel)\n"
	"  synic-teardown [--cpu N]\n"
	"  sint [--cpu N] --sint S (--vector V [--masked] [--auto-eoi] [--polling] | --raw VALUE)\n"
	"  hypercall [--cpu N] --control C [--fast] [--input HEX] [--in-offset O]\n"
	"            [--out-offset O] [--in-gpa G] [--out-gpa G] [--out-len N]\n"
	"            [--out-fill B] [--xmm HEX]... [--insn vmcall|vmmcall|page|native] [--user]\n"
	"            [--repeat N]\n"
	"  sief [--cpu N] [--sint S] [--clear]\n"
	"  sim [--cpu N] --sint S [--clear]\n"
	"  irqs [--cpu N] [--vector V] [--in-service]\n"
	"  ipi [--from N] [--cpu N] --vector V\n"
	"  pages [--cpu N]\n"
	"  outl [--cpu N] PORT VALUE\n"
	"  inl [--cpu N] PORT\n"
	"  race --cpus N,N... --cpu TARGET --sint S --flag F --vector V --control C\n"
	"       [--input HEX] [--insn vmcall|vmmcall|page|native] [--rounds N] [--calls-per-round N]\n"
	"       [--newly-output] [--neighbour]\n"
	"  cases --watch CPU:SINT:VECTOR,... -- HYPERCALL-OPTIONS [; ...]\n"
	"  serve   (commands as above, one per line of standard input; a line\n"
	"           {\"rc\": STATUS, \"reply\": OBJECT} each on standard output)\n";

/* Output. */

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_hex(const uint8_t *bytes, size_t len)
{
	size_t i;

	putchar('"');
	for (i = 0; i < len; i++)
		printf("%02x", bytes[i]);
	putchar('"');
}

static void json_u64(uint64_t v)
{
	printf("%" PRIu64, v);
}

static void json_bool(bool v)
{
	fputs(v ? "true" : "false", stdout);
}

/* The last error's text: cases reports a case's error in place of its reply */
static char last_failure[512];

static int fail(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_failure, sizeof(last_failure), fmt, ap);
	va_end(ap);
	fputs("{\"error\": ", stdout);
	json_string(last_failure);
	fputs("}\n", stdout);
	return status;
}

static int usage_error(const char *what)
{
	return fail(EXIT_USAGE, "%s", what);
}

/* Whether requests come from standard input (serve), which has no one to read usage */
static bool serving;

/* No command, or one it does not know: the full usage goes to stderr too. */
static int command_error(const char *what)
{
	if (!serving)
		fputs(usage_text, stderr);
	return usage_error(what);
}

/* Parsing. */

/* Decimal, or hexadecimal after 0x; nothing else (no sign, no octal). */
static bool parse_u64(const char *text, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	int base = 10;
	char *end;

	if (!text)
		return false;
	if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
		text += 2;
		base = 16;
	}
	if (!isxdigit((unsigned char)text[0]))
		return false;
	errno = 0;
	v = strtoull(text, &end, base);
	if (errno || *end || v > max)
		return false;
	*out = v;
	return true;
}

static bool parse_u32(const char *text, uint32_t max, uint32_t *out)
{
	uint64_t v;

	if (!parse_u64(text, max, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Hex text to at most @max bytes; returns the count, or -1. */
static int parse_hex(const char *text, uint8_t *out, size_t max)
{
	size_t len = strlen(text), i;

	if (len % 2 || len / 2 > max)
		return -1;
	for (i = 0; i < len / 2; i++) {
		int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return (int)(len / 2);
}

/* Options every command may take; each command reads the ones it knows. */
struct opts {
	uint32_t cpu, from, sint, vector;
	bool has_cpu, has_from, has_sint, has_vector;
	bool masked, auto_eoi, polling, clear, fast, user;
	bool no_scontrol, no_sief, no_sim, in_service;
	bool has_raw, has_control, has_in_gpa, has_out_gpa, has_sief_gpa, has_sim_gpa;
	uint64_t raw, control, in_gpa, out_gpa, sief_gpa, sim_gpa;
	uint32_t in_offset, out_offset, out_len, out_fill, insn, repeat;
	uint32_t cpus, rounds, calls_per_round, flag;
	bool has_cpus, has_flag, newly_output, neighbour;
	const char *watch;	/* cases: CPU:SINT:VECTOR,... */
	uint8_t input[HVPROBE_IO_MAX];
	int input_len;
	uint8_t xmm[HVPROBE_XMM_REGS][HVPROBE_XMM_BYTES];
	int xmm_count;
	const char *bad;	/* the option whose value did not parse */
	char *const *args;	/* positional arguments */
	int nargs;
};

enum {
	OPT_CPU = 256, OPT_FROM, OPT_SINT, OPT_VECTOR, OPT_MASKED, OPT_AUTO_EOI,
	OPT_POLLING, OPT_CLEAR, OPT_FAST, OPT_USER, OPT_NO_SCONTROL, OPT_NO_SIEF,
	OPT_NO_SIM, OPT_RAW, OPT_CONTROL, OPT_IN_GPA, OPT_OUT_GPA, OPT_IN_OFFSET,
	OPT_OUT_OFFSET, OPT_OUT_LEN, OPT_OUT_FILL, OPT_INSN, OPT_INPUT, OPT_XMM,
	OPT_REPEAT, OPT_IN_SERVICE, OPT_CPUS, OPT_ROUNDS, OPT_CALLS_PER_ROUND, OPT_FLAG,
	OPT_NEWLY_OUTPUT,
	OPT_NEIGHBOUR, OPT_WATCH, OPT_SIEF_GPA, OPT_SIM_GPA,
};

static const struct option long_options[] = {
	{ "cpu", required_argument, NULL, OPT_CPU },
	{ "from", required_argument, NULL, OPT_FROM },
	{ "sint", required_argument, NULL, OPT_SINT },
	{ "vector", required_argument, NULL, OPT_VECTOR },
	{ "masked", no_argument, NULL, OPT_MASKED },
	{ "auto-eoi", no_argument, NULL, OPT_AUTO_EOI },
	{ "polling", no_argument, NULL, OPT_POLLING },
	{ "clear", no_argument, NULL, OPT_CLEAR },
	{ "fast", no_argument, NULL, OPT_FAST },
	{ "user", no_argument, NULL, OPT_USER },
	{ "no-scontrol", no_argument, NULL, OPT_NO_SCONTROL },
	{ "no-sief", no_argument, NULL, OPT_NO_SIEF },
	{ "no-sim", no_argument, NULL, OPT_NO_SIM },
	{ "raw", required_argument, NULL, OPT_RAW },
	{ "control", required_argument, NULL, OPT_CONTROL },
	{ "in-gpa", required_argument, NULL, OPT_IN_GPA },
	{ "out-gpa", required_argument, NULL, OPT_OUT_GPA },
	{ "sief-gpa", required_argument, NULL, OPT_SIEF_GPA },
	{ "sim-gpa", required_argument, NULL, OPT_SIM_GPA },
	{ "in-offset", required_argument, NULL, OPT_IN_OFFSET },
	{ "out-offset", required_argument, NULL, OPT_OUT_OFFSET },
	{ "out-len", required_argument, NULL, OPT_OUT_LEN },
	{ "out-fill", required_argument, NULL, OPT_OUT_FILL },
	{ "insn", required_argument, NULL, OPT_INSN },
	{ "input", required_argument, NULL, OPT_INPUT },
	{ "xmm", required_argument, NULL, OPT_XMM },
	{ "repeat", required_argument, NULL, OPT_REPEAT },
	{ "in-service", no_argument, NULL, OPT_IN_SERVICE },
	{ "cpus", required_argument, NULL, OPT_CPUS },
	{ "rounds", required_argument, NULL, OPT_ROUNDS },
	{ "calls-per-round", required_argument, NULL, OPT_CALLS_PER_ROUND },
	{ "flag", required_argument, NULL, OPT_FLAG },
	{ "newly-output", no_argument, NULL, OPT_NEWLY_OUTPUT },
	{ "neighbour", no_argument, NULL, OPT_NEIGHBOUR },
	{ "watch", required_argument, NULL, OPT_WATCH },
	{ NULL, 0, NULL, 0 },
};

static const char *const insn_names[] = { "vmcall", "vmmcall", "page" };

/*
 * The CPU vendor's own instruction: the other one traps into the hypervisor
 * as #UD, which KVM may emulate by rewriting the caller's code.
 */
static uint32_t native_insn(void)
{
	unsigned int eax, ebx, ecx, edx;

	__cpuid(0, eax, ebx, ecx, edx);
	(void)eax;
	(void)ecx;
	(void)edx;
	/* "AuthenticAMD" and "HygonGenuine" */
	return ebx == 0x68747541 || ebx == 0x6f677948 ? HVPROBE_INSN_VMMCALL
						       : HVPROBE_INSN_VMCALL;
}

static bool parse_insn(const char *text, uint32_t *insn)
{
	uint32_t i;

	if (!strcmp(text, "native")) {
		*insn = native_insn();
		return true;
	}
	for (i = 0; i < ARRAY_SIZE(insn_names); i++) {
		if (!strcmp(text, insn_names[i])) {
			*insn = i;
			return true;
		}
	}
	return false;
}

/* "0,1,3": a CPU mask, of CPUs below 32 */
static bool parse_cpu_list(const char *text, uint32_t *mask)
{
	char buf[128], *item, *save = NULL;
	uint32_t cpu;

	if (strlen(text) >= sizeof(buf))
		return false;
	strcpy(buf, text);
	*mask = 0;
	for (item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		if (!parse_u32(item, 31, &cpu))
			return false;
		*mask |= 1U << cpu;
	}
	return *mask != 0;
}

static bool parse_xmm(struct opts *o, const char *text)
{
	if (o->xmm_count >= HVPROBE_XMM_REGS)
		return false;
	return parse_hex(text, o->xmm[o->xmm_count++], HVPROBE_XMM_BYTES) >= 0;
}

/* Applies one option; false when its value does not parse. */
static bool apply_option(struct opts *o, int opt, const char *arg)
{
	switch (opt) {
	case OPT_CPU:
		return (o->has_cpu = parse_u32(arg, UINT32_MAX, &o->cpu));
	case OPT_FROM:
		return (o->has_from = parse_u32(arg, UINT32_MAX, &o->from));
	case OPT_SINT:
		return (o->has_sint = parse_u32(arg, UINT32_MAX, &o->sint));
	case OPT_VECTOR:
		return (o->has_vector = parse_u32(arg, 255, &o->vector));
	case OPT_MASKED:
		return (o->masked = true);
	case OPT_AUTO_EOI:
		return (o->auto_eoi = true);
	case OPT_POLLING:
		return (o->polling = true);
	case OPT_CLEAR:
		return (o->clear = true);
	case OPT_FAST:
		return (o->fast = true);
	case OPT_USER:
		return (o->user = true);
	case OPT_NO_SCONTROL:
		return (o->no_scontrol = true);
	case OPT_NO_SIEF:
		return (o->no_sief = true);
	case OPT_NO_SIM:
		return (o->no_sim = true);
	case OPT_IN_SERVICE:
		return (o->in_service = true);
	case OPT_RAW:
		return (o->has_raw = parse_u64(arg, UINT64_MAX, &o->raw));
	case OPT_CONTROL:
		return (o->has_control = parse_u64(arg, UINT64_MAX, &o->control));
	case OPT_IN_GPA:
		return (o->has_in_gpa = parse_u64(arg, UINT64_MAX, &o->in_gpa));
	case OPT_OUT_GPA:
		return (o->has_out_gpa = parse_u64(arg, UINT64_MAX, &o->out_gpa));
	case OPT_SIEF_GPA:
		return (o->has_sief_gpa = parse_u64(arg, UINT64_MAX, &o->sief_gpa));
	case OPT_SIM_GPA:
		return (o->has_sim_gpa = parse_u64(arg, UINT64_MAX, &o->sim_gpa));
	case OPT_IN_OFFSET:
		return parse_u32(arg, UINT32_MAX, &o->in_offset);
	case OPT_OUT_OFFSET:
		return parse_u32(arg, UINT32_MAX, &o->out_offset);
	case OPT_OUT_LEN:
		return parse_u32(arg, HVPROBE_IO_MAX, &o->out_len);
	case OPT_OUT_FILL:
		return parse_u32(arg, 255, &o->out_fill);
	case OPT_REPEAT:
		return parse_u32(arg, HVPROBE_REPEAT_MAX, &o->repeat) && o->repeat > 0;
	case OPT_INSN:
		return parse_insn(arg, &o->insn);
	case OPT_NEWLY_OUTPUT:
		return (o->newly_output = true);
	case OPT_WATCH:
		o->watch = arg;
		return true;
	case OPT_NEIGHBOUR:
		return (o->neighbour = true);
	case OPT_CPUS:
		return (o->has_cpus = parse_cpu_list(arg, &o->cpus));
	case OPT_ROUNDS:
		return parse_u32(arg, HVPROBE_RACE_ROUNDS_MAX, &o->rounds) && o->rounds > 0;
	case OPT_CALLS_PER_ROUND:
		return parse_u32(arg, HVPROBE_RACE_CALLS_MAX, &o->calls_per_round) &&
		       o->calls_per_round > 0;
	case OPT_FLAG:
		return (o->has_flag = parse_u32(arg, SIEF_FLAGS_PER_SLOT - 1, &o->flag));
	case OPT_INPUT:
		o->input_len = parse_hex(arg, o->input, HVPROBE_IO_MAX);
		return o->input_len >= 0;
	case OPT_XMM:
		return parse_xmm(o, arg);
	default:
		return false;
	}
}

/* Returns 0, or the exit status of a usage error already printed. */
static int parse_options(int argc, char **argv, struct opts *o)
{
	int opt, index;

	memset(o, 0, sizeof(*o));
	o->out_offset = HVPROBE_BUF_BYTES / 2;
	o->out_len = 64;
	o->out_fill = 0xaa;
	o->rounds = 100;
	opterr = 0;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "", long_options, &index)) != -1) {
		if (opt == '?')
			return usage_error("unknown option or missing value");
		if (!apply_option(o, opt, optarg)) {
			char what[96];

			snprintf(what, sizeof(what), "bad value for --%s",
				 long_options[index].name);
			return usage_error(what);
		}
	}
	o->args = argv + optind;
	o->nargs = argc - optind;
	return 0;
}

/* The device. */

static int device = -1;

static int device_fd(void)
{
	if (device < 0)
		device = open(HVPROBE_DEVICE, O_RDWR | O_CLOEXEC);
	return device;
}

/* serve closes it after each command, so the module can be unloaded between */
static void device_close(void)
{
	if (device >= 0)
		close(device);
	device = -1;
}

/* What the module means by each error it returns. */
static const char *errno_hint(int err)
{
	switch (err) {
	case EINVAL:
		return "a CPU that is not online, or a value out of range";
	case ENXIO:
		return "that CPU has no SynIC pages: run synic-setup first";
	case ENODEV:
		return "the kernel set up no hypercall page, or the CPU went offline";
	case EBUSY:
		return "that CPU's SynIC pages are elsewhere: run synic-teardown first";
	case EADDRNOTAVAIL:
		return "--sief-gpa and --sim-gpa must be two pages the kernel does not own (memmap=)";
	default:
		return NULL;
	}
}

/* Runs one ioctl; returns 0, or the exit status of the error printed. */
static int call(unsigned long request, void *arg, const char *what)
{
	int fd = device_fd();

	if (fd < 0) {
		if (errno == ENOENT || errno == ENXIO || errno == ENODEV)
			return fail(EXIT_NO_MODULE, "%s: %s (is the hvprobe module loaded?)",
				    HVPROBE_DEVICE, strerror(errno));
		return fail(EXIT_NO_MODULE, "%s: %s", HVPROBE_DEVICE, strerror(errno));
	}
	if (ioctl(fd, request, arg) < 0) {
		int err = errno;
		const char *hint = errno_hint(err);

		if (hint)
			return fail(EXIT_REFUSED, "%s: %s (%s)", what, strerror(err), hint);
		return fail(EXIT_REFUSED, "%s: %s", what, strerror(err));
	}
	return 0;
}

/* Commands. */

static bool cpu_online_in(const struct hvprobe_info *info, uint32_t cpu)
{
	return cpu < HVPROBE_ONLINE_WORDS * 64 && info->online[cpu / 64] & (1ULL << (cpu % 64));
}

static int cmd_info(struct opts *o)
{
	struct hvprobe_info info;
	bool first = true;
	unsigned int cpu;
	int rc;

	if (o->nargs)
		return usage_error("info takes no arguments");
	rc = call(HVPROBE_IOC_INFO, &info, "info");
	if (rc)
		return rc;
	printf("{\"abi\": %u, \"nr_cpu_ids\": %u, \"online_cpus\": [", info.abi_version,
	       info.nr_cpu_ids);
	for (cpu = 0; cpu < HVPROBE_ONLINE_WORDS * 64; cpu++) {
		if (cpu_online_in(&info, cpu)) {
			printf("%s%u", first ? "" : ", ", cpu);
			first = false;
		}
	}
	fputs("], \"hypercall_page\": ", stdout);
	json_bool(info.hypercall_page);
	fputs(", \"x2apic\": ", stdout);
	json_bool(info.x2apic);
	fputs(", \"irq_probes\": [", stdout);
	printf("%s", info.irq_probes & HVPROBE_PROBE_COMMON ? "\"__common_interrupt\"" : "");
	printf("%s", (info.irq_probes & HVPROBE_PROBE_COMMON) &&
		     (info.irq_probes & HVPROBE_PROBE_SPURIOUS) ? ", " : "");
	printf("%s", info.irq_probes & HVPROBE_PROBE_SPURIOUS ? "\"__spurious_interrupt\"" : "");
	fputs("]}\n", stdout);
	return 0;
}

static int cmd_cpuid(struct opts *o)
{
	struct hvprobe_cpuid c = { .cpu = o->cpu };
	int rc;

	if (o->nargs < 1 || o->nargs > 2 || !parse_u32(o->args[0], UINT32_MAX, &c.leaf) ||
	    (o->nargs == 2 && !parse_u32(o->args[1], UINT32_MAX, &c.subleaf)))
		return usage_error("cpuid takes LEAF [SUBLEAF]");
	rc = call(HVPROBE_IOC_CPUID, &c, "cpuid");
	if (rc)
		return rc;
	printf("{\"cpu\": %u, \"leaf\": %u, \"subleaf\": %u, ", c.cpu, c.leaf, c.subleaf);
	printf("\"eax\": %u, \"ebx\": %u, \"ecx\": %u, \"edx\": %u}\n", c.eax, c.ebx, c.ecx, c.edx);
	return 0;
}

static void print_msr(const struct hvprobe_msr *m)
{
	printf("{\"cpu\": %u, \"msr\": %u, \"value\": ", m->cpu, m->msr);
	json_u64(m->value);
	fputs(", \"gp\": ", stdout);
	json_bool(m->gp);
	fputs("}\n", stdout);
}

static int cmd_rdmsr(struct opts *o)
{
	struct hvprobe_msr m = { .cpu = o->cpu };
	int rc;

	if (o->nargs != 1 || !parse_u32(o->args[0], UINT32_MAX, &m.msr))
		return usage_error("rdmsr takes MSR");
	rc = call(HVPROBE_IOC_RDMSR, &m, "rdmsr");
	if (!rc)
		print_msr(&m);
	return rc;
}

static int cmd_wrmsr(struct opts *o)
{
	struct hvprobe_msr m = { .cpu = o->cpu };
	uint64_t value;
	int rc;

	if (o->nargs != 2 || !parse_u32(o->args[0], UINT32_MAX, &m.msr) ||
	    !parse_u64(o->args[1], UINT64_MAX, &value))
		return usage_error("wrmsr takes MSR VALUE");
	m.value = value;
	rc = call(HVPROBE_IOC_WRMSR, &m, "wrmsr");
	if (!rc)
		print_msr(&m);
	return rc;
}

static void print_faults(uint32_t faults)
{
	static const char *const names[] = { "scontrol", "siefp", "simp" };
	bool first = true;
	unsigned int bit;

	fputs("\"faults\": [", stdout);
	for (bit = 0; bit < 3 + HVPROBE_SINTS; bit++) {
		if (!(faults & (1U << bit)))
			continue;
		if (bit < 3)
			printf("%s\"%s\"", first ? "" : ", ", names[bit]);
		else
			printf("%s\"sint%u\"", first ? "" : ", ", bit - 3);
		first = false;
	}
	putchar(']');
}

static void print_synic(const struct hvprobe_synic *s)
{
	printf("{\"cpu\": %u, \"sief_gpa\": ", s->cpu);
	json_u64(s->sief_gpa);
	fputs(", \"sim_gpa\": ", stdout);
	json_u64(s->sim_gpa);
	fputs(", \"scontrol\": ", stdout);
	json_u64(s->scontrol);
	fputs(", \"siefp\": ", stdout);
	json_u64(s->siefp);
	fputs(", \"simp\": ", stdout);
	json_u64(s->simp);
	fputs(", ", stdout);
	print_faults(s->faults);
	fputs("}\n", stdout);
}

static int cmd_synic_setup(struct opts *o)
{
	struct hvprobe_synic s = { .cpu = o->cpu };
	int rc;

	if (o->nargs)
		return usage_error("synic-setup takes no arguments");
	if (o->has_sief_gpa != o->has_sim_gpa)
		return usage_error("--sief-gpa and --sim-gpa go together");
	s.flags = (o->no_scontrol ? HVPROBE_SYNIC_NO_SCONTROL : 0) |
		  (o->no_sief ? HVPROBE_SYNIC_NO_SIEF : 0) |
		  (o->no_sim ? HVPROBE_SYNIC_NO_SIM : 0) |
		  (o->has_sief_gpa ? HVPROBE_SYNIC_AT_GPA : 0);
	s.sief_gpa = o->sief_gpa;
	s.sim_gpa = o->sim_gpa;
	rc = call(HVPROBE_IOC_SYNIC_SETUP, &s, "synic-setup");
	if (!rc)
		print_synic(&s);
	return rc;
}

static int cmd_synic_teardown(struct opts *o)
{
	struct hvprobe_synic s = { .cpu = o->cpu };
	int rc;

	if (o->nargs)
		return usage_error("synic-teardown takes no arguments");
	rc = call(HVPROBE_IOC_SYNIC_TEARDOWN, &s, "synic-teardown");
	if (!rc)
		print_synic(&s);
	return rc;
}

static int cmd_sint(struct opts *o)
{
	struct hvprobe_sint s = { .cpu = o->cpu, .sint = o->sint };
	int rc;

	if (o->nargs || !o->has_sint || o->has_raw == o->has_vector)
		return usage_error("sint takes --sint S and one of --vector V, --raw VALUE");
	if (o->has_raw && (o->masked || o->auto_eoi || o->polling))
		return usage_error("--raw excludes --masked, --auto-eoi and --polling");
	s.value = o->has_raw ? o->raw : o->vector |
		  (o->masked ? HVPROBE_SINT_MASKED : 0) |
		  (o->auto_eoi ? HVPROBE_SINT_AUTO_EOI : 0) |
		  (o->polling ? HVPROBE_SINT_POLLING : 0);
	rc = call(HVPROBE_IOC_SINT, &s, "sint");
	if (rc)
		return rc;
	printf("{\"cpu\": %u, \"sint\": %u, \"value\": ", s.cpu, s.sint);
	json_u64(s.value);
	fputs(", \"gp\": ", stdout);
	json_bool(s.gp);
	fputs("}\n", stdout);
	return 0;
}

static void print_sief_flags(const uint8_t *data)
{
	bool first = true;
	unsigned int n;

	fputs("\"flags\": [", stdout);
	for (n = 0; n < SIEF_FLAGS_PER_SLOT; n++) {
		if (data[n / 8] & (1U << (n % 8))) {
			printf("%s%u", first ? "" : ", ", n);
			first = false;
		}
	}
	putchar(']');
}

static void print_sim_header(const uint8_t *data)
{
	uint32_t type;

	memcpy(&type, data, sizeof(type));
	printf("\"message_type\": %u, \"payload_size\": %u, \"message_flags\": %u",
	       type, data[4], data[5]);
}

static int cmd_slot(struct opts *o, uint32_t page)
{
	struct hvprobe_slot s = { .cpu = o->cpu, .sint = o->sint, .page = page };
	int rc;

	if (o->nargs || !o->has_sint)
		return usage_error("sief and sim take --sint S");
	s.clear = o->clear;
	rc = call(HVPROBE_IOC_SLOT, &s, page == HVPROBE_SLOT_SIEF ? "sief" : "sim");
	if (rc)
		return rc;
	printf("{\"cpu\": %u, \"sint\": %u, \"cleared\": ", s.cpu, s.sint);
	json_bool(s.clear);
	fputs(", \"bytes\": ", stdout);
	json_hex(s.data, sizeof(s.data));
	fputs(", ", stdout);
	if (page == HVPROBE_SLOT_SIEF)
		print_sief_flags(s.data);
	else
		print_sim_header(s.data);
	fputs("}\n", stdout);
	return 0;
}

static bool slot_is_clear(const uint8_t *data, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (data[i])
			return false;
	return true;
}

/* Every SIEF slot of one CPU in one call: the snapshot a test compares. */
static int cmd_sief_page(struct opts *o)
{
	struct hvprobe_slot s[HVPROBE_SINTS];
	bool first = true;
	uint32_t sint;
	int rc;

	/* All slots read before anything is printed, so a failure prints one error */
	for (sint = 0; sint < HVPROBE_SINTS; sint++) {
		s[sint] = (struct hvprobe_slot) { .cpu = o->cpu, .sint = sint,
						  .page = HVPROBE_SLOT_SIEF, .clear = o->clear };
		rc = call(HVPROBE_IOC_SLOT, &s[sint], "sief");
		if (rc)
			return rc;
	}
	printf("{\"cpu\": %u, \"cleared\": ", o->cpu);
	json_bool(o->clear);
	fputs(", \"slots\": {", stdout);
	for (sint = 0; sint < HVPROBE_SINTS; sint++) {
		if (slot_is_clear(s[sint].data, sizeof(s[sint].data)))
			continue;
		printf("%s\"%u\": {", first ? "" : ", ", sint);
		print_sief_flags(s[sint].data);
		putchar('}');
		first = false;
	}
	fputs("}}\n", stdout);
	return 0;
}

static int cmd_sief(struct opts *o)
{
	if (!o->has_sint && !o->nargs)
		return cmd_sief_page(o);
	return cmd_slot(o, HVPROBE_SLOT_SIEF);
}

static int cmd_sim(struct opts *o)
{
	return cmd_slot(o, HVPROBE_SLOT_SIM);
}

static int cmd_pages(struct opts *o)
{
	struct hvprobe_pages p = { .cpu = o->cpu };
	int rc;

	if (o->nargs)
		return usage_error("pages takes no arguments");
	rc = call(HVPROBE_IOC_PAGES, &p, "pages");
	if (rc)
		return rc;
	printf("{\"cpu\": %u, \"synic\": ", p.cpu);
	json_bool(p.synic);
	fputs(", \"sief_gpa\": ", stdout);
	if (p.synic)
		json_u64(p.sief_gpa);
	else
		fputs("null", stdout);
	fputs(", \"sim_gpa\": ", stdout);
	if (p.synic)
		json_u64(p.sim_gpa);
	else
		fputs("null", stdout);
	fputs(", \"buffer_gpa\": ", stdout);
	json_u64(p.buffer_gpa);
	printf(", \"buffer_bytes\": %u}\n", p.buffer_bytes);
	return 0;
}

/* One CPU's counts ("cpu": {...}): every non-zero one, or just the vector asked for. */
static void print_cpu_irqs(const struct hvprobe_irqs *q, const struct opts *o, bool first)
{
	const __u64 *counts = o->in_service ? q->in_service : q->counts;
	bool first_vector = true;
	unsigned int v;

	printf("%s\"%u\": {", first ? "" : ", ", q->cpu);
	for (v = 0; v < HVPROBE_VECTORS; v++) {
		if (o->has_vector ? v != o->vector : !counts[v])
			continue;
		printf("%s\"%u\": ", first_vector ? "" : ", ", v);
		json_u64(counts[v]);
		first_vector = false;
	}
	putchar('}');
}

static int cmd_irqs(struct opts *o)
{
	struct hvprobe_irqs q = { .cpu = o->cpu };
	struct hvprobe_info info;
	bool first = true;
	uint32_t cpu;
	int rc;

	if (o->nargs)
		return usage_error("irqs takes no arguments");
	if (o->has_cpu) {
		rc = call(HVPROBE_IOC_IRQS, &q, "irqs");
		if (rc)
			return rc;
		fputs("{\"irqs\": {", stdout);
		print_cpu_irqs(&q, o, true);
		fputs("}}\n", stdout);
		return 0;
	}
	rc = call(HVPROBE_IOC_INFO, &info, "info");
	if (rc)
		return rc;
	fputs("{\"irqs\": {", stdout);
	for (cpu = 0; cpu < info.nr_cpu_ids; cpu++) {
		q.cpu = cpu;
		if (!cpu_online_in(&info, cpu) || ioctl(device_fd(), HVPROBE_IOC_IRQS, &q) < 0)
			continue;
		print_cpu_irqs(&q, o, first);
		first = false;
	}
	fputs("}}\n", stdout);
	return 0;
}

static int cmd_ipi(struct opts *o)
{
	struct hvprobe_ipi ipi = { .from_cpu = o->from, .to_cpu = o->cpu };
	int rc;

	if (o->nargs || !o->has_vector)
		return usage_error("ipi takes --vector V");
	ipi.vector = o->vector;
	rc = call(HVPROBE_IOC_IPI, &ipi, "ipi");
	if (!rc)
		printf("{\"from\": %u, \"cpu\": %u, \"vector\": %u}\n", ipi.from_cpu,
		       ipi.to_cpu, ipi.vector);
	return rc;
}

/* Hypercalls. */

struct hcall_result {
	const char *mode;
	const char *signal;	/* user mode: the signal that stopped it */
	int trap;		/* -1, or the exception vector */
	uint64_t rax, rdx, r8;
	const uint8_t *output;	/* NULL when there is none */
	uint32_t output_len;
	uint64_t output_gpa;
	uint8_t (*xmm)[HVPROBE_XMM_BYTES];	/* NULL when not loaded */
	uint64_t elapsed_ns;	/* with --repeat: all the calls, timed by the module */
};

static void json_opt_u64(bool present, uint64_t v)
{
	if (present)
		json_u64(v);
	else
		fputs("null", stdout);
}

static void print_hcall_xmm(uint8_t (*xmm)[HVPROBE_XMM_BYTES])
{
	int i;

	if (!xmm) {
		fputs("null", stdout);
		return;
	}
	putchar('[');
	for (i = 0; i < HVPROBE_XMM_REGS; i++) {
		fputs(i ? ", " : "", stdout);
		json_hex(xmm[i], HVPROBE_XMM_BYTES);
	}
	putchar(']');
}

static void print_hcall(const struct opts *o, const struct hcall_result *r)
{
	bool done = r->trap < 0;

	printf("{\"cpu\": %u, \"mode\": \"%s\", \"insn\": \"%s\", \"control\": ", o->cpu,
	       r->mode, insn_names[o->insn]);
	json_u64(o->control);
	fputs(", \"fast\": ", stdout);
	json_bool(o->fast);
	fputs(", \"rdx\": ", stdout);
	json_u64(r->rdx);
	fputs(", \"r8\": ", stdout);
	json_u64(r->r8);
	fputs(", \"ud\": ", stdout);
	json_bool(r->trap == 6);
	fputs(", \"trap\": ", stdout);
	json_opt_u64(!done, (uint64_t)r->trap);
	fputs(", \"signal\": ", stdout);
	if (r->signal)
		json_string(r->signal);
	else
		fputs("null", stdout);
	fputs(", \"rax\": ", stdout);
	json_opt_u64(done, r->rax);
	fputs(", \"status\": ", stdout);
	json_opt_u64(done, r->rax & 0xffff);
	fputs(", \"reps_completed\": ", stdout);
	json_opt_u64(done, (r->rax >> 32) & 0xfff);
	fputs(", \"output_gpa\": ", stdout);
	json_opt_u64(r->output, r->output_gpa);
	fputs(", \"output\": ", stdout);
	if (r->output)
		json_hex(r->output, r->output_len);
	else
		fputs("null", stdout);
	fputs(", \"xmm\": ", stdout);
	print_hcall_xmm(r->xmm);
	if (o->repeat > 1) {
		printf(", \"repeat\": %u, \"elapsed_ns\": ", o->repeat);
		json_u64(r->elapsed_ns);
	}
	fputs("}\n", stdout);
}

static void fast_registers(const struct opts *o, uint64_t *rdx, uint64_t *r8)
{
	uint8_t block[16] = { 0 };

	memcpy(block, o->input, (size_t)o->input_len);
	memcpy(rdx, block, sizeof(*rdx));
	memcpy(r8, block + 8, sizeof(*r8));
}

static int hcall_kernel(const struct opts *o)
{
	struct hvprobe_hypercall hc;
	struct hcall_result r = { .mode = "kernel" };
	uint64_t rdx, r8;
	int rc;

	memset(&hc, 0, sizeof(hc));
	hc.cpu = o->cpu;
	hc.insn = o->insn;
	hc.control = o->control;
	hc.in_offset = o->in_offset;
	hc.out_offset = o->out_offset;
	hc.out_len = o->out_len;
	hc.out_fill = o->out_fill;
	if (o->fast) {
		hc.flags = HVPROBE_HC_FAST;
		fast_registers(o, &rdx, &r8);
		hc.rdx = rdx;
		hc.r8 = r8;
		memcpy(hc.xmm_in, o->xmm, sizeof(hc.xmm_in));
	} else {
		hc.in_len = (uint32_t)o->input_len;
		memcpy(hc.input, o->input, hc.in_len);
		hc.flags = (o->has_in_gpa ? HVPROBE_HC_IN_GPA : 0) |
			   (o->has_out_gpa ? HVPROBE_HC_OUT_GPA : 0);
		hc.in_gpa = o->in_gpa;
		hc.out_gpa = o->out_gpa;
	}
	hc.repeat = o->repeat;
	rc = call(HVPROBE_IOC_HYPERCALL, &hc, "hypercall");
	if (rc)
		return rc;
	r.elapsed_ns = hc.elapsed_ns;
	r.trap = hc.trap;
	r.rax = hc.rax;
	r.rdx = hc.used_rdx;
	r.r8 = hc.used_r8;
	r.output = hc.output_len ? hc.output : NULL;
	r.output_len = hc.output_len;
	r.output_gpa = hc.output_gpa;
	r.xmm = o->fast ? hc.xmm_out : NULL;
	print_hcall(o, &r);
	return 0;
}

/*
 * User mode: the instruction at CPL 3 in this process; a fault is a signal.
 * The handler jumps back out of it, so these two must be globals.
 */
static sigjmp_buf user_fault_jump;
static volatile sig_atomic_t user_fault_signal;

static void on_user_fault(int signal)
{
	user_fault_signal = signal;
	siglongjmp(user_fault_jump, 1);
}

static uint64_t user_instruction(uint32_t insn, uint64_t rcx, uint64_t rdx, uint64_t r8_in)
{
	register uint64_t r8 __asm__("r8") = r8_in;
	uint64_t rax = 0;

	if (insn == HVPROBE_INSN_VMMCALL)
		__asm__ volatile("vmmcall"
				 : "+a"(rax), "+c"(rcx), "+d"(rdx), "+r"(r8) : : "cc", "memory");
	else
		__asm__ volatile("vmcall"
				 : "+a"(rax), "+c"(rcx), "+d"(rdx), "+r"(r8) : : "cc", "memory");
	return rax;
}

static int pin_to_cpu(uint32_t cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (cpu >= CPU_SETSIZE)
		return -1;
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static int hcall_user(const struct opts *o)
{
	struct hcall_result r = { .mode = "user", .trap = -1 };
	struct sigaction action;

	if (o->insn == HVPROBE_INSN_PAGE || o->xmm_count)
		return usage_error("--user takes neither --insn page nor --xmm");
	if (pin_to_cpu(o->cpu))
		return fail(EXIT_REFUSED, "cannot run on cpu %u: %s", o->cpu, strerror(errno));
	if (o->fast) {
		fast_registers(o, &r.rdx, &r.r8);
	} else {
		r.rdx = o->in_gpa;
		r.r8 = o->out_gpa;
	}
	memset(&action, 0, sizeof(action));
	action.sa_handler = on_user_fault;
	sigemptyset(&action.sa_mask);
	sigaction(SIGILL, &action, NULL);
	sigaction(SIGSEGV, &action, NULL);
	if (sigsetjmp(user_fault_jump, 1) == 0) {
		r.rax = user_instruction(o->insn, o->control, r.rdx, r.r8);
	} else if (user_fault_signal == SIGILL) {
		r.trap = 6;
		r.signal = "SIGILL";
	} else {
		r.trap = 13;
		r.signal = "SIGSEGV";
	}
	/* A fault after this, in serve, must not jump back here */
	action.sa_handler = SIG_DFL;
	sigaction(SIGILL, &action, NULL);
	sigaction(SIGSEGV, &action, NULL);
	print_hcall(o, &r);
	return 0;
}

static int cmd_hypercall(struct opts *o)
{
	if (o->nargs || !o->has_control)
		return usage_error("hypercall takes --control C");
	if (o->fast && (o->has_in_gpa || o->has_out_gpa || o->input_len > 16))
		return usage_error("--fast takes at most 16 input bytes and no --in-gpa/--out-gpa");
	if (!o->fast && o->xmm_count)
		return usage_error("--xmm needs --fast");
	if (o->user && o->repeat > 1)
		return usage_error("--repeat is for kernel-mode calls");
	return o->user ? hcall_user(o) : hcall_kernel(o);
}

/*
 * Cases: many hypercalls in one command, each followed by what it did to the
 * watched SIEF slots (read and cleared) and to their SINTs' interrupt counts,
 * without a process or a round trip per call. The counts are read after a
 * fence on each CPU (see the module's irqs), so an interrupt a call asserted
 * on another CPU is counted for that call, not the next.
 */

#define CASES_WATCH_MAX		8
#define CASES_MAX		4096
#define CASES_WORDS_MAX		64

struct case_watch {
	uint32_t cpu, sint, vector;
	uint64_t irqs;		/* the count on vector at cpu, as last read */
};

static bool parse_watch(const char *text, struct case_watch *w, int *count)
{
	char buf[256], *save = NULL, *item;

	if (!text || strlen(text) >= sizeof(buf))
		return false;
	strcpy(buf, text);
	*count = 0;
	for (item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char end;

		if (*count == CASES_WATCH_MAX ||
		    sscanf(item, "%u:%u:%u%c", &w[*count].cpu, &w[*count].sint,
			   &w[*count].vector, &end) != 3 ||
		    w[*count].sint >= HVPROBE_SINTS || w[*count].vector >= HVPROBE_VECTORS)
			return false;
		(*count)++;
	}
	return *count > 0;
}

/*
 * The counts of every watched CPU, one read each: after a fence on the CPUs in
 * @fence (a bit per watch, for its CPU), as they are on the others.
 */
static int read_irq_counts(struct case_watch *w, int watches, uint64_t *counts, uint32_t fence)
{
	struct hvprobe_irqs q;
	int i, j, rc;

	for (i = 0; i < watches; i++) {
		for (j = 0; j < i && w[j].cpu != w[i].cpu; j++)
			;
		if (j < i) {
			counts[i] = 0;
			continue;
		}
		memset(&q, 0, sizeof(q));
		q.cpu = w[i].cpu;
		for (j = i; j < watches; j++)
			if (w[j].cpu == w[i].cpu && fence & (1U << j))
				break;
		q.flags = j < watches ? 0 : HVPROBE_IRQS_NO_FENCE;
		rc = call(HVPROBE_IOC_IRQS, &q, "irqs");
		if (rc)
			return rc;
		for (j = i; j < watches; j++)
			if (w[j].cpu == w[i].cpu)
				counts[j] = q.counts[w[j].vector];
	}
	return 0;
}

/*
 * One case's call, its JSON object captured without its newline. The process
 * moves to the call's CPU first, where the module makes the call without a
 * worker, and stays there for the next case on that CPU.
 */
static int run_case_call(int argc, char **argv, char **json)
{
	static int64_t pinned = -1;
	FILE *out = stdout;
	size_t len = 0;
	struct opts o;
	int rc;

	*json = NULL;
	stdout = open_memstream(json, &len);
	if (!stdout) {
		stdout = out;
		return fail(EXIT_FAILURE, "cases: %s", strerror(errno));
	}
	rc = parse_options(argc, argv, &o);
	if (!rc && !o.user && pinned != o.cpu)
		pinned = pin_to_cpu(o.cpu) ? -1 : (int64_t)o.cpu;
	if (!rc)
		rc = cmd_hypercall(&o);
	fclose(stdout);
	stdout = out;
	while (len && (*json)[len - 1] == '\n')
		(*json)[--len] = '\0';
	return rc;
}

/*
 * The watched slots after a case, read and cleared, then their interrupts.
 * A fence (dear under TCG: the other vCPU must wake) is only needed on a CPU
 * where the call set a flag, and so owes an interrupt; the last case fences
 * every CPU, so that no interrupt, due or not, goes uncounted.
 */
static int observe_case(struct case_watch *w, int watches, bool last)
{
	uint64_t counts[CASES_WATCH_MAX];
	uint32_t fence = last ? ~0U : 0;
	int i, rc;

	fputs(", \"flags\": [", stdout);
	for (i = 0; i < watches; i++) {
		struct hvprobe_slot slot = { .cpu = w[i].cpu, .sint = w[i].sint,
					     .page = HVPROBE_SLOT_SIEF, .clear = 1 };

		rc = call(HVPROBE_IOC_SLOT, &slot, "sief");
		if (rc)
			return rc;
		if (!slot_is_clear(slot.data, sizeof(slot.data)))
			fence |= 1U << i;
		fputs(i ? ", {" : "{", stdout);
		print_sief_flags(slot.data);
		putchar('}');
	}
	rc = read_irq_counts(w, watches, counts, fence);
	if (rc)
		return rc;
	fputs("], \"irqs\": [", stdout);
	for (i = 0; i < watches; i++) {
		printf("%s%" PRIu64, i ? ", " : "", counts[i] - w[i].irqs);
		w[i].irqs = counts[i];
	}
	putchar(']');
	return 0;
}

/* Every case in turn; returns 0, or the status of the first that failed */
static int run_cases(struct opts *o, struct case_watch *w, int watches)
{
	char *argv[CASES_WORDS_MAX + 2];
	int i, start, cases = 0, rc = 0;

	fputs("{\"cases\": [", stdout);
	for (start = 0; start < o->nargs && !rc; start = i + 1) {
		char *json;
		int argc = 1;

		argv[0] = "hypercall";
		for (i = start; i < o->nargs && strcmp(o->args[i], ";"); i++) {
			if (argc > CASES_WORDS_MAX)
				return usage_error("a case has too many words");
			argv[argc++] = o->args[i];
		}
		argv[argc] = NULL;
		if (++cases > CASES_MAX)
			return usage_error("too many cases");
		rc = run_case_call(argc, argv, &json);
		if (!rc)
			printf("%s{\"call\": %s", cases > 1 ? ", " : "", json);
		free(json);
		if (!rc)
			rc = observe_case(w, watches, i >= o->nargs);
		putchar('}');
	}
	fputs("]}\n", stdout);
	return rc;
}

static int cmd_cases(struct opts *o)
{
	struct case_watch w[CASES_WATCH_MAX];
	FILE *out = stdout;
	char *body = NULL;
	size_t len = 0;
	int watches, i, rc;

	if (!parse_watch(o->watch, w, &watches))
		return usage_error("cases needs --watch CPU:SINT:VECTOR,... (at most 8)");
	{
		uint64_t counts[CASES_WATCH_MAX];

		rc = read_irq_counts(w, watches, counts, ~0U);
		if (rc)
			return rc;
		for (i = 0; i < watches; i++)
			w[i].irqs = counts[i];
	}
	/* Built aside: a case that fails makes its error the whole reply */
	stdout = open_memstream(&body, &len);
	if (!stdout) {
		stdout = out;
		return fail(EXIT_FAILURE, "cases: %s", strerror(errno));
	}
	rc = run_cases(o, w, watches);
	fclose(stdout);
	stdout = out;
	if (rc)
		fail(rc, "%s", last_failure);
	else
		fputs(body, stdout);
	free(body);
	return rc;
}

/*
 * Port I/O, for devices such as hyperv-testdev: one 32-bit OUT or IN, made
 * by the module on the CPU asked for (0 by default).
 */
static int cmd_port(struct opts *o, bool write)
{
	struct hvprobe_port p = { .cpu = o->cpu, .write = write };
	int rc;

	if (o->nargs != (write ? 2 : 1) || !parse_u32(o->args[0], 0xfffc, &p.port) ||
	    (write && !parse_u32(o->args[1], UINT32_MAX, &p.value)))
		return usage_error(write ? "outl takes PORT VALUE" : "inl takes PORT");
	rc = call(HVPROBE_IOC_PORT, &p, write ? "outl" : "inl");
	if (rc)
		return rc;
	printf("{\"cpu\": %u, \"port\": %u, \"value\": %u}\n", p.cpu, p.port, p.value);
	return 0;
}

static int cmd_outl(struct opts *o)
{
	return cmd_port(o, true);
}

static int cmd_inl(struct opts *o)
{
	return cmd_port(o, false);
}

static int cmd_race(struct opts *o)
{
	struct hvprobe_race r;
	int rc;

	if (!o->has_cpus || !o->has_cpu || !o->has_sint || !o->has_flag || !o->has_vector ||
	    !o->has_control)
		return usage_error("race needs --cpus, --cpu, --sint, --flag, --vector and --control");
	memset(&r, 0, sizeof(r));
	r.cpus = o->cpus;
	r.rounds = o->rounds;
	r.calls_per_round = o->calls_per_round;
	r.target_cpu = o->cpu;
	r.sint = o->sint;
	r.flag = o->flag;
	r.vector = o->vector;
	r.insn = o->insn;
	r.control = o->control;
	r.flags = (o->newly_output ? HVPROBE_RACE_NEWLY_OUTPUT : 0) |
		  (o->neighbour ? HVPROBE_RACE_NEIGHBOUR : 0);
	r.in_len = o->input_len;
	memcpy(r.input, o->input, o->input_len);
	rc = call(HVPROBE_IOC_RACE, &r, "race");
	if (rc)
		return rc;
	printf("{\"calls\": %u, \"newly\": %u, \"bad_rounds\": %u, \"errors\": %u, "
	       "\"first_error\": %u, \"flag_missing\": %u, \"irqs\": %u, \"irq_timeouts\": %u, "
	       "\"neighbour_toggles\": %u, \"neighbour_lost\": %u}\n",
	       r.calls, r.newly, r.bad_rounds, r.errors, r.first_error, r.flag_missing, r.irqs,
	       r.irq_timeouts, r.neighbour_toggles, r.neighbour_lost);
	return 0;
}

/* Dispatch. */

struct command {
	const char *name;
	int (*run)(struct opts *o);
};

static const struct command commands[] = {
	{ "info", cmd_info },
	{ "cpuid", cmd_cpuid },
	{ "rdmsr", cmd_rdmsr },
	{ "wrmsr", cmd_wrmsr },
	{ "synic-setup", cmd_synic_setup },
	{ "synic-teardown", cmd_synic_teardown },
	{ "sint", cmd_sint },
	{ "hypercall", cmd_hypercall },
	{ "sief", cmd_sief },
	{ "sim", cmd_sim },
	{ "irqs", cmd_irqs },
	{ "ipi", cmd_ipi },
	{ "pages", cmd_pages },
	{ "outl", cmd_outl },
	{ "inl", cmd_inl },
	{ "race", cmd_race },
	{ "cases", cmd_cases },
};

static int run_command(int argc, char **argv)
{
	struct opts o;
	size_t i;
	int rc;

	if (argc < 2)
		return command_error("no command");
	for (i = 0; i < ARRAY_SIZE(commands); i++) {
		if (strcmp(argv[1], commands[i].name))
			continue;
		rc = parse_options(argc - 1, argv + 1, &o);
		return rc ? rc : commands[i].run(&o);
	}
	return command_error("unknown command");
}

#define SERVE_LINE_MAX	(64 * 1024)
#define SERVE_WORDS_MAX	8192	/* cases sends a few hundred calls a line */

/* One request: its words, split at blanks, run as a command line would be */
static int serve_line(char *line)
{
	static char *words[SERVE_WORDS_MAX + 2];
	char *save = NULL, *word;
	int argc = 1;

	words[0] = "hvprobe";
	for (word = strtok_r(line, " \t\n", &save); word;
	     word = strtok_r(NULL, " \t\n", &save)) {
		if (argc > SERVE_WORDS_MAX)
			return usage_error("too many words in the request");
		words[argc++] = word;
	}
	words[argc] = NULL;
	return run_command(argc, words);
}

/*
 * A command per line of standard input, and per command one line of standard
 * output, {"rc": STATUS, "reply": OBJECT}, flushed: a caller then pays for one
 * process and one SSH channel, not one of each per call. Each command runs as
 * from a fresh process would: on the CPUs the server started with, with the
 * device opened for it alone.
 */
static int serve(void)
{
	static char line[SERVE_LINE_MAX];
	FILE *out = stdout;
	cpu_set_t cpus;
	bool pinned = !sched_getaffinity(0, sizeof(cpus), &cpus);

	serving = true;
	while (fgets(line, sizeof(line), stdin)) {
		bool whole = strchr(line, '\n') || feof(stdin);
		char *reply = NULL;
		size_t reply_len = 0;
		int rc, c;

		stdout = open_memstream(&reply, &reply_len);
		if (!stdout) {
			stdout = out;
			return fail(EXIT_FAILURE, "serve: %s", strerror(errno));
		}
		rc = whole ? serve_line(line) : usage_error("request line too long");
		fclose(stdout);
		stdout = out;
		if (!whole)
			while ((c = getchar()) != EOF && c != '\n')
				;
		while (reply_len && reply[reply_len - 1] == '\n')
			reply[--reply_len] = '\0';
		printf("{\"rc\": %d, \"reply\": %s}\n", rc, reply_len ? reply : "null");
		fflush(stdout);
		free(reply);
		device_close();
		if (pinned)
			sched_setaffinity(0, sizeof(cpus), &cpus);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "serve"))
		return serve();
	return run_command(argc, argv);
}
