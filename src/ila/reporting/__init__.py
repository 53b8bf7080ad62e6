"""Tables, plots and reports made from saved JSON only (no model needed).

Plot functions use matplotlib's non-interactive Agg backend, so they work without a
display. ``write_score_report`` is the report every score run writes; ``ila report``
(:mod:`ila.reporting.run_report`) and ``ila compare`` (:mod:`ila.reporting.comparison`) build
the larger ones.
"""

from ila.reporting.plots import plot_blocks, plot_unit_heatmap
from ila.reporting.tables import ranking_markdown

__all__ = ["plot_blocks", "plot_unit_heatmap", "ranking_markdown", "write_score_report"]


def write_score_report(scores, output_dir) -> list:
    """Write ranking.md, heatmap.png and blocks.png for ``scores`` under ``output_dir``."""
    from pathlib import Path

    from ila.files import atomic_write_text

    out = Path(output_dir)
    atomic_write_text(out / "ranking.md", ranking_markdown(scores))
    paths = [out / "ranking.md", out / "blocks.png"]
    plot_blocks(scores, out / "blocks.png")
    if scores.unit_kind == "module":
        plot_unit_heatmap(scores, out / "heatmap.png")
        paths.append(out / "heatmap.png")
    return paths
