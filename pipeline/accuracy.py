"""ImageNet accuracy of the scanned models, read from a table in timm's results format.

The default is a three-row excerpt of timm's `results/results-imagenet.csv`
(huggingface/pytorch-image-models, commit aa4b5850): the published top-1 of
`tf_efficientnet_lite0/1/2.in1k`, the accuracy keys of the demo zoo. Pass the whole file
(`--accuracy-csv`) to join any timm model.
"""

from __future__ import annotations

import csv
from pathlib import Path

DEMO_ACCURACY_CSV = Path(__file__).parent / "data" / "timm-results-imagenet-demo.csv"


def read_top1(path: str | Path = DEMO_ACCURACY_CSV) -> dict[str, float]:
    """`model` -> `top1` (%). timm lists a model once per image size, best first: keep the first."""
    top1: dict[str, float] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"model", "top1"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a timm results table, missing columns {sorted(missing)}")
        for row in reader:
            try:
                top1.setdefault(row["model"], float(row["top1"]))
            except (TypeError, ValueError):
                continue
    return top1
