"""``IlaCallback``: ILA's ranking of the LoRA adapter a transformers ``Trainer`` is training.

ILA's mask is over the changes alignment makes to each unit (docs/method.md, "Stage 2:
the gates"). A LoRA fine-tune that runs anyway (``transformers.Trainer``, or one of TRL's
trainers, which are Trainers) already holds that update, so ranking it costs stage 2
alone: this callback learns one gate sigmoid(s_i) per adapted unit over the live
adapter, with :func:`ila.scorers.ila.run_stage2` on the trainer's own training data and
collator, and writes the ranking as an ``ila score`` run directory
(``<output_dir>/<output_subdir>``: ``layer_scores.json``, ``report/``, the stage
summaries; docs/method.md, "Output") that ``ila select``, ``ila compare``, ``ila report``
and ``ila finetune --scores`` read.

When (``at``):

- ``"end"``: in ``on_train_end``, on the adapter the run finished with;
- ``"stable"``: at the step where ila's stage-1 stopping rule (docs/method.md, "Stage 1",
  :func:`ila.core.stability.stage1_detector` with the ``stage1`` settings) calls training
  epsilon-stable, fed with the training loss the Trainer logs (one value per log: with
  ``logging_steps=1`` the rule's window, patience and minimum count steps). Stage 2 then
  runs nested, inside the ``on_log`` call of that step: a second Trainer trains only the
  gates while the outer loop waits. If the rule never fires, the ranking is made at the
  end (``stage1/summary.json`` says ``stable: false``).

Afterwards the user's model is as it was: gates and hooks removed, every parameter's
``requires_grad`` and every module's train/eval mode put back, random states (the nested
Trainer seeds them) and accelerate's process-wide state (it re-creates it) restored. With
``then`` (at ``"stable"`` only) the rest of the run trains fewer units: the LoRA A and B
of the units outside the kept set stop training (``requires_grad=False``): the bottom
``fraction`` frozen (``"freeze-bottom"``), or everything but the top ``fraction``
(``"tune-top"``); the rule is :func:`ila.core.selection.select_units`'s (docs/method.md,
"Stage 3: use the ranking") and is written as ``selection.json``.

Refused before training starts (one-line :class:`ila.errors.IlaError`): a model without
a plain LoRA adapter named ``default`` (peft), DeepSpeed and FSDP runs, devices other than
CPU and CUDA, iterable (streaming) training data, data that is not tokenized
``input_ids`` (preference pairs), and ``at="stable"`` without loss logging.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ila.config import (
    Stage1Config,
    Stage2Config,
    recorded_config,
    setting,
)
from ila.core.layers import LayerMap, find_layers
from ila.core.lora import lora_update_norms, unit_lora_layer
from ila.core.scores import LayerScores, jaccard
from ila.core.selection import Selection, SelectionRule
from ila.core.stability import Detector, stage1_detector, top_set
from ila.errors import IlaError
from ila.integrations.live_run import (
    complete_meta,
    examples_needed,
    fingerprint,
    freeze_units,
    outer_run_kept,
    peft_settings,
    save_run,
    score_config,
    stage2_examples,
    training_data,
)
from ila.run_files import SCORES_FILE
from ila.rundir import RunDir, check_output_dir
from ila.scorers.base import ScoringContext
from ila.scorers.existing import adapted_layer_map, rank_recorded_update
from ila.train.parallel import is_main_process, requested_sharding

__all__ = ["AT_CHOICES", "THEN_CHOICES", "IlaCallback"]

log = logging.getLogger(__name__)

AT_CHOICES = ("end", "stable")
"""When the callback ranks: when training ends, or when the stage-1 rule says stable."""

THEN_CHOICES = ("freeze-bottom", "tune-top")
"""What the rest of the run trains after a ranking at ``"stable"``."""

ADAPTER = "default"


class IlaCallback(TrainerCallback):
    """Rank the units of the LoRA adapter being trained (ILA stage 2 on the live update).

    Args:
        at: ``"end"`` (rank when training ends) or ``"stable"`` (rank at the step where
            the stage-1 stopping rule calls training epsilon-stable).
        stage2: the gates' settings (docs/method.md, "Stage 2: the gates").
        stage1: the stopping rule's settings for ``at="stable"`` (criterion, epsilon,
            window, patience, min_steps, rank_epsilon, rank_fraction; the rest of
            :class:`ila.config.Stage1Config` is the user's Trainer's business).
        then: after a ranking at ``"stable"``, ``"freeze-bottom"`` or ``"tune-top"``
            with ``fraction``; None trains every unit to the end.
        fraction: the fraction of ranked units ``then`` freezes (bottom) or keeps (top),
            in (0, 1).
        output_subdir: the run directory's name under the Trainer's ``output_dir``.
        seed: stage 2's seed (its data order and gate batches); None: the Trainer's seed.
        blocks_path: dotted path of the model's transformer blocks, where ila does not
            find them by itself.

    After a ranking, ``scores`` holds it, ``output_dir`` its run directory,
    ``ranked_step`` the global step it was made at and, with ``then``, ``selection``
    the units that go on training.
    """

    def __init__(
        self,
        *,
        at: str = "end",
        stage2: Stage2Config | None = None,
        stage1: Stage1Config | None = None,
        then: str | None = None,
        fraction: float | None = None,
        output_subdir: str = "ila",
        seed: int | None = None,
        blocks_path: str | None = None,
    ) -> None:
        _check_settings(at, then, fraction, output_subdir)
        self.stage2 = _config(stage2, Stage2Config, "stage2")
        self.stage1 = _config(stage1, Stage1Config, "stage1")
        self.at, self.then, self.fraction = at, then, fraction
        self.output_subdir, self.seed, self.blocks_path = output_subdir, seed, blocks_path
        self.scores: LayerScores | None = None
        self.selection: Selection | None = None
        self.output_dir: Path | None = None
        self.ranked_step: int | None = None
        self._run: _Run | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check everything the ranking will need, before the first training step."""
        _check_launch(args, at=self.at, then=self.then)
        layer_map, not_adapted = _lora_layer_map(kwargs.get("model"), self.blocks_path)
        training_data(kwargs.get("train_dataloader"))
        output_dir = Path(args.output_dir) / self.output_subdir
        if is_main_process():
            # The directory is the callback's own: an earlier ranking there is replaced,
            # anything ila did not write is refused (ila.rundir).
            check_output_dir(output_dir, overwrite=True)
        self.scores = self.selection = self.ranked_step = None
        self.output_dir = output_dir
        self._run = _Run(layer_map, not_adapted, output_dir, _LossWatch(self.stage1))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Feed the stopping rule; at ``"stable"``, rank (and apply ``then``) once it fires."""
        run = self._run
        if run is None or self.scores is not None or not logs or "loss" not in logs:
            return
        model = kwargs["model"]
        run.watch.observe(
            float(logs["loss"]),
            state.global_step,
            lambda: lora_update_norms(model, run.layer_map).tolist(),
        )
        if self.at == "stable" and run.watch.stable_step is not None:
            scores = self._rank(run, args, state, kwargs, stable=True)
            if self.then is not None:
                self.selection = self._apply_then(run, model, scores)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Rank at ``"end"`` (or at ``"stable"`` when the rule never fired)."""
        run = self._run
        if run is None or self.scores is not None:
            return
        if self.at == "stable":
            log.warning(
                "IlaCallback: training never became epsilon-stable (%d losses seen); the "
                "ranking is made at the end, step %d%s",
                len(run.watch.losses),
                state.global_step,
                f", and then={self.then!r} is not applied" if self.then else "",
            )
        self._rank(run, args, state, kwargs, stable=False)

    def _rank(
        self,
        run: _Run,
        args: TrainingArguments,
        state: TrainerState,
        kwargs: Mapping[str, Any],
        *,
        stable: bool,
    ) -> LayerScores:
        """Stage 2 on the live adapter, nested in this run; write the run directory."""
        model, out = kwargs["model"], run.output_dir
        dataset, collate = training_data(kwargs.get("train_dataloader"))
        seed = args.seed if self.seed is None else self.seed
        config = score_config(args, model, run.layer_map, self.stage1, self.stage2, seed)
        features = stage2_examples(dataset, examples_needed(args, self.stage2), seed)
        stage1 = self._stage1_summary(run, args, state, model, stable=stable)
        resolved = {**recorded_config(config), "method": "ila", "callback": self._settings()}
        log.info(
            "IlaCallback: ILA stage 2 on the live LoRA adapter at step %d (%d units)",
            state.global_step,
            len(run.layer_map.units),
        )
        with (
            outer_run_kept(model),
            RunDir(out).open("score", resolved, overwrite=True) as main,
        ):
            ctx = ScoringContext(
                model=model,
                tokenizer=kwargs.get("processing_class"),
                layer_map=run.layer_map,
                model_id=config.model.model,
                train_features=features,
                collator=collate,
                config=config,
                output_dir=out,
                data_fingerprint=fingerprint(features),
            )
            scores = rank_recorded_update(ctx, model, stage1)
            source = self._source(run, state, stable)
            complete_meta(scores, config, source=source, examples=len(dataset))
            if main:
                save_run(scores, out, dataset_size=len(dataset), stage2_examples=len(features))
        self.scores, self.ranked_step = scores, state.global_step
        return scores

    def _apply_then(self, run: _Run, model: torch.nn.Module, scores: LayerScores) -> Selection:
        """Freeze the LoRA A/B of the units outside the kept set for the rest of the run."""
        kind = "tune-top-fraction" if self.then == "tune-top" else "freeze-bottom-fraction"
        selection = SelectionRule(kind, self.fraction).apply(
            LayerMap.from_dict(scores.layout),
            scores=scores,
            scores_file=run.output_dir / SCORES_FILE,
        )
        freeze_units(model, run.layer_map, selection.frozen)
        if is_main_process():
            with RunDir(run.output_dir).locked("select") as rundir:
                selection.save(rundir.selection)
                rundir.mark("select")
        log.info(
            "IlaCallback: %s %g: %d units go on training, the LoRA weights of %d are frozen",
            self.then,
            self.fraction,
            len(selection.selected),
            len(selection.frozen),
        )
        return selection

    def _settings(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "then": self.then,
            "fraction": self.fraction,
            "output_subdir": self.output_subdir,
            "seed": self.seed,
        }

    def _source(self, run: _Run, state: TrainerState, stable: bool) -> dict[str, Any]:
        """``meta["source"]``: where the ranked update came from."""
        return {
            "kind": "callback",
            "step": state.global_step,
            "at": self.at,
            "stable": stable if self.at == "stable" else None,
            "stable_step": run.watch.stable_step,
            "trainer_output_dir": str(run.output_dir.parent),
            "then": self.then,
            "fraction": self.fraction,
            "not_adapted": list(run.not_adapted),
        }

    def _stage1_summary(
        self, run: _Run, args: TrainingArguments, state: TrainerState, model: Any, *, stable: bool
    ) -> dict[str, Any]:
        """``stage1/summary.json``: the user's run up to the ranking, in stage 1's terms."""
        watch, cfg = run.watch, self.stage1
        return {
            "source": "callback",
            "path": str(args.output_dir),
            **peft_settings(model),
            "not_adapted": list(run.not_adapted),
            "stable": stable if self.at == "stable" else None,
            "T": state.global_step if stable else None,
            "stable_step": watch.stable_step,
            "steps": state.global_step,
            "max_steps": state.max_steps,
            "seconds": time.perf_counter() - run.start,
            "loss_curve": list(watch.losses),
            "loss_steps": list(watch.steps),
            "first_loss": watch.losses[0] if watch.losses else None,
            "final_loss": watch.losses[-1] if watch.losses else None,
            "update_norm_curve": [],
            "ranking_checks": watch.ranking_checks(cfg.rank_fraction),
            "method": "lora",
            "learning_rate": args.learning_rate,
            "criterion": cfg.criterion,
            "epsilon": cfg.epsilon,
            "window": cfg.window,
            "patience": cfg.patience,
            "min_steps": cfg.min_steps,
            "rank_epsilon": cfg.rank_epsilon if cfg.criterion == "drop+ranking" else None,
            "unit_update_norms": lora_update_norms(model, run.layer_map).tolist(),
        }


