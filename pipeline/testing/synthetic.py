"""Kernels with a known answer: noisy copies a*T + b + noise of planted family members."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dwscan.method.families import CENTRE_SURROUND, FIRST, SECOND, describe, member


@dataclass(frozen=True)
class PlantedPattern:
    """A family member planted in synthetic kernels, and what a fit must say about it."""

    family: str
    parameters: tuple[tuple[str, float], ...]  # the member's parameters (dwscan.method.families)
    sign: int = 1  # the member or its negative

    def weights(self, k: int) -> np.ndarray:
        return self.sign * member(self.family, dict(self.parameters), k)

    def expected(self, k: int):
        """The canonical FamilyFit (family, polarity, orientation, sigma, label) of the pattern."""
        return describe(self.family, dict(self.parameters), float(self.sign), k)


def planted_patterns(k: int) -> list[PlantedPattern]:
    """The 8 patterns of `dwscan synth` at size k: four of different families, widths and
    orientations, orthogonal to each other, each next to its negative (so a sign-invariant run
    finds 4)."""
    patterns = [
        (CENTRE_SURROUND, {"sigma": k / 10, "surround_ratio": 2.0, "surround_weight": 1.0,
                           "dx": 0.0, "dy": 0.0}),
        (FIRST, {"sigma": k / 6, "angle_deg": 30.0}),
        (FIRST, {"sigma": k / 4, "angle_deg": 120.0}),
        (SECOND, {"sigma": k / 5, "angle_deg": 45.0, "psi_deg": -45.0}),  # d2/dxdy, a saddle
    ]
    return [PlantedPattern(family, tuple(params.items()), sign)
            for family, params in patterns for sign in (1, -1)]


def planted_templates(k: int) -> np.ndarray:
    """The weights of `planted_patterns(k)`, one row each (centred, unit norm)."""
    return np.stack([pattern.weights(k) for pattern in planted_patterns(k)]).astype(np.float32)


def noisy_copies(templates: np.ndarray, n_per_template: int, noise: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw kernels a*T + b + noise (a > 0, any offset b) and the index of the T each came from.

    `noise` is the noise norm relative to a*T, so the expected cosine to T is about
    1 / sqrt(1 + noise^2) whatever the kernel size.
    """
    n_t, d = templates.shape
    truth = np.repeat(np.arange(n_t), n_per_template)
    scale = rng.uniform(0.2, 3.0, size=(len(truth), 1))
    offset = rng.normal(0.0, 0.5, size=(len(truth), 1))
    eps = rng.normal(0.0, noise / np.sqrt(d), size=(len(truth), d))
    kernels = scale * (templates[truth] + eps) + offset
    return kernels.astype(np.float32), truth


