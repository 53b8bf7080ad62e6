"""Figures of one ranking: the unit heatmap (blocks x module types) and the block plot.

Both are drawn on the data's own scale (docs/method.md, "Output": the importance of a
unit is sigmoid(s), ranked descending): the heatmap's colours run from the run's lowest
to its highest importance, with every unit's rank written in its cell, and the block
plot's axis spans the same range. Units marked by :mod:`ila.reporting.marks` (a run's
selection, a top set) are outlined when tuned and hatched when frozen. A ranking whose
units are all equal is drawn in one colour and says "all equal".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ila.core.scores import LayerScores
from ila.reporting.figures import (
    data_limits,
    number_format,
    pyplot,
    save_png,
    short_labels,
    text_color,
    wrap,
)
from ila.reporting.marks import UnitMarks

__all__ = [
    "MARK_COLOR",
    "UnitGrid",
    "block_figure",
    "draw_marks",
    "heatmap_figure",
    "importance_label",
    "plot_blocks",
    "plot_unit_heatmap",
    "unit_grid",
]

MARK_COLOR = "#e8175d"
"""The outline of marked units: reads on every colour of viridis."""


@dataclass(frozen=True)
class UnitGrid:
    """A ranking laid out as blocks (rows) x module types (columns), in model order."""

    blocks: list[int]
    types: list[str]
    names: list[list[str | None]]
    """Unit name of every cell; None where a block has no unit of that type."""
    values: Any
    """rows x columns importances (numpy), NaN where there is no unit."""


def unit_grid(scores: LayerScores, values: dict[str, float] | None = None) -> UnitGrid:
    """The grid of ``scores``; cells hold ``values`` (by unit name) or the importances.
    Block units (``--stage2-unit block``) make one column."""
    blocks = sorted({u.block for u in scores.units})
    types: list[str] = []
    for u in scores.units:
        if (u.module_type or "block") not in types:
            types.append(u.module_type or "block")
    row = {b: i for i, b in enumerate(blocks)}
    col = {t: j for j, t in enumerate(types)}
    grid = np.full((len(blocks), len(types)), np.nan)
    names: list[list[str | None]] = [[None] * len(types) for _ in blocks]
    for u in scores.units:
        i, j = row[u.block], col[u.module_type or "block"]
        grid[i, j] = u.importance if values is None else values[u.name]
        names[i][j] = u.name
    return UnitGrid(blocks, types, names, grid)


def importance_label(scores: LayerScores) -> str:
    """What the importance is: sigmoid(s) for ILA, the scorer's score otherwise."""
    return "importance sigmoid(s)" if scores.method == "ila" else f"{scores.method} score"


def draw_marks(ax: Any, grid: UnitGrid, names: frozenset[str], kind: str) -> int:
    """Outline (tuned) or hatch (frozen) the cells of ``names``; returns how many."""
    from matplotlib.patches import Rectangle

    count = 0
    for i, row in enumerate(grid.names):
        for j, name in enumerate(row):
            if name is None or name not in names:
                continue
            frozen = kind == "frozen"
            ax.add_patch(
                Rectangle(
                    (j - 0.5, i - 0.5),
                    1,
                    1,
                    fill=False,
                    hatch="xxx" if frozen else None,
                    edgecolor=MARK_COLOR,
                    linewidth=0.8 if frozen else 2.2,
                    gid=f"mark:{kind}:{name}",
                )
            )
            count += 1
    return count


def _mark_handle(marks: UnitMarks) -> Any:
    from matplotlib.patches import Patch

    frozen = marks.kind == "frozen"
    return Patch(
        fill=False,
        hatch="xxx" if frozen else None,
        edgecolor=MARK_COLOR,
        linewidth=0.8 if frozen else 2.2,
        label=marks.label,
    )


def _heatmap_size(rows: int, cols: int) -> tuple[float, float, float]:
    """(width, height, cell height) in inches: tall enough for a rank in every cell."""
    cell_h = min(0.42, max(0.16, 8.0 / rows))
    return 1.2 + 0.72 * cols + 1.8, 2.2 + cell_h * rows, cell_h


