"""Ray job: `dwscan report`, same flags (`python -m jobs.report --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("report")
