"""Ray job: `dwscan substitute`, same flags (`python -m dwscan.jobs.substitute --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("substitute")
