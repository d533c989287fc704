"""flows.terminal: the heartbeat that keeps a terminal from falling silent while a command works."""

import io
import time

from rich.console import Console

from flows import terminal


def _screen(monkeypatch) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=screen, force_terminal=True, width=200))
    monkeypatch.setattr(terminal, "QUIET_SECONDS", 0.3)
    return screen


def _until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_quiet_terminal_hears_what_the_command_is_still_doing(monkeypatch):
    screen = _screen(monkeypatch)
    beat = terminal.Heartbeat()
    beat.start()
    try:
        beat.said("promoted: no champion yet; registering the new version of m in MLflow")
        assert _until(lambda: "still: registering the new version of m in MLflow (" in screen.getvalue())
    finally:
        beat.stop()


def test_no_line_while_the_progress_bar_moves_and_none_before_the_command_has_work(monkeypatch):
    screen = _screen(monkeypatch)
    beat = terminal.Heartbeat()
    beat.start()
    try:
        assert not _until(lambda: "still:" in screen.getvalue(), seconds=1.0)  # nothing said yet
        beat.paused = True
        beat.said("training")
        assert not _until(lambda: "still:" in screen.getvalue(), seconds=1.0)
        beat.paused = False
        assert _until(lambda: "still: training (" in screen.getvalue())
    finally:
        beat.stop()


def test_servers_get_no_heartbeat_only_commands_that_name_an_activity(monkeypatch):
    monkeypatch.setattr(terminal, "heartbeat", terminal.Heartbeat())
    terminal.set_up(False, terminal.Path("/dev/null"))  # every command; `fedrisk node serve` stops here
    assert terminal.heartbeat._thread is None
