"""The paper's autoencoder, a 1-D code learnt with a cosine reconstruction loss.

One autoencoder per kernel size. The code passes through a sigmoid so that it lives in [0, 1] and
can be swept end to end (the authors' follow-up work does the same). The training loop is plain
torch; a caller may wrap the model (DDP under Ray Train) and hand it a shard of the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# re-exported from their old home: torch-free, so the run driver and the stages' modules import
# them without torch
from dwscan.method.autoencoder_config import (
    AutoencoderConfig,
    autoencoder_path,  # noqa: F401
    member_seeds,
    read_training_records,  # noqa: F401
)


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) computed as 2 * sigmoid(2x) - 1 (equal to within 2e-7), with tanh's own backward
    (1 - y^2). On the CPU torch's tanh is a 1-ulp Sleef routine that costs about three times its
    sigmoid: at (5, 512, 128) 1.2 to 1.7 ms against 0.3 to 0.5 ms on our 2-core machine, a fifth
    of a training step; this form makes a step about 8% faster. CUDA keeps torch.tanh."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """The autoencoders' activation: _SigmoidTanh on the CPU, torch.tanh elsewhere."""
    return torch.tanh(x) if x.is_cuda else _SigmoidTanh.apply(x)


class Tanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)


class KernelAutoencoder(nn.Module):
    def __init__(self, dim: int, hidden: tuple[int, ...] = AutoencoderConfig.hidden,
                 code_dim: int = 1):
        super().__init__()
        self.dim, self.hidden, self.code_dim = dim, tuple(hidden), code_dim
        widths = [dim, *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), Tanh()]
        # Batch norm before the sigmoid keeps codes spread over (0, 1); without it some seeds
        # saturate at 0 and 1 early, the gradient vanishes and the code collapses to two values.
        self.encoder = nn.Sequential(*enc, nn.Linear(widths[-1], code_dim),
                                     nn.BatchNorm1d(code_dim, affine=False))
        dec: list[nn.Module] = []
        back = [code_dim, *reversed(hidden)]
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), Tanh()]
        self.decoder = nn.Sequential(*dec, nn.Linear(back[-1], dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class FusedAdam:
    """torch.optim.Adam(fused=True), stepped through its functional form (torch.optim.adam.adam,
    the same kernel and state, the same bits): building any torch.optim.Optimizer imports
    torch._dynamo, and with it sympy and triton, about 900 modules, 78 MiB and a second in every
    training process (BENCHMARKS.md, zoo), for a compiler training never uses."""

    BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults

    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params = list(params)
        self.lr = lr
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                         for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.adam import adam

        adam(self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, [],
             self.steps, fused=True, amsgrad=False, beta1=self.BETAS[0], beta2=self.BETAS[1],
             lr=self.lr, weight_decay=0.0, eps=self.EPS, maximize=False)


def cosine_annealed(lr: float, step: int, t_max: int, eta_min: float) -> float:
    """The learning rate after `step` of `t_max` steps, from `lr` at the step before: torch's
    CosineAnnealingLR update (its recursive form, so the same floats step by step)."""
    return ((1 + math.cos(math.pi * step / t_max)) / (1 + math.cos(math.pi * (step - 1) / t_max))
            * (lr - eta_min) + eta_min)


class AutoencoderEnsemble(nn.Module):
    """R independent KernelAutoencoders trained as one network: each layer's weights are stacked
    (R, in, out) and applied with one batched matmul, one launch per layer for all seeds (the
    arithmetic still grows with R: five seeds cost about five times one on a CPU thread;
    METHOD.md 3). Member r starts exactly as a KernelAutoencoder
    built after torch.manual_seed(seeds[r]); Adam is elementwise, so training the stack is
    training R separate models. `member(r)` gives one back as a plain KernelAutoencoder."""

    BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # nn.BatchNorm1d's defaults, which member() copies into

    def __init__(self, dim: int, seeds: list[int], hidden: tuple[int, ...] = AutoencoderConfig.hidden,
                 code_dim: int = 1):
        super().__init__()
        self.dim, self.hidden, self.code_dim, self.seeds = dim, tuple(hidden), code_dim, list(seeds)
        members = []
        for seed in seeds:
            torch.manual_seed(seed)
            members.append(KernelAutoencoder(dim, hidden, code_dim))
        self.n_encoder = len(hidden) + 1  # linear layers up to the code
        weights, biases = [], []
        for layer in range(len(_linears(members[0]))):
            linears = [_linears(m)[layer] for m in members]
            weights.append(nn.Parameter(torch.stack([lin.weight.detach().T for lin in linears])))
            biases.append(nn.Parameter(torch.stack([lin.bias.detach()[None] for lin in linears])))
        self.weights, self.biases = nn.ParameterList(weights), nn.ParameterList(biases)
        self.register_buffer("running_mean", torch.zeros(len(seeds), 1, code_dim))
        self.register_buffer("running_var", torch.ones(len(seeds), 1, code_dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _layers(self, x: torch.Tensor, layers: range) -> torch.Tensor:
        for i in layers:
            x = torch.baddbmm(self.biases[i], x, self.weights[i])
            if i not in (self.n_encoder - 1, len(self.weights) - 1):
                x = tanh(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(R, B, dim) rows, one batch per member -> (R, B, code_dim) codes in (0, 1)."""
        z = self._layers(x, range(self.n_encoder))
        if self.training:  # batch norm per member, as KernelAutoencoder's BatchNorm1d
            mean = z.mean(dim=1, keepdim=True)
            var = z.var(dim=1, unbiased=False, keepdim=True)
            with torch.no_grad():
                unbiased = var * (z.shape[1] / max(1, z.shape[1] - 1))
                self.running_mean.lerp_(mean, self.BN_MOMENTUM)
                self.running_var.lerp_(unbiased, self.BN_MOMENTUM)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return torch.sigmoid((z - mean) / torch.sqrt(var + self.BN_EPS))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self._layers(code, range(self.n_encoder, len(self.weights)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def member(self, r: int) -> KernelAutoencoder:
        model = KernelAutoencoder(self.dim, self.hidden, self.code_dim)
        for layer, linear in enumerate(_linears(model)):
            linear.weight.copy_(self.weights[layer][r].T)
            linear.bias.copy_(self.biases[layer][r, 0])
        norm = model.encoder[-1]
        norm.running_mean.copy_(self.running_mean[r, 0])
        norm.running_var.copy_(self.running_var[r, 0])
        norm.num_batches_tracked.copy_(self.num_batches_tracked)
        return model.cpu().eval()


def _linears(model: KernelAutoencoder) -> list[nn.Linear]:
    return [m for m in [*model.encoder, *model.decoder] if isinstance(m, nn.Linear)]


def cosine_loss(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """1 - cosine(x, x_hat), averaged over the rows: the paper's loss; scale of the output is
    free. Rows (B, dim) give one number, an ensemble's batches (R, B, dim) one per member."""
    return 1.0 - F.cosine_similarity(x, reconstruction, dim=-1, eps=1e-8).mean(dim=-1)


def batch_size_for(config: AutoencoderConfig, device: str | torch.device) -> int:
    """The batch size a worker uses on `device`: `gpu_batch_size` on CUDA, else `batch_size`."""
    return config.gpu_batch_size if torch.device(device).type == "cuda" else config.batch_size


def steps_per_epoch(n_rows: int, config: AutoencoderConfig, world_size: int = 1) -> int:
    return max(1, (n_rows // world_size) // config.batch_size)


def step_budget(n_rows: int, config: AutoencoderConfig, world_size: int = 1) -> int:
    """Optimiser steps of a run: exactly `epochs` passes when given, else the cap."""
    if config.epochs is not None:
        return config.epochs * steps_per_epoch(n_rows, config, world_size)
    return config.step_cap(steps_per_epoch(n_rows, config, world_size))


STOP_CONVERGED, STOP_CAP, STOP_EPOCHS = "converged", "step cap", "fixed epochs"
STOP_PLATEAU = "loss plateaued, templates still moving"
# A seed whose final loss is this many times its siblings' median did not train: on the
# 300-model planted zoo (METHOD.md 3) one 7x7 seed of ten stayed at 0.65 (median 0.39) with one
# template, one 5x5 seed at 0.61 (median 0.46) found 6 of 8 patterns; on the real kernels of
# METHOD.md 4b (24 runs of ten seeds) no seed was above 1.08 times the median.
UNTRAINED_LOSS_RATIO = 1.2


def untrained_members(losses: list[float], ratio: float = UNTRAINED_LOSS_RATIO) -> list[int]:
    """Indices of the seeds that did not train: left out of the templates, the consensus and the
    seed ranges. A loss that is not a number always; a loss above `ratio` times the median of
    the finite ones, with three finite or more, unless that would leave out half the seeds or
    more (then the seeds split in two, and the rule cannot say which half trained)."""
    broken = [i for i, loss in enumerate(losses) if not np.isfinite(loss)]
    if len(broken) == len(losses):
        return []
    finite = [loss for loss in losses if np.isfinite(loss)]
    high = ([i for i, loss in enumerate(losses)
             if np.isfinite(loss) and loss > ratio * float(np.median(finite))]
            if len(finite) >= 3 else [])
    if 2 * (len(broken) + len(high)) >= len(losses):
        high = []
    return sorted(broken + high)


class ConvergenceRule:
    """When to stop: templates no longer move and the loss has plateaued, `patience` checks in a
    row (converged); or the loss has not improved for `plateau_patience` checks although the
    templates still move (nothing stable to find); never before `min_steps`. Fed one check at a
    time; pure, so tests can replay it."""

    def __init__(self, config: AutoencoderConfig):
        self.config = config
        self._best_loss: float | None = None
        self._streak = 0  # checks in a row both still and flat
        self._flat = 0  # checks in a row flat, still or not

    def observe(self, step: int, loss: float, template_cosine: float | None) -> str | None:
        """One check: `loss` is the mean loss since the last check, `template_cosine` how close
        the templates are to the last check's (`curve_moved`; None at the first). Returns why
        to stop (STOP_CONVERGED or STOP_PLATEAU), or None to go on."""
        c = self.config
        # against the best, not the last, check: a noisy check then a lucky one is no progress
        plateaued = self._best_loss is not None and self._best_loss - loss < c.loss_tolerance
        still = template_cosine is not None and template_cosine >= c.template_cosine
        self._best_loss = loss if self._best_loss is None else min(self._best_loss, loss)
        self._streak = self._streak + 1 if plateaued and still else 0
        self._flat = self._flat + 1 if plateaued else 0
        if step < c.min_steps:
            return None
        if self._streak >= c.patience:
            return STOP_CONVERGED
        return STOP_PLATEAU if self._flat >= c.plateau_patience else None


@dataclass
class TrainingLog:
    """How a run went: steps taken, why it stopped, and each check (step, loss, cosine). For an
    ensemble, a check's loss is the members' mean and its cosine the least settled member's;
    `member_stops` says why each member stopped, `member_losses` each one's last loss, and
    `left_out` which members did not train (untrained_members)."""

    steps: int
    epochs: float  # passes over the data (steps / steps per epoch)
    stop_reason: str
    converged_step: int | None  # the check that decided to stop (the cool-down follows)
    check_steps: list[int]
    losses: list[float]  # mean training loss since the previous check
    template_cosines: list[float | None]  # templates' cosine to the last check (curve_moved)
    seeds: list[int] = field(default_factory=list)  # the members' seeds
    member_stops: list[str] = field(default_factory=list)
    member_losses: list[float] = field(default_factory=list)
    left_out: list[int] = field(default_factory=list)  # untrained_members: seeds that did not train

    def as_record(self) -> dict:
        return asdict(self)


def _mean_over_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Average across DDP ranks so every rank sees the same numbers and takes the same stop
    decision (ranks that disagreed would wait on each other's all-reduce forever)."""
    import torch.distributed as dist

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
        values = values / world_size
    return values


CHECK_SWEEP_POINTS = 1024  # codes decoded at each check


@torch.no_grad()
def template_curve(model: AutoencoderEnsemble, sample: torch.Tensor,
                   n_points: int = CHECK_SWEEP_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's decoded template sweep (R, n_points, dim; unit rows) and the share of
    `sample` whose code falls nearest each point (R, n_points): where on the curve the data
    sits. Stays on the model's device."""
    was_training = model.training
    model.eval()
    n = len(model.seeds)
    codes = torch.linspace(0.0, 1.0, n_points, device=sample.device).reshape(1, n_points, 1)
    curve = F.normalize(model.decode(codes.expand(n, -1, -1)), dim=2, eps=1e-8)
    position = model.encode(sample.expand(n, -1, -1))[:, :, 0] * (n_points - 1)
    nearest = position.round().long().clamp(0, n_points - 1)
    weights = torch.zeros(n, n_points, device=sample.device)
    weights.scatter_add_(1, nearest, torch.ones_like(position))
    model.train(was_training)
    return curve, weights / max(1, sample.shape[1])


def curve_moved(curve: torch.Tensor, weights: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """How much each member's templates moved since `previous`: each point's best cosine to any
    earlier point (so sliding along the curve is no move), averaged with the data's weights (so
    the unused ends of the code range, which drift freely, count for nothing). (R,)"""
    return (weights * torch.bmm(curve, previous.transpose(1, 2)).max(dim=2).values).sum(dim=1)


def train_autoencoder(data: np.ndarray, config: AutoencoderConfig, **kwargs
                      ) -> tuple[KernelAutoencoder, TrainingLog]:
    """One autoencoder of seed `config.seed` (an ensemble of one); see train_ensemble."""
    models, log = train_ensemble(data, replace(config, seeds=1), seeds=[config.seed], **kwargs)
    return models[0], log


def _order_dtype(n_rows: int) -> type:
    """The narrowest index type of a permutation of `n_rows` rows torch indexes with."""
    return np.int32 if n_rows < 2**31 else np.int64


def train_ensemble(
    data: np.ndarray,
    config: AutoencoderConfig,
    *,
    seeds: list[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    device: str | torch.device = "cpu",
    on_check: Callable[[int, int, float, float | None], None] | None = None,
) -> tuple[list[KernelAutoencoder], TrainingLog]:
    """Train one autoencoder per seed (default member_seeds of the config's) on centred unit-norm rows,
    together as an AutoencoderEnsemble; returns the bare members and how training went.

    Each member sees its own seeded permutation of the rows per epoch. Every `check_every`
    steps each member decodes its template sweep, weighted by where a fixed seeded sample of
    the rows sits on it; with `config.epochs` None a member is done once its templates stop
    moving and its loss stops falling, or its loss has long stopped falling (ConvergenceRule),
    and the ensemble cools down once every member is done, or stops at its step cap. Every rank
    sees the same permutations and takes its own equal-length slice, so DDP ranks step in
    lockstep, and the check's numbers are averaged over ranks, so they stop together. The rows,
    the check sample and each epoch's orders live on `device` and the loss stays there between
    checks, so a CUDA step never waits for the host; on CUDA the batch is `gpu_batch_size`
    (batch_size_for) and the orders come from torch's CUDA generator, so CUDA and CPU runs of
    one seed differ in detail. `on_check(step, budget, loss, cosine)` reports progress.
    """
    on_cuda = torch.device(device).type == "cuda"
    config = replace(config, batch_size=batch_size_for(config, device))
    seeds = list(seeds if seeds is not None else member_seeds(config.seed, config.seeds))
    n_members = len(seeds)
    model = AutoencoderEnsemble(data.shape[1], seeds, config.hidden, config.code_dim).to(device)
    trained = wrap_model(model) if wrap_model else model
    # fused Adam: one kernel for all parameters, on CUDA and on the CPU (there about 8% of a
    # step faster than the per-parameter loop on our 2-core machine); the rate cosine-annealed
    optimiser = FusedAdam(trained.parameters(), lr=config.lr)
    per_epoch = steps_per_epoch(len(data), config, world_size)
    budget = step_budget(len(data), config, world_size)
    t_max = max(1, budget)  # the cosine annealing's length, set before any stop
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
    rngs = [np.random.default_rng(seed) for seed in seeds]  # the CPU's epoch orders
    # CUDA draws them on the GPU: a host permutation of millions of rows would stall each epoch;
    # seeded alike on every rank, so DDP ranks still share the orders
    device_rngs = ([torch.Generator(device=device).manual_seed(seed) for seed in seeds]
                   if on_cuda else None)
    check_rows = np.sort(np.random.default_rng(config.seed + 1).permutation(len(data))[
        :config.check_sample])
    sample = tensor[torch.from_numpy(check_rows).to(device)].unsqueeze(0)
    rules = [ConvergenceRule(config) for _ in seeds]
    stops: list[str | None] = [None] * n_members
    log = TrainingLog(0, 0.0, STOP_EPOCHS if config.epochs is not None else STOP_CAP, None,
                      [], [], [], seeds)
    cooldown_from = 0.0  # the learning rate when the cool-down began
    previous: torch.Tensor | None = None
    window_loss = torch.zeros(n_members, device=device)
    window_steps = 0
    step = 0
    needed = per_epoch * config.batch_size
    while step < budget:
        # each epoch's orders are made (on CUDA) or put (on the CPU) on the device once; each
        # step slices them there, so no index array crosses to the device per step. On the CPU
        # as int32 (the same orders): ten seeds' orders of 500,000 rows are 20 MB, not 40
        orders = torch.stack([
            torch.randperm(len(data), generator=device_rngs[r], device=device) if on_cuda
            else torch.from_numpy(rngs[r].permutation(len(data)).astype(_order_dtype(len(data))))
            for r in range(n_members)])
        shards = orders[:, rank::world_size][:, :needed]
        if shards.shape[1] < needed:  # fewer rows than one batch per rank: repeat them
            shards = shards.repeat(1, -(-needed // shards.shape[1]))[:, :needed]
        shards = shards.to(device)
        for i in range(per_epoch):
            if step >= budget:  # the cap, fixed epochs, or the end of the cool-down
                break
            batch = tensor[shards[:, i * config.batch_size:(i + 1) * config.batch_size]]
            losses = cosine_loss(batch, trained(batch))
            optimiser.zero_grad()
            losses.sum().backward()  # members share no weight: each gets its own loss's gradient
            optimiser.step()
            if log.converged_step is None:
                optimiser.lr = cosine_annealed(optimiser.lr, step + 1, t_max, config.lr / 20)
            else:  # cool-down: linear from the rate at convergence to lr/20 at the new budget
                done = (step + 1 - log.converged_step) / (budget - log.converged_step)
                optimiser.lr = cooldown_from + done * (config.lr / 20 - cooldown_from)
            window_loss += losses.detach()
            window_steps += 1
            step += 1
            if step % config.check_every and step != budget:
                continue
            current, weights = template_curve(model, sample)
            moved = (curve_moved(current, weights, previous) if previous is not None
                     else torch.full((n_members,), float("nan"), device=device))
            numbers = _mean_over_ranks(torch.stack([window_loss / window_steps, moved]),
                                       world_size).tolist()  # the check's one host sync
            member_losses = numbers[0]
            cosines = [None if np.isnan(c) else c for c in numbers[1]]
            mean_loss = float(np.mean(member_losses))
            least_settled = None if cosines[0] is None else min(cosines)
            log.check_steps.append(step)
            log.losses.append(mean_loss)
            log.template_cosines.append(least_settled)
            log.member_losses = member_losses
            previous, window_loss, window_steps = current, torch.zeros_like(window_loss), 0
            if on_check:
                on_check(step, budget, mean_loss, least_settled)
            if config.epochs is not None or log.converged_step is not None:
                continue
            for r, rule in enumerate(rules):
                if stops[r] is None:
                    stops[r] = rule.observe(step, member_losses[r], cosines[r])
            if all(stops):
                # the same numbers on every rank (averaged above), so the same new budget
                log.stop_reason = (STOP_CONVERGED if all(s == STOP_CONVERGED for s in stops)
                                   else STOP_PLATEAU)
                log.converged_step = step
                budget = min(budget, step + max(config.check_every, int(config.cooldown * step)))
                cooldown_from = optimiser.lr
    log.steps, log.epochs = step, step / per_epoch
    log.member_stops = [s or log.stop_reason for s in stops]
    log.left_out = untrained_members(log.member_losses)
    return [model.member(r) for r in range(n_members)], log


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
    `path` may be local or on an object store (dwscan.io.storage)."""
    from safetensors.torch import save

    from dwscan.io.storage import as_location, write_bytes_atomic

    path = as_location(path)
    meta = {"dim": model.dim, "hidden": list(model.hidden), "code_dim": model.code_dim,
            **(extra or {})}
    write_bytes_atomic(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    write_bytes_atomic(path.with_suffix(".json"),
                       json.dumps(meta, indent=2, default=jsonable).encode())
    return path


def load_autoencoder(path: Path) -> tuple[KernelAutoencoder, dict]:
    from safetensors.torch import load

    from dwscan.io.storage import as_location

    path = as_location(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = KernelAutoencoder(meta["dim"], tuple(meta["hidden"]), meta["code_dim"])
    model.load_state_dict(load(path.read_bytes()))
    return model.eval(), meta


def jsonable(value: object) -> object:
    if isinstance(value, AutoencoderConfig):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