def synthetic_state_dict(kernel_sizes: tuple[int, ...] = (3, 5, 7), layers_per_size: int = 2,
                         channels: int = 400, noise: float = 0.3, random_share: float = 0.1,
                         seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A ConvNeXt-style state dict whose depthwise kernels have a known template, and the truth.

    Each depthwise layer `stages.{i}.blocks.{j}.conv_dw.weight` holds noisy copies of the
    `planted_patterns` of its size, in equal numbers, plus `random_share` Gaussian kernels.
    The truth maps each layer to the label of each channel's pattern ('random' for the others).
    Pointwise and norm weights sit between them, as in a real network.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    for i, k in enumerate(kernel_sizes):
        planted = planted_patterns(k)
        names = np.array([p.expected(k).label for p in planted] + ["random"])
        templates = np.stack([p.weights(k) for p in planted])
        for j in range(layers_per_size):
            n_random = int(round(channels * random_share))
            per_template = (channels - n_random) // len(templates)
            kernels, which = noisy_copies(templates, per_template, noise, rng)
            n_random = channels - len(kernels)
            kernels = np.concatenate([kernels, rng.normal(0, 1, (n_random, k * k))])
            which = np.concatenate([which, np.full(n_random, len(templates))])
            order = rng.permutation(channels)
            prefix = f"stages.{i}.blocks.{j}"
            state[f"{prefix}.conv_dw.weight"] = kernels[order].reshape(channels, 1, k, k).astype(
                np.float32)
            state[f"{prefix}.conv_dw.bias"] = np.zeros(channels, np.float32)
            state[f"{prefix}.norm.weight"] = np.ones(channels, np.float32)
            state[f"{prefix}.mlp.fc1.weight"] = rng.normal(0, 0.02, (4 * channels, channels)).astype(
                np.float32)
            truth[f"{prefix}.conv_dw.weight"] = names[which[order]]
    return state, truth


def write_synthetic_checkpoint(out_dir: str | Path, seed: int = 0, **options) -> Path:
    """Write `synthetic.safetensors` and its truth (`truth.parquet`, `truth_templates.parquet`).

    `truth.parquet` has one row per depthwise kernel (layer, channel, kernel_size, pattern);
    `truth_templates.parquet` the exact template of each pattern with its family, polarity,
    orientation and sigma. `options` go to `synthetic_state_dict`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    from dwscan.io.arrays import matrices_to_list_array

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, truth = synthetic_state_dict(seed=seed, **options)
    path = out / "synthetic.safetensors"
    save_file(state, str(path))
    rows = [(layer, c, state[layer].shape[-1], name)
            for layer, names in truth.items() for c, name in enumerate(names)]
    pq.write_table(pa.table({
        "layer": [r[0] for r in rows], "channel": pa.array([r[1] for r in rows], pa.int32()),
        "kernel_size": pa.array([r[2] for r in rows], pa.int32()),
        "pattern": [str(r[3]) for r in rows]}), out / "truth.parquet")
    sizes = sorted({r[2] for r in rows})
    planted = [(k, p, p.expected(k)) for k in sizes for p in planted_patterns(k)]
    pq.write_table(pa.table({
        "kernel_size": pa.array([k for k, _, _ in planted], pa.int32()),
        "pattern": [e.label for _, _, e in planted],
        "family": [e.family for _, _, e in planted],
        "polarity": [e.polarity for _, _, e in planted],
        "orientation_deg": pa.array([e.orientation_deg for _, _, e in planted], pa.float32()),
        "sigma": pa.array([e.sigma for _, _, e in planted], pa.float32()),
        "weights": matrices_to_list_array([np.stack([p.weights(k) for p in planted_patterns(k)])
                                           for k in sizes]),
    }), out / "truth_templates.parquet")
    return path


# Depthwise layers (kernel size, channels) of the planted zoo's architectures: channel counts of
# real networks of each family, so a zoo of 300 models holds about 1.4M kernels.
PLANTED_ARCHITECTURES: dict[str, list[tuple[int, int]]] = {
    "convnext": [(7, 96)] * 3 + [(7, 192)] * 3 + [(7, 384)] * 6 + [(7, 768)] * 2,
    "efficientnet": [(5, 240), (5, 240), (5, 480), (5, 672), (5, 672), (5, 1152), (5, 1152),
                     (5, 1152)],
    "mixnet": [(5, 192), (5, 384), (5, 768), (5, 768), (7, 384), (7, 768), (7, 768)],
    "mobilenetv3": [(5, 72), (5, 120), (5, 240), (5, 480), (5, 480), (5, 672), (5, 960),
                    (5, 960)],
}


def write_planted_zoo(out_dir: str | Path, n_models: int, seed: int = 0, noise: float = 0.3,
                      fraction_range: tuple[float, float] = (0.3, 0.9),
                      top1_noise: float = 2.0) -> dict[str, Path]:
    """A zoo whose answer is known: `n_models` timm-style repo folders with a planted clustered
    fraction each, and a timm results table whose top-1 rises with that fraction plus noise.

    Model i is an architecture of PLANTED_ARCHITECTURES (in turn) whose depthwise layers hold
    noisy copies (`noisy_copies`, `noise`) of the `planted_templates` of their size for a
    share f_i of the channels (f_i uniform in `fraction_range`), and Gaussian kernels for the
    rest. Writes under `out_dir`:
      models/<name>/model.safetensors + config.json (architecture `<family>_<i>`, tag
        `planted_in1k`, so the accuracy key is `<family>_<i>.planted_in1k`);
      truth.parquet: per model its key, kernel and structured counts and planted_fraction
        (structured / all kernels, exactly what was written);
      results-imagenet.csv: top1 = 60 + 25 f_i + N(0, top1_noise), in timm's format;
      model_metadata-in1k.csv: every key pre-trained on in1k.
    Returns those paths by name ('models', 'truth', 'accuracy_csv', 'pretrain_csv').
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    out = Path(out_dir)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    families = {k: planted_templates(k) for k in (5, 7)}
    names = list(PLANTED_ARCHITECTURES)
    truth_rows = []
    for i in range(n_models):
        family = names[i % len(names)]
        arch, tag = f"{family}_{i:04d}", "planted_in1k"
        fraction = rng.uniform(*fraction_range)
        state: dict[str, np.ndarray] = {}
        n_kernels = n_structured = 0
        for j, (k, channels) in enumerate(PLANTED_ARCHITECTURES[family]):
            structured = int(round(fraction * channels))
            which = rng.integers(0, len(families[k]), structured)
            kernels = np.concatenate([
                _noisy_copies_of(families[k], which, noise, rng),
                rng.normal(0.0, 1.0, (channels - structured, k * k)).astype(np.float32)])
            kernels = kernels[rng.permutation(channels)]
            state[f"blocks.{j}.conv_dw.weight"] = kernels.reshape(channels, 1, k, k)
            state[f"blocks.{j}.norm.weight"] = np.ones(channels, np.float32)
            n_kernels, n_structured = n_kernels + channels, n_structured + structured
        folder = models_dir / arch
        folder.mkdir(exist_ok=True)
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({
            "architecture": arch, "num_classes": 1000,
            "pretrained_cfg": {"tag": tag, "input_size": [3, 224, 224]}}))
        truth_rows.append({"name": arch, "family": family, "accuracy_key": f"{arch}.{tag}",
                           "n_kernels": n_kernels, "n_structured": n_structured,
                           "planted_fraction": n_structured / n_kernels,
                           "top1": float(np.clip(60 + 25 * fraction + rng.normal(0, top1_noise),
                                                 0, 100))})
    paths = {"models": models_dir, "truth": out / "truth.parquet",
             "accuracy_csv": out / "results-imagenet.csv",
             "pretrain_csv": out / "model_metadata-in1k.csv"}
    pq.write_table(pa.Table.from_pylist(truth_rows), paths["truth"])
    lines = ["model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation"]
    lines += [f"{r['accuracy_key']},224,{r['top1']:.3f},{100 - r['top1']:.3f},"
              f"{min(100.0, r['top1'] + 15):.3f},{max(0.0, 85 - r['top1']):.3f},5.00,0.875,bicubic"
              for r in truth_rows]
    paths["accuracy_csv"].write_text("\n".join(lines) + "\n")
    paths["pretrain_csv"].write_text(
        "model,pretrain\n" + "".join(f"{r['accuracy_key']},in1k\n" for r in truth_rows))
    return paths


def _noisy_copies_of(templates: np.ndarray, which: np.ndarray, noise: float,
                     rng: np.random.Generator) -> np.ndarray:
    """`noisy_copies` of the templates `which` names, one kernel each, in that order."""
    kernels = np.empty((len(which), templates.shape[1]), np.float32)
    for t in np.unique(which):
        rows = np.flatnonzero(which == t)
        kernels[rows], _ = noisy_copies(templates[t:t + 1], len(rows), noise, rng)
    return kernels
