"""`python -m benchmarks.gpu`: the autoencoder and the assignment on one CUDA GPU against the
same machine's CPU, in one call of a few minutes (BENCHMARKS.md, "gpu"; target >= 10M kernels/s
per training epoch on one H100 or H200).

Needs only torch, numpy and this repository (no Ray, no FAISS): the lent GPU machines have no
Ray and cannot download. It imports Ray-free modules only (dwscan.method.autoencoder, .synthetic,
.preprocess) and FAISS only when it is importable. Steps:
  (a) a planted synthetic set (>= 2M 7x7 kernels: noisy copies of `planted_templates(7)` and
      random kernels); one CUDA run to convergence (kernels/s and how close the decoded template
      curve comes to each planted pattern), fixed-epoch CUDA runs for a sweep of batch sizes,
      and a fixed number of CPU steps at the CPU batch size (kernels/s, not convergence);
  (b) assignment of 10M kernels to their nearest of 16 templates: FAISS GPU if importable, else
      a torch matmul + argmax on the GPU, against the CPU (FAISS CPU if importable, else numpy);
  (c) the rows as a markdown table on stdout and in $OUT/gpu.md when $OUT is set.
`--smoke` runs small sizes on the CPU only, so that the script is tested without a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dwscan.method.autoencoder import AutoencoderConfig, batch_size_for, decode_sweep, train_autoencoder
from dwscan.method.preprocess import centre_and_normalise
from dwscan.testing.synthetic import noisy_copies, planted_templates

KERNEL_SIZE = 7
PLANTED_SHARE = 0.75  # the rest are random kernels: the background a zoo has
NOISE = 0.3  # noise norm relative to the pattern: cosine to it about 0.96
N_ASSIGN_TEMPLATES = 16
CHUNK = 1_000_000  # rows generated and assigned at a time, so memory stays bounded


@dataclass
class Sizes:
    train_kernels: int
    cpu_steps: int
    batch_sizes: tuple[int, ...]  # the CUDA sweep
    sweep_epochs: int
    assign_kernels: int
    max_steps: int  # of the convergence run


FULL = Sizes(train_kernels=2_000_000, cpu_steps=300, batch_sizes=(2048, 8192, 32768),
             sweep_epochs=2, assign_kernels=10_000_000, max_steps=20_000)
SMOKE = Sizes(train_kernels=20_000, cpu_steps=20, batch_sizes=(), sweep_epochs=1,
              assign_kernels=200_000, max_steps=100)


def log(message: str) -> None:
    print(f"[gpu benchmark] {message}", file=sys.stderr, flush=True)


def planted_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred unit-norm kernels, PLANTED_SHARE of them noisy copies of the planted patterns,
    the rest random; made in chunks. Returns (kernels, planted templates)."""
    rng = np.random.default_rng(seed)
    templates = planted_templates(KERNEL_SIZE)
    n_planted = int(n * PLANTED_SHARE)
    chunks = []
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        planted = max(0, min(rows, n_planted - start))
        copies, _ = noisy_copies(templates, -(-planted // len(templates)), NOISE, rng)
        random_rows = rng.standard_normal((rows - planted, templates.shape[1]), dtype=np.float32)
        chunks.append(centre_and_normalise(np.concatenate([copies[:planted], random_rows]))[0])
    kernels = np.concatenate(chunks)
    return kernels[rng.permutation(len(kernels))], templates


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_training(kernels: np.ndarray, config: AutoencoderConfig, device: str):
    """(model, training log, seconds, kernels/s): rows seen per second of the whole run,
    checks included, the device's queue drained before the clock stops."""
    synchronise(device)
    start = time.perf_counter()
    model, training = train_autoencoder(kernels, config, device=device)
    synchronise(device)
    seconds = time.perf_counter() - start
    return model, training, seconds, training.steps * batch_size_for(config, device) / seconds


def curve_agreement(model, templates: np.ndarray) -> tuple[float, float]:
    """(worst, mean) over the planted patterns of the best cosine any point of the decoded
    template curve reaches to that pattern: whether the 1-D code found each of them."""
    _, curve = decode_sweep(model, 1024)
    curve = curve / np.maximum(np.linalg.norm(curve, axis=1, keepdims=True), 1e-12)
    best = (templates @ curve.T).max(axis=1)
    return float(best.min()), float(best.mean())


def training_rows(sizes: Sizes, devices: list[str], seed: int) -> list[dict]:
    log(f"making {sizes.train_kernels:,} planted 7x7 kernels")
    kernels, templates = planted_set(sizes.train_kernels, seed)
    rows = []
    for device in devices:
        # warm-up: CUDA context and cuBLAS handles, torch's lazy CPU initialisation
        train_autoencoder(kernels[:50_000], AutoencoderConfig(epochs=1), device=device)
        if device == "cuda":
            log("CUDA: training to convergence")
            config = AutoencoderConfig(seed=seed, max_steps=sizes.max_steps)
            model, training, seconds, rate = timed_training(kernels, config, device)
            worst, mean = curve_agreement(model, templates)
            rows.append(_training_row(device, f"to convergence, batch {config.gpu_batch_size}",
                                      training, seconds, rate,
                                      f"{training.stop_reason}; planted patterns on the curve: "
                                      f"worst cosine {worst:.3f}, mean {mean:.3f}"))
            for batch in sizes.batch_sizes:
                log(f"CUDA: {sizes.sweep_epochs} epochs at batch {batch}")
                config = AutoencoderConfig(seed=seed, epochs=sizes.sweep_epochs, gpu_batch_size=batch)
                _, training, seconds, rate = timed_training(kernels, config, device)
                rows.append(_training_row(device, f"{sizes.sweep_epochs} epochs, batch {batch}",
                                          training, seconds, rate, "batch size sweep"))
        else:
            log(f"CPU: {sizes.cpu_steps} steps")
            config = AutoencoderConfig(seed=seed, max_steps=sizes.cpu_steps,
                                       min_steps=sizes.cpu_steps + 1)
            model, training, seconds, rate = timed_training(kernels, config, device)
            note = "fixed steps (speed only)"
            if "cuda" not in devices:
                worst, mean = curve_agreement(model, templates)
                note += f"; planted on the curve: worst cosine {worst:.3f}, mean {mean:.3f}"
            rows.append(_training_row(device, f"{sizes.cpu_steps} steps, batch {config.batch_size}",
                                      training, seconds, rate, note))
    return rows


def _training_row(device: str, run: str, training, seconds: float, rate: float, note: str) -> dict:
    return {"part": "train", "device": device_name(device), "run": run, "steps": training.steps,
            "seconds": round(seconds, 2), "kernels/s": rate, "note": note}


def assignment_rows(sizes: Sizes, use_cuda: bool, seed: int) -> list[dict]:
    """Nearest of 16 templates for `assign_kernels` random unit kernels, kernels from host
    memory in, ids back in host memory out, on the CPU and (with CUDA) the GPU."""
    rng = np.random.default_rng(seed + 1)
    templates, _ = centre_and_normalise(
        rng.standard_normal((N_ASSIGN_TEMPLATES, KERNEL_SIZE ** 2), dtype=np.float32))
    log(f"making {sizes.assign_kernels:,} kernels to assign")
    kernels = np.concatenate([centre_and_normalise(rng.standard_normal(
        (min(CHUNK, sizes.assign_kernels - i), KERNEL_SIZE ** 2), dtype=np.float32))[0]
        for i in range(0, sizes.assign_kernels, CHUNK)])
    faiss = _faiss_or_none()
    rows, reference = [], None
    backends = [("cpu", "faiss" if faiss else "numpy")]
    if use_cuda:
        gpu_faiss = faiss is not None and hasattr(faiss, "StandardGpuResources") \
            and faiss.get_num_gpus() > 0
        backends.append(("cuda", "faiss" if gpu_faiss else "torch"))
    for device, backend in backends:
        log(f"assigning on {device} with {backend}")
        search = _assigner(device, backend, templates)
        search(kernels[:CHUNK // 10])  # warm-up: CUDA context, FAISS resources, thread pools
        synchronise(device)
        start = time.perf_counter()
        ids = np.concatenate([search(kernels[i:i + CHUNK]) for i in range(0, len(kernels), CHUNK)])
        seconds = time.perf_counter() - start
        same = "" if reference is None else f"; same ids as the CPU: {np.mean(ids == reference):.6f}"
        reference = ids if reference is None else reference
        absent = "" if faiss or device == "cpu" else " (FAISS not importable here)"
        rows.append({"part": "assign", "device": device_name(device),
                     "run": f"{len(kernels):,} x {N_ASSIGN_TEMPLATES} templates, {backend}",
                     "steps": None, "seconds": round(seconds, 2),
                     "kernels/s": len(kernels) / seconds, "note": f"host in, host out{absent}{same}"})
    return rows


def _faiss_or_none():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _assigner(device: str, backend: str, templates: np.ndarray):
    """A function from unit kernels (host) to nearest template ids (host)."""
    if backend == "faiss":
        os.environ["DWSCAN_FAISS_DEVICE"] = "gpu" if device == "cuda" else "cpu"
        from dwscan.io.template_index import TemplateIndex

        index = TemplateIndex(templates)
        return lambda rows: index.nearest(rows)[0]
    if backend == "torch":
        on_gpu = torch.from_numpy(templates).to(device)
        return lambda rows: (torch.from_numpy(rows).to(device, non_blocking=True) @ on_gpu.T
                             ).argmax(dim=1).cpu().numpy()
    return lambda rows: (rows @ templates.T).argmax(axis=1)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return f"CPU: {os.cpu_count()} cores, {cpu}"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import as_markdown  # imports no Ray or FAISS at its top

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="small sizes on the CPU only (a check of the script, not a benchmark)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    use_cuda = torch.cuda.is_available() and not args.smoke
    if not use_cuda and not args.smoke:
        print("benchmarks.gpu: no CUDA device here; run it on a GPU machine, or --smoke",
              file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    devices = ["cuda", "cpu"] if use_cuda else ["cpu"]
    rows = training_rows(sizes, devices, args.seed) + assignment_rows(sizes, use_cuda, args.seed)
    table = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python "
             f"{platform.python_version()}{', --smoke' if args.smoke else ''}\n\n"
             + as_markdown(rows) + "\n")
    print(table)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
