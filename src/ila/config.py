"""Every setting of `ila`, one dataclass field each: default, help, validation, YAML key, flag.

A setting is declared once, as a field of a section dataclass, with its help text in
``metadata``. The CLI builds its flags from these fields, ``--config run.yaml`` reads the
same names as nested YAML keys, and the resolved config is written back as YAML into the
run directory. Precedence: field default < YAML file < command-line flag.

Choices marked [choice] are this project's, not the paper's (see docs/method.md).

This module must stay importable without torch: ``ila --help`` uses it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ila.errors import IlaError, Setting, argument, require, short_repr

__all__ = [
    "DataConfig",
    "EnsembleSettings",
    "EvalConfig",
    "EvalSettings",
    "FinetuneConfig",
    "FinetuneSettings",
    "LoraSettings",
    "ModelConfig",
    "PlanConfig",
    "PlanSettings",
    "RunConfig",
    "RunSettings",
    "ScoreConfig",
    "SourceSettings",
    "Stage1Config",
    "Stage2Config",
    "TrainConfig",
    "check_setting_types",
    "config_from_dict",
    "config_to_dict",
    "flag_name",
    "input_paths",
    "iter_settings",
    "keyword_name",
    "load_yaml_config",
    "recorded_config",
    "resolve",
    "section_prefix",
    "setting",
    "settings_by_keyword",
]


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with help text (and optional ``choices``) in its metadata."""
    meta = {"help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# Upper bounds of the counts a user types: far above any real job, and low enough that a
# typo (--seeds 20241203 meant as --seed) fails at once, not after hours or out of memory.
MAX_SEEDS = 1000
MAX_STEPS = 10_000_000
MAX_BATCH = 1_000_000
MAX_TOKENS = 16_777_216
MAX_EXAMPLES = 1_000_000_000
MAX_RANK = 65_536
MAX_PROCESSES = 65_536
MAX_SEED = 2**32 - 1
"""torch, numpy and transformers' set_seed take seeds in [0, 2**32 - 1]."""


def _at_most(value: int | None, high: int, name: Setting, what: str) -> None:
    """Refuse a count above its bound, naming the bound."""
    if value is not None and value > high:
        raise IlaError(name, f": must be at most {high:,} ({what}), got {short_repr(value)}")


def _fraction(
    value: float, name: Setting, *, open_low: bool = True, open_high: bool = True
) -> None:
    """Refuse a fraction outside (0, 1), or [0, 1), (0, 1] or [0, 1] as asked."""
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    require(
        math.isfinite(value) and low_ok and high_ok,
        name,
        f"must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}, got {value}",
    )


@dataclass
class ModelConfig:
    """Which model to load and how (see ila.model.loading)."""

    model: str = _opt(
        "smollm2-135m",
        "model to analyse: 'smollm2-135m' (embedded default), a local directory, a .gguf "
        "file, or a Hugging Face hub id",
    )
    dtype: str = _opt(
        "float32",
        "weight dtype: float32, bfloat16 or float16 (CUDA only)",
        choices=["float32", "bfloat16", "float16"],
    )
    device: str = _opt("auto", "device: auto (CUDA if available), cpu, cuda or cuda:N")
    quantization: str = _opt(
        "none",
        "base weights of the block linears: none (--dtype), or nf4 = 4-bit NormalFloat through "
        "bitsandbytes (CUDA only), with LoRA and the gates on top (QLoRA); ila finetune "
        "--method qlora implies it",
        choices=["none", "nf4"],
    )
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)")
    blocks_path: str | None = _opt(
        None, "dotted path of the nn.ModuleList of transformer blocks, when not found automatically"
    )

    def __post_init__(self) -> None:
        require(bool(self.model), setting("model", "model"), "must not be empty")
        require(
            self.threads is None or self.threads >= 1, setting("model", "threads"), "must be >= 1"
        )
        _at_most(self.threads, MAX_PROCESSES, setting("model", "threads"), "CPU threads")


@dataclass
class DataConfig:
    """Which alignment data to read and how to tokenize it (see ila.data)."""

    data: str = _opt(
        "ila-instruct",
        "alignment data: a preset (ila-instruct, chitchat, sharegpt), a local "
        ".json/.jsonl/.parquet/.csv file, or a datasets hub name",
    )
    data_format: str = _opt(
        "auto",
        "record format of the data",
        choices=["auto", "alpaca", "sharegpt", "messages", "prompt-completion", "text"],
    )
    template: str = _opt(
        "auto",
        "prompt template: auto (tokenizer's chat template if it has one, else plain), chat, plain",
        choices=["auto", "chat", "plain"],
    )
    max_length: int = _opt(
        256,
        "maximum tokens per example (longer ones are truncated); at most the model's "
        "positions (max_position_embeddings), checked before the run starts",
    )
    eval_fraction: float = _opt(0.1, "fraction of examples held out for evaluation, in [0, 1)")
    limit: int | None = _opt(None, "use at most this many examples (before the split)")
    split_seed: int = _opt(
        0,
        "seed of the train/held-out split, apart from --seed so that runs with other "
        "training seeds train on the same examples",
    )

    def __post_init__(self) -> None:
        require(
            self.max_length >= 8,
            setting("data", "max_length"),
            f"must be >= 8, got {self.max_length}",
        )
        _fraction(self.eval_fraction, setting("data", "eval_fraction"), open_low=False)
        require(self.limit is None or self.limit >= 1, setting("data", "limit"), "must be >= 1")
        _at_most(self.max_length, MAX_TOKENS, setting("data", "max_length"), "tokens")
        _at_most(self.limit, MAX_EXAMPLES, setting("data", "limit"), "examples")


