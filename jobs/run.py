"""Ray job: `dwscan run`, same flags (`python -m dwscan.jobs.run --help`)."""

from dwscan.jobs._entry import run_command

if __name__ == "__main__":
    run_command("run")
