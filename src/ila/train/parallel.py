"""Which multi-process launches ila supports, checked before a run writes anything.

Every training stage runs on the Hugging Face Trainer, so ``torchrun`` and
``accelerate launch`` give data parallelism (DDP): each process holds the whole model,
gradients (the stage-2 gate scores' among them: the GateBank is a registered submodule)
are averaged after each backward pass, and only rank 0 writes. See docs/distributed.md.

Refused, with the reason, instead of producing wrong artifacts:

- Parameter sharding (FSDP, DeepSpeed ZeRO-3). ila reads and writes whole parameters
  outside the forward pass: the stage-1 LoRA update-norm probe, the stage-2 gate scores
  (read each step, shifted in place by ``--stage2-budget project``), and the adapter or
  changed weights saved from rank 0. Under sharding each process holds a slice.
- FSDP or DeepSpeed on a machine without CUDA: accelerate's FSDP plugin raises "no
  available devices" once the Trainer starts (checked with accelerate 1.15), and DeepSpeed
  needs CUDA; refusing first gives one clear line before the run directory is touched.
- ``--stage2-budget project`` under DeepSpeed: DeepSpeed keeps its own fp32 copy of the
  parameters and would overwrite the projected gate scores at the next step.

The launch is read from the environment ``accelerate launch`` sets for its processes
(the same variables the Trainer reads): ``ACCELERATE_USE_FSDP``,
``ACCELERATE_USE_DEEPSPEED`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE`` or the stage in
``ACCELERATE_DEEPSPEED_CONFIG_FILE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ila.errors import IlaError

__all__ = ["requested_sharding", "require_supported_launch"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_sharding() -> tuple[str, int] | None:
    """(backend, ZeRO stage or 0) of an FSDP / DeepSpeed launch, or None for plain DDP."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "FSDP", 0
    if not _flag("ACCELERATE_USE_DEEPSPEED"):
        return None
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file and config_file.lower() != "none":
        path = Path(config_file)
        try:
            stage = json.loads(path.read_text(encoding="utf-8"))["zero_optimization"]["stage"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IlaError(
                f"{path}: cannot read zero_optimization.stage from the DeepSpeed config ({exc})"
            ) from exc
        return "DeepSpeed", int(stage)
    return "DeepSpeed", int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))


def require_supported_launch(device: str, *, project_budget: bool = False) -> None:
    """Refuse a launch ila would run incorrectly (see the module docstring).

    Args:
        device: the ``--device`` setting (``auto``, ``cpu``, ``cuda``...).
        project_budget: the run uses ``--stage2-budget project``.
    """
    sharding = requested_sharding()
    if sharding is None:
        return
    backend, stage = sharding
    name = backend if backend == "FSDP" else f"DeepSpeed ZeRO-{stage}"
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        raise IlaError(
            f"the launch asks for {name}, which needs CUDA devices (accelerate does not run "
            "it on the CPU); launch with examples/accelerate/ddp.yaml"
        )
    if backend == "FSDP" or stage == 3:
        raise IlaError(
            f"{name} shards each parameter across the processes, and ila reads and writes "
            "whole parameters outside the forward pass (stage-1 update norms, stage-2 gates, "
            "saved weights); launch with examples/accelerate/ddp.yaml or DeepSpeed ZeRO-2 "
            "(see docs/distributed.md)"
        )
    if project_budget:
        raise IlaError(
            f"--stage2-budget project shifts the gate scores in place after each step, which "
            f"{name} overwrites from its own fp32 copy; use --stage2-budget hinge or penalty"
        )
