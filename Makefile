# Entry points. `make demo` and `make test` do all the set-up themselves, and
# every step is idempotent: a second run rebuilds nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
comma := ,

# KVM_MODULES=stock|patched: the kernel modules the KVM leg's host loads.
# KVM= was its name before; it is still taken, with a line saying so. (As a
# make variable it was handed on to kbuild through MAKEFLAGS, whose
# virt/kvm/Makefile.kvm has a KVM of its own; the build scripts now run
# kbuild, meson and ninja with a fixed environment, see scripts/lib.sh.)
ifneq ($(filter command line environment,$(origin KVM)),)
ifeq ($(origin KVM_MODULES),undefined)
$(info note: KVM=$(KVM) is deprecated; use KVM_MODULES=$(KVM))
KVM_MODULES := $(KVM)
endif
endif
KVM_MODULES ?= stock
unexport KVM
export KVM_MODULES
ifeq ($(filter stock patched,$(KVM_MODULES)),)
$(error KVM_MODULES=$(KVM_MODULES) is not one of: stock patched)
endif

# MACHINE=q35|pc and CPU_MODEL=max|EPYC|Skylake-Server|...: the test guests'
# machine type and CPU model (orchestrator/profile.py); q35 and max by default.
ifneq ($(MACHINE),)
export HVSD_MACHINE := $(MACHINE)
endif
ifneq ($(CPU_MODEL),)
export HVSD_CPU_MODEL := $(CPU_MODEL)
endif

# GUEST_KERNEL=6.1|7.2: the test guest's kernel, the image's own (6.1, the
# default) or its KVM host's (7.2, whose probe module make kvm-modules builds).
ifneq ($(GUEST_KERNEL),)
export HVSD_GUEST_KERNEL := $(GUEST_KERNEL)
GUEST_KERNEL_DEPS := $(if $(filter 6.1,$(GUEST_KERNEL)),,kvm-modules)
endif

# SERIES=fixes,signal-event-direct: build and test a prefix of the QEMU stack
# (qemu-patches/SERIES) instead of all of it; its build and manifest are its
# own (qemu-series-<last>.json), read by the harness through HVSD_SERIES.
ifneq ($(SERIES),)
export SERIES
export HVSD_SERIES := $(SERIES)
endif

# SANITIZE=1: build and run the QEMU built with ASan and UBSan (qemu-asan.json)
# instead of the normal one; the harness reads HVSD_SANITIZE. Its test logs go
# to test-logs/sanitize/.
ifeq ($(SANITIZE),1)
export HVSD_SANITIZE := 1
SANITIZE_LOGS := --hvsd-logs=test-logs/sanitize
endif

.PHONY: help setup host venv qemu qemu-stock image kvm-modules kvm-modules-smoke test test-kvm test-unit demo fuzz \
        bench-boot bench-signal stress mutate \
        qemu-dev qemu-export series-export series-check-upstream check-series lint clean distclean

help:
	@echo "make demo         build everything needed, boot a guest, show what it does"
	@echo "make test         build everything needed, run all tests under TCG (PYTEST_ARGS=..., JOBS=)"
	@echo "  MACHINE=pc CPU_MODEL=EPYC  with test, test-kvm: the guests' machine type and CPU model"
	@echo "make test-kvm     the KVM leg: host KVM if usable, else nested KVM in a TCG guest"
	@echo "make fuzz         random calls checked against the contract (SEED=, CASES=)"
	@echo "make bench-boot   boot-to-SSH time against kernel-to-init time"
	@echo "make bench-signal per-call cost of each signalling path (CALLS=, RUNS=)"
	@echo "make stress       racing vCPUs on one clear flag: 0 lost, 0 doubled (CPUS=4,8 TRANSITIONS=20000; SIGNALS=N: N calls instead)"
	@echo "make mutate       build each bug in qemu-patches/mutations/, report which tests kill it (MUTATIONS=01,04)"
	@echo "make qemu | image build the patched QEMU / the guest image into the cache"
	@echo "make qemu-stock   the same base without the series (migration across versions)"
	@echo "  SANITIZE=1      with qemu, test, fuzz: the QEMU built with ASan and UBSan (see README)"
	@echo "make kvm-modules  kvm.ko, kvm-intel.ko, kvm-amd.ko for the image's kernel, with kvm-patches/"
	@echo "make kvm-modules-smoke  load them in a TCG guest, run KVM's hyperv_features selftest (STOCK=1)"
	@echo "make qemu-dev     git worktree ./qemu-dev with the series as commits"
	@echo "make qemu-export  write ./qemu-dev's commits back to qemu-patches/"
	@echo "make series-check-upstream QEMU_UPSTREAM=<qemu.git>  Fixes: ids from its history, apply and build there"
	@echo "make series-export the series as mail (series-out/), signed off by you: see README"
	@echo "make check-series QEMU's checks: checkpatch, --disable-kvm/tcg, linux-user, avr, qtests, every patch"
	@echo "make lint         ruff over the Python code"

