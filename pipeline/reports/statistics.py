"""Do better models have more clusterable kernels? Correlations and group differences over models,
each with a bootstrap interval and its n.

Models are the unit: every interval resamples models (with replacement), never kernels, since
kernels of one model are not independent draws.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from dwscan import schemas

MIN_MODELS = 5  # below this a correlation is reported, but flagged as too few to mean much
REFERENCE_PRETRAIN = "in1k"
BOOTSTRAP_SAMPLES = 2000


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as Spearman's rho needs). One sort: the
    bootstrap ranks thousands of resamples, which makes this the report stage's hot spot."""
    order = values.argsort(kind="stable")
    ordered = values[order]
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    first[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(first)  # where each run of tied values begins, 0-based
    counts = np.diff(np.append(starts, len(values)))
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rank(x), rank(y))


CORRELATIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman": spearman, "pearson": pearson}


def bootstrap_interval(statistic: Callable[..., float], samples: list[np.ndarray],
                       n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       paired: bool = True) -> tuple[float | None, float | None]:
    """Percentile 95% interval of `statistic(*samples)`. Paired: one set of resampled indices for
    every sample (x and y of the same models); unpaired: each sample resampled on its own."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        if paired:
            index = rng.integers(0, len(samples[0]), len(samples[0]))
            values.append(statistic(*(s[index] for s in samples)))
        else:
            values.append(statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples)))
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < n_boot / 2:  # most resamples degenerate (too few distinct models)
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def correlation_table(clusterability: pa.Table, n_boot: int = BOOTSTRAP_SAMPLES,
                      seed: int = 0) -> pa.Table:
    """CORRELATION rows: clustered fraction vs top-1 (all models, each family, each kernel size
    over all models) and each pre-training group's mean clustered fraction minus in1k's."""
    rows = [r for r in clusterability.to_pylist() if r["clustered_fraction"] is not None]
    overall = [r for r in rows if r["kernel_size"] is None]
    with_top1 = [r for r in overall if r["top1"] is not None]
    out = []
    scopes = [("all", None, with_top1)]
    for family in sorted({r["family"] for r in with_top1 if r["family"]}):
        scopes.append((family, None, [r for r in with_top1 if r["family"] == family]))
    for k in sorted({r["kernel_size"] for r in rows if r["kernel_size"] is not None}):
        scopes.append(("all", k, [r for r in rows if r["kernel_size"] == k
                                  and r["top1"] is not None]))
    for scope, k, members in scopes:
        x = np.array([r["top1"] for r in members], dtype=float)
        y = np.array([r["clustered_fraction"] for r in members], dtype=float)
        by_seed = _by_seed(members)
        for name, statistic in CORRELATIONS.items():
            row = _estimate(name, scope, k, statistic, [x, y], n_boot, seed, paired=True)
            if row["estimate"] is not None and by_seed is not None:
                estimates = [statistic(x, y_seed) for y_seed in by_seed.T]
                if all(np.isfinite(estimates)):
                    row["estimate_seed_min"], row["estimate_seed_max"] = (min(estimates),
                                                                          max(estimates))
            out.append(row)
    reference = np.array([r["clustered_fraction"] for r in overall
                          if r["pretrain"] == REFERENCE_PRETRAIN], dtype=float)
    for group in sorted({r["pretrain"] for r in overall} - {REFERENCE_PRETRAIN, None}):
        values = np.array([r["clustered_fraction"] for r in overall if r["pretrain"] == group],
                          dtype=float)
        row = _estimate("mean_difference", group, None, _mean_difference, [values, reference],
                        n_boot, seed, paired=False)
        row["n_reference"] = len(reference)
        out.append(row)
    return pa.Table.from_pylist(out, schema=schemas.CORRELATION)


def _by_seed(members: list[dict]) -> np.ndarray | None:
    """(models, seeds) clustered fractions under each seed's own set; None unless every model
    has them for the same seeds."""
    values = [r.get("clustered_fraction_by_seed") for r in members]
    if not values or any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    return np.array(values, dtype=float)


def _mean_difference(values: np.ndarray, reference: np.ndarray) -> float:
    if len(values) == 0 or len(reference) == 0:
        return float("nan")
    return float(values.mean() - reference.mean())


def _estimate(name: str, scope: str, kernel_size: int | None, statistic, samples, n_boot: int,
              seed: int, paired: bool) -> dict:
    n = len(samples[0])
    smallest = min(len(s) for s in samples)
    row = {"statistic": name, "scope": scope, "kernel_size": kernel_size, "n": n,
           "estimate": None, "ci_low": None, "ci_high": None, "note": None}
    needed = 3 if paired else 1
    if smallest < needed:
        row["note"] = (f"{smallest} models: too few for an estimate" if paired else
                       f"no {REFERENCE_PRETRAIN} model to compare with" if len(samples[1]) == 0
                       else "no model in the group")
        return row
    estimate = statistic(*samples)
    if not np.isfinite(estimate):
        row["note"] = "no variation to correlate"
        return row
    row["estimate"] = estimate
    if smallest < MIN_MODELS:  # a bootstrap of 3 or 4 models mostly redraws the same few points
        row["note"] = (f"fewer than {MIN_MODELS} models ({smallest}): not a reliable estimate, "
                       f"no interval")
        return row
    row["ci_low"], row["ci_high"] = bootstrap_interval(statistic, samples, n_boot, seed, paired)
    return row


def format_correlations(table: pa.Table) -> str:
    """The correlation table as aligned text, caveats included."""
    from dwscan.reports.tables import format_text_table

    lines = [["statistic", "scope", "k", "n", "estimate", "seed range", "95% interval", "note"]]
    for r in table.to_pylist():
        interval = ("-" if r["ci_low"] is None
                    else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        scope = r["scope"] if r["n_reference"] is None else f"{r['scope']} - in1k"
        n = str(r["n"]) if r["n_reference"] is None else f"{r['n']} vs {r['n_reference']}"
        lines.append([r["statistic"], scope, "all" if r["kernel_size"] is None else
                      str(r["kernel_size"]), n,
                      "-" if r["estimate"] is None else f"{r['estimate']:+.3f}",
                      "-" if r.get("estimate_seed_min") is None else
                      f"{r['estimate_seed_min']:+.3f}..{r['estimate_seed_max']:+.3f}", interval,
                      (r["note"] or "").rstrip()])
    return format_text_table(lines, left_aligned={0, 1, 7})