@dataclass
class LoraSettings:
    """The stage-1 LoRA adapter (Delta_i = alpha / r * B_i A_i for every unit i)."""

    rank: int = _opt(8, "LoRA rank r")
    alpha: float = _opt(16.0, "LoRA alpha (update scaled by alpha / r)")
    dropout: float = _opt(0.05, "LoRA dropout")
    module_types: list[str] = _opt(
        [],
        "module types to adapt, e.g. q_proj v_proj (default: every linear module of every block)",
    )

    def __post_init__(self) -> None:
        require(self.rank >= 1, setting("lora", "rank"), f"must be >= 1, got {self.rank}")
        _at_most(self.rank, MAX_RANK, setting("lora", "rank"), "the LoRA rank")
        require(self.alpha > 0, setting("lora", "alpha"), f"must be > 0, got {self.alpha}")
        _fraction(self.dropout, setting("lora", "dropout"), open_low=False)


@dataclass
class TrainConfig:
    """Settings shared by every training stage (passed to the Hugging Face Trainer)."""

    batch_size: int = _opt(4, "examples per device per step")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    precision: str = _opt(
        "auto",
        "training precision: auto (bf16 autocast on GPUs with bf16 and CPUs with AVX512-BF16 "
        "or AMX, else float32), fp32, bf16, or fp16 (CUDA only)",
        choices=["auto", "fp32", "bf16", "fp16"],
    )
    bf16: bool = _opt(False, "the same as --precision bf16 (kept for older configs)")
    seed: int = _opt(0, "random seed for data order, LoRA init and gates")
    logging_steps: int = _opt(10, "log metrics every N optimizer steps")
    report_to: str = _opt("none", "Trainer integrations to report to (none, tensorboard, ...)")
    save_steps: int = _opt(
        0, "save a Trainer checkpoint every N steps (0: none); --resume continues from the last"
    )
    objective: str = _opt(
        "sft",
        "what every stage trains on: sft = the next-token loss on the responses; dpo = Direct "
        "Preference Optimization (TRL's DPOTrainer) on preference pairs (prompt, chosen, "
        "rejected), with the model without the stage's update as the reference",
        choices=["sft", "dpo"],
    )
    dpo_beta: float = _opt(0.1, "DPO's beta: how strongly the policy is held to the reference")

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, setting("train", "batch_size"), "must be >= 1")
        require(
            math.isfinite(self.dpo_beta) and self.dpo_beta > 0,
            setting("train", "dpo_beta"),
            "must be > 0",
        )
        require(self.save_steps >= 0, setting("train", "save_steps"), "must be >= 0")
        require(self.grad_accum >= 1, setting("train", "grad_accum"), "must be >= 1")
        require(self.logging_steps >= 1, setting("train", "logging_steps"), "must be >= 1")
        seed_ok = 0 <= self.seed <= MAX_SEED
        require(
            seed_ok,
            setting("train", "seed"),
            f"must be in [0, {MAX_SEED}], got {short_repr(self.seed)}",
        )
        _at_most(self.batch_size, MAX_BATCH, setting("train", "batch_size"), "examples per device")
        _at_most(
            self.grad_accum, MAX_BATCH, setting("train", "grad_accum"), "micro-batches per step"
        )
        _at_most(self.logging_steps, MAX_STEPS, setting("train", "logging_steps"), "steps")
        _at_most(self.save_steps, MAX_STEPS, setting("train", "save_steps"), "steps")
        require(
            not self.bf16 or self.precision in ("auto", "bf16"),
            setting("train", "bf16"),
            "contradicts ",
            setting("train", "precision"),
            f" {self.precision}; pass one of them",
        )
        _check_reporter(self.report_to)

    @property
    def requested_precision(self) -> str:
        """``--precision``, with the older ``--bf16`` read as ``bf16``."""
        return "bf16" if self.bf16 else self.precision


# Trainer integrations (transformers' report_to names) and the packages each one needs.
_REPORTERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "neptune": ("neptune",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "trackio": ("trackio",),
    "swanlab": ("swanlab",),
    "codecarbon": ("codecarbon",),
}


def _check_reporter(name: str) -> None:
    """Refuse an unknown --report-to, or one whose package is missing, before any work."""
    import importlib.util

    if name == "none":
        return
    require(
        name in _REPORTERS,
        setting("train", "report_to"),
        f"unknown integration '{name}'; known: none, {', '.join(sorted(_REPORTERS))}",
    )
    packages = _REPORTERS[name]
    require(
        any(importlib.util.find_spec(p) is not None for p in packages),
        setting("train", "report_to"),
        f"{name} needs the '{packages[0]}' package, which is not installed; "
        f"pip install {packages[0]}, or pass ",
        setting("train", "report_to"),
        " none",
    )


