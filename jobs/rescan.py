"""Ray job: `dwscan rescan`, same flags (`python -m jobs.rescan --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("rescan")
