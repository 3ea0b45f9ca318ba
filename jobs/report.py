"""Ray job: `dwscan report`, same flags (`python -m dwscan.jobs.report --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("report")
