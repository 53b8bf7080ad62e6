"""Running ILA's stage 2 inside a live training run (the callback of ila.integrations).

The pieces the callback needs around :func:`ila.scorers.ila.run_stage2` when the model is
the one a user's Trainer is training: a sample of the run's own training data and
collator, the stage-2 settings taken from the outer run (batch, accumulation, precision,
device), the ranking's run directory, freezing units for the rest of the run, and
putting the outer run's model, random states and accelerate state back afterwards
(docs/method.md, "ILA on an update you already have").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ila.config import (
    LoraSettings,
    ModelConfig,
    ScoreConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
)
from ila.core.layers import LayerMap
from ila.core.lora import unit_lora_layer
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.files import atomic_write_json
from ila.run_files import DATA_FILE
from ila.rundir import RunDir
from ila.scorers.common import preserved_model_state
from ila.train.trainer import stage_seed

__all__ = [
    "base_model",
    "complete_meta",
    "examples_needed",
    "fingerprint",
    "freeze_units",
    "model_id",
    "outer_run_kept",
    "peft_settings",
    "restore_rng",
    "rng_states",
    "save_run",
    "score_config",
    "stage2_examples",
    "training_data",
]

log = logging.getLogger(__name__)

ADAPTER = "default"
# What accelerate's ``prepare`` sets on a model it wraps (mixed-precision forward, the
# prepared flag); the nested Trainer's prepare must not leave its own behind.
_PREPARED_ATTRIBUTES = ("forward", "_original_forward", "_is_accelerate_prepared")


def training_data(dataloader: Any) -> tuple[Sequence[Any], Callable[[list[Any]], Any]]:
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


def examples_needed(args: TrainingArguments, stage2: Stage2Config) -> int:
    """Examples stage 2 reads over all its steps and processes."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return stage2.steps * stage2.grad_accum * per_step * args.world_size


def stage2_examples(dataset: Sequence[Any], needed: int, seed: int) -> list[Any]:
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


def fingerprint(features: Sequence[Any]) -> str:
    """First 16 hex digits of a SHA-256 over the token ids of the stage-2 examples."""
    digest = hashlib.sha256()
    for feature in features:
        ids = feature["input_ids"] if isinstance(feature, Mapping) else feature
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        digest.update(json.dumps(ids).encode("utf-8"))
    return digest.hexdigest()[:16]


def base_model(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_id(model: Any) -> str:
    """The base model's name or path as transformers recorded it (else its class name)."""
    base = base_model(model)
    name = getattr(getattr(base, "config", None), "_name_or_path", None)
    return str(name or getattr(base, "name_or_path", None) or type(base).__name__)


def peft_settings(model: Any) -> dict[str, Any]:
    """The adapter's rank, alpha, dropout and target modules (peft's config)."""
    config = model.peft_config[ADAPTER]
    targets = config.target_modules
    return {
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
    }


def score_config(
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
    base = base_model(model)
    model_config = ModelConfig(
        model=model_id(model),
        dtype=dtypes.get(weights, "float32"),
        device="cpu" if args.device.type == "cpu" else "auto",
        quantization="nf4" if getattr(base, "is_loaded_in_4bit", False) else "none",
    )
    peft = peft_settings(model)
    lora = LoraSettings(
        rank=peft["rank"],
        alpha=peft["alpha"],
        dropout=peft["dropout"],
        module_types=list(layer_map.module_types),
    )
    return ScoreConfig(model=model_config, lora=lora, train=train, stage1=stage1, stage2=stage2)


def complete_meta(
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


def save_run(scores: LayerScores, out: Path, *, dataset_size: int, stage2_examples: int) -> None:
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
    run = RunDir(out)
    scores.save(run.scores)
    write_score_report(scores, run.report)
    run.mark("score")
    log.info("IlaCallback: wrote %s and its report in %s", run.scores, run.report)


def freeze_units(model: torch.nn.Module, layer_map: LayerMap, names: Sequence[str]) -> None:
    """``requires_grad=False`` on the LoRA A and B of the units ``names``."""
    for name in names:
        layer = unit_lora_layer(model, layer_map.unit(name))
        for matrices in (layer.lora_A, layer.lora_B):
            for param in matrices[ADAPTER].parameters():
                param.requires_grad_(False)


@contextmanager
def outer_run_kept(model: torch.nn.Module) -> Iterator[None]:
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
    rng = rng_states()
    try:
        with preserved_model_state(model):
            yield
    finally:
        restore_rng(rng)
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


def rng_states() -> dict[str, Any]:
    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
