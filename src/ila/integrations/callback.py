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
  :func:`ila.core.stability.make_detector` with the ``stage1`` settings) calls training
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

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ila.config import (
    LoraSettings,
    ModelConfig,
    ScoreConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
    recorded_config,
)
from ila.core.layers import LayerMap, find_layers
from ila.core.lora import lora_update_norms, unit_lora_layer
from ila.core.scores import LayerScores, jaccard
from ila.core.selection import Selection, select_units
from ila.core.stability import Detector, make_detector, top_set
from ila.errors import IlaError
from ila.run_files import DATA_FILE, SCORES_FILE, SELECTION_FILE
from ila.rundir import (
    atomic_write_json,
    check_output_dir,
    is_main_process,
    mark_stage,
    run_directory,
    runs_locked,
)
from ila.scorers.base import ScoringContext
from ila.scorers.common import preserved_model_state
from ila.scorers.existing import adapted_layer_map, rank_recorded_update
from ila.train.parallel import requested_sharding
from ila.train.trainer import stage_seed

__all__ = ["AT_CHOICES", "THEN_CHOICES", "IlaCallback"]

log = logging.getLogger(__name__)

AT_CHOICES = ("end", "stable")
"""When the callback ranks: when training ends, or when the stage-1 rule says stable."""

THEN_CHOICES = ("freeze-bottom", "tune-top")
"""What the rest of the run trains after a ranking at ``"stable"``."""

ADAPTER = "default"
# What accelerate's ``prepare`` sets on a model it wraps (mixed-precision forward, the
# prepared flag); the nested Trainer's prepare must not leave its own behind.
_PREPARED_ATTRIBUTES = ("forward", "_original_forward", "_is_accelerate_prepared")


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
        _training_data(kwargs.get("train_dataloader"))
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

    @runs_locked
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
        dataset, collate = _training_data(kwargs.get("train_dataloader"))
        seed = args.seed if self.seed is None else self.seed
        config = _score_config(args, model, run.layer_map, self.stage1, self.stage2, seed)
        features = _stage2_examples(dataset, _examples_needed(args, self.stage2), seed)
        stage1 = self._stage1_summary(run, args, state, model, stable=stable)
        resolved = {**recorded_config(config), "method": "ila", "callback": self._settings()}
        log.info(
            "IlaCallback: ILA stage 2 on the live LoRA adapter at step %d (%d units)",
            state.global_step,
            len(run.layer_map.units),
        )
        with (
            _outer_run_kept(model),
            run_directory(out, command="score", resolved=resolved, overwrite=True) as main,
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
                data_fingerprint=_fingerprint(features),
            )
            scores = rank_recorded_update(ctx, model, stage1)
            source = self._source(run, state, stable)
            _complete_meta(scores, config, source=source, examples=len(dataset))
            if main:
                _save_run(scores, out, dataset_size=len(dataset), stage2_examples=len(features))
        self.scores, self.ranked_step = scores, state.global_step
        return scores

    def _apply_then(self, run: _Run, model: torch.nn.Module, scores: LayerScores) -> Selection:
        """Freeze the LoRA A/B of the units outside the kept set for the rest of the run."""
        top = self.fraction if self.then == "tune-top" else None
        bottom = self.fraction if self.then == "freeze-bottom" else None
        selection = select_units(
            LayerMap.from_dict(scores.layout),
            scores=scores,
            tune_top_fraction=top,
            freeze_bottom_fraction=bottom,
            scores_file=run.output_dir / SCORES_FILE,
        )
        _freeze_units(model, run.layer_map, selection.frozen)
        if is_main_process():
            selection.save(run.output_dir / SELECTION_FILE)
            mark_stage(run.output_dir, "select")
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
            **_peft_settings(model),
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
        self.detector: Detector = make_detector(
            cfg.criterion,
            epsilon=cfg.epsilon,
            window=cfg.window,
            patience=cfg.patience,
            min_steps=cfg.min_steps,
            rank_epsilon=cfg.rank_epsilon,
            rank_fraction=cfg.rank_fraction,
        )
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
            "`ila score --from-adapter DIR`"
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


def _training_data(dataloader: Any) -> tuple[Sequence[Any], Callable[[list[Any]], Any]]:
    """The training examples and collator of the Trainer's DataLoader (refused when
    stage 2 cannot draw its own batches from them)."""
    dataset = getattr(dataloader, "dataset", None)
    if dataset is None:
        raise IlaError("IlaCallback found no training DataLoader; give the Trainer train_dataset")
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise IlaError(
            "IlaCallback: stage 2 draws its own random batches of the training data, which an "
            "iterable (streaming) dataset cannot give; pass a map-style dataset"
        )
    if len(dataset) == 0:
        raise IlaError("IlaCallback: the training dataset is empty")
    first = dataset[0]
    if isinstance(first, Mapping) and "input_ids" not in first:
        raise IlaError(
            "IlaCallback learns the gates on the next-token loss of tokenized examples "
            f"(input_ids, labels); this trainer's examples hold {sorted(first)[:6]}: "
            "preference trainers (DPO) are not supported"
        )
    return dataset, dataloader.collate_fn


