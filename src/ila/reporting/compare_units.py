"""`ila compare`'s units.png: every run's ranking on the model's units, side by side.

One panel per run, coloured by rank (the scale every run shares, whatever its scorer's
range) with the run's top set at the smallest compared fraction outlined (docs/method.md,
"Output": the important set is the top k = max(1, floor(K N + 0.5)) units); a last panel
counts, for each unit, the runs whose top set holds it, outlining the units in every run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ila.core.scores import LayerScores, top_count
from ila.reporting.figures import pyplot, save_png, short_labels, wrap
from ila.reporting.plots import UnitGrid, draw_marks, unit_grid

__all__ = ["plot_compare_units", "units_figure"]

_PER_ROW = 5


def _panel_size(grid: UnitGrid) -> tuple[float, float]:
    rows, cols = grid.values.shape
    return 0.7 + 0.32 * cols, 1.2 + min(0.3, max(0.12, 7.0 / rows)) * rows


def _rank_ticks(n: int) -> list[int]:
    """Ticks of a 1..n rank scale: both ends and round numbers not crowding them."""
    from matplotlib.ticker import MaxNLocator

    inner = MaxNLocator(5, integer=True).tick_values(1, n)
    gap = 0.06 * (n - 1)
    return [1, *(int(t) for t in inner if 1 + gap < t < n - gap), n]


def _label_panel(ax: Any, grid: UnitGrid, first: bool) -> None:
    rows = len(grid.blocks)
    step = 1 if rows <= 32 else 2 if rows <= 64 else 5
    ax.set_yticks(range(0, rows, step), [str(b) for b in grid.blocks[::step]] if first else [])
    ax.tick_params(axis="y", labelsize=7, length=2)
    rotation = 90 if len(grid.types) > 1 else 0
    ax.set_xticks(range(len(grid.types)), short_labels(grid.types), rotation=rotation, fontsize=7)
    if first:
        ax.set_ylabel("block (layer)", fontsize=8)


def units_figure(scores: Sequence[LayerScores], labels: Sequence[str], fraction: float) -> Any:
    """The figure of ``scores`` (one model's layout, labelled ``labels``) with each run's
    top ``fraction`` outlined and the count of runs holding each unit in their top set."""
    plt = pyplot()
    n = len(scores[0].units)
    k = top_count(n, fraction)
    tops = [frozenset(s.top(fraction)) for s in scores]
    grids = [unit_grid(s, {name: i + 1 for i, name in enumerate(s.ranking())}) for s in scores]
    counts = {u.name: sum(u.name in top for top in tops) for u in scores[0].units}
    consensus = unit_grid(scores[0], counts)
    panels = len(scores) + 1
    ncols = min(_PER_ROW, panels)
    nrows = -(-panels // ncols)
    width, height = _panel_size(grids[0])
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * width + 1.6, nrows * height + 1.0),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.flat)
    for index, (ax, grid, label, top) in enumerate(zip(flat, grids, labels, tops, strict=False)):
        rank_image = ax.imshow(grid.values, aspect="auto", cmap="viridis_r", vmin=1, vmax=n)
        draw_marks(ax, grid, top, "tuned")
        ax.set_title(wrap(label, width, 8), fontsize=8)
        _label_panel(ax, grid, index % ncols == 0)
    ax = flat[len(scores)]
    runs = len(scores)
    cmap = plt.get_cmap("Greens", runs + 1)
    count_image = ax.imshow(consensus.values, aspect="auto", cmap=cmap, vmin=-0.5, vmax=runs + 0.5)
    everywhere = frozenset(name for name, c in counts.items() if c == runs)
    draw_marks(ax, consensus, everywhere, "tuned")
    ax.set_title(wrap(f"runs with the unit in their top {100 * fraction:g}%", width, 8), fontsize=8)
    _label_panel(ax, consensus, True)
    for extra in flat[panels:]:
        extra.axis("off")
    bar = fig.colorbar(rank_image, ax=flat[: len(scores)], aspect=40, pad=0.01)
    bar.set_ticks(_rank_ticks(n))
    bar.ax.invert_yaxis()
    bar.set_label(f"rank (1 = most important, {n} = least)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    counts_bar = fig.colorbar(count_image, ax=ax, ticks=range(runs + 1), aspect=30, pad=0.02)
    counts_bar.set_label("runs", fontsize=8)
    counts_bar.ax.tick_params(labelsize=7)
    fig.suptitle(
        wrap(
            f"{len(scores)} runs of {scores[0].model_id}: colour = rank; outlined: "
            f"the run's top {100 * fraction:g}% (k = {k} of {n}); last panel: outlined where "
            f"all {runs} runs agree ({len(everywhere)} unit{'' if len(everywhere) == 1 else 's'})",
            ncols * width + 1.6,
            9,
        ),
        fontsize=9,
    )
    return fig


def plot_compare_units(
    scores: Sequence[LayerScores], labels: Sequence[str], fraction: float, path: Path
) -> None:
    """Write :func:`units_figure` as a PNG."""
    save_png(units_figure(scores, labels, fraction), path)
