"""A memory and time estimate for an ILA job, made from the model's config alone.

``ila plan`` answers "will this fit, and how long?" before a long run: no weights are
loaded. The model is built on PyTorch's ``meta`` device (shapes, no storage) from its
config, :func:`ila.core.layers.find_layers` finds the units exactly as a real run would, and
every count below is computed from those shapes.

Per stage (docs/method.md: stage 1 LoRA, stage 2 gates, stage 3 selective fine-tune):

- trainable parameters: stage 1, LoRA ``r * (d_in + d_out)`` on every unit (with
  ``--stage1-method full`` every unit's weight matrix, plus a copy of W(0) among the
  weights, which stage 2 holds as Delta = W(T) - W(0)); stage 2, one
  gate per unit (or per block); fine-tune, LoRA or the full weights (and biases) of the
  selected units, from a ``selection.json`` (exact) or a fraction (the ``k`` largest
  units, an upper bound, since the ranking is not known yet);
- weights: every parameter in ``--dtype`` (``qlora``: the block linears in 4-bit NF4 with
  double quantisation, 4.127 bits per weight), plus LoRA weights and gates in float32;
- gradients: one per trainable parameter, in its dtype; Adam: two states per trainable
  parameter, in its dtype (exp_avg and exp_avg_sq of ``torch.optim.AdamW``);
- activations, per micro-batch (``t = batch_size * max_length`` tokens), in bytes::

      A = b_act * (t * n_grad * a_layer + n_grad * 2 * s^2) + 4 * t * 4 * V

  with ``n_grad`` the blocks autograd keeps activations for (all of them in stages 1-2;
  from the lowest selected block up in a fine-tune with a known selection), ``b_act``
  the activation dtype's bytes (2 under 16-bit ``--precision`` or a 16-bit ``--dtype``,
  else 4), and
  per token and block ``a_layer = 2h + 2q + 2kv + n_heads + M + X``: the two norm inputs,
  the attention kernel's saved q, k, v, output and log-sum-exp (no ``s x s`` matrix:
  SDPA), ``M = 3I`` for a gated MLP (gate, activation and up outputs) or ``I`` otherwise,
  and ``X`` the inputs the trained linears keep: ``h + h + I`` per block holding a trained
  unit with trained weights or LoRA without dropout; with LoRA dropout ``2 * d_in`` per
  adapted unit (the dropped-out input and its mask), and in stage 2 ``d_out`` per unit
  (the gated LoRA output; plus ``d_in`` for the dropout mask). ``2 s^2`` per block is the
  float attention mask torch's SDPA keeps; the ``4 V`` float32 values per token are the
  logits, the loss's log-softmax and their two gradients at the start of the backward pass.
  Symbols: ``h`` hidden size, ``q``/``kv`` query and key-value widths, ``I`` MLP width,
  ``s`` max length, ``V`` vocabulary.

The activation formula is for pre-norm decoder blocks (Llama, Mistral, Qwen2, Gemma, ...)
without gradient checkpointing (ila does not enable it); for other blocks it is an
estimate. Tokens per step are an upper bound (batches are padded to their longest
example, at most ``max_length``). Time is estimated only from a throughput the user
measured (``--tokens-per-second``); none is invented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ila.config import PlanConfig, setting
from ila.core.layers import LayerMap, Unit, find_layers
from ila.errors import IlaError

__all__ = ["ModelShape", "Plan", "StagePlan", "activation_bytes", "model_shape", "plan_run"]

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 with double quantisation: 4 bits + 8-bit absmax per 64 + fp32 per 256 absmax groups.
_NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
_FLOAT32 = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read from its config on ``meta``."""

    model: str
    model_type: str
    architecture: str
    parameters: int
    embedding_parameters: int
    layer_map: LayerMap
    lora_map: LayerMap
    biases: dict[str, int]
    hidden_size: int
    query_width: int
    kv_width: int
    num_heads: int
    mlp_width: int
    gated_mlp: bool
    vocab_size: int


