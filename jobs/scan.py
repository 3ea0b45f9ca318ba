"""Ray job: `dwscan scan`, same flags (`python -m dwscan.jobs.scan --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("scan")
