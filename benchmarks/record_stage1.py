"""Record long stage-1 runs: the loss of every step, per-unit update norms, adapter snapshots.

The raw material for the stage-1 stopping-rule study (``benchmarks/bench_stability.py``):
one LoRA stage 1 per (dataset, seed) under the clean protocol (one ``--max-length`` for
every dataset, a train/held-out split seeded apart from the training seed, the same
batch size and learning rate), run to a fixed number of steps with no stopping rule, so
that every rule can be applied offline to the same curves, and stage 2 can be learned
from the adapter as it was at any snapshot step (T, 2T, the long run's end).

Writes, per run, ``WORK/<data>/seed<k>/``: ``curve.json`` (loss per step; per-unit
||Delta_i|| every ``--norm-every`` steps; the settings) and ``snapshots/step-<n>.safetensors``
(the LoRA weights, peft's key names). Finished runs are skipped; a run asked for more
steps than it has, or one that was killed, continues from its last checkpoint.

Besides the presets, ``--data`` takes ``sharegpt-even`` and ``sharegpt-odd``: two disjoint
halves of the first 6000 ShareGPT conversations (every other one), 3000 each, the size of
the ``sharegpt`` recordings, for the cross-dataset ceiling on like data.

``--cooldown-fraction F`` records the stage-1 cool-down lever instead: for each recording
already under ``WORK`` it reads T of the default stopping rule from its ``curve.json``,
trains the same seed again from scratch to T at the constant rate and then C = ceil(F * T)
steps with the rate falling linearly to zero (the product's schedule,
``ila.core.cooldown.learning_rate_factor``), into ``WORK/<data>/seed<k>/cooldown-F/``, with
a snapshot at T + C. Usage::

    python benchmarks/record_stage1.py --data ila-instruct chitchat --seeds 0 1 \\
        --steps 240 --work-dir runs/bench-stability
    python benchmarks/record_stage1.py --data ila-instruct --seeds 0 1 3 4 \\
        --cooldown-fraction 0.5 --work-dir runs/bench-levers --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The clean protocol shared by every benchmark of the stopping rule (docs/method.md).
MAX_LENGTH = 128
SPLIT_SEED = 0
LIMIT = {"chitchat": 3000, "sharegpt": 3000, "sharegpt-even": 3000, "sharegpt-odd": 3000}
HALVES = {"sharegpt-even": 0, "sharegpt-odd": 1}
WARMUP_STEPS = 5


def benchmark_examples(data: str) -> list:
    """The examples a recording of ``data`` trains on (before the train/held-out split):
    a preset limited to ``LIMIT``, or one half of ShareGPT (``HALVES``): of its first
    2 x 3000 conversations, every other one, starting at the half's offset."""
    from ila.data import load_examples

    if data in HALVES:
        whole = load_examples("sharegpt", limit=2 * LIMIT[data])
        if len(whole) < 2 * LIMIT[data]:
            raise SystemExit(f"{data}: ShareGPT has only {len(whole)} conversations")
        return whole[HALVES[data] :: 2]
    return load_examples(data, limit=LIMIT.get(data))


