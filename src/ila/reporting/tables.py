"""Markdown tables of layer scores."""

from __future__ import annotations

from ila.core.scores import LayerScores
from ila.reporting.figures import data_limits, number_format

__all__ = ["importance_format", "ranking_markdown"]


def importance_format(scores: LayerScores) -> str:
    """A format spec for the importances of ``scores``: 4 decimals, more where the units
    differ by less than that shows (a short stage 2 leaves gates 1e-6 apart)."""
    limits = data_limits(u.importance for u in scores.units)
    decimals = 4 if limits is None else max(4, int(number_format(*limits)[1:-1]))
    return f".{decimals}f"


def ranking_markdown(scores: LayerScores) -> str:
    """The full ranking (rank, unit, block, module type, importance, raw) and the block view;
    a tied ranking (ila.core.ties) says so above the table."""
    rank = {name: i + 1 for i, name in enumerate(scores.ranking())}
    by_name = {u.name: u for u in scores.units}
    spec = importance_format(scores)
    lines = [
        f"# Layer scores: {scores.method} on {scores.model_id}",
        "",
        f"{len(scores.units)} units ({scores.unit_kind}); importance = "
        + (
            "sigmoid(s) after ILA stage 2." if scores.method == "ila" else f"{scores.method} score."
        ),
        "",
        *_tie_note(scores),
        "| rank | unit | block | module | importance | raw |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for name in scores.ranking():
        u = by_name[name]
        lines.append(
            f"| {rank[name]} | `{name}` | {u.block} | {u.module_type or '-'} | "
            f"{u.importance:{spec}} | {u.raw:.4f} |"
        )
    if scores.unit_kind == "module":
        lines += [
            "",
            "## Blocks (mean importance of their units)",
            "",
            "| block | importance |",
            "|---:|---:|",
        ]
        lines += [f"| {b} | {v:{spec}} |" for b, v in scores.block_scores().items()]
    return "\n".join(lines) + "\n"


def _tie_note(scores: LayerScores) -> list[str]:
    """A paragraph saying that the ranking is a tie (ila.core.ties), or nothing."""
    found = scores.separation()
    if not found.tie:
        return []
    return [
        f"**The ranking is a tie**: {found.reason}. The order below is the model's order, "
        "not a measurement; `ila select` refuses it unless given `--allow-tied-ranking`.",
        "",
    ]
