"""Kernels with a known answer: noisy copies a*T + b + noise of given templates."""

from __future__ import annotations

import numpy as np


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
    `dog_family` templates of its size, in equal numbers, plus `random_share` Gaussian kernels.
    The truth maps each layer to the family name of each channel ('random' for the others).
    Pointwise and norm weights sit between them, as in a real network.
    """
    from pipeline.families import dog_family

    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    for i, k in enumerate(kernel_sizes):
        family = dog_family(k)
        names = np.array(list(family) + ["random"])
        templates = np.stack(list(family.values()))
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
