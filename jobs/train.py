"""Ray job: `dwscan train`, same flags (`python -m dwscan.jobs.train --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("train")
