from pathlib import Path

import pytest

from orchestrator.console import ConsoleWatch
from orchestrator.errors import HarnessError


def test_panic_line_is_reported_with_the_log(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watch = ConsoleWatch(log)
    watch.check_panic()  # no log yet: nothing to say
    log.write_text("booting\n[    2.1] Kernel panic - not syncing: VFS: Unable to mount\n")
    with pytest.raises(HarnessError) as err:
        watch.check_panic()
    assert "guest kernel panicked: [    2.1] Kernel panic - not syncing" in str(err.value)
    assert str(log) in str(err.value)


def test_marker_split_across_reads_is_still_seen(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("rc done\nServer list")
    watch = ConsoleWatch(log)
    assert not watch.sshd_listening()
    with log.open("a") as out:
        out.write("ening on 0.0.0.0 port 22.\n")
    assert watch.sshd_listening()


def test_mark_forgets_the_previous_boot(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("Server listening on 0.0.0.0 port 22.\n")
    watch = ConsoleWatch(log)
    assert watch.sshd_listening()
    watch.mark()
    assert not watch.sshd_listening()
    with log.open("a") as out:
        out.write("Server listening on 0.0.0.0 port 22.\n")
    assert watch.sshd_listening()
