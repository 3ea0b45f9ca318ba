import subprocess
import sys

import pytest

from dwscan.cli import build_parser, main
from dwscan.cli.flags import specs_from_args


@pytest.mark.parametrize("argv", [["dwscan", "--help"],
                                  [sys.executable, "-m", "dwscan.jobs.run", "--help"]])
def test_the_console_script_and_a_job_entrypoint_print_help(argv):
    """The two ways in from outside, as processes; every command's help is checked in process
    below (a process is slower to start)."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and ("--out" in out.stdout or "query" in out.stdout)


_HEAVY = ("torch", "matplotlib.pyplot", "faiss", "ray")


def test_the_command_line_imports_no_heavy_library_before_a_command_needs_one():
    """Building the parser (every command's flags and their defaults) and parsing `query` loads
    neither torch, pyplot, FAISS nor Ray: each `dwscan` process would pay seconds to start.
    A fresh process, since this one has imported them all by now."""
    code = ("import sys, dwscan.cli\n"
            "dwscan.cli.build_parser().parse_args(['query', 'SELECT 1', '--out', 'x'])\n"
            f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_command_has_help(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"run", "scan", "rescan", "train", "assign", "report", "query",
                             "substitute", "synth"}
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: dwscan {command}") and "--out" in text, command


def test_model_id_names_the_checkpoint_just_before_it(tmp_path):
    args = build_parser().parse_args(["run", "--checkpoint", "a.pth", "--model-id", "first",
                                      "--checkpoint", str(tmp_path / "b.safetensors")])
    specs = specs_from_args(args)
    assert [(s.model_id, s.source) for s in specs] == [
        ("first", "a.pth"), ("b", str(tmp_path / "b.safetensors"))]


def test_no_checkpoint_means_the_demo_zoo():
    specs = specs_from_args(build_parser().parse_args(["run"]))
    assert [s.model_id for s in specs] == [f"efficientnet-lite{i}" for i in range(3)]
    assert [s.accuracy_key for s in specs] == [f"tf_efficientnet_lite{i}.in1k" for i in range(3)]


@pytest.mark.parametrize("argv", [["run", "--model-id", "x"],
                                  ["run", "--checkpoint", "a", "--model-id", "x", "--model-id", "y"]])
def test_a_model_id_without_its_checkpoint_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "--model-id must follow" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_fewer_than_one_seed_is_a_usage_error(command, seeds, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([command, "--out", str(out), "--seeds", seeds])
    assert info.value.code == 2
    assert f"argument --seeds: must be at least 1, not {seeds}" in capsys.readouterr().err
    assert not out.exists()


def test_repeated_model_ids_are_refused():
    args = build_parser().parse_args(["run", "--checkpoint", "x/m.pth", "--checkpoint", "y/m.pth"])
    with pytest.raises(SystemExit, match="must be unique"):
        specs_from_args(args)


def test_an_unreadable_accuracy_table_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--accuracy-csv", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()  # nothing scanned, no Ray started


def test_with_gpu_train_workers_counts_gpus_one_worker_each():
    from dwscan.cli.flags import run_options
    from dwscan.executor.ray_executor import train_scaling

    options = run_options(build_parser().parse_args(["run", "--gpu", "--train-workers", "2"]))
    assert (options.use_gpu, options.train_workers) == (True, 2)
    scaling = train_scaling(options.train_workers, options.use_gpu)
    assert scaling.num_workers == 2 and scaling._resources_per_worker_not_none["GPU"] == 1
    assert scaling.total_resources["GPU"] == 2
    default = run_options(build_parser().parse_args(["run"]))
    assert (default.use_gpu, default.train_workers) == (False, 1)
    assert train_scaling(default.train_workers, default.use_gpu).total_resources.get("GPU", 0) == 0
    with pytest.raises(ValueError, match="at least 1"):
        train_scaling(0, True)


def test_the_model_timeout_flag_defaults_to_the_run_options_timeout():
    """The flag reads its default beside the read limits (no run driver to import for help);
    a run without the flag times models out as RunOptions does."""
    from dwscan.io.checkpoints import DEFAULT_MODEL_TIMEOUT
    from dwscan.run import RunOptions

    args = build_parser().parse_args(["scan"])
    assert args.model_timeout == DEFAULT_MODEL_TIMEOUT == RunOptions().model_timeout


def test_the_training_line_names_the_seeds_left_out_with_their_losses():
    from dwscan.cli.scan import format_training_record

    record = {"seeds": [7000, 7001, 7002, 7003], "steps": 1500, "epochs": 2.0,
              "n_kernels": 1000, "train_seconds": 3.0, "stop_reason": "converged",
              "final_loss": 0.35, "member_losses": [0.3, 0.31, 0.29, 0.5], "left_out": [3]}
    line = format_training_record(5, record)
    assert "final loss 0.3000 (mean of the kept seeds)" in line
    assert line.endswith("; left out, did not train: seed 7003 (loss 0.500), against the "
                         "seeds' median 0.305")
    plain = format_training_record(5, {**record, "left_out": []})
    assert "left out" not in plain and "final loss 0.3500 (mean of seeds)" in plain