@dataclass(frozen=True)
class StagePlan:
    """The estimate for one stage; bytes are per process, peak = the sum of the parts."""

    name: str
    what: str
    trainable_parameters: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    max_steps: int
    seconds: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        parts = (self.weight_bytes, self.gradient_bytes, self.optimizer_bytes)
        return sum(parts) + self.activation_bytes


@dataclass(frozen=True)
class Plan:
    """The whole estimate: the model, tokens per step and one :class:`StagePlan` per stage."""

    model: str
    model_type: str
    architecture: str
    num_blocks: int
    num_units: int
    parameters: int
    dtype: str
    tokens_per_step: int
    micro_batch_tokens: int
    tokens_per_second: float | None
    stages: list[StagePlan]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for stage, data in zip(self.stages, out["stages"], strict=True):
            data["peak_bytes"] = stage.peak_bytes
        return out

    def to_table(self) -> str:
        """The plan as readable text: a header, one row per stage, and the caveats."""
        lines = [
            f"ila plan: {self.model} ({self.architecture}), {self.num_blocks} blocks, "
            f"{self.num_units} units, {self.parameters:,} parameters ({self.dtype})",
            f"tokens per step: {self.tokens_per_step:,} per process (at most: batches are "
            f"padded to their longest example); {self.micro_batch_tokens:,} per micro-batch",
            "",
            "| stage | trainable params | weights | gradients | Adam states | activations "
            "| peak (sum) | max steps | time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.stages:
            time = "-" if s.seconds is None else _duration(s.seconds)
            lines.append(
                f"| {s.name}: {s.what} | {s.trainable_parameters:,} | {_size(s.weight_bytes)} "
                f"| {_size(s.gradient_bytes)} | {_size(s.optimizer_bytes)} "
                f"| {_size(s.activation_bytes)} | {_size(s.peak_bytes)} | {s.max_steps} | {time} |"
            )
        lines.append("")
        for s in self.stages:
            lines.extend(f"{s.name}: {note}" for note in s.notes)
        if self.tokens_per_second is None:
            lines.append(
                "time: not estimated; measure tokens/s on the target hardware (a few steps) "
                "and pass --tokens-per-second"
            )
        else:
            lines.append(
                f"time: steps x {self.tokens_per_step:,} tokens / {self.tokens_per_second:,.0f} "
                "tokens/s, the same throughput assumed for every stage; stage 1 stops at T, "
                "usually before its cap"
            )
        lines.append(
            "memory: live tensors per process, no gradient checkpointing (formula and "
            "measurements: docs/plan.md); the peak is an upper bound where the optimizer "
            "step, not the backward pass, sets it; allocators hold more (CPU glibc: 1.3-1.6x)"
        )
        return "\n".join(lines)


def model_shape(
    model: str,
    *,
    blocks_path: str | None = None,
    module_types: list[str] | None = None,
    cache: Path | None = None,
) -> ModelShape:
    """Build ``model`` from its config on the meta device and read its shapes (no weights).

    ``module_types`` restricts the stage-1 LoRA units (``--lora-module-types``), as
    ``ila score`` does; the fine-tune always chooses among all units, as ``ila finetune``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ila.model.loading import load_model_config

    config = load_model_config(model, cache=cache)
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IlaError(f"model {model!r}: transformers cannot build a causal LM ({first})") from exc
    layer_map = find_layers(skeleton, blocks_path=blocks_path)
    lora_map = find_layers(skeleton, blocks_path=blocks_path, module_types=module_types or None)
    unique = {id(p): p.numel() for p in skeleton.parameters()}
    biases = {}
    for unit in layer_map.units:
        bias = getattr(skeleton.get_submodule(unit.module_path), "bias", None)
        biases[unit.name] = int(bias.numel()) if bias is not None else 0
    head = skeleton.get_output_embeddings()
    embeddings = {id(skeleton.get_input_embeddings().weight): skeleton.get_input_embeddings()}
    if head is not None:
        embeddings.setdefault(id(head.weight), head)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    first_block = layer_map.units_in_block(layer_map.units[0].block)
    from_hidden = [u for u in first_block if u.in_features == hidden]
    mlp_width = max((u.out_features for u in from_hidden), default=hidden)
    return ModelShape(
        model=model,
        model_type=layer_map.model_type,
        architecture=type(skeleton).__name__,
        parameters=sum(unique.values()),
        embedding_parameters=sum(m.weight.numel() for m in embeddings.values()),
        layer_map=layer_map,
        lora_map=lora_map,
        biases=biases,
        hidden_size=hidden,
        query_width=heads * head_dim,
        kv_width=kv_heads * head_dim,
        num_heads=heads,
        mlp_width=mlp_width,
        gated_mlp=sum(u.out_features == mlp_width for u in from_hidden) >= 2,
        vocab_size=int(text.vocab_size),
    )


def activation_bytes(
    shape: ModelShape,
    *,
    batch_size: int,
    max_length: int,
    act_bytes: int,
    kept: str,
    units: list[Unit],
    dropout: bool,
    lowest_block: int = 0,
) -> int:
    """Activation memory of one micro-batch: the module docstring's ``A``.

    ``kept`` says which linear inputs autograd keeps: ``weights`` (trained weights),
    ``lora`` (a LoRA adapter on ``units``) or ``gates`` (stage 2: gated LoRA updates on
    ``units``, only the gates trained). Blocks below ``lowest_block`` keep nothing.
    """
    h, mlp = shape.hidden_size, shape.mlp_width
    grad_blocks = shape.layer_map.num_blocks - lowest_block
    base = 2 * h + 2 * shape.query_width + 2 * shape.kv_width + shape.num_heads
    base += 3 * mlp if shape.gated_mlp else mlp
    blocks_with_units = len({u.block for u in units})
    if kept == "weights" or (kept == "lora" and not dropout):
        inputs = blocks_with_units * (2 * h + mlp)
    elif kept == "lora":
        inputs = 2 * sum(u.in_features for u in units)
    elif kept == "gates":
        inputs = sum(u.out_features + (u.in_features if dropout else 0) for u in units)
    else:
        raise ValueError(f"unknown kept {kept!r}; use weights, lora or gates")
    tokens = batch_size * max_length
    blocks = tokens * (grad_blocks * base + inputs) + grad_blocks * 2 * max_length**2
    logits = 4 * tokens * shape.vocab_size * _FLOAT32
    return act_bytes * blocks + logits


def _autocast_16bit(train: Any, device: str) -> bool:
    """Whether the stages train under 16-bit autocast (ila.train.precision); ``auto`` for a CUDA
    device is read as bf16, which every GPU of this size class supports."""
    requested = train.requested_precision
    if requested == "auto" and device.startswith("cuda"):
        return True
    from ila.train.trainer import train_precision

    return train_precision(train, device).precision != "fp32"


def plan_run(
    config: PlanConfig, *, selection: Any | None = None, cache: Path | None = None
) -> Plan:
    """Estimate memory (and, given a throughput, time) of stages 1, 2 and the fine-tune.

    ``selection`` is an :class:`ila.core.selection.Selection` for the fine-tune (checked against
    the model's units); without it ``config.plan.tune_top_fraction`` of the units is tuned.
    """
    _refuse_full_on_nf4(config)
    shape = model_shape(
        config.model.model,
        blocks_path=config.model.blocks_path,
        module_types=config.lora.module_types,
        cache=cache,
    )
    train, lora = config.train, config.lora
    dtype = config.model.dtype
    b, s = train.batch_size, config.data.max_length
    act = 2 if _autocast_16bit(train, config.model.device) or dtype != "float32" else 4
    tokens_per_step = b * train.grad_accum * s
    tps = config.plan.tokens_per_second
    base_weights = _base_weight_bytes(shape, dtype, quantized=config.model.quantization == "nf4")
    dropout = lora.dropout > 0
    common = {"batch_size": b, "max_length": s, "act_bytes": act, "dropout": dropout}

    def seconds(steps: int) -> float | None:
        return None if tps is None else steps * tokens_per_step / tps

    stage1, stage2 = _scoring_stages(config, shape, base_weights, common, seconds)
    tuned, lowest, how = _finetune_units(shape, config, selection)
    finetune = _finetune_stage(config, shape, tuned, lowest, how, common, seconds)
    shards = max(config.plan.fsdp, config.plan.zero3)
    stages = [stage1, stage2, finetune]
    if shards > 1:
        how = (
            f"FSDP over {shards}"
            if config.plan.fsdp > 1
            else f"ZeRO-3 over {shards} (ila refuses ZeRO-3 launches; FSDP2 runs)"
        )
        stages = [_sharded(stage, shards, _block_bytes(shape, config), how) for stage in stages]
    return Plan(
        model=config.model.model,
        model_type=shape.model_type,
        architecture=shape.architecture,
        num_blocks=shape.layer_map.num_blocks,
        num_units=len(shape.layer_map.units),
        parameters=shape.parameters,
        dtype=dtype,
        tokens_per_step=tokens_per_step,
        micro_batch_tokens=b * s,
        tokens_per_second=tps,
        stages=stages,
    )


def _refuse_full_on_nf4(config: PlanConfig) -> None:
    """Raise :class:`IlaError` for a full stage 1 on a 4-bit base (nothing to fine-tune)."""
    if config.model.quantization == "nf4" and config.stage1.method == "full":
        raise IlaError(
            setting("model", "quantization"),
            " nf4 with ",
            setting("stage1", "method"),
            " full: 4-bit weights cannot be fine-tuned; use ",
            setting("stage1", "method"),
            " lora",
        )


def _scoring_stages(
    config: PlanConfig,
    shape: ModelShape,
    base_weights: int,
    common: dict[str, Any],
    seconds: Any,
) -> tuple[StagePlan, StagePlan]:
    """Stages 1 and 2: a LoRA stage 1 and its gates, or a full stage 1 (W(0) kept) and
    gates on its weight changes; NF4 noted for a 4-bit base."""
    lora_units = list(shape.lora_map.units)
    blocks = {u.block for u in lora_units}
    gates = len(lora_units) if config.stage2.unit == "module" else len(blocks)
    update = _stage1_update(config, lora_units, base_weights, gates, dropout=common["dropout"])
    stage1 = StagePlan(
        name="stage 1",
        what=update.what,
        trainable_parameters=update.trainable,
        weight_bytes=update.weights,
        gradient_bytes=update.trainable * update.per_param,
        optimizer_bytes=2 * update.trainable * update.per_param,
        activation_bytes=activation_bytes(
            shape, kept=update.kept, units=lora_units, **{**common, "dropout": update.dropout}
        ),
        max_steps=config.stage1.max_steps,
        seconds=seconds(config.stage1.max_steps),
        notes=["max steps is a cap: stage 1 stops at T, once training is epsilon-stable"],
    )
    stage2 = StagePlan(
        name="stage 2",
        what=f"{gates} gates, one per {config.stage2.unit}",
        trainable_parameters=gates,
        weight_bytes=update.stage2_weights,
        gradient_bytes=gates * _FLOAT32,
        optimizer_bytes=2 * gates * _FLOAT32,
        # Stage 2 runs in eval mode by default (no dropout masks kept) and accumulates
        # --stage2-grad-accum micro-batches per step.
        activation_bytes=activation_bytes(
            shape,
            kept="gates",
            units=lora_units,
            **{**common, "dropout": update.dropout and not config.stage2.eval_mode},
        ),
        max_steps=config.stage2.steps,
        seconds=seconds(config.stage2.steps * config.stage2.grad_accum),
        notes=[
            *update.stage2_notes,
            f"each step accumulates {config.stage2.grad_accum} micro-batches (--stage2-grad-accum)",
        ],
    )
    if config.source.given:
        stage1 = _existing_update_stage(
            config, base_weights, update.stage2_weights - gates * _FLOAT32
        )
    if config.model.quantization == "nf4":
        stage1, stage2 = _with_nf4_note(stage1), _with_nf4_note(stage2)
    return stage1, stage2


@dataclass(frozen=True)
class _Stage1Update:
    """What stage 1 trains and what it leaves to stage 2, for the estimate: bytes of the
    weights in each stage, the trainable count and its bytes per parameter, the inputs
    autograd keeps (``kept`` of :func:`activation_bytes`) and whether LoRA dropout runs."""

    what: str
    weights: int
    trainable: int
    per_param: int
    kept: str
    stage2_weights: int
    stage2_notes: list[str]
    dropout: bool


def _stage1_update(
    config: PlanConfig, lora_units: list[Unit], base_weights: int, gates: int, *, dropout: bool
) -> _Stage1Update:
    """A LoRA stage 1 and its gates, or a full stage 1 (W(0) kept) and gates on its weight
    changes (docs/method.md, "Stage 1 as a full fine-tune"); ``dropout``: LoRA dropout is on."""
    lora, dtype = config.lora, config.model.dtype
    if config.stage1.method == "full" or config.source.from_model:
        # Stage 1 trains every unit's weight matrix and keeps W(0) beside it; stage 2 holds
        # Delta = W(T) - W(0) in its place (ila.core.deltas). No LoRA, so no dropout.
        unit_weights = sum(u.num_params for u in lora_units)
        per_weight = _DTYPE_BYTES[dtype]
        return _Stage1Update(
            what=f"full fine-tune of {len(lora_units)} units (W(0) kept)",
            weights=base_weights + unit_weights * per_weight,
            trainable=unit_weights,
            per_param=per_weight,
            kept="weights",
            stage2_weights=base_weights + unit_weights * per_weight + gates * _FLOAT32,
            stage2_notes=[
                "gates the weight change W(aligned) - W(base) of each unit"
                if config.source.from_model
                else "gates the full fine-tuning change Delta = W(T) - W(0) of each unit"
            ],
            dropout=False,
        )
    adapter = _lora_parameters(lora_units, lora.rank)
    return _Stage1Update(
        what=f"LoRA r={lora.rank} on {len(lora_units)} units",
        weights=base_weights + adapter * _FLOAT32,
        trainable=adapter,
        per_param=_FLOAT32,
        kept="lora",
        stage2_weights=base_weights + (adapter + gates) * _FLOAT32,
        stage2_notes=[],
        dropout=dropout,
    )


def _with_nf4_note(stage: StagePlan) -> StagePlan:
    """``stage`` with the note of a 4-bit NF4 base (QLoRA) appended."""
    note = (
        "block linears in 4-bit NF4 (double quantisation), CUDA only; QLoRA's preparation "
        "turns gradient checkpointing on, so the activations are an upper bound"
    )
    return replace(stage, notes=[*stage.notes, note])


def _existing_update_stage(config: PlanConfig, base_weights: int, with_update: int) -> StagePlan:
    """Stage 1 replaced by reading an existing update (--from-adapter / --from-model): no
    training; the peak is the base model plus the update (the aligned model's unit weights
    are read one tensor at a time, so one unit matrix more at most)."""
    if config.source.from_model:
        what = f"no training: weight changes of {config.source.from_model} (read unit by unit)"
        note = "a second copy of the unit weights (the deltas) is held for stage 2"
    else:
        what = f"no training: the LoRA adapter {config.source.from_adapter}"
        note = "the adapter's own rank and target modules apply; --lora-rank is counted here"
    return StagePlan(
        name="stage 1",
        what=what,
        trainable_parameters=0,
        weight_bytes=max(base_weights, with_update),
        gradient_bytes=0,
        optimizer_bytes=0,
        activation_bytes=0,
        max_steps=0,
        seconds=0.0 if config.plan.tokens_per_second else None,
        notes=[note],
    )


def _finetune_units(
    shape: ModelShape, config: PlanConfig, selection: Any | None
) -> tuple[list[Unit], int, str]:
    """The tuned units, the lowest block that keeps activations, and how they were chosen."""
    from ila.core.scores import top_count

    layer_map = shape.layer_map
    if selection is not None:
        units = selection.selected_units(layer_map)  # refuses a selection of another model
        return units, min(u.block for u in units), f"{len(units)} selected units"
    fraction = config.plan.tune_top_fraction
    k = top_count(len(layer_map.units), fraction)
    weight = {"full": lambda u: u.num_params}.get(
        config.finetune.method, lambda u: u.in_features + u.out_features
    )
    largest = sorted(layer_map.units, key=lambda u: (-weight(u), u.block))[:k]
    return largest, 0, f"top {fraction:g} = {k} units"


def _finetune_stage(
    config: PlanConfig,
    shape: ModelShape,
    units: list[Unit],
    lowest: int,
    how: str,
    common: dict[str, Any],
    seconds: Any,
) -> StagePlan:
    settings, dtype = config.finetune, config.model.dtype
    method = settings.method
    notes = []
    if lowest == 0 and how.startswith("top"):
        notes.append(
            "which units the ranking selects is not known yet: counted with the largest "
            "ones and activations in every block (upper bounds; pass --selection for exact)"
        )
    if method == "full":
        trainable = sum(u.num_params + shape.biases[u.name] for u in units)
        if settings.train_embeddings:
            trainable += shape.embedding_parameters
        weights = shape.parameters * _DTYPE_BYTES[dtype]
        per_param = _DTYPE_BYTES[dtype]
        kept = "weights"
    else:
        trainable = _lora_parameters(units, config.lora.rank)
        per_param = _FLOAT32
        four_bit = method == "qlora" or config.model.quantization == "nf4"
        weights = int(_base_weight_bytes(shape, dtype, quantized=four_bit) + trainable * _FLOAT32)
        kept = "lora"
        if four_bit:
            notes.append("block linears in 4-bit NF4 (double quantisation), CUDA only")
    activations = activation_bytes(shape, kept=kept, units=units, lowest_block=lowest, **common)
    return StagePlan(
        name="fine-tune",
        what=f"{method} on {how}",
        trainable_parameters=trainable,
        weight_bytes=weights,
        gradient_bytes=trainable * per_param,
        optimizer_bytes=2 * trainable * per_param,
        activation_bytes=activations,
        max_steps=settings.max_steps,
        seconds=seconds(settings.max_steps),
        notes=notes,
    )


def _base_weight_bytes(shape: ModelShape, dtype: str, *, quantized: bool) -> int:
    """The model's weights in ``dtype``, with the block linears in NF4 when ``quantized``."""
    four_bit = sum(u.num_params for u in shape.layer_map.units) if quantized else 0
    return int((shape.parameters - four_bit) * _DTYPE_BYTES[dtype] + four_bit * _NF4_BYTES)


def _block_bytes(shape: ModelShape, config: PlanConfig) -> int:
    """Bytes of the largest block's linear weights, as loaded (dtype or NF4)."""
    per_block: dict[int, int] = {}
    for unit in shape.layer_map.units:
        per_block[unit.block] = per_block.get(unit.block, 0) + unit.num_params
    quantized = config.model.quantization == "nf4" or config.finetune.method == "qlora"
    per_weight = _NF4_BYTES if quantized else _DTYPE_BYTES[config.model.dtype]
    return int(max(per_block.values()) * per_weight)


def _sharded(stage: StagePlan, shards: int, block_bytes: int, how: str) -> StagePlan:
    """``stage`` per process when parameters, gradients and optimizer states are sharded
    over ``shards`` processes: each holds 1/shards of them, plus the gathered weights of
    the block being computed and of the next one (prefetch); activations are per process."""
    return replace(
        stage,
        weight_bytes=-(-stage.weight_bytes // shards) + 2 * block_bytes,
        gradient_bytes=-(-stage.gradient_bytes // shards),
        optimizer_bytes=-(-stage.optimizer_bytes // shards),
        notes=[
            *stage.notes,
            f"{how}: weights, gradients and Adam states divided by {shards}, plus the gathered "
            "weights of two blocks (the one computed and the one prefetched); activations and "
            "tokens are per process",
        ],
    )


def _lora_parameters(units: list[Unit], rank: int) -> int:
    """LoRA A (r x d_in) and B (d_out x r) of every unit."""
    return sum(rank * (u.in_features + u.out_features) for u in units)


def _size(num_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
