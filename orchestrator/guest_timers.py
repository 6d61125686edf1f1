"""What a Linux guest's own timers say: the ticks of its Hyper-V clockevent
(a synthetic timer in direct mode, "HVS" in /proc/interrupts)."""

from __future__ import annotations

from orchestrator.probe import GuestShell


def linux_stimer_interrupts(guest: GuestShell, cpus: int) -> int:
    """Linux's count of its stimer0 clockevent's interrupts, summed over `cpus` CPUs."""
    for line in guest.run("cat /proc/interrupts", check=True).out.splitlines():
        if line.strip().startswith("HVS:"):
            return sum(int(field) for field in line.split()[1 : 1 + cpus])
    raise AssertionError("no HVS line in /proc/interrupts: Linux does not tick on a stimer")