def scale_label(what: str, low: float, high: float) -> str:
    """The colourbar or axis label of a scale drawn on the data's own range."""
    spec = number_format(low, high)
    return f"{what}\ncolour: this run's range, {low:{spec}} to {high:{spec}}"


def add_colorbar(fig: Any, ax: Any, image: Any, label: str) -> Any:
    """A colourbar beside ``ax`` whose five ticks (ends included) print distinctly."""
    low, high = image.norm.vmin, image.norm.vmax
    ticks = np.linspace(low, high, 5)
    spec = number_format(low, high)
    bar = fig.colorbar(image, ax=ax, aspect=30, pad=0.02)
    bar.set_ticks(ticks, labels=[f"{t:{spec}}" for t in ticks], fontsize=8)
    bar.set_label(label, fontsize=8)
    return bar


def _write_ranks(ax: Any, grid: UnitGrid, image: Any, rank: dict[str, int], size: float) -> None:
    """Each unit's rank in its cell, black or white against the cell's colour."""
    for i, row in enumerate(grid.names):
        for j, name in enumerate(row):
            if name is not None:
                color = text_color(image.cmap(image.norm(grid.values[i, j])))
                ax.text(j, i, str(rank[name]), ha="center", va="center", fontsize=size, color=color)


def heatmap_figure(scores: LayerScores, marks: UnitMarks | None = None) -> Any:
    """The unit heatmap of ``scores``: colour = importance on the run's own range (lowest
    to highest), number = rank (1 = most important), ``marks`` outlined or hatched."""
    plt = pyplot()
    grid = unit_grid(scores)
    rows, cols = grid.values.shape
    width, height, cell_h = _heatmap_size(rows, cols)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    limits = data_limits(grid.values.ravel())
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    title = f"{scores.method} importance of {len(scores.units)} units, {scores.model_id}"
    if limits is None:
        value = float(grid.values[np.isfinite(grid.values)][0])
        image = ax.imshow(grid.values, aspect="auto", cmap=cmap, vmin=value - 1, vmax=value + 1)
        title += f"\nall equal: every unit has importance {value:.4g}, so there is no ranking"
    else:
        image = ax.imshow(grid.values, aspect="auto", cmap=cmap, vmin=limits[0], vmax=limits[1])
        add_colorbar(fig, ax, image, scale_label(importance_label(scores), *limits))
        rank = {name: i + 1 for i, name in enumerate(scores.ranking())}
        size = min(8.0, cell_h * 72 * 0.55)
        if size >= 4.5:
            _write_ranks(ax, grid, image, rank, size)
            title += "\nnumber in a cell: its rank (1 = most important)"
    _label_grid(ax, grid, cell_h)
    ax.set_title(wrap(title, width, 9), fontsize=9)
    if marks is not None:
        draw_marks(ax, grid, marks.names, marks.kind)
        fig.legend(
            handles=[_mark_handle(marks)], loc="outside lower center", fontsize=8, frameon=False
        )
    return fig


def _label_grid(ax: Any, grid: UnitGrid, cell_h: float) -> None:
    """Module names along the bottom, block numbers down the side (thinned when dense)."""
    rows = len(grid.blocks)
    step = 1 if cell_h >= 0.18 else 2 if cell_h >= 0.09 else 5
    ax.set_yticks(range(0, rows, step), [str(b) for b in grid.blocks[::step]], fontsize=8)
    labels = short_labels(grid.types)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_xlabel("module", fontsize=9)
    ax.set_ylabel("block (layer)", fontsize=9)
    ax.tick_params(length=2)


def plot_unit_heatmap(scores: LayerScores, path: Path, *, marks: UnitMarks | None = None) -> None:
    """Write :func:`heatmap_figure` of ``scores`` as a PNG."""
    save_png(heatmap_figure(scores, marks), path)


