"""Shared by the benchmarks that measure against finished ILA runs: the runs' own model,
data and batch settings as `ila` flags, and the ranking agreement of run pairs."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

FRACTION = 0.25


def run_flags(config: dict, threads: int, *, data: str | None = None) -> list[str]:
    """``config``'s (a run's config.yaml) model, data, split and batch as flags, on the CPU
    at ``threads`` threads; ``data`` replaces the data source (same split settings)."""
    data_cfg, model, train = config["data"], config["model"], config["train"]
    flags = ["--model", str(model["model"]), "--data", data or str(data_cfg["data"])]
    flags += ["--max-length", str(data_cfg["max_length"])]
    flags += ["--batch-size", str(train["batch_size"])]
    flags += ["--split-seed", str(data_cfg["split_seed"])]
    flags += ["--eval-fraction", str(data_cfg["eval_fraction"])]
    flags += ["--device", "cpu", "--threads", str(threads)]
    if data is None and data_cfg.get("limit") is not None:
        flags += ["--limit", str(data_cfg["limit"])]
    return flags


def ranking_pairs(a: list[Any], b: list[Any], *, same: bool) -> list[tuple[float, float, float]]:
    """(top-25% Jaccard, Spearman, structural null) of every pair of rankings: within ``a``
    when ``same``, else each of ``a`` against each of ``b`` (``ila compare``'s measures)."""
    from ila.analysis.compare import compare_scores

    chosen = itertools.combinations(a, 2) if same else itertools.product(a, b)
    out = []
    for x, y in chosen:
        pair = compare_scores([x, y], ["x", "y"], [FRACTION]).pairs[0]
        out.append((pair.jaccard[FRACTION], pair.spearman, pair.structural_null[FRACTION]))
    return out


def spread(values: list[float], digits: int = 2) -> str:
    """``mean`` or ``mean (min-max)``."""
    mean = f"{statistics.fmean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def pair_rows(rows: dict[str, list[tuple[float, float, float]]]) -> list[str]:
    """Markdown table rows: pairs, Jaccard, Spearman and structural null per row name."""
    lines = [
        "| pair | pairs | top-25% Jaccard | Spearman | structural null |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in rows.items():
        if values:
            lines.append(
                f"| {name} | {len(values)} | {spread([v[0] for v in values])} | "
                f"{spread([v[1] for v in values])} | {spread([v[2] for v in values])} |"
            )
    return lines
