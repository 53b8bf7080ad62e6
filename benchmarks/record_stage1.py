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
steps than it has, or one that was killed, continues from its last checkpoint. Usage::

    python benchmarks/record_stage1.py --data ila-instruct chitchat --seeds 0 1 \\
        --steps 240 --work-dir runs/bench-stability
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
LIMIT = {"chitchat": 3000, "sharegpt": 3000}


def record(
    data: str,
    seed: int,
    steps: int,
    norm_every: int,
    snapshot_every: int,
    out: Path,
    data_seed: int | None = None,
):
    """One recording; ``curve.json`` is complete once written (partial runs leave none).

    Resumable: the Trainer checkpoints every ``snapshot_every`` steps, and after each
    checkpoint ``curve.partial.json`` holds the curve up to it. A killed recording, or a
    finished one asked for more ``steps``, continues from its last checkpoint (adapter,
    optimizer, RNG states and data position, as ``ila``'s own resume does).
    ``seed`` seeds the LoRA initialisation and dropout; ``data_seed`` (default: ``seed``)
    seeds the order in which the examples are drawn, as the Trainer's ``data_seed`` does.
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from ila.config import LoraSettings, TrainConfig
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora, lora_update_norms
    from ila.data import (
        PaddingCollator,
        data_fingerprint,
        load_examples,
        split_examples,
        tokenize_examples,
    )
    from ila.model.loading import load_model
    from ila.train.trainer import (
        MetricsLogger,
        StepValues,
        make_training_args,
        run_trainer,
        train_precision,
    )

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    layer_map = find_layers(model)
    examples = load_examples(data, limit=LIMIT.get(data))
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
            if step % snapshot_every == 0:
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
        warmup_steps=5,
        scheduler="constant_with_warmup",
        device="cpu",
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
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for data in args.data:
            out = args.work_dir / data / f"seed{seed}"
            done = out / "curve.json"
            if done.is_file() and len(json.loads(done.read_text())["loss"]) >= args.steps:
                continue
            record(data, seed, args.steps, args.norm_every, args.snapshot_every, out)


if __name__ == "__main__":
    main()