def record(
    data: str,
    seed: int,
    steps: int,
    norm_every: int,
    snapshot_every: int,
    out: Path,
    data_seed: int | None = None,
    cooldown: tuple[int, int] | None = None,
):
    """One recording; ``curve.json`` is complete once written (partial runs leave none).

    Resumable: the Trainer checkpoints every ``snapshot_every`` steps, and after each
    checkpoint ``curve.partial.json`` holds the curve up to it. A killed recording, or a
    finished one asked for more ``steps``, continues from its last checkpoint (adapter,
    optimizer, RNG states and data position, as ``ila``'s own resume does).
    ``seed`` seeds the LoRA initialisation and dropout; ``data_seed`` (default: ``seed``)
    seeds the order in which the examples are drawn, as the Trainer's ``data_seed`` does.
    ``cooldown`` = (S, C): the rate stays constant to step S and falls linearly over the C
    steps after it (``steps`` must be S + C); the curve records both.
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from ila.config import LoraSettings, TrainConfig
    from ila.core.cooldown import learning_rate_factor
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora, lora_update_norms
    from ila.data import (
        PaddingCollator,
        data_fingerprint,
        split_examples,
        tokenize_examples,
    )
    from ila.model.loading import load_model
    from ila.train.base import StageSchedule
    from ila.train.trainer import (
        MetricsLogger,
        StepValues,
        make_training_args,
        run_trainer,
        train_precision,
    )

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    layer_map = find_layers(model)
    examples = benchmark_examples(data)
    train, _ = split_examples(examples, eval_fraction=0.1, seed=SPLIT_SEED)
    tokenized = tokenize_examples(train, tokenizer, max_length=MAX_LENGTH)
    model = add_lora(model, layer_map.units, LoraSettings(), seed=seed)
    norms: dict[int, list[float]] = {}
    values = StepValues()
    seconds_before = 0.0
    resume_from = None
    partial_path = out / "curve.partial.json"
    if partial_path.is_file():
        # Written after the Trainer finished checkpoint-<step>: that checkpoint is complete.
        partial = json.loads(partial_path.read_text())
        resume_from = out / "trainer" / f"checkpoint-{partial['step']}"
        values.loss = partial["loss"][: partial["step"]]
        norms = {int(k): v for k, v in partial["norms"].items() if int(k) <= partial["step"]}
        seconds_before = partial["seconds"]
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    class Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step % norm_every == 0:
                norms[step] = lora_update_norms(model, layer_map).tolist()
            if step % snapshot_every == 0 or step == steps:
                weights = {
                    k: v.detach().cpu().contiguous()
                    for k, v in get_peft_model_state_dict(model).items()
                }
                save_file(weights, str(out / "snapshots" / f"step-{step}.safetensors"))

        def on_save(self, args, state, control, **kwargs):
            partial = {
                "step": state.global_step,
                "loss": values.loss,
                "norms": {str(k): v for k, v in sorted(norms.items())},
                "seconds": seconds_before + time.perf_counter() - start,
            }
            tmp = partial_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(partial))
            tmp.replace(partial_path)

    train_cfg = TrainConfig(seed=seed, save_steps=snapshot_every)
    args = make_training_args(
        train_cfg,
        output_dir=out / "trainer",
        learning_rate=1e-3,
        max_steps=steps,
        warmup_steps=WARMUP_STEPS,
        scheduler="constant_with_warmup",
        device="cpu",
    )
    schedule = None
    if cooldown is not None:
        stop, cooldown_steps = cooldown
        if stop + cooldown_steps != steps:
            raise ValueError(f"a cool-down of {cooldown} needs {stop + cooldown_steps} steps")
        schedule = StageSchedule(
            lr_factor=lambda step: learning_rate_factor(
                step, warmup_steps=WARMUP_STEPS, stop_step=stop, cooldown_steps=cooldown_steps
            )
        )
    data_seed = seed if data_seed is None else data_seed
    args.data_seed = data_seed
    torch.manual_seed(seed)
    run_trainer(
        model,
        args,
        train_features=tokenized.features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        callbacks=[MetricsLogger("stage1", None, values), Snapshots()],
        resume_from=resume_from,
        stage_schedule=schedule,
    )
    seconds = seconds_before + time.perf_counter() - start
    curve = {
        "data": data,
        "seed": seed,
        "data_seed": data_seed,
        "split_seed": SPLIT_SEED,
        "max_length": MAX_LENGTH,
        # `--precision auto` picks bf16 autocast on CPUs with AVX512-BF16 or AMX.
        "precision": train_precision(train_cfg, "cpu").precision,
        "limit": LIMIT.get(data),
        "batch_size": train_cfg.batch_size,
        "num_train_features": len(tokenized.features),
        "num_truncated": tokenized.num_truncated,
        "steps_per_epoch": -(-len(tokenized.features) // train_cfg.batch_size),
        "data_fingerprint": data_fingerprint(train),
        "seconds": seconds,
        "loss": values.loss,
        "unit_names": [u.name for u in layer_map.units],
        "norms": {str(k): v for k, v in sorted(norms.items())},
    }
    if cooldown is not None:
        curve["cooldown"] = {"stop": cooldown[0], "steps": cooldown[1]}
    (out / "curve.json").write_text(json.dumps(curve))
    print(f"{data} seed {seed}: {steps} steps in {seconds:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=["ila-instruct", "chitchat"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--norm-every", type=int, default=10)
    parser.add_argument("--snapshot-every", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-stability"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--cooldown-fraction",
        type=float,
        help="record the cool-down lever from T of each existing recording (see above)",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.cooldown_fraction is not None:
        record_cooldowns(args)
        return
    for seed in args.seeds:
        for data in args.data:
            out = args.work_dir / data / f"seed{seed}"
            done = out / "curve.json"
            if done.is_file() and len(json.loads(done.read_text())["loss"]) >= args.steps:
                continue
            record(data, seed, args.steps, args.norm_every, args.snapshot_every, out)


def cooldown_dir(fraction: float) -> str:
    """The folder of a recording's cool-down lever, inside the recording's own folder."""
    return f"cooldown-{fraction:g}"


def record_cooldowns(args: argparse.Namespace) -> None:
    """The cool-down lever for each (data, seed) asked for. T is the one the default
    lever used (``benchmarks/records/bench_levers/<data>/seed<k>/default.json``); the
    recording's settings come from its curve in the work folder or in the records."""
    from ila.core.cooldown import cooldown_length

    if not 0 < args.cooldown_fraction <= 1:
        raise SystemExit(f"--cooldown-fraction must be in (0, 1], got {args.cooldown_fraction}")
    records = Path(__file__).resolve().parent / "records"
    for seed in args.seeds:
        for data in args.data:
            default = records / "bench_levers" / data / f"seed{seed}" / "default.json"
            if not default.is_file():
                raise SystemExit(f"no default lever at {default}: run bench_levers.py first")
            stop = json.loads(default.read_text())["T"]
            curve_path = records / "stage1" / "bench-levers" / data / f"seed{seed}.json"
            data_seed = json.loads(curve_path.read_text())["data_seed"]
            extra = cooldown_length(stop, args.cooldown_fraction)
            out = args.work_dir / data / f"seed{seed}" / cooldown_dir(args.cooldown_fraction)
            if (out / "curve.json").is_file():
                continue
            record(
                data,
                seed,
                stop + extra,
                args.norm_every,
                args.snapshot_every,
                out,
                data_seed=data_seed,
                cooldown=(stop, extra),
            )


if __name__ == "__main__":
    main()
