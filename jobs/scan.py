"""Ray job: `dwscan scan`, same flags (`python -m jobs.scan --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("scan")