@dataclass
class Stage1Config:
    """Stage 1: LoRA fine-tuning until training is epsilon-stable (docs/method.md, Stage 1).

    [choice] The stopping rule (ila.core.stability). ``drop+ranking`` (default): every
    ``window`` steps, on non-overlapping windows, the loss has fallen significantly (more
    than 3 noise standard errors) and the last window moved it by at most ``epsilon`` of
    that drop, and the top ``rank_fraction`` of units by LoRA update norm overlaps the
    previous check's set with Jaccard >= 1 - ``rank_epsilon``; ``patience`` such checks in
    a row. ``drop`` skips the ranking check. ``loss`` / ``loss+update`` are the first,
    relative rule (the windowed mean changes by less than ``epsilon`` of its level for
    ``patience`` consecutive steps). ``max_steps`` is a hard cap.
    """

    method: str = _opt(
        "lora",
        "[choice] what stage 1 trains on every unit: a LoRA adapter (lora), or the unit's "
        "weights themselves (full: stage 2 then gates Delta_i = W_i(T) - W_i(0); keeps a "
        "second copy of the unit weights)",
        choices=["lora", "full"],
    )
    learning_rate: float | None = _opt(
        None, "stage-1 learning rate (default: 1e-3 with --stage1-method lora, 2e-5 with full)"
    )
    warmup_steps: int = _opt(5, "linear warm-up steps")
    max_steps: int = _opt(300, "hard cap on stage-1 steps (stops even if not yet stable)")
    min_steps: int = _opt(20, "never declare stability before this step")
    epsilon: float = _opt(
        0.1,
        "[choice] drop rule: the last window may move the loss by at most this fraction of "
        "the drop so far; loss rules: relative change of the windowed mean",
    )
    window: int = _opt(20, "[choice] steps per window (the drop rule checks once per window)")
    patience: int = _opt(
        2,
        "[choice] consecutive stable checks needed (drop rule: one check per window; "
        "loss rules: one per step, whose windows overlap)",
    )
    criterion: str = _opt(
        "drop+ranking",
        "[choice] stopping rule: drop+ranking, drop (the loss has converged relative to its "
        "drop), or the first relative rule on the loss (loss) or loss and update norm "
        "(loss+update)",
        choices=["drop+ranking", "drop", "loss", "loss+update"],
    )
    rank_epsilon: float = _opt(
        0.1,
        "[choice] drop+ranking: the top units by update norm must overlap the previous "
        "check's with Jaccard >= 1 - this",
    )
    rank_fraction: float = _opt(
        0.25, "[choice] drop+ranking: fraction of units whose top set is compared"
    )
    rank_within_type: bool = _opt(
        False,
        "[choice] drop+ranking: compare top sets of the update norms standardised within "
        "module type, so that which module shapes get the largest updates cannot pass it",
    )
    cooldown_fraction: float = _opt(
        0.0,
        "[choice] after the stop S (T, or the cap) train ceil(this x S) more steps with the "
        "learning rate falling linearly to zero, and learn the mask there (0: no cool-down)",
    )

    def __post_init__(self) -> None:
        require(
            self.learning_rate is None or self.learning_rate > 0,
            setting("stage1", "learning_rate"),
            "must be > 0",
        )
        require(self.max_steps >= 1, setting("stage1", "max_steps"), "must be >= 1")
        require(self.min_steps >= 0, setting("stage1", "min_steps"), "must be >= 0")
        require(
            self.min_steps <= self.max_steps,
            setting("stage1", "min_steps"),
            f"{self.min_steps} is above ",
            setting("stage1", "max_steps"),
            f" {self.max_steps}, so stage 1 could only stop at the cap; lower it (0 for a "
            "capped trial run) or raise the cap",
        )
        require(self.warmup_steps >= 0, setting("stage1", "warmup_steps"), "must be >= 0")
        _fraction(self.epsilon, setting("stage1", "epsilon"))
        require(self.window >= 2, setting("stage1", "window"), "must be >= 2")
        require(self.patience >= 1, setting("stage1", "patience"), "must be >= 1")
        for name in ("max_steps", "min_steps", "warmup_steps", "window", "patience"):
            _at_most(getattr(self, name), MAX_STEPS, setting("stage1", name), "steps")
        _fraction(self.rank_epsilon, setting("stage1", "rank_epsilon"), open_low=False)
        _fraction(self.rank_fraction, setting("stage1", "rank_fraction"))
        _fraction(
            self.cooldown_fraction,
            setting("stage1", "cooldown_fraction"),
            open_low=False,
            open_high=False,
        )

    def resolved_learning_rate(self) -> float:
        """The learning rate in use: the given one, or the stage-1 method's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-5 if self.method == "full" else 1e-3


@dataclass
class Stage2Config:
    """Stage 2: learn one gate score s_i per unit (docs/method.md, Stage 2).

    The masked model is theta_0 + sigmoid(s) * Delta; only s is trained, with Adam, on the
    task loss plus a sparsity budget. [choice] defaults are documented in docs/method.md
    with the measurements behind them.
    """

    unit: str = _opt(
        "module",
        "[choice] gate granularity: one gate per adapted module, or one per block",
        choices=["module", "block"],
    )
    steps: int = _opt(60, "[choice] stage-2 optimizer steps")
    learning_rate: float = _opt(0.1, "[choice] learning rate for the gate scores s")
    optimizer: str = _opt(
        "adam",
        "[choice] optimiser of the gate scores: adam (per-score step sizes) or adam-shared "
        "(one second moment for all scores, so a gate moves with its expected gradient)",
        choices=["adam", "adam-shared"],
    )
    schedule: str = _opt(
        "constant",
        "[choice] stage-2 learning-rate schedule: constant, or cosine decay to zero",
        choices=["constant", "cosine"],
    )
    init_score: float = _opt(3.0, "[choice] initial s for every unit (sigmoid(3) = 0.95)")
    budget: str = _opt(
        "hinge",
        "[choice] sparsity budget: hinge = weight * max(0, mean(sigmoid(s)) - target), "
        "penalty = weight * mean(sigmoid(s)), project = after each step shift s so that "
        "mean(sigmoid(s)) = target",
        choices=["hinge", "penalty", "project"],
    )
    budget_weight: float = _opt(1.0, "[choice] weight lambda of the sparsity budget")
    target_fraction: float = _opt(
        0.5, "[choice] kept fraction H of the hinge budget (mean gate above it is penalised)"
    )
    grad_accum: int = _opt(
        2,
        "[choice] gradient accumulation of stage 2: each gate step sees --batch-size x this "
        "examples per process (a quieter gate gradient; stage 1 uses --grad-accum)",
    )
    tail_fraction: float = _opt(
        0.2,
        "[choice] importance = the gate score s averaged over this last fraction of the "
        "stage-2 steps (0: the last step only)",
    )
    eval_mode: bool = _opt(
        True, "[choice] learn the gates with the model in eval mode (no dropout)"
    )

    def __post_init__(self) -> None:
        require(self.steps >= 1, setting("stage2", "steps"), "must be >= 1")
        require(self.learning_rate > 0, setting("stage2", "learning_rate"), "must be > 0")
        require(math.isfinite(self.init_score), setting("stage2", "init_score"), "must be finite")
        require(self.budget_weight >= 0, setting("stage2", "budget_weight"), "must be >= 0")
        _fraction(self.target_fraction, setting("stage2", "target_fraction"))
        require(self.grad_accum >= 1, setting("stage2", "grad_accum"), "must be >= 1")
        _at_most(self.steps, MAX_STEPS, setting("stage2", "steps"), "steps")
        _at_most(
            self.grad_accum, MAX_BATCH, setting("stage2", "grad_accum"), "micro-batches per step"
        )
        _fraction(self.tail_fraction, setting("stage2", "tail_fraction"), open_low=False)
        for name in ("optimizer", "schedule"):  # their choices, checked from Python too
            allowed = next(f for f in fields(self) if f.name == name).metadata["choices"]
            value = getattr(self, name)
            require(
                value in allowed,
                setting("stage2", name),
                f"must be one of {', '.join(allowed)}, got {short_repr(value)}",
            )


@dataclass
class EnsembleSettings:
    """Several independent identifications (docs/method.md, "Stability you can see")."""

    seeds: int = _opt(
        1,
        "run this many independent identifications (seeds --seed, --seed + 1, ...) and "
        "rank by their consensus, with per-unit top-K frequencies and split-half agreement",
    )

    def __post_init__(self) -> None:
        require(self.seeds >= 1, setting("ensemble", "seeds"), f"must be >= 1, got {self.seeds}")
        _at_most(
            self.seeds,
            MAX_SEEDS,
            setting("ensemble", "seeds"),
            "independent identifications, each a full run",
        )


@dataclass
class SourceSettings:
    """An update that already exists, ranked by stage 2 alone instead of ila's own stage 1
    (docs/method.md, "ILA on an update you already have")."""

    from_adapter: str | None = _opt(
        None,
        "rank the units of this existing peft LoRA adapter (trained on --model by any tool): "
        "stage 2 on its update, no stage 1; its target modules are the units",
    )
    from_model: str | None = _opt(
        None,
        "rank the weight changes of this aligned model against --model, its base: stage 2 on "
        "W_aligned - W_base of every unit, no stage 1 (a second copy of the unit weights)",
    )

    def __post_init__(self) -> None:
        if self.from_adapter and self.from_model:
            raise IlaError(
                setting("source", "from_adapter"),
                " and ",
                setting("source", "from_model"),
                " both name an update to rank; pass one of them",
            )

    @property
    def given(self) -> bool:
        return bool(self.from_adapter or self.from_model)


@dataclass
class ScoreConfig:
    """Everything `ila score` needs: model, data, LoRA, training, stage 1 and stage 2."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    source: SourceSettings = field(default_factory=SourceSettings)

    def __post_init__(self) -> None:
        last = self.train.seed + self.ensemble.seeds - 1  # the seeds are --seed, --seed + 1, ...
        require(
            last <= MAX_SEED,
            setting("ensemble", "seeds"),
            f"{self.ensemble.seeds} from ",
            setting("train", "seed"),
            f" {self.train.seed} reach seed {last}, above {MAX_SEED} (the largest seed torch "
            "takes); lower ",
            setting("train", "seed"),
            " or ",
            setting("ensemble", "seeds"),
        )


