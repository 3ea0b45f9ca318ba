"""Ray job: `dwscan run`, same flags (`python -m jobs.run --help`)."""

from jobs._entry import run_command

if __name__ == "__main__":
    run_command("run")
