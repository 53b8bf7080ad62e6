"""Plots of one ILA run's training: the stage-1 loss with T marked, the stage-2 gates.

Both read the stage summaries the scorer writes (docs/method.md, "Stage 1" and "Stage 2"):
``stage1/summary.json`` (``loss_curve``, ``update_norm_curve``, ``T``, ``window``) and
``stage2/gate_trajectory.json`` (the gate values before the first step and after each).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ila.reporting.figures import data_limits, pyplot, save_png

__all__ = ["gate_figure", "plot_gate_trajectories", "plot_stage1_loss"]


def _rolling_mean(values: Sequence[float], window: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(len(values)):
        out.append(sum(values[i + 1 - window : i + 1]) / window if i + 1 >= window else None)
    return out


def plot_stage1_loss(summary: dict[str, Any], path: Path) -> None:
    """Stage-1 training loss per step, its windowed mean, and the stopping step T.

    The windowed mean is the series the epsilon-stability test compares (window W);
    the update norm ||Delta||_F, when recorded, is drawn on a second axis.
    """
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    loss = summary["loss_curve"]
    steps = list(range(1, len(loss) + 1))
    window = int(summary.get("window") or 0)
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    ax.plot(steps, loss, color="#9bb7d4", linewidth=1.0, label="training loss")
    if 1 < window <= len(loss):
        mean = _rolling_mean(loss, window)
        ax.plot(
            [s for s, m in zip(steps, mean, strict=True) if m is not None],
            [m for m in mean if m is not None],
            color="#24476b",
            linewidth=1.8,
            label=f"mean of last {window} steps",
        )
    t = summary.get("T")
    if t is not None:
        stable = "epsilon-stable" if summary.get("stable") else "step cap, not stable"
        ax.axvline(t, color="#c0392b", linestyle="--", linewidth=1.4, label=f"T = {t} ({stable})")
    ax.set_xlabel("stage-1 step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    norms = summary.get("update_norm_curve") or []
    if len(norms) == len(loss) and norms:
        twin = ax.twinx()
        twin.plot(steps, norms, color="#e69f00", linewidth=1.0, alpha=0.8, label="LoRA ||Delta||")
        twin.set_ylabel("sum of ||Delta_i||_F")
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    epsilon = summary.get("epsilon")
    ax.set_title(
        f"Stage 1: LoRA until epsilon-stable (epsilon {epsilon}, window {window})", fontsize=9
    )
    save_png(fig, path)


def _gate_axis(values: Any) -> tuple[float, float]:
    """The gates' y range: 0 to 1 where they spread over more than half of it, else their
    own range (padded), so gates that barely move are not drawn as one flat line."""
    limits = data_limits(values.ravel())
    if limits is None:
        value = float(values.ravel()[0])
        return max(0.0, value - 0.05), min(1.02, value + 0.05)
    if limits[1] - limits[0] > 0.5:
        return 0.0, 1.02
    pad = 0.08 * (limits[1] - limits[0])
    return limits[0] - pad, limits[1] + pad


def plot_gate_trajectories(
    trajectory: dict[str, Any],
    path: Path,
    *,
    stage2_loss: Sequence[float] = (),
    target_fraction: float | None = None,
    highlight: int = 5,
) -> None:
    """Write :func:`gate_figure` as a PNG."""
    figure = gate_figure(
        trajectory, stage2_loss=stage2_loss, target_fraction=target_fraction, highlight=highlight
    )
    save_png(figure, path)


def gate_figure(
    trajectory: dict[str, Any],
    *,
    stage2_loss: Sequence[float] = (),
    target_fraction: float | None = None,
    highlight: int = 5,
) -> Any:
    """Every gate sigmoid(s_i) over the stage-2 steps; the final top and bottom highlighted.

    Step 0 is the gates' initial value. The axis spans 0 to 1 when the gates spread over
    more than half of it, else their own range (the budget H is then drawn only if it
    falls inside, and the title says where it lies). A second panel shows the stage-2
    loss (model loss plus the budget term) when given.
    """
    import numpy as np

    plt = pyplot()
    names = trajectory["gate_names"]
    values = np.asarray(trajectory["values"], dtype=float)  # steps+1 x gates
    steps = np.arange(values.shape[0])
    panels = 2 if len(stage2_loss) else 1
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(6.5 if panels == 1 else 11.0, 4.6),
        squeeze=False,
        width_ratios=[3, 2][:panels],
    )
    ax = axes[0][0]
    for j in range(values.shape[1]):
        ax.plot(steps, values[:, j], color="#b0b0b0", linewidth=0.5, alpha=0.6)
    order = np.argsort(-values[-1], kind="stable")
    top = list(order[:highlight])
    bottom = list(order[-highlight:]) if len(order) > 2 * highlight else []
    colors = plt.get_cmap("tab10")
    for n, j in enumerate(top + bottom):
        kind = "top" if n < len(top) else "bottom"
        ax.plot(steps, values[:, j], color=colors(n % 10), linewidth=1.4,
                linestyle="-" if kind == "top" else ":", label=f"{kind}: {names[j]}")  # fmt: skip
    ax.plot(steps, values.mean(axis=1), color="black", linewidth=2.0, label="mean gate")
    _gate_axes(ax, values, target_fraction)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    if panels == 2:
        _loss_panel(axes[0][1], stage2_loss)
    fig.tight_layout()
    return fig


def _gate_axes(ax: Any, values: Any, target_fraction: float | None) -> None:
    """The gates' axis (:func:`_gate_axis`), the budget H where it falls inside, titles."""
    from matplotlib.ticker import MaxNLocator

    title = f"Stage 2: {values.shape[1]} gates"
    low, high = _gate_axis(values)
    if target_fraction is not None and low <= target_fraction <= high:
        ax.axhline(target_fraction, color="#c0392b", linestyle="--", linewidth=1.0)
        ax.text(0, target_fraction, f" budget H = {target_fraction}", fontsize=8, va="bottom")
    elif target_fraction is not None:
        side = "below" if target_fraction < low else "above"
        title += f" (budget H = {target_fraction}, {side} the gates' range drawn)"
    ax.set_ylim(low, high)
    ax.set_xlabel("stage-2 step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    full = (low, high) == (0.0, 1.02)
    ax.set_ylabel("gate sigmoid(s)" + ("" if full else "\n(axis: the gates' range)"))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _loss_panel(ax: Any, stage2_loss: Sequence[float]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.plot(range(1, len(stage2_loss) + 1), stage2_loss, color="#24476b")
    ax.set_xlabel("stage-2 step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (with budget term)")
    ax.set_title("Stage 2: training loss", fontsize=9)
    ax.grid(alpha=0.3)
