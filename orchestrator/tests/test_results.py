"""Results files and their plots, from made-up results: what is written, that
each verb draws, and that `plot` puts several accelerators in one drawing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator import plots, results
from orchestrator.cli import main
from orchestrator.errors import HarnessError

IDENTITY = {"accel": "tcg", "qemu": {"binary": "/q", "series_length": 40, "series_hash": "ab"}}


def bench_signal_data(scale: float) -> list[dict[str, Any]]:
    def cost(label: str, fast: bool, values: list[float]) -> dict[str, Any]:
        median = sorted(values)[len(values) // 2]
        return {
            "label": label,
            "fast": fast,
            "status": 0,
            "ns_per_call": values,
            "median_ns": median,
        }

    return [
        cost("unknown call code, memory (baseline)", False, [80 * scale, 82 * scale, 79 * scale]),
        cost("unknown call code, fast (baseline)", True, [70 * scale, 71 * scale, 75 * scale]),
        cost("SignalEventDirect, memory", False, [100 * scale, 104 * scale, 99 * scale]),
    ]


DATA: dict[str, Any] = {
    "bench-signal": bench_signal_data(1.0),
    "bench-boot": [{"accel": "tcg", "to_init": 1.5, "to_ssh": 3.2, "ratio": 2.1}] * 2,
    "fuzz": {
        "seed": 1,
        "cases": 30,
        "failed": 1,
        "rows": {"C1": 10, "D7": 20},
        "pairs": ["C1>D1"],
        "failures": [{"row": "D7", "case": "direct ...", "problem": "no interrupt"}],
    },
    "stress": [
        {
            "cpus": 4,
            "signals": 600,
            "newly_signaled": 10,
            "transitions": 20,
            "irqs": 20,
            "lost": 0,
            "doubled": 0,
            "qemu": "running",
            "problems": [],
        }
    ],
}


@pytest.mark.parametrize("verb", sorted(DATA))
def test_each_verb_writes_its_results_and_a_plot(tmp_path: Path, verb: str) -> None:
    files = results.save(tmp_path, verb, {"p": 1}, IDENTITY, DATA[verb])
    saved = json.loads(files.json.read_text())
    assert saved["verb"] == verb and saved["accel"] == "tcg" and saved["params"] == {"p": 1}
    assert saved["qemu"]["series_length"] == 40
    assert saved["data"] == DATA[verb]
    svg = files.plot.read_text()
    assert files.plot.name == f"{verb}.svg" and "<svg" in svg
    assert files.line() == f"results: {files.json}, plot: {files.plot}"


def test_the_plot_verb_puts_each_accelerator_in_a_panel_of_one_drawing(tmp_path: Path) -> None:
    tcg = results.save(tmp_path / "tcg", "bench-signal", {}, IDENTITY, bench_signal_data(1.0))
    kvm_identity = {**IDENTITY, "accel": "nested-kvm"}
    kvm = results.save(tmp_path / "kvm", "bench-signal", {}, kvm_identity, bench_signal_data(3.0))
    out = tmp_path / "both.svg"
    assert main(["plot", str(tcg.json), str(kvm.json), "--out", str(out)]) == 0
    svg = out.read_text()
    assert "tcg: " in svg and "nested-kvm: " in svg  # the panel titles
    assert svg.count("1.25x") == 2  # 100 ns over 80 ns, in both panels


def test_plot_refuses_mixed_verbs_and_files_that_are_not_results(tmp_path: Path) -> None:
    fuzz = results.save(tmp_path / "f", "fuzz", {}, IDENTITY, DATA["fuzz"])
    boot = results.save(tmp_path / "b", "bench-boot", {}, IDENTITY, DATA["bench-boot"])
    with pytest.raises(HarnessError, match="one verb at a time"):
        plots.draw([results.load(fuzz.json), results.load(boot.json)], tmp_path / "x.svg")
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    with pytest.raises(HarnessError, match="not a results file"):
        results.load(junk)
    assert main(["plot", str(junk)]) == 2
