"""Ray job: `dwscan assign`, same flags (`python -m dwscan.jobs.assign --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("assign")