def _block_points(grid: UnitGrid, marked: frozenset[str]) -> tuple[Any, Any, Any]:
    """x (block index, module units spread over its width in model order), y and
    whether each unit is marked."""
    cols = grid.values.shape[1]
    offsets = np.linspace(-0.32, 0.32, cols) if cols > 1 else np.zeros(1)
    xs, ys, hit = [], [], []
    for i, row in enumerate(grid.names):
        for j, name in enumerate(row):
            if name is not None:
                xs.append(i + offsets[j])
                ys.append(grid.values[i, j])
                hit.append(name in marked)
    return np.array(xs), np.array(ys), np.array(hit, dtype=bool)


def block_figure(scores: LayerScores, marks: UnitMarks | None = None) -> Any:
    """Every unit's importance by block (module units spread across the block's width
    in model order), the block means joined by a line, the axis on the data's range;
    ``marks`` drawn as filled dots (tuned) or crosses (frozen)."""
    plt = pyplot()
    grid = unit_grid(scores)
    rows, cols = grid.values.shape
    width = max(5.5, 0.3 * rows + 2.0)
    fig, ax = plt.subplots(figsize=(width, 3.8), layout="constrained")
    for i in range(1, rows, 2):
        ax.axvspan(i - 0.5, i + 0.5, color="#f2f4f7", zorder=0)
    xs, ys, hit = _block_points(grid, marks.names if marks is not None else frozenset())
    what = "block" if grid.types == ["block"] else "unit"
    label = what if marks is None else f"other {what}"
    ax.scatter(xs[~hit], ys[~hit], s=14, color="#9aa5b1", label=label, zorder=2)
    if marks is not None and hit.any():
        frozen = marks.kind == "frozen"
        ax.scatter(xs[hit], ys[hit], s=26 if frozen else 18, marker="x" if frozen else "o",
                   color=MARK_COLOR, label=marks.label, zorder=3)  # fmt: skip
    if cols > 1:
        means = np.nanmean(grid.values, axis=1)
        ax.plot(range(rows), means, color="black", linewidth=1.2, label="block mean", zorder=4)
    _block_axes(ax, scores, grid, ys)
    ax.set_title(wrap(_block_title(scores, ys, what), width, 9), fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncol=3, frameon=False)
    return fig


def _block_title(scores: LayerScores, ys: Any, what: str) -> str:
    title = f"{scores.method}: importance by block, {scores.model_id}"
    if data_limits(ys) is None:
        title += f"\nall equal: every {what} has importance {ys[0]:.4g}, so there is no ranking"
    return title


def _block_axes(ax: Any, scores: LayerScores, grid: UnitGrid, ys: Any) -> None:
    """Axis on the data's range (ticks printed distinctly), blocks along the bottom."""
    from matplotlib.ticker import FormatStrFormatter

    limits = data_limits(ys)
    if limits is None:
        pad = 0.1 * max(1.0, abs(float(ys[0])))
        ax.set_ylim(ys[0] - pad, ys[0] + pad)
        ax.set_ylabel(importance_label(scores), fontsize=8)
    else:
        pad = 0.06 * (limits[1] - limits[0])
        ax.set_ylim(limits[0] - pad, limits[1] + pad)
        ax.yaxis.set_major_formatter(FormatStrFormatter(f"%{number_format(*limits)}"))
        ax.set_ylabel(f"{importance_label(scores)}\n(axis: this run's range)", fontsize=8)
    rows = len(grid.blocks)
    step = 1 if rows <= 40 else 2 if rows <= 80 else 5
    ax.set_xticks(range(0, rows, step), [str(b) for b in grid.blocks[::step]], fontsize=8)
    ax.set_xlim(-0.6, rows - 0.4)
    ax.tick_params(axis="y", labelsize=8)
    xlabel = "block (layer)"
    if len(grid.types) > 1:
        xlabel += "; a block's dots, left to right: " + ", ".join(short_labels(grid.types))
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_blocks(scores: LayerScores, path: Path, *, marks: UnitMarks | None = None) -> None:
    """Write :func:`block_figure` of ``scores`` as a PNG."""
    save_png(block_figure(scores, marks), path)
