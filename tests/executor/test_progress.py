"""Stage progress: live bars on a terminal, a few plain lines anywhere else."""

import io

from dwscan.executor.progress import StageProgress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end_never_a_redraw():
    log, clock = io.StringIO(), _Clock()
    with StageProgress(1000, "extract", stream=log, clock=clock) as progress:
        for i in range(1000):
            clock.now += 0.001
            progress.update(1, f"ok {i + 1}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("extract: 100/1000 models (10%) in 0.1s; ok 100")
    assert lines[-1].startswith("extract: 1000/1000 models (100%)") and lines[-1].endswith("ok 1000")


def test_a_slow_stage_gets_a_line_every_interval_with_progress():
    log, clock = io.StringIO(), _Clock()
    progress = StageProgress(1000, "assign", stream=log, clock=clock, interval=10)
    for _ in range(30):  # 30 models, 4 s each: 120 s, 3% of the stage
        clock.now += 4
        progress.update()
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10  # at 12, 24, ..., 120 s
    assert lines[-1] == "assign: 30/1000 models (3%) in 120.0s"


def test_a_terminal_gets_tqdms_live_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with StageProgress(3, "extract", stream=screen) as progress:
        for _ in range(3):
            progress.update(1, "ok")
    assert "\r" in screen.getvalue() and "3/3" in screen.getvalue()
