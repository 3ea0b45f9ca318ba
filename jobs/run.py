"""The whole scan as a Ray job; the same flags as `dwscan run`.

    ray job submit --working-dir . -- python -m jobs.run --out /shared/dwscan-out

Inside a job RAY_ADDRESS is set, so the run joins the cluster the job was submitted to.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