class _LossWatch:
    """Stage 1's stopping rule (docs/method.md, "Stage 1") fed with the logged losses.

    Each logged loss is one observation of the rule (the Trainer logs the mean loss of
    the steps since its last log); ``steps`` holds the global step of each. The ranking
    check of ``drop+ranking`` reads the units' ||Delta_i|| at the rule's check points.
    """

    def __init__(self, cfg: Stage1Config) -> None:
        self.detector: Detector = stage1_detector(cfg)
        self.losses: list[float] = []
        self.steps: list[int] = []
        self.unit_values: dict[int, list[float]] = {}

    def observe(self, loss: float, step: int, norms: Callable[[], list[float]]) -> None:
        """Record the loss logged at global step ``step``; ``norms`` reads ||Delta_i||."""
        if not math.isfinite(loss):
            log.warning(
                "IlaCallback: the loss logged at step %d is %s; not fed to the rule", step, loss
            )
            return
        self.losses.append(loss)
        self.steps.append(step)
        count = len(self.losses)
        units = None
        if self.detector.wants_unit_values(count):
            units = norms()
            self.unit_values[count] = units
        self.detector.update({"loss": loss}, units)

    @property
    def stable_step(self) -> int | None:
        """The global step at which the rule fired (None: not yet)."""
        fired = self.detector.stable_step
        return None if fired is None else self.steps[fired - 1]

    def ranking_checks(self, fraction: float) -> list[dict[str, Any]]:
        """Top-set Jaccard of consecutive checks of the update-norm ranking (global steps)."""
        checks = sorted(self.unit_values)
        tops = {c: sorted(top_set(self.unit_values[c], fraction)) for c in checks}
        return [
            {"step": self.steps[b - 1], "jaccard_with_previous": jaccard(tops[a], tops[b])}
            for a, b in pairwise(checks)
        ]


