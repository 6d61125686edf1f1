"""The one exception type the harness raises for expected failures."""

from __future__ import annotations

from pathlib import Path


class HarnessError(Exception):
    """An expected failure: the CLI prints it as one line, never a traceback.

    `cause` says what went wrong in the user's terms; `log` names the file
    that holds the details, when there is one.
    """

    def __init__(self, cause: str, log: Path | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.log = log

    def __str__(self) -> str:
        if self.log is None:
            return self.cause
        return f"{self.cause}; see {self.log}"
