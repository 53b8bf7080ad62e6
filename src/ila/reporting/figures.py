"""Matplotlib without a display (the Agg backend), PNGs written atomically, and the
small helpers every figure shares: the data's own colour range, readable cell text,
wrapped titles and short module labels."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "data_limits",
    "number_format",
    "pyplot",
    "save_png",
    "short_labels",
    "text_color",
    "wrap",
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically, then close it."""
    from ila.files import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(Path(path), buffer.getvalue())
    pyplot().close(fig)


def data_limits(values: Iterable[float]) -> tuple[float, float] | None:
    """(lowest, highest) of the finite ``values``; None when there is no spread to draw
    (every value equal, or none finite): the figure then says "all equal" instead of
    stretching a colour scale over nothing."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite or min(finite) == max(finite):
        return None
    return min(finite), max(finite)


def number_format(low: float, high: float, ticks: int = 5) -> str:
    """A format spec with enough decimals that ``ticks`` evenly spaced values from ``low``
    to ``high`` print differently (a spread of 1e-6 needs 7 decimals, one of 0.8 two)."""
    step = (high - low) / max(1, ticks - 1)
    decimals = 2 if step <= 0 else math.ceil(-math.log10(step)) + 1
    return f".{min(10, max(2, decimals))}f"


def text_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def wrap(text: str, width_in: float, fontsize: float = 9.0) -> str:
    """``text`` wrapped to fit ``width_in`` inches at ``fontsize`` points (titles of
    long model paths must not run past the figure)."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    lines = [textwrap.wrap(line, chars, break_long_words=True) or [""] for line in text.split("\n")]
    return "\n".join(part for line in lines for part in line)


def short_labels(names: Sequence[str]) -> list[str]:
    """The last dotted part of each name ('self_attn.q_proj' -> 'q_proj'), or the whole
    name where two names would share it."""
    last = [name.split(".")[-1] for name in names]
    return [
        short if last.count(short) == 1 else name for short, name in zip(last, names, strict=True)
    ]
