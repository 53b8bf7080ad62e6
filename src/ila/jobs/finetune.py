"""Stage 3: fine-tune only the selected units (docs/method.md, "Stage 3").

Methods:
- ``lora``: a peft LoRA adapter on exactly the selected modules (module-level precision);
  the base model is untouched and the adapter is saved under ``adapter/``.
- ``full``: the selected modules' own weights (and biases) are trained; every other
  parameter, including the embeddings and LM head unless ``train_embeddings``, is frozen.
  Only the changed tensors are saved (``changed_weights.safetensors``).
- ``qlora``: LoRA on the selected modules over a 4-bit NF4 base (bitsandbytes, CUDA only;
  refused on a machine without CUDA).

Savings are real, not bookkeeping: frozen parameters get ``requires_grad=False``, so the
optimizer holds state only for the trained ones, and autograd computes no gradient below
the lowest trainable block (nothing there requires a gradient).
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ila.config import FinetuneConfig, input_paths, recorded_config, setting
from ila.core.layers import LayerMap, Unit
from ila.core.lora import add_lora, lora_state, read_unit_lora, set_unit_lora
from ila.core.scores import LayerScores
from ila.core.selection import Selection, SelectionRule
from ila.errors import IlaError, argument
from ila.evaluation.metrics import response_loss
from ila.files import atomic_directory, atomic_write_json, read_json
from ila.jobs.inputs import ModelLoad, SharedInputs
from ila.model.identity import (
    BASE_MODEL_FILE,
    ModelFingerprint,
    check_same_model,
    model_fingerprint,
)
from ila.run_files import CHANGED_WEIGHTS_FILE, METRICS_FILE
from ila.rundir import RunDir, refuse_resume_with_overwrite
from ila.scorers.common import preserved_model_state
from ila.train.checkpoints import (
    CheckpointState,
    StageCheckpoint,
    discard_incomplete_checkpoints,
    last_complete_checkpoint,
    rewind_metrics,
)
from ila.train.parallel import is_main_process, require_supported_launch
from ila.train.precision import PrecisionChoice
from ila.train.sharding import whole_tensors
from ila.train.trainer import (
    MetricsLogger,
    StepValues,
    make_training_args,
    run_trainer,
    train_precision,
)

__all__ = [
    "FinetuneRun",
    "FinetuneSummary",
    "finetune",
    "finetune_step",
    "freeze_all_but",
    "trainable_summary",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSummary:
    """What a fine-tune trained, what it cost and its held-out measure; written as
    ``finetune_summary.json`` (:meth:`to_dict`, the file's keys unchanged)."""

    method: str
    selection_rule: str
    selection_value: Any
    num_units: int
    num_selected: int
    lowest_trainable_block: int
    parameters: int
    trainable_parameters: int
    optimizer_state_bytes: int
    steps: int
    seconds: float
    seconds_per_step: float
    final_train_loss: float | None
    objective: str
    eval_loss: float | None
    num_eval_examples: int
    model_fingerprint: str
    other_model: str | None
    init_from_stage1: str | None
    peak_rss_mb: float
    peak_cuda_mb: float | None
    preference: dict[str, Any] = field(default_factory=dict)
    """Under ``--objective dpo``: which held-out reply the model prefers
    (``preference_accuracy``, ``preference_pairs``, ...; ila.evaluation.preference)."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``finetune_summary.json`` holds it (the preference measures as
        keys of their own)."""
        data = asdict(self)
        return {**data, **data.pop("preference")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneSummary:
        """A summary read back from ``finetune_summary.json``."""
        names = {f.name for f in fields(cls)} - {"preference"}
        kept = {k: v for k, v in data.items() if k in names}
        return cls(**kept, preference={k: v for k, v in data.items() if k not in names})


@dataclass
class FinetuneRun:
    """What a fine-tuning run produced."""

    output_dir: Path
    selection: Selection
    summary: FinetuneSummary


def freeze_all_but(
    model: nn.Module, layer_map: LayerMap, selected: set[str], *, train_embeddings: bool
) -> None:
    """Full fine-tuning setup: only the selected modules' parameters require gradients."""
    for param in model.parameters():
        param.requires_grad_(False)
    for unit in layer_map.units:
        if unit.name in selected:
            for param in model.get_submodule(unit.module_path).parameters():
                param.requires_grad_(True)
    if train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(True)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.requires_grad_(True)


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total and trainable (shared tensors counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"parameters": total, "trainable_parameters": trainable}


@dataclass
class _Inputs:
    """What a fine-tune works on, read and checked before its run directory is touched."""

    model: Any
    tokenizer: Any
    layer_map: LayerMap
    selection: Selection
    units: list[Unit]
    identity: ModelFingerprint
    other_model: str | None
    start: Path | None
    start_weights: dict[str, torch.Tensor] | None
    features: list[dict[str, Any]]
    """Tokenized training features, or preference rows under ``--objective dpo``."""
    held_out: list[Any]
    """The held-out examples (or preference pairs), measured after training."""
    eval_features: list[dict[str, Any]] | None
    """The held-out examples tokenized (supervised data; checked before training)."""
    num_eval_examples: int
    preference: Any = None
    """``PreferenceTraining`` under ``--objective dpo``."""


@dataclass(frozen=True)
class _RuleOnRanking:
    """A rule waiting for the model's units, with the ranking it reads (if any)."""

    rule: SelectionRule
    scores: LayerScores | None
    scores_file: Path | None


def finetune(
    config: FinetuneConfig,
    selection: Selection | SelectionRule,
    output_dir: Path,
    *,
    scores: LayerScores | None = None,
    scores_file: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Sequence[Path | None] = (),
    allow_other_model: bool = False,
    stage1_run: Path | None = None,
    measure_held_out: bool = True,
    shared: SharedInputs | None = None,
) -> FinetuneRun:
    """Fine-tune ``config.model.model`` on ``config.data.data``, tuning only ``selection``.

    ``selection`` is a :class:`Selection`, or a :class:`SelectionRule` applied to the loaded
    model's units (a rule typed by hand needs them; a fraction rule ranks ``scores``, read
    from ``scores_file``).
    ``resume`` continues an interrupted run in ``output_dir`` from its last checkpoint
    (made with ``--save-steps``); the selection must be the one recorded there.
    ``inputs``: further files the job reads (the scores or selection), which
    ``overwrite`` must not delete. A selection ranked on another model than this one (by
    fingerprint, ila.model.identity) is refused unless ``allow_other_model``; then the
    summary and the run record say so. With ``finetune.init_from_stage1`` the selected
    units' LoRA starts from the stage-1 adapter of ``stage1_run`` (default: the scores run
    the selection was made from). ``measure_held_out`` off skips the held-out loss (for
    `ila run`, whose evaluation measures it on the same split right after). ``shared``:
    the data and base model an enclosing `ila run` has loaded (ila.jobs.inputs); the job
    gives the base back as it found it, or says it cannot.

    Phases: check the request, load and check the inputs, open the run directory, set up
    the trainable parameters, train, measure, save.
    """
    output_dir = Path(output_dir)
    resolved = recorded_config(config)
    all_inputs = [*input_paths(config), *inputs]
    precision = _check_request(
        config, selection, output_dir, resolved, all_inputs, overwrite, resume, stage1_run
    )
    if isinstance(selection, SelectionRule):
        selection = _RuleOnRanking(selection, scores, scores_file)
    shared = shared or SharedInputs(config.data, config.train.objective)
    loaded = _load_inputs(
        config, selection, output_dir, resume, allow_other_model, stage1_run, shared
    )
    rundir = RunDir(output_dir)
    with rundir.open(
        "finetune",
        resolved,
        overwrite=overwrite,
        resume=resume,
        inputs=all_inputs,
        environment={"precision": precision.to_dict()},
    ) as main:
        _record_selection(rundir, loaded.selection, loaded.identity, main=main, resume=resume)
        with preserved_model_state(loaded.model):
            summary, tuned = _tune(config, loaded, rundir, resume=resume, measure=measure_held_out)
            _give_back_base(config, tuned, shared)
        return FinetuneRun(output_dir, loaded.selection, summary)


def _record_selection(
    rundir: RunDir, selection: Selection, identity: ModelFingerprint, *, main: bool, resume: bool
) -> None:
    """A new run records its model and selection; a resumed one must select as it did."""
    if resume:
        recorded = Selection.load(rundir.selection)
        if recorded.selected != selection.selected:
            raise IlaError(
                argument("resume"),
                f": {rundir.selection} selects other units than this "
                "command; resume with the same selection rule and scores",
            )
    elif main:
        rundir.record_model(identity)
        selection.save(rundir.selection)


def _tune(
    config: FinetuneConfig, loaded: _Inputs, rundir: RunDir, *, resume: bool, measure: bool
) -> tuple[FinetuneSummary, Any]:
    """Set up the trainable parameters, train, measure the held-out split (``measure``),
    save; returns the summary and the model trained (peft's, for LoRA)."""
    settings, output_dir = config.finetune, rundir.path
    model, counts = _trainable_model(config, loaded)
    trainer, seconds, values = _train(config, model, loaded, output_dir, resume)
    held_out = _held_out(config, model, loaded) if measure else {}
    summary = _summary(settings, loaded, counts, trainer, seconds, values, held_out)
    tuned = _tuned_state(model, settings, keep=trainer.is_world_process_zero())
    if trainer.is_world_process_zero():
        _save(model, loaded.tokenizer, tuned, settings, output_dir, loaded.identity)
        atomic_write_json(rundir.finetune_summary, summary.to_dict())
        rundir.mark("finetune")
    return summary, model


def _give_back_base(config: FinetuneConfig, tuned: Any, shared: SharedInputs) -> None:
    """Leave the base model as the job found it (``tuned``'s LoRA layers removed), or
    tell ``shared`` that its weights changed: a full fine-tune trains them, a merge
    writes into them, QLoRA prepares a 4-bit base for training."""
    settings = config.finetune
    if settings.method == "full":
        shared.spoil_model("the full fine-tune trained the base weights")
    elif settings.merge:
        shared.spoil_model("the fine-tune was merged into the base weights")
    elif settings.method == "qlora" or config.model.quantization == "nf4":
        shared.spoil_model("QLoRA prepared the 4-bit base for training")
    else:
        tuned.unload()  # peft's LoRA layers out; the base modules back in place


def _check_request(
    config: FinetuneConfig,
    selection: Any,
    output_dir: Path,
    resolved: dict[str, Any],
    all_inputs: list[Any],
    overwrite: bool,
    resume: bool,
    stage1_run: Path | None,
) -> PrecisionChoice:
    """Everything that can be refused before data and model are loaded."""
    require_supported_launch(
        config.model.device,
        command="finetune",
        quantization="nf4" if config.finetune.method == "qlora" else config.model.quantization,
        merge=config.finetune.merge,
    )
    precision = train_precision(config.train, config.model.device)  # fp16 on CPU fails here
    refuse_resume_with_overwrite(resume, overwrite)
    if config.train.objective == "dpo" and config.finetune.method == "full":
        raise IlaError(
            setting("train", "objective"),
            " dpo with ",
            setting("finetune", "method"),
            " full: DPO's reference is the model without the "
            "fine-tune's update, which needs an adapter to switch off; use ",
            setting("finetune", "method"),
            " lora",
        )
    if config.finetune.method == "full" and config.model.quantization == "nf4":
        raise IlaError(
            setting("finetune", "method"),
            " full with ",
            setting("model", "quantization"),
            " nf4: 4-bit weights cannot be fine-tuned; use ",
            setting("finetune", "method"),
            " lora (or qlora) on the 4-bit base, or ",
            setting("model", "quantization"),
            " none",
        )
    RunDir(output_dir).check(
        resolved, overwrite=overwrite, resume=resume, inputs=all_inputs, finished_stage="finetune"
    )
    initialised = config.finetune.init_from_stage1
    if initialised and (stage1_run is not None or isinstance(selection, Selection)):
        _stage1_adapter(selection, stage1_run)
    return precision


def _load_inputs(
    config: FinetuneConfig,
    selection: Any,
    output_dir: Path,
    resume: bool,
    allow_other_model: bool,
    stage1_run: Path | None,
    shared: SharedInputs,
) -> _Inputs:
    """Data, model, the selection's units on it, and the checks that need the model."""
    from ila.core.layers import find_layers

    settings = config.finetune
    _, train, held_out = shared.split()
    four_bit = settings.method == "qlora" or config.model.quantization == "nf4"
    model, tokenizer = shared.model(
        ModelLoad.of(config.model, quantize_4bit=four_bit), max_length=config.data.max_length
    )
    layer_map = find_layers(model, blocks_path=config.model.blocks_path)
    identity = model_fingerprint(config.model.model)
    if resume:
        RunDir(output_dir).require_same_model(identity)
    selection, layer_map, units = _selection_on(selection, layer_map)
    other_model = check_same_model(
        selection.source.get("model_fingerprint"),
        identity,
        what=f"the ranking in {selection.source.get('scores_file') or 'the selection'}",
        allow=allow_other_model,
        hint="pass scores made on this model ('ila score' it)",
    )
    if other_model is not None:
        log.warning("%s", other_model)
    start = _stage1_adapter(selection, stage1_run) if settings.init_from_stage1 else None
    features, preference = _training_rows(config, train, tokenizer, shared)
    eval_features = None
    if held_out and preference is None:
        eval_features = shared.tokenized("held_out", tokenizer).features
    return _Inputs(
        model=model,
        tokenizer=tokenizer,
        layer_map=layer_map,
        selection=selection,
        units=units,
        identity=identity,
        other_model=other_model,
        start=start,
        start_weights=read_unit_lora(start, units, config.lora) if start else None,
        features=features,
        held_out=held_out,
        eval_features=eval_features,
        num_eval_examples=len(held_out),
        preference=preference,
    )


def _selection_on(
    selection: Selection | _RuleOnRanking, layer_map: LayerMap
) -> tuple[Selection, LayerMap, list[Unit]]:
    """The selection on the loaded model (a rule on a ranking is applied to its units), the
    layer map of the module types it chooses among, and the units it tunes."""
    if isinstance(selection, _RuleOnRanking):
        selection = selection.rule.apply(
            layer_map, scores=selection.scores, scores_file=selection.scores_file
        )
    # A ranking of some module types only (--lora-module-types, or an adapter of some
    # modules ranked with --from-adapter) selects among those; the others stay frozen.
    kept_types = selection.layout.get("module_types")
    if kept_types and tuple(kept_types) != layer_map.module_types:
        layer_map = layer_map.restricted_to(kept_types)
    units = selection.selected_units(layer_map)  # checks the selection's model layout
    return selection, layer_map, units


def _training_rows(
    config: FinetuneConfig, train: list[Any], tokenizer: Any, shared: SharedInputs
) -> tuple[list, Any]:
    """The training features (tokenized examples), or under ``--objective dpo`` the
    preference rows TRL tokenizes and the settings it needs."""
    data = config.data
    if config.train.objective != "dpo":
        return shared.tokenized("train", tokenizer).features, None
    from ila.data.preference import preference_rows
    from ila.train.trainer import PreferenceTraining

    rows = preference_rows(train, tokenizer, template=data.template, max_length=data.max_length)
    return rows, PreferenceTraining(tokenizer, config.train.dpo_beta, data.max_length)


def _held_out(config: FinetuneConfig, model: Any, loaded: _Inputs) -> dict[str, Any]:
    """The held-out measure `ila eval` reports on the same split: the token-weighted
    response loss (not the Trainer's mean of per-batch means, so that one model on one
    split has one held-out loss), or for preference data which reply the model prefers."""
    if not loaded.held_out:
        return {}
    data = config.data
    if loaded.preference is not None:
        from ila.evaluation.preference import preference_metrics

        return preference_metrics(
            model,
            loaded.tokenizer,
            loaded.held_out,
            max_length=data.max_length,
            batch_size=config.train.batch_size,
            template=data.template,
        )
    loss, _ = response_loss(
        model,
        loaded.eval_features,
        pad_token_id=loaded.tokenizer.pad_token_id,
        batch_size=config.train.batch_size,
    )
    return {"eval_loss": loss}


def _trainable_model(config: FinetuneConfig, loaded: _Inputs) -> tuple[Any, dict[str, int]]:
    """The model with only the selected units trainable (LoRA on them, or their weights)."""
    settings, model = config.finetune, loaded.model
    if settings.method in ("lora", "qlora"):
        if settings.method == "qlora" or config.model.quantization == "nf4":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        model = add_lora(model, loaded.units, config.lora, seed=config.train.seed)
        if loaded.start_weights is not None:  # a resumed checkpoint's weights replace these
            set_unit_lora(model, loaded.start_weights)
            log.info("the selected units' LoRA starts from the stage-1 adapter %s", loaded.start)
    else:
        freeze_all_but(
            model,
            loaded.layer_map,
            {u.name for u in loaded.units},
            train_embeddings=settings.train_embeddings,
        )
    counts = trainable_summary(model)
    log.info(
        "fine-tuning %d of %d units with %s: %d of %d parameters trainable",
        len(loaded.units),
        len(loaded.layer_map.units),
        settings.method,
        counts["trainable_parameters"],
        counts["parameters"],
    )
    if counts["trainable_parameters"] == 0:
        raise IlaError("the selection leaves no trainable parameter; select at least one unit")
    return model, counts


def _train(
    config: FinetuneConfig, model: Any, loaded: _Inputs, output_dir: Path, resume: bool
) -> tuple[Any, float, StepValues]:
    """Run the Trainer (continuing from the last complete checkpoint when resuming)."""
    from ila.data import PaddingCollator

    settings = config.finetune
    values = StepValues()
    checkpoint = _resume_point(output_dir, values) if resume else None
    args = make_training_args(
        config.train,
        output_dir=RunDir(output_dir).trainer,
        learning_rate=settings.resolved_learning_rate(),
        max_steps=settings.max_steps,
        warmup_steps=settings.warmup_steps,
        scheduler="linear",
        device=config.model.device,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer, seconds = run_trainer(
        model,
        args,
        train_features=loaded.features,
        collator=PaddingCollator(loaded.tokenizer.pad_token_id),
        preference=loaded.preference,
        callbacks=[
            MetricsLogger("finetune", output_dir / METRICS_FILE, values),
            CheckpointState(
                "finetune",
                values,
                seconds_before=checkpoint.seconds if checkpoint is not None else 0.0,
            ),
        ],
        resume_from=checkpoint.folder if checkpoint is not None else None,
        label=f"fine-tune {output_dir.name}",
    )
    if checkpoint is not None:
        seconds += checkpoint.seconds
    return trainer, seconds, values


def _summary(
    settings: Any,
    loaded: _Inputs,
    counts: dict[str, int],
    trainer: Any,
    seconds: float,
    values: StepValues,
    held_out: dict[str, Any],
) -> FinetuneSummary:
    """What was trained, its cost and its held-out measure."""
    steps = trainer.state.global_step
    cuda = torch.cuda.is_available()
    return FinetuneSummary(
        method=settings.method,
        selection_rule=loaded.selection.rule,
        selection_value=loaded.selection.value,
        num_units=len(loaded.layer_map.units),
        num_selected=len(loaded.units),
        lowest_trainable_block=min(u.block for u in loaded.units),
        parameters=counts["parameters"],
        trainable_parameters=counts["trainable_parameters"],
        optimizer_state_bytes=_optimizer_state_bytes(trainer.optimizer),
        steps=steps,
        seconds=seconds,
        seconds_per_step=seconds / max(steps, 1),
        final_train_loss=values.loss[-1] if values.loss else None,
        objective="dpo" if loaded.preference is not None else "sft",
        eval_loss=held_out.get("eval_loss"),
        num_eval_examples=loaded.num_eval_examples,
        model_fingerprint=loaded.identity.id,
        other_model=loaded.other_model,
        init_from_stage1=None if loaded.start is None else str(loaded.start),
        peak_rss_mb=_peak_rss_mb(),
        peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        preference={k: v for k, v in held_out.items() if k != "eval_loss"},
    )


def _stage1_adapter(selection: Any, stage1_run: Path | None) -> Path:
    """The stage-1 adapter ``--init-from-stage1`` starts from: ``stage1_run``'s, or that of
    the scores run the selection was ranked in."""
    if stage1_run is None:
        scores_file = selection.source.get("scores_file")
        if not scores_file:
            raise IlaError(
                setting("finetune", "init_from_stage1"),
                " starts from the stage-1 adapter of a scores run: pass ",
                argument("scores"),
                " RUN (or a selection made from one)",
            )
        stage1_run = Path(scores_file).parent
    adapter = Path(stage1_run) / "stage1" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        hint: tuple[Any, ...] = ("pass an 'ila score' run of the ila or lora-norm scorer",)
        if (Path(stage1_run) / "stage1" / "deltas").is_dir():
            hint = (
                "its stage 1 trained the unit weights (",
                setting("stage1", "method"),
                " full), not a LoRA adapter; fine-tune without ",
                setting("finetune", "init_from_stage1"),
            )
        elif (Path(stage1_run) / "seeds").is_dir():
            hint = (
                "an ensemble (",
                setting("ensemble", "seeds"),
                ") has one per member under seeds/; pass a member's scores",
            )
        raise IlaError(
            setting("finetune", "init_from_stage1"),
            f": {stage1_run} holds no stage-1 adapter; ",
            *hint,
        )
    return adapter


def _resume_point(output_dir: Path, values: StepValues) -> StageCheckpoint | None:
    """The last complete checkpoint of an interrupted fine-tune, its values restored.

    Without one (killed before the first ``--save-steps`` checkpoint) training starts
    again. The main process removes incomplete newer checkpoints and the metrics rows of
    the steps to be redone.
    """
    folder = RunDir(output_dir).trainer
    checkpoint = last_complete_checkpoint(folder, "finetune")
    step = checkpoint.step if checkpoint is not None else 0
    if is_main_process():
        discard_incomplete_checkpoints(folder, step)
        rewind_metrics(output_dir / METRICS_FILE, "finetune", step)
    if checkpoint is None:
        log.info("no complete checkpoint under %s; the fine-tune starts again", folder)
    else:
        checkpoint.restore_values(values)
        log.info("resuming the fine-tune from %s (step %d)", checkpoint.folder, step)
    return checkpoint


def finetune_step(
    config: FinetuneConfig,
    selection: Selection | SelectionRule,
    output_dir: Path,
    resume: bool,
    *,
    stage1_run: Path | None = None,
    measure_held_out: bool = True,
    shared: SharedInputs | None = None,
) -> FinetuneRun:
    """A fine-tune inside a larger job (`ila run`): with ``resume``, a finished one in
    ``output_dir`` is reused, a started one continues from its last complete checkpoint,
    and one that never wrote its settings starts again."""
    rundir = RunDir(output_dir)
    state = rundir.state() if resume and rundir.path.is_dir() else None
    if state is not None and "finetune" in state.get("completed_stages", []):
        summary = FinetuneSummary.from_dict(read_json(rundir.finetune_summary))
        return FinetuneRun(rundir.path, Selection.load(rundir.selection), summary)
    started = state is not None and rundir.config.is_file()
    return finetune(
        config,
        selection,
        output_dir,
        resume=started,
        overwrite=resume and not started,
        stage1_run=stage1_run,
        measure_held_out=measure_held_out,
        shared=shared,
    )


def _tuned_state(model, settings, *, keep: bool) -> dict[str, torch.Tensor]:
    """What the fine-tune changed, on the CPU: the LoRA weights, or the trainable weights of
    a full fine-tune. Under FSDP they are gathered whole (every process must call this) and
    only the process that writes (``keep``) holds the copy."""
    if settings.method in ("lora", "qlora"):
        return lora_state(model, keep=keep)
    tuned = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return whole_tensors(tuned, keep=keep)


def _save(model, tokenizer, tuned, settings, output_dir: Path, identity) -> None:
    """Save what was tuned (``tuned``, from :func:`_tuned_state`); beside it, the base
    model's fingerprint (``ila eval --adapter`` checks it)."""
    if settings.method in ("lora", "qlora"):
        with atomic_directory(RunDir(output_dir).adapter) as tmp:
            model.save_pretrained(tmp, state_dict=tuned)
            atomic_write_json(tmp / BASE_MODEL_FILE, identity.to_dict())
    else:
        from safetensors.torch import save_file

        with atomic_directory(RunDir(output_dir).changed_weights) as tmp:
            save_file(tuned, str(tmp / CHANGED_WEIGHTS_FILE))
            atomic_write_json(tmp / BASE_MODEL_FILE, identity.to_dict())
    if settings.merge:
        merged = model.merge_and_unload() if settings.method in ("lora", "qlora") else model
        with atomic_directory(RunDir(output_dir).merged) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
