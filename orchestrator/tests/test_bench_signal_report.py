"""bench-signal's report, without a guest: each path against its form's baseline."""

from __future__ import annotations

from orchestrator.bench_signal import PATHS, PathCost, report


def test_each_path_is_set_against_the_baseline_of_its_form() -> None:
    costs = [
        PathCost("unknown call code, memory (baseline)", False, 2, (100.0, 120.0, 110.0)),
        PathCost("unknown call code, fast (baseline)", True, 2, (200.0,)),
        PathCost("SignalEvent, event port, memory", False, 0, (165.0,)),
        PathCost("SignalEvent, event port, fast", True, 0, (300.0,)),
    ]
    lines = report(costs)
    assert lines[1].split()[-3:] == ["110", "1.00", "0ns"]
    assert lines[3].split()[-3:] == ["165", "1.50", "55ns"]
    assert lines[4].split()[-3:] == ["300", "1.50", "100ns"]


def test_every_form_measured_has_a_baseline() -> None:
    forms = {args.fast for _, args in PATHS}
    baselines = {args.fast for label, args in PATHS if label.endswith("(baseline)")}
    assert forms == baselines
