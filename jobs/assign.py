"""Ray job: `dwscan assign`, same flags (`python -m jobs.assign --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("assign")