@dataclass
class _Run:
    """What ``on_train_begin`` found for the ranking of one training run."""

    layer_map: LayerMap
    """The units the adapter covers (the ranked units)."""
    not_adapted: list[str]
    output_dir: Path
    watch: _LossWatch
    start: float = field(default_factory=time.perf_counter)


def _check_settings(at: str, then: str | None, fraction: float | None, subdir: str) -> None:
    """The constructor's refusals (one line each)."""
    if at not in AT_CHOICES:
        raise IlaError(f"IlaCallback at={at!r}: choose one of {', '.join(AT_CHOICES)}")
    if then is not None and then not in THEN_CHOICES:
        raise IlaError(
            f"IlaCallback then={then!r}: choose one of {', '.join(THEN_CHOICES)}, or None"
        )
    if then is not None and at != "stable":
        raise IlaError(
            f"IlaCallback then={then!r} acts on the rest of the run after a ranking at "
            "'stable'; with at='end' nothing is left to train: pass at='stable' or drop then"
        )
    if (then is None) != (fraction is None):
        raise IlaError("IlaCallback: then and fraction go together; pass both or neither")
    bad = isinstance(fraction, bool) or not isinstance(fraction, (int, float, type(None)))
    if bad or (fraction is not None and not 0 < fraction < 1):
        raise IlaError(f"IlaCallback fraction={fraction!r}: must be a number in (0, 1)")
    if not subdir or Path(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise IlaError(
            f"IlaCallback output_subdir={subdir!r}: pass a relative folder name inside the "
            "Trainer's output_dir, such as 'ila'"
        )


def _config(value: Any, cls: type, name: str) -> Any:
    """``value`` (an instance of ``cls``) or ``cls``'s defaults."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise IlaError(
            f"IlaCallback {name}=: pass an ila.config.{cls.__name__}, got {type(value).__name__}"
        )
    return value


def _check_launch(args: TrainingArguments, *, at: str, then: str | None) -> None:
    """Refuse the runs a nested stage 2 cannot share (before any training step)."""
    sharding = requested_sharding()
    if args.deepspeed or args.fsdp or sharding is not None:
        backend = "DeepSpeed" if args.deepspeed else "FSDP" if args.fsdp else sharding[0]
        raise IlaError(
            f"IlaCallback does not run under {backend}: its nested stage-2 Trainer would "
            "prepare the sharded model again; save the adapter and rank it with "
            "`ila score ",
            setting("source", "from_adapter"),
            " DIR`",
        )
    if args.device.type not in ("cpu", "cuda"):
        raise IlaError(
            f"IlaCallback runs stage 2 on CPU or CUDA; this run trains on {args.device.type}"
        )
    strategy = getattr(args.logging_strategy, "value", args.logging_strategy)
    if at == "stable" and strategy == "no":
        raise IlaError(
            "IlaCallback at='stable' reads the training loss the Trainer logs; set "
            "logging_strategy='steps' (logging_steps=1 gives the stopping rule every step)"
        )
    if then is not None and args.world_size > 1 and args.ddp_find_unused_parameters is not True:
        raise IlaError(
            f"IlaCallback then={then!r} stops the gradients of some LoRA weights mid-run, "
            "which DDP allows only with ddp_find_unused_parameters=True in TrainingArguments"
        )


def _lora_layer_map(model: Any, blocks_path: str | None) -> tuple[LayerMap, list[str]]:
    """The units the model's LoRA adapter ``default`` covers (and the names of the others);
    refuses a model without a plain, unmerged, active LoRA adapter ``default``."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        raise IlaError(
            "IlaCallback ranks the LoRA adapter being trained, and this model has none: wrap "
            "it with peft first (model = get_peft_model(model, LoraConfig(...))), or pass "
            "peft_config= to TRL's trainer"
        )
    config = configs.get(ADAPTER)
    peft_type = str(getattr(getattr(config, "peft_type", None), "value", None))
    if config is None or peft_type != "LORA":
        raise IlaError(
            f"IlaCallback gates a LoRA adapter named {ADAPTER!r}; this model's adapters are "
            f"{sorted(configs)} ({peft_type}): train one LoRA adapter with peft's default name"
        )
    if getattr(config, "use_dora", False):
        raise IlaError(
            "IlaCallback: DoRA and other LoRA variants are not supported by ILA gates; "
            "train with plain LoRA (use_dora=False)"
        )
    units, missing = adapted_layer_map(model, find_layers(model, blocks_path=blocks_path))
    if not units.units:
        raise IlaError(
            f"IlaCallback: the LoRA adapter adapts none of the model's block linear modules "
            f"(target_modules {getattr(config, 'target_modules', None)}); target them"
        )
    for unit in units.units:
        layer = unit_lora_layer(model, unit)
        if getattr(layer, "merged", False) or list(layer.active_adapters) != [ADAPTER]:
            raise IlaError(
                f"IlaCallback: unit {unit.name} has its adapter merged or other adapters "
                f"active ({list(layer.active_adapters)}); train one unmerged adapter"
            )
    return units, missing
