"""A scenario's results as a file beside its text: `results.json` in the
run's log directory, with what produced them (verb, parameters, accelerator,
QEMU build), and a plot of them drawn from that file (orchestrator/plots.py),
so that `plot` can redraw or combine saved runs later."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import plots
from orchestrator.errors import HarnessError
from orchestrator.vm import Vm

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class ResultFiles:
    json: Path
    plot: Path

    def line(self) -> str:
        return f"results: {self.json}, plot: {self.plot}"


def vm_identity(vm: Vm) -> dict[str, Any]:
    """The accelerator and QEMU build a VM ran on, as the results record them."""
    qemu = vm.qemu
    return {
        "accel": vm.accel.name if vm.accel else "tcg",
        "qemu": {
            "binary": str(qemu.binary) if qemu else None,
            "series_length": qemu.series_length if qemu else None,
            "series_hash": qemu.series_hash if qemu else None,
        },
    }


def save(
    log_dir: Path, verb: str, params: dict[str, Any], identity: dict[str, Any], data: Any
) -> ResultFiles:
    """Writes the results and their plot into `log_dir`."""
    payload = {
        "verb": verb,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
        **identity,
        "data": data,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / RESULTS_FILE
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    plot = log_dir / f"{verb}.svg"
    plots.draw([payload], plot)
    return ResultFiles(path, plot)


def load(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a results file ({exc})") from None
    if not isinstance(payload, dict) or "verb" not in payload or "data" not in payload:
        raise HarnessError(f"{path}: not a results file (no verb or data)")
    return payload
