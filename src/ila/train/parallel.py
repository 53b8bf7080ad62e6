"""Which multi-process launches ila supports, checked before a run writes anything.

Every training stage runs on the Hugging Face Trainer, so ``torchrun`` and
``accelerate launch`` give data parallelism (DDP): each process holds the whole model,
gradients (the stage-2 gate scores' among them: the GateBank is a registered submodule)
are averaged after each backward pass, and only rank 0 writes. See docs/distributed.md.

FSDP version 2 (``fsdp_version: 2``, examples/accelerate/fsdp.yaml) shards every
parameter over the processes. ila reads the few parameters it needs whole outside the
forward pass through :mod:`ila.train.sharding` (the stage-1 LoRA A and B, the stage-2
gate scores, the weights a fine-tune saves), on every process, and writes from rank 0.
Supported under FSDP: ``ila score`` with the ``ila``, ``lora-norm`` and model-free scorers
and a LoRA stage 1, and ``ila finetune`` (LoRA or full, without ``--merge``).

Refused, with the reason, instead of producing wrong artifacts or an out-of-memory:

- FSDP or DeepSpeed on a machine without CUDA: accelerate's FSDP plugin raises "no
  available devices" once the Trainer starts (checked with accelerate 1.15), and DeepSpeed
  needs CUDA; refusing first gives one clear line before the run directory is touched.
- FSDP version 1: it flattens a block's parameters into one sharded buffer, so a unit's
  weights cannot be read as a tensor of their own (FSDP2 keeps one ``DTensor`` each).
- DeepSpeed ZeRO-3: it partitions parameters into DeepSpeed's own buffers, which ila's
  readers do not gather (DeepSpeed cannot be installed on the CPU machines ila is tested
  on). ZeRO-1/2 keep whole parameters and run.
- Under FSDP, the parts that need a whole model or whole weights in one process: ``ila
  eval`` and ``ila run``'s evaluation (they load the whole model on rank 0), the scorers
  that read whole weights or gradients outside the Trainer (``grad-norm``, ``snr``,
  ``block-influence``), a full-fine-tuning stage 1 (it keeps a whole copy of W(0) and adds
  Delta x in hooks), a 4-bit base (bitsandbytes' 4-bit storage must be set up for FSDP,
  which ila does not do yet) and ``--merge``.
- ``--stage2-budget project`` under DeepSpeed: DeepSpeed keeps its own fp32 copy of the
  parameters and would overwrite the projected gate scores at the next step.

The launch is read from the environment ``accelerate launch`` sets for its processes
(the same variables the Trainer reads): ``ACCELERATE_USE_FSDP`` and ``FSDP_VERSION``,
``ACCELERATE_USE_DEEPSPEED`` and ``ACCELERATE_DEEPSPEED_ZERO_STAGE`` or the stage in
``ACCELERATE_DEEPSPEED_CONFIG_FILE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ila.config import setting
from ila.errors import IlaError, argument

__all__ = ["fsdp_requested", "is_main_process", "requested_sharding", "require_supported_launch"]


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun / accelerate launch (env RANK).

    Only the main process writes the run directory; the other ranks train and compute the
    same values but leave the files to rank 0.
    """
    return int(os.environ.get("RANK", "0")) == 0


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


_FSDP_SCORERS = ("ila", "lora-norm", "first", "last", "random")


def fsdp_requested() -> bool:
    """Whether this process was launched with FSDP (by ``accelerate launch``)."""
    return _flag("ACCELERATE_USE_FSDP")


def require_supported_launch(
    device: str,
    *,
    command: str = "score",
    project_budget: bool = False,
    scorer: str = "ila",
    stage1_method: str = "lora",
    quantization: str = "none",
    merge: bool = False,
    evaluate: bool = False,
) -> None:
    """Refuse a launch ila would run incorrectly (see the module docstring).

    Args:
        device: the ``--device`` setting (``auto``, ``cpu``, ``cuda``...).
        command: the ila command (``score``, ``finetune``, ``run``, ``eval``).
        project_budget: the run uses ``--stage2-budget project``.
        scorer: the scoring method (``--scorer``).
        stage1_method: ``--stage1-method``.
        quantization: ``--quantization``.
        merge: the fine-tune merges its adapter (``--merge``).
        evaluate: the command evaluates the fine-tuned model (``ila run --evaluate``).
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
    if backend == "FSDP":
        _require_fsdp_support(
            command=command,
            scorer=scorer,
            stage1_method=stage1_method,
            quantization=quantization,
            merge=merge,
            evaluate=evaluate,
        )
        return
    if stage == 3:
        raise IlaError(
            "DeepSpeed ZeRO-3 partitions each parameter into DeepSpeed's own buffers, which "
            "ila does not gather to read the stage-1 update norms, the stage-2 gates and "
            "the saved weights; launch with examples/accelerate/fsdp.yaml (FSDP2), "
            "DeepSpeed ZeRO-2 or ddp.yaml (see docs/distributed.md)"
        )
    if project_budget:
        raise IlaError(
            setting("stage2", "budget"),
            f" project shifts the gate scores in place after each step, which "
            f"{name} overwrites from its own fp32 copy; use ",
            setting("stage2", "budget"),
            " hinge or penalty",
        )


def _require_fsdp_support(
    *,
    command: str,
    scorer: str,
    stage1_method: str,
    quantization: str,
    merge: bool,
    evaluate: bool,
) -> None:
    """The FSDP rules of :func:`require_supported_launch`."""
    version = os.environ.get("FSDP_VERSION", "1").strip()
    if version != "2":
        raise IlaError(
            f"the launch uses FSDP version {version}, which flattens each block's weights "
            "into one buffer that ila cannot read per unit; set fsdp_version: 2 in the "
            "accelerate config (examples/accelerate/fsdp.yaml)"
        )
    whole_model = "loads the whole model in one process"
    if command == "eval":
        raise IlaError(
            f"ila eval {whole_model}; run it without FSDP (one process, or torchrun / "
            "ddp.yaml for data parallelism)"
        )
    if command == "run" and evaluate:
        raise IlaError(
            f"ila run's evaluation {whole_model}; under FSDP turn off ",
            setting("run", "evaluate"),
            " and run ila eval on the fine-tune afterwards without FSDP",
        )
    if command in ("score", "run") and scorer not in _FSDP_SCORERS:
        raise IlaError(
            argument("scorer"),
            f" {scorer} reads whole weights or gradients outside the Trainer, "
            f"which FSDP shards; under FSDP use one of {', '.join(_FSDP_SCORERS)}, or run "
            f"{scorer} without FSDP",
        )
    if command in ("score", "run") and stage1_method == "full":
        raise IlaError(
            setting("stage1", "method"),
            " full keeps a whole copy of every unit's weights and adds "
            "Delta x in hooks, which FSDP's sharded weights do not allow; use ",
            setting("stage1", "method"),
            " lora under FSDP",
        )
    if quantization != "none":
        raise IlaError(
            setting("model", "quantization"),
            f" {quantization} under FSDP needs bitsandbytes' 4-bit storage "
            "set up for sharding, which ila does not do yet; use one GPU for a 4-bit base, "
            "or FSDP with ",
            setting("model", "quantization"),
            " none",
        )
    if merge:
        raise IlaError(
            setting("finetune", "merge"),
            " under FSDP would gather the whole model in one process; fine-tune without ",
            setting("finetune", "merge"),
            " and merge the saved adapter afterwards in one process",
        )