@dataclass
class FinetuneSettings:
    """Stage 3: fine-tune only the selected units (docs/method.md, "Stage 3")."""

    method: str = _opt(
        "lora",
        "lora: a LoRA adapter on the selected modules only; full: train the selected "
        "modules' weights, everything else frozen; qlora: LoRA over a 4-bit base (CUDA only)",
        choices=["lora", "full", "qlora"],
    )
    learning_rate: float | None = _opt(
        None, "learning rate (default: 1e-3 for lora/qlora, 2e-5 for full)"
    )
    max_steps: int = _opt(100, "optimizer steps")
    warmup_steps: int = _opt(5, "linear warm-up steps, then linear decay")
    train_embeddings: bool = _opt(
        False, "with --method full, also train the input embeddings and the LM head"
    )
    merge: bool = _opt(False, "also write a merged full model directory (merged/)")
    init_from_stage1: bool | None = _opt(
        None,
        "start the selected units' LoRA from the stage-1 adapter of the scores run (--scores), "
        "so the stage-1 steps count toward the fine-tune; lora/qlora only (default: yes in "
        "ila run wherever the fine-tune and stage 1 are LoRA and --seeds is 1, no in ila "
        "finetune)",
    )

    def __post_init__(self) -> None:
        require(
            self.learning_rate is None or self.learning_rate > 0,
            setting("finetune", "learning_rate"),
            "must be > 0",
        )
        require(
            not self.init_from_stage1 or self.method in ("lora", "qlora"),
            setting("finetune", "init_from_stage1"),
            "starts from a LoRA adapter, so it needs ",
            setting("finetune", "method"),
            f" lora or qlora (not {self.method})",
        )
        require(self.max_steps >= 1, setting("finetune", "max_steps"), "must be >= 1")
        require(self.warmup_steps >= 0, setting("finetune", "warmup_steps"), "must be >= 0")
        _at_most(self.max_steps, MAX_STEPS, setting("finetune", "max_steps"), "steps")
        _at_most(self.warmup_steps, MAX_STEPS, setting("finetune", "warmup_steps"), "steps")

    def resolved_learning_rate(self) -> float:
        """The learning rate in use: the given one, or the method's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-5 if self.method == "full" else 1e-3


@dataclass
class FinetuneConfig:
    """Everything `ila finetune` needs: model, data, LoRA, training and the method."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)


