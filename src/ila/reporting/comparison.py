"""The outputs of `ila compare`: comparison.json, comparison.md and three figures.

``pairwise.png`` holds one runs x runs heatmap per fraction (Jaccard of the important
sets) and two for the rank correlations, each coloured from chance to full agreement;
``overlap_curves.png`` shows the Jaccard of every pair against the fraction K, with the
mean and the random expectation; ``units.png`` (:mod:`ila.reporting.compare_units`) draws
every run's ranking on the model's units with its top set at the smallest fraction outlined.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ila.analysis.compare import Comparison
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.files import atomic_write_json, atomic_write_text
from ila.reporting.compare_units import plot_compare_units
from ila.reporting.figures import pyplot, save_png, text_color
from ila.reporting.plots import add_colorbar

__all__ = [
    "COMPARISON_FILES",
    "comparison_markdown",
    "pairwise_figure",
    "plot_overlap_curves",
    "plot_pairwise_heatmaps",
    "write_comparison_report",
]

COMPARISON_FILES = (
    "comparison.json",
    "comparison.md",
    "pairwise.png",
    "overlap_curves.png",
    "units.png",
)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def comparison_markdown(comparison: Comparison) -> str:
    """Runs, agreement of the top and bottom sets on every scale (mean over pairs with
    min and max), and every pair's numbers.

    Every column names its measure: a Jaccard is never shown as a share.
    """
    c = comparison
    lines = [
        f"# Overlap of important units: {len(c.runs)} runs of {c.model_id}",
        "",
        *_introduction(c),
        *(
            [
                "**The runs come from different models** (same layout, different files; "
                "compared with --allow-other-model).",
                "",
            ]
            if c.models_differ
            else []
        ),
        *_runs_table(c),
        *_agreement_table(c),
    ]
    head = " | ".join(f"Jaccard {_percent(f)}" for f in c.fractions)
    lines += [
        "",
        "## Pairs",
        "",
        f"| run A | run B | {head} | Spearman | Kendall tau-b |",
        "|---|---|" + "---:|" * (len(c.fractions) + 2),
    ]
    for p in c.pairs:
        values = " | ".join(f"{p.jaccard[f]:.3f}" for f in c.fractions)
        lines.append(f"| {p.a} | {p.b} | {values} | {p.spearman:.3f} | {p.kendall_tau_b:.3f} |")
    randoms = " | ".join(f"{s.random_jaccard:.3f}" for s in c.by_fraction)
    lines += [
        f"| random sets | | {randoms} | 0 | 0 |",
        *_pair_sets_table(c),
        "",
        "![pairwise overlap](pairwise.png)",
        "",
        "![overlap vs fraction](overlap_curves.png)",
        "",
        f"Every run's ranking on the units (colour: rank), its top {_percent(min(c.fractions))} "
        "outlined; the last panel counts the runs whose top set holds each unit.",
        "",
        "![units of every run](units.png)",
    ]
    return "\n".join(lines) + "\n"


SHARED = "shared fraction \\|A∩B\\|/k"
"""The shared fraction's column label, its pipes escaped for a markdown table."""


def _introduction(c: Comparison) -> list[str]:
    return [
        f"{c.num_units} {c.unit_kind} units per run. A run's top set at fraction K is its "
        "k = max(1, floor(K N + 0.5)) most important units, its bottom set its k least "
        "important ones (what freezing the bottom K acts on). Two runs' sets are measured "
        "on three scales, each next to what two random sets of k units give:",
        "",
        "- **Jaccard** = |A∩B| / |A∪B| (chance: hypergeometric). A Jaccard is not the share "
        "of a set that two runs have in common: Jaccard 0.5 means two thirds of each set "
        "is shared.",
        "- **shared fraction |A∩B|/k**: the share of either run's set that the other run's "
        "set also holds (= 2 Jaccard / (1 + Jaccard)); chance k/N.",
        "- **kappa** = (shared fraction - k/N) / (1 - k/N): 0 at chance, 1 for identical "
        "sets, below 0 for less overlap than chance.",
        "",
        "The top sets' Jaccard also stands next to the structural null, the Jaccard expected "
        "when each run's units are redrawn within module type, keeping how many of each type "
        "its top set holds (what agreeing only on which kinds of module matter gives), and "
        "its excess over it (Jaccard - null); and beside the within-type Jaccard: the "
        "Jaccard of the top K of each module type's own units (as Spectrum selects per "
        "type), averaged over types weighted by their unit counts, with its chance. Both "
        "show agreement that module-type composition cannot explain. Spearman and Kendall "
        "tau-b correlate the importances of all units.",
        "",
    ]


