"""Plots of saved results (orchestrator/results.py), one SVG per drawing.

bench-signal: each path's per-call cost, run by run, against the rejected
call of the same form, one panel per accelerator when several results are
given. bench-boot: boot to SSH against kernel to init, per run. fuzz: cases
per contract row, failures in red. stress: per vCPU count, NewlySignaled=1
answers, clear-to-set transitions and interrupts, lost and doubled.

matplotlib is imported only here, when drawing, with a backend that needs
no display."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import HarnessError

Payload = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    # Text stays text in the SVG: smaller, and searchable
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def _bench_signal(payloads: Sequence[Payload], out: Path) -> None:
    plt = _pyplot()
    count = len(payloads)
    paths = max(len(p["data"]) for p in payloads)
    fig, axes = plt.subplots(
        count, 1, figsize=(10, 0.45 * paths * count + 1.2 * count), squeeze=False
    )
    for ax, payload in zip(axes[:, 0], payloads, strict=True):
        costs = payload["data"]
        baselines = {c["fast"]: c["median_ns"] for c in costs if c["label"].endswith("(baseline)")}
        for row, cost in enumerate(reversed(costs)):
            values = cost["ns_per_call"]
            ax.scatter(values, [row] * len(values), s=12, alpha=0.6, color="tab:blue")
            ax.scatter([cost["median_ns"]], [row], marker="|", s=300, color="black")
            ratio = cost["median_ns"] / baselines[cost["fast"]]
            ax.annotate(
                f" {ratio:.2f}x", (max(values), row), va="center", fontsize=8, color="dimgray"
            )
        for fast, ns in baselines.items():
            ax.axvline(ns, linestyle="--", color="tab:red" if fast else "tab:orange", lw=1)
        ax.set_yticks(range(len(costs)), [c["label"] for c in reversed(costs)], fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.12)
        ax.set_xlabel("ns per call (log); dashed: rejected call, memory / fast")
        params = payload.get("params", {})
        ax.set_title(
            f"{payload.get('accel', '?')}: {params.get('calls', '?')} calls per run, "
            f"{params.get('runs', '?')} runs; ratio of the median to its form's rejected call",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _bench_boot(payloads: Sequence[Payload], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for payload in payloads:
        samples = payload["data"]
        runs = range(1, len(samples) + 1)
        accel = payload.get("accel", "?")
        ax.plot(runs, [s["to_ssh"] for s in samples], "o-", label=f"{accel}: boot to SSH")
        ax.plot(runs, [s["to_init"] for s in samples], "s--", label=f"{accel}: kernel to init")
    ax.set_xlabel("run")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("boot to SSH against kernel to init", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _fuzz(payloads: Sequence[Payload], out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(payloads), 1, figsize=(9, 3.2 * len(payloads)), squeeze=False)
    for ax, payload in zip(axes[:, 0], payloads, strict=True):
        data = payload["data"]
        rows = sorted(data["rows"])
        failed: dict[str, int] = {}
        for failure in data["failures"]:
            failed[failure["row"]] = failed.get(failure["row"], 0) + 1
        ax.bar(
            rows, [data["rows"][r] for r in rows], color="tab:green", label="as the contract says"
        )
        ax.bar(rows, [failed.get(r, 0) for r in rows], color="tab:red", label="not")
        ax.set_ylabel("cases")
        ax.legend(fontsize=8)
        ax.set_title(
            f"{payload.get('accel', '?')}: seed {data['seed']}, {data['cases']} cases, "
            f"{data['failed']} not as the contract says",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _stress(payloads: Sequence[Payload], out: Path) -> None:
    plt = _pyplot()
    reports = [(p.get("accel", "?"), r) for p in payloads for r in p["data"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    kinds = ("newly_signaled", "transitions", "irqs", "lost", "doubled")
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        bars = ax.bar(
            [n + i * width for n in range(len(reports))],
            [r[kind] for _, r in reports],
            width,
            label=kind.replace("_", " "),
        )
        ax.bar_label(bars, fontsize=7)  # a 0 for lost or doubled shows as a number
    ax.set_xticks(
        [n + 0.4 - width / 2 for n in range(len(reports))],
        [f"{accel}, {r['cpus']} vCPUs\n{r['signals']} calls" for accel, r in reports],
        fontsize=8,
    )
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title("racing vCPUs: each enabled round one transition and one interrupt", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


DRAWERS: dict[str, Callable[[Sequence[Payload], Path], None]] = {
    "bench-signal": _bench_signal,
    "bench-boot": _bench_boot,
    "fuzz": _fuzz,
    "stress": _stress,
}


def draw(payloads: Sequence[Payload], out: Path) -> None:
    """One drawing of results of one verb (several: one per accelerator)."""
    verbs = {payload["verb"] for payload in payloads}
    if len(verbs) != 1:
        raise HarnessError(f"results of one verb at a time, got {sorted(verbs)}")
    verb = verbs.pop()
    if verb not in DRAWERS:
        raise HarnessError(f"no plot for {verb} results")
    DRAWERS[verb](payloads, out)
