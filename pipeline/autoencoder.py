"""Stage 3: the paper's autoencoder, a 1-D code learnt with a cosine reconstruction loss.

One autoencoder per kernel size. The code passes through a sigmoid so that it lives in [0, 1] and
can be swept end to end (the authors' follow-up work does the same). The training loop is plain
torch; a caller may wrap the model (DDP under Ray Train) and hand it a shard of the data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AutoencoderConfig:
    hidden: tuple[int, ...] = (256, 128)  # encoder layer widths; the decoder mirrors them
    code_dim: int = 1  # the paper's 1-D code
    epochs: int = 40  # passes over the data
    min_steps: int = 1500  # at least this many optimiser steps, so small zoos train enough
    batch_size: int = 512  # per worker
    lr: float = 3e-3  # Adam, cosine-annealed to lr/20
    seed: int = 0  # model init and data order; same input + seed = same templates

    @classmethod
    def from_dict(cls, values: dict) -> AutoencoderConfig:
        values = dict(values)
        values["hidden"] = tuple(values.get("hidden", cls.hidden))
        return cls(**values)


class KernelAutoencoder(nn.Module):
    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 128), code_dim: int = 1):
        super().__init__()
        self.dim, self.hidden, self.code_dim = dim, tuple(hidden), code_dim
        widths = [dim, *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.Tanh()]
        # Batch norm before the sigmoid keeps codes spread over (0, 1); without it some seeds
        # saturate at 0 and 1 early, the gradient vanishes and the code collapses to two values.
        self.encoder = nn.Sequential(*enc, nn.Linear(widths[-1], code_dim),
                                     nn.BatchNorm1d(code_dim, affine=False))
        dec: list[nn.Module] = []
        back = [code_dim, *reversed(hidden)]
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), nn.Tanh()]
        self.decoder = nn.Sequential(*dec, nn.Linear(back[-1], dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def cosine_loss(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """1 - cosine(x, x_hat), averaged: the paper's loss; scale of the output is free."""
    return 1.0 - F.cosine_similarity(x, reconstruction, dim=1, eps=1e-8).mean()


def steps_per_epoch(n_rows: int, config: AutoencoderConfig, world_size: int = 1) -> int:
    return max(1, (n_rows // world_size) // config.batch_size)


def n_epochs(n_rows: int, config: AutoencoderConfig, world_size: int = 1) -> int:
    per_epoch = steps_per_epoch(n_rows, config, world_size)
    return max(config.epochs, -(-config.min_steps // per_epoch))


def train_autoencoder(
    data: np.ndarray,
    config: AutoencoderConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[KernelAutoencoder, list[float]]:
    """Train on centred unit-norm rows; returns the bare model and the mean loss of each epoch.

    Every rank sees the same seeded permutation per epoch and takes its own equal-length slice, so
    DDP ranks step in lockstep and a rerun with the same input reproduces the result.
    """
    torch.manual_seed(config.seed)
    model = KernelAutoencoder(data.shape[1], config.hidden, config.code_dim).to(device)
    trained = wrap_model(model) if wrap_model else model
    optimiser = torch.optim.Adam(trained.parameters(), lr=config.lr)
    epochs = n_epochs(len(data), config, world_size)
    per_epoch = steps_per_epoch(len(data), config, world_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=epochs * per_epoch, eta_min=config.lr / 20)
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
    rng = np.random.default_rng(config.seed)
    losses: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(data))
        shard = order[rank::world_size][: per_epoch * config.batch_size]
        if len(shard) < per_epoch * config.batch_size:  # fewer rows than one batch per rank
            shard = np.resize(shard, per_epoch * config.batch_size)
        total = 0.0
        for step in range(per_epoch):
            batch = tensor[shard[step * config.batch_size:(step + 1) * config.batch_size]]
            loss = cosine_loss(batch, trained(batch))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / per_epoch)
        if on_epoch:
            on_epoch(epoch, epochs, losses[-1])
    return model.cpu().eval(), losses


@torch.no_grad()
def encode_kernels(model: KernelAutoencoder, data: np.ndarray, batch: int = 65536) -> np.ndarray:
    codes = [model.encode(torch.from_numpy(data[i:i + batch])).numpy()
             for i in range(0, len(data), batch)]
    return np.concatenate(codes) if codes else np.zeros((0, model.code_dim), np.float32)


@torch.no_grad()
def decode_sweep(model: KernelAutoencoder, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode evenly spaced codes over [0, 1]: the spectrum of candidate templates."""
    if model.code_dim != 1:
        raise ValueError("a code sweep needs a 1-D code")
    codes = torch.linspace(0.0, 1.0, n_points).unsqueeze(1)
    return codes.squeeze(1).numpy(), model.decode(codes).numpy()


def save_autoencoder(model: KernelAutoencoder, path: Path, extra: dict | None = None) -> Path:
    """Weights as safetensors (never a pickle) plus a JSON file with what rebuilds the model;
    `path` may be local or on an object store (pipeline.storage)."""
    from safetensors.torch import save

    from pipeline.storage import as_location, write_bytes_atomic

    path = as_location(path)
    meta = {"dim": model.dim, "hidden": list(model.hidden), "code_dim": model.code_dim,
            **(extra or {})}
    write_bytes_atomic(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    write_bytes_atomic(path.with_suffix(".json"),
                       json.dumps(meta, indent=2, default=_jsonable).encode())
    return path


def load_autoencoder(path: Path) -> tuple[KernelAutoencoder, dict]:
    from safetensors.torch import load

    from pipeline.storage import as_location

    path = as_location(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = KernelAutoencoder(meta["dim"], tuple(meta["hidden"]), meta["code_dim"])
    model.load_state_dict(load(path.read_bytes()))
    return model.eval(), meta


def _jsonable(value: object) -> object:
    if isinstance(value, AutoencoderConfig):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