def _runs_table(c: Comparison) -> list[str]:
    lines = [
        "## Runs",
        "",
        "| run | method | data fingerprint | seed | T | Spearman vs stage-1 norm | source |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for run in c.runs:
        rho = run.get("spearman_vs_update_norm")
        seed = _cell(run["seed"])
        if run.get("ensemble_runs"):
            seed = f"ensemble of {run['ensemble_runs']}"
        lines.append(
            f"| {run['label']} | {run['method']} | {run['data_fingerprint'] or '-'} | "
            f"{seed} | {_cell(run['T'])} | {'-' if rho is None else f'{rho:.2f}'} | "
            f"{run['source'] or '-'} |"
        )
    return lines


def _spread(summary: object, measure: str, pairs: int) -> str:
    """``measure``'s 'mean [min, max]' over pairs from ``summary``'s mean_/min_/max_
    fields ('mean' alone for one pair; '-' where undefined: kappa at k = N)."""
    mean, low, high = (getattr(summary, f"{stat}_{measure}") for stat in ("mean", "min", "max"))
    if mean is None or low is None or high is None:
        return "-"
    return f"{mean:.3f}" if pairs == 1 else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _agreement_table(c: Comparison) -> list[str]:
    """One row per top and bottom set: every measure's mean over pairs [min, max]."""
    n = len(c.pairs)
    lines = [
        "",
        "## Overlap by fraction (all pairs)",
        "",
        f"Mean over the {n} pair{'s' if n != 1 else ''}"
        + (", [min, max] beside it" if n > 1 else "")
        + "; '-' where a measure is not computed for the set (or kappa is undefined, k = N).",
        "",
        _row(
            [
                "set",
                "k",
                "Jaccard",
                "chance Jaccard",
                "structural null Jaccard",
                "Jaccard - null",
                "within-type Jaccard",
                "within-type chance Jaccard",
                SHARED,
                "chance shared fraction k/N",
                "kappa",
            ]
        ),
        "|---|" + "---:|" * 10,
    ]
    for s in c.by_fraction:
        cells = [f"top {_percent(s.fraction)}", str(s.k), _spread(s, "jaccard", n)]
        cells += [f"{s.random_jaccard:.3f}", f"{s.structural_null_jaccard:.3f}"]
        cells += [_spread(s, "jaccard_minus_structural_null", n)]
        cells += [_spread(s, "within_type_jaccard", n), f"{s.chance_within_type_jaccard:.3f}"]
        cells += [_spread(s, "shared_fraction", n), f"{s.chance_shared_fraction:.3f}"]
        lines.append(_row([*cells, _spread(s, "kappa", n)]))
    for b in c.bottom:
        cells = [f"bottom {_percent(b.fraction)}", str(b.k), _spread(b, "jaccard", n)]
        cells += [f"{b.chance_jaccard:.3f}", "-", "-", "-", "-"]
        cells += [_spread(b, "shared_fraction", n), f"{b.chance_shared_fraction:.3f}"]
        lines.append(_row([*cells, _spread(b, "kappa", n)]))
    return lines


def _pair_sets_table(c: Comparison) -> list[str]:
    """Every pair, set by set: each measure of that pair (chances are in the table above)."""
    lines = [
        "",
        "## Pairs, set by set",
        "",
        _row(
            [
                "run A",
                "run B",
                "set",
                "k",
                "Jaccard",
                "structural null Jaccard",
                "Jaccard - null",
                "within-type Jaccard",
                SHARED,
                "kappa",
            ]
        ),
        "|---|---|---|" + "---:|" * 7,
    ]
    for p in c.pairs:
        for f, top in p.top.items():
            cells = [p.a, p.b, f"top {_percent(f)}", str(top.k), f"{top.jaccard:.3f}"]
            cells += [f"{p.structural_null[f]:.3f}", f"{p.jaccard_minus_structural_null[f]:.3f}"]
            cells += [f"{p.within_type_jaccard[f]:.3f}", f"{top.shared_fraction:.3f}"]
            lines.append(_row([*cells, _number(top.kappa)]))
        for f, bottom in p.bottom.items():
            cells = [p.a, p.b, f"bottom {_percent(f)}", str(bottom.k), f"{bottom.jaccard:.3f}"]
            cells += ["-", "-", "-", f"{bottom.shared_fraction:.3f}"]
            lines.append(_row([*cells, _number(bottom.kappa)]))
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _pair_panels(c: Comparison) -> list[tuple[str, str, float, list[list[float]]]]:
    """(title, colour-scale label, chance level, runs x runs matrix) of every panel."""
    panels = [
        (
            f"Jaccard, top {_percent(s.fraction)}",
            f"Jaccard; colour from chance\n(random sets, {s.random_jaccard:.2f}) to 1",
            s.random_jaccard,
            c.matrix("jaccard", s.fraction),
        )
        for s in c.by_fraction
    ]
    return [
        *panels,
        ("Spearman rho, all units", "Spearman rho; colour from\n0 (no relation) to 1", 0.0,
         c.matrix("spearman")),
        ("Kendall tau-b, all units", "Kendall tau-b; colour from\n0 (no relation) to 1", 0.0,
         c.matrix("kendall_tau_b")),
    ]  # fmt: skip


def _draw_pair_panel(
    fig: Any, ax: Any, panel: tuple[str, str, float, Any], labels: list[str]
) -> None:
    """One runs x runs heatmap coloured from the measure's chance level (or the lowest
    pair, if below it) to 1; the diagonal (a run with itself) is grey, and every pair's
    value is written in its cell when there are at most 10 runs."""
    import numpy as np

    title, scale, chance, matrix = panel
    values = np.array(matrix, dtype=float)
    np.fill_diagonal(values, np.nan)
    cmap = pyplot().get_cmap("viridis").with_extremes(bad="#dddddd")
    low = min(chance, float(np.nanmin(values))) if len(labels) > 1 else chance
    image = ax.imshow(values, cmap=cmap, vmin=low, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    add_colorbar(fig, ax, image, scale)
    ax.set_title(title, fontsize=8)
    if len(labels) <= 10:
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if i != j:
                    color = text_color(cmap(image.norm(value)))
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)


def pairwise_figure(comparison: Comparison) -> Any:
    """Runs x runs heatmaps: Jaccard at each fraction, then Spearman and Kendall tau-b,
    each coloured from its chance level to 1 (full agreement)."""
    plt = pyplot()
    c = comparison
    labels = c.labels
    panels = _pair_panels(c)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    size = 1.8 + 0.45 * len(labels)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * (size + 1.6), rows * (size + 0.4)),
        squeeze=False,
        layout="constrained",
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw_pair_panel(fig, ax, panel, labels)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"{len(labels)} runs of {c.model_id}: {c.num_units} {c.unit_kind} units", fontsize=9
    )
    return fig


