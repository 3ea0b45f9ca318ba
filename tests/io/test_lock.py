"""One run per output folder: a live holder refuses others, a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dwscan.cli import main
from dwscan.io.lock import LOCK_NAME, OutputLocked, output_lock

HOLD = """
import sys, time
from dwscan.io.lock import output_lock
with output_lock(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def live_holder(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_refuses_a_second_run(tmp_path, live_holder, capsys):
    with pytest.raises(OutputLocked, match=f"pid {live_holder.pid}"):
        with output_lock(tmp_path):
            pass
    # the CLI says so, exit status 3
    (tmp_path / "models.parquet").touch()
    (tmp_path / "templates.parquet").touch()
    assert main(["report", "--out", str(tmp_path)]) == 3
    assert "in use by another run" in capsys.readouterr().err


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, live_holder, caplog):
    live_holder.kill()
    live_holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL: no cleanup ran
    with output_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] != live_holder.pid
    assert "stale lock" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_a_recycled_pid_is_not_the_holder(tmp_path):
    """Same pid, different process start time: the holder is gone."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "start": "1", "since": "then"}))
    with output_lock(tmp_path):
        pass


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({
        "host": "some-other-node", "pid": 1, "start": "1", "since": "2026-01-01T00:00:00Z"}))
    with pytest.raises(OutputLocked, match=f"delete {tmp_path / LOCK_NAME}"):
        with output_lock(tmp_path):
            pass


def test_an_empty_lock_file_from_a_crash_is_stale(tmp_path):
    path = tmp_path / LOCK_NAME
    path.touch()
    old = time.time() - 60
    os.utime(path, (old, old))
    with output_lock(tmp_path):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
