"""The autoencoder's training settings, without torch: the command line reads their defaults
for its help and the run driver passes them to the train stage, neither of which trains.
`dwscan.method.autoencoder` (the network and its training loop) re-exports the class."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AutoencoderConfig:
    hidden: tuple[int, ...] = (256, 128)  # encoder layer widths; the decoder mirrors them
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
