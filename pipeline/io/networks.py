"""Networks rebuilt from checkpoints, so that `dwscan substitute` can run them: a timm
architecture built offline (no pretrained download) with the checkpoint's whole state dict.

Extraction reads only the depthwise tensors; this module reads every tensor, through the same
doors (`dwscan.io.checkpoints`, `dwscan.io.hub`): nothing is unpickled beyond weights.

Which architecture: `--arch NAME` when given, else the timm `config.json` `architecture`, else,
for the demo zoo, timm's port of the same TF checkpoints (`tf_efficientnet_lite0/1/2`: TF 'SAME'
padding, batch-norm eps 1e-3). The demo packages ship weights in EfficientNet-PyTorch's key
names (`_blocks.3._depthwise_conv.weight`); `efficientnet_pytorch_key_map` renames them to timm's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dwscan.io.checkpoints import DEFAULT_LIMITS, ReadLimits, open_checkpoint
from dwscan.io.zoo import DEMO_ZOO, HUB_PREFIX, config_beside, timm_metadata
from dwscan.text import one_line


class ArchitectureError(Exception):
    """The model cannot be rebuilt: no known architecture, an unknown one, or a checkpoint that
    does not load into it. The message is the one-line reason recorded for the model."""


@dataclass
class Network:
    """A rebuilt network in eval mode and how to feed it."""

    model: object  # torch.nn.Module
    architecture: str
    key_map: dict[str, str]  # checkpoint key -> the model's state-dict key
    data_config: dict = field(default_factory=dict)  # timm: input_size, mean, std, crop_pct, ...


def demo_architecture(model_id: str) -> str | None:
    """timm's architecture for a demo-zoo model: the arch part of its accuracy key."""
    entry = DEMO_ZOO.get(model_id)
    return entry[1].split(".")[0] if entry else None


def read_state_dict(source: str, revision: str | None = None,
                    limits: ReadLimits = DEFAULT_LIMITS) -> tuple[dict, dict]:
    """(every tensor of the checkpoint as float32 numpy, its timm config.json or {}), for a
    local path or an hf:// repo at `revision`."""
    if source.startswith(HUB_PREFIX):
        from dwscan.io.hub import open_hub_checkpoint

        with open_hub_checkpoint(source.removeprefix(HUB_PREFIX), revision,
                                 limits=limits) as opened:
            names = [info.name for info in opened.reader.tensor_infos()]
            if hasattr(opened.reader, "prefetch"):  # range reads: as few requests as possible
                opened.reader.prefetch(names)
            return {n: opened.reader.read(n) for n in names}, opened.config
    with open_checkpoint(source, limits) as reader:
        tensors = {info.name: reader.read(info.name) for info in reader.tensor_infos()}
    return tensors, config_beside(source)[0]


def choose_architecture(model_id: str, config: dict, arch: str | None = None) -> str:
    """`arch` (--arch), else config.json's `architecture`, else the demo zoo's; else the reason
    the model cannot be rebuilt."""
    chosen = arch or timm_metadata(config)["architecture"] or demo_architecture(model_id)
    if not chosen:
        raise ArchitectureError("no architecture to rebuild it with: no timm config.json "
                                "`architecture` beside the checkpoint; name one with --arch")
    return chosen


def build_network(state: Mapping[str, np.ndarray], architecture: str,
                  config: dict | None = None) -> Network:
    """timm's `architecture` (pretrained=False: nothing is downloaded) with `state` loaded
    strictly, after the key map it needs; ArchitectureError when it cannot be."""
    import timm
    import torch

    config = config or {}
    num_classes = config.get("num_classes")
    kwargs = {"num_classes": num_classes} if type(num_classes) is int and num_classes > 0 else {}
    try:
        model = timm.create_model(architecture, pretrained=False, **kwargs)
    except RuntimeError as error:  # timm: "Unknown model (name)"
        raise ArchitectureError(f"timm cannot build architecture {architecture!r}: "
                                f"{one_line(error, 200)}") from None
    key_map = key_map_for(list(state), model)
    mapped = {key_map.get(k, k): torch.as_tensor(v) for k, v in state.items()}
    _load_strict(model, mapped, architecture)
    model.eval()
    return Network(model, architecture, key_map, data_config(model, config))


def _load_strict(model, state: dict, architecture: str) -> None:
    """Every key of the model from `state`, of the right shape, and nothing left over."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches", wrong)) if v]
        raise ArchitectureError(one_line(f"checkpoint does not load into {architecture}: "
                                         + "; ".join(parts), 300))
    with_dtypes = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(with_dtypes, strict=True)


def data_config(model, config: dict) -> dict:
    """timm's evaluation transform settings: the checkpoint's config.json `pretrained_cfg` where
    it gives them, else the architecture's defaults."""
    import timm.data

    given = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    pretrained = dict(getattr(model, "pretrained_cfg", {}) or {})
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode"):
        if key in given and isinstance(given[key], list | tuple | float | int | str):
            pretrained[key] = tuple(given[key]) if isinstance(given[key], list) else given[key]
    return timm.data.resolve_data_config({}, pretrained_cfg=pretrained, model=model)


def key_map_for(keys: list[str], model) -> dict[str, str]:
    """Checkpoint key -> model key: the identity for timm checkpoints, the EfficientNet-PyTorch
    renaming for checkpoints in its layout (`_conv_stem`, `_blocks.N`) loaded into a timm
    EfficientNet."""
    if "_conv_stem.weight" in keys and hasattr(model, "blocks"):
        return efficientnet_pytorch_key_map(keys, model)
    return {k: k for k in keys}


# EfficientNet-PyTorch (lukemelas) module names -> timm's, per block kind.
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                "_bn2": "bn2"}  # no expansion: timm's DepthwiseSeparableConv
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def efficientnet_pytorch_key_map(keys: list[str], model) -> dict[str, str]:
    """EfficientNet-PyTorch's flat block list (`_blocks.N`) onto timm's stages (`blocks.S.I`),
    block N being timm's N-th block in order; a block without `_expand_conv` is timm's
    DepthwiseSeparableConv. Keys it does not know are kept (the strict load then names them)."""
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(m.group(1)) for m in map(_BLOCK_KEY.match, keys)
                if m and m.group(2) == "_expand_conv"}
    out = {}
    for key in keys:
        match = _BLOCK_KEY.match(key)
        if match and int(match.group(1)) < len(blocks):
            n, module, leaf = int(match.group(1)), match.group(2), match.group(3)
            names = _INVERTED_RESIDUAL if n in expanded else _FIRST_BLOCK
            out[key] = f"{blocks[n]}.{names.get(module, module)}.{leaf}"
            continue
        module, _, leaf = key.partition(".")
        out[key] = f"{_STEM_AND_HEAD.get(module, module)}.{leaf}"
    return out


def rebuild(model_id: str, source: str, revision: str | None = None, arch: str | None = None,
            limits: ReadLimits = DEFAULT_LIMITS) -> Network:
    """The model of a models.parquet row, rebuilt: its whole checkpoint read, its architecture
    chosen (choose_architecture) and built. CheckpointError or ArchitectureError otherwise."""
    state, config = read_state_dict(source, revision, limits)
    return build_network(state, choose_architecture(model_id, config, arch), config)
