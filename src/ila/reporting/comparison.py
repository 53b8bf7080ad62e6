"""The outputs of `ila compare`: comparison.json, comparison.md and two figures.

``pairwise.png`` holds one runs x runs heatmap per fraction (Jaccard of the important
sets) and two for the rank correlations; ``overlap_curves.png`` shows the Jaccard of
every pair against the fraction K, with the mean and the random expectation.
"""

from __future__ import annotations

from pathlib import Path

from ila.analysis.compare import Comparison
from ila.reporting.figures import pyplot, save_png
from ila.rundir import atomic_write_json, atomic_write_text

__all__ = [
    "COMPARISON_FILES",
    "comparison_markdown",
    "plot_overlap_curves",
    "plot_pairwise_heatmaps",
    "write_comparison_report",
]

COMPARISON_FILES = ("comparison.json", "comparison.md", "pairwise.png", "overlap_curves.png")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def comparison_markdown(comparison: Comparison) -> str:
    """Runs, overlap by fraction (mean over pairs vs random), and every pair's numbers."""
    c = comparison
    lines = [
        f"# Overlap of important units: {len(c.runs)} runs of {c.model_id}",
        "",
        f"{c.num_units} {c.unit_kind} units per run. The important set at fraction K is the "
        "top k = max(1, floor(K N + 0.5)) units of a ranking; overlap is the Jaccard index "
        "|A n B| / |A u B| of two runs' sets, shown next to the Jaccard expected of two random "
        "sets of k units and to the structural null: the Jaccard expected when each run's "
        "units are redrawn within module type, keeping how many of each type its top set "
        "holds (what agreeing only on which kinds of module matter gives). Spearman and "
        "Kendall tau-b correlate the importances of all units.",
        "",
        *(
            [
                "**The runs come from different models** (same layout, different files; "
                "compared with --allow-other-model).",
                "",
            ]
            if c.models_differ
            else []
        ),
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
    lines += [
        "",
        "## Overlap by fraction (all pairs)",
        "",
        "| fraction | k | mean Jaccard | min | max | random | structural null |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in c.by_fraction:
        lines.append(
            f"| {_percent(s.fraction)} | {s.k} | {s.mean_jaccard:.3f} | {s.min_jaccard:.3f} | "
            f"{s.max_jaccard:.3f} | {s.random_jaccard:.3f} | {s.structural_null_jaccard:.3f} |"
        )
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
        "",
        "![pairwise overlap](pairwise.png)",
        "",
        "![overlap vs fraction](overlap_curves.png)",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def plot_pairwise_heatmaps(comparison: Comparison, path: Path) -> None:
    """Runs x runs heatmaps: Jaccard at each fraction, then Spearman and Kendall tau-b."""
    plt = pyplot()
    c = comparison
    labels = c.labels
    panels = [
        (
            f"Jaccard, top {_percent(s.fraction)} (random {s.random_jaccard:.2f})",
            c.matrix("jaccard", s.fraction),
            0.0,
        )
        for s in c.by_fraction
    ]
    panels += [
        ("Spearman rho", c.matrix("spearman"), -1.0),
        ("Kendall tau-b", c.matrix("kendall_tau_b"), -1.0),
    ]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    size = 1.6 + 0.45 * len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (size + 1.2), rows * size), squeeze=False)
    annotate = len(labels) <= 10
    for ax, (title, matrix, low) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title, fontsize=8)
        if annotate:
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    color = "black" if value > low + 0.6 * (1.0 - low) else "white"
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"{len(labels)} runs of {c.model_id}: {c.num_units} {c.unit_kind} units", fontsize=9
    )
    fig.tight_layout()
    save_png(fig, path)


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


def write_comparison_report(comparison: Comparison, output_dir: Path) -> list[Path]:
    """Write :data:`COMPARISON_FILES` into ``output_dir``; returns their paths."""
    out = Path(output_dir)
    atomic_write_json(out / "comparison.json", comparison.to_dict())
    atomic_write_text(out / "comparison.md", comparison_markdown(comparison))
    plot_pairwise_heatmaps(comparison, out / "pairwise.png")
    plot_overlap_curves(comparison, out / "overlap_curves.png")
    return [out / name for name in COMPARISON_FILES]