@dataclass
class EvalSettings:
    """What `ila eval` measures (and `ila run` after fine-tuning); see ila.evaluation."""

    split: str = _opt(
        "eval",
        "examples evaluated: eval = the held-out split made exactly as in training "
        "(same --eval-fraction and --split-seed), all = every example of --data",
        choices=["eval", "all"],
    )
    max_examples: int | None = _opt(
        None, "evaluate at most this many examples for loss and perplexity (default: all)"
    )
    generate_examples: int = _opt(
        100,
        "examples answered by greedy generation (exact match where the data has checkable "
        "answers; all saved to generations.jsonl); 0 to skip generation",
    )
    max_new_tokens: int = _opt(160, "most tokens generated per answer")
    batch_size: int = _opt(8, "examples per evaluation batch")
    mc_data: str | None = _opt(
        None,
        "multiple-choice questions in MMLU layout: a CSV file, or a directory of "
        "*_test.csv files (rows: question, A, B, C, D, answer letter; no header)",
    )
    mc_limit: int | None = _opt(None, "use at most this many multiple-choice questions")
    lm_eval_tasks: list[str] = _opt(
        [], "lm-evaluation-harness tasks to run too (needs the lm-eval package)"
    )
    lm_eval_limit: int | None = _opt(None, "at most this many examples per lm-eval task")
    on_data: bool | None = _opt(
        None,
        "measure on the examples of --data: response loss, perplexity, preference accuracy, "
        "greedy answers and exact match (default: yes; in ila eval, no when --eval-mc-data or "
        "--eval-lm-eval-tasks is given, so that only those run)",
    )

    def measures_data(self, command: str = "eval") -> bool:
        """Whether ``command`` (``eval`` or ``run``) measures on --data: ``on_data`` when
        set; else always in ``run``, and in ``eval`` unless multiple-choice questions or
        lm-eval tasks are asked for (docs/evaluation.md, "What runs")."""
        if self.on_data is not None:
            return self.on_data
        return command == "run" or not (self.mc_data or self.lm_eval_tasks)

    def __post_init__(self) -> None:
        require(
            self.on_data is not False or bool(self.mc_data or self.lm_eval_tasks),
            setting("eval", "on_data"),
            "off leaves nothing to evaluate; pass ",
            setting("eval", "mc_data"),
            " or ",
            setting("eval", "lm_eval_tasks"),
            " too, or leave ",
            setting("eval", "on_data"),
            " on",
        )
        for name in ("max_examples", "mc_limit", "lm_eval_limit"):
            value = getattr(self, name)
            require(value is None or value >= 1, setting("eval", name), "must be >= 1")
        require(self.generate_examples >= 0, setting("eval", "generate_examples"), "must be >= 0")
        require(self.max_new_tokens >= 1, setting("eval", "max_new_tokens"), "must be >= 1")
        require(self.batch_size >= 1, setting("eval", "batch_size"), "must be >= 1")
        for name in ("max_examples", "mc_limit", "lm_eval_limit", "generate_examples"):
            _at_most(getattr(self, name), MAX_EXAMPLES, setting("eval", name), "examples")
        _at_most(self.max_new_tokens, MAX_TOKENS, setting("eval", "max_new_tokens"), "tokens")
        _at_most(self.batch_size, MAX_BATCH, setting("eval", "batch_size"), "examples per batch")


