"""Training precision: float32 or 16-bit autocast, chosen for the machine (``--precision``).

bf16 autocast halves activation memory and is faster where the hardware has bf16 matrix
instructions: CUDA GPUs that support bf16 (Ampere and later), and CPUs with AVX512-BF16 or
AMX. On CPUs without them PyTorch emulates bf16 and a training step measured about 20x
slower than float32 (docs/results.md), so ``auto`` keeps float32 there. ``auto`` decides
from what the machine reports (``torch.cuda.is_bf16_supported()``, the CPU flags in
``/proc/cpuinfo``), which costs nothing and gives the same answer every time; ``fp32``,
``bf16`` and ``fp16`` force a choice (fp16 autocast, with the Trainer's loss scaling,
only on CUDA). Runs record the choice and its reason in ``environment.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ila.config import setting
from ila.errors import IlaError

__all__ = ["PRECISIONS", "PrecisionChoice", "choose_precision", "cpu_has_bf16"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, what was asked for, and why."""

    precision: str  # "fp32", "bf16" or "fp16"
    requested: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU reports AVX512-BF16 or AMX-BF16 (Linux; False where unknown)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def choose_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision for training on ``device`` given ``--precision`` ``requested``."""
    if requested not in PRECISIONS:
        raise IlaError(
            setting("train", "precision"), f" {requested!r}: choose one of {', '.join(PRECISIONS)}"
        )
    if requested == "fp16" and device.type != "cuda":
        raise IlaError(
            setting("train", "precision"),
            f" fp16 needs a CUDA device (this run trains on {device.type}); use bf16 or fp32",
        )
    if requested != "auto":
        return PrecisionChoice(requested, requested, "requested")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto", "the CUDA device supports bf16")
        return PrecisionChoice(
            "fp32",
            "auto",
            "the CUDA device has no bf16; --precision fp16 would use fp16 autocast",
        )
    if device.type == "cpu":
        if cpu_has_bf16():
            return PrecisionChoice("bf16", "auto", "the CPU has AVX512-BF16 or AMX")
        return PrecisionChoice(
            "fp32", "auto", "the CPU has no AVX512-BF16 or AMX (bf16 would be emulated, slower)"
        )
    return PrecisionChoice("fp32", "auto", f"no bf16 autocast chosen for {device.type}")
