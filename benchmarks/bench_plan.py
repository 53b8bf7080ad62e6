"""`ila plan`'s memory estimate against the memory a few real training steps take.

For each model and stage, a fresh process loads the model, sets the stage up (stage 1:
LoRA on every unit; stage 2: gates on that LoRA; full: every unit's weights trained),
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs a few steps on the
real HF Trainer with batches of exactly ``max_length`` tokens (so tokens per step are
known) and reads the peak resident memory back (``VmHWM``). Measured = peak during
training minus the resident memory just before it; predicted = the plan's gradients +
Adam states + activations for that stage (the weights are resident in both). The
weights are checked the same way: resident memory added by loading vs the plan's weights.
Each run is made twice, with glibc's default allocator and with a fixed mmap threshold
(resident memory then follows the live tensors, which is what the plan estimates).

    python benchmarks/bench_plan.py [--steps 2] [--work-dir runs/bench-plan]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_section

# name -> (batch size, max length)
MODELS = {"tiny": (16, 256), "smollm2-135m": (2, 128)}
# glibc keeps freed heap memory for reuse, so resident memory exceeds live tensors; with a
# fixed mmap threshold every tensor above 128 KiB is its own mapping, returned when freed,
# and resident memory follows the live tensors (the quantity the plan estimates).
ALLOCATORS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
STAGES = ("stage 1", "stage 2", "full")


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1))


def worker(model_spec: str, stage: str, batch: int, length: int, steps: int, out: Path) -> None:
    """One measurement, in this (fresh) process; writes a JSON line to ``out``."""
    import torch

    from ila.config import LoraSettings, TrainConfig
    from ila.core.gates import attach_gates
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora
    from ila.data.tokenization import PaddingCollator
    from ila.jobs.finetune import freeze_all_but
    from ila.model.loading import load_model
    from ila.train.trainer import make_training_args, run_trainer

    torch.set_num_threads(2)
    gc.collect()
    before_load = _status_kib("VmRSS")
    model, tokenizer = load_model(model_spec, device="cpu")
    with torch.no_grad():  # weights may be memory-mapped: make every page resident now
        for param in model.parameters():
            param.sum()
    gc.collect()
    after_load = _status_kib("VmRSS")
    layer_map = find_layers(model)
    if stage == "full":
        freeze_all_but(model, layer_map, {u.name for u in layer_map.units}, train_embeddings=False)
    else:
        model = add_lora(model, list(layer_map.units), LoraSettings(), seed=0)
        if stage == "stage 2":
            for param in model.parameters():
                param.requires_grad_(False)
            attach_gates(model, layer_map)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    features = []
    for _ in range(batch * steps):
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        features.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    args = make_training_args(
        TrainConfig(batch_size=batch),
        output_dir=out.parent / f"trainer-{os.getpid()}",
        learning_rate=1e-5,
        max_steps=steps,
        device="cpu",
    )
    args.disable_tqdm = True
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start = time.perf_counter()
    run_trainer(
        model,
        args,
        train_features=features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        eval_mode=stage == "stage 2",  # as `ila score` runs stage 2 (--stage2-eval-mode)
    )
    row = {
        "model": model_spec,
        "stage": stage,
        "batch": batch,
        "length": length,
        "steps": steps,
        "load_kib": after_load - before_load,
        "train_peak_kib": _status_kib("VmHWM") - baseline,
        "seconds_per_step": (time.perf_counter() - start) / steps,
    }
    with out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def predicted(model_spec: str, stage: str, batch: int, length: int) -> dict[str, int]:
    """The plan's numbers for one measurement (full: a selection of every unit)."""
    from ila.analysis.plan import model_shape, plan_run
    from ila.config import DataConfig, FinetuneSettings, ModelConfig, PlanConfig, TrainConfig
    from ila.core.selection import select_units

    config = PlanConfig(
        model=ModelConfig(model=model_spec),
        data=DataConfig(max_length=length),
        train=TrainConfig(batch_size=batch),
        finetune=FinetuneSettings(method="full"),
    )
    shape = model_shape(model_spec)
    plan = plan_run(config, selection=select_units(shape.layer_map, all_units=True))
    part = {"stage 1": plan.stages[0], "stage 2": plan.stages[1], "full": plan.stages[2]}[stage]
    return {
        "weights": shape.parameters * 4,
        "gradients": part.gradient_bytes,
        "optimizer": part.optimizer_bytes,
        "activations": part.activation_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-plan"))
    parser.add_argument("--worker", nargs=5, metavar=("MODEL", "STAGE", "B", "L", "OUT"))
    args = parser.parse_args()
    if args.worker:
        spec, stage, batch, length, out = args.worker
        worker(spec, stage, int(batch), int(length), args.steps, Path(out))
        return

    args.work_dir.mkdir(parents=True, exist_ok=True)
    tiny = args.work_dir / "tiny-model"
    if not tiny.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from conftest import build_tiny_llama, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        build_tiny_llama(len(tokenizer)).save_pretrained(tiny)
        tokenizer.save_pretrained(tiny)
    results = args.work_dir / "measured.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    rows = []
    for name, (batch, length) in MODELS.items():
        spec = str(tiny) if name == "tiny" else name
        for stage in STAGES:
            measured = {}
            for allocator, extra in ALLOCATORS.items():
                command = [sys.executable, __file__, "--steps", str(args.steps), "--worker"]
                command += [spec, stage, str(batch), str(length), str(results)]
                run_env = {**env, **extra}
                subprocess.run(command, check=True, env=run_env, stdout=subprocess.DEVNULL)
                measured[allocator] = json.loads(results.read_text().splitlines()[-1])
            expected = predicted(spec, stage, batch, length)
            rows.append((name, stage, batch, length, measured, expected))
    markdown = _table(rows, args.steps)
    write_section("bench_plan", markdown)
    print(markdown)


def _table(rows: list[tuple], steps: int) -> str:
    mib = 2**20
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## `ila plan` memory estimate vs measured (`benchmarks/bench_plan.py`)",
        "",
        f"Measured {started} on {os.cpu_count()} CPU cores, float32, {steps} training steps "
        "per run on the HF Trainer, each run in a fresh process, batches of exactly "
        "max-length random tokens. Stages 1 and 2: LoRA r=8 (dropout 0.05; stage 2 in eval "
        "mode, as by default) on every unit; "
        "full: every unit's weights trained. Measured training = peak resident memory "
        "during the steps minus resident memory just before them (`VmHWM` after "
        "`clear_refs`, weights already resident); predicted training = the plan's "
        "gradients + Adam states + activations. Each run twice: with glibc's default "
        "allocator, which keeps freed heap memory for reuse, and with "
        "`MALLOC_MMAP_THRESHOLD_=131072`, where resident memory follows the live tensors. "
        "Weights: resident memory added by loading (and touching) the model vs the plan's "
        "float32 weights.",
        "",
        "| model | stage | batch x length | predicted grads + Adam (MiB) | predicted "
        "activations (MiB) | predicted training (MiB) | measured, glibc default (MiB) "
        "| ratio | measured, fixed mmap threshold (MiB) | ratio "
        "| weights: predicted / measured (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, stage, batch, length, measured, p in rows:
        train = p["gradients"] + p["optimizer"] + p["activations"]
        default, fixed = (measured[a]["train_peak_kib"] * 1024 for a in ALLOCATORS)
        load = measured["glibc default"]["load_kib"] * 1024
        lines.append(
            f"| {name} | {stage} | {batch} x {length} "
            f"| {(p['gradients'] + p['optimizer']) / mib:.1f} | {p['activations'] / mib:.1f} "
            f"| {train / mib:.1f} | {default / mib:.1f} | {default / train:.2f} "
            f"| {fixed / mib:.1f} | {fixed / train:.2f} "
            f"| {p['weights'] / mib:.1f} / {load / mib:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