@dataclass
class EvalConfig:
    """Everything `ila eval` needs: model, data (and its split), and what to measure."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class RunSettings:
    """What `ila run` does after scoring: select units from the ranking and fine-tune them
    (with the fine-tune settings, the ``finetune`` section: ``--method``, ``--max-steps``,
    ``--learning-rate``, ``--init-from-stage1``, ... as in `ila finetune`)."""

    tune_top_fraction: float | None = _opt(
        None,
        "tune the top fraction of the ranking (the default rule: 0.3 when neither this nor "
        "--freeze-bottom-fraction is given)",
    )
    freeze_bottom_fraction: float | None = _opt(
        None, "freeze the bottom fraction of the ranking and tune the rest"
    )
    within_module_type: bool = _opt(
        False,
        "apply the fraction within each module type (the top or bottom F of each type's "
        "units, as Spectrum selects) instead of over the whole ranking; module scores only",
    )
    finetune: bool = _opt(
        True, "fine-tune the selection after scoring (--no-finetune stops after selecting)"
    )
    evaluate: bool = _opt(
        True, "evaluate after fine-tuning (see the eval- settings); needs the fine-tune"
    )
    compare_all_units: bool = _opt(
        True,
        "also fine-tune every unit with the same steps (into finetune-all-units/) and "
        "evaluate the base model, all units and the selection side by side",
    )
    # The spellings before the fine-tune settings were shared with `ila finetune`; kept
    # for one release, each moved into the finetune section with a deprecation warning.
    finetune_method: str | None = _opt(
        None, "deprecated: use --method", choices=["lora", "full", "qlora"]
    )
    finetune_steps: int | None = _opt(None, "deprecated: use --max-steps (and --no-finetune for 0)")
    finetune_learning_rate: float | None = _opt(None, "deprecated: use --learning-rate")
    finetune_init_from_stage1: bool | None = _opt(None, "deprecated: use --init-from-stage1")
    select_rule: str | None = _opt(
        None,
        "deprecated: use --tune-top-fraction or --freeze-bottom-fraction",
        choices=["tune-top-fraction", "freeze-bottom-fraction"],
    )
    select_fraction: float | None = _opt(
        None, "deprecated: use --tune-top-fraction or --freeze-bottom-fraction"
    )

    def __post_init__(self) -> None:
        require(
            self.finetune_steps is None or self.finetune_steps >= 0,
            setting("run", "finetune_steps"),
            "must be >= 0",
        )
        _at_most(self.finetune_steps, MAX_STEPS, setting("run", "finetune_steps"), "steps")
        if self.select_rule is not None or self.select_fraction is not None:
            rule = (self.select_rule or "tune-top-fraction").replace("-", "_")
            fraction = 0.3 if self.select_fraction is None else self.select_fraction
            logging.getLogger("ila").warning(
                "--select-rule/--select-fraction: deprecated, use --%s %s",
                rule.replace("_", "-"),
                fraction,
            )
            setattr(self, rule, fraction)
            self.select_rule = self.select_fraction = None
        if self.tune_top_fraction is not None and self.freeze_bottom_fraction is not None:
            raise IlaError(
                setting("run", "tune_top_fraction"),
                " and ",
                setting("run", "freeze_bottom_fraction"),
                " are two rules; give one of them",
            )
        if self.tune_top_fraction is None and self.freeze_bottom_fraction is None:
            self.tune_top_fraction = 0.3
        for name in ("tune_top_fraction", "freeze_bottom_fraction"):
            if getattr(self, name) is not None:
                _fraction(getattr(self, name), setting("run", name))

    @property
    def selection_rule(self) -> dict[str, Any]:
        """The rule as keyword arguments of :func:`ila.core.selection.select_units`."""
        within = {"within_module_type": True} if self.within_module_type else {}
        if self.tune_top_fraction is not None:
            return {"tune_top_fraction": self.tune_top_fraction, **within}
        assert self.freeze_bottom_fraction is not None
        return {"freeze_bottom_fraction": self.freeze_bottom_fraction, **within}


_DEPRECATED_RUN_KEYS = {
    "finetune_method": "method",
    "finetune_steps": "max_steps",
    "finetune_learning_rate": "learning_rate",
    "finetune_init_from_stage1": "init_from_stage1",
}


@dataclass
class RunConfig(ScoreConfig):
    """`ila run`: everything `ila score` needs, plus the selection, the fine-tune (the
    settings of `ila finetune`) and the evaluation after it."""

    run: RunSettings = field(default_factory=RunSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._move_deprecated_run_settings()
        if self.run.within_module_type and self.stage2.unit != "module":
            raise IlaError(
                setting("run", "within_module_type"),
                ": ",
                setting("stage2", "unit"),
                f" {self.stage2.unit} ranks blocks, which have no module type; rank modules, "
                "or leave ",
                setting("run", "within_module_type"),
                " off",
            )
        require(
            not self.finetune.init_from_stage1 or self.ensemble.seeds == 1,
            setting("finetune", "init_from_stage1"),
            "needs one stage-1 adapter, but ",
            setting("ensemble", "seeds"),
            f" {self.ensemble.seeds} trains one per member; run without ",
            setting("ensemble", "seeds"),
            ", or fine-tune from one member with 'ila finetune' with ",
            argument("scores"),
            " RUN/seeds/seed-S and ",
            setting("finetune", "init_from_stage1"),
        )

    def _move_deprecated_run_settings(self) -> None:
        """run.finetune_* (``--finetune-method`` ...) into the finetune section, with a
        warning; ``--finetune-steps 0`` becomes ``--no-finetune``."""
        run = self.run
        given = {k: getattr(run, k) for k in _DEPRECATED_RUN_KEYS if getattr(run, k) is not None}
        if not given:
            return
        moved = {_DEPRECATED_RUN_KEYS[k]: v for k, v in given.items()}
        stop = moved.get("max_steps") == 0
        if stop:
            del moved["max_steps"]
        old = ", ".join(flag_name("run", k) for k in given)
        new = ", ".join(flag_name("finetune", k) for k in moved)
        logging.getLogger("ila").warning(
            "%s: deprecated, use the fine-tune settings of 'ila finetune' (%s)%s",
            old,
            new or "none",
            " and --no-finetune" if stop else "",
        )
        self.finetune = dataclasses.replace(self.finetune, **moved)
        self.run = dataclasses.replace(
            run, finetune=run.finetune and not stop, **dict.fromkeys(given)
        )

    def finetune_config(self, *, init_from_stage1: bool) -> FinetuneConfig:
        """The settings of `ila finetune` for this run's fine-tunes (the selection and the
        all-units baseline): its model, data, LoRA and training, its fine-tune section,
        starting from the stage-1 adapter or not as ``init_from_stage1`` says."""
        return FinetuneConfig(
            model=self.model,
            data=self.data,
            lora=self.lora,
            train=self.train,
            finetune=dataclasses.replace(self.finetune, init_from_stage1=init_from_stage1),
        )


@dataclass
class PlanSettings:
    """What `ila plan` estimates besides the stages' own settings (see ila.analysis.plan)."""

    tune_top_fraction: float = _opt(
        0.3, "fraction of the units the selective fine-tune tunes (ignored with --selection)"
    )
    select_fraction: float | None = _opt(None, "deprecated: use --tune-top-fraction")
    tokens_per_second: float | None = _opt(
        None,
        "measured training throughput (tokens per second per process) for a time estimate; "
        "without it no time is estimated",
    )
    fsdp: int = _opt(
        1,
        "processes that shard parameters, gradients and optimizer states with FSDP "
        "(FULL_SHARD / fully_shard): those are divided by it, activations stay per process",
    )
    zero3: int = _opt(1, "the same for DeepSpeed ZeRO-3 (its sharding is counted alike)")

    def __post_init__(self) -> None:
        if self.select_fraction is not None:
            logging.getLogger("ila").warning(
                "--select-fraction: deprecated, use --tune-top-fraction %s", self.select_fraction
            )
            self.tune_top_fraction, self.select_fraction = self.select_fraction, None
        _fraction(self.tune_top_fraction, setting("plan", "tune_top_fraction"))
        require(self.fsdp >= 1, setting("plan", "fsdp"), "must be >= 1 (processes)")
        require(self.zero3 >= 1, setting("plan", "zero3"), "must be >= 1 (processes)")
        _at_most(self.fsdp, MAX_PROCESSES, setting("plan", "fsdp"), "processes")
        _at_most(self.zero3, MAX_PROCESSES, setting("plan", "zero3"), "processes")
        if self.fsdp != 1 and self.zero3 != 1:
            raise IlaError(
                setting("plan", "fsdp"),
                " and ",
                setting("plan", "zero3"),
                " are two ways to shard one job; pass one of them",
            )
        require(
            self.tokens_per_second is None
            or (math.isfinite(self.tokens_per_second) and self.tokens_per_second > 0),
            setting("plan", "tokens_per_second"),
            f"must be a positive number, got {self.tokens_per_second}",
        )


