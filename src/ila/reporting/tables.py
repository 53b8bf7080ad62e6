"""Markdown tables of layer scores."""

from __future__ import annotations

from ila.core.scores import LayerScores

__all__ = ["ranking_markdown"]


def ranking_markdown(scores: LayerScores) -> str:
    """The full ranking (rank, unit, block, module type, importance, raw) and the block view;
    a tied ranking (ila.core.ties) says so above the table."""
    rank = {name: i + 1 for i, name in enumerate(scores.ranking())}
    by_name = {u.name: u for u in scores.units}
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
            f"{u.importance:.4f} | {u.raw:.4f} |"
        )
    if scores.unit_kind == "module":
        lines += [
            "",
            "## Blocks (mean importance of their units)",
            "",
            "| block | importance |",
            "|---:|---:|",
        ]
        lines += [f"| {b} | {v:.4f} |" for b, v in scores.block_scores().items()]
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
