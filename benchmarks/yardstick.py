"""Yardstick: the training-free family search (`family_cosines`, `--family-yardstick`) on one
model's kernels of a size: EfficientNet-Lite0's 3x3 and 5x5 kernels (the demo zoo, real
weights) and 10,000 planted 7x7 kernels (three quarters noisy copies of the planted patterns,
a quarter isotropic noise: the kernels whose bounds prune least). Per case: building the four
family dictionaries and their dictionary indexes (once per process and kernel size), the
search alone by the dictionary index and by a flat FAISS search over the same members (the
yardstick's search before 2026-12-01), the whole `family_cosines` (search and refinement near
the threshold), and the largest difference between the two searches' cosines. Times are the
minimum of 3 runs, rates come from them."""

from __future__ import annotations

import numpy as np

from benchmarks._common import times

REPEATS = 3
PLANTED = 10_000


def run() -> list[dict]:
    rows = [_case(name, k, kernels) for name, k, kernels in _cases()]
    for row in rows:
        print(row, flush=True)
    return rows


def _cases() -> list[tuple[str, int, np.ndarray]]:
    from dwscan.io.arrays import list_column_to_matrix
    from dwscan.io.zoo import demo_zoo
    from dwscan.method.preprocess import VALID, centre_and_normalise
    from dwscan.stages.extract import extract_depthwise_kernels
    from dwscan.testing.synthetic import noisy_copies, planted_templates

    spec = demo_zoo()[0]
    table = extract_depthwise_kernels(spec.source, spec.model_id).kernels
    sizes = table.column("kernel_size").to_numpy()
    cases = []
    for k in (3, 5):
        raw = list_column_to_matrix(table.column("weights").filter(sizes == k), k * k)
        cases.append((f"{spec.model_id} {k}x{k}", k, raw))
    rng = np.random.default_rng(7)
    templates = planted_templates(7)
    copies = noisy_copies(templates, PLANTED * 3 // 4 // len(templates), 0.3, rng)[0]
    cases.append((f"planted 7x7 ({PLANTED:,})", 7, np.concatenate(
        [copies, rng.standard_normal((PLANTED - len(copies), 49))])))
    out = []
    for name, k, raw in cases:
        kernels, why = centre_and_normalise(raw.astype(np.float32))
        out.append((name, k, np.ascontiguousarray(kernels[why == VALID], np.float32)))
    return out


def _case(name: str, k: int, kernels: np.ndarray) -> dict:
    from dwscan.io.template_index import TemplateIndex
    from dwscan.method import yardstick

    def build() -> dict:
        yardstick.family_dictionary.cache_clear()
        return {f: yardstick.family_dictionary(f, k) for f in yardstick.FAMILY_ORDER}

    build_s = min(times(build, REPEATS))
    dictionaries = build()
    flat = {f: TemplateIndex(d.index.members, sign_invariant=True)
            for f, d in dictionaries.items()}

    def search(indexes: dict) -> np.ndarray:
        return np.max([indexes[f].nearest_with_sign(kernels)[1] for f in indexes], axis=0)

    cells = {f: d.index for f, d in dictionaries.items()}
    cells_s = min(times(lambda: search(cells), REPEATS))
    flat_s = min(times(lambda: search(flat), REPEATS))
    whole_s = min(times(lambda: yardstick.family_cosines(kernels, k, 0.8), REPEATS))
    difference = float(np.abs(search(cells) - search(flat)).max())
    return {"case": name, "kernels": len(kernels),
            "members": sum(len(d.parameters) for d in dictionaries.values()),
            "build s": build_s, "search s (dictionary index)": cells_s,
            "search s (flat FAISS)": flat_s, "flat / dictionary index": flat_s / cells_s,
            "family_cosines s": whole_s, "family_cosines kernels/s": len(kernels) / whole_s,
            "largest cosine difference": difference}
