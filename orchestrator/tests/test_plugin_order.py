"""The plugin runs files holding a `long` test first, longest first, so that
xdist's workers start the long waits early; other files keep their order."""

from __future__ import annotations

import pytest


def test_files_with_long_tests_come_first_longest_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="def test_quick(): pass",
        test_b="""
            import pytest

            def test_first_in_b(): pass

            @pytest.mark.long(seconds=10)
            def test_waits(): pass
        """,
        test_c="""
            import pytest

            pytestmark = pytest.mark.long(seconds=50)

            def test_whole_file_waits(): pass
        """,
        test_d="def test_quick_too(): pass",
    )
    result = pytester.runpytest("-p", "orchestrator.plugin", "--collect-only", "-q")
    order = [line for line in result.outlines if "::" in line]
    assert order == [
        "test_c.py::test_whole_file_waits",
        "test_b.py::test_first_in_b",
        "test_b.py::test_waits",
        "test_a.py::test_quick",
        "test_d.py::test_quick_too",
    ]
