"""`[n/N]` progress on stderr: rewritten in place on a terminal, a line
every tenth of the way otherwise (CI logs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    what: str
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    _last_tenth: int = -1

    def __call__(self, done: int, total: int) -> None:
        line = f"[{done}/{total}] {self.what}"
        if self.stream.isatty():
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=self.stream, flush=True)
            return
        tenth = done * 10 // max(total, 1)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            print(line, file=self.stream, flush=True)
