"""What a call answers on this accelerator, where a stock KVM answers it itself.

Under TCG every Hyper-V hypercall reaches QEMU's handler. Under KVM the host
kernel handles the hypercall instruction first; a stock kernel does not know
HvCallSignalEventDirect (0x00C0) and answers it in the kernel, with no flag set
and no interrupt, never exiting to QEMU. A kernel that forwards 0x00C0 to
userspace (KVM_MODULES=patched) answers as QEMU does, so as TCG does.
"""

from __future__ import annotations

from orchestrator.accel import Accel, kvm_kind
from orchestrator.contract import HvStatus

# Linux's HV_HYPERCALL_RSVD_MASK (bits 31:27, 47:44, 63:60): a control word
# with any of these is refused before the call code is looked at.
KVM_RESERVED_CONTROL_BITS = (0x1F << 27) | (0xF << 44) | (0xF << 60)


def direct_reaches_qemu(accel: Accel) -> bool:
    """Whether HvCallSignalEventDirect gets to QEMU's handler on `accel`."""
    return not accel.is_kvm or kvm_kind() == "patched"


def stock_kvm_direct_status(control: int) -> HvStatus:
    """What a stock KVM answers to 0x00C0 with this control word, in the kernel."""
    if control & KVM_RESERVED_CONTROL_BITS:
        return HvStatus.INVALID_HYPERCALL_INPUT
    return HvStatus.INVALID_HYPERCALL_CODE


def expected_direct_status(accel: Accel, qemu_status: int, control: int) -> int:
    """The status a 0x00C0 call must return: QEMU's (the contract's) where the
    call reaches QEMU, else the stock kernel's own answer."""
    if direct_reaches_qemu(accel):
        return qemu_status
    return stock_kvm_direct_status(control)