@dataclass
class PlanConfig(ScoreConfig):
    """`ila plan`: the settings of `ila score` and `ila finetune`, and what to estimate."""

    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    plan: PlanSettings = field(default_factory=PlanSettings)


# Sections whose fields get a flag prefix; the others' fields are flags as they are.
_PREFIXES = {"lora": "lora-", "stage1": "stage1-", "stage2": "stage2-", "eval": "eval-"}


def section_prefix(section: str) -> str:
    """The flag prefix of a config section ('' for model, data and train)."""
    return _PREFIXES.get(section, "")


def keyword_name(section: str, name: str) -> str:
    """The keyword of a setting in the Python API, e.g. ('stage1', 'max_steps') ->
    stage1_max_steps: its flag without the dashes."""
    return section_prefix(section).replace("-", "_") + name


def flag_name(section: str, name: str) -> str:
    """The command-line flag of a setting, e.g. ('stage1', 'max_steps') -> --stage1-max-steps."""
    return "--" + keyword_name(section, name).replace("_", "-")


def setting(section: str, name: str) -> Setting:
    """The setting ``name`` of config section ``section``, as an error message names it
    (:class:`ila.errors.Setting`: ``stage1_max_steps`` in Python, ``--stage1-max-steps``
    on the command line)."""
    return Setting(section, name, keyword_name(section, name))


def settings_by_keyword(config_cls: type) -> dict[str, Setting]:
    """Keyword (``stage1_max_steps``) -> its :class:`~ila.errors.Setting`, for every
    setting of ``config_cls``."""
    return {
        keyword_name(section, f.name): setting(section, f.name)
        for section, f, _ in iter_settings(config_cls)
    }


def iter_settings(config_cls: type) -> list[tuple[str, dataclasses.Field, type]]:
    """(section, field, section class) for every setting of a top-level config class."""
    out = []
    for section in dataclasses.fields(config_cls):
        section_cls = get_type_hints(config_cls)[section.name]
        for f in dataclasses.fields(section_cls):
            out.append((section.name, f, section_cls))
    return out


_NO_DEFAULT = object()


def setting_default(key: str) -> Any:
    """The default of the setting a recorded config.yaml key names (``run.within_module_type``),
    or :data:`_NO_DEFAULT` for a key that is no setting with a default. Lets ``--resume``
    read a setting added after a run began, and left at its default, as what the run did."""
    section, _, name = key.partition(".")
    for config_cls in (RunConfig, FinetuneConfig, EvalConfig, PlanConfig):
        for found_section, f, _ in iter_settings(config_cls):
            if (found_section, f.name) != (section, name):
                continue
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _NO_DEFAULT


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict of a config (the YAML written into the run directory)."""
    return dataclasses.asdict(config)


def recorded_config(config: Any) -> dict[str, Any]:
    """The config a run directory records (config.yaml): :func:`config_to_dict` with each
    learning rate that was left to its method's default written out."""
    data = config_to_dict(config)
    for section in ("stage1", "finetune"):
        settings = getattr(config, section, None)
        if settings is not None:
            data[section]["learning_rate"] = settings.resolved_learning_rate()
    return data


def input_paths(config: Any) -> list[str]:
    """The files a job reads by the settings of ``config`` (model, data, MC questions); a
    run directory that contains one of them is never replaced (see ila.rundir)."""
    paths = [config.model.model, config.data.data]
    source = getattr(config, "source", None)
    if source is not None and source.given:
        paths.append(source.from_adapter or source.from_model)
    settings = getattr(config, "eval", None)
    if settings is not None and settings.mc_data:
        paths.append(settings.mc_data)
    return paths


def resolve(
    config_cls: type,
    source: Any = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    scorer: str = "ila",
    keywords: tuple[str, ...] = (),
) -> Any:
    """The one resolution of a command's settings, for the CLI and the Python API alike.

    ``source`` is a YAML path, a nested mapping (such as a run's config.yaml), a config
    object of any command (its sections ``config_cls`` does not have are skipped) or
    None; ``overrides`` are flat keywords named like the settings (``stage1_max_steps``,
    the flags without dashes), which win over ``source``; a None value is "not given".
    A run's config.yaml also records its scorer (``method``): it must be ``scorer``, the
    scorer of this command. ``keywords`` are the calling function's own arguments, also
    suggested for a misspelled setting. Precedence: default < source < overrides.
    """
    data, origin = _source_data(source)
    recorded = data.pop("method", None)
    if recorded is not None and recorded != scorer:
        raise IlaError(
            f"{origin}: records method '{recorded}' but this command scores with '{scorer}'; "
            "score with the scorer it records (",
            argument("scorer"),
            f" {recorded})",
        )
    if source is not None:  # its own values too, also those an override replaces
        check_setting_types(config_cls, data, origin=origin)
    names = settings_by_keyword(config_cls)
    hints = get_type_hints(config_cls)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            close = difflib.get_close_matches(key, sorted({*names, *keywords}), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise IlaError(f"unknown setting {key!r} for {config_cls.__name__}{hint}")
        name = names[key]
        hint = get_type_hints(hints[name.section])[name.name]
        value = _check_type(list(value) if isinstance(value, tuple) else value, hint, name)
        section = data.setdefault(name.section, {})
        if not isinstance(section, dict):
            raise IlaError(f"{origin}: section '{name.section}' must be a mapping")
        section[name.name] = value
    return config_from_dict(config_cls, data, origin=origin)


def _source_data(source: Any) -> tuple[dict[str, Any], str]:
    """The nested settings of a config ``source`` (see :func:`resolve`) as a fresh dict, and
    how its messages name it."""
    if source is None:
        return {}, "settings"
    if isinstance(source, (str, Path)):
        return load_yaml_config(Path(source)), str(source)
    if isinstance(source, Mapping):
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in source.items()}
        return data, "config"
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return config_to_dict(source), "config"
    raise IlaError(
        f"config must be a YAML path, a mapping or a config object, not {short_repr(source)}"
    )


