"""The autoencoder's settings and files, without torch: its training config, the seeds of a
run, where the weights and their JSON records go, and reading those records. The command line
reads the config's defaults for its help, and the run driver and the stages pass these around
without training; `dwscan.method.autoencoder` (the network and its training loop) re-exports
them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# A seed of several trains until converged, at most 1,500 steps or 2.5 passes over the kernels,
# whichever is more (METHOD.md 3): on a small zoo (the demo: 41 passes in 1,500 steps) the
# consensus places the templates; on a large one (500,000 kernels a size: 1,500 steps are 0.8
# passes) the seeds must first leave the early plateau where the code has not spread out
# (1,000 planted models: every fraction wrong by up to 0.9 at 1,500 steps). 2.5 passes at a
# batch of 256 are 4,882 steps there, the 4,880 that 5 passes at 512 were, when seeds were five
CONSENSUS_STEP_CAP = 1500
CONSENSUS_EPOCHS = 2.5
LONE_SEED_STEP_CAP = 20_000  # a lone seed (--seeds 1) trains to convergence


@dataclass
class AutoencoderConfig:
    # encoder layer widths; the decoder mirrors them. 128/64 rather than 256/128: half the
    # time a step, and on the demo's real kernels a smaller spread over seeds (METHOD.md 3)
    hidden: tuple[int, ...] = (128, 64)
    code_dim: int = 1  # the paper's 1-D code
    epochs: int | None = None  # None: train until converged; N: exactly N passes over the data
    min_steps: int = 1500  # no convergence stop before this many optimiser steps
    # the step cap of a convergence-stopped run; None: step_cap() (several seeds: 1,500 steps
    # or 2.5 passes, whichever is more; a lone seed: 20,000; METHOD.md 3)
    max_steps: int | None = None
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
    # per worker and seed, on the CPU: ten seeds of 256 cost a step what five of 512 did, and
    # the median of ten seeds moves half as much as of five (METHOD.md 4b)
    batch_size: int = 256
    # per worker on CUDA, where small batches leave the GPU idle between kernel launches; not yet
    # measured (no GPU lent so far): `python -m benchmarks.gpu` sweeps it (BENCHMARKS.md, "gpu")
    gpu_batch_size: int = 8192
    lr: float = 3e-3  # Adam, cosine-annealed to lr/20 over the run (or over max_steps)
    seed: int = 0  # model init and data order; same input + seed = same templates
    # autoencoders trained together per kernel size, each of its own seed (member_seeds); the
    # templates are their consensus (dwscan.stages.templates, METHOD.md 4)
    seeds: int = 10

    def step_cap(self, steps_per_epoch: int = 0) -> int:
        """The cap: `max_steps`; by default for several seeds 1,500 steps or CONSENSUS_EPOCHS
        passes over the kernels, whichever is more; for a lone seed 20,000 steps."""
        if self.max_steps is not None:
            return self.max_steps
        if self.seeds == 1:
            return LONE_SEED_STEP_CAP
        return min(LONE_SEED_STEP_CAP,
                   max(CONSENSUS_STEP_CAP, int(CONSENSUS_EPOCHS * steps_per_epoch)))

    @classmethod
    def from_dict(cls, values: dict) -> AutoencoderConfig:
        values = dict(values)
        values["hidden"] = tuple(values.get("hidden", cls.hidden))
        return cls(**values)


def autoencoder_path(out_dir: Path, kernel_size: int, seed_index: int = 0) -> Path:
    """`k3.seed0.safetensors`, ... one per seed (its rebuild record `k3.seed0.json`); the
    training record of all seeds is `k3.json` (read_training_records)."""
    from dwscan.io.storage import as_location

    return as_location(out_dir) / f"k{kernel_size}.seed{seed_index}.safetensors"


def training_record_path(out_dir: Path, kernel_size: int) -> Path:
    from dwscan.io.storage import as_location

    return as_location(out_dir) / f"k{kernel_size}.json"


SEED_STRIDE = 1000


def member_seeds(seed: int, n_seeds: int) -> list[int]:
    """The seeds of a run of base seed S: S*1000 + i, so the seeds of two base seeds never
    overlap (two runs' agreement is then not built in)."""
    return [seed * SEED_STRIDE + i for i in range(n_seeds)]


def read_training_records(out_dir: Path, kernel_sizes: list[int]) -> dict[int, dict]:
    """What `autoencoders/k*.json` say about each size's training (steps, why it stopped)."""
    records = {}
    for k in kernel_sizes:
        path = training_record_path(out_dir, k)
        if path.exists():
            records[k] = json.loads(path.read_text())
    return records
