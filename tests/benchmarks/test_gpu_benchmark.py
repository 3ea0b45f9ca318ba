"""The GPU benchmark script (benchmarks/gpu.py) runs here in its CPU-only smoke mode, so that the
one call on a lent GPU machine finds a working script."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_the_smoke_run_writes_its_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "gpu.md").read_text()
    assert table.strip() in out.stdout
    rows = [line for line in table.splitlines() if line.startswith("| train") or
            line.startswith("| assign")]
    assert len(rows) == 2 and "20 steps, batch 256" in rows[0] and "200,000 x 16" in rows[1]
    assert "planted on the curve: worst cosine" in rows[0]


def test_the_script_imports_neither_ray_nor_faiss():
    """The lent GPU machines have neither; FAISS is imported only when it is there."""
    code = ("import sys, benchmarks.gpu, benchmarks.__main__; "
            "print(sorted(m for m in ('ray', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_gpu_script_assigners_agree_on_the_cpu(monkeypatch):
    """The torch path (its GPU fallback when FAISS is absent) and numpy and FAISS give one
    answer; run here on the CPU."""
    monkeypatch.setenv("DWSCAN_FAISS_DEVICE", "cpu")  # the FAISS assigner sets it; restored after
    from benchmarks.gpu import _assigner
    from dwscan.method.preprocess import centre_and_normalise

    rng = np.random.default_rng(0)
    templates, _ = centre_and_normalise(rng.normal(size=(16, 49)))
    kernels, _ = centre_and_normalise(rng.normal(size=(5000, 49)))
    expected = (kernels @ templates.T).argmax(axis=1)
    for backend in ("numpy", "torch", "faiss"):
        np.testing.assert_array_equal(_assigner("cpu", backend, templates)(kernels), expected)