setup: host venv

# Debian packages (when root) and deb-src entries; a stamp makes it cheap.
host:
	@bash scripts/setup-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "venv: creating $(VENV) and installing the orchestrator"
	@$(PYTHON_BOOTSTRAP) -m venv $(VENV) || { echo "error: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
	@$(PY) -m pip install -q -e '.[dev]' >$(VENV)/pip.log 2>&1 \
		|| { echo "error: pip install failed; see $(VENV)/pip.log" >&2; exit 1; }
	@touch $@

# $(QEMU) set on the command line means: use that binary, build nothing.
qemu: setup
ifeq ($(QEMU),)
	@PYTHON=$(abspath $(PY)) SANITIZE=$(SANITIZE) bash scripts/build-qemu.sh build
endif

# The base without the series (the QEMU users run today), for migration
# across versions: qemu-stock.json.
qemu-stock: setup
	@PYTHON=$(abspath $(PY)) bash scripts/build-qemu.sh stock

image: setup
	@bash images/build-image.sh

# KVM modules for the image's kernel (its headers come from `make image`),
# from Debian's source of that kernel with kvm-patches/series applied.
kvm-modules: image
	@bash scripts/build-kvm-modules.sh

# Loads them in a TCG guest (emulated SVM) and runs KVM's hyperv_features
# selftest there; STOCK=1: the image's own modules instead.
kvm-modules-smoke: kvm-modules venv
	@$(PY) scripts/kvm-modules-smoke.py $(if $(STOCK),--stock)

# JOBS pytest-xdist workers, each with session guests of its own, a test file
# per worker at a time (module guests are shared within a file). Most of a
# test's time is a guest booting or waiting, so one more worker than cores.
JOBS ?= $(shell echo $$(( $$(nproc) + 1 )))
# qemu-stock: guest-tests/test_migration_versions.py moves guests between it
# and ours.
test: qemu qemu-stock image $(GUEST_KERNEL_DEPS)
	@$(PY) -m pytest $(if $(filter-out 0 1,$(JOBS)),-n $(JOBS) --dist loadfile) $(SANITIZE_LOGS) $(PYTEST_ARGS)

# The KVM leg: ACCEL=kvm where the host's KVM is usable, else ACCEL=nested-kvm
# (the test guest under KVM inside a TCG guest). Runs the `kvm_leg` selection:
# every test on the session Hyper-V guest (see README, "The KVM leg").
KVM_LEG_SELECT ?= kvm_leg
test-kvm: qemu qemu-stock image $(if $(filter patched,$(KVM_MODULES)),kvm-modules) $(GUEST_KERNEL_DEPS)
	@accel=$${ACCEL:-$$($(PY) -m orchestrator kvm-leg)} || exit 1; \
	ACCEL=$$accel $(PY) -m pytest -m "$(KVM_LEG_SELECT)" --hvsd-logs=test-logs/kvm $(PYTEST_ARGS)

test-unit: venv
	@$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)

demo: qemu image
	@$(PY) -m orchestrator demo

fuzz: qemu image
	@$(PY) -m orchestrator fuzz --seed $(or $(SEED),1) --cases $(or $(CASES),400)

bench-boot: qemu image
	@$(PY) -m orchestrator bench-boot --runs $(or $(RUNS),5)

bench-signal: qemu image
	@$(PY) -m orchestrator bench-signal --calls $(or $(CALLS),2000) --runs $(or $(RUNS),3)

stress: qemu image
	@$(PY) -m orchestrator stress --vcpu-counts $(or $(CPUS),4$(comma)8) \
		$(if $(SIGNALS),--signals $(SIGNALS),--transitions $(or $(TRANSITIONS),20000) --calls-per-round 1)

mutate: qemu image
	@$(PY) scripts/mutate.py

qemu-dev: setup
	@PYTHON=$(abspath $(PY)) bash scripts/build-qemu.sh dev

qemu-export:
	@bash scripts/build-qemu.sh export

# Fixes: ids from an upstream tree's history, then the series applied to that
# tree's HEAD and built there.
series-check-upstream: setup
	@PYTHON=$(abspath $(PY)) QEMU_UPSTREAM=$(QEMU_UPSTREAM) bash scripts/build-qemu.sh upstream-fixes
	@PYTHON=$(abspath $(PY)) QEMU_SRC=$(QEMU_UPSTREAM) bash scripts/build-qemu.sh build

series-export: setup
	@PYTHON=$(abspath $(PY)) bash scripts/build-qemu.sh mail

check-series: setup
	@PYTHON=$(abspath $(PY)) bash scripts/build-qemu.sh check

lint: venv
	@$(VENV)/bin/ruff check orchestrator guest-tests scripts
	@$(VENV)/bin/ruff format --check orchestrator guest-tests scripts

clean:
	rm -rf test-logs .pytest_cache

distclean: clean
	rm -rf $(VENV)
	@echo "the build cache is left alone: rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/hv-signal-direct"
