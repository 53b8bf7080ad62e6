"""Matplotlib without a display: the Agg backend, and PNGs written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_png"]


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
