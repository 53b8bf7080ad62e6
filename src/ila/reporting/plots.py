"""Plots of layer scores: a blocks x module-types heatmap and a block bar chart."""

from __future__ import annotations

from pathlib import Path

from ila.core.scores import LayerScores
from ila.reporting.figures import pyplot as _pyplot
from ila.reporting.figures import save_png as _save

__all__ = ["plot_block_bars", "plot_unit_heatmap"]


def plot_unit_heatmap(scores: LayerScores, path: Path) -> None:
    """Importance of every unit as a blocks (rows) x module types (columns) heatmap."""
    import numpy as np

    plt = _pyplot()
    blocks = sorted({u.block for u in scores.units})
    types: list[str] = []
    for u in scores.units:
        if u.module_type not in types:
            types.append(u.module_type)
    grid = np.full((len(blocks), len(types)), np.nan)
    row = {b: i for i, b in enumerate(blocks)}
    col = {t: j for j, t in enumerate(types)}
    for u in scores.units:
        grid[row[u.block], col[u.module_type]] = u.importance
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(types), 1.0 + 0.22 * len(blocks)))
    image = ax.imshow(
        grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, np.nanmax(grid))
    )
    ax.set_xticks(range(len(types)), [t.split(".")[-1] for t in types], rotation=45, ha="right")
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("module")
    ax.set_ylabel("block")
    ax.set_title(f"{scores.method} importance: {scores.model_id}", fontsize=9)
    fig.colorbar(image, ax=ax, label="importance")
    _save(fig, path)


def plot_block_bars(scores: LayerScores, path: Path) -> None:
    """Block view: mean importance of each block's units as bars."""
    plt = _pyplot()
    block_scores = scores.block_scores()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * len(block_scores) + 1.5), 2.8))
    blocks = list(block_scores)
    ax.bar(range(len(blocks)), list(block_scores.values()), color="#3b6ea8")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("block")
    ax.set_ylabel("mean importance")
    ax.set_ylim(0, max(1e-9, max(block_scores.values())) * 1.05)
    ax.set_title(f"{scores.method}: block importance ({scores.model_id})", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    _save(fig, path)
