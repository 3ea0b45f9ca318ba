"""What every job entrypoint does: run one `dwscan` command with the job's arguments.

    ray job submit -- python -m dwscan.jobs.<command> --out /shared/dwscan-out ...

Inside a job RAY_ADDRESS is set, so the command joins the cluster the job was submitted to.
"""

import sys

from dwscan.cli import main


def run_command(command: str) -> None:
    sys.exit(main([command, *sys.argv[1:]]))
