"""Tasks whose worker Ray loses run again (counted); a task that raises does not."""

import json
import subprocess
import sys

import pytest

from tests.helpers import shared_ray_env

# Run in a driver of its own, joined to the tests' shared Ray: a worker killed by SIGKILL is what
# a lost node leaves its tasks with (Ray's WorkerCrashedError / NodeDiedError).
DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
from dwscan.executor import ray_executor

marks = Path(sys.argv[1])

def task(i):
    if i in (0, 3) and not (marks / str(i)).exists():  # dies the first time only
        (marks / str(i)).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if i == 1:
        raise ValueError("a bad file")  # the model's own error
    if i == 4:  # dies every time
        os.kill(os.getpid(), signal.SIGKILL)
    return 10 * i

ray_executor.init_ray()
results = ray_executor.run_tasks(task, [(i,) for i in (0, 1, 2, 4)], desc="tasks")
after_run_tasks = ray_executor.system_failure_retries()
at_once = ray_executor.run_tasks_at_once(task, [(3,), (2,)], what="training run")
try:
    ray_executor.run_tasks_at_once(task, [(1,)], what="training run")
    raised = None
except RuntimeError as error:
    raised = str(error)
print(json.dumps({"results": [r if isinstance(r, int) else type(r).__name__ for r in results],
                  "after_run_tasks": after_run_tasks, "at_once": at_once, "raised": raised,
                  "retries": ray_executor.system_failure_retries(),
                  "tries": sorted(p.name for p in marks.iterdir())}))
"""


@pytest.mark.slow
def test_a_lost_worker_is_retried_and_counted_and_a_raising_task_is_not(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    done = subprocess.run([sys.executable, "-c", DRIVER, str(marks)], env=shared_ray_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # 0 came back on its second try; 1 raised once (not retried); 4 died 1 + 3 times and
    # gives Ray's error in its place
    assert got["results"][:3] == [0, "ValueError", 20]
    assert got["results"][3] in ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError")
    assert got["after_run_tasks"] == 1 + 3
    assert got["at_once"] == [30, 20] and got["retries"] == 1 + 3 + 1
    assert got["raised"] == "training run failed: a bad file"  # raised, not retried
    assert got["tries"] == ["0", "3"]
    assert done.stderr.count("its worker or node was lost") == 5
