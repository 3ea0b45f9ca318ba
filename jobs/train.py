"""Ray job: `dwscan train`, same flags (`python -m jobs.train --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("train")
