"""Progress lines: every tenth off a terminal, in place on one."""

from __future__ import annotations

import io

from orchestrator.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_each_tenth_of_the_way() -> None:
    out = io.StringIO()
    progress = Progress("cases", out)
    for done in range(0, 1001, 50):
        progress(done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[0/1000] cases" and lines[-1] == "[1000/1000] cases"
    assert len(lines) == 11


def test_on_a_terminal_one_line_rewritten() -> None:
    out = Terminal()
    progress = Progress("cases", out)
    progress(1, 2)
    progress(2, 2)
    assert out.getvalue() == "\r[1/2] cases\r[2/2] cases\n"
