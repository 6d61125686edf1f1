"""The host's view of the guest's SynICs: x-query-synic over QMP, and the
SIEF pages it points at, read from guest memory."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import HarnessError
from orchestrator.qmp import Qmp
from orchestrator.synic_pages import decode_sief_page

PAGE_MASK = ~0xFFF
ENABLE = 1


@dataclass(frozen=True)
class SynicInfo:
    """One vCPU's SynIC as QEMU holds it."""

    vp_index: int
    scontrol: int
    siefp: int
    simp: int
    sints: tuple[int, ...]
    sief_mapped: bool
    sim_mapped: bool
    # Whether QEMU's HvCallSignalEventDirect handler is reachable from this
    # vCPU: always under TCG, under KVM only with a kernel that forwards 0x00C0.
    # None from a QEMU older than the series' patch that reports it, so that
    # older builds can still be driven (bisecting, before/after runs).
    signal_event_direct: bool | None

    @property
    def sief_gpa(self) -> int | None:
        return self.siefp & PAGE_MASK if self.siefp & ENABLE else None


class HostSynic:
    def __init__(self, qmp: Qmp) -> None:
        self.qmp = qmp

    def state(self) -> dict[int, SynicInfo]:
        """Every vCPU with a SynIC, by VP index (empty without hv-synic)."""
        return {
            info.vp_index: info
            for info in (
                SynicInfo(
                    vp_index=int(entry["vp-index"]),
                    scontrol=int(entry["scontrol"]),
                    siefp=int(entry["siefp"]),
                    simp=int(entry["simp"]),
                    sints=tuple(int(v) for v in entry["sint"]),
                    sief_mapped=bool(entry["sief-mapped"]),
                    sim_mapped=bool(entry["sim-mapped"]),
                    signal_event_direct=entry.get("signal-event-direct"),
                )
                for entry in self.qmp.execute("x-query-synic")
            )
        }

    def sief(self, vp: int) -> dict[int, frozenset[int]]:
        """The flags set in VP `vp`'s SIEF page, per SINT, found and read by the host."""
        info = self.state().get(vp)
        if info is None or info.sief_gpa is None or not info.sief_mapped:
            raise HarnessError(f"VP {vp} has no SIEF page mapped (x-query-synic: {info})")
        return decode_sief_page(self.qmp.read_phys(info.sief_gpa, 4096))