def _examples_needed(args: TrainingArguments, stage2: Stage2Config) -> int:
    """Examples stage 2 reads over all its steps and processes."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return stage2.steps * stage2.grad_accum * per_step * args.world_size


def _stage2_examples(dataset: Sequence[Any], needed: int, seed: int) -> list[Any]:
    """The examples stage 2 learns on: all of them, or a uniformly drawn ``needed`` of them.

    Stage 2 reads ``needed`` examples in a random order (its own seed, docs/method.md,
    "Stage 2: the gates"); a uniform subset of that size, shuffled by the stage-2 Trainer,
    is the same draw without reading (and copying) the rest of a large dataset.
    """
    size = len(dataset)
    if size <= needed:
        return [dataset[i] for i in range(size)]
    chosen = random.Random(stage_seed(seed, "stage2-examples")).sample(range(size), needed)
    return [dataset[i] for i in sorted(chosen)]


def _fingerprint(features: Sequence[Any]) -> str:
    """First 16 hex digits of a SHA-256 over the token ids of the stage-2 examples."""
    digest = hashlib.sha256()
    for feature in features:
        ids = feature["input_ids"] if isinstance(feature, Mapping) else feature
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        digest.update(json.dumps(ids).encode("utf-8"))
    return digest.hexdigest()[:16]


def _base_model(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _model_id(model: Any) -> str:
    """The base model's name or path as transformers recorded it (else its class name)."""
    base = _base_model(model)
    name = getattr(getattr(base, "config", None), "_name_or_path", None)
    return str(name or getattr(base, "name_or_path", None) or type(base).__name__)


def _peft_settings(model: Any) -> dict[str, Any]:
    """The adapter's rank, alpha, dropout and target modules (peft's config)."""
    config = model.peft_config[ADAPTER]
    targets = config.target_modules
    return {
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
    }


def _score_config(
    args: TrainingArguments,
    model: Any,
    layer_map: LayerMap,
    stage1: Stage1Config,
    stage2: Stage2Config,
    seed: int,
) -> ScoreConfig:
    """The settings stage 2 runs with: the outer run's batch, accumulation, precision and
    device, ``seed``, the adapter's LoRA settings and the callback's stage settings."""
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    train = TrainConfig(
        batch_size=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
        precision=precision,
        seed=seed,
    )
    dtypes = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    base = _base_model(model)
    model_config = ModelConfig(
        model=_model_id(model),
        dtype=dtypes.get(weights, "float32"),
        device="cpu" if args.device.type == "cpu" else "auto",
        quantization="nf4" if getattr(base, "is_loaded_in_4bit", False) else "none",
    )
    peft = _peft_settings(model)
    lora = LoraSettings(
        rank=peft["rank"],
        alpha=peft["alpha"],
        dropout=peft["dropout"],
        module_types=list(layer_map.module_types),
    )
    return ScoreConfig(model=model_config, lora=lora, train=train, stage1=stage1, stage2=stage2)


def _complete_meta(
    scores: LayerScores, config: ScoreConfig, *, source: dict[str, Any], examples: int
) -> None:
    """What ``ila score`` adds to a ranking's meta, in the callback's terms."""
    from ila.model.identity import local_fingerprint

    scores.meta["source"] = source
    scores.meta["num_train_examples"] = examples
    fingerprint = local_fingerprint(config.model.model)
    if fingerprint is not None:
        scores.meta["model_fingerprint"] = fingerprint.to_dict()
    scores.meta["base"] = {
        "dtype": config.model.dtype,
        "quantization": config.model.quantization,
    }
    scores.meta["objective"] = "sft"


def _save_run(scores: LayerScores, out: Path, *, dataset_size: int, stage2_examples: int) -> None:
    """``layer_scores.json``, its report and ``data.json``; the run is marked scored."""
    from ila.reporting import write_score_report

    atomic_write_json(
        out / DATA_FILE,
        {
            "source": "the Trainer's training data",
            "num_train_examples": dataset_size,
            "stage2_examples": stage2_examples,
            "fingerprint": scores.meta["data_fingerprint"],
        },
    )
    scores.save(out / SCORES_FILE)
    write_score_report(scores, out / "report")
    mark_stage(out, "score")
    log.info("IlaCallback: wrote %s and its report in %s", out / SCORES_FILE, out / "report")


def _freeze_units(model: torch.nn.Module, layer_map: LayerMap, names: Sequence[str]) -> None:
    """``requires_grad=False`` on the LoRA A and B of the units ``names``."""
    for name in names:
        layer = unit_lora_layer(model, layer_map.unit(name))
        for matrices in (layer.lora_A, layer.lora_B):
            for param in matrices[ADAPTER].parameters():
                param.requires_grad_(False)


@contextmanager
def _outer_run_kept(model: torch.nn.Module) -> Iterator[None]:
    """Leave the outer run as the nested stage-2 Trainer found it.

    The nested Trainer freezes parameters and switches modes (put back by
    :func:`ila.scorers.common.preserved_model_state`), seeds every random generator,
    resets and re-creates accelerate's process-wide state (``PartialState``,
    ``AcceleratorState``, ``GradientState``: the outer Trainer's accelerator reads the same
    dictionaries), may set ``ACCELERATE_*`` variables and transformers' log level, and its
    ``prepare`` may wrap the model's forward for mixed precision. All of that is recorded
    here and put back.
    """
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from transformers.utils import logging as transformers_logging

    stores = [s._shared_state for s in (PartialState, AcceleratorState, GradientState)]
    saved_stores = [dict(store) for store in stores]
    environ = dict(os.environ)
    verbosity = transformers_logging.get_verbosity()
    attributes = {k: model.__dict__[k] for k in _PREPARED_ATTRIBUTES if k in model.__dict__}
    rng = _rng_states()
    try:
        with preserved_model_state(model):
            yield
    finally:
        _restore_rng(rng)
        transformers_logging.set_verbosity(verbosity)
        for store, saved in zip(stores, saved_stores, strict=True):
            store.clear()
            store.update(saved)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        for key in _PREPARED_ATTRIBUTES:
            model.__dict__.pop(key, None)
        model.__dict__.update(attributes)


def _rng_states() -> dict[str, Any]:
    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