def plot_pairwise_heatmaps(comparison: Comparison, path: Path) -> None:
    """Write :func:`pairwise_figure` as a PNG."""
    save_png(pairwise_figure(comparison), path)


def plot_overlap_curves(comparison: Comparison, path: Path) -> None:
    """Jaccard of each pair against the fraction K, with the mean and random sets."""
    plt = pyplot()
    c = comparison
    x = [100 * f for f in c.curve["fraction"]]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    many = len(c.curve["pairs"]) > 8
    for name, values in c.curve["pairs"].items():
        ax.plot(x, values, linewidth=0.8, alpha=0.5, label=None if many else name)
    ax.plot(x, c.curve["mean"], color="black", linewidth=2.0, label="mean of pairs")
    ax.plot(x, c.curve["random"], color="gray", linestyle="--", label="random sets")
    for f in c.fractions:
        ax.axvline(100 * f, color="#bbbbbb", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("important set: top K% of units")
    ax.set_ylabel("Jaccard overlap")
    ax.set_title(f"Overlap vs fraction ({c.model_id}, {c.num_units} units)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def write_comparison_report(
    comparison: Comparison, output_dir: Path, *, scores: Sequence[LayerScores]
) -> list[Path]:
    """Write :data:`COMPARISON_FILES` into ``output_dir``; returns their paths.
    ``scores`` are the compared runs' scores, in the order of ``comparison.labels``."""
    if len(scores) != len(comparison.labels):
        raise IlaError(
            f"write_comparison_report: {len(scores)} scores for {len(comparison.labels)} runs"
        )
    out = Path(output_dir)
    atomic_write_json(out / "comparison.json", comparison.to_dict())
    atomic_write_text(out / "comparison.md", comparison_markdown(comparison))
    plot_pairwise_heatmaps(comparison, out / "pairwise.png")
    plot_overlap_curves(comparison, out / "overlap_curves.png")
    plot_compare_units(scores, comparison.labels, min(comparison.fractions), out / "units.png")
    return [out / name for name in COMPARISON_FILES]