def config_from_dict(config_cls: type, data: dict[str, Any], *, origin: str = "config") -> Any:
    """Build ``config_cls`` from a nested dict, refusing unknown sections and keys.

    Sections that belong to another command (``run:`` or ``eval:`` read by ``ila score``)
    are skipped, so one YAML file can drive every step of a job; a section no command
    knows is refused, with the closest names.
    """
    hints = get_type_hints(config_cls)
    sections = _typed_sections(config_cls, data, origin)
    return config_cls(**{key: hints[key](**values) for key, values in sections.items()})


def check_setting_types(config_cls: type, data: dict[str, Any], *, origin: str) -> None:
    """Check the sections, keys and value types of ``data`` (a YAML file, a mapping) for
    ``config_cls`` on their own, before flags or keywords override some of its values: a
    wrong value in a file is an error even where it is overridden. Ranges are checked on
    the merged settings (a file's min steps may fit only the max steps a flag gives)."""
    _typed_sections(config_cls, data, origin)


def _typed_sections(
    config_cls: type, data: dict[str, Any], origin: str
) -> dict[str, dict[str, Any]]:
    """The sections of ``data`` that ``config_cls`` has, each value type-checked."""
    if not isinstance(data, dict):
        raise IlaError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
    hints = get_type_hints(config_cls)
    sections = {f.name for f in dataclasses.fields(config_cls)}
    every_section = {f.name for cls in _COMMAND_CONFIGS for f in dataclasses.fields(cls)}
    typed: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in sections and key in every_section:
            continue  # another command's settings
        if key not in sections:
            shown = _key_text(key)
            raise IlaError(f"{origin}: unknown section '{shown}'{_suggest(shown, every_section)}")
        section_cls = hints[key]
        names = {f.name for f in dataclasses.fields(section_cls)}
        if not isinstance(value, dict):
            raise IlaError(f"{origin}: section '{key}' must be a mapping")
        types = get_type_hints(section_cls)
        typed[key] = {}
        for name, item in value.items():
            if name not in names:
                shown = _key_text(name)
                raise IlaError(f"{origin}: unknown key '{key}.{shown}'{_suggest(shown, names)}")
            typed[key][name] = _check_type(item, types[name], f"{origin}: {key}.{name}")
    return typed


def _key_text(key: Any) -> str:
    """A YAML key as a message shows it: a name as it is (cut at 60 characters), anything
    else through :func:`ila.errors.short_repr`."""
    if isinstance(key, str):
        return key if len(key) <= 60 else key[:57] + "..."
    return short_repr(key)


def _check_type(value: Any, hint: Any, where: str | Setting) -> Any:
    """Check (and gently coerce: int -> float) a value read from YAML against its field type."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] if is_union else [hint]
    if value is None and is_union and type(None) in typing.get_args(hint):
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(value, origin):
            if origin is list and not all(isinstance(v, str) for v in value):
                break
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise IlaError(where, f" must be {names}, got {short_repr(value)}")


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file into a nested dict (validated by config_from_dict)."""
    path = Path(path)
    if not path.is_file():
        raise IlaError(argument("config"), f" {path}: file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except _DuplicateKeyError as exc:
        raise IlaError(
            f"{path}:{exc.line}: key '{_key_text(exc.key)}' appears twice in one section "
            f"(first on line {exc.first_line}); keep one of them"
        ) from exc
    except _AliasError as exc:
        raise IlaError(
            f"{path}:{exc.line}: YAML anchors and aliases ({exc.mark}) are not accepted in a "
            "config file (an alias can expand without bound); write each value out"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise IlaError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    except UnicodeDecodeError as exc:
        raise IlaError(argument("config"), f" {path}: not UTF-8 text; pass a YAML file") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise IlaError(f"{path}: a value cannot be read ({str(exc)[:200]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IlaError(
            argument("config"),
            f" {path}: the top level is a {type(data).__name__}, not a mapping of "
            "sections; write it as 'section:' lines with 'key: value' entries (e.g. "
            "'model:' then '  model: smollm2-135m')",
        )
    return data


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _AliasError(Exception):
    def __init__(self, mark: str, line: int) -> None:
        super().__init__(mark)
        self.mark, self.line = mark, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (the
    plain loader silently keeps the last value), and so is an anchor or an alias (nested
    aliases expand exponentially, and settings never need them)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = ("*" if isinstance(event, yaml.AliasEvent) else "&") + str(event.anchor)
            raise _AliasError(short_repr(mark), event.start_mark.line + 1)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(key, line, seen[key])
            except TypeError:  # an unhashable key; the base class reports it
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _suggest(word: str, options: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=3)
    return (
        f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(options))}"
    )


# The top-level settings of every command, whose sections a shared YAML file may hold.
_COMMAND_CONFIGS = (ScoreConfig, FinetuneConfig, EvalConfig, RunConfig, PlanConfig)
