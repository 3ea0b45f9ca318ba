"""The autoencoder's settings and files, without torch: its training config, the stability
check's second run, where the weights and their JSON records go, and reading those records.
The command line reads the config's defaults for its help, and the run driver and the stages
pass these around without training; `dwscan.method.autoencoder` (the network and its training
loop) re-exports them."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass
class AutoencoderConfig:
    # encoder layer widths; the decoder mirrors them. 128/64 rather than 256/128: half the
    # time a step, and on the demo's real kernels a smaller spread over seeds (METHOD.md 3)
    hidden: tuple[int, ...] = (128, 64)
    code_dim: int = 1  # the paper's 1-D code
    epochs: int | None = None  # None: train until converged; N: exactly N passes over the data
    min_steps: int = 1500  # no convergence stop before this many optimiser steps
    max_steps: int = 20_000  # the step cap of a convergence-stopped run
    check_every: int = 250  # optimiser steps between two convergence checks
    check_sample: int = 4096  # kernels whose codes weight the template sweep at each check
    template_cosine: float = 0.99  # templates "no longer move": cosine to the last check
    loss_tolerance: float = 0.002  # loss "plateaued": under 0.002 below its best earlier check
    patience: int = 2  # consecutive checks that must both hold before stopping
    # checks in a row with no new best loss after which training stops although the templates
    # still move: the sweep wanders over data with no stable structure (random weights, noise)
    # and more steps find nothing; 12 checks = 3,000 steps at the defaults
    plateau_patience: int = 12
    cooldown: float = 0.25  # after converging, this share of the steps so far more, lr -> lr/20
    batch_size: int = 512  # per worker, on the CPU
    # per worker on CUDA, where small batches leave the GPU idle between kernel launches; not yet
    # measured (no GPU lent so far): `python -m benchmarks.gpu` sweeps it (BENCHMARKS.md, "gpu")
    gpu_batch_size: int = 8192
    lr: float = 3e-3  # Adam, cosine-annealed to lr/20 over the run (or over max_steps)
    seed: int = 0  # model init and data order; same input + seed = same templates

    @classmethod
    def from_dict(cls, values: dict) -> AutoencoderConfig:
        values = dict(values)
        values["hidden"] = tuple(values.get("hidden", cls.hidden))
        return cls(**values)


def autoencoder_path(out_dir: Path, kernel_size: int, stability_check: bool = False) -> Path:
    """`k3.safetensors`; the stability check's second-seed run beside it as
    `k3.stability.safetensors` (its record `k3.stability.json`)."""
    from dwscan.io.storage import as_location

    role = ".stability" if stability_check else ""
    return as_location(out_dir) / f"k{kernel_size}{role}.safetensors"


@dataclass(frozen=True)
class StabilityRun:
    """The stability check's second training: seed + 1, on a seeded sample of at most `sample`
    kernels, convergence-stopped within `steps` steps, so the check costs a bounded fraction of
    the run. The train stage trains it beside the first run; the templates stage selects from it
    on the same sample."""

    sample: int = 100_000
    steps: int = 5000

    def config(self, first: AutoencoderConfig) -> AutoencoderConfig:
        return replace(first, seed=first.seed + 1, epochs=None,
                       min_steps=min(self.steps, AutoencoderConfig.min_steps),
                       max_steps=self.steps)

    def kernels(self, kernels: np.ndarray, seed: int) -> np.ndarray:
        """The sample of `kernels` (of one size, loaded with `seed`) that the run sees."""
        if len(kernels) <= self.sample:
            return kernels
        rng = np.random.default_rng(seed + 1)
        return kernels[np.sort(rng.choice(len(kernels), self.sample, False))]


def read_training_records(out_dir: Path, kernel_sizes: list[int]) -> dict[int, dict]:
    """What `autoencoders/k*.json` say about each size's training (steps, why it stopped)."""
    records = {}
    for k in kernel_sizes:
        path = autoencoder_path(out_dir, k).with_suffix(".json")
        if path.exists():
            records[k] = json.loads(path.read_text())
    return records
