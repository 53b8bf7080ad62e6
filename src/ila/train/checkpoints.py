"""Stage checkpoints: which Trainer checkpoint a resumed stage continues from.

The Trainer writes ``checkpoint-N/`` (weights, optimizer, scheduler, RNG states, its own
state) every ``--save-steps`` steps. ILA adds ``ila_state.json`` to each one, written
atomically *after* the Trainer has finished the folder on every process: the per-step
values the algorithm needs to continue exactly as an uninterrupted run would (the
stage-1 loss history the epsilon-stable test reads, the stage-2 gate scores, which
peft's adapter checkpoint does not hold, and their trajectory). A checkpoint is complete
only when that file is present, so a process killed while the Trainer writes a
checkpoint leaves a folder that is never resumed from.

``metrics.jsonl`` rows written after the checkpoint a stage resumes from describe steps
that are trained again; :func:`rewind_metrics` drops them so the file holds one row per
step of the run that produced the artifacts.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ila.errors import IlaError
from ila.files import atomic_write_json, atomic_write_text, read_json
from ila.run_files import CHECKPOINT_STATE_FILE
from ila.train.trainer import StepValues

__all__ = [
    "CHECKPOINT_STATE_FILE",
    "CheckpointState",
    "StageCheckpoint",
    "discard_incomplete_checkpoints",
    "last_complete_checkpoint",
    "load_adapter_weights",
    "rewind_metrics",
]


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class StageCheckpoint:
    """A complete checkpoint of one stage: its folder and the values ILA stored in it."""

    def __init__(self, folder: Path, state: dict[str, Any]) -> None:
        self.folder = folder
        self.state = state

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore_values(self, values: StepValues) -> None:
        """Put the checkpoint's per-step values (loss, probes) back into ``values``."""
        values.loss[:] = list(self.state["loss"])
        values.extra.clear()
        values.extra.update({k: list(v) for k, v in self.state["extra"].items()})
        values.unit_values.clear()
        values.unit_values.update(
            {int(k): list(v) for k, v in self.state.get("unit_values", {}).items()}
        )

    @property
    def seconds(self) -> float:
        """Training seconds spent up to this checkpoint (by the runs that reached it)."""
        return float(self.state["seconds"])


class CheckpointState(TrainerCallback):
    """Writes ``ila_state.json`` into each checkpoint folder once the Trainer saved it.

    ``extra_state`` adds stage-specific values (the stage-2 gate scores). Every process
    waits at a barrier first: under DDP each rank writes its own RNG state into the
    folder, and the folder is complete only when all of them have.
    """

    def __init__(
        self,
        stage: str,
        values: StepValues,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        seconds_before: float = 0.0,
    ) -> None:
        self.stage = stage
        self.values = values
        self.extra_state = extra_state
        self.seconds_before = seconds_before
        self.start = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        # Every process reads the extra state (gathering gate scores under FSDP is a
        # collective); the main process writes it.
        extra = self.extra_state() if self.extra_state is not None else {}
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        payload: dict[str, Any] = {
            "stage": self.stage,
            "step": state.global_step,
            "seconds": self.seconds_before + time.perf_counter() - self.start,
            "loss": self.values.loss,
            "extra": self.values.extra,
            "unit_values": {str(k): v for k, v in self.values.unit_values.items()},
        }
        payload.update(extra)
        atomic_write_json(folder / CHECKPOINT_STATE_FILE, payload)


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_complete_checkpoint(folder: Path, stage: str) -> StageCheckpoint | None:
    """The newest complete checkpoint of ``stage`` under ``folder`` (None if there is none)."""
    for step, path in reversed(_numbered(Path(folder))):
        marker = path / CHECKPOINT_STATE_FILE
        if not marker.is_file():
            continue
        state = read_json(marker)
        if state.get("stage") != stage or state.get("step") != step:
            raise IlaError(
                f"{marker}: records stage {state.get('stage')!r} step {state.get('step')}, "
                f"not {stage!r} step {step}; this is not the run's checkpoint"
            )
        return StageCheckpoint(path, state)
    return None


def discard_incomplete_checkpoints(folder: Path, after_step: int) -> None:
    """Delete checkpoint folders newer than ``after_step`` (left by an interrupted save)."""
    for step, path in _numbered(Path(folder)):
        if step > after_step:
            shutil.rmtree(path)


def rewind_metrics(path: Path, stage: str, through_step: int) -> None:
    """Drop the ``metrics.jsonl`` rows of ``stage`` after ``through_step`` (atomically).

    A torn last line (a kill during a write) is dropped as well.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise IlaError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if row.get("stage") == stage and row.get("step", 0) > through_step:
            continue
        kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def load_adapter_weights(model: Any, folder: Path, adapter_name: str = "default") -> None:
    """Load the LoRA weights saved in ``folder`` (peft ``save_pretrained``) into ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(folder) / "adapter_model.safetensors"
    if not weights.is_file():
        raise IlaError(f"{weights}: file not found; the stage's adapter is incomplete")
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    if unexpected or missing:
        raise IlaError(
            f"{weights}: does not match the model's LoRA adapter (unexpected "
            f"{unexpected[:3]}, missing {missing[:3]}); was the run started with other "
            "LoRA settings (lora rank, alpha, module types)?"
        )
