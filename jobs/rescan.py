"""Ray job: `dwscan rescan`, same flags (`python -m dwscan.jobs.rescan --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("rescan")
